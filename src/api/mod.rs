//! The HTTPS API: hyper 1 (HTTP/1.1 and HTTP/2 by ALPN) behind tokio-rustls, routing,
//! authentication, and the JSON handlers.

pub mod error;
mod messages;
mod registry;
pub mod send;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::auth::{KeyRing, Principal, Scope};
use crate::message::{Message, rfc3339};
use crate::metrics as m;
use crate::phone::mask;
use crate::queue::Queues;
use crate::smpp::session::CarrierLink;
use crate::store::Store;
use error::ApiError;

/// Largest request body (DESIGN.md: 413 beyond it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest batch body: 1000 messages of up to 1600 characters.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Everything the handlers share.
pub struct AppState {
    /// The store.
    pub store: Store,
    /// API keys.
    pub keys: Arc<KeyRing>,
    /// Per-carrier due queues.
    pub queues: Arc<Queues>,
    /// Configuration and compliance rules (reloadable).
    pub live: Arc<crate::live::Live>,
    /// Carrier links, for readiness.
    pub links: Vec<CarrierLink>,
    /// False once shutdown began: new sends get 503.
    pub accepting: AtomicBool,
    /// Claims shared with the dispatcher, so cancel and dispatch never interleave.
    pub claims: Arc<crate::dispatch::Claims>,
    /// Free bytes on the data directory's file system, refreshed every second.
    pub disk_free_bytes: std::sync::atomic::AtomicU64,
    /// The audit trail.
    pub audit: crate::audit::Audit,
}

/// What a request acted on, for its audit entry (set by handlers as a response extension).
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

/// Serves the API on `listener` until `shutdown` turns true, then lets open requests finish
/// (up to `grace`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let hsts = tls.is_some();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req, hsts));
            match tls {
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    info!("API stopped accepting connections; finishing open requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!("some API connections were still open after the grace period");
    }
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>, hsts: bool) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    // Who is calling, for the audit entry (the handler authorizes on its own).
    let actor = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|h| match state.keys.authenticate(Some(h)) {
            Ok(p) => format!("key:{}", p.key_id),
            Err(_) => "invalid-key".to_string(),
        })
        .unwrap_or_else(|| "anonymous".to_string());
    let method = req.method().clone();
    let (route, result) = route(&state, req).await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if !matches!(route, "healthz" | "readyz") {
        let target = response.extensions().get::<AuditTarget>().map(|t| t.0.clone()).unwrap_or_default();
        state.audit.record(
            crate::audit::Event::new(actor, format!("api.{route}"), target, response.status().as_u16().to_string())
                .detail(json!({"method": method.as_str()})),
        );
    }
    if hsts {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, header::HeaderValue::from_static("max-age=31536000"));
    }
    m::api_request(route, response.status().as_u16(), started.elapsed().as_secs_f64());
    Ok(response)
}

type Handled = Result<Response<Full<Bytes>>, ApiError>;

async fn route(state: &AppState, req: Request<Incoming>) -> (&'static str, Handled) {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["healthz"], &Method::GET) => ("healthz", Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))),
        (["readyz"], &Method::GET) => ("readyz", Ok(readyz(state))),
        (["v1", "messages"], &Method::POST) => ("send", messages::send(state, req).await),
        (["v1", "messages", "batch"], &Method::POST) => ("send_batch", messages::send_batch(state, req).await),
        (["v1", "messages", id], &Method::GET) => {
            let id = id.to_string();
            ("get_message", messages::get(state, &req, &id))
        }
        (["v1", "messages", id], &Method::DELETE) => {
            let id = id.to_string();
            ("cancel_message", messages::cancel(state, &req, &id).await)
        }
        (["v1", "inbound"], &Method::GET) => ("list_inbound", registry::list_inbound(state, &req)),
        (["v1", "opt-outs"], &Method::GET) => ("list_optouts", registry::list_optouts(state, &req)),
        (["v1", "opt-outs", n], &Method::GET) => {
            let n = n.to_string();
            ("get_optout", registry::get_optout(state, &req, &n))
        }
        (["v1", "opt-outs", n], &Method::PUT) => {
            let n = n.to_string();
            ("put_optout", registry::put_optout(state, req, &n).await)
        }
        (["v1", "opt-outs", n], &Method::DELETE) => {
            let n = n.to_string();
            ("delete_optout", registry::delete_optout(state, &req, &n).await)
        }
        (["v1", "consents", n], &Method::PUT) => {
            let n = n.to_string();
            ("put_consent", registry::put_consent(state, req, &n).await)
        }
        (["v1", "consents", n], &Method::DELETE) => {
            let n = n.to_string();
            ("delete_consent", registry::delete_consent(state, &req, &n).await)
        }
        (["v1", "inbound"] | ["v1", "opt-outs"], _) => ("other", Err(ApiError::method_not_allowed("GET"))),
        (["v1", "opt-outs", _], _) => ("other", Err(ApiError::method_not_allowed("GET, PUT or DELETE"))),
        (["v1", "consents", _], _) => ("other", Err(ApiError::method_not_allowed("PUT or DELETE"))),
        (["healthz"] | ["readyz"], _) => ("other", Err(ApiError::method_not_allowed("GET"))),
        (["v1", "messages"] | ["v1", "messages", "batch"], _) => ("other", Err(ApiError::method_not_allowed("POST"))),
        (["v1", "messages", _], _) => ("other", Err(ApiError::method_not_allowed("GET or DELETE"))),
        _ => ("other", Err(ApiError::not_found("such endpoint"))),
    }
}

/// Authenticates, checks the scope, and counts the request against the key's rate.
fn authorize(state: &AppState, req: &Request<Incoming>, scope: Scope) -> Result<Principal, ApiError> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = state.keys.authenticate(header).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    if !principal.has(scope) {
        let name = match scope {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Optouts => "optouts",
            Scope::Admin => "admin",
        };
        return Err(ApiError::forbidden(name));
    }
    if let Err(wait) = state.keys.check_rate(&principal.key_id) {
        return Err(ApiError::too_many(
            "rate_limited",
            "This API key is over its request rate; slow down.",
            wait.as_secs_f64().ceil() as u64,
        ));
    }
    Ok(principal)
}

/// Reads the whole body (at most `limit` bytes) and parses it as JSON; returns both.
async fn read_json(req: Request<Incoming>, limit: usize) -> Result<(Bytes, Value), ApiError> {
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(ApiError::too_large(limit));
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
        && !ct.trim_start().to_ascii_lowercase().starts_with("application/json")
    {
        return Err(ApiError::unsupported_media_type());
    }
    let collected = Limited::new(req.into_body(), limit).collect().await;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(ApiError::too_large(limit));
        }
        Err(_) => return Err(ApiError::malformed_json("the body could not be read")),
    };
    let value = serde_json::from_slice(&bytes).map_err(ApiError::malformed_json)?;
    Ok((bytes, value))
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    warn!(error = %e, "store error on the API path");
    let message = match e {
        // The failed group may still reach the disk (its write can have landed although the
        // sync failed): only an Idempotency-Key makes the retry safe.
        crate::store::StoreError::Failed(_) => {
            "The message store failed and the gateway is restarting; this request may or may not have been \
             stored. Retry later with the same Idempotency-Key."
        }
        _ => "The message store is unavailable; nothing was accepted. Retry later.",
    };
    ApiError::unavailable("store_unavailable", message, 5)
}

/// The API's view of a message: status and history, number masked, never the body.
pub fn message_view(m: &Message) -> Value {
    let mut v = json!({
        "id": m.id,
        "status": m.status.as_str(),
        "to": mask(&m.content.to),
        "segments": m.segments,
        "encoding": m.encoding.as_str(),
        "created_at": rfc3339(m.created_ms),
        "send_at": rfc3339(m.due_ms),
        "expires_at": rfc3339(m.expires_ms),
        "attempts": m.attempts,
        "carrier": m.carrier,
        "carrier_message_ids": m.parts.iter().map(|p| p.carrier_message_id.clone()).collect::<Vec<_>>(),
        "history": m.history.iter().map(|e| {
            let mut h = json!({"status": e.status.as_str(), "at": rfc3339(e.at_ms)});
            if let Some(d) = &e.detail { h["detail"] = json!(d); }
            if e.repeats > 0 {
                h["repeats"] = json!(e.repeats);
                h["last_at"] = json!(rfc3339(e.last_at_ms.unwrap_or(e.at_ms)));
            }
            h
        }).collect::<Vec<_>>(),
    });
    if let Some(r) = &m.client_ref {
        v["client_ref"] = json!(r);
    }
    if let Some(c) = &m.category {
        v["category"] = json!(c);
    }
    if let Some(e) = &m.error {
        v["error"] = json!({"code": e.code, "message": e.message, "carrier_status": e.carrier_status});
    }
    v
}

fn readyz(state: &AppState) -> Response<Full<Bytes>> {
    let mut carriers = BTreeMap::new();
    let mut any_bound = false;
    for link in &state.links {
        let binds = link.bind_statuses();
        any_bound |= link.transmitting_binds() > 0;
        carriers.insert(
            link.name().to_string(),
            json!({ "transmitting_binds": link.transmitting_binds(), "binds": binds }),
        );
    }
    let failure = state.store.tripwire().reason();
    let accepting = state.accepting.load(Ordering::Acquire) && failure.is_none();
    let ready = any_bound && accepting;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({
        "ready": ready, "accepting": accepting, "store": if failure.is_some() { "failed" } else { "open" },
        "queued": state.queues.total(), "carriers": carriers,
    });
    if let Some(reason) = failure {
        body["store_error"] = json!(reason);
    }
    json_response(status, &body)
}
