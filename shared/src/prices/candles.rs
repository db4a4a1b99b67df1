//! Daily candles: each (metal, currency)'s open, high, low and close per UTC
//! day, folded from every quote as it is recorded and kept beyond the
//! points' retention, so a year or five (or any `from`/`to`) answers from one
//! stored item a day.
//!
//! Folding is order-free and idempotent: the open is the earliest quote's
//! price, the close the latest's, so a late or repeated quote (a live fetch
//! racing the schedule, a retried run) lands where it belongs.

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::PriceError;
use super::types::Quote;

/// At most this many days in one `from`/`to` answer (ten years).
pub const MAX_DAYS: u64 = 3_660;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candle {
    pub day: NaiveDate,
    /// Per troy ounce.
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    /// When the opening and closing quotes were observed.
    pub open_ts: DateTime<Utc>,
    pub close_ts: DateTime<Utc>,
}

impl Candle {
    /// The candle of `quote`'s day with it alone.
    pub fn of(quote: &Quote) -> Self {
        Self {
            day: quote.ts.date_naive(),
            open: quote.price,
            high: quote.price,
            low: quote.price,
            close: quote.price,
            open_ts: quote.ts,
            close_ts: quote.ts,
        }
    }

    /// Folds in `quote`, of the same day.
    pub fn fold(&mut self, quote: &Quote) {
        if quote.ts < self.open_ts {
            (self.open, self.open_ts) = (quote.price, quote.ts);
        }
        if quote.ts > self.close_ts {
            (self.close, self.close_ts) = (quote.price, quote.ts);
        }
        self.high = self.high.max(quote.price);
        self.low = self.low.min(quote.price);
    }
}

/// Which days a long history covers: a named window ending today, or any
/// `from`/`to` range of days (both included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// `1y` or `5y` when named.
    pub window: Option<&'static str>,
}

/// The long windows: their names and lengths in days.
pub const WINDOWS: [(&str, u64); 2] = [("1y", 365), ("5y", 1_826)];

impl DayRange {
    /// The named long `window` up to `today`, if it is one.
    pub fn window(window: &str, today: NaiveDate) -> Option<Self> {
        let &(name, days) = WINDOWS.iter().find(|(name, _)| *name == window)?;
        Some(Self {
            from: today.checked_sub_days(Days::new(days - 1))?,
            to: today,
            window: Some(name),
        })
    }

    /// `from` (required) to `to` (default `today`), each a date
    /// (`2026-01-31`) or an RFC 3339 time (its UTC day).
    pub fn range(from: &str, to: Option<&str>, today: NaiveDate) -> Result<Self, PriceError> {
        let day = |name: &str, value: &str| {
            value
                .parse::<NaiveDate>()
                .ok()
                .or_else(|| {
                    DateTime::parse_from_rfc3339(value)
                        .ok()
                        .map(|t| t.to_utc().date_naive())
                })
                .ok_or_else(|| {
                    PriceError::Range(format!(
                        "{name} {value:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"
                    ))
                })
        };
        let from = day("from", from)?;
        let to = to.map_or(Ok(today), |to| day("to", to))?;
        if from > to {
            return Err(PriceError::Range(format!("from {from} is after to {to}")));
        }
        if (to - from) >= TimeDelta::days(MAX_DAYS as i64) {
            return Err(PriceError::Range(format!(
                "at most {MAX_DAYS} days at once"
            )));
        }
        Ok(Self {
            from,
            to,
            window: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prices::types::{Currency, Metal};

    fn quote(price: f64, at: &str) -> Quote {
        Quote {
            metal: Metal::Gold,
            currency: Currency::usd(),
            price,
            bid: None,
            ask: None,
            provider: "test".into(),
            ts: at.parse().unwrap(),
            fx: None,
        }
    }

    #[test]
    fn folding_is_order_free_and_idempotent() {
        let quotes = [
            quote(2650.0, "2026-12-04T09:00:00Z"),
            quote(2671.5, "2026-12-04T12:00:00Z"),
            quote(2640.25, "2026-12-04T15:00:00Z"),
            quote(2655.0, "2026-12-04T23:55:00Z"),
        ];
        let mut forward = Candle::of(&quotes[0]);
        quotes[1..].iter().for_each(|q| forward.fold(q));
        let mut backward = Candle::of(&quotes[3]);
        quotes
            .iter()
            .rev()
            .chain(&quotes)
            .for_each(|q| backward.fold(q));
        assert_eq!(forward, backward);
        assert_eq!(
            (forward.open, forward.high, forward.low, forward.close),
            (2650.0, 2671.5, 2640.25, 2655.0)
        );
        assert_eq!(forward.day.to_string(), "2026-12-04");
    }

    #[test]
    fn long_windows_and_ranges_name_their_days() {
        let today: NaiveDate = "2026-12-05".parse().unwrap();
        let year = DayRange::window("1y", today).unwrap();
        assert_eq!(
            (year.from.to_string(), year.to),
            ("2025-12-06".into(), today)
        );
        assert_eq!(DayRange::window("30d", today), None);
        let range = DayRange::range("2026-01-01", Some("2026-01-31T23:00:00+02:00"), today);
        let range = range.unwrap();
        assert_eq!(
            (range.from.to_string(), range.to.to_string()),
            ("2026-01-01".into(), "2026-01-31".into())
        );
        assert_eq!(
            DayRange::range("2026-12-01", None, today).unwrap().to,
            today
        );
        for (from, to) in [
            ("2026-13-01", None),
            ("2026-02-01", Some("2026-01-01")),
            ("2000-01-01", None),
        ] {
            assert!(
                matches!(DayRange::range(from, to, today), Err(PriceError::Range(_))),
                "{from}"
            );
        }
    }
}
