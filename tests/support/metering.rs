//! Metering fixtures: a stack with the usage and ingest apps, tenants made
//! through the admin API, and the real rollup behind the real SQS pump.

use aws_lambda_events::event::sqs::SqsEvent;
use axum::Router;
use http::StatusCode;
use infra::cloud::invoke::{Invoke, InvokeError};
use infra::cloud::pump::Pump;
use infra::cloud::template::SqsSource;
use serde_json::{Value, json};

use crate::{Stack, call, request, send};

pub struct Fixture {
    pub stack: Stack,
    pub admin: String,
    pub usage: Router,
    pub ingest: Router,
}

pub async fn fixture() -> Fixture {
    let stack = crate::stack().await;
    Fixture {
        admin: stack.admin_token().await,
        usage: usage::app(
            &usage::Config::from_env(stack.env("usage")).unwrap(),
            &crate::aws_as("usage").await,
        ),
        ingest: ingest::app(
            &ingest::Config::from_env(stack.env("ingest")).unwrap(),
            &crate::aws_as("ingest").await,
        ),
        stack,
    }
}

impl Fixture {
    /// A request to the usage function with the admin token.
    pub async fn as_admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        call(&self.usage, method, path, Some(&self.admin), body).await
    }
}

/// A tenant created through the admin API: `(id, api key)`.
pub async fn tenant(f: &Fixture, quota: u64, billing_day: u8) -> (String, String) {
    tenant_with(
        f,
        json!({"monthly_quota": quota, "billing_day": billing_day}),
    )
    .await
}

/// A tenant with `fields` over the defaults: `(id, api key)`.
pub async fn tenant_with(f: &Fixture, fields: Value) -> (String, String) {
    let mut body = json!({"name": "Acme", "monthly_quota": 1000, "billing_day": 1, "tier": "pro"});
    for (k, v) in fields.as_object().expect("an object") {
        body[k] = v.clone();
    }
    let (status, created) = f.as_admin("POST", "/admin/tenants", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["api_key"].as_str().unwrap().to_owned(),
    )
}

pub async fn post_events(f: &Fixture, key: &str, body: &Value) -> (StatusCode, Value) {
    let (status, _, body) =
        send(&f.ingest, request("POST", "/events", Some(key), Some(body))).await;
    (status, body)
}

pub async fn usage_of(f: &Fixture, id: &str, token: &str, query: &str) -> (StatusCode, Value) {
    let (status, body) = call(
        &f.usage,
        "GET",
        &format!("/usage/{id}{query}"),
        Some(token),
        None,
    )
    .await;
    (status, body)
}

/// The real rollup handler, in process.
#[derive(Clone)]
pub struct RealRollup(pub rollup::Rollup);

impl Invoke for RealRollup {
    async fn invoke(&self, _function: &str, payload: &Value) -> Result<Value, InvokeError> {
        let event: SqsEvent = serde_json::from_value(payload.clone()).expect("an SQS event");
        let response = rollup::handle(
            &self.0,
            lambda_runtime::LambdaEvent::new(event, crate::lambda_context(30)),
        )
        .await
        .map_err(|e| InvokeError::Function {
            error_type: "rollup".into(),
            message: e.to_string(),
        })?;
        Ok(serde_json::to_value(response).unwrap())
    }
}

pub async fn pump(stack: &Stack) -> Pump<RealRollup> {
    pump_with(
        stack,
        rollup::Config::from_env(stack.env("rollup")).unwrap(),
    )
    .await
}

/// [`pump`] with a rollup configured by `config`.
pub async fn pump_with(stack: &Stack, config: rollup::Config) -> Pump<RealRollup> {
    let queue_url = stack.env("ingest").required("EVENTS_QUEUE_URL").unwrap();
    rollup_pump("EventsQueue", queue_url, config).await
}

/// The real rollup behind the alerts queue (delivering alerts), configured
/// by `config`.
pub async fn alerts_pump(config: rollup::Config) -> Pump<RealRollup> {
    let queue_url = config.alerts_queue_url.clone();
    rollup_pump("AlertsQueue", queue_url, config).await
}

async fn rollup_pump(queue: &str, queue_url: String, config: rollup::Config) -> Pump<RealRollup> {
    let sqs = aws_sdk_sqs::Client::new(&crate::aws().await);
    Pump {
        queue_arn: infra::cloud::bootstrap::queue_arn(&sqs, &queue_url)
            .await
            .unwrap(),
        sqs,
        queue_url,
        region: crate::REGION.into(),
        source: SqsSource {
            queue: queue.into(),
            batch_size: 10,
            max_batching_window_secs: 0,
            report_batch_item_failures: true,
            max_concurrency: None,
        },
        function: "rollup".into(),
        invoker: RealRollup(rollup::rollup(&config, &crate::aws_as("rollup").await)),
    }
}

/// Delivers everything on the queue; returns the messages delivered.
pub async fn drain(pump: &Pump<RealRollup>) -> usize {
    let mut delivered = 0;
    loop {
        let outcome = pump.poll_once().await.unwrap();
        assert!(
            outcome.failed.is_empty(),
            "unexpected failures: {outcome:?}"
        );
        if outcome.delivered == 0 {
            return delivered;
        }
        delivered += outcome.delivered;
    }
}
