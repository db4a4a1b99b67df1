//! `chat-stream`'s routes through memory doubles of every edge: no
//! emulator, no Anthropic. tests/chat.rs drives the same routes against the
//! emulator and the Anthropic stub.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::http::{Request, StatusCode};
use chat_stream::{Config, Edges, FUNCTION, router};
use chrono::Utc;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shared::chat::budget::MemoryBudgets;
use shared::chat::store::MemoryChat;
use shared::chat::upstream::{Answer, ScriptedModel};
use shared::chat::user_tenant;
use shared::clock::FixedClock;
use shared::config::Env;
use shared::health::HealthChecks;
use shared::jwt::MemoryTokens;
use shared::metering::ingest::MemoryQueue;
use shared::metering::period::BillingPeriod;
use shared::metering::rollup::{MemoryLedger, Seq, count};
use shared::metering::tenants::{ApiKey, MemoryTenants, Tenant, TenantStore, Tier};
use shared::metering::types::{EventId, Feature, Tokens, UsageEvent};
use shared::ratelimit::MemoryCounter;
use shared::secrets::MemorySecrets;
use tower::ServiceExt;

const TOKEN: &str = "token-of-user-1";
const SUBJECT: &str = "user_1";

struct Chat {
    router: Router,
    chat: Arc<MemoryChat>,
    tenants: Arc<MemoryTenants>,
    usage: Arc<MemoryLedger>,
    budgets: Arc<MemoryBudgets>,
    queue: Arc<MemoryQueue>,
    model: Arc<ScriptedModel>,
}

fn config(extra: &[(&str, &str)]) -> Config {
    let mut env = Env::from_pairs([
        ("CHAT_TABLE", "chat"),
        ("USAGE_TABLE", "usage"),
        ("TENANTS_TABLE", "tenants"),
        ("RATE_LIMIT_TABLE", "limits"),
        ("EVENTS_QUEUE_URL", "http://queue"),
        ("ANTHROPIC_API_KEY_SECRET", "anthropic"),
    ]);
    for (name, value) in extra {
        env = env.with(name, value);
    }
    Config::from_env(&env).unwrap()
}

fn chat_with(model: ScriptedModel, api_key: &str, extra: &[(&str, &str)]) -> Chat {
    chat_signed_in_by(
        Some(MemoryTokens::default().with(TOKEN, SUBJECT)),
        model,
        api_key,
        extra,
    )
}

fn chat_signed_in_by(
    tokens: Option<MemoryTokens>,
    model: ScriptedModel,
    api_key: &str,
    extra: &[(&str, &str)],
) -> Chat {
    let chat = Arc::new(MemoryChat::default());
    let tenants = Arc::new(MemoryTenants::default());
    let usage = Arc::new(MemoryLedger::default());
    let budgets = Arc::new(MemoryBudgets::default());
    let queue = Arc::new(MemoryQueue::default());
    let model = Arc::new(model);
    let edges = Edges {
        verifier: tokens.map(|t| Arc::new(t) as Arc<dyn shared::jwt::TokenVerifier>),
        chat: chat.clone(),
        tenants: tenants.clone(),
        rate_counter: Arc::new(MemoryCounter::default()),
        usage: usage.clone(),
        budgets: budgets.clone(),
        queue: queue.clone(),
        secrets: Arc::new(MemorySecrets::default().with("anthropic", api_key)),
        model: model.clone(),
        clock: Arc::new(FixedClock::at(Utc::now())),
    };
    let router = router(&config(extra), edges, HealthChecks::new(FUNCTION, "test"));
    Chat {
        router,
        chat,
        tenants,
        usage,
        budgets,
        queue,
        model,
    }
}

fn chat() -> Chat {
    chat_with(
        ScriptedModel::replying("Hello there", 12, 5),
        r#"{"api_key":"sk-test"}"#,
        &[],
    )
}

fn ask(token: Option<&str>, body: Value) -> Request<Body> {
    let mut request =
        Request::post("/api/v1/chat/stream").header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Body::from(body.to_string())).unwrap()
}

fn hello() -> Value {
    json!({"message": "Hi"})
}

struct Answered {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Answered {
    fn problem(&self) -> Value {
        assert_eq!(self.headers["content-type"], "application/problem+json");
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` and reads the whole body: for a stream, that is after
/// the relay has recorded the usage.
async fn send(router: &Router, request: Request<Body>) -> Answered {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answered {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test]
async fn streams_the_reply_and_records_usage_history_and_metering_events() {
    let chat = chat();
    let answer = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(answer.headers["x-ratelimit-limit"], "10");
    let text = answer.text();
    let at = |event: &str| {
        text.find(&format!("event: {event}\n"))
            .unwrap_or(usize::MAX)
    };
    assert!(
        at("stream_start") < at("content_delta") && at("content_delta") < at("stream_complete"),
        "{text}"
    );
    assert!(at("stream_complete") < usize::MAX, "{text}");
    assert!(text.contains("Hello there"));

    let stored = chat.chat.snapshot();
    let records = &stored.records[SUBJECT];
    assert_eq!(records.len(), 1);
    assert_eq!(
        (
            records[0].usage.input_tokens,
            records[0].usage.output_tokens
        ),
        (12, 5)
    );
    assert_eq!(records[0].outcome, "complete");
    assert_eq!(stored.turns.values().map(Vec::len).sum::<usize>(), 2);
    let queued = chat.queue.sent().join("\n");
    assert!(queued.contains(user_tenant(SUBJECT).as_str()), "{queued}");
    // The model got the message as the last user turn.
    let sent = chat.model.sent();
    assert_eq!(sent[0]["messages"][0]["content"][0]["text"], "Hi");
    assert_eq!(sent[0]["stream"], true);
}

#[tokio::test]
async fn refuses_missing_and_unknown_tokens_before_anything_else() {
    let chat = chat();
    let missing = send(&chat.router, ask(None, hello())).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.problem()["code"], "missing_credentials");
    let unknown = send(&chat.router, ask(Some("forged"), hello())).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.problem()["code"], "invalid_token");
    assert!(chat.model.sent().is_empty());
    assert!(chat.chat.snapshot().users.is_empty());
}

#[tokio::test]
async fn refuses_bad_bodies_with_the_reason_and_never_calls_upstream() {
    let chat = chat();
    for body in [
        json!({}),
        json!({"message": ""}),
        json!({"message": "hi", "max_tokens": 0}),
    ] {
        let answer = send(&chat.router, ask(Some(TOKEN), body.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.problem()["code"], "invalid_request");
    }
    assert!(chat.model.sent().is_empty());
}

#[tokio::test]
async fn the_eleventh_request_in_a_minute_is_refused_recorded_and_never_sent() {
    let chat = chat();
    for _ in 0..10 {
        let answer = send(&chat.router, ask(Some(TOKEN), hello())).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let held = chat.budgets.held(&user_tenant(SUBJECT), &period());
    let refused = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        chat.budgets.held(&user_tenant(SUBJECT), &period()),
        held,
        "a request the windows refuse holds no budget"
    );
    assert_eq!(refused.problem()["code"], "rate_limited");
    assert_eq!(refused.headers["x-ratelimit-remaining"], "0");
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(chat.model.sent().len(), 10);
    let refusals = chat.chat.snapshot().refusals;
    assert_eq!(refusals.len(), 1);
    assert_eq!((refusals[0].2.as_str(), refusals[0].3), ("minute", 10));
}

#[tokio::test]
async fn a_used_up_quota_is_refused_with_its_reset_and_no_upstream_call() {
    let chat = chat();
    let used = UsageEvent {
        id: EventId::try_from("earlier".to_owned()).unwrap(),
        feature: Feature::try_from("chat.output".to_owned()).unwrap(),
        tokens: Tokens::try_from(100_000).unwrap(),
        timestamp: Utc::now(),
        properties: Default::default(),
    };
    let day = 1.try_into().unwrap();
    count(
        chat.usage.as_ref(),
        &user_tenant(SUBJECT),
        day,
        &[(Seq(1), vec![used])],
    )
    .await
    .unwrap();
    let refused = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let problem = refused.problem();
    assert_eq!(problem["code"], "quota_exceeded");
    assert_eq!(
        (problem["quota"].as_u64(), problem["used"].as_u64()),
        (Some(100_000), Some(100_000))
    );
    assert_eq!(refused.headers["x-ratelimit-limit"], "10");
    assert!(chat.model.sent().is_empty());
}

fn period() -> BillingPeriod {
    BillingPeriod::containing(Utc::now(), 1.try_into().unwrap())
}

#[tokio::test]
async fn a_reply_settles_its_reservation_to_what_it_used() {
    let chat = chat();
    send(&chat.router, ask(Some(TOKEN), hello())).await;
    // 12 input and 5 output tokens held, the rest of the worst case released.
    assert_eq!(
        chat.budgets.held(&user_tenant(SUBJECT), &period()),
        Some(17)
    );
}

#[tokio::test]
async fn a_request_whose_worst_case_passes_the_quota_is_refused_before_upstream() {
    let tiers = r#"{"free":{"per_minute":100,"per_hour":null,"monthly_tokens":60},
                   "pro":{"per_minute":100,"per_hour":null,"monthly_tokens":6000},
                   "enterprise":{"per_minute":100,"per_hour":null,"monthly_tokens":60000}}"#;
    let extra = [("CHAT_TIERS", tiers), ("CHAT_SYSTEM_PROMPT", "Be brief.")];
    let chat = chat_with(ScriptedModel::replying("ok", 12, 5), "k", &extra);
    // "Be brief." (9) + "Hi" (2) + max_tokens 40 = 51 of 60: held, settles to 17.
    let first = json!({"message": "Hi", "max_tokens": 40});
    assert_eq!(
        send(&chat.router, ask(Some(TOKEN), first.clone()))
            .await
            .status,
        StatusCode::OK
    );
    // 17 used + 51 worst case > 60: refused without a call.
    let refused = send(&chat.router, ask(Some(TOKEN), first)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let problem = refused.problem();
    assert_eq!(
        (problem["code"].as_str(), problem["used"].as_u64()),
        (Some("quota_exceeded"), Some(17))
    );
    assert_eq!(chat.model.sent().len(), 1);
    // A smaller reply still fits: 17 + 11 + 30 = 58.
    let small = json!({"message": "Hi", "max_tokens": 30});
    assert_eq!(
        send(&chat.router, ask(Some(TOKEN), small)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn concurrent_requests_never_hold_more_than_the_quota() {
    let tiers = r#"{"free":{"per_minute":100,"per_hour":null,"monthly_tokens":200},
                   "pro":{"per_minute":100,"per_hour":null,"monthly_tokens":6000},
                   "enterprise":{"per_minute":100,"per_hour":null,"monthly_tokens":60000}}"#;
    let extra = [("CHAT_TIERS", tiers), ("CHAT_SYSTEM_PROMPT", "Be brief.")];
    let chat = chat_with(ScriptedModel::replying("ok", 12, 5), "k", &extra);
    let body = json!({"message": "Hi", "max_tokens": 40});
    let answers = futures_util::future::join_all(
        (0..8).map(|_| send(&chat.router, ask(Some(TOKEN), body.clone()))),
    )
    .await;
    let admitted = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    // 200 / 51 per worst case: at most 3 at once, however they interleave.
    assert!((1..=3).contains(&admitted), "{admitted} admitted");
    let used: u64 = chat.chat.snapshot().records[SUBJECT]
        .iter()
        .map(|r| r.usage.total())
        .sum();
    assert!(used <= 200);
    assert_eq!(
        chat.budgets.held(&user_tenant(SUBJECT), &period()),
        Some(used)
    );
}

#[tokio::test]
async fn each_tier_gets_its_own_configured_quota() {
    let chat = chat();
    let pro = Tenant {
        tier: Tier::Pro,
        ..chat_user(true)
    };
    chat.tenants
        .create(&pro, &ApiKey::generate().hash())
        .await
        .unwrap();
    let used = UsageEvent {
        id: EventId::try_from("earlier".to_owned()).unwrap(),
        feature: Feature::try_from("chat.output".to_owned()).unwrap(),
        tokens: Tokens::try_from(2_000_000).unwrap(),
        timestamp: Utc::now(),
        properties: Default::default(),
    };
    count(
        chat.usage.as_ref(),
        &pro.id,
        pro.billing_day,
        &[(Seq(1), vec![used])],
    )
    .await
    .unwrap();
    let refused = send(&chat.router, ask(Some(TOKEN), hello())).await;
    // Pro's 2,000,000 from CHAT_TIERS' defaults, not the tenant's 100,000.
    assert_eq!(refused.problem()["quota"], 2_000_000);
}

#[tokio::test]
async fn an_upstream_that_never_answers_releases_the_reservation() {
    let down = || Answer::Unreachable("connection refused".into());
    let chat = chat_with(
        ScriptedModel::default().then([down(), down(), down()]),
        "k",
        &[],
    );
    let answer = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(chat.budgets.held(&user_tenant(SUBJECT), &period()), Some(0));
}

/// The metering tenant of the test user, as first sign-in creates it.
fn chat_user(enabled: bool) -> Tenant {
    Tenant {
        id: user_tenant(SUBJECT),
        name: "chat user".into(),
        monthly_quota: 100_000,
        billing_day: 1.try_into().unwrap(),
        tier: Tier::Free,
        webhooks: Vec::new(),
        enabled,
        signing_secret: "whsec_test".into(),
        previous_signing_secret: None,
        created_at: Utc::now(),
    }
}

#[tokio::test]
async fn a_disabled_account_is_forbidden() {
    let chat = chat();
    let disabled = chat_user(false);
    let key = ApiKey::generate().hash();
    chat.tenants.create(&disabled, &key).await.unwrap();
    let refused = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.problem()["code"], "account_disabled");
    assert!(chat.model.sent().is_empty());
}

/// The rate windows live with the budget: with the usage table down no
/// request can be counted or held, so none goes upstream.
#[tokio::test]
async fn a_failing_budget_store_is_a_503_and_nothing_goes_upstream() {
    let chat = chat();
    chat.budgets.outage.begin();
    let refused = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.problem()["dependency"], "usage table");
    assert!(refused.headers.contains_key("retry-after"));
    assert!(chat.model.sent().is_empty());
}

#[tokio::test]
async fn a_failing_chat_store_is_a_503_naming_it() {
    let chat = chat();
    chat.chat.outage.begin();
    let answer = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.problem()["dependency"], "chat table");
    assert!(answer.headers.contains_key("retry-after"));
}

/// Time is paused: the backoff between retries passes at once.
#[tokio::test(start_paused = true)]
async fn an_overloaded_model_is_retried_twice_then_a_503() {
    let overloaded = || Answer::Refused {
        status: 529,
        retry_after: None,
        body: Bytes::from_static(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
    };
    let chat = chat_with(
        ScriptedModel::default().then([overloaded(), overloaded(), overloaded()]),
        "k",
        &[],
    );
    let answer = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.problem()["code"], "upstream_overloaded");
    assert_eq!(chat.model.sent().len(), 3);
}

#[tokio::test]
async fn a_request_the_model_rejects_is_the_clients_400() {
    let rejected = Answer::Refused {
        status: 400,
        retry_after: None,
        body: Bytes::from_static(br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}"#),
    };
    let chat = chat_with(ScriptedModel::default().then([rejected]), "k", &[]);
    let answer = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let problem = answer.problem();
    assert_eq!(problem["code"], "upstream_rejected");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("prompt is too long")
    );
}

#[tokio::test]
async fn an_unset_api_key_is_a_503_before_any_upstream_call() {
    let chat = chat_with(ScriptedModel::replying("x", 1, 1), r#"{"api_key":""}"#, &[]);
    let answer = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.problem()["dependency"],
        "Anthropic API key (not set)"
    );
    assert!(chat.model.sent().is_empty());
}

#[tokio::test]
async fn a_continued_conversation_sends_its_history() {
    let chat = chat();
    let first = send(&chat.router, ask(Some(TOKEN), hello())).await;
    let conversation = first
        .text()
        .split("\"conversation_id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let next = json!({"message": "And then?", "conversation_id": conversation});
    assert_eq!(
        send(&chat.router, ask(Some(TOKEN), next)).await.status,
        StatusCode::OK
    );
    let messages = &chat.model.sent()[1]["messages"];
    assert_eq!(messages.as_array().unwrap().len(), 3, "{messages}");
    assert_eq!(messages[1]["content"], "Hello there");
}

#[tokio::test]
async fn sign_in_off_is_a_503_not_a_401() {
    let chat = chat_signed_in_by(None, ScriptedModel::replying("x", 1, 1), "k", &[]);
    let answer = send(&chat.router, ask(Some(TOKEN), hello())).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.problem()["code"], "sign_in_unavailable");
}
