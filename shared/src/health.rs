//! `GET /health`: touches every dependency a function uses.
//!
//! A function lists its dependencies once at cold start; a request probes
//! them concurrently, each with its own timeout, and answers 200 with every
//! check's result or 503 (problem+json) naming the ones that failed, so a load
//! balancer or a person can tell which table, queue or secret is at fault.
//! The route is public, so why a check failed (which can name roles and
//! accounts) goes to the log, not the response, and the answer comes from a
//! probe at most [`HEALTH_TTL`] old, one probe at a time: hammering it costs
//! the dependencies nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::join_all;
use serde_json::{Map, Value, json};

use crate::aws::secrets::SecretsManager;
use crate::aws::{probe_queue, probe_secret, probe_table};
use crate::chat::anthropic;
use crate::chat::settings::ChatResources;
use crate::error::ApiError;
use crate::secrets::SecretSource;
use crate::store::StoreError;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `/health` answers from one probe.
pub const HEALTH_TTL: Duration = Duration::from_secs(5);

/// Each dependency's state, and the failed ones with what a public page
/// may say of each.
type Probed = (Map<String, Value>, Vec<(&'static str, &'static str)>);

#[derive(Debug, Clone)]
enum Probe {
    Table(aws_sdk_dynamodb::Client, String),
    Queue(aws_sdk_sqs::Client, String),
    Secret(aws_sdk_secretsmanager::Client, String),
    /// An HTTP endpoint that must answer 2xx to a GET (e.g. a JWKS).
    Url(reqwest::Client, String),
    /// An HTTP server that must answer at all (any status): the model API.
    Reachable(reqwest::Client, String),
    /// The Anthropic API key secret must hold a key.
    AnthropicKey(aws_sdk_secretsmanager::Client, String),
}

/// Why a dependency failed its check (logged, never returned).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("no answer within {PROBE_TIMEOUT:?}")]
    Timeout,
    #[error("the secret holds no key")]
    NotSet,
}

impl ProbeError {
    /// What a public status page may say about the failure: the kind of
    /// failure, never the store's or server's own words.
    fn public(&self) -> &'static str {
        match self {
            ProbeError::Store(_) | ProbeError::Status(_) => "unavailable",
            ProbeError::Unreachable(_) => "unreachable",
            ProbeError::Timeout => "no answer",
            ProbeError::NotSet => "not set",
        }
    }
}

impl Probe {
    async fn run(&self) -> Result<(), ProbeError> {
        let probe = async {
            match self {
                Probe::Table(client, name) => Ok(probe_table(client, name).await?),
                Probe::Queue(client, url) => Ok(probe_queue(client, url).await?),
                Probe::Secret(client, id) => Ok(probe_secret(client, id).await?),
                Probe::Url(client, url) => match client.get(url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(ProbeError::Status(r.status().as_u16())),
                    Err(e) => Err(ProbeError::Unreachable(e.without_url())),
                },
                Probe::Reachable(client, url) => match client.get(url).send().await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(ProbeError::Unreachable(e.without_url())),
                },
                Probe::AnthropicKey(client, id) => {
                    let secret = SecretsManager::new(client.clone()).read(id).await;
                    let value = secret.map_err(|e| {
                        ProbeError::Store(StoreError::Unavailable {
                            store: "Anthropic API key secret",
                            operation: "GetSecretValue",
                            message: e.message,
                        })
                    })?;
                    anthropic::api_key(value.expose())
                        .map(drop)
                        .ok_or(ProbeError::NotSet)
                }
            }
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .unwrap_or(Err(ProbeError::Timeout))
    }
}

/// The dependencies of one function, built once per cold start.
#[derive(Debug, Clone)]
pub struct HealthChecks {
    function: &'static str,
    version: &'static str,
    probes: Vec<(&'static str, Probe)>,
}

impl HealthChecks {
    pub fn new(function: &'static str, version: &'static str) -> Self {
        Self {
            function,
            version,
            probes: Vec::new(),
        }
    }

    pub fn table(
        mut self,
        label: &'static str,
        client: &aws_sdk_dynamodb::Client,
        name: &str,
    ) -> Self {
        self.probes
            .push((label, Probe::Table(client.clone(), name.to_owned())));
        self
    }

    pub fn queue(mut self, label: &'static str, client: &aws_sdk_sqs::Client, url: &str) -> Self {
        self.probes
            .push((label, Probe::Queue(client.clone(), url.to_owned())));
        self
    }

    pub fn secret(
        mut self,
        label: &'static str,
        client: &aws_sdk_secretsmanager::Client,
        id: &str,
    ) -> Self {
        self.probes
            .push((label, Probe::Secret(client.clone(), id.to_owned())));
        self
    }

    pub fn url(mut self, label: &'static str, client: &reqwest::Client, url: &str) -> Self {
        self.probes
            .push((label, Probe::Url(client.clone(), url.to_owned())));
        self
    }

    /// Every AWS resource a chat request touches: `chat-stream`'s
    /// `/health` and the public `/api/v1/status` check the same list.
    pub fn chat(self, aws: &crate::aws::SdkConfig, resources: &ChatResources) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(aws);
        self.table("chat_table", &dynamodb, &resources.chat_table)
            .table("usage_table", &dynamodb, &resources.usage_table)
            .table("tenants_table", &dynamodb, &resources.tenants_table)
            .table("rate_limit_table", &dynamodb, &resources.rate_limit_table)
            .queue(
                "events_queue",
                &aws_sdk_sqs::Client::new(aws),
                &resources.events_queue_url,
            )
            .secret(
                "anthropic_api_key_secret",
                &aws_sdk_secretsmanager::Client::new(aws),
                &resources.anthropic_api_key_secret,
            )
    }

    /// The Anthropic API key: its secret must hold a key (an empty one
    /// makes every chat request a 503). For the status page: `/health`
    /// proves the secret is there, not that an operator has filled it in.
    pub fn anthropic_key(mut self, client: &aws_sdk_secretsmanager::Client, id: &str) -> Self {
        self.probes.push((
            "anthropic_api_key",
            Probe::AnthropicKey(client.clone(), id.to_owned()),
        ));
        self
    }

    /// A router serving `GET /health` with these checks, each probe
    /// answering for [`HEALTH_TTL`].
    pub fn route(self) -> Router {
        let checks = Arc::new(Cached::new(self, HEALTH_TTL));
        Router::new().route(
            "/health",
            get(move || {
                let checks = Arc::clone(&checks);
                async move { checks.report().await }
            }),
        )
    }

    /// An HTTP server that must answer at all, e.g. the model API.
    pub fn reachable(mut self, label: &'static str, client: &reqwest::Client, url: &str) -> Self {
        self.probes
            .push((label, Probe::Reachable(client.clone(), url.to_owned())));
        self
    }

    /// Probes every dependency concurrently.
    async fn probe_all(&self) -> Probed {
        let results = join_all(
            self.probes
                .iter()
                .map(|(label, probe)| async move { (*label, probe.run().await) }),
        )
        .await;

        let mut checks = Map::new();
        let mut failed = Vec::new();
        for (label, result) in results {
            match result {
                Ok(()) => checks.insert(label.to_owned(), json!("ok")),
                Err(reason) => {
                    tracing::warn!(dependency = label, %reason, "health check failed");
                    failed.push((label, reason.public()));
                    checks.insert(label.to_owned(), json!("unavailable"))
                }
            };
        }
        (checks, failed)
    }
}

/// Probes answered from memory for `ttl`, one probe at a time.
struct Cached {
    checks: HealthChecks,
    ttl: Duration,
    last: tokio::sync::Mutex<Option<(std::time::Instant, Probed)>>,
}

impl Cached {
    fn new(checks: HealthChecks, ttl: Duration) -> Self {
        Self {
            checks,
            ttl,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The latest probe, probing again once it is older than `ttl`.
    async fn probed(&self) -> Probed {
        let mut last = self.last.lock().await;
        if let Some((at, probed)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return probed.clone();
        }
        let probed = self.checks.probe_all().await;
        *last = Some((std::time::Instant::now(), probed.clone()));
        probed
    }

    /// 200 with every check, or 503 naming the failed ones.
    async fn report(&self) -> Response {
        let (checks, failed) = self.probed().await;
        let HealthChecks {
            function, version, ..
        } = &self.checks;
        if failed.is_empty() {
            Json(json!({
                "status": "ok",
                "function": function,
                "version": version,
                "checks": checks,
            }))
            .into_response()
        } else {
            let labels: Vec<&str> = failed.iter().map(|(label, _)| *label).collect();
            ApiError::unavailable(&labels.join(", "), 5)
                .with_extension("function", *function)
                .with_extension("version", *version)
                .with_extension("checks", Value::Object(checks))
                .into_response()
        }
    }
}

/// A status page answered from a probe at most `ttl` old, one probe at a
/// time: hammering a public route costs the dependencies nothing.
pub struct StatusPage(Cached);

impl StatusPage {
    pub fn new(checks: HealthChecks, ttl: Duration) -> Self {
        Self(Cached::new(checks, ttl))
    }

    /// Each dependency's state, always 200 (a status page, not a probe):
    /// `status` is `ok` or `degraded`, with a reason per failed dependency.
    pub async fn get(&self) -> Value {
        let (checks, failed) = self.0.probed().await;
        let reasons: Map<String, Value> = failed
            .iter()
            .map(|(label, reason)| ((*label).to_owned(), json!(reason)))
            .collect();
        json!({
            "status": if failed.is_empty() { "ok" } else { "degraded" },
            "version": self.0.checks.version,
            "dependencies": checks,
            "reasons": reasons,
        })
    }
}
