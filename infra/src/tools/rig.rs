//! What a function binary needs to answer its sample event away from
//! `make dev`: a private emulator on a free port (so `make dev` can keep
//! running) holding the template's resources, and local stand-ins for the
//! upstreams in their real formats (gold-api.com, a sign-in issuer with its
//! JWKS, Anthropic's Messages API).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::cloud::emulator;
use crate::cloud::stubs::{AnthropicStub, Issuer, serve};
use crate::cloud::template::{FunctionSpec, Resolver, Template, Trigger};

const REGION: &str = "us-east-1";

/// The emulator, the stack's resources in it, and the upstream stubs.
pub struct Rig {
    _emulator: tokio::process::Child,
    pub aws: aws_config::SdkConfig,
    endpoint: String,
    resolver: Resolver,
    gold_api: String,
    issuer: Arc<Issuer>,
    jwks: String,
    /// Anthropic's Messages API, as chat-stream calls it.
    pub anthropic: String,
    /// What that stand-in was asked and answered.
    pub upstream: Arc<AnthropicStub>,
}

impl Rig {
    /// Starts the emulator and creates `template`'s resources as stack `stack`.
    pub async fn start(root: &Path, template: &Template, stack: &str) -> Result<Self, String> {
        let port = emulator::free_port().map_err(|e| e.to_string())?;
        let kind = emulator::Emulator::from_env()?;
        let emulator = tokio::process::Command::from(kind.command(root, port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e} (run `make venv`)", kind.name()))?;
        emulator::wait_for_port(port, Duration::from_secs(30), kind.name()).await?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let aws = crate::cloud::bootstrap::emulator_config(&endpoint, REGION).await;
        let mut resolver = template
            .resolver(
                stack,
                REGION,
                crate::cloud::bootstrap::ACCOUNT_ID,
                &[("Stage", stack)],
            )
            .map_err(|e| e.to_string())?;
        crate::cloud::bootstrap::bootstrap(template, &mut resolver, &aws)
            .await
            .map_err(|e| e.to_string())?;
        let stub = |e: std::io::Error| e.to_string();
        let gold_api = serve(crate::cloud::stubs::gold_api_com())
            .await
            .map_err(stub)?;
        let issuer = Arc::new(Issuer::generate("https://rig.local", "rig"));
        let jwks = serve(issuer.router()).await.map_err(stub)?;
        let upstream = AnthropicStub::new();
        let anthropic = serve(upstream.router()).await.map_err(stub)?;
        Ok(Self {
            _emulator: emulator,
            aws,
            endpoint,
            resolver,
            gold_api,
            issuer,
            jwks,
            anthropic,
            upstream,
        })
    }

    /// The environment the template gives `function`, pointed at the
    /// emulator and the stubs. chat-stream's tiers are unlimited, so every
    /// event it is handed gets a reply.
    pub fn env_of(&self, function: &FunctionSpec) -> Result<Vec<(String, String)>, String> {
        let mut env = crate::cloud::bootstrap::environment_of(
            function,
            &self.resolver,
            &self.endpoint,
            REGION,
        )
        .map_err(|e| e.to_string())?;
        let unlimited = r#"{"per_minute":1000000,"per_hour":null,"monthly_tokens":1000000000000}"#;
        env.extend(
            [
                ("PROVIDER_ORDER", "gold-api.com".to_owned()),
                ("GOLD_API_COM_BASE_URL", self.gold_api.clone()),
                ("JWKS_URL", format!("{}/.well-known/jwks.json", self.jwks)),
                ("JWT_ISSUER", self.issuer.issuer.clone()),
                ("JWT_AUDIENCES", self.issuer.audience.clone()),
                ("ANTHROPIC_BASE_URL", self.anthropic.clone()),
                (
                    "CHAT_TIERS",
                    format!(r#"{{"free":{unlimited},"pro":{unlimited},"enterprise":{unlimited}}}"#),
                ),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        Ok(env)
    }

    /// Stores an Anthropic key where chat-stream's environment says it is.
    pub async fn anthropic_key(&self, env: &[(String, String)]) -> Result<(), String> {
        let secret = env
            .iter()
            .find(|(k, _)| k == "ANTHROPIC_API_KEY_SECRET")
            .map(|(_, v)| v.clone())
            .ok_or("chat-stream has no ANTHROPIC_API_KEY_SECRET")?;
        aws_sdk_secretsmanager::Client::new(&self.aws)
            .put_secret_value()
            .secret_id(secret)
            .secret_string(r#"{"api_key": "sk-ant-local"}"#)
            .send()
            .await
            .map_err(|e| format!("PutSecretValue: {e}"))?;
        Ok(())
    }

    /// `function`'s environment and the event it answers as on Lambda: a
    /// signed-in chat request for the streaming function (its key stored),
    /// the SQS batch for the queue consumer (its tenants registered), the
    /// schedule event, or `/health` for the other HTTP functions.
    pub async fn sample(
        &self,
        root: &Path,
        function: &FunctionSpec,
    ) -> Result<(Vec<(String, String)>, Value), String> {
        let env = self.env_of(function)?;
        let event = if streams(function) {
            self.anthropic_key(&env).await?;
            self.chat_event(root, "sample-user")?
        } else {
            sample_event(root, &function.binary)?
        };
        if function
            .triggers
            .iter()
            .any(|t| matches!(t, Trigger::Sqs(_)))
        {
            self.register_tenants(&env, &event).await?;
        }
        Ok((env, event))
    }

    /// Registers the tenants whose events an SQS batch carries, so the
    /// rollup (with `env`) counts them rather than waiting for the tenant.
    pub async fn register_tenants(
        &self,
        env: &[(String, String)],
        batch: &Value,
    ) -> Result<(), String> {
        for record in batch["Records"].as_array().into_iter().flatten() {
            let body: Value = serde_json::from_str(record["body"].as_str().unwrap_or_default())
                .map_err(|e| format!("a batch message is not JSON: {e}"))?;
            self.register_tenant(env, &body["tenant"]).await?;
        }
        Ok(())
    }

    /// Registers tenant `id` (a JSON string) in the tenants table of `env`,
    /// enabled, with a quota no bench reaches: its new API key.
    pub async fn register_tenant(
        &self,
        env: &[(String, String)],
        id: &Value,
    ) -> Result<shared::metering::tenants::ApiKey, String> {
        use shared::metering::tenants::{Tenant, register, signing_secret};
        let table = env
            .iter()
            .find(|(k, _)| k == "TENANTS_TABLE")
            .map(|(_, v)| v.clone())
            .ok_or("the function has no TENANTS_TABLE")?;
        let store =
            shared::aws::tenants::DynamoTenants::new(shared::aws::Dynamo::new(&self.aws), &table);
        let tenant: Tenant = serde_json::from_value(serde_json::json!({
            "id": id, "name": "Sample", "monthly_quota": 1_000_000_000_000u64,
            "billing_day": 1, "tier": "free", "webhooks": [], "enabled": true,
            "signing_secret": signing_secret(), "created_at": chrono::Utc::now(),
        }))
        .map_err(|e| format!("sample tenant: {e}"))?;
        register(&store, &tenant).await.map_err(|e| e.to_string())
    }

    /// events/chat-stream-chat.json, signed in as `user` by the issuer.
    pub fn chat_event(&self, root: &Path, user: &str) -> Result<Value, String> {
        let mut event = sample_event(root, "chat-stream-chat")?;
        event["headers"]["authorization"] = Value::String(format!(
            "Bearer {}",
            self.issuer.token(user, Duration::from_secs(3600))
        ));
        Ok(event)
    }

    /// The template's function whose binary is `binary`.
    pub fn function(template: &Template, binary: &str) -> Result<FunctionSpec, String> {
        template
            .functions()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|f| f.binary == binary)
            .ok_or_else(|| format!("no {binary} function in the template"))
    }
}

/// Whether `function` streams its responses (chat-stream).
pub fn streams(function: &FunctionSpec) -> bool {
    function
        .triggers
        .iter()
        .any(|t| matches!(t, Trigger::Http { streaming: true }))
}

/// The sample event of `function` in `events/`: its own, else its `/health`,
/// SQS batch or schedule event.
pub fn sample_event(root: &Path, function: &str) -> Result<Value, String> {
    let candidates = [
        format!("events/{function}.json"),
        format!("events/{function}-health.json"),
        format!("events/{function}-sqs-batch.json"),
        format!("events/{function}-schedule.json"),
    ];
    let path = candidates
        .iter()
        .map(|c| root.join(c))
        .find(|p| p.exists())
        .ok_or_else(|| format!("no sample event for {function} in events/"))?;
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}
