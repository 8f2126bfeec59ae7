//! The API's error answer: `{"error":{"code","message","field"}}` with the status DESIGN.md
//! assigns to each code. Every failure path of every handler ends in one of these.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use serde_json::json;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code clients branch on.
    pub code: &'static str,
    /// A sentence for the developer reading it.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// A header the status calls for: `WWW-Authenticate` (401), `Allow` (405).
    pub header: Option<Box<(header::HeaderName, String)>>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None, retry_after: None, header: None }
    }

    /// Attaches the offending field.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 `malformed_json`.
    pub fn malformed_json(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", format!("The request body is not valid JSON: {detail}."))
    }

    /// 400 `invalid_field` for `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).field(field)
    }

    /// 400 `missing_field`.
    pub fn missing(field: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "missing_field", format!("The field '{field}' is required.")).field(field)
    }

    /// 400 `unknown_field`.
    pub fn unknown_field(field: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unknown_field", format!("The field '{field}' is not part of this API."))
            .field(field)
    }

    /// 401 `unauthorized`, with the `WWW-Authenticate` challenge (RFC 6750).
    pub fn unauthorized(message: impl Into<String>, invalid_token: bool) -> Self {
        let challenge = if invalid_token {
            r#"Bearer realm="smsgate", error="invalid_token""#
        } else {
            r#"Bearer realm="smsgate""#
        };
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.header = Some(Box::new((header::WWW_AUTHENTICATE, challenge.into())));
        e
    }

    /// 403 `forbidden`.
    pub fn forbidden(scope: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", format!("This API key lacks the '{scope}' scope."))
    }

    /// 403 `account_disabled`: the key's account was disabled by an operator.
    pub fn account_disabled() -> Self {
        Self::new(StatusCode::FORBIDDEN, "account_disabled", "This API key's account is disabled.")
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("No {what} here."))
    }

    /// 405 `method_not_allowed`, with `Allow`.
    pub fn method_not_allowed(allowed: &[&str]) -> Self {
        let said = match allowed {
            [one] => one.to_string(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
            [] => String::new(),
        };
        let mut e =
            Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("Use {said} on this path."));
        e.header = Some(Box::new((header::ALLOW, allowed.join(", "))));
        e
    }

    /// 413 `payload_too_large`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("Request bodies are limited to {limit} bytes."),
        )
    }

    /// 408 `request_timeout`: the body did not arrive within the read deadline.
    pub fn timeout() -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "The request body did not arrive in time.")
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type() -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Send the body as application/json.")
    }

    /// 422 with a domain code (`no_route`, `recipient_opted_out`, …).
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 409 with a code (`already_submitted`, `idempotency_conflict`).
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 503 `store_unavailable` (or `shutting_down`), with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(retry_after);
        e
    }

    /// 429 with `Retry-After`.
    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        e.retry_after = Some(retry_after.max(1));
        e
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(f) = &self.field {
            body["field"] = json!(f);
        }
        let mut response = super::json_response(self.status, &json!({ "error": body }));
        if let Some(secs) = self.retry_after
            && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Some(h) = self.header
            && let Ok(v) = header::HeaderValue::from_str(&h.1)
        {
            response.headers_mut().insert(h.0, v);
        }
        response
    }
}
