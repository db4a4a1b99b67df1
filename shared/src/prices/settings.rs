//! Price settings both price functions read: providers in priority order,
//! metals, currencies and the failover policy.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::TimeDelta;

use super::failover::Policy;
use super::providers::{Provider, ProviderId};
use super::types::{Currency, Metal};
use crate::config::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct PriceSettings {
    /// Providers in priority order with their base URLs (`PROVIDER_ORDER`,
    /// default: metals.dev, metalpriceapi, metals-api, goldapi.io, gold-api.com).
    pub providers: Vec<(ProviderId, String)>,
    pub metals: Vec<Metal>,
    /// `CURRENCIES`, comma-separated (default `USD`).
    pub currencies: Vec<Currency>,
    /// `PROVIDER_TIMEOUT_MS`, `BREAKER_FAILURES`, `BREAKER_COOLDOWN_SECONDS`,
    /// `OUTLIER_PERCENT`.
    pub policy: Policy,
}

impl PriceSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let invalid = |name: &'static str, reason: String| ConfigError::Invalid { name, reason };
        let order: Vec<ProviderId> = match env.optional("PROVIDER_ORDER") {
            None => ProviderId::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|p| {
                    ProviderId::parse(p.trim())
                        .ok_or_else(|| invalid("PROVIDER_ORDER", format!("unknown provider {p:?}")))
                })
                .collect::<Result<_, _>>()?,
        };
        let currencies = env
            .optional("CURRENCIES")
            .unwrap_or("USD")
            .split(',')
            .map(|c| Currency::try_from(c.to_owned()).map_err(|e| invalid("CURRENCIES", e)))
            .collect::<Result<_, _>>()?;
        let default = Policy::default();
        Ok(Self {
            providers: order
                .into_iter()
                .map(|p| Ok((p, env.upstream(p.upstream())?)))
                .collect::<Result<_, ConfigError>>()?,
            metals: Metal::ALL.to_vec(),
            currencies,
            policy: Policy {
                timeout: Duration::from_millis(env.parse_or("PROVIDER_TIMEOUT_MS", 3000)?),
                breaker_failures: env.parse_or("BREAKER_FAILURES", default.breaker_failures)?,
                breaker_cooldown: TimeDelta::seconds(
                    env.parse_or("BREAKER_COOLDOWN_SECONDS", 600)?,
                ),
                outlier_percent: env.parse_or("OUTLIER_PERCENT", default.outlier_percent)?,
            },
        })
    }

    /// The providers with their keys, from the provider-keys secret (a JSON
    /// object of provider name → key). Never echoes the secret.
    pub fn with_keys(&self, secret: &str) -> Result<Vec<Provider>, String> {
        let keys: BTreeMap<String, String> = serde_json::from_str(secret).map_err(|_| {
            "the provider-keys secret is not a JSON object of provider → key".to_owned()
        })?;
        Ok(self
            .providers
            .iter()
            .map(|(id, url)| Provider::new(*id, url, keys.get(id.name()).cloned()))
            .collect())
    }

    pub fn currency(&self, value: &str) -> Result<Currency, super::types::Unknown> {
        let allowed = || super::types::Unknown {
            what: "currency",
            value: value.to_owned(),
            allowed: self
                .currencies
                .iter()
                .map(Currency::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let currency = Currency::try_from(value.to_owned()).map_err(|_| allowed())?;
        if self.currencies.contains(&currency) {
            Ok(currency)
        } else {
            Err(allowed())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<PriceSettings, ConfigError> {
        PriceSettings::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn reads_order_currencies_and_policy() {
        let s = settings(&[
            ("PROVIDER_ORDER", "gold-api.com, metals.dev"),
            ("CURRENCIES", "usd,EUR"),
            ("OUTLIER_PERCENT", "2.5"),
        ])
        .unwrap();
        assert_eq!(
            s.providers
                .iter()
                .map(|(p, _)| p.name())
                .collect::<Vec<_>>(),
            ["gold-api.com", "metals.dev"]
        );
        assert_eq!(
            s.currencies
                .iter()
                .map(Currency::as_str)
                .collect::<Vec<_>>(),
            ["USD", "EUR"]
        );
        assert_eq!(s.policy.outlier_percent, 2.5);
        assert!(matches!(
            settings(&[("PROVIDER_ORDER", "kitco")]),
            Err(ConfigError::Invalid {
                name: "PROVIDER_ORDER",
                ..
            })
        ));
    }

    #[test]
    fn only_configured_currencies_are_accepted() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.currency("usd").unwrap().as_str(), "USD");
        assert_eq!(
            s.currency("EUR").unwrap_err().to_string(),
            "unknown currency \"EUR\"; allowed: USD"
        );
    }

    #[test]
    fn keys_come_from_a_json_object_and_bad_secrets_are_not_echoed() {
        let s = settings(&[]).unwrap();
        let providers = s.with_keys(r#"{"metals.dev": "k"}"#).unwrap();
        assert!(providers[0].is_configured());
        assert!(!providers[1].is_configured());
        let err = s.with_keys("sekret-not-json").unwrap_err();
        assert!(!err.contains("sekret"));
    }
}
