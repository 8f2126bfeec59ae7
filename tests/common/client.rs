//! A small HTTPS client for the API (HTTP/1.1, or HTTP/2 by ALPN) that trusts the test
//! certificate; every step has a deadline, so a hung server fails the test instead of CI.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// How long one request may take: longer than the server's own longest deadline (a body may
/// wait `body_read_timeout_secs`, 30 s, for room in the body budget and is then answered 503),
/// so that a test sees the server's answer rather than its own timeout; a hang still fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took longer than {REQUEST_TIMEOUT:?}"),
    }
}

#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    pub token: Option<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub json: Value,
    pub version: hyper::Version,
}

impl Client {
    pub fn new(addr: SocketAddr, ca: &Path, token: Option<String>) -> Client {
        let tls = smsgate::tls::client_config(Some(ca), &[], None).unwrap();
        Client { addr, tls, token }
    }

    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client { token: token.map(String::from), ..self.clone() }
    }

    async fn tls_stream(
        &self,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut config = (*self.tls).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = within("connect", tokio::net::TcpStream::connect(self.addr)).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        within("TLS handshake", tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp)).await
    }

    fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::builder().method(method).uri(path).header("host", "localhost");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(body)).unwrap()
    }

    async fn answer(resp: hyper::Response<hyper::body::Incoming>) -> Answer {
        let status = resp.status();
        let headers = resp.headers().clone();
        let version = resp.version();
        let bytes = within("reading a response", resp.into_body().collect()).await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, headers, json, version }
    }

    /// One request on a fresh HTTP/1.1 connection.
    pub async fn raw(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
        let stream = self.tls_stream(&[b"http/1.1"]).await.expect("TLS connection to the API");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let resp = within("a request", sender.send_request(self.request(method, path, headers, body))).await.unwrap();
        Self::answer(resp).await
    }

    /// One request on a fresh HTTP/2 connection (ALPN h2).
    pub async fn raw_h2(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
        let mut sender = self.h2().await;
        let req = self.request(method, &format!("https://localhost{path}"), headers, body);
        let resp = within("an HTTP/2 request", sender.send_request(req)).await.unwrap();
        Self::answer(resp).await
    }

    /// An HTTP/2 connection (the server must pick h2 by ALPN).
    pub async fn h2(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let stream = self.tls_stream(&[b"h2"]).await.expect("TLS connection to the API");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the server speaks HTTP/2");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        sender
    }

    /// A POST request for `send_request` on an [`Client::h2`] connection.
    pub fn h2_post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request(Method::POST, &format!("https://localhost{path}"), &all, Bytes::from(body.to_string()))
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.raw(Method::POST, path, &[("content-type", "application/json")], Bytes::from(body.to_string())).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.raw(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.raw(Method::DELETE, path, &[], Bytes::new()).await
    }

    /// Sends `bodies` to `to` in one batch, all of which must be accepted; their ids in order.
    pub async fn send_batch(&self, to: &str, bodies: &[String]) -> Vec<String> {
        let messages: Vec<Value> = bodies.iter().map(|b| serde_json::json!({"to": to, "body": b})).collect();
        let a = self.post("/v1/messages/batch", &serde_json::json!({ "messages": messages })).await;
        assert_eq!((a.status, a.json["accepted"].as_u64()), (StatusCode::OK, Some(bodies.len() as u64)), "{}", a.json);
        a.json["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    }

    /// Polls a message until `pred` holds or `timeout` passes; returns the last view.
    pub async fn wait_message(&self, id: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let a = self.get(&format!("/v1/messages/{id}")).await;
            if pred(&a.json) || Instant::now() > deadline {
                return a.json;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until each message is in one of `statuses`, or fails naming the first that is not.
    pub async fn wait_status(&self, ids: &[String], timeout: Duration, statuses: &[&str]) {
        for id in ids {
            let m = self.wait_message(id, timeout, |m| statuses.iter().any(|s| m["status"] == *s)).await;
            assert!(statuses.iter().any(|s| m["status"] == *s), "wanted {statuses:?}: {m}");
        }
    }

    /// A kept-alive HTTP/1.1 connection.
    pub async fn connect(&self) -> std::io::Result<Conn> {
        let stream = self.tls_stream(&[b"http/1.1"]).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Conn { sender, token: self.token.clone() })
    }
}

/// A kept-alive HTTPS connection (HTTP/1.1) for load in tests.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    token: Option<String>,
}

impl Conn {
    /// GETs a path; `Err` if the connection broke.
    pub async fn get_json(&mut self, path: &str) -> Result<(StatusCode, Value), hyper::Error> {
        self.send(Method::GET, path, None).await
    }

    /// POSTs JSON; `Err` if the connection broke.
    pub async fn post(&mut self, path: &str, body: &Value) -> Result<(StatusCode, Value), hyper::Error> {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), hyper::Error> {
        within("waiting for the connection", self.sender.ready()).await?;
        let mut req = Request::builder().method(method).uri(path).header("host", "localhost");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let resp = within("a request", self.sender.send_request(req.body(Full::new(bytes)).unwrap())).await?;
        let status = resp.status();
        let bytes = within("reading a response", resp.into_body().collect()).await?.to_bytes();
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

/// GETs `path` from a plain-HTTP listener (metrics, a simulator's control port); the status
/// and the body as text.
pub async fn http_request(addr: SocketAddr, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, String) {
    let tcp = within("connect", tokio::net::TcpStream::connect(addr)).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(bytes))
        .unwrap();
    let resp = within("a request", sender.send_request(req)).await.unwrap();
    let status = resp.status();
    let body = within("reading a response", resp.into_body().collect()).await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// GETs `path` from a plain-HTTP listener; the body as text.
pub async fn http_text(addr: SocketAddr, path: &str) -> String {
    http_request(addr, Method::GET, path, None).await.1
}
