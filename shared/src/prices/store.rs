//! Where quotes are kept: the latest per (metal, currency) and its history.
//! DynamoDB in production ([`crate::aws::prices::DynamoPrices`]);
//! [`MemoryPrices`] is the double handler tests use.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

use super::types::{Currency, Metal, Quote};
use crate::store::{Outage, StoreError};

#[async_trait::async_trait]
pub trait PriceStore: Send + Sync {
    /// Writes `quote` as the latest and as a history point keyed by its own
    /// timestamp, so a repeated fetch of the same observation rewrites the
    /// same point (idempotent). The point expires after `retention`.
    async fn record(&self, quote: &Quote, retention: TimeDelta) -> Result<(), StoreError>;

    async fn latest(&self, metal: Metal, currency: &Currency) -> Result<Option<Quote>, StoreError>;

    /// History points in `[from, to]`, oldest first.
    async fn series(
        &self,
        metal: Metal,
        currency: &Currency,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Quote>, StoreError>;
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
    pub outage: Outage,
}

impl MemoryPrices {
    /// When the history point of `quote` expires, if it was recorded.
    pub fn expires_at(&self, quote: &Quote) -> Option<DateTime<Utc>> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history
            .get(&(quote.metal, quote.currency.clone()))?
            .get(&quote.ts)
            .map(|(_, expires)| *expires)
    }
}

#[async_trait::async_trait]
impl PriceStore for MemoryPrices {
    async fn record(&self, quote: &Quote, retention: TimeDelta) -> Result<(), StoreError> {
        self.outage.check("prices table")?;
        let series = (quote.metal, quote.currency.clone());
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(series.clone())
            .or_default()
            .insert(quote.ts, (quote.clone(), quote.ts + retention));
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
}
