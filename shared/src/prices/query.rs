//! What the read API's routes ask for, parsed once from the query string: a
//! [`PriceQuery`] or [`ProxyQuery`] names only things this deployment
//! knows. Unset parameters take the defaults the API documents: the first
//! configured currency, per troy ounce, the last 24 hours, and gold for the
//! proxy.

use std::collections::HashMap;

use super::PriceError;
use super::providers::ProviderId;
use super::settings::PriceSettings;
use super::types::{Currency, HistoryWindow, Metal, WeightUnit};

/// `GET /api/prices?metal=&currency=&unit=&window=`; without a metal, the
/// latest of every metal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceQuery {
    pub metal: Option<Metal>,
    pub currency: Currency,
    pub unit: WeightUnit,
    pub window: HistoryWindow,
}

impl PriceQuery {
    /// Checks metal, currency, unit and window, in that order.
    pub fn parse(
        params: &HashMap<String, String>,
        settings: &PriceSettings,
    ) -> Result<Self, PriceError> {
        let param = |name: &str| params.get(name).map(String::as_str);
        Ok(Self {
            metal: param("metal").map(Metal::parse).transpose()?,
            currency: settings.currency(param("currency"))?,
            unit: param("unit").map_or(Ok(WeightUnit::Toz), WeightUnit::parse)?,
            window: param("window").map_or(Ok(HistoryWindow::Day), HistoryWindow::parse)?,
        })
    }

    /// What its answer is remembered under.
    pub fn key(&self) -> String {
        format!(
            "{:?}|{}|{}|{}",
            self.metal,
            self.currency,
            self.unit.name(),
            self.window.name()
        )
    }
}

/// `GET /api/proxy/{provider}?metal=&currency=`: one live quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyQuery {
    pub provider: ProviderId,
    pub metal: Metal,
    pub currency: Currency,
}

impl ProxyQuery {
    /// Checks provider, metal and currency, in that order.
    pub fn parse(
        provider: &str,
        params: &HashMap<String, String>,
        settings: &PriceSettings,
    ) -> Result<Self, PriceError> {
        let param = |name: &str| params.get(name).map(String::as_str);
        Ok(Self {
            provider: ProviderId::parse(provider)?,
            metal: Metal::parse(param("metal").unwrap_or("gold"))?,
            currency: settings.currency(param("currency"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn settings() -> PriceSettings {
        PriceSettings::from_env(&Env::from_pairs([("CURRENCIES", "USD,EUR")])).unwrap()
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn unknown(result: Result<impl std::fmt::Debug, PriceError>) -> &'static str {
        match result {
            Err(PriceError::Invalid(unknown)) => unknown.what,
            other => panic!("expected an unknown parameter, got {other:?}"),
        }
    }

    #[test]
    fn defaults_to_every_metal_in_the_first_currency_per_ounce_over_a_day() {
        let query = PriceQuery::parse(&params(&[]), &settings()).unwrap();
        assert_eq!(
            query,
            PriceQuery {
                metal: None,
                currency: Currency::usd(),
                unit: WeightUnit::Toz,
                window: HistoryWindow::Day,
            }
        );
    }

    #[test]
    fn reads_every_parameter() {
        let query = PriceQuery::parse(
            &params(&[
                ("metal", "XAG"),
                ("currency", "eur"),
                ("unit", "kg"),
                ("window", "7d"),
            ]),
            &settings(),
        )
        .unwrap();
        assert_eq!(query.metal, Some(Metal::Silver));
        assert_eq!(query.currency.as_str(), "EUR");
        assert_eq!(
            (query.unit, query.window),
            (WeightUnit::Kg, HistoryWindow::Week)
        );
        assert_eq!(query.key(), "Some(Silver)|EUR|kg|7d");
    }

    #[test]
    fn names_the_first_unknown_parameter() {
        let s = settings();
        let parse = |pairs: &[(&str, &str)]| PriceQuery::parse(&params(pairs), &s);
        assert_eq!(unknown(parse(&[("metal", "tin"), ("unit", "lb")])), "metal");
        assert_eq!(unknown(parse(&[("currency", "GBP")])), "currency");
        assert_eq!(unknown(parse(&[("unit", "lb")])), "unit");
        assert_eq!(unknown(parse(&[("window", "1y")])), "window");
    }

    #[test]
    fn the_proxy_quotes_gold_unless_told_otherwise() {
        let s = settings();
        let query = ProxyQuery::parse("gold-api.com", &params(&[]), &s).unwrap();
        assert_eq!(
            (query.provider, query.metal),
            (ProviderId::GoldApiCom, Metal::Gold)
        );
        let bad =
            |p: &str, pairs: &[(&str, &str)]| unknown(ProxyQuery::parse(p, &params(pairs), &s));
        assert_eq!(bad("kitco", &[("metal", "tin")]), "provider");
        assert_eq!(bad("gold-api.com", &[("metal", "tin")]), "metal");
        assert_eq!(bad("gold-api.com", &[("currency", "GBP")]), "currency");
    }
}
