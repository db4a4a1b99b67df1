//! The price vocabulary: metals, currencies, weight units, history windows
//! and quotes. Each parses from what clients send and says which values are
//! allowed when it cannot, so a 400 can list them.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// Grams in one troy ounce, exactly.
pub const GRAMS_PER_TROY_OUNCE: f64 = 31.103_476_8;

/// Why a value was rejected, with the values that would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; allowed: {allowed}")]
pub struct Unknown {
    pub what: &'static str,
    pub value: String,
    pub allowed: String,
}

/// The member of `all` that `matches`, or an error listing every name.
pub(super) fn find<T: Copy>(
    what: &'static str,
    value: &str,
    all: &[T],
    name: fn(T) -> &'static str,
    matches: impl Fn(T) -> bool,
) -> Result<T, Unknown> {
    all.iter()
        .copied()
        .find(|t| matches(*t))
        .ok_or_else(|| Unknown {
            what,
            value: value.to_owned(),
            allowed: all.iter().map(|t| name(*t)).collect::<Vec<_>>().join(", "),
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metal {
    Gold,
    Silver,
    Platinum,
    Palladium,
}

impl Metal {
    pub const ALL: [Metal; 4] = [
        Metal::Gold,
        Metal::Silver,
        Metal::Platinum,
        Metal::Palladium,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metal::Gold => "gold",
            Metal::Silver => "silver",
            Metal::Platinum => "platinum",
            Metal::Palladium => "palladium",
        }
    }

    /// ISO 4217 code, as the providers name metals.
    pub fn symbol(self) -> &'static str {
        match self {
            Metal::Gold => "XAU",
            Metal::Silver => "XAG",
            Metal::Platinum => "XPT",
            Metal::Palladium => "XPD",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Unknown> {
        find("metal", value, &Self::ALL, Metal::name, |m| {
            m.name().eq_ignore_ascii_case(value) || m.symbol().eq_ignore_ascii_case(value)
        })
    }
}

impl fmt::Display for Metal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An ISO 4217 currency code (three uppercase letters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn usd() -> Self {
        Self("USD".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let upper = value.trim().to_ascii_uppercase();
        if upper.len() == 3 && upper.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(upper))
        } else {
            Err(format!("{value:?} is not a three-letter currency code"))
        }
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> String {
        value.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The weight a price is quoted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightUnit {
    Toz,
    G,
    Kg,
}

impl WeightUnit {
    pub const ALL: [WeightUnit; 3] = [WeightUnit::Toz, WeightUnit::G, WeightUnit::Kg];

    pub fn name(self) -> &'static str {
        match self {
            WeightUnit::Toz => "toz",
            WeightUnit::G => "g",
            WeightUnit::Kg => "kg",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Unknown> {
        find("unit", value, &Self::ALL, WeightUnit::name, |u| {
            u.name() == value
        })
    }

    /// A per-troy-ounce price in this unit.
    pub fn from_troy_ounce(self, price: f64) -> f64 {
        match self {
            WeightUnit::Toz => price,
            WeightUnit::G => price / GRAMS_PER_TROY_OUNCE,
            WeightUnit::Kg => price / GRAMS_PER_TROY_OUNCE * 1000.0,
        }
    }
}

/// How far back a price series reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryWindow {
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
    #[serde(rename = "30d")]
    Month,
}

impl HistoryWindow {
    pub const ALL: [HistoryWindow; 4] = [
        HistoryWindow::Hour,
        HistoryWindow::Day,
        HistoryWindow::Week,
        HistoryWindow::Month,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HistoryWindow::Hour => "1h",
            HistoryWindow::Day => "24h",
            HistoryWindow::Week => "7d",
            HistoryWindow::Month => "30d",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Unknown> {
        find("window", value, &Self::ALL, HistoryWindow::name, |w| {
            w.name() == value
        })
    }

    pub fn span(self) -> TimeDelta {
        match self {
            HistoryWindow::Hour => TimeDelta::hours(1),
            HistoryWindow::Day => TimeDelta::hours(24),
            HistoryWindow::Week => TimeDelta::days(7),
            HistoryWindow::Month => TimeDelta::days(30),
        }
    }
}

/// One price from one provider, normalised to a troy ounce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    pub metal: Metal,
    pub currency: Currency,
    /// Per troy ounce.
    pub price: f64,
    pub bid: Option<f64>,
    pub ask: Option<f64>,
    pub provider: String,
    /// When the provider says the price was observed.
    pub ts: DateTime<Utc>,
    /// The exchange rate the price was converted from US dollars with, when
    /// it was (`None`: quoted in its currency directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fx: Option<Fx>,
}

/// An exchange rate: `rate` units of a currency per US dollar, from
/// `source`, as of `ts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fx {
    pub rate: f64,
    pub source: String,
    pub ts: DateTime<Utc>,
}

impl Fx {
    /// `usd` dollars in the rate's currency, multiplied in decimal and
    /// rounded half to even to the dollar price's own decimal places (at
    /// least 2): exact to the provider's precision, where floating point
    /// would add digits of its own. `None` if either is not a finite number.
    pub fn convert(&self, usd: f64) -> Option<f64> {
        use rust_decimal::prelude::ToPrimitive;
        let decimal = |v: f64| v.to_string().parse::<rust_decimal::Decimal>().ok();
        let (price, rate) = (decimal(usd)?, decimal(self.rate)?);
        let places = price.scale().max(2);
        price.checked_mul(rate)?.round_dp(places).to_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(rate: f64) -> Fx {
        Fx {
            rate,
            source: "test".into(),
            ts: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn conversion_is_decimal_to_the_dollar_prices_precision() {
        // 2650.12 × 0.9213 = 2441.555556: two places, as the dollar price.
        assert_eq!(fx(0.9213).convert(2650.12), Some(2441.56));
        // Floating point says 0.30000000000000004.
        assert_eq!(fx(3.0).convert(0.1), Some(0.3));
        // Finer dollar prices keep their places; half goes to even.
        assert_eq!(fx(151.5).convert(31.0512), Some(4704.2568));
        assert_eq!(fx(0.5).convert(0.05), Some(0.02));
        assert_eq!(fx(f64::NAN).convert(1.0), None);
    }

    #[test]
    fn metals_parse_by_name_or_symbol_and_name_the_allowed_values() {
        assert_eq!(Metal::parse("gold"), Ok(Metal::Gold));
        assert_eq!(Metal::parse("XAG"), Ok(Metal::Silver));
        let err = Metal::parse("tin").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown metal \"tin\"; allowed: gold, silver, platinum, palladium"
        );
    }

    #[test]
    fn currencies_are_three_letter_codes() {
        assert_eq!(
            Currency::try_from("eur".to_owned()).unwrap().as_str(),
            "EUR"
        );
        assert!(Currency::try_from("EURO".to_owned()).is_err());
        assert!(Currency::try_from("U$D".to_owned()).is_err());
    }

    #[test]
    fn one_troy_ounce_is_31_1034768_grams() {
        let per_toz = 3110.34768;
        assert!((WeightUnit::G.from_troy_ounce(per_toz) - 100.0).abs() < 1e-9);
        assert!((WeightUnit::Kg.from_troy_ounce(per_toz) - 100_000.0).abs() < 1e-6);
        assert_eq!(WeightUnit::Toz.from_troy_ounce(per_toz), per_toz);
        assert!(WeightUnit::parse("lb").is_err());
    }

    #[test]
    fn windows_parse_and_span() {
        assert_eq!(
            HistoryWindow::parse("7d").map(HistoryWindow::span),
            Ok(TimeDelta::days(7))
        );
        assert_eq!(
            HistoryWindow::parse("1y").unwrap_err().allowed,
            "1h, 24h, 7d, 30d"
        );
    }
}
