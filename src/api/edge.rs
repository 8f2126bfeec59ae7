//! The API's connections: what a hostile or merely sloppy client can hold, and for how long.
//!
//! * A cap on open connections (`api.max_connections`): one more is closed at once and
//!   counted (`smsgate_api_connections_refused_total`), so that sockets for SMPP and webhooks
//!   in the same process never run out.
//! * Deadlines: the TLS handshake and every request's header (hyper's header-read timeout,
//!   which also ends an idle HTTP/1.1 keep-alive connection), the body (`body_read_timeout`),
//!   and an idle timeout for HTTP/2 connections (no stream and no byte for that long); HTTP/2
//!   keep-alive pings find peers that vanished.
//! * A budget for request bodies in flight across all connections (`body_budget_mb`): a body
//!   waits for room (up to its read deadline) instead of the process growing with every
//!   concurrent upload.
//! * Error answers that clients can read: the body is read (or drained, without keeping it)
//!   before any answer, up to a cap past the route's limit; beyond that the answer goes out and
//!   the connection closes (`Connection: close` on HTTP/1.1, GOAWAY on HTTP/2) instead of a
//!   stream reset that clients report as a framing error.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::message::mono_ms;

/// The API's limits (from `[api]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Whole request header (and, on HTTP/1.1, the wait for the next one), TLS handshake.
    pub header_read: Duration,
    /// Whole request body.
    pub body_read: Duration,
    /// An HTTP/2 connection with no stream and no traffic this long is closed.
    pub idle: Duration,
    /// HTTP/2 keep-alive ping interval.
    pub h2_keepalive: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Bytes of request bodies held at once, across connections.
    pub body_budget: usize,
}

/// Shared by the accept loop and the request handlers.
pub struct Edge {
    /// The limits in force.
    pub limits: Limits,
    connections: Arc<Semaphore>,
    budget: Arc<Semaphore>,
}

impl Edge {
    /// From the limits.
    pub fn new(limits: Limits) -> Edge {
        Edge {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            budget: Arc::new(Semaphore::new(limits.body_budget.min(u32::MAX as usize))),
            limits,
        }
    }

    /// A place for one more connection, or `None` at the cap.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections - self.connections.available_permits()
    }

    /// Room for `bytes` of body, waiting until `deadline` at most.
    pub async fn reserve(&self, bytes: usize, deadline: tokio::time::Instant) -> Option<OwnedSemaphorePermit> {
        let n = bytes.clamp(1, self.limits.body_budget.max(1)).min(u32::MAX as usize) as u32;
        tokio::time::timeout_at(deadline, self.budget.clone().acquire_many_owned(n)).await.ok()?.ok()
    }
}

/// One connection's activity: requests in flight and the time of the last byte, for the idle
/// timeout, and a request from a handler to close the connection after its answer.
#[derive(Default)]
pub struct ConnState {
    last_activity_ms: AtomicU64,
    active: AtomicUsize,
    close: AtomicBool,
    wake: Notify,
}

impl ConnState {
    /// A new connection, active now.
    pub fn new() -> Arc<ConnState> {
        let s = ConnState::default();
        s.last_activity_ms.store(mono_ms(), Ordering::Release);
        Arc::new(s)
    }

    fn touch(&self) {
        self.last_activity_ms.store(mono_ms(), Ordering::Release);
    }

    /// A request starts; the guard ends it.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// No request in flight and no byte for longer than `idle`.
    pub fn is_idle(&self, idle: Duration) -> bool {
        self.active.load(Ordering::Acquire) == 0
            && mono_ms().saturating_sub(self.last_activity_ms.load(Ordering::Acquire)) > idle.as_millis() as u64
    }

    /// Asks the connection to close once the current answers are out.
    pub fn close_after_response(&self) {
        self.close.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// Whether a handler asked for the connection to close.
    pub fn closing(&self) -> bool {
        self.close.load(Ordering::Acquire)
    }

    /// Resolves when a handler asks for the connection to close.
    pub async fn closed(&self) {
        loop {
            let notified = self.wake.notified();
            if self.closing() {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a request in flight on its connection until dropped.
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// An I/O stream that notes each read and write on its connection's [`ConnState`].
pub struct ActivityIo<T> {
    inner: T,
    state: Arc<ConnState>,
}

impl<T> ActivityIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        ActivityIo { inner, state }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the route takes; `close` when it was not even read to its end.
    TooLarge {
        /// The rest was not read: the connection must close after the answer.
        close: bool,
    },
    /// Not complete by the body deadline (the connection closes after the answer).
    Timeout,
    /// The client went away or sent something that is not a body.
    Broken,
}

/// How far past a route's limit a body is still read (and thrown away) so that the client
/// can read the error answer; beyond this the connection is closed after answering.
pub fn drain_cap(limit: usize) -> usize {
    (limit * 2).max(1 << 20)
}

/// Reads the whole body, keeping at most `limit` bytes (`keep` false: keeps nothing, only
/// reads it to its end), until `deadline`.
pub async fn read_body(
    mut body: Incoming,
    limit: usize,
    keep: bool,
    deadline: tokio::time::Instant,
) -> Result<Bytes, BodyError> {
    let cap = drain_cap(limit);
    let mut kept = BytesMut::new();
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyError::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue }; // trailers
        total += data.len();
        if total > cap {
            return Err(BodyError::TooLarge { close: true });
        }
        if keep && total <= limit {
            kept.extend_from_slice(&data);
        }
    }
    if total > limit {
        return Err(BodyError::TooLarge { close: false });
    }
    Ok(kept.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_means_no_request_and_no_traffic() {
        let s = ConnState::new();
        assert!(!s.is_idle(Duration::from_secs(60)));
        s.last_activity_ms.store(mono_ms() - 120_000, Ordering::Release);
        assert!(s.is_idle(Duration::from_secs(60)));
        let guard = s.request();
        assert!(!s.is_idle(Duration::from_secs(60)), "a request in flight keeps it");
        drop(guard);
        assert!(!s.is_idle(Duration::from_secs(60)), "and its end counts as activity");
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_waits_are_bounded() {
        let edge = Edge::new(Limits {
            header_read: Duration::from_secs(1),
            body_read: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            h2_keepalive: Duration::from_secs(1),
            max_connections: 2,
            body_budget: 100,
        });
        let soon = || tokio::time::Instant::now() + Duration::from_millis(50);
        let a = edge.reserve(80, soon()).await.unwrap();
        assert!(edge.reserve(80, soon()).await.is_none(), "no room: the wait ends at the deadline");
        drop(a);
        assert!(edge.reserve(500, soon()).await.is_some(), "one body larger than the budget takes all of it");
        let (c1, c2) = (edge.admit(), edge.admit());
        assert!(c1.is_some() && c2.is_some() && edge.admit().is_none());
        assert_eq!(edge.open_connections(), 2);
    }
}
