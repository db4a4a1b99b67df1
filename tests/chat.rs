//! Chat end to end: the real `chat-stream` and `usage` apps against the
//! emulated AWS, a local JWKS with generated keys, and a local stub of
//! Anthropic's streaming Messages API speaking its real event sequence.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{TimeDelta, TimeZone, Utc};
use futures_util::future::join_all;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use shared::aws::budget::DynamoBudgets;
use shared::aws::chat::DynamoChat;
use shared::aws::ledger::DynamoLedger;
use shared::chat::budget::{Budget, Refused};
use shared::chat::store::ChatStore;
use shared::jwt::TokenVerifier;
use shared::jwt::{JwtSettings, Verifier, VerifyError};
use shared::metering::ingest::EventSink;
use shared::metering::tenants::{NewTenant, Tenant};
use shared::ratelimit::RateWindow;
use support::call;
use support::chat::{
    AUDIENCE, ChatFixture, Event, Events, ISSUER, away_from_minute_end, fixture, fixture_with,
};
use support::metering::{drain, pump};

fn names(events: &[Event]) -> Vec<&str> {
    let mut names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    names.dedup();
    names
}

async fn chat_store(f: &ChatFixture) -> DynamoChat {
    let table = f.stack.env("chat-stream").required("CHAT_TABLE").unwrap();
    DynamoChat::new(aws_sdk_dynamodb::Client::new(&support::aws().await), &table)
}

/// `GET path` on `usage` as the user of `token`.
async fn usage_get(f: &ChatFixture, token: &str, path: &str) -> (StatusCode, Value) {
    call(&f.usage, "GET", path, Some(token), None).await
}

async fn usage_current(f: &ChatFixture, token: &str) -> Value {
    let (status, body) = usage_get(f, token, "/api/v1/usage/current").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn usage_history(f: &ChatFixture, token: &str) -> Vec<Value> {
    let (status, body) = usage_get(f, token, "/api/v1/usage/history").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["requests"].as_array().unwrap().clone()
}

#[tokio::test]
async fn streams_the_events_in_order_and_records_usage_exactly_once() {
    let f = fixture().await;
    let (subject, token) = f.user();
    let response = f
        .post(&token, &json!({"message": "hello there coach"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(headers["x-ratelimit-limit"], "10");
    assert_eq!(headers["x-ratelimit-remaining"], "9");
    assert!(headers.contains_key("x-ratelimit-reset"));

    let mut events = Events::new(response.into_body());
    let mut all = Vec::new();
    while let Some(event) = events.next().await {
        all.push(event);
    }
    assert_eq!(
        names(&all),
        [
            "stream_start",
            "message_start",
            "content_delta",
            "stream_complete"
        ]
    );
    assert_eq!(all[0].data["model"], "claude-sonnet-4-5");
    let request_id = all[0].data["request_id"].as_str().unwrap().to_owned();
    let text: String = all
        .iter()
        .filter(|e| e.name == "content_delta")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "You said: hello there coach");
    let complete = &all.last().unwrap().data;
    assert_eq!(complete["stop_reason"], "end_turn");
    // The stub's last message_delta is cumulative: 5 words, not 3 + 5.
    assert_eq!(complete["usage"]["output_tokens"], 5);
    let usage = complete["usage"].clone();
    assert!(usage["cache_creation_input_tokens"].as_u64().unwrap() > 1000);
    assert!(complete["cost_usd"].as_f64().unwrap() > 0.0);

    // Upstream got the system prompt marked for caching.
    let sent = &f.stub.requests()[0];
    assert_eq!(sent["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(sent["stream"], true);

    // One usage record, and the metering pipeline counts the tokens once
    // even when the queue delivers the events twice.
    let history = usage_history(&f, &token).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["request_id"], request_id.as_str());
    assert_eq!(history[0]["outcome"], "complete");
    assert_eq!(history[0]["usage"], usage);

    // Two messages: the prompt's tokens, queued at `message_start`, and the
    // full set at the end, which repeats their ids.
    let pump = pump(&f.stack).await;
    assert_eq!(drain(&pump).await, 2);
    let total = [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .map(|k| usage[k].as_u64().unwrap())
    .sum::<u64>();
    let current = usage_current(&f, &token).await;
    assert_eq!(current["quota"]["used"], total);
    assert_eq!(current["requests"], 1);
    assert_eq!(current["tokens"]["output"], 5);
    assert_eq!(current["tier"], "free");

    // Replay the same metering message (SQS at-least-once): still once.
    let tenant = shared::chat::user_tenant(&subject);
    let events = shared::chat::accounting::usage_events(
        &request_id,
        "claude-sonnet-4-5",
        &serde_json::from_value(usage.clone()).unwrap(),
        Utc::now(),
    );
    let queue = shared::aws::queue::EventQueue::new(
        &support::aws().await,
        &f.stack
            .env("chat-stream")
            .required("EVENTS_QUEUE_URL")
            .unwrap(),
    );
    queue
        .send(&tenant, &shared::metering::ingest::pack(&tenant, &events))
        .await
        .unwrap();
    assert_eq!(drain(&pump).await, 1);
    assert_eq!(usage_current(&f, &token).await["quota"]["used"], total);
}

/// The model's connection is opened alongside admission (an unbilled
/// `HEAD`), and only while none is pooled: the second request finds it.
#[tokio::test]
async fn the_upstream_connection_is_warmed_alongside_admission_once_while_pooled() {
    let f = fixture().await;
    let (_, token) = f.user();
    for _ in 0..2 {
        let response = f.post(&token, &json!({"message": "hello"})).await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut events = Events::new(response.into_body());
        while events.next().await.is_some() {}
    }
    assert_eq!(f.stub.requests().len(), 2);
    assert_eq!(f.stub.warm_ups(), 1);
}

#[tokio::test]
async fn the_first_delta_reaches_the_client_before_upstream_sends_the_last() {
    let f = fixture().await;
    let (_, token) = f.user();
    let response = f
        .post(&token, &json!({"message": "[gated] one two three"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = Events::new(response.into_body());
    loop {
        let event = events.next().await.expect("a delta before the end");
        if event.name == "content_delta" {
            break;
        }
    }
    assert!(!f.stub.sent_last(), "the stub has not finished yet");
    f.stub.open_gate();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event.name);
    }
    assert_eq!(last.as_deref(), Some("stream_complete"));
    assert!(f.stub.sent_last());
}

#[tokio::test]
async fn silence_upstream_is_filled_with_keep_alive_comments() {
    let f = fixture_with(&[("CHAT_KEEP_ALIVE_MS", "100")]).await;
    let (_, token) = f.user();
    let response = f.post(&token, &json!({"message": "[gated] wait"})).await;
    let mut events = Events::new(response.into_body());
    while events
        .next()
        .await
        .is_some_and(|e| e.name != "content_delta")
    {}
    tokio::time::sleep(Duration::from_millis(350)).await;
    f.stub.open_gate();
    while events.next().await.is_some() {}
    assert!(events.raw.contains(": keep-alive\n\n"), "{}", events.raw);
}

#[tokio::test]
async fn a_client_disconnect_cancels_the_upstream_request_and_keeps_its_usage() {
    let f = fixture().await;
    let (_, token) = f.user();
    let response = f
        .post(&token, &json!({"message": "[slow] talk for a while"}))
        .await;
    let mut events = Events::new(response.into_body());
    while events
        .next()
        .await
        .is_some_and(|e| e.name != "content_delta")
    {}
    drop(events);

    let started = std::time::Instant::now();
    while f.stub.cancelled() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "upstream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.stub.completed(), 0);

    let mut history = Vec::new();
    while history.is_empty() && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        history = usage_history(&f, &token).await;
    }
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["outcome"], "disconnected");
    assert!(history[0]["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn an_upstream_error_mid_stream_becomes_stream_error_and_partial_usage_is_recorded() {
    let f = fixture().await;
    let (_, token) = f.user();
    let (status, events) = f.chat_all(&token, &json!({"message": "[error] go"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        names(&events),
        [
            "stream_start",
            "message_start",
            "content_delta",
            "stream_error"
        ]
    );
    let error = &events.last().unwrap().data;
    assert_eq!(error["code"], "upstream_overloaded");
    let history = usage_history(&f, &token).await;
    assert_eq!(history[0]["outcome"], "error");
    assert_eq!(history[0]["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn an_overloaded_upstream_is_retried_then_reported_before_any_stream() {
    let f = fixture().await;
    let (_, token) = f.user();
    let (status, headers, body) = f
        .send_chat(Some(&token), &json!({"message": "[overloaded]"}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["code"], "upstream_overloaded");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(f.stub.attempts(), 3, "one try and two retries");
    assert!(usage_history(&f, &token).await.is_empty());

    let (status, events) = f
        .chat_all(&token, &json!({"message": "[overloaded-once] hi"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.last().unwrap().name, "stream_complete");
    assert_eq!(f.stub.attempts(), 5);
}

#[tokio::test]
async fn the_eleventh_request_in_a_minute_is_refused_and_recorded() {
    let f = fixture().await;
    let (subject, token) = f.user();
    away_from_minute_end().await;
    for i in 0..10 {
        let (status, events) = f
            .chat_all(&token, &json!({"message": format!("n{i}")}))
            .await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(events.last().unwrap().name, "stream_complete");
    }
    let (status, headers, body) = f.send_chat(Some(&token), &json!({"message": "n10"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(headers["x-ratelimit-limit"], "10");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(
        f.stub.attempts(),
        10,
        "the refused request never went upstream"
    );
    assert_eq!(chat_store(&f).await.refusals(&subject).await.unwrap(), 1);
}

#[tokio::test]
async fn concurrent_requests_never_exceed_the_limit() {
    let f = fixture().await;
    let (_, token) = f.user();
    away_from_minute_end().await;
    let results = join_all((0..20).map(|i| {
        let f = &f;
        let token = &token;
        async move {
            f.chat_all(token, &json!({"message": format!("c{i}")}))
                .await
                .0
        }
    }))
    .await;
    let ok = results.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = results
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, refused), (10, 10));
}

/// A budget over the emulated usage table, with this client's own SDK
/// client and window guesses, as one instance of chat-stream has.
async fn budget_client(f: &ChatFixture) -> Budget {
    let table = f.stack.env("chat-stream").required("USAGE_TABLE").unwrap();
    let dynamodb = shared::aws::Dynamo::new(&support::aws().await);
    Budget::new(
        std::sync::Arc::new(DynamoBudgets::new(dynamodb.sdk.clone(), &table)),
        std::sync::Arc::new(DynamoLedger::new(dynamodb, &table)),
    )
}

fn window_tenant(name: &str) -> Tenant {
    serde_json::from_value::<NewTenant>(json!({
        "name": name, "monthly_quota": 1, "billing_day": 1, "tier": "free"}))
    .unwrap()
    .into_tenant(Utc::now())
    .unwrap()
}

/// A minute (10) and an hour (`per_hour`).
fn windows(per_hour: u32) -> [RateWindow; 2] {
    [
        RateWindow {
            name: "minute",
            length: TimeDelta::minutes(1),
            limit: 10,
        },
        RateWindow {
            name: "hour",
            length: TimeDelta::hours(1),
            limit: per_hour,
        },
    ]
}

#[tokio::test]
async fn minute_and_hour_windows_allow_exactly_their_limits() {
    let f = fixture().await;
    let budget = budget_client(&f).await;
    let tenant = window_tenant("boundaries");
    let windows = windows(50);
    let hour = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    let reserve = |windows: &[RateWindow], at| {
        let (budget, tenant) = (&budget, &tenant);
        let windows = windows.to_vec();
        async move {
            budget
                .reserve(tenant, 1_000_000, 1, &windows, at)
                .await
                .unwrap()
        }
    };
    let mut allowed = 0;
    // 11 tries a minute for 6 minutes: the minute window stops the 11th each
    // minute, and the hour stops everything after the 50th; a refused
    // request uses up no slot in either window.
    for minute in 0..6 {
        let mut this_minute = 0;
        for attempt in 0..11 {
            let at = hour + TimeDelta::minutes(minute) + TimeDelta::seconds(5);
            match reserve(&windows, at).await {
                Ok(_) => {
                    allowed += 1;
                    this_minute += 1;
                }
                Err(Refused::Limited(verdict)) if this_minute == 10 => {
                    assert_eq!((attempt, verdict.window), (10, "minute"));
                }
                Err(Refused::Limited(verdict)) => {
                    assert_eq!(verdict.window, "hour");
                    assert_eq!(verdict.binding.reset, hour + TimeDelta::hours(1));
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(this_minute, if minute < 5 { 10 } else { 0 });
    }
    assert_eq!(allowed, 50);
    // A window of 0 refuses from the first request.
    let closed = [RateWindow {
        name: "minute",
        length: TimeDelta::minutes(1),
        limit: 0,
    }];
    assert!(matches!(
        reserve(&closed, hour).await,
        Err(Refused::Limited(_))
    ));
    // A new hour starts afresh.
    assert!(reserve(&windows, hour + TimeDelta::hours(1)).await.is_ok());
}

/// Eight clients (each its own SDK client, connection pool and window
/// guesses, as eight instances would be) race one user's windows: the
/// limits hold exactly, and refused requests leave no count and no hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn rate_windows_are_exact_and_refuse_cleanly_across_eight_clients() {
    let f = fixture().await;
    let tenant = window_tenant("race");
    let windows = windows(12);
    let hour = Utc.with_ymd_and_hms(2026, 11, 22, 11, 0, 0).unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(budget_client(&f).await);
    }
    let race = |at: chrono::DateTime<Utc>| {
        let tasks: Vec<_> = clients
            .iter()
            .map(|budget| {
                let (budget, tenant) = (budget.clone(), tenant.clone());
                tokio::spawn(async move {
                    let mut allowed = 0;
                    for _ in 0..5 {
                        let reserved = budget.reserve(&tenant, 1_000_000, 1, &windows, at).await;
                        allowed += u32::from(reserved.unwrap().is_ok());
                    }
                    allowed
                })
            })
            .collect();
        async move {
            let mut total = 0;
            for task in join_all(tasks).await {
                total += task.unwrap();
            }
            total
        }
    };
    // 40 requests in the first minute: the minute allows 10.
    assert_eq!(race(hour).await, 10);
    // 40 in the next: the hour has 2 left, and the 30 refused first
    // minute requests took none of them.
    assert_eq!(race(hour + TimeDelta::minutes(1)).await, 2);
    let period = shared::metering::period::BillingPeriod::containing(hour, tenant.billing_day);
    let record = aws_sdk_dynamodb::Client::new(&support::aws().await)
        .get_item()
        .table_name(f.stack.env("chat-stream").required("USAGE_TABLE").unwrap())
        .key("pk", AttributeValue::S(format!("TENANT#{}", tenant.id)))
        .key("sk", AttributeValue::S(format!("BUDGET#{}", period.key())))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let number = |name: &str| record[name].as_n().unwrap().parse::<i64>().unwrap();
    let minute_one = (hour + TimeDelta::minutes(1)).timestamp();
    assert_eq!(
        (
            number("minute_start"),
            number("minute_count"),
            number("hour_start"),
            number("hour_count"),
            number("held"),
        ),
        (minute_one, 2, hour.timestamp(), 12, 12)
    );
}

#[tokio::test]
async fn a_request_whose_worst_case_passes_the_quota_is_refused_before_any_upstream_call() {
    // The system prompt is 5,053 bytes: a worst case of about 6,100 tokens
    // (prompt bytes + max_tokens 1024) fits 7,000 once, not after a reply.
    let tiers = r#"{"free":{"per_minute":10,"per_hour":50,"monthly_tokens":7000},
                   "pro":{"per_minute":30,"per_hour":300,"monthly_tokens":70000},
                   "enterprise":{"per_minute":60,"per_hour":null,"monthly_tokens":700000}}"#;
    let f = fixture_with(&[("CHAT_TIERS", tiers)]).await;
    let (_, token) = f.user();
    let (status, _) = f.chat_all(&token, &json!({"message": "use it all"})).await;
    assert_eq!(status, StatusCode::OK);
    drain(&pump(&f.stack).await).await;

    let (status, headers, body) = f.send_chat(Some(&token), &json!({"message": "more"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "quota_exceeded");
    assert_eq!(body["quota"], 7000);
    assert!(body["resets_at"].as_str().unwrap().ends_with("+00:00"));
    assert!(headers.contains_key("retry-after"));
    assert_eq!(f.stub.attempts(), 1);
    // The budget settled to what the rollup counted: both say the same.
    let current = usage_current(&f, &token).await;
    assert_eq!(current["quota"]["limit"], 7000);
    assert_eq!(current["quota"]["used"], body["used"]);
    assert!(body["used"].as_u64().unwrap() > 0);
}

/// Eight requests race one user near the quota: together they never hold
/// (or use) more than it, however they interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn eight_concurrent_requests_never_pass_the_quota() {
    let tiers = r#"{"free":{"per_minute":60,"per_hour":null,"monthly_tokens":15000},
                   "pro":{"per_minute":60,"per_hour":null,"monthly_tokens":70000},
                   "enterprise":{"per_minute":60,"per_hour":null,"monthly_tokens":700000}}"#;
    let f = fixture_with(&[("CHAT_TIERS", tiers)]).await;
    let (_, token) = f.user();
    let mut admitted = 0;
    for _ in 0..3 {
        let round = join_all((0..8).map(|i| {
            let message = json!({"message": format!("race {i}")});
            let (f, token) = (&f, &token);
            async move { f.chat_all(token, &message).await.0 }
        }))
        .await;
        admitted += round.iter().filter(|s| **s == StatusCode::OK).count();
        assert!(
            round.iter().all(|s| matches!(s.as_u16(), 200 | 429)),
            "{round:?}"
        );
    }
    drain(&pump(&f.stack).await).await;
    let current = usage_current(&f, &token).await;
    let used = current["quota"]["used"].as_u64().unwrap();
    assert!(used <= 15_000, "{used} tokens used of 15,000");
    // Each reply uses ~1,300 and holds ~6,100 while it runs: at most two
    // run at once, and later rounds fit more as replies settle.
    assert!((2..24).contains(&admitted), "{admitted} admitted");
}

#[tokio::test]
async fn the_next_request_sends_the_conversation_so_far_to_its_owner_only() {
    let f = fixture().await;
    let (_, token) = f.user();
    let first = json!({"message": "my goal is savings", "conversation_id": "conv-a"});
    assert_eq!(f.chat_all(&token, &first).await.0, StatusCode::OK);
    let second = json!({"message": "what next", "conversation_id": "conv-a"});
    let (_, events) = f.chat_all(&token, &second).await;
    assert_eq!(events[0].data["conversation_id"], "conv-a");

    let sent = f.stub.requests();
    let messages = sent[1]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0]["content"], "my goal is savings");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], "You said: my goal is savings");
    // The repeat request read the system prompt from the cache.
    let complete = &events.last().unwrap().data;
    assert!(
        complete["usage"]["cache_read_input_tokens"]
            .as_u64()
            .unwrap()
            > 1000
    );

    // Another user naming the same conversation starts from nothing.
    let (_, other) = f.user();
    f.chat_all(
        &other,
        &json!({"message": "hi", "conversation_id": "conv-a"}),
    )
    .await;
    assert_eq!(
        f.stub.requests()[2]["messages"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_streams_or_counts() {
    let f = fixture().await;
    let (_, token) = f.user();
    let bad = [
        json!({}),
        json!({"message": ""}),
        json!({"message": "hi", "model": "gpt-4"}),
        json!({"message": "hi", "images": [{"media_type": "image/bmp", "data": "AAAA"}]}),
        json!({"message": "hi", "conversation_id": "../etc"}),
    ];
    for body in &bad {
        let (status, headers, problem) = f.send_chat(Some(&token), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(problem["code"], "invalid_request");
        assert!(problem["request_id"].is_string());
    }
    assert_eq!(f.stub.attempts(), 0);
    let (status, _) = f.chat_all(&token, &json!({"message": "fine"})).await;
    assert_eq!(status, StatusCode::OK);
}

/// A 1×1 PNG, base64.
const PIXEL_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

#[tokio::test]
async fn an_image_reaches_the_model_in_anthropics_format_and_bad_ones_say_why() {
    let f = fixture().await;
    let (_, token) = f.user();
    let with_image = json!({
        "message": "what is this?",
        "images": [{"media_type": "image/png", "data": PIXEL_PNG}],
    });
    let (status, _) = f.chat_all(&token, &with_image).await;
    assert_eq!(status, StatusCode::OK);
    let sent = f.stub.requests().pop().unwrap();
    assert_eq!(
        sent["messages"][0]["content"],
        json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL_PNG}},
            {"type": "text", "text": "what is this?"},
        ])
    );
    for (image, why) in [
        (
            json!({"media_type": "image/bmp", "data": PIXEL_PNG}),
            "image/png",
        ),
        (
            json!({"media_type": "image/png", "data": "not base64!"}),
            "base64",
        ),
        (json!({"media_type": "image/png", "data": ""}), "empty"),
    ] {
        let body = json!({"message": "hi", "images": [image]});
        let (status, _, problem) = f.send_chat(Some(&token), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{detail} should say {why}");
    }
    // An image over 5 MB makes the body pass Lambda's 6 MB payload limit.
    let too_big = json!({"message": "hi", "images": [{"media_type": "image/png", "data": "A".repeat(7 << 20)}]});
    let (status, _, problem) = f.send_chat(Some(&token), &too_big).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    assert_eq!(f.stub.attempts(), 1);
}

/// The issuer rotates its signing key: a token with the new key id is
/// accepted (one JWKS refresh), and one signed with the removed key is not.
#[tokio::test]
async fn a_rotated_jwks_key_is_accepted_and_a_removed_one_refused() {
    let f = fixture_with(&[("JWKS_REFRESH_SECONDS", "1")]).await;
    let (subject, old) = f.user();
    assert_eq!(
        f.chat_all(&old, &json!({"message": "before"})).await.0,
        StatusCode::OK
    );
    f.issuer.rotate();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = f.issuer.token(&subject, Duration::from_secs(600));
    assert_eq!(
        f.chat_all(&new, &json!({"message": "after"})).await.0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, problem) = f
        .send_chat(Some(&old), &json!({"message": "old key"}))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    assert_eq!(
        f.issuer.fetches(),
        3,
        "first use, the new kid, the removed kid"
    );
}

#[tokio::test]
async fn conversations_are_listed_read_and_deleted_by_their_owner_only() {
    let f = fixture().await;
    let (_, token) = f.user();
    let (_, stranger) = f.user();
    for message in ["plan my savings", "and then?"] {
        let body = json!({"message": message, "conversation_id": "conv-own"});
        assert_eq!(f.chat_all(&token, &body).await.0, StatusCode::OK);
    }
    let (status, list) = call(&f.usage, "GET", "/api/v1/conversations", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["conversations"][0]["id"], "conv-own", "{list}");
    assert_eq!(list["conversations"][0]["title"], "plan my savings");
    let path = "/api/v1/conversations/conv-own";
    let (_, one) = call(&f.usage, "GET", path, Some(&token), None).await;
    let messages = one["messages"].as_array().unwrap();
    assert_eq!(
        (messages.len(), &messages[2]["text"]),
        (4, &json!("and then?"))
    );

    let (status, _) = call(&f.usage, "GET", path, Some(&stranger), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&f.usage, "DELETE", path, Some(&stranger), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = call(&f.usage, "DELETE", path, Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&f.usage, "GET", path, Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Its history is gone too: continuing it sends no earlier turns.
    let next = json!({"message": "start over", "conversation_id": "conv-own"});
    assert_eq!(f.chat_all(&token, &next).await.0, StatusCode::OK);
    let sent = f.stub.requests().pop().unwrap();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn chat_refuses_requests_without_a_valid_token() {
    let f = fixture().await;
    let body = json!({"message": "hi"});
    let (status, _, problem) = f.send_chat(None, &body).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_credentials"))
    );
    let (status, _, problem) = f.send_chat(Some("not.a.jwt"), &body).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    let (status, _) = call(&f.usage, "GET", "/api/v1/usage/current", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.stub.attempts(), 0);
}

#[tokio::test]
async fn first_sign_in_creates_a_free_user_with_nothing_used() {
    let f = fixture().await;
    let (subject, token) = f.user();
    let current = usage_current(&f, &token).await;
    assert_eq!(current["tier"], "free");
    assert_eq!(current["quota"]["limit"], 100_000);
    assert_eq!(current["quota"]["used"], 0);
    assert_eq!(current["requests"], 0);
    assert_eq!(current["rate_limits"]["per_minute"], 10);
    let profile = chat_store(&f).await.user(&subject).await.unwrap().unwrap();
    assert_eq!(profile.created_at, profile.last_active_at);
    // Signing in again within the minute leaves last_active_at alone.
    assert!(
        !chat_store(&f)
            .await
            .touch(&subject, Utc::now(), Utc::now() - TimeDelta::minutes(1))
            .await
            .unwrap()
    );
    assert!(
        chat_store(&f)
            .await
            .touch(
                &subject,
                Utc::now() + TimeDelta::seconds(61),
                Utc::now() + TimeDelta::seconds(1),
            )
            .await
            .unwrap()
    );

    let (status, body) = usage_get(&f, &token, "/api/v1/usage/history?limit=0").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_limit"))
    );
}

#[tokio::test]
async fn usage_history_pages_with_a_cursor() {
    let f = fixture().await;
    let (_, token) = f.user();
    for i in 0..3 {
        f.chat_all(&token, &json!({"message": format!("m{i}")}))
            .await;
    }
    let (status, page) = usage_get(&f, &token, "/api/v1/usage/history?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["requests"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = usage_get(
        &f,
        &token,
        &format!("/api/v1/usage/history?limit=2&cursor={cursor}"),
    )
    .await;
    let rest = rest["requests"].as_array().unwrap();
    assert_eq!(rest.len(), 1);
    // One user's cursor is not another's.
    let (_, other) = f.user();
    let (status, problem) = usage_get(
        &f,
        &other,
        &format!("/api/v1/usage/history?cursor={cursor}"),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_cursor"))
    );
    let (status, problem) = usage_get(&f, &token, "/api/v1/usage/history?cursor=bogus").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_cursor"))
    );
}

#[tokio::test]
async fn status_reports_each_dependency() {
    let f = fixture().await;
    let (status, body) = call(&f.usage, "GET", "/api/v1/status", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok", "{body}");
    for dependency in [
        "chat_table",
        "usage_table",
        "tenants_table",
        "rate_limit_table",
        "events_queue",
        "anthropic_api_key_secret",
        "anthropic_api_key",
        "anthropic_api",
        "sign_in_keys",
    ] {
        assert_eq!(body["dependencies"][dependency], "ok", "{dependency}");
    }
}

/// `/api/v1/status` says `degraded`, and why, when the Anthropic key is
/// empty or the model API cannot be reached; it answers from a probe at
/// most 30 s old, so a fix shows up within that (and a flood costs nothing).
#[tokio::test]
async fn status_is_degraded_with_the_reason_when_the_key_is_empty_or_the_model_unreachable() {
    let aws = support::aws().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&aws);
    let secret = secrets
        .create_secret()
        .name(support::unique("anthropic-key"))
        .secret_string(r#"{"api_key": ""}"#)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let f = fixture_with(&[
        ("ANTHROPIC_API_KEY_SECRET", &secret),
        ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
    ])
    .await;
    let (status, body) = call(&f.usage, "GET", "/api/v1/status", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(
        (
            &body["reasons"]["anthropic_api_key"],
            &body["reasons"]["anthropic_api"]
        ),
        (&json!("not set"), &json!("unreachable")),
        "{body}"
    );
    assert_eq!(body["dependencies"]["chat_table"], "ok");
    // The key is set now, but the page answers from its cached probe.
    secrets
        .put_secret_value()
        .secret_id(&secret)
        .secret_string(r#"{"api_key": "sk-ant-test"}"#)
        .send()
        .await
        .unwrap();
    let (_, again) = call(&f.usage, "GET", "/api/v1/status", None, None).await;
    assert_eq!(again["reasons"]["anthropic_api_key"], "not set");
}

/// The rate windows are counted with the budget's hold: without the usage
/// table nothing can be counted or held, so nothing goes upstream.
#[tokio::test]
async fn a_usage_table_outage_refuses_with_a_503_before_any_upstream_call() {
    let f = fixture_with(&[("USAGE_TABLE", "no-such-table")]).await;
    let (_, token) = f.user();
    let (status, headers, problem) = f.send_chat(Some(&token), &json!({"message": "hi"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["code"], "dependency_unavailable");
    assert_eq!(problem["dependency"], "usage table");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(f.stub.attempts(), 0);
}

/// A verifier for the fixture's issuer, reading its keys from `jwks_url`.
fn verifier_for(jwks_url: &str) -> Verifier {
    Verifier::new(
        JwtSettings {
            jwks_url: jwks_url.to_owned(),
            issuer: ISSUER.to_owned(),
            audiences: vec![AUDIENCE.to_owned()],
            refresh_interval: Duration::from_secs(30),
        },
        reqwest::Client::new(),
    )
}

/// The verifier against the fixture's JWKS: each way a token can be wrong.
#[tokio::test]
async fn sign_in_accepts_only_valid_tokens_from_the_issuer() {
    let f = fixture().await;
    let verifier = verifier_for(&f.jwks_url);
    let now = Utc::now().timestamp();
    let claims = |patch: Value| {
        let mut claims = f.issuer.claims("user_1", Duration::from_secs(300));
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let es = |patch: Value| f.issuer.sign(Algorithm::ES256, None, &claims(patch));

    assert_eq!(verifier.verify(&es(json!({}))).await.unwrap().0, "user_1");
    let rs = f.issuer.sign(Algorithm::RS256, None, &claims(json!({})));
    assert_eq!(verifier.verify(&rs).await.unwrap().0, "user_1");
    // `aud` (string or list) is accepted in place of `azp`.
    assert!(
        verifier
            .verify(&es(json!({"azp": null, "aud": [AUDIENCE, "x"]})))
            .await
            .is_ok()
    );
    // Within the 60 s leeway.
    assert!(verifier.verify(&es(json!({"exp": now - 30}))).await.is_ok());

    let cases = [
        (es(json!({"exp": now - 120})), VerifyError::Expired),
        (es(json!({"nbf": now + 120})), VerifyError::NotYetValid),
        (es(json!({"iss": "https://evil.test"})), VerifyError::Issuer),
        (
            es(json!({"azp": "https://evil.test"})),
            VerifyError::Audience,
        ),
        (es(json!({"azp": null})), VerifyError::Audience),
        ("garbage".to_owned(), VerifyError::Malformed),
    ];
    for (token, expected) in cases {
        assert_eq!(verifier.verify(&token).await.unwrap_err(), expected);
    }
    // A tampered signature.
    let good = es(json!({}));
    let tampered = format!("{}AAAA", &good[..good.len() - 4]);
    assert!(verifier.verify(&tampered).await.is_err());
    // HS256 signed with anything: refused on its algorithm.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(b"public key bytes"),
    )
    .unwrap();
    assert_eq!(
        verifier.verify(&hs).await.unwrap_err(),
        VerifyError::Algorithm
    );
    // An RS256 key used as ES256: refused.
    let kid = f.issuer.sign(Algorithm::RS256, None, &claims(json!({})));
    let rs_kid = jsonwebtoken::decode_header(&kid).unwrap().kid.unwrap();
    let mismatched = f
        .issuer
        .sign(Algorithm::ES256, Some(&rs_kid), &claims(json!({})));
    assert!(verifier.verify(&mismatched).await.is_err());
}

#[tokio::test]
async fn an_unknown_key_id_refreshes_the_jwks_at_most_once_per_interval() {
    let f = fixture().await;
    let verifier = verifier_for(&f.jwks_url);
    let claims = f.issuer.claims("user_1", Duration::from_secs(300));
    verifier
        .verify(&f.issuer.token("user_1", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(f.issuer.fetches(), 1, "first use fetches the keys");
    for _ in 0..5 {
        let forged = f
            .issuer
            .sign(Algorithm::ES256, Some("rotated-away"), &claims);
        assert_eq!(
            verifier.verify(&forged).await.unwrap_err(),
            VerifyError::UnknownKey
        );
    }
    assert_eq!(f.issuer.fetches(), 1, "refreshes are rate-limited");

    let unreachable = verifier_for("http://127.0.0.1:9/jwks.json");
    assert!(matches!(
        unreachable
            .verify(&f.issuer.token("u", Duration::from_secs(60)))
            .await,
        Err(VerifyError::KeysUnavailable(_))
    ));
}
