//! The one error type HTTP handlers return.
//!
//! Domain errors convert into [`ApiError`] once, at the edge, and it renders
//! as RFC 9457 `application/problem+json` with a stable machine-readable
//! `code` and the request id, so clients can branch on `code` and support can
//! find the request in the logs.

use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::store::StoreError;
use crate::telemetry::current_request_id;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {detail}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    retry_after_secs: Option<u64>,
    extensions: Map<String, Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after_secs: None,
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    }

    /// A dependency (table, queue, secret, upstream) failed: the client may retry.
    pub fn unavailable(dependency: &str, retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency_unavailable",
            format!("{dependency} is unavailable; retry later"),
        )
        .with_retry_after(retry_after_secs)
        .with_extension("dependency", dependency)
    }

    /// A bug or an unexpected state. The cause is logged, never returned.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an unexpected error occurred",
        )
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Adds a problem-details extension member (e.g. the list of bad fields).
    pub fn with_extension(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a response header (e.g. the rate-limit headers of a 429).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    fn body(&self, request_id: Option<String>) -> Value {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
            "request_id": request_id,
        });
        if let Value::Object(map) = &mut body {
            for (k, v) in &self.extensions {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body(current_request_id()).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

/// A store failure, answered once for every handler: a cursor this API
/// never issued is the client's mistake (400, not logged as an error);
/// anything else makes that store unavailable (503 with Retry-After, logged).
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error.store() {
            None => ApiError::bad_request("invalid_cursor", error.to_string()),
            Some(store) => {
                tracing::error!(%error, "store failed");
                ApiError::unavailable(store, 5)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_body_carries_code_status_and_request_id() {
        let err = ApiError::bad_request("invalid_metal", "unknown metal 'tin'")
            .with_extension("allowed", json!(["gold", "silver"]));
        let body = err.body(Some("req-1".into()));
        assert_eq!(
            body,
            json!({
                "type": "about:blank",
                "title": "Bad Request",
                "status": 400,
                "code": "invalid_metal",
                "detail": "unknown metal 'tin'",
                "request_id": "req-1",
                "allowed": ["gold", "silver"],
            })
        );
    }

    #[test]
    fn extensions_cannot_overwrite_standard_members() {
        let err = ApiError::not_found("no such tenant").with_extension("status", 200);
        assert_eq!(err.body(None)["status"], 404);
    }

    #[test]
    fn unavailable_sets_retry_after_and_problem_content_type() {
        let response = ApiError::unavailable("events queue", 5).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
