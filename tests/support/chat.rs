//! Chat fixtures: a stack, a local sign-in issuer and Anthropic stub
//! (`infra::cloud::stubs`), and the real `chat-stream` and `usage` apps pointed at
//! them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use infra::cloud::stubs::{AnthropicStub, Issuer};
use serde_json::Value;
use shared::chat::anthropic::SseParser;
use shared::config::Env;
use tower::ServiceExt;

use crate::Stack;

pub const AUDIENCE: &str = "https://app.test";
pub const ISSUER: &str = "https://issuer.test";

pub struct ChatFixture {
    pub stack: Stack,
    pub issuer: Arc<Issuer>,
    pub stub: Arc<AnthropicStub>,
    pub jwks_url: String,
    pub chat: Router,
    pub usage: Router,
}

pub async fn fixture() -> ChatFixture {
    fixture_with(&[]).await
}

/// [`fixture`] with extra environment for both functions.
pub async fn fixture_with(overrides: &[(&str, &str)]) -> ChatFixture {
    let stack = crate::stack().await;
    let aws = crate::aws().await;
    let issuer = Arc::new(Issuer::generate(ISSUER, AUDIENCE));
    let jwks_url = format!(
        "{}/.well-known/jwks.json",
        infra::cloud::stubs::serve(issuer.router()).await.unwrap()
    );
    let stub = AnthropicStub::new();
    let anthropic = infra::cloud::stubs::serve(stub.router()).await.unwrap();
    aws_sdk_secretsmanager::Client::new(&aws)
        .put_secret_value()
        .secret_id(
            stack
                .env("chat-stream")
                .required("ANTHROPIC_API_KEY_SECRET")
                .unwrap(),
        )
        .secret_string(r#"{"api_key": "sk-ant-test"}"#)
        .send()
        .await
        .expect("PutSecretValue");
    let env = |function: &str| {
        let mut env: Env = stack
            .env(function)
            .clone()
            .with("JWKS_URL", &jwks_url)
            .with("JWT_ISSUER", ISSUER)
            .with("JWT_AUDIENCES", AUDIENCE)
            .with("ANTHROPIC_BASE_URL", &anthropic);
        for (name, value) in overrides {
            env = env.with(name, value);
        }
        env
    };
    let chat = chat_stream::app(
        &chat_stream::Config::from_env(&env("chat-stream")).unwrap(),
        &crate::aws_as("chat-stream").await,
    );
    let usage = usage::app(
        &usage::Config::from_env(&env("usage")).unwrap(),
        &crate::aws_as("usage").await,
    );
    ChatFixture {
        stack,
        issuer,
        stub,
        jwks_url,
        chat,
        usage,
    }
}

impl ChatFixture {
    /// A valid token for a fresh user: `(subject, token)`.
    pub fn user(&self) -> (String, String) {
        let subject = crate::unique("user");
        let token = self.issuer.token(&subject, Duration::from_secs(600));
        (subject, token)
    }

    /// `POST /api/v1/chat/stream`; the response body is left unread.
    pub async fn post(&self, token: &str, body: &Value) -> http::Response<Body> {
        self.chat
            .clone()
            .oneshot(crate::request(
                "POST",
                "/api/v1/chat/stream",
                Some(token),
                Some(body),
            ))
            .await
            .expect("infallible router")
    }

    /// `POST /api/v1/chat/stream` read whole, for answers that do not stream
    /// (refusals): status, headers and the JSON body.
    pub async fn send_chat(
        &self,
        token: Option<&str>,
        body: &Value,
    ) -> (http::StatusCode, http::HeaderMap, Value) {
        crate::send(
            &self.chat,
            crate::request("POST", "/api/v1/chat/stream", token, Some(body)),
        )
        .await
    }

    /// A whole chat exchange: status and every event.
    pub async fn chat_all(&self, token: &str, body: &Value) -> (http::StatusCode, Vec<Event>) {
        let response = self.post(token, body).await;
        let status = response.status();
        let mut events = Events::new(response.into_body());
        let mut all = Vec::new();
        while let Some(event) = events.next().await {
            all.push(event);
        }
        (status, all)
    }
}

/// One SSE event of our stream; comments come through as `":"` with the
/// comment text.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

/// Reads a streaming body event by event, as a client would.
pub struct Events {
    body: Body,
    parser: SseParser,
    pending: std::collections::VecDeque<Event>,
    /// Raw text seen so far (keep-alive comments included).
    pub raw: String,
}

impl Events {
    pub fn new(body: Body) -> Self {
        Self {
            body,
            parser: SseParser::default(),
            pending: Default::default(),
            raw: String::new(),
        }
    }

    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let frame = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("the stream stalled")?
                .expect("body frame");
            let Ok(bytes) = frame.into_data() else {
                continue;
            };
            self.raw.push_str(&String::from_utf8_lossy(&bytes));
            for frame in self.parser.push(&bytes) {
                self.pending.push_back(Event {
                    name: frame.event.unwrap_or_default(),
                    data: serde_json::from_str(&frame.data).unwrap_or(Value::Null),
                });
            }
        }
    }
}

/// Waits until the current minute has at least 20 s left, so a test that
/// counts requests in one minute window does not straddle two.
pub async fn away_from_minute_end() {
    let second = chrono::Utc::now().timestamp().rem_euclid(60);
    if second >= 40 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
}
