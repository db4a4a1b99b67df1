//! Price settings both price functions read: providers in priority order,
//! metals, currencies, the failover policy and how long history is kept.

use std::time::Duration;

use chrono::TimeDelta;

use super::failover::Policy;
use super::providers::ProviderId;
use super::store::Keeping;
use super::types::{Currency, Metal, Unknown};
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
    /// One history point per fetch period (`FETCH_EVERY_MINUTES`, 5), kept
    /// `HISTORY_RETENTION_DAYS` (400), whoever fetched it.
    pub keeping: Keeping,
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
                        .map_err(|_| invalid("PROVIDER_ORDER", format!("unknown provider {p:?}")))
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
            keeping: Keeping {
                slot: TimeDelta::minutes(env.parse_or("FETCH_EVERY_MINUTES", 5)?),
                retention: TimeDelta::days(env.parse_or("HISTORY_RETENTION_DAYS", 400)?),
            },
        })
    }

    /// The configured currency `value` names; without one, the first
    /// configured.
    pub fn currency(&self, value: Option<&str>) -> Result<Currency, Unknown> {
        let Some(value) = value else {
            return Ok(self.currencies[0].clone());
        };
        let unknown = || Unknown {
            what: "currency",
            value: value.to_owned(),
            allowed: self
                .currencies
                .iter()
                .map(Currency::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        };
        Currency::try_from(value.to_owned())
            .ok()
            .filter(|c| self.currencies.contains(c))
            .ok_or_else(unknown)
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
    fn only_configured_currencies_are_accepted_and_the_first_is_the_default() {
        let s = settings(&[("CURRENCIES", "EUR,USD")]).unwrap();
        assert_eq!(s.currency(Some("usd")).unwrap().as_str(), "USD");
        assert_eq!(s.currency(None).unwrap().as_str(), "EUR");
        assert_eq!(
            s.currency(Some("GBP")).unwrap_err().to_string(),
            "unknown currency \"GBP\"; allowed: EUR, USD"
        );
        assert!(s.currency(Some("pounds")).is_err());
    }

    #[test]
    fn history_is_kept_400_days_unless_configured() {
        assert_eq!(
            settings(&[]).unwrap().keeping.retention,
            TimeDelta::days(400)
        );
        let s = settings(&[("HISTORY_RETENTION_DAYS", "30")]).unwrap();
        assert_eq!(s.keeping.retention, TimeDelta::days(30));
    }
}
