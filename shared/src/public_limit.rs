//! The per-client limit on every unauthenticated route: [`PUBLIC_LIMIT`]
//! requests a minute per client IP, counted in the rate-limit table under
//! `public#<ip>`: one count across every function's public routes, exact
//! across instances (HTTP APIs cannot use WAF, and API Gateway's own
//! throttling is per route, not per client).
//!
//! An instance that has refused a client refuses it again from memory until
//! its window resets, so hammering past the limit costs no write. A request
//! with no source IP did not come through API Gateway or a function URL
//! (in-process tests, tools) and is not counted. The limit fails open: a
//! rate-limit table outage does not take the public routes down. The price
//! proxy keeps its own limit (`PROXY_RATE_LIMIT`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;

use crate::clock::Clock;
use crate::http::{rate_limit_headers, rate_limited};
use crate::ratelimit::{Decision, RateCounter, RateLimiter};

/// Requests per minute per client on the unauthenticated routes.
pub const PUBLIC_LIMIT: u32 = 120;
/// At most this many refused clients are remembered per instance.
const MAX_REMEMBERED: usize = 10_000;

/// The caller's IP as API Gateway or the function URL saw it (never a
/// client-set header); `None` for a request from neither.
pub fn source_ip(request: &Request) -> Option<String> {
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.http.source_ip.clone(),
        _ => None,
    }
}

#[derive(Clone)]
pub struct PublicLimit {
    limiter: RateLimiter,
    clock: Arc<dyn Clock>,
    /// Each client refused in a window this instance knows is not over.
    refused: Arc<Mutex<HashMap<String, Decision>>>,
}

impl PublicLimit {
    pub fn new(counter: Arc<dyn RateCounter>, clock: Arc<dyn Clock>) -> Self {
        Self {
            limiter: RateLimiter::new(counter),
            clock,
            refused: Arc::default(),
        }
    }

    /// `router` with every route counted against the limit.
    pub fn guard(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), limit))
    }

    /// The decision for one request of `client`, or `None` when the count
    /// failed (logged; the request goes on).
    async fn decide(&self, client: &str, now: DateTime<Utc>) -> Option<Decision> {
        if let Some(refused) = self.remembered(client, now) {
            return Some(refused);
        }
        let counted = self
            .limiter
            .hit(
                &format!("public#{client}"),
                PUBLIC_LIMIT,
                TimeDelta::minutes(1),
                now,
            )
            .await;
        match counted {
            Ok(decision) => {
                if !decision.allowed {
                    self.remember(client, decision);
                }
                Some(decision)
            }
            Err(error) => {
                tracing::warn!(%error, "rate-limit store unavailable; allowing the request");
                None
            }
        }
    }

    fn remembered(&self, client: &str, now: DateTime<Utc>) -> Option<Decision> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.get(client).copied().filter(|d| d.reset > now)
    }

    fn remember(&self, client: &str, decision: Decision) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.len() >= MAX_REMEMBERED {
            refused.clear();
        }
        refused.insert(client.to_owned(), decision);
    }
}

/// Middleware: counts the request of its source IP; a 429 past the limit,
/// the limit's headers on every counted answer.
async fn limit(State(public): State<PublicLimit>, request: Request, next: Next) -> Response {
    let Some(client) = source_ip(&request) else {
        return next.run(request).await;
    };
    let now = public.clock.now();
    match public.decide(&client, now).await {
        Some(decision) if !decision.allowed => {
            let detail =
                format!("at most {PUBLIC_LIMIT} requests per minute per client on public routes");
            rate_limited(&decision, detail, now).into_response()
        }
        Some(decision) => {
            let mut response = next.run(request).await;
            response.headers_mut().extend(rate_limit_headers(&decision));
            response
        }
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use http::StatusCode;
    use lambda_http::aws_lambda_events::apigw::{
        ApiGatewayV2httpRequestContext, ApiGatewayV2httpRequestContextHttpDescription,
    };
    use tower::ServiceExt;

    use super::*;
    use crate::clock::FixedClock;
    use crate::ratelimit::MemoryCounter;

    fn from(ip: Option<&str>) -> Request {
        let mut request = Request::new(axum::body::Body::empty());
        *request.uri_mut() = "/health".parse().unwrap();
        if let Some(ip) = ip {
            let mut http = ApiGatewayV2httpRequestContextHttpDescription::default();
            http.source_ip = Some(ip.to_owned());
            let mut context = ApiGatewayV2httpRequestContext::default();
            context.http = http;
            request
                .extensions_mut()
                .insert(RequestContext::ApiGatewayV2(context));
        }
        request
    }

    fn guarded(counter: Arc<MemoryCounter>) -> Router {
        let clock = Arc::new(FixedClock::at(
            DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        ));
        PublicLimit::new(counter, clock)
            .guard(Router::new().route("/health", get(|| async { "ok" })))
    }

    #[tokio::test]
    async fn each_client_gets_its_limit_a_minute_then_a_429_from_memory() {
        let counter = Arc::new(MemoryCounter::default());
        let router = guarded(counter.clone());
        for remaining in (0..PUBLIC_LIMIT).rev() {
            let answer = router
                .clone()
                .oneshot(from(Some("203.0.113.7")))
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            assert_eq!(
                answer.headers()["x-ratelimit-remaining"],
                remaining.to_string()
            );
        }
        let refused = router
            .clone()
            .oneshot(from(Some("203.0.113.7")))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json"
        );
        assert!(refused.headers().contains_key("retry-after"));
        // Refused again without asking the store (it would fail now).
        counter.outage.begin();
        let again = router
            .clone()
            .oneshot(from(Some("203.0.113.7")))
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
        // Another client fails open while the store is down.
        let other = router
            .clone()
            .oneshot(from(Some("198.51.100.1")))
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK);
        assert!(!other.headers().contains_key("x-ratelimit-limit"));
    }

    #[tokio::test]
    async fn a_request_from_no_client_ip_is_not_counted() {
        let answer = guarded(Arc::default()).oneshot(from(None)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(!answer.headers().contains_key("x-ratelimit-limit"));
    }
}
