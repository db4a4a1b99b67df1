//! Chat configuration: tiers, the model price table and request caps, from
//! the environment (JSON where a table is needed) with the prototype's
//! defaults. Prices change: they live here, keyed by model id, not in code
//! paths.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Env};
use crate::metering::tenants::Tier;
use crate::ratelimit::RateWindow;

/// Limits of one tier. Windows are fixed (minute, hour); `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    pub per_minute: u32,
    pub per_hour: Option<u32>,
    pub monthly_tokens: u64,
}

impl TierLimits {
    /// The tier's rate windows: a minute, and an hour if it has one.
    pub fn windows(&self) -> Vec<RateWindow> {
        let minute = RateWindow {
            name: "minute",
            length: TimeDelta::minutes(1),
            limit: self.per_minute,
        };
        let hour = self.per_hour.map(|limit| RateWindow {
            name: "hour",
            length: TimeDelta::hours(1),
            limit,
        });
        std::iter::once(minute).chain(hour).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiers {
    pub free: TierLimits,
    pub pro: TierLimits,
    pub enterprise: TierLimits,
}

impl Default for Tiers {
    fn default() -> Self {
        Self {
            free: TierLimits {
                per_minute: 10,
                per_hour: Some(50),
                monthly_tokens: 100_000,
            },
            pro: TierLimits {
                per_minute: 30,
                per_hour: Some(300),
                monthly_tokens: 2_000_000,
            },
            enterprise: TierLimits {
                per_minute: 60,
                per_hour: None,
                monthly_tokens: 20_000_000,
            },
        }
    }
}

impl Tiers {
    pub fn limits(&self, tier: Tier) -> TierLimits {
        match tier {
            Tier::Free => self.free,
            Tier::Pro => self.pro,
            Tier::Enterprise => self.enterprise,
        }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    /// Writing the prompt cache (5-minute entries: 1.25 × input).
    pub cache_write: f64,
    /// Reading the prompt cache (0.1 × input).
    pub cache_read: f64,
}

/// Token counts of one request, as Anthropic reports them. `input_tokens`
/// excludes the cached part of the prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
    }
}

impl ModelPrice {
    pub fn cost_usd(&self, usage: &Usage) -> f64 {
        let micro = usage.input_tokens as f64 * self.input
            + usage.output_tokens as f64 * self.output
            + usage.cache_creation_input_tokens as f64 * self.cache_write
            + usage.cache_read_input_tokens as f64 * self.cache_read;
        round_usd(micro / 1e6)
    }

    /// What reading `tokens` from the cache saved over sending them uncached.
    pub fn cache_savings_usd(&self, cache_read_tokens: u64) -> f64 {
        round_usd(cache_read_tokens as f64 * (self.input - self.cache_read) / 1e6)
    }
}

/// Costs are shown to the micro-dollar.
pub fn round_usd(usd: f64) -> f64 {
    (usd * 1e6).round() / 1e6
}

fn default_models() -> BTreeMap<String, ModelPrice> {
    BTreeMap::from([
        (
            "claude-sonnet-4-5".to_owned(),
            ModelPrice {
                input: 3.0,
                output: 15.0,
                cache_write: 3.75,
                cache_read: 0.30,
            },
        ),
        (
            "claude-haiku-4-5".to_owned(),
            ModelPrice {
                input: 1.0,
                output: 5.0,
                cache_write: 1.25,
                cache_read: 0.10,
            },
        ),
    ])
}

/// The coaching methodology, unless `CHAT_SYSTEM_PROMPT` replaces it.
const DEFAULT_SYSTEM_PROMPT: &str = include_str!("system_prompt.md");

#[derive(Clone)]
pub struct ChatSettings {
    pub tiers: Tiers,
    /// The allow-list of models and their prices.
    pub models: BTreeMap<String, ModelPrice>,
    pub default_model: String,
    /// `max_tokens` when the request names none.
    pub default_max_tokens: u32,
    /// Larger requested `max_tokens` are lowered to this.
    pub max_tokens_cap: u32,
    /// Prior turns sent upstream, newest first, up to about this many tokens.
    pub history_budget_tokens: u64,
    pub system_prompt: Arc<str>,
}

fn json_or<T: for<'de> Deserialize<'de>>(
    env: &Env,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match env.optional(name) {
        None => Ok(default),
        Some(raw) => serde_json::from_str(raw).map_err(|e| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }),
    }
}

impl ChatSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let models: BTreeMap<String, ModelPrice> = json_or(env, "CHAT_MODELS", default_models())?;
        let default_model = env
            .optional("CHAT_DEFAULT_MODEL")
            .unwrap_or("claude-sonnet-4-5")
            .to_owned();
        if !models.contains_key(&default_model) {
            return Err(ConfigError::Invalid {
                name: "CHAT_DEFAULT_MODEL",
                reason: format!("{default_model:?} is not in CHAT_MODELS"),
            });
        }
        let max_tokens_cap = env.parse_or("CHAT_MAX_TOKENS_CAP", 4096u32)?;
        let default_max_tokens = env
            .parse_or("CHAT_DEFAULT_MAX_TOKENS", 1024u32)?
            .min(max_tokens_cap);
        if default_max_tokens == 0 {
            return Err(ConfigError::Invalid {
                name: "CHAT_DEFAULT_MAX_TOKENS",
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(Self {
            tiers: json_or(env, "CHAT_TIERS", Tiers::default())?,
            models,
            default_model,
            default_max_tokens,
            max_tokens_cap,
            history_budget_tokens: env.parse_or("CHAT_HISTORY_BUDGET_TOKENS", 8000u64)?,
            system_prompt: env
                .optional("CHAT_SYSTEM_PROMPT")
                .unwrap_or(DEFAULT_SYSTEM_PROMPT)
                .into(),
        })
    }
}

/// The cold-start log shows the settings; the system prompt (kilobytes of
/// prose) only by its size.
impl std::fmt::Debug for ChatSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatSettings")
            .field("tiers", &self.tiers)
            .field("models", &self.models)
            .field("default_model", &self.default_model)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("max_tokens_cap", &self.max_tokens_cap)
            .field("history_budget_tokens", &self.history_budget_tokens)
            .field("system_prompt_bytes", &self.system_prompt.len())
            .finish()
    }
}

/// The AWS resources a chat request uses, named by the environment.
#[derive(Debug, Clone)]
pub struct ChatResources {
    pub chat_table: String,
    pub usage_table: String,
    pub tenants_table: String,
    pub rate_limit_table: String,
    pub events_queue_url: String,
    pub anthropic_api_key_secret: String,
}

impl ChatResources {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            chat_table: env.required("CHAT_TABLE")?,
            usage_table: env.required("USAGE_TABLE")?,
            tenants_table: env.required("TENANTS_TABLE")?,
            rate_limit_table: env.required("RATE_LIMIT_TABLE")?,
            events_queue_url: env.required("EVENTS_QUEUE_URL")?,
            anthropic_api_key_secret: env.required("ANTHROPIC_API_KEY_SECRET")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_prototype_tiers() {
        let settings = ChatSettings::from_env(&Env::default()).unwrap();
        let free = settings.tiers.limits(Tier::Free);
        assert_eq!((free.per_minute, free.per_hour), (10, Some(50)));
        let pro = settings.tiers.limits(Tier::Pro);
        assert_eq!((pro.per_minute, pro.per_hour), (30, Some(300)));
        let enterprise = settings.tiers.limits(Tier::Enterprise);
        assert_eq!((enterprise.per_minute, enterprise.per_hour), (60, None));
        assert!(settings.system_prompt.len() > 1000);
    }

    #[test]
    fn tiers_and_models_are_configurable() {
        let env = Env::from_pairs([
            (
                "CHAT_TIERS",
                r#"{"free":{"per_minute":2,"per_hour":3,"monthly_tokens":10},
                    "pro":{"per_minute":30,"per_hour":300,"monthly_tokens":1000},
                    "enterprise":{"per_minute":60,"per_hour":null,"monthly_tokens":5000}}"#,
            ),
            (
                "CHAT_MODELS",
                r#"{"m1":{"input":1,"output":2,"cache_write":1.25,"cache_read":0.1}}"#,
            ),
            ("CHAT_DEFAULT_MODEL", "m1"),
        ]);
        let settings = ChatSettings::from_env(&env).unwrap();
        assert_eq!(settings.tiers.free.per_minute, 2);
        assert_eq!(settings.models.keys().collect::<Vec<_>>(), ["m1"]);
    }

    #[test]
    fn refuses_a_default_model_outside_the_table() {
        let env = Env::from_pairs([("CHAT_DEFAULT_MODEL", "gpt-4")]);
        assert!(matches!(
            ChatSettings::from_env(&env),
            Err(ConfigError::Invalid {
                name: "CHAT_DEFAULT_MODEL",
                ..
            })
        ));
    }

    #[test]
    fn costs_each_kind_of_token_at_its_price() {
        let sonnet = default_models()["claude-sonnet-4-5"];
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 500,
            cache_creation_input_tokens: 2_000,
            cache_read_input_tokens: 10_000,
        };
        // 1000×3 + 500×15 + 2000×3.75 + 10000×0.3 = 21,000 µ$
        assert_eq!(sonnet.cost_usd(&usage), 0.021);
        assert_eq!(sonnet.cache_savings_usd(10_000), 0.027);
        assert_eq!(usage.total(), 13_500);
    }
}
