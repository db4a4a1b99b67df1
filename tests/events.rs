//! The sample events in `events/` (for `cargo lambda invoke --data-file`)
//! are real payloads: each HTTP one, decoded by lambda_http exactly as on
//! Lambda, is served by its function's router.

use http::StatusCode;
use tower::ServiceExt;

#[tokio::test]
async fn every_http_sample_event_is_served_by_its_function() {
    let stack = support::stack().await;
    for (name, app) in support::http_apps(&stack).await {
        let path = support::root().join(format!("events/{name}-health.json"));
        let raw = std::fs::read_to_string(&path).unwrap();
        let request = lambda_http::request::from_str(&raw).unwrap();
        assert_eq!(request.uri().path(), "/health", "{name}");
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
    }
}
