//! The HTTPS API: hyper 1 (HTTP/1.1 and HTTP/2 by ALPN) behind tokio-rustls, routing,
//! authentication, and the JSON handlers.

mod admin;
pub mod edge;
pub mod error;
mod messages;
mod registry;
mod search;
pub mod send;
mod senders;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
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
use crate::smpp::client::session::CarrierLink;
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
    /// Accounts.
    pub accounts: Arc<crate::accounts::Accounts>,
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
    /// Connection and body limits.
    pub edge: edge::Edge,
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

/// A request with its whole body (read under the edge's limits before any handler runs).
pub type ApiRequest = Request<Bytes>;

/// Serves the API on `listener` until `shutdown` turns true, then lets open requests finish
/// (up to `grace`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let limits = state.edge.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keepalive)
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(200u32);
    let builder = Arc::new(builder);
    let hsts = tls.is_some();
    let (stop_tx, stop_rx) = watch::channel(false);
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
        let Some(place) = state.edge.admit() else {
            m::api_connection_refused();
            drop(tcp);
            continue;
        };
        m::api_connections(state.edge.open_connections());
        let _ = tcp.set_nodelay(true);
        let (state, builder, tls, stop) = (state.clone(), builder.clone(), tls.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let conn = edge::ConnState::new();
            let c = conn.clone();
            let s = state.clone();
            let source = peer.ip();
            let service = hyper::service::service_fn(move |req| handle(s.clone(), c.clone(), req, source, hsts));
            match tls {
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(limits.header_read, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let io = TokioIo::new(edge::ActivityIo::new(stream, conn.clone()));
                    run_connection(builder.serve_connection(io, service), &conn, limits.idle, stop).await;
                }
                None => {
                    let io = TokioIo::new(edge::ActivityIo::new(tcp, conn.clone()));
                    run_connection(builder.serve_connection(io, service), &conn, limits.idle, stop).await;
                }
            }
            drop(place);
            m::api_connections(state.edge.open_connections());
        });
    }
    info!("API stopped accepting connections; finishing open requests");
    let _ = stop_tx.send(true);
    let started = tokio::time::Instant::now();
    while state.edge.open_connections() > 0 {
        if started.elapsed() > grace {
            warn!(open = state.edge.open_connections(), "some API connections were still open after the grace period");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drives one connection; ends it gracefully (in-flight requests finish) when the gateway
/// stops, when a handler asked for it, or when it stays idle.
async fn run_connection<C>(conn: C, state: &edge::ConnState, idle: Duration, mut stop: watch::Receiver<bool>)
where
    C: std::future::Future + GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(idle));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.changed(), if !closing => {
                conn.as_mut().shutdown_gracefully();
                closing = true;
            }
            _ = state.closed(), if !closing => {
                conn.as_mut().shutdown_gracefully();
                closing = true;
            }
            _ = tick.tick(), if !closing => {
                if state.is_idle(idle) {
                    conn.as_mut().shutdown_gracefully();
                    closing = true;
                }
            }
        }
    }
}

/// hyper-util's connection types, seen through the one method the loop above needs.
trait GracefulConnection {
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> GracefulConnection for hyper_util::server::conn::auto::Connection<'_, I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The most a route's body may be.
fn body_limit(path: &str) -> usize {
    if path.trim_end_matches('/') == "/v1/messages/batch" { MAX_BATCH_BYTES } else { MAX_BODY_BYTES }
}

async fn handle(
    state: Arc<AppState>,
    conn: Arc<edge::ConnState>,
    req: Request<Incoming>,
    peer: std::net::IpAddr,
    hsts: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _in_flight = conn.request();
    let started = Instant::now();
    let version = req.version();
    // Who is calling, for the audit entry (the handler authorizes on its own).
    let caller = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|h| state.keys.authenticate(Some(h)).map(|p| p.key_id));
    let actor = match &caller {
        Some(Ok(id)) => format!("key:{id}"),
        Some(Err(_)) => "invalid-key".to_string(),
        None => "anonymous".to_string(),
    };
    let method = req.method().clone();
    let (parts, body) = req.into_parts();
    // The body is read before any answer, so that every client reads its answer; without a
    // valid key it is only drained (never held), with one it waits for room in the budget.
    let limit = body_limit(parts.uri.path());
    let deadline = tokio::time::Instant::now() + state.edge.limits.body_read;
    let authenticated = matches!(caller, Some(Ok(_)));
    let hint = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(limit)
        .min(limit);
    let room = if authenticated && hint > 0 { state.edge.reserve(hint, deadline).await } else { None };
    let read = if authenticated && hint > 0 && room.is_none() {
        Err(ApiError::unavailable("busy", "The gateway is receiving too much at once; retry shortly.", 1))
    } else {
        edge::read_body(body, limit, authenticated, deadline).await.map_err(|e| match e {
            edge::BodyError::TooLarge { close } => {
                if close {
                    conn.close_after_response();
                }
                ApiError::too_large(limit)
            }
            edge::BodyError::Timeout => {
                conn.close_after_response();
                ApiError::timeout()
            }
            edge::BodyError::Broken => ApiError::malformed_json("the body could not be read"),
        })
    };
    let (route, result) = match read {
        Ok(bytes) => route(&state, Request::from_parts(parts, bytes)).await,
        Err(e) => ("other", Err(e)),
    };
    drop(room);
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if matches!(caller, None | Some(Err(_))) && !matches!(route, "healthz" | "readyz") {
        // Without a valid key: counted per source and minute, so a flood cannot fill the disk.
        state.audit.refused(peer, &actor, response.status().as_u16());
    } else if !matches!(route, "healthz" | "readyz") {
        let target = response.extensions().get::<AuditTarget>().map(|t| t.0.clone()).unwrap_or_default();
        state.audit.record(
            crate::audit::Event::new(actor, format!("api.{route}"), target, response.status().as_u16().to_string())
                .detail(json!({"method": method.as_str()})),
        );
    }
    let headers = response.headers_mut();
    if hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, header::HeaderValue::from_static("max-age=31536000"));
    }
    // Answers carry message data: no cache on the way may keep them.
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    if conn.closing() && version < hyper::Version::HTTP_2 {
        headers.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    m::api_request(route, response.status().as_u16(), started.elapsed().as_secs_f64());
    Ok(response)
}

type Handled = Result<Response<Full<Bytes>>, ApiError>;

async fn route(state: &AppState, req: ApiRequest) -> (&'static str, Handled) {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["healthz"], &Method::GET) => ("healthz", Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))),
        (["readyz"], &Method::GET) => ("readyz", Ok(readyz(state))),
        (["v1", "messages"], &Method::POST) => ("send", messages::send(state, req).await),
        (["v1", "messages"], &Method::GET) => ("search", search::list(state, &req)),
        (["v1", "messages", "batch"], &Method::POST) => ("send_batch", messages::send_batch(state, req).await),
        (["v1", "messages", "batch"], _) => ("other", Err(ApiError::method_not_allowed(&["POST"]))),
        (["v1", "messages", id], &Method::GET) => {
            let id = id.to_string();
            ("get_message", messages::get(state, &req, &id))
        }
        (["v1", "messages", id], &Method::DELETE) => {
            let id = id.to_string();
            ("cancel_message", messages::cancel(state, &req, &id).await)
        }
        (["v1", "admin", rest @ ..], _) => ("admin", admin::route(state, req, rest).await),
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
        (["v1", "inbound"] | ["v1", "opt-outs"], _) => ("other", Err(ApiError::method_not_allowed(&["GET"]))),
        (["v1", "opt-outs", _], _) => ("other", Err(ApiError::method_not_allowed(&["GET", "PUT", "DELETE"]))),
        (["v1", "consents", _], _) => ("other", Err(ApiError::method_not_allowed(&["PUT", "DELETE"]))),
        (["healthz"] | ["readyz"], _) => ("other", Err(ApiError::method_not_allowed(&["GET"]))),
        (["v1", "messages"], _) => ("other", Err(ApiError::method_not_allowed(&["GET", "POST"]))),
        (["v1", "messages", _], _) => ("other", Err(ApiError::method_not_allowed(&["GET", "DELETE"]))),
        _ => ("other", Err(ApiError::not_found("such endpoint"))),
    }
}

/// Authenticates, checks the scope, and counts the request against the key's rate.
fn authorize(state: &AppState, req: &ApiRequest, scope: Scope) -> Result<Principal, ApiError> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = state
        .keys
        .authenticate(header)
        .map_err(|e| ApiError::unauthorized(e.to_string(), matches!(e, crate::auth::AuthError::Invalid)))?;
    if !principal.has(scope) {
        let name = match scope {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Optouts => "optouts",
            Scope::Admin => "admin",
        };
        return Err(ApiError::forbidden(name));
    }
    if state.accounts.get(&principal.account).is_none_or(|a| a.disabled) {
        return Err(ApiError::account_disabled());
    }
    if let Err(wait) = state.keys.check_rate(&principal.key_id) {
        return Err(ApiError::too_many(
            "rate_limited",
            "This API key is over its request rate; slow down.",
            wait.as_secs_f64().ceil() as u64,
        ));
    }
    if let Err(wait) = state.accounts.check_rate(&principal.account) {
        return Err(ApiError::too_many(
            "rate_limited",
            "This API key's account is over its request rate; slow down.",
            wait.as_secs_f64().ceil() as u64,
        ));
    }
    Ok(principal)
}

/// The body as JSON: it must say `application/json` if it says anything, and parse.
fn json_body(req: &ApiRequest) -> Result<Value, ApiError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
        && !ct.trim_start().to_ascii_lowercase().starts_with("application/json")
    {
        return Err(ApiError::unsupported_media_type());
    }
    serde_json::from_slice(req.body()).map_err(ApiError::malformed_json)
}

/// An optional JSON body: `None` when there is none at all.
fn optional_json_body(req: &ApiRequest) -> Result<Option<Value>, ApiError> {
    if req.body().iter().all(u8::is_ascii_whitespace) { Ok(None) } else { json_body(req).map(Some) }
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
