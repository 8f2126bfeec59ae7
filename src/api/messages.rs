//! `/v1/messages` handlers: send (single and batch), read, cancel; idempotency, per-key daily
//! quota and backpressure.

use std::sync::atomic::Ordering;

use hyper::{StatusCode, header};
use serde_json::{Value, json};

use super::error::ApiError;
use super::{ApiRequest, AppState, Handled, authorize, json_body, json_response, message_view, send, store_error};
use crate::auth::{Principal, Scope};
use crate::compliance::Rejection;
use crate::message::{Message, Status, now_ms};
use crate::metrics as m;
use crate::store::{Guard, Guarded, IdempotencyRecord, Op, OpResult, QuotaGuard, layout};

/// Most messages in one batch request.
pub const MAX_BATCH: usize = 1000;

fn refuse_when_stopping(state: &AppState) -> Result<(), ApiError> {
    if state.accepting.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(ApiError::unavailable("shutting_down", "The gateway is shutting down; retry shortly.", 5))
    }
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
fn idempotency_key(req: &ApiRequest) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().ok().filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(|k| Some(k.to_string())).ok_or_else(|| {
        ApiError::invalid("Idempotency-Key", "The Idempotency-Key header must be 1 to 255 visible ASCII characters.")
    })
}

/// SHA-256 of the request body, hex; only a request with an Idempotency-Key is ever compared
/// with an earlier one, so the others skip the hashing.
fn body_hash(idempotency_key: &Option<String>, bytes: &[u8]) -> String {
    match idempotency_key {
        Some(_) => crate::fsutil::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()),
        None => String::new(),
    }
}

/// Answers a replayed request: the stored answer for the same body, 409 for another body.
fn replay(record: &IdempotencyRecord, body_hash: &str) -> Handled {
    if record.body_hash != body_hash {
        return Err(ApiError::conflict(
            "idempotency_conflict",
            "This Idempotency-Key was used with a different request body in the last 24 hours.",
        ));
    }
    let status = StatusCode::from_u16(record.status).unwrap_or(StatusCode::ACCEPTED);
    let mut r = json_response(status, &record.response);
    r.headers_mut().insert("idempotent-replayed", header::HeaderValue::from_static("true"));
    if status == StatusCode::ACCEPTED {
        with_location(&mut r, &record.response);
    }
    Ok(r)
}

/// `Location: /v1/messages/{id}` on a 202: where the message's status is.
fn with_location(r: &mut hyper::Response<http_body_util::Full<bytes::Bytes>>, view: &Value) {
    if let Some(id) = view["id"].as_str()
        && let Ok(v) = header::HeaderValue::from_str(&format!("/v1/messages/{id}"))
    {
        r.headers_mut().insert(header::LOCATION, v);
    }
}

/// What one validated message adds to its request's commit.
struct Prepared {
    msg: Message,
    quotas: Vec<QuotaGuard>,
    ops: Vec<Op>,
}

/// Validates one message, checks its sender against the key's account, applies the
/// compliance rules, and turns it into a record (not yet stored) plus the counters and
/// entries its commit must check and write.
fn prepare(state: &AppState, principal: &Principal, value: &Value) -> Result<Prepared, ApiError> {
    let config = state.live.config();
    let limits = send::Limits { max_body_chars: config.api.max_body_chars };
    let mut request = send::parse(value, limits)?;
    let account = state.accounts.get(&principal.account).ok_or_else(ApiError::account_disabled)?;
    let chosen = super::senders::choose(state, &account, &request)?;
    request.from = chosen.from;
    let route = config
        .route(request.to.as_str(), request.from.as_deref(), request.category.as_deref())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::unprocessable("no_route", "No route is configured for this destination."))?;
    let senders = config.effective_senders(request.from.as_deref(), &route);
    let seq = state.store.next_seq().map_err(store_error)?;
    let ids = (principal.key_id.as_str(), account.name.as_str());
    let mut msg = send::build_message(request, ids, seq, route, config.dispatch.default_validity_secs);
    if msg.callback_url.is_none() {
        msg.callback_url = principal.webhook_url.clone().or_else(|| account.webhook_url.clone());
    }
    if let Some(url) = &msg.callback_url {
        let policy = config.webhooks.policy().unwrap_or_default();
        if let Err(e) = policy.check(url) {
            return Err(ApiError::invalid("callback_url", format!("'callback_url' is refused: {e}.")));
        }
    }
    msg.webhook_body = principal.webhook_include_body;
    let crypto = state.store.crypto();
    let plan = state
        .live
        .compliance()
        .check_accept(&state.store, &crypto, &msg, &senders, None, principal.content_action)
        .map_err(store_error)?
        .map_err(rejection)?;
    if let Some(due) = plan.due_ms {
        // Quiet hours: held until the window ends; validity counts from then.
        msg.expires_ms = due + (msg.expires_ms - msg.due_ms);
        msg.due_ms = due;
        msg.status = Status::Scheduled;
        msg.history = vec![crate::message::Event::new(Status::Scheduled, msg.created_ms, Some("quiet_hours".into()))];
    }
    msg.recipient_tz = Some(plan.recipient_tz);
    for rule in &plan.flags {
        m::content_flag(rule);
        state.audit.record(
            crate::audit::Event::new(format!("key:{}", principal.key_id), "content.flag", msg.id.clone(), "accepted")
                .detail(json!({"rule": rule})),
        );
    }
    msg.flags = plan.flags.iter().map(|r| r.to_string()).collect();
    // Seal here, on the request's own task, rather than in the single writer thread.
    msg.sealed = Some(crate::store::seal_content(&crypto, &msg));
    let mut quotas = plan.quotas;
    let mut ops: Vec<Op> = crate::store::index::message_ops(&msg, &crypto.blind_index(&msg.content.to)).into();
    if let Some(pick) = chosen.pick {
        quotas.extend(pick.count);
        ops.extend(pick.ops);
    }
    Ok(Prepared { msg, quotas, ops })
}

/// The 422 for a compliance refusal; never echoes the matched text.
fn rejection(r: Rejection) -> ApiError {
    match r {
        Rejection::OptedOut => {
            m::compliance_rejection("recipient_opted_out");
            ApiError::unprocessable("recipient_opted_out", "The recipient has opted out of messages from this sender.")
                .field("to")
        }
        Rejection::ConsentRequired => {
            m::compliance_rejection("consent_required");
            ApiError::unprocessable("consent_required", "No recorded consent (opt-in) for this recipient.").field("to")
        }
        Rejection::Content(rule) => {
            m::compliance_rejection("content_policy_violation");
            ApiError::unprocessable(
                "content_policy_violation",
                format!("The body breaks the content rule '{rule}' (PHI must not be sent by SMS)."),
            )
            .field("body")
        }
        Rejection::FrequencyCap { next_allowed_ms, limit } => {
            m::compliance_rejection("frequency_cap_exceeded");
            ApiError::unprocessable(
                "frequency_cap_exceeded",
                format!(
                    "This category's {limit} for this recipient is reached; the next message may go at {}.",
                    crate::message::rfc3339(next_allowed_ms)
                ),
            )
            .field("to")
        }
    }
}

/// Refuses what could not be stored or queued: full queues (429) or a disk below its floor (503).
fn check_capacity(state: &AppState, messages: &[Message]) -> Result<(), ApiError> {
    let config = state.live.config();
    let floor = config.queue.min_free_disk_mb << 20;
    if state.disk_free_bytes.load(Ordering::Acquire) < floor {
        return Err(ApiError::unavailable(
            "store_unavailable",
            "The message store is low on disk space; nothing was accepted. Retry later.",
            30,
        ));
    }
    let limits = &config.queue;
    if state.queues.total() + messages.len() > limits.max_depth {
        return Err(ApiError::too_many("queue_full", "The gateway's queue is full; retry later.", 5));
    }
    if let Some(first) = messages.first()
        && let Some(share) = state.accounts.get(&first.account).and_then(|a| a.queue_share)
    {
        let limit = limits.max_depth * usize::from(share) / 100;
        if state.queues.queued_for(&first.account) + messages.len() > limit {
            return Err(ApiError::too_many(
                "queue_full",
                format!("This account's share of the queue ({share} %, {limit} messages) is full; retry later."),
                5,
            ));
        }
    }
    let mut per_carrier = std::collections::HashMap::<&str, usize>::new();
    for msg in messages {
        *per_carrier.entry(msg.queue_carrier()).or_default() += 1;
    }
    for (carrier, n) in per_carrier {
        let depth = state.queues.get(carrier).map(|q| q.len()).unwrap_or(0);
        if depth + n > limits.max_depth_per_carrier {
            return Err(ApiError::too_many(
                "queue_full",
                "The queue for this destination's carrier is full; retry later.",
                5,
            ));
        }
    }
    Ok(())
}

/// Seconds until the next UTC midnight (when daily quotas reset).
fn secs_to_midnight() -> u64 {
    86_400 - (now_ms() / 1000) % 86_400
}

/// The key's and its account's daily segment quotas, as guards on the commit.
fn quota_guards(state: &AppState, principal: &Principal, messages: &[Message]) -> Vec<QuotaGuard> {
    let day = jiff::Timestamp::now().strftime("%Y%m%d").to_string();
    let amount: u64 = messages.iter().map(|m| u64::from(m.segments)).sum();
    let guard = |owner: &str, limit: u64, label: &str| QuotaGuard {
        key: layout::usage(owner, &day),
        also: vec![],
        amount,
        adds: true,
        limit,
        label: label.into(),
    };
    let account_limit = state.accounts.get(&principal.account).and_then(|a| a.daily_segments);
    let mut guards: Vec<QuotaGuard> =
        principal.daily_segments.map(|l| guard(&principal.key_id, l, KEY_QUOTA)).into_iter().collect();
    // Key ids are letters and digits, so `@name` never collides with one.
    guards.extend(account_limit.map(|l| guard(&format!("@{}", principal.account), l, ACCOUNT_QUOTA)));
    guards
}

const KEY_QUOTA: &str = "daily_quota";
const ACCOUNT_QUOTA: &str = "account_daily_quota";

fn accepted_view(msg: &Message) -> Value {
    json!({ "id": msg.id, "status": msg.status.as_str(), "segments": msg.segments, "encoding": msg.encoding.as_str() })
}

/// Stores `messages` in one guarded commit, queues them, and answers `status` + `response`.
#[allow(clippy::too_many_arguments)]
async fn accept(
    state: &AppState,
    principal: &Principal,
    messages: Vec<Message>,
    extra_quotas: Vec<QuotaGuard>,
    extra_ops: Vec<Op>,
    idempotency: Option<(String, String)>,
    status: StatusCode,
    response: Value,
) -> Handled {
    let guard = Guard {
        idempotency: idempotency.map(|(key, hash)| {
            let record = IdempotencyRecord {
                body_hash: hash,
                status: status.as_u16(),
                response: response.clone(),
                created_ms: now_ms(),
            };
            (layout::idempotency(&principal.key_id, &key), record)
        }),
        quotas: quota_guards(state, principal, &messages).into_iter().chain(extra_quotas).collect(),
    };
    let queued: Vec<_> = messages
        .iter()
        .filter_map(|m| {
            let entry = crate::queue::Entry::new(m.due_ms, m.seq, &m.id, m.expires_ms)?.of(&m.account);
            Some((m.queue_carrier().to_string(), entry))
        })
        .collect();
    let ops = messages.into_iter().map(|m| Op::Insert(Box::new(m))).chain(extra_ops).collect();
    let hash = guard.idempotency.as_ref().map(|(_, r)| r.body_hash.clone()).unwrap_or_default();
    // Commit and enqueue on a task of their own: a client that hangs up (or an HTTP/2 stream
    // reset) drops this request's future, and a message committed without being queued
    // would wait for the next restart.
    let (store, queues, account) = (state.store.clone(), state.queues.clone(), principal.account.clone());
    let stored = tokio::spawn(async move {
        let outcome = store.commit_guarded(ops, Some(guard)).await;
        if let Ok(Guarded::Applied(_)) = &outcome {
            m::accepted(&account, queued.len() as u64);
            for (carrier, entry) in queued {
                if let Some(q) = queues.get(&carrier) {
                    q.push(entry);
                }
            }
        }
        outcome
    });
    let outcome = stored.await.map_err(|_| store_error(crate::store::StoreError::Closed))?;
    match outcome.map_err(store_error)? {
        Guarded::Applied(_) => Ok(json_response(status, &response)),
        Guarded::Replay(record) => replay(&record, &hash),
        Guarded::QuotaExceeded { label, used, limit } if label == KEY_QUOTA || label == ACCOUNT_QUOTA => {
            let whose = if label == KEY_QUOTA { "This API key" } else { "This API key's account" };
            Err(ApiError::too_many(
                "quota_exceeded",
                format!("{whose} has used {used} of its {limit} segments for today (UTC)."),
                secs_to_midnight(),
            ))
        }
        // A per-recipient frequency cap filled up between the check and the commit.
        Guarded::QuotaExceeded { label, .. } => {
            m::compliance_rejection("frequency_cap_exceeded");
            Err(ApiError::unprocessable(
                "frequency_cap_exceeded",
                format!("This category's {label} for this recipient is reached."),
            )
            .field("to"))
        }
    }
}

/// The messages of a batch body `{"messages": [...]}`, each as raw JSON text borrowed from
/// the body.
fn batch_envelope(req: &ApiRequest) -> Result<Vec<&serde_json::value::RawValue>, ApiError> {
    use serde_json::value::RawValue;
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
        && !ct.trim_start().to_ascii_lowercase().starts_with("application/json")
    {
        return Err(ApiError::unsupported_media_type());
    }
    let envelope: std::collections::BTreeMap<&str, &RawValue> = match serde_json::from_slice(req.body()) {
        Ok(e) => e,
        Err(e) if e.is_data() => {
            return Err(ApiError::invalid("messages", "The body must be an object: {\"messages\": [...]}."));
        }
        Err(e) => return Err(ApiError::malformed_json(e)),
    };
    if let Some(unknown) = envelope.keys().find(|k| **k != "messages") {
        return Err(ApiError::unknown_field(unknown));
    }
    let raw = envelope.get("messages").ok_or_else(|| ApiError::missing("messages"))?;
    let items: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| ApiError::invalid("messages", "'messages' must be an array."))?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "messages",
            format!("'messages' holds 1 to {MAX_BATCH} messages; this one has {}.", items.len()),
        ));
    }
    Ok(items)
}

/// Looks for an earlier answer to the same key before doing any work. What sled shows may
/// be applied but not yet fsynced, so the replay waits for the writer to make it durable: a
/// retry is never answered before the request it repeats.
async fn early_replay(state: &AppState, principal: &Principal, key: &Option<String>, hash: &str) -> Option<Handled> {
    let key = key.as_ref()?;
    let record: IdempotencyRecord = state.store.get(&layout::idempotency(&principal.key_id, key)).ok()??;
    if now_ms() >= record.created_ms + crate::store::IDEMPOTENCY_TTL_MS {
        return None;
    }
    if let Err(e) = state.store.durable_barrier().await {
        return Some(Err(store_error(e)));
    }
    Some(replay(&record, hash))
}

/// `POST /v1/messages`
pub async fn send(state: &AppState, req: ApiRequest) -> Handled {
    let principal = authorize(state, &req, Scope::Send)?;
    refuse_when_stopping(state)?;
    let idem = idempotency_key(&req)?;
    let value = json_body(&req)?;
    let hash = body_hash(&idem, req.body());
    if let Some(answer) = early_replay(state, &principal, &idem, &hash).await {
        return answer;
    }
    let Prepared { msg, quotas, ops } = prepare(state, &principal, &value)?;
    check_capacity(state, std::slice::from_ref(&msg))?;
    let response = accepted_view(&msg);
    let idem = idem.map(|k| (k, hash));
    let mut answer =
        accept(state, &principal, vec![msg], quotas, ops, idem, StatusCode::ACCEPTED, response.clone()).await?;
    if let Some(id) = response["id"].as_str() {
        answer.extensions_mut().insert(super::AuditTarget(id.to_string()));
    }
    if answer.status() == StatusCode::ACCEPTED {
        with_location(&mut answer, &response);
    }
    Ok(answer)
}

/// `POST /v1/messages/batch`: `{"messages": [...]}`, up to 1000; answers 200 with one result per
/// item, in order; the accepted ones are stored in one commit.
pub async fn send_batch(state: &AppState, req: ApiRequest) -> Handled {
    let principal = authorize(state, &req, Scope::Send)?;
    refuse_when_stopping(state)?;
    let idem = idempotency_key(&req)?;
    // The envelope is read without building a tree of the whole body: each message stays raw
    // text until its turn (a 4 MiB body would be tens of MiB as a `Value`).
    let items = batch_envelope(&req)?;
    let hash = body_hash(&idem, req.body());
    if let Some(answer) = early_replay(state, &principal, &idem, &hash).await {
        return answer;
    }
    let mut results = Vec::with_capacity(items.len());
    let mut accepted = Vec::new();
    let mut quotas = Vec::new();
    let mut ops = Vec::new();
    for (index, raw) in items.iter().enumerate() {
        let item: Value = match serde_json::from_str(raw.get()) {
            Ok(v) => v,
            Err(e) => {
                let e = ApiError::malformed_json(e);
                results.push(json!({"index": index, "error": {"code": e.code, "message": e.message}}));
                continue;
            }
        };
        match prepare(state, &principal, &item) {
            Ok(p) => {
                let mut r = accepted_view(&p.msg);
                r["index"] = json!(index);
                results.push(r);
                accepted.push(p.msg);
                quotas.extend(p.quotas);
                ops.extend(p.ops);
            }
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return Err(e),
            Err(e) => {
                let mut err = json!({"code": e.code, "message": e.message});
                if let Some(f) = &e.field {
                    err["field"] = json!(f);
                }
                results.push(json!({"index": index, "error": err}));
            }
        }
    }
    check_capacity(state, &accepted)?;
    let response = json!({ "accepted": accepted.len(), "rejected": items.len() - accepted.len(), "results": results });
    if accepted.is_empty() {
        return Ok(json_response(StatusCode::OK, &response));
    }
    let count = accepted.len();
    let mut answer =
        accept(state, &principal, accepted, quotas, ops, idem.map(|k| (k, hash)), StatusCode::OK, response).await?;
    answer.extensions_mut().insert(super::AuditTarget(format!("batch:{count}")));
    Ok(answer)
}

fn owned_message(state: &AppState, principal: &Principal, id: &str) -> Result<Message, ApiError> {
    if id.len() != 26 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::not_found("message with this id"));
    }
    match state.store.message(id).map_err(store_error)? {
        Some(m) if m.account == principal.account => Ok(m),
        // Another account's message is as absent as a message that does not exist.
        _ => Err(ApiError::not_found("message with this id")),
    }
}

/// `GET /v1/messages/{id}`
pub fn get(state: &AppState, req: &ApiRequest, id: &str) -> Handled {
    let principal = authorize(state, req, Scope::Read)?;
    let msg = owned_message(state, &principal, id)?;
    let mut r = json_response(StatusCode::OK, &message_view(&msg));
    r.extensions_mut().insert(super::AuditTarget(id.to_string()));
    Ok(r)
}

/// `DELETE /v1/messages/{id}`: cancels a message no part of which has left for the carrier.
pub async fn cancel(state: &AppState, req: &ApiRequest, id: &str) -> Handled {
    let principal = authorize(state, req, Scope::Send)?;
    owned_message(state, &principal, id)?;
    let submitted = || {
        ApiError::conflict(
            "already_submitted",
            "The message is (being) submitted to the carrier; it can no longer be cancelled.",
        )
    };
    // The dispatcher is handing it to a carrier right now.
    let claim = state.claims.claim(id).ok_or_else(submitted)?;
    let result = state.store.commit_one(Op::Cancel { id: id.to_string() }).await;
    drop(claim);
    match result.map_err(store_error)? {
        OpResult::Updated { .. } | OpResult::AlreadyFinal(Status::Cancelled) => {
            let msg = owned_message(state, &principal, id)?;
            let mut r = json_response(StatusCode::OK, &message_view(&msg));
            r.extensions_mut().insert(super::AuditTarget(id.to_string()));
            Ok(r)
        }
        OpResult::AlreadySubmitted(_) => Err(submitted()),
        OpResult::AlreadyFinal(status) => Err(ApiError::conflict(
            "already_final",
            format!("The message is already {}; there is nothing to cancel.", status.as_str()),
        )),
        _ => Err(ApiError::not_found("message with this id")),
    }
}
