//! Pieces every HTTP function puts around its router.
//!
//! - [`observe`]: gives each request an id (Lambda's request id, so a client's
//!   `request_id` leads straight to the function's logs), scopes it (see
//!   [`crate::telemetry::current_request_id`]), echoes it as `x-request-id`, and writes the one
//!   log line per request (route, status, latency): the handler's metrics
//!   record when it left one in the response's extensions.
//! - [`finish`]: all of the above around a function's routes, plus security
//!   headers, CORS, and problem+json instead of axum's empty 404/405 bodies.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use lambda_http::RequestExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::chat::admission::Refusal;
use crate::chat::gateway::ChatError;
use crate::chat::upstream::UpstreamError;
use crate::config::{ConfigError, Env};
use crate::error::ApiError;
use crate::metering::ingest::{AcceptError, IngestError};
use crate::metering::usage::ReportError;
use crate::prices::PriceError;
use crate::ratelimit::Decision;
use crate::telemetry::{self, Metrics};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Middleware: request id, `x-request-id`, and one structured log line per request.
pub async fn observe(request: Request, next: Next) -> Response {
    let request_id = request
        .lambda_context_ref()
        .map(|ctx| ctx.request_id.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();

    let mut response = telemetry::with_request_id(request_id.clone(), next.run(request)).await;

    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    let line = RequestLine {
        method,
        route,
        status: response.status().as_u16(),
        latency_ms,
        request_id,
    };
    // A handler's metrics ride its response here and carry the request's
    // fields: one stdout write per request, not two (each is a pipe write).
    match response.extensions_mut().remove::<Metrics>() {
        Some(metrics) => line.on(metrics).emit(),
        None => line.log(),
    }
    response
}

/// The fields of a request's log line.
struct RequestLine {
    method: Method,
    route: String,
    status: u16,
    latency_ms: f64,
    request_id: String,
}

impl RequestLine {
    /// The request's own log line (a request without metrics).
    fn log(self) {
        let Self {
            method,
            route,
            status,
            latency_ms,
            request_id,
        } = self;
        tracing::info!(%method, route, status, latency_ms, request_id, "request");
    }

    /// `metrics` as the request's log line, as the JSON log lines name them.
    fn on(self, metrics: Metrics) -> Metrics {
        metrics
            .property("level", "INFO")
            .property("message", "request")
            .property("method", self.method.as_str())
            .property("route", self.route)
            .property("status", self.status)
            .property("latency_ms", self.latency_ms)
            .property("request_id", self.request_id)
    }
}

/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (epoch seconds) of a
/// rate-limit decision, for allowed and refused requests alike.
pub fn rate_limit_headers(decision: &Decision) -> [(HeaderName, HeaderValue); 3] {
    [
        (X_RATELIMIT_LIMIT, HeaderValue::from(decision.limit)),
        (X_RATELIMIT_REMAINING, HeaderValue::from(decision.remaining)),
        (
            X_RATELIMIT_RESET,
            HeaderValue::from(decision.reset.timestamp()),
        ),
    ]
}

/// The 429 for a request a rate limit refused: `Retry-After` until the
/// window resets, and the limit headers.
pub fn rate_limited(decision: &Decision, detail: String, now: DateTime<Utc>) -> ApiError {
    rate_limit_headers(decision).into_iter().fold(
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
            .with_retry_after(decision.retry_after(now)),
        |error, (name, value)| error.with_header(name, value),
    )
}

/// Events that were not accepted: the request's mistake (every bad event
/// named by index), or a queue that did not take them (503).
impl From<AcceptError> for ApiError {
    fn from(error: AcceptError) -> Self {
        let invalid = match error {
            AcceptError::Queue(error) => return error.into(),
            AcceptError::Invalid(invalid) => invalid,
        };
        let detail = invalid.to_string();
        match invalid {
            IngestError::TooLarge => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", detail)
            }
            IngestError::Malformed(_) => ApiError::bad_request("invalid_json", detail),
            IngestError::Shape(_) => ApiError::bad_request("invalid_body", detail),
            IngestError::IdempotencyKey(_) => {
                ApiError::bad_request("invalid_idempotency_key", detail)
            }
            IngestError::InvalidEvents(problems) => ApiError::bad_request("invalid_events", detail)
                .with_extension(
                    "errors",
                    serde_json::to_value(problems).unwrap_or(serde_json::Value::Null),
                ),
        }
    }
}

/// A usage report that could not be made.
impl From<ReportError> for ApiError {
    fn from(error: ReportError) -> Self {
        match error {
            ReportError::TooManyPoints(invalid) => {
                ApiError::bad_request("invalid_resolution", invalid.0)
            }
            ReportError::Store(error) => error.into(),
        }
    }
}

/// A chat request refused before it went upstream.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let detail = refusal.to_string();
        match refusal {
            Refusal::Disabled => ApiError::new(StatusCode::FORBIDDEN, "account_disabled", detail),
            Refusal::RateLimited { verdict, at, .. } => rate_limited(&verdict.binding, detail, at),
            Refusal::QuotaExceeded {
                quota,
                used,
                resets_at,
                limits,
                at,
            } => {
                let problem =
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", detail)
                        .with_retry_after((resets_at - at).num_seconds().max(1) as u64)
                        .with_extension("quota", quota)
                        .with_extension("used", used)
                        .with_extension("resets_at", resets_at.to_rfc3339());
                limits
                    .into_iter()
                    .flat_map(|l| rate_limit_headers(&l.binding))
                    .fold(problem, |p, (name, value)| p.with_header(name, value))
            }
            Refusal::Store(error) => error.into(),
        }
    }
}

/// A chat request that got no stream.
impl From<ChatError> for ApiError {
    fn from(error: ChatError) -> Self {
        match error {
            ChatError::Refused(refusal) => refusal.into(),
            ChatError::Upstream(error) => error.into(),
        }
    }
}

/// The model's stream could not be opened.
impl From<UpstreamError> for ApiError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::KeyUnavailable => ApiError::unavailable("Anthropic API key secret", 5),
            UpstreamError::KeyNotSet => ApiError::unavailable("Anthropic API key (not set)", 60),
            UpstreamError::Rejected(_) => {
                ApiError::bad_request("upstream_rejected", error.to_string())
            }
            UpstreamError::Refused => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", error.to_string())
            }
            UpstreamError::Busy { code, retry_after } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "the model API is busy or unavailable; retry shortly",
            )
            .with_retry_after(retry_after),
        }
    }
}

/// A price that could not be had, answered once for both price routes: an
/// unknown parameter is a 400 listing the allowed values (`invalid_metal`,
/// `invalid_currency`, ...); a provider without a key a 400; keys or table
/// out of reach a 503 (Retry-After 5); providers failing a 503 naming them
/// (Retry-After 30).
impl From<PriceError> for ApiError {
    fn from(error: PriceError) -> Self {
        match error {
            PriceError::Invalid(unknown) => {
                let code = match unknown.what {
                    "metal" => "invalid_metal",
                    "currency" => "invalid_currency",
                    "unit" => "invalid_unit",
                    "window" => "invalid_window",
                    "provider" => "invalid_provider",
                    _ => "invalid_parameter",
                };
                let allowed: Vec<&str> = unknown.allowed.split(", ").collect();
                ApiError::bad_request(code, unknown.to_string()).with_extension("allowed", allowed)
            }
            PriceError::Range(detail) => ApiError::bad_request("invalid_range", detail),
            PriceError::Alert(detail) => ApiError::bad_request("invalid_alert", detail),
            PriceError::NoAlert(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "alert_not_found", error.to_string())
            }
            PriceError::NotConfigured(_) => {
                ApiError::bad_request("provider_not_configured", error.to_string())
            }
            PriceError::Keys(_) => {
                tracing::error!(%error, "provider keys unavailable");
                ApiError::unavailable("provider keys secret", 5)
            }
            PriceError::BadKeys => ApiError::internal(error),
            PriceError::Store(error) => error.into(),
            PriceError::RateLimited { decision, at } => {
                rate_limited(&decision, error.to_string(), at)
            }
            PriceError::Provider {
                provider,
                error: reason,
            } => {
                tracing::warn!(provider = provider.name(), error = %reason, "provider failed");
                ApiError::unavailable(provider.name(), 30)
                    .with_extension("reason", reason.to_string())
            }
            PriceError::AllProvidersFailed(failures) => {
                let why: Vec<String> = failures.iter().map(ToString::to_string).collect();
                ApiError::unavailable("price providers", 30).with_extension("providers", why)
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The raw request body, rejected as problem+json (axum's own extractors
/// answer in plain text), e.g. 413 `body_too_large` past the body limit.
#[derive(Debug, Clone)]
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                let code = if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                    "body_too_large"
                } else {
                    "invalid_body"
                };
                ApiError::new(e.status(), code, e.body_text())
            })
    }
}

/// A JSON request body, rejected as problem+json. Content type is not
/// insisted on: the body is what is checked.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no route matches this path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Origins allowed to call browser-facing routes, from `CORS_ALLOWED_ORIGINS`
/// (comma-separated, or `*`). Defaults to `*`: every route authenticates with
/// a bearer header, never a cookie, so a wildcard exposes nothing ambient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<HeaderValue>),
}

impl CorsOrigins {
    pub const ENV: &'static str = "CORS_ALLOWED_ORIGINS";

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            name: Self::ENV,
            reason,
        };
        match env.optional(Self::ENV) {
            None | Some("*") => Ok(Self::Any),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|origin| match origin {
                    "*" => Err(invalid("* cannot be part of a list; use it alone".into())),
                    _ if !(origin.starts_with("https://") || origin.starts_with("http://")) => {
                        Err(invalid(format!(
                            "{origin:?} is not an origin like https://app.example"
                        )))
                    }
                    _ => HeaderValue::from_str(origin)
                        .map_err(|_| invalid(format!("{origin:?} is not a valid origin"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self::List),
        }
    }
}

/// Adds security headers and CORS to every route of `router`.
///
/// Headers are set `if_not_present`, so a route that serves HTML (the
/// dashboard) can send its own Content-Security-Policy.
fn with_browser_layers<S>(router: Router<S>, origins: &CorsOrigins) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let allow_origin = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    let cors = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
        ])
        .expose_headers([
            X_REQUEST_ID,
            header::ETAG,
            header::RETRY_AFTER,
            X_RATELIMIT_LIMIT,
            X_RATELIMIT_REMAINING,
            X_RATELIMIT_RESET,
        ])
        .max_age(std::time::Duration::from_secs(600));
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    router
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(header::REFERRER_POLICY, "no-referrer"))
        .layer(set(
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        ))
        .layer(set(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ))
        .layer(cors)
}

/// Turns a function's routes into its app: problem+json for unknown paths
/// and methods, security headers and CORS (outside routing, so preflights
/// reach them), and [`observe`] outermost so its log line sees the final status.
pub fn finish<S>(router: Router<S>, origins: &CorsOrigins) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    with_browser_layers(router, origins).layer(axum::middleware::from_fn(observe))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(value: &str) -> Result<CorsOrigins, ConfigError> {
        CorsOrigins::from_env(&Env::from_pairs([(CorsOrigins::ENV, value)]))
    }

    /// Log lines written while `work` runs on this thread.
    async fn logged<F: Future>(work: F) -> Vec<serde_json::Value> {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        work.await;
        drop(guard);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_request_without_metrics_logs_its_own_line() {
        let app = finish(Router::new(), &CorsOrigins::Any);
        let request = http::Request::get("/none").body(axum::body::Body::empty());
        let lines = logged(tower::ServiceExt::oneshot(app, request.unwrap())).await;
        let line = &lines[0];
        assert_eq!(line["message"], "request");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["route"], "unmatched");
        assert_eq!(line["status"], 404);
        assert!(line["latency_ms"].is_f64());
        assert!(line["request_id"].is_string());
    }

    #[test]
    fn a_handlers_metrics_become_the_requests_log_line() {
        let line = RequestLine {
            method: Method::POST,
            route: "/events".to_owned(),
            status: 202,
            latency_ms: 1.5,
            request_id: "req-1".to_owned(),
        };
        let metrics = Metrics::new().dimension("Function", "ingest").value(
            "EventsAccepted",
            telemetry::MetricUnit::Count,
            1.0,
        );
        let doc = line.on(metrics).render(0);
        assert_eq!(doc["EventsAccepted"], 1.0);
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "EventsAccepted"
        );
        for (field, value) in [
            ("level", serde_json::json!("INFO")),
            ("message", serde_json::json!("request")),
            ("method", serde_json::json!("POST")),
            ("route", serde_json::json!("/events")),
            ("status", serde_json::json!(202)),
            ("latency_ms", serde_json::json!(1.5)),
            ("request_id", serde_json::json!("req-1")),
        ] {
            assert_eq!(doc[field], value, "{field}");
        }
    }

    #[test]
    fn cors_origins_default_to_any_and_parse_lists() {
        assert_eq!(CorsOrigins::from_env(&Env::default()), Ok(CorsOrigins::Any));
        assert_eq!(
            origins(" https://a.example , http://localhost:3000 "),
            Ok(CorsOrigins::List(vec![
                HeaderValue::from_static("https://a.example"),
                HeaderValue::from_static("http://localhost:3000"),
            ]))
        );
    }

    #[test]
    fn cors_origins_reject_wildcards_in_lists_and_non_origins() {
        assert!(origins("*,https://a.example").is_err());
        assert!(origins("a.example").is_err());
        assert!(origins("https://bad\u{7f}.example").is_err());
    }
}
