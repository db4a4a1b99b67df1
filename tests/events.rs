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

#[tokio::test]
async fn the_chat_sample_event_reaches_the_chat_route() {
    let stack = support::stack().await;
    let apps = support::http_apps(&stack).await;
    let (_, chat) = apps.into_iter().find(|(n, _)| *n == "chat-stream").unwrap();
    let raw =
        std::fs::read_to_string(support::root().join("events/chat-stream-chat.json")).unwrap();
    let request = lambda_http::request::from_str(&raw).unwrap();
    assert_eq!(request.method(), http::Method::POST);
    let response = chat.oneshot(request).await.unwrap();
    // The sample's token is a placeholder (`make dev` writes a real one);
    // sign-in is off in the bare template, so the route says so.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}
