//! `GET /v1/messages?status=&to=&from=&client_ref=&since=&until=&limit=&cursor=`: the
//! caller's account's messages, newest first.

use hyper::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::registry::{page_limit, query};
use super::{ApiRequest, AppState, Handled, authorize, json_response, message_view, store_error};
use crate::auth::Scope;
use crate::message::Status;
use crate::search::{self, Query};

const STATUSES: &[Status] = &[
    Status::Queued,
    Status::Scheduled,
    Status::Submitting,
    Status::Submitted,
    Status::Delivered,
    Status::Undeliverable,
    Status::Expired,
    Status::Rejected,
    Status::Failed,
    Status::Cancelled,
    Status::Blocked,
    Status::Unknown,
];

const PARAMS: &[&str] = &["status", "to", "from", "client_ref", "since", "until", "limit", "cursor"];

fn time(q: &std::collections::HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|s| {
            s.parse::<jiff::Timestamp>().ok().and_then(|t| u64::try_from(t.as_millisecond()).ok()).ok_or_else(|| {
                ApiError::invalid(name, format!("'{name}' must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z."))
            })
        })
        .transpose()
}

/// `GET /v1/messages`
pub fn list(state: &AppState, req: &ApiRequest) -> Handled {
    let p = authorize(state, req, Scope::Read)?;
    let q = query(req);
    if let Some(unknown) = q.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(ApiError::invalid(unknown, format!("'{unknown}' is not a search parameter.")));
    }
    let status = q
        .get("status")
        .map(|s| {
            STATUSES.iter().copied().find(|st| st.as_str() == s).ok_or_else(|| {
                let names: Vec<&str> = STATUSES.iter().map(|s| s.as_str()).collect();
                ApiError::invalid("status", format!("'status' is one of {}.", names.join(", ")))
            })
        })
        .transpose()?;
    let to = q
        .get("to")
        .map(|t| {
            crate::phone::E164::normalize(t)
                .map(|n| n.as_str().to_string())
                .map_err(|_| ApiError::invalid("to", "'to' must be an E.164 number, its '+' written %2B."))
        })
        .transpose()?;
    let from = q
        .get("from")
        .map(|f| {
            crate::accounts::normalize_address(f)
                .ok_or_else(|| ApiError::invalid("from", "'from' must be a sender address, its '+' written %2B."))
        })
        .transpose()?;
    let cursor = q.get("cursor").map(|c| c.as_str());
    if cursor.is_some_and(|c| ulid::Ulid::from_string(c).is_err()) {
        return Err(ApiError::invalid("cursor", "'cursor' is the 'next' of a previous page."));
    }
    let query = Query {
        account: p.account.clone(),
        status,
        to,
        from,
        client_ref: q.get("client_ref").cloned(),
        since_ms: time(&q, "since")?,
        until_ms: time(&q, "until")?,
    };
    let page = search::messages(&state.store, &query, cursor, page_limit(&q)?).map_err(store_error)?;
    let view: Vec<Value> = page.messages.iter().map(message_view).collect();
    Ok(json_response(StatusCode::OK, &json!({"messages": view, "next": page.next})))
}
