//! Where quotes are kept: the latest per (metal, currency), its history
//! points and its daily candles. DynamoDB in production
//! ([`crate::aws::prices::DynamoPrices`]); [`MemoryPrices`] is the double
//! handler tests use.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use super::candles::Candle;
use super::types::{Currency, Metal, Quote};
use crate::store::{Outage, StoreError};

/// How history is kept: one point per `slot` of time (the fetch period),
/// each for `retention`; daily candles for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keeping {
    pub slot: TimeDelta,
    pub retention: TimeDelta,
}

impl Keeping {
    /// The start of the slot `ts` falls in.
    pub fn slot_of(&self, ts: DateTime<Utc>) -> DateTime<Utc> {
        let slot = self.slot.num_milliseconds().max(1);
        let ms = ts.timestamp_millis();
        DateTime::from_timestamp_millis(ms - ms.rem_euclid(slot)).unwrap_or(ts)
    }
}

#[async_trait::async_trait]
pub trait PriceStore: Send + Sync {
    /// Writes `quote` as the latest, as the history point of its slot (a
    /// second quote in the slot, another provider's or a repeat, rewrites
    /// it: one point per slot), expiring after the retention, and folds it
    /// into its day's candle. Idempotent.
    async fn record(&self, quote: &Quote, keeping: &Keeping) -> Result<(), StoreError>;

    async fn latest(&self, metal: Metal, currency: &Currency) -> Result<Option<Quote>, StoreError>;

    /// History points in `[from, to]`, oldest first.
    async fn series(
        &self,
        metal: Metal,
        currency: &Currency,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Quote>, StoreError>;

    /// Daily candles of the days in `[from, to]` that have one, oldest first.
    async fn candles(
        &self,
        metal: Metal,
        currency: &Currency,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<Candle>, StoreError>;
}

type Series = (Metal, Currency);

/// History points by time, each with when it expires.
type Points = BTreeMap<DateTime<Utc>, (Quote, DateTime<Utc>)>;

/// Quotes in memory. During an `outage` every call fails, as with an
/// unreachable table.
#[derive(Debug, Default)]
pub struct MemoryPrices {
    latest: Mutex<HashMap<Series, Quote>>,
    history: Mutex<HashMap<Series, Points>>,
    candles: Mutex<HashMap<Series, BTreeMap<NaiveDate, Candle>>>,
    pub outage: Outage,
}

impl MemoryPrices {
    /// When the history point of `quote` expires, if it was recorded.
    pub fn expires_at(&self, quote: &Quote) -> Option<DateTime<Utc>> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history
            .get(&(quote.metal, quote.currency.clone()))?
            .values()
            .find(|(point, _)| point.ts == quote.ts)
            .map(|(_, expires)| *expires)
    }
}

#[async_trait::async_trait]
impl PriceStore for MemoryPrices {
    async fn record(&self, quote: &Quote, keeping: &Keeping) -> Result<(), StoreError> {
        self.outage.check("prices table")?;
        let series = (quote.metal, quote.currency.clone());
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(series.clone())
            .or_default()
            .insert(
                keeping.slot_of(quote.ts),
                (quote.clone(), quote.ts + keeping.retention),
            );
        self.candles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(series.clone())
            .or_default()
            .entry(quote.ts.date_naive())
            .and_modify(|candle| candle.fold(quote))
            .or_insert_with(|| Candle::of(quote));
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(series, quote.clone());
        Ok(())
    }

    async fn latest(&self, metal: Metal, currency: &Currency) -> Result<Option<Quote>, StoreError> {
        self.outage.check("prices table")?;
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        Ok(latest.get(&(metal, currency.clone())).cloned())
    }

    async fn series(
        &self,
        metal: Metal,
        currency: &Currency,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Quote>, StoreError> {
        self.outage.check("prices table")?;
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        Ok(history
            .get(&(metal, currency.clone()))
            .map(|points| points.range(from..=to).map(|(_, (q, _))| q.clone()))
            .into_iter()
            .flatten()
            .collect())
    }

    async fn candles(
        &self,
        metal: Metal,
        currency: &Currency,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<Candle>, StoreError> {
        self.outage.check("prices table")?;
        let candles = self.candles.lock().unwrap_or_else(|e| e.into_inner());
        Ok(candles
            .get(&(metal, currency.clone()))
            .map(|days| days.range(from..=to).map(|(_, c)| c.clone()))
            .into_iter()
            .flatten()
            .collect())
    }
}
