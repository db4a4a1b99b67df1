//! Shared fixtures for the integration tests: one AWS emulator (ministack, or
//! whichever `INGOT_EMULATOR` names) per
//! test binary on a free port, and unique names so tests never share state.

pub mod calls;
pub mod chat;
pub mod metering;

pub use calls::aws_as;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use infra::cloud::template::{Resolver, Template};
use shared::config::Env;

pub const REGION: &str = "us-east-1";

/// The workspace root of the checkout under test (found at run time, so a
/// test binary shared between clones tests the clone that runs it).
pub fn root() -> PathBuf {
    infra::workspace_root().unwrap_or_else(|e| panic!("{e}"))
}

/// The emulator's endpoint, starting it on first use. It lives as long as
/// the test process: it is spawned from a thread that never ends, and the
/// kernel kills it when the process does, so no run leaves one behind.
pub fn emulator() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let started = infra::cloud::emulator::Emulator::from_env().and_then(|kind| {
                infra::cloud::emulator::free_port()
                    .and_then(|port| {
                        kind.command(&root(), port)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .map(|_| port)
                    })
                    .map_err(|e| format!("{}: {e}", kind.name()))
            });
            let _ = tx.send(started);
            loop {
                std::thread::park();
            }
        });
        let port = rx.recv().expect("emulator thread").unwrap_or_else(|e| {
            panic!("cannot start the emulator ({e}); run `make venv` or set INGOT_EMULATOR_BIN")
        });
        let started = Instant::now();
        while !infra::cloud::emulator::port_open(port) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the emulator did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("http://127.0.0.1:{port}")
    })
}

/// SDK configuration for the emulator.
pub async fn aws() -> aws_config::SdkConfig {
    infra::cloud::bootstrap::emulator_config(emulator(), REGION).await
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The real template bootstrapped into the emulator as its own stack.
pub struct Stack {
    pub resolver: Resolver,
    envs: HashMap<String, Env>,
}

impl Stack {
    /// The environment the template gives `function` (its own variables only).
    pub fn env(&self, function: &str) -> &Env {
        &self.envs[function]
    }
}

pub async fn stack() -> Stack {
    let template =
        Template::load(&root().join("template.yaml").to_string_lossy()).expect("template");
    let mut resolver = template
        .resolver(
            &unique("ingot"),
            REGION,
            infra::cloud::bootstrap::ACCOUNT_ID,
            &[("Stage", "test")],
        )
        .expect("resolver");
    infra::cloud::bootstrap::bootstrap(&template, &mut resolver, &aws().await)
        .await
        .expect("bootstrap");
    let envs = template
        .functions()
        .expect("functions")
        .iter()
        .map(|f| {
            let env = infra::cloud::bootstrap::environment_of(f, &resolver, emulator(), REGION)
                .expect("environment");
            let env = Env::from_pairs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            (f.binary.clone(), env)
        })
        .collect();
    Stack { resolver, envs }
}

/// Every HTTP function's real app, configured from its own template
/// environment and the emulator.
pub async fn http_apps(stack: &Stack) -> Vec<(&'static str, axum::Router)> {
    vec![
        (
            "prices",
            prices::app(
                &prices::Config::from_env(stack.env("prices")).unwrap(),
                &aws_as("prices").await,
            ),
        ),
        (
            "ingest",
            ingest::app(
                &ingest::Config::from_env(stack.env("ingest")).unwrap(),
                &aws_as("ingest").await,
            ),
        ),
        (
            "usage",
            usage::app(
                &usage::Config::from_env(stack.env("usage")).unwrap(),
                &aws_as("usage").await,
            ),
        ),
        (
            "chat-stream",
            chat_stream::app(
                &chat_stream::Config::from_env(stack.env("chat-stream")).unwrap(),
                &aws_as("chat-stream").await,
            ),
        ),
    ]
}

/// Sends `request` to `app`: status, headers and the body as JSON (`Null`
/// when it is not JSON).
pub async fn send(
    app: &axum::Router,
    request: http::Request<axum::body::Body>,
) -> (http::StatusCode, http::HeaderMap, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

/// A request with an optional bearer token and JSON body.
pub fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> http::Request<axum::body::Body> {
    let mut builder = http::Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map_or_else(axum::body::Body::empty, |b| {
        axum::body::Body::from(b.to_string())
    });
    builder.body(body).expect("request")
}

impl Stack {
    /// The admin token the bootstrap generated for this stack.
    pub async fn admin_token(&self) -> String {
        let id = self
            .env("usage")
            .required("ADMIN_TOKEN_SECRET")
            .expect("secret id");
        aws_sdk_secretsmanager::Client::new(&aws().await)
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .expect("admin token")
            .secret_string()
            .expect("a string secret")
            .to_owned()
    }
}

/// `send(app, request(...))`, for when headers do not matter.
pub async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (http::StatusCode, serde_json::Value) {
    let (status, _, body) = send(app, request(method, path, token, body)).await;
    (status, body)
}

/// Puts `body` on the queue at `url`; returns the message id. On a FIFO
/// queue, into the group of the tenant the body names, as ingest sends.
pub async fn send_message(sqs: &aws_sdk_sqs::Client, url: &str, body: &str) -> String {
    let fifo = url.ends_with(".fifo");
    let group = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["tenant"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "tests".to_owned());
    sqs.send_message()
        .queue_url(url)
        .message_body(body)
        .set_message_group_id(fifo.then_some(group))
        .set_message_deduplication_id(fifo.then(|| uuid::Uuid::new_v4().to_string()))
        .send()
        .await
        .expect("SendMessage")
        .message_id()
        .expect("a message id")
        .to_owned()
}

/// Up to ten messages waiting on the queue at `url`.
pub async fn waiting(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .unwrap_or_default()
}

/// A Lambda context whose deadline is `secs` from now, as Lambda gives one.
pub fn lambda_context(secs: u64) -> lambda_runtime::Context {
    let mut context = lambda_runtime::Context::default();
    context.deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        + secs * 1000;
    context
}
