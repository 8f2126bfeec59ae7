//! `/v1/opt-outs`, `/v1/consents` and `/v1/inbound`.

use hyper::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{
    ApiRequest, AppState, AuditTarget, Handled, authorize, json_body, json_response, optional_json_body, store_error,
};
use crate::audit::Event;
use crate::auth::{Principal, Scope};
use crate::compliance::registry::{self, GLOBAL, OptOutEntry};
use crate::message::{now_ms, rfc3339};
use crate::phone::E164;
use crate::store::Op;

/// The number in a path, normalised as sends normalise `to` (so the registry holds exactly
/// the form sends are checked against).
fn number(raw: &str) -> Result<E164, ApiError> {
    E164::normalize(&percent_decode(raw)).map_err(|_| {
        ApiError::invalid(
            "e164",
            "The path must end in a valid E.164 number with its '+' percent-encoded, e.g. /v1/opt-outs/%2B14155550123.",
        )
    })
}

/// The account of the caller.
fn account_of(state: &AppState, p: &Principal) -> Result<std::sync::Arc<crate::accounts::Account>, ApiError> {
    state.accounts.get(&p.account).ok_or_else(ApiError::account_disabled)
}

/// How a scope is shown: `global`, `account` (the caller's account), or a sender id.
fn scope_name(scope: &str) -> &str {
    if scope == GLOBAL {
        "global"
    } else if scope.starts_with("acct:") {
        "account"
    } else {
        scope
    }
}

/// An opt-out another account recorded, as the caller sees it: that the number is opted out
/// everywhere, and since when (its sends are refused because of it), nothing more.
fn foreign_view(number: &str, e: &OptOutEntry) -> Value {
    json!({"number": number, "scope": scope_name(&e.scope), "source": "another_account",
           "recorded_by": "another_account", "at": rfc3339(e.at_ms)})
}

fn optout_view(number: &str, e: &OptOutEntry) -> Value {
    let mut v = json!({
        "number": number, "scope": scope_name(&e.scope),
        "source": e.source, "recorded_by": e.actor, "at": rfc3339(e.at_ms),
    });
    if let Some(k) = &e.keyword {
        v["keyword"] = json!(k);
    }
    if let Some(r) = &e.rule {
        v["rule"] = json!(r);
    }
    v
}

fn audit(state: &AppState, p: &Principal, action: &str, idx: &str, outcome: &str) {
    state.audit.record(Event::new(format!("key:{}", p.key_id), action, format!("idx:{idx}"), outcome));
}

fn with_target(
    mut r: hyper::Response<http_body_util::Full<bytes::Bytes>>,
    idx: &str,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    r.extensions_mut().insert(AuditTarget(format!("idx:{idx}")));
    r
}

/// `GET /v1/opt-outs/{e164}`: the number's opt-outs (all scopes).
pub fn get_optout(state: &AppState, req: &ApiRequest, raw: &str) -> Handled {
    let p = authorize(state, req, Scope::Optouts)?;
    let account = account_of(state, &p)?;
    let n = number(raw)?;
    let idx = state.store.crypto().blind_index(n.as_str());
    let scopes = state.live.compliance().scopes(&account.name, &account.senders);
    let entries: Vec<Value> = registry::optouts_of(&state.store, &idx)
        .map_err(store_error)?
        .iter()
        .filter_map(|(_, e)| {
            if registry::visible_to(e, &account) {
                Some(optout_view(n.as_str(), e))
            } else if scopes.contains(&e.scope) {
                Some(foreign_view(n.as_str(), e))
            } else {
                None
            }
        })
        .collect();
    if entries.is_empty() {
        return Err(ApiError::not_found("opt-out for this number"));
    }
    Ok(with_target(json_response(StatusCode::OK, &json!({"number": n.as_str(), "opt_outs": entries})), &idx))
}

/// `GET /v1/opt-outs?after=CURSOR&limit=N`: the registry in storage order (by blind index,
/// so by no property of the numbers), a number's scopes together. Only the page is read and
/// opened; the cursor (`next`) is opaque (the last entry's key, base64url).
pub fn list_optouts(state: &AppState, req: &ApiRequest) -> Handled {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as CURSOR;
    let p = authorize(state, req, Scope::Optouts)?;
    let account = account_of(state, &p)?;
    let q = query(req);
    let limit = page_limit(&q)?;
    let after = match q.get("after") {
        None => None,
        Some(c) => Some(
            CURSOR
                .decode(c)
                .ok()
                .filter(|k| k.starts_with(registry::OPTOUT))
                .ok_or_else(|| ApiError::invalid("after", "'after' is not a cursor this endpoint returned."))?,
        ),
    };
    let page = registry::optout_page(&state.store, after.as_deref(), limit).map_err(store_error)?;
    let next = page.next.map(|k| CURSOR.encode(k));
    // The page is read in key order and the caller's entries kept: a page may hold fewer
    // than `limit`, and `next` says where to go on.
    let view: Vec<Value> = page
        .entries
        .iter()
        .filter(|(_, e)| registry::visible_to(e, &account))
        .map(|(n, e)| optout_view(n, e))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"opt_outs": view, "next": next})))
}

/// `PUT /v1/opt-outs/{e164}` `{"scope": "global" | "account" | "<sender id>"}`: records an
/// opt-out (a sender must be one of the caller's account's).
pub async fn put_optout(state: &AppState, req: ApiRequest, raw: &str) -> Handled {
    let p = authorize(state, &req, Scope::Optouts)?;
    let account = account_of(state, &p)?;
    let n = number(raw)?;
    // No body: a global opt-out. A body that is there must be what it says it is.
    let scope = match optional_json_body(&req)? {
        None => GLOBAL.to_string(),
        Some(Value::Object(body)) => {
            if let Some(unknown) = body.keys().find(|k| k.as_str() != "scope") {
                return Err(ApiError::unknown_field(unknown));
            }
            match body.get("scope") {
                None => GLOBAL.to_string(),
                Some(Value::String(s)) if s == "global" => GLOBAL.to_string(),
                Some(Value::String(s)) if s == "account" => registry::account_scope(&account.name),
                // A sender that is a phone number is written as sends write `from`.
                Some(Value::String(s)) if s.starts_with('+') => E164::normalize(s)
                    .map(|n| n.as_str().to_string())
                    .map_err(|_| ApiError::invalid("scope", "'scope' is not a valid E.164 sender number."))?,
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 15 && s != GLOBAL => s.clone(),
                Some(_) => return Err(ApiError::invalid("scope", "'scope' is \"global\" or a sender id (a string).")),
            }
        }
        Some(_) => return Err(ApiError::invalid("scope", "The body must be an object: {\"scope\": \"global\"}.")),
    };
    if scope != GLOBAL && !scope.starts_with("acct:") && !state.accounts.may_send_from(&account, &scope) {
        return Err(ApiError::invalid("scope", "'scope' names a sender that is not one of this account's."));
    }
    let crypto = state.store.crypto();
    let (op, entry) = registry::optout_op(
        &crypto,
        n.as_str(),
        &scope,
        "api",
        None,
        None,
        (&format!("key:{}", p.key_id), Some(&account.name)),
        now_ms(),
        true,
    )
    .map_err(store_error)?;
    let idx = crypto.blind_index(n.as_str());
    // A global opt-out also withdraws consent; a sender-scoped one leaves other senders' consent.
    let mut ops = vec![op];
    if scope == GLOBAL {
        ops.push(Op::Delete { key: registry::consent_key(&idx) });
    }
    state.store.commit(ops).await.map_err(store_error)?;
    crate::metrics::optout("API");
    audit(state, &p, "optout.api", &idx, "recorded");
    Ok(with_target(json_response(StatusCode::OK, &optout_view(n.as_str(), &entry)), &idx))
}

/// `DELETE /v1/opt-outs/{e164}?scope=…`: removes opt-outs (all scopes unless given).
pub async fn delete_optout(state: &AppState, req: &ApiRequest, raw: &str) -> Handled {
    let p = authorize(state, req, Scope::Optouts)?;
    let account = account_of(state, &p)?;
    let n = number(raw)?;
    let idx = state.store.crypto().blind_index(n.as_str());
    let q = query(req);
    let wanted = q.get("scope").map(|s| match s.as_str() {
        "global" => GLOBAL.to_string(),
        "account" => registry::account_scope(&account.name),
        _ => s.clone(),
    });
    // Only the caller's account's own opt-outs: another account's patient's STOP is theirs.
    let entries: Vec<(Vec<u8>, OptOutEntry)> = registry::optouts_of(&state.store, &idx)
        .map_err(store_error)?
        .into_iter()
        .filter(|(_, e)| wanted.as_ref().is_none_or(|w| *w == e.scope) && registry::visible_to(e, &account))
        .collect();
    if entries.is_empty() {
        return Err(ApiError::not_found("opt-out for this number"));
    }
    // The patient texted STOP: under the TCPA only the patient lifts that (by texting START).
    // An operator who has the patient's consent otherwise must say so, and it is audited.
    let texted = entries.iter().any(|(_, e)| e.source == "keyword");
    let reason = match q.get("reason").map(|r| r.trim()) {
        None => None,
        Some(r) if !r.is_empty() && r.chars().count() <= 200 => Some(r),
        Some(_) => return Err(ApiError::invalid("reason", "'reason' is 1 to 200 characters.")),
    };
    let overridden = match q.get("override").map(String::as_str) {
        None => false,
        Some("patient_stop") => true,
        Some(_) => return Err(ApiError::invalid("override", "'override' can only be 'patient_stop'.")),
    };
    if texted && !(overridden && reason.is_some()) {
        return Err(ApiError::conflict(
            "patient_opt_out",
            "The patient opted out by text; only their START lifts it. If the patient has given consent another \
             way, repeat with ?override=patient_stop&reason=<how consent was given, no PHI, at most 200 \
             characters>; the audit trail records it.",
        ));
    }
    let removed = entries.len();
    state.store.commit(entries.into_iter().map(|(key, _)| Op::Delete { key }).collect()).await.map_err(store_error)?;
    let mut event = Event::new(format!("key:{}", p.key_id), "optout.delete", format!("idx:{idx}"), "removed");
    if texted {
        event = event.detail(json!({"override": "patient_stop", "reason": reason}));
    }
    state.audit.record(event);
    Ok(with_target(json_response(StatusCode::OK, &json!({"number": n.as_str(), "removed": removed})), &idx))
}

/// `PUT /v1/consents/{e164}` `{"source": "…", "consented_at": "RFC 3339"}`.
pub async fn put_consent(state: &AppState, req: ApiRequest, raw: &str) -> Handled {
    let p = authorize(state, &req, Scope::Optouts)?;
    let n = number(raw)?;
    let body = json_body(&req)?;
    let Value::Object(fields) = &body else {
        return Err(ApiError::invalid("", "The body must be an object: {\"source\": \"…\"}.").field("body"));
    };
    if let Some(unknown) = fields.keys().find(|k| !matches!(k.as_str(), "source" | "consented_at")) {
        return Err(ApiError::unknown_field(unknown));
    }
    let source = match body.get("source") {
        None | Some(Value::Null) => return Err(ApiError::missing("source")),
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 200 => s.as_str(),
        Some(_) => {
            return Err(ApiError::invalid("source", "'source' is how the consent was given: 1 to 200 characters."));
        }
    };
    let consented_ms = match body.get("consented_at") {
        None | Some(Value::Null) => now_ms(),
        Some(Value::String(s)) => s
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| u64::try_from(t.as_millisecond()).ok())
            .filter(|&ms| ms <= now_ms() + 60_000)
            .ok_or_else(|| {
                ApiError::invalid("consented_at", "'consented_at' is an RFC 3339 time, not in the future.")
            })?,
        Some(_) => return Err(ApiError::invalid("consented_at", "'consented_at' must be a string.")),
    };
    let crypto = state.store.crypto();
    let now = now_ms();
    let op = registry::consent_op(&crypto, n.as_str(), source, consented_ms, &format!("key:{}", p.key_id), now)
        .map_err(store_error)?;
    state.store.commit_one(op).await.map_err(store_error)?;
    let idx = crypto.blind_index(n.as_str());
    audit(state, &p, "consent.put", &idx, "recorded");
    let view = json!({"number": n.as_str(), "source": source, "consented_at": rfc3339(consented_ms), "recorded_at": rfc3339(now)});
    Ok(with_target(json_response(StatusCode::OK, &view), &idx))
}

/// `DELETE /v1/consents/{e164}`.
pub async fn delete_consent(state: &AppState, req: &ApiRequest, raw: &str) -> Handled {
    let p = authorize(state, req, Scope::Optouts)?;
    let n = number(raw)?;
    let idx = state.store.crypto().blind_index(n.as_str());
    if !registry::has_consent(&state.store, &idx).map_err(store_error)? {
        return Err(ApiError::not_found("consent for this number"));
    }
    state.store.commit_one(Op::Delete { key: registry::consent_key(&idx) }).await.map_err(store_error)?;
    audit(state, &p, "consent.delete", &idx, "removed");
    Ok(with_target(json_response(StatusCode::OK, &json!({"number": n.as_str(), "removed": 1})), &idx))
}

/// `GET /v1/inbound?after=CURSOR&limit=N`: inbound texts, oldest first.
pub fn list_inbound(state: &AppState, req: &ApiRequest) -> Handled {
    let p = authorize(state, req, Scope::Read)?;
    inbound_page(state, req, Some(&p.account))
}

/// A page of the inbound texts routed to `account` (`None`: the unrouted ones, which only
/// operators see).
pub fn inbound_page(state: &AppState, req: &ApiRequest, account: Option<&str>) -> Handled {
    let q = query(req);
    let after = match q.get("after") {
        Some(a) => Some(
            a.parse::<u64>()
                .map_err(|_| ApiError::invalid("after", "'after' is the 'next' cursor of a previous page."))?,
        ),
        None => None,
    };
    let limit = page_limit(&q)?;
    let items = crate::inbound::list(&state.store, account, after, limit).map_err(store_error)?;
    // Always where to resume: the last text of this page, or where this page started. A
    // poller keeps it and asks again later; `more` says whether to ask at once.
    let next = items.last().map(|m| m.seq.to_string()).or_else(|| after.map(|a| a.to_string()));
    let more = items.len() == limit;
    let view: Vec<Value> = items
        .iter()
        .map(|m| {
            let mut v = json!({"id": m.seq.to_string(), "carrier": m.carrier, "received_at": rfc3339(m.received_ms), "kind": m.kind});
            if m.purged_ms.is_some() {
                v["purged"] = json!(true);
            } else {
                v["from"] = json!(m.content.from);
                v["to"] = json!(m.content.to);
                v["body"] = json!(m.content.body);
            }
            if let Some(k) = &m.keyword {
                v["keyword"] = json!(k);
            }
            if let Some(n) = m.parts {
                v["parts"] = json!(n);
                v["incomplete"] = json!(m.incomplete);
            }
            v
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"inbound": view, "next": next, "more": more})))
}

/// `limit`: 1 to 1000, 100 when absent; anything else is a 400, not a guess.
pub(super) fn page_limit(q: &std::collections::HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(100),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "'limit' is a whole number from 1 to 1000.")),
    }
}

/// The query string's parameters, percent-decoded (`%2B` is `+`; a bare `+` stays a `+`, as
/// numbers are written).
pub(super) fn query(req: &ApiRequest) -> std::collections::HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

pub(super) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}
