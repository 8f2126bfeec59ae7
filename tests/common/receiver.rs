//! A webhook receiver for the tests: HTTPS on loopback with the test certificate; checks each
//! signature, records every POST, and answers as told: 500 to the first `fail_first` POSTs
//! and to every path under `/fail`, a body of 1 GiB (streamed, never held) under `/huge`,
//! 200 otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::Value;

use super::Certs;

/// One webhook POST as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    pub valid: bool,
    pub body: Value,
    pub event: String,
    pub delivery: String,
    pub content_type: String,
    pub user_agent: String,
    pub answered: u16,
}

pub type Deliveries = Arc<Mutex<Vec<Delivery>>>;

/// A running receiver.
pub struct Receiver {
    pub port: u16,
    pub got: Deliveries,
    /// Bytes of `/huge` answers written so far.
    pub streamed: Arc<AtomicU64>,
}

/// The body of a `/huge` answer: 1 GiB in 64 KiB pieces of one shared buffer.
struct Huge {
    left: u64,
    piece: Bytes,
    streamed: Arc<AtomicU64>,
}

impl hyper::body::Body for Huge {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.piece.len() as u64);
        self.left -= n;
        self.streamed.fetch_add(n, Ordering::Relaxed);
        let data = self.piece.slice(..n as usize);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
    }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

impl Receiver {
    /// With the API's test certificate (`localhost`, `127.0.0.1`).
    pub async fn start(certs: &Certs, secret: &'static [u8], fail_first: usize) -> Receiver {
        Self::start_as(certs, "api", secret, fail_first).await
    }

    /// With the certificate `certs.path("{cert}.crt")`.
    pub async fn start_as(certs: &Certs, cert: &str, secret: &'static [u8], fail_first: usize) -> Receiver {
        use http_body_util::BodyExt;
        let got: Deliveries = Arc::default();
        let streamed = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(
            smsgate::tls::server_config(
                &certs.path(&format!("{cert}.crt")),
                &certs.path(&format!("{cert}.key")),
                &[b"http/1.1"],
            )
            .unwrap(),
        );
        let (sink, counter) = (got.clone(), streamed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, sink, counter) = (acceptor.clone(), sink.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (sink, counter) = (sink.clone(), counter.clone());
                        async move {
                            let header =
                                |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                            let (sig, event, delivery) =
                                (header("smsgate-signature"), header("smsgate-event"), header("smsgate-delivery"));
                            let (content_type, user_agent) = (header("content-type"), header("user-agent"));
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let now = smsgate::message::now_ms() / 1000;
                            let valid = smsgate::webhooks::verify(secret, &sig, &body, now, 300);
                            let answered = {
                                let mut all = sink.lock().unwrap();
                                let fail = path.starts_with("/fail") || all.len() < fail_first;
                                let answered = if fail { 500 } else { 200 };
                                all.push(Delivery {
                                    path: path.clone(),
                                    valid,
                                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                                    event,
                                    delivery,
                                    content_type,
                                    user_agent,
                                    answered,
                                });
                                answered
                            };
                            let body: AnyBody = if path.starts_with("/huge") {
                                Huge { left: 1 << 30, piece: Bytes::from(vec![b'x'; 64 << 10]), streamed: counter }
                                    .boxed()
                            } else {
                                http_body_util::Full::new(Bytes::from_static(b"ok")).boxed()
                            };
                            let mut r = hyper::Response::new(body);
                            *r.status_mut() = StatusCode::from_u16(answered).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Receiver { port, got, streamed }
    }
}
