//! `prices`: the read API for spot prices.
//!
//! Serves `GET /health` today; the price routes (`/api/prices`,
//! `/api/proxy/{provider}`, `/api/config`) build on the same router.

use axum::Router;
use shared::aws::SdkConfig;
use shared::config::{ConfigError, Env, Upstream};
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, finish};

pub const FUNCTION: &str = "prices";

#[derive(Debug, Clone)]
pub struct Config {
    pub prices_table: String,
    pub rate_limit_table: String,
    pub provider_keys_secret: String,
    /// Base URL of each price provider, in priority order.
    pub providers: Vec<(Upstream, String)>,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            prices_table: env.required("PRICES_TABLE")?,
            rate_limit_table: env.required("RATE_LIMIT_TABLE")?,
            provider_keys_secret: env.required("PROVIDER_KEYS_SECRET")?,
            providers: Upstream::PRICE_PROVIDERS
                .into_iter()
                .map(|p| Ok((p, env.upstream(p)?)))
                .collect::<Result<_, ConfigError>>()?,
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("prices_table", &dynamodb, &config.prices_table)
        .table("rate_limit_table", &dynamodb, &config.rate_limit_table)
        .secret(
            "provider_keys_secret",
            &secrets,
            &config.provider_keys_secret,
        );
    finish(health.route(), &config.cors)
}
