//! The JSON the read API answers with, in one place so the cached answers
//! and the proxy agree. Prices are converted to the asked unit and rounded
//! to six decimals; `age_seconds` is counted from `now`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::alerts::PriceAlert;
use super::candles::{Candle, DayRange};
use super::service::{Latest, PricePoint};
use super::types::{Currency, HistoryWindow, WeightUnit};

fn round(price: f64) -> f64 {
    (price * 1e6).round() / 1e6
}

/// One metal's latest quote: `{metal, currency, unit, latest, age_seconds, stale}`.
pub fn latest(latest: &Latest, unit: WeightUnit, now: DateTime<Utc>) -> Value {
    let quote = &latest.quote;
    let convert = |p: Option<f64>| p.map(|p| round(unit.from_troy_ounce(p)));
    json!({
        "metal": quote.metal,
        "currency": quote.currency,
        "unit": unit.name(),
        "latest": {
            "ts": quote.ts,
            "price": round(unit.from_troy_ounce(quote.price)),
            "bid": convert(quote.bid),
            "ask": convert(quote.ask),
            "provider": quote.provider,
            "fx": quote.fx,
        },
        "age_seconds": (now - quote.ts).num_seconds().max(0),
        "stale": latest.stale,
    })
}

/// One metal's latest quote and its series over `window`.
pub fn with_series(
    latest: &Latest,
    series: &[PricePoint],
    unit: WeightUnit,
    window: HistoryWindow,
    now: DateTime<Utc>,
) -> Value {
    let points: Vec<Value> = series
        .iter()
        .map(|p| json!({"ts": p.ts, "price": round(unit.from_troy_ounce(p.price))}))
        .collect();
    let mut body = self::latest(latest, unit, now);
    body["window"] = json!(window.name());
    body["count"] = json!(points.len());
    body["series"] = json!(points);
    body
}

/// One metal's latest quote and the daily candles of `days`.
pub fn with_candles(
    latest: &Latest,
    candles: &[Candle],
    unit: WeightUnit,
    days: &DayRange,
    now: DateTime<Utc>,
) -> Value {
    let price = |p: f64| round(unit.from_troy_ounce(p));
    let candles: Vec<Value> = candles
        .iter()
        .map(|c| {
            json!({"day": c.day, "open": price(c.open), "high": price(c.high),
                   "low": price(c.low), "close": price(c.close)})
        })
        .collect();
    let mut body = self::latest(latest, unit, now);
    body["window"] = json!(days.window);
    body["from"] = json!(days.from);
    body["to"] = json!(days.to);
    body["count"] = json!(candles.len());
    body["candles"] = json!(candles);
    body
}

/// A price alert as its owner sees it.
pub fn alert(alert: &PriceAlert) -> Value {
    json!({
        "id": alert.id,
        "metal": alert.metal,
        "currency": alert.currency,
        "unit": alert.unit.name(),
        "direction": alert.direction,
        "price": alert.price,
        "webhook": alert.webhook,
        "armed": alert.armed,
        "fired": alert.fired,
        "created_at": alert.created_at,
    })
}

/// The latest quote of every metal: `{currency, unit, prices: [...]}`.
pub fn every_metal(
    currency: &Currency,
    unit: WeightUnit,
    prices: &[Latest],
    now: DateTime<Utc>,
) -> Value {
    let all: Vec<Value> = prices.iter().map(|l| latest(l, unit, now)).collect();
    json!({"currency": currency, "unit": unit.name(), "prices": all})
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::prices::types::{Metal, Quote};

    #[test]
    fn prices_are_converted_rounded_and_aged() {
        let now = Utc::now();
        let latest = Latest {
            quote: Quote {
                metal: Metal::Gold,
                currency: Currency::usd(),
                price: 3110.34768,
                bid: Some(3110.0),
                ask: None,
                provider: "seed".into(),
                ts: now - TimeDelta::seconds(90),
                fx: None,
            },
            stale: true,
        };
        let body = super::latest(&latest, WeightUnit::G, now);
        assert_eq!(body["latest"]["price"], 100.0);
        assert_eq!(body["latest"]["bid"], 99.988822);
        assert_eq!(body["latest"]["ask"], Value::Null);
        assert_eq!(
            (body["age_seconds"].as_i64(), body["stale"].as_bool()),
            (Some(90), Some(true))
        );
        assert_eq!(body["unit"], "g");
    }
}
