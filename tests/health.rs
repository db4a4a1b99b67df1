//! `GET /health` of every HTTP function, and the shared HTTP edge (problem
//! responses, security headers, CORS), run through the real routers against
//! the emulated AWS.

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use serde_json::Value;
use shared::config::Env;
use shared::http::CorsOrigins;

async fn send(app: Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    support::send(&app, request).await
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

#[tokio::test]
async fn every_http_function_is_healthy_against_the_template_resources() {
    let stack = support::stack().await;
    let expected: [(&str, &[&str]); 4] = [
        (
            "prices",
            &[
                "prices_table",
                "provider_keys_secret",
                "rate_limit_table",
                "tenants_table",
            ],
        ),
        ("ingest", &["events_queue", "tenants_table"]),
        (
            "usage",
            &[
                "admin_token_secret",
                "chat_table",
                "tenants_table",
                "usage_table",
            ],
        ),
        (
            "chat-stream",
            &[
                "anthropic_api_key_secret",
                "chat_table",
                "events_queue",
                "rate_limit_table",
                "tenants_table",
                "usage_table",
            ],
        ),
    ];
    for ((name, app), (expected_name, checks)) in
        support::http_apps(&stack).await.into_iter().zip(expected)
    {
        assert_eq!(name, expected_name);
        let (status, headers, body) = send(app, get("/health")).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body["status"], "ok");
        assert_eq!(body["function"], name);
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        let reported: Vec<(&str, &str)> = body["checks"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let all_ok: Vec<(&str, &str)> = checks.iter().map(|c| (*c, "ok")).collect();
        assert_eq!(reported, all_ok, "{name}");
    }
}

#[tokio::test]
async fn health_is_503_naming_the_dependency_that_failed() {
    let stack = support::stack().await;
    let mut config = ingest::Config::from_env(stack.env("ingest")).unwrap();
    config.tenants_table = support::unique("deleted-table");
    let app = ingest::app(&config, &support::aws_as("ingest").await);

    let (status, headers, body) = send(app, get("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(headers[header::RETRY_AFTER], "5");
    assert_eq!(body["code"], "dependency_unavailable");
    assert_eq!(body["dependency"], "tenants_table");
    assert_eq!(body["checks"]["events_queue"], "ok");
    assert_eq!(body["checks"]["tenants_table"], "unavailable");
    assert_eq!(
        body["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
}

/// `/health` is public: however often it is asked, its dependencies are
/// probed once per `HEALTH_TTL`, and concurrent askers share one probe.
#[tokio::test]
async fn hammering_health_probes_each_dependency_once_per_ttl() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&hits);
    let dependency = infra::cloud::stubs::serve(Router::new().route(
        "/ready",
        axum::routing::get(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { "ok" }
        }),
    ))
    .await
    .unwrap();
    let app = shared::health::HealthChecks::new("probe", "test")
        .url(
            "dependency",
            &reqwest::Client::new(),
            &format!("{dependency}/ready"),
        )
        .route();

    let asks = (0..50).map(|_| send(app.clone(), get("/health")));
    for (status, _, body) in futures_util::future::join_all(asks).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["checks"]["dependency"], "ok");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn health_is_503_when_aws_cannot_be_reached() {
    let stack = support::stack().await;
    let closed_port =
        infra::cloud::bootstrap::emulator_config("http://127.0.0.1:9", support::REGION).await;
    let app = prices::app(
        &prices::Config::from_env(stack.env("prices")).unwrap(),
        &closed_port,
    );

    let (status, _, body) = send(app, get("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["dependency"],
        "prices_table, rate_limit_table, tenants_table, provider_keys_secret"
    );
    for check in [
        "prices_table",
        "rate_limit_table",
        "tenants_table",
        "provider_keys_secret",
    ] {
        assert_eq!(body["checks"][check], "unavailable", "{body}");
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problem_json_with_a_request_id() {
    let stack = support::stack().await;
    for (_, app) in support::http_apps(&stack).await {
        let (status, headers, body) = send(app.clone(), get("/no/such/route")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(body["code"], "not_found");
        assert_eq!(body["status"], 404);
        assert!(!body["request_id"].as_str().unwrap().is_empty());

        let delete = Request::delete("/health").body(Body::empty()).unwrap();
        let (status, _, body) = send(app, delete).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["code"], "method_not_allowed");
    }
}

#[tokio::test]
async fn responses_carry_security_headers_and_cors() {
    let stack = support::stack().await;
    for (name, app) in support::http_apps(&stack).await {
        let request = Request::get("/health")
            .header(header::ORIGIN, "https://dashboard.example")
            .body(Body::empty())
            .unwrap();
        let (_, headers, _) = send(app.clone(), request).await;
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{name}");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        assert!(headers.contains_key(header::STRICT_TRANSPORT_SECURITY));
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");

        let preflight = Request::builder()
            .method(Method::OPTIONS)
            .uri("/health")
            .header(header::ORIGIN, "https://dashboard.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .body(Body::empty())
            .unwrap();
        let (status, headers, _) = send(app, preflight).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert!(
            headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
    }
}

#[tokio::test]
async fn cors_allow_list_answers_only_listed_origins() {
    let stack = support::stack().await;
    let mut config = prices::Config::from_env(stack.env("prices")).unwrap();
    config.cors = CorsOrigins::List(vec![HeaderValue::from_static("https://app.example")]);
    let app = prices::app(&config, &support::aws_as("prices").await);

    let from = |origin: &'static str| {
        Request::get("/health")
            .header(header::ORIGIN, origin)
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, _) = send(app.clone(), from("https://app.example")).await;
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
    let (_, headers, _) = send(app, from("https://evil.example")).await;
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}

#[test]
fn each_function_names_its_first_missing_variable() {
    let empty = Env::default();
    let missing = [
        prices::Config::from_env(&empty).unwrap_err().to_string(),
        ingest::Config::from_env(&empty).unwrap_err().to_string(),
        usage::Config::from_env(&empty).unwrap_err().to_string(),
        chat_stream::Config::from_env(&empty)
            .unwrap_err()
            .to_string(),
        rollup::Config::from_env(&empty).unwrap_err().to_string(),
    ];
    assert_eq!(
        missing,
        [
            "missing required environment variable PRICES_TABLE",
            "missing required environment variable TENANTS_TABLE",
            // usage reads chat's resources first (it serves /api/v1/status).
            "missing required environment variable CHAT_TABLE",
            "missing required environment variable CHAT_TABLE",
            "missing required environment variable USAGE_TABLE",
        ]
    );
}

/// A GET of `path` from `ip`, as API Gateway or a function URL hands it in.
fn get_from(path: &str, ip: &str) -> Request<Body> {
    let mut http = lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContextHttpDescription::default();
    http.source_ip = Some(ip.to_owned());
    let mut context =
        lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext::default();
    context.http = http;
    let mut request = get(path);
    request
        .extensions_mut()
        .insert(lambda_http::request::RequestContext::ApiGatewayV2(context));
    request
}

/// Every unauthenticated route of every HTTP function counts its client's
/// requests in the rate-limit table: 120 a minute, then a 429 problem, while
/// another client is still served.
#[tokio::test]
async fn every_public_route_allows_each_client_120_a_minute() {
    let stack = support::stack().await;
    support::chat::away_from_minute_end().await;
    let public: [(&str, &[&str]); 4] = [
        ("prices", &["/health", "/api/config"]),
        ("ingest", &["/health"]),
        ("usage", &["/health", "/api/v1/status", "/dashboard"]),
        ("chat-stream", &["/health"]),
    ];
    let apps = support::http_apps(&stack).await;
    for (n, ((name, app), (expected, paths))) in apps.into_iter().zip(public).enumerate() {
        assert_eq!(name, expected);
        let ip = format!("203.0.113.{}", 10 + n);
        for i in 0..120 {
            let path = paths[i % paths.len()];
            let (status, headers, body) = send(app.clone(), get_from(path, &ip)).await;
            assert!(status.is_success(), "{name} {path}: {status} {body}");
            assert_eq!(headers["x-ratelimit-remaining"], (119 - i).to_string());
        }
        for path in paths.iter() {
            let (status, headers, body) = send(app.clone(), get_from(path, &ip)).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{name} {path}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
            assert!(headers.contains_key(header::RETRY_AFTER));
            assert_eq!(body["code"], "rate_limited");
            assert!(body["request_id"].is_string());
        }
        let (status, _, _) = send(app.clone(), get_from(paths[0], "198.51.100.1")).await;
        assert!(status.is_success(), "{name}: another client");
    }
    // The count is the table's: a fresh instance refuses the client too.
    let (_, fresh) = support::http_apps(&stack).await.swap_remove(0);
    let (status, _, _) = send(fresh, get_from("/health", "203.0.113.10")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}
