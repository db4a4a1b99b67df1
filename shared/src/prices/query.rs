//! What the read API's routes ask for, parsed once from the query string: a
//! [`PriceQuery`] or [`ProxyQuery`] names only things this deployment
//! knows. Unset parameters take the defaults the API documents: the first
//! configured currency, per troy ounce, the last 24 hours, and gold for the
//! proxy.

use std::collections::HashMap;

use chrono::NaiveDate;

use super::PriceError;
use super::candles::{DayRange, WINDOWS};
use super::providers::ProviderId;
use super::settings::PriceSettings;
use super::types::{Currency, HistoryWindow, Metal, WeightUnit};

/// `GET /api/prices?metal=&currency=&unit=&window=` (or `&from=&to=`);
/// without a metal, the latest of every metal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceQuery {
    pub metal: Option<Metal>,
    pub currency: Currency,
    pub unit: WeightUnit,
    pub history: History,
}

/// The history an answer carries: the points of a short window, or the
/// daily candles of a long one or of any `from`/`to` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    Points(HistoryWindow),
    Candles(DayRange),
}

impl History {
    /// `window` (a short or a long one) or `from`/`to`, not both; by
    /// default the last 24 hours.
    fn parse(
        window: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        today: NaiveDate,
    ) -> Result<Self, PriceError> {
        match (window, from, to) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(PriceError::Range(
                "give a window or from/to, not both".into(),
            )),
            (None, None, Some(_)) => Err(PriceError::Range("to needs a from".into())),
            (None, Some(from), to) => Ok(Self::Candles(DayRange::range(from, to, today)?)),
            (Some(window), None, None) => match DayRange::window(window, today) {
                Some(days) => Ok(Self::Candles(days)),
                None => HistoryWindow::parse(window)
                    .map(Self::Points)
                    .map_err(|mut e| {
                        for (name, _) in WINDOWS {
                            e.allowed = format!("{}, {name}", e.allowed);
                        }
                        e.into()
                    }),
            },
            (None, None, None) => Ok(Self::Points(HistoryWindow::Day)),
        }
    }

    fn key(&self) -> String {
        match self {
            Self::Points(window) => window.name().to_owned(),
            Self::Candles(days) => format!("{}..{}", days.from, days.to),
        }
    }
}

impl PriceQuery {
    /// Checks metal, currency, unit and the history asked for, in that
    /// order; long windows end `today`.
    pub fn parse(
        params: &HashMap<String, String>,
        settings: &PriceSettings,
        today: NaiveDate,
    ) -> Result<Self, PriceError> {
        let param = |name: &str| params.get(name).map(String::as_str);
        Ok(Self {
            metal: param("metal").map(Metal::parse).transpose()?,
            currency: settings.currency(param("currency"))?,
            unit: param("unit").map_or(Ok(WeightUnit::Toz), WeightUnit::parse)?,
            history: History::parse(param("window"), param("from"), param("to"), today)?,
        })
    }

    /// What its answer is remembered under.
    pub fn key(&self) -> String {
        format!(
            "{:?}|{}|{}|{}",
            self.metal,
            self.currency,
            self.unit.name(),
            self.history.key()
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

    fn today() -> NaiveDate {
        "2026-12-05".parse().unwrap()
    }

    fn unknown(result: Result<impl std::fmt::Debug, PriceError>) -> &'static str {
        match result {
            Err(PriceError::Invalid(unknown)) => unknown.what,
            other => panic!("expected an unknown parameter, got {other:?}"),
        }
    }

    #[test]
    fn defaults_to_every_metal_in_the_first_currency_per_ounce_over_a_day() {
        let query = PriceQuery::parse(&params(&[]), &settings(), today()).unwrap();
        assert_eq!(
            query,
            PriceQuery {
                metal: None,
                currency: Currency::usd(),
                unit: WeightUnit::Toz,
                history: History::Points(HistoryWindow::Day),
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
            today(),
        )
        .unwrap();
        assert_eq!(query.metal, Some(Metal::Silver));
        assert_eq!(query.currency.as_str(), "EUR");
        assert_eq!(
            (query.unit, query.history),
            (WeightUnit::Kg, History::Points(HistoryWindow::Week))
        );
        assert_eq!(query.key(), "Some(Silver)|EUR|kg|7d");
    }

    #[test]
    fn names_the_first_unknown_parameter() {
        let s = settings();
        let parse = |pairs: &[(&str, &str)]| PriceQuery::parse(&params(pairs), &s, today());
        assert_eq!(unknown(parse(&[("metal", "tin"), ("unit", "lb")])), "metal");
        assert_eq!(unknown(parse(&[("currency", "GBP")])), "currency");
        assert_eq!(unknown(parse(&[("unit", "lb")])), "unit");
        let Err(PriceError::Invalid(window)) = parse(&[("window", "2y")]) else {
            panic!("2y is no window");
        };
        assert_eq!(window.allowed, "1h, 24h, 7d, 30d, 1y, 5y");
    }

    #[test]
    fn long_windows_and_ranges_ask_for_daily_candles() {
        let s = settings();
        let parse = |pairs: &[(&str, &str)]| PriceQuery::parse(&params(pairs), &s, today());
        let Ok(PriceQuery {
            history: History::Candles(year),
            ..
        }) = parse(&[("window", "5y")])
        else {
            panic!("5y is candles");
        };
        assert_eq!((year.window, year.to), (Some("5y"), today()));
        let range = parse(&[("from", "2026-01-01"), ("to", "2026-03-31")]).unwrap();
        assert_eq!(range.key(), "None|USD|toz|2026-01-01..2026-03-31");
        for bad in [
            &[("window", "1y"), ("from", "2026-01-01")][..],
            &[("to", "2026-01-01")],
            &[("from", "yesterday")],
        ] {
            assert!(matches!(parse(bad), Err(PriceError::Range(_))), "{bad:?}");
        }
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
