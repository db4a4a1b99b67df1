//! Counting events exactly once.
//!
//! Events of one tenant are cut into chunks that fit one DynamoDB transaction
//! (≤ 100 items): a dedup record per event, written only if absent, plus the
//! counters the chunk adds to, pre-aggregated so that a thousand events of one
//! feature in one minute cost one counter update. Either the whole chunk
//! commits or none of it does; when the transaction is cancelled because some
//! dedup records already exist, those events are duplicates: they are dropped
//! and the rest is retried. Redelivery, client retries and a crash between
//! chunks therefore all count each event id once.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::period::BillingPeriod;
use super::types::{BillingDay, Feature, TenantId, UsageEvent};
use super::usage::{MinuteUsage, PeriodUsage, UsageReader};
use crate::store::{Outage, StoreError};

/// DynamoDB's limit on items per `TransactWriteItems`.
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// A counter the rollup adds tokens and event counts to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Per (feature, minute).
    Minute {
        minute: DateTime<Utc>,
        feature: Feature,
    },
    /// The tenant's total for a billing period.
    Period { period: String },
    /// The tenant's total for a billing period and one feature.
    PeriodFeature { period: String, feature: Feature },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub tokens: u64,
    pub events: u64,
}

/// Events and the counter deltas they add, committed as one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk<'a> {
    pub events: Vec<&'a UsageEvent>,
    pub counters: BTreeMap<Counter, Delta>,
}

impl<'a> Chunk<'a> {
    fn new(events: Vec<&'a UsageEvent>, day: BillingDay) -> Self {
        let mut counters = BTreeMap::new();
        for event in &events {
            for counter in counters_of(event, day) {
                let delta: &mut Delta = counters.entry(counter).or_default();
                delta.tokens += event.tokens.get();
                delta.events += 1;
            }
        }
        Self { events, counters }
    }

    pub fn items(&self) -> usize {
        self.events.len() + self.counters.len()
    }
}

fn counters_of(event: &UsageEvent, day: BillingDay) -> [Counter; 3] {
    let period = BillingPeriod::containing(event.timestamp, day).key();
    let minute = event
        .timestamp
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap_or(event.timestamp);
    [
        Counter::Minute {
            minute,
            feature: event.feature.clone(),
        },
        Counter::PeriodFeature {
            period: period.clone(),
            feature: event.feature.clone(),
        },
        Counter::Period { period },
    ]
}

/// Drops repeats of an event id within one delivery (a client retry that
/// landed in the same SQS batch), keeping the first.
pub fn unique_by_id(events: Vec<UsageEvent>) -> Vec<UsageEvent> {
    let mut seen = HashSet::new();
    events
        .into_iter()
        .filter(|e| seen.insert(e.id.clone()))
        .collect()
}

/// Cuts `events` (unique ids) into transactions of at most
/// [`MAX_TRANSACTION_ITEMS`] items.
pub fn chunks(events: &[UsageEvent], day: BillingDay) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut current: Vec<&UsageEvent> = Vec::new();
    let mut keys: HashSet<Counter> = HashSet::new();
    for event in events {
        let new_keys: Vec<Counter> = counters_of(event, day)
            .into_iter()
            .filter(|c| !keys.contains(c))
            .collect();
        if current.len() + 1 + keys.len() + new_keys.len() > MAX_TRANSACTION_ITEMS {
            chunks.push(Chunk::new(std::mem::take(&mut current), day));
            keys.clear();
            keys.extend(counters_of(event, day));
        } else {
            keys.extend(new_keys);
        }
        current.push(event);
    }
    if !current.is_empty() {
        chunks.push(Chunk::new(current, day));
    }
    chunks
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    Committed,
    /// Cancelled: these indices of `chunk.events` were already counted.
    Duplicates(Vec<usize>),
}

/// The store behind counting (DynamoDB in production).
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// Commits the chunk's dedup records and counter deltas atomically, or
    /// names the events that were already counted.
    async fn commit(&self, tenant: &TenantId, chunk: &Chunk<'_>) -> Result<Commit, StoreError>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub events: u64,
    pub tokens: u64,
    pub duplicates: u64,
    /// Items written by committed transactions (each costs 2 write units).
    pub items_written: u64,
}

/// Counts `events` of `tenant` exactly once. On error, the chunks already
/// committed stay committed (and are recognised as duplicates on retry).
pub async fn count(
    ledger: &dyn Ledger,
    tenant: &TenantId,
    day: BillingDay,
    events: &[UsageEvent],
) -> Result<Counted, StoreError> {
    let mut counted = Counted::default();
    for chunk in chunks(events, day) {
        let mut chunk = chunk;
        loop {
            match ledger.commit(tenant, &chunk).await? {
                Commit::Committed => {
                    counted.items_written += chunk.items() as u64;
                    counted.events += chunk.events.len() as u64;
                    counted.tokens += chunk.events.iter().map(|e| e.tokens.get()).sum::<u64>();
                    break;
                }
                Commit::Duplicates(indices) => {
                    counted.duplicates += indices.len() as u64;
                    let remaining: Vec<&UsageEvent> = chunk
                        .events
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !indices.contains(i))
                        .map(|(_, e)| *e)
                        .collect();
                    // A cancellation that names no duplicate would loop forever.
                    if remaining.is_empty() || indices.is_empty() {
                        break;
                    }
                    chunk = Chunk::new(remaining, day);
                }
            }
        }
    }
    Ok(counted)
}

/// A ledger in memory with DynamoDB's transaction semantics (a chunk
/// commits whole or reports its duplicates): the double for handler tests.
/// It answers usage reads from what it counted; `outage` makes every call fail.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    seen: Mutex<HashSet<(TenantId, String)>>,
    totals: Mutex<BTreeMap<(TenantId, Counter), Delta>>,
    pub outage: Outage,
}

impl MemoryLedger {
    /// What `tenant` has on `counter`.
    pub fn total(&self, tenant: &TenantId, counter: &Counter) -> Delta {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals
            .get(&(tenant.clone(), counter.clone()))
            .copied()
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Ledger for MemoryLedger {
    async fn commit(&self, tenant: &TenantId, chunk: &Chunk<'_>) -> Result<Commit, StoreError> {
        self.outage.check("usage table")?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = |e: &UsageEvent| (tenant.clone(), e.id.to_string());
        let duplicates: Vec<usize> = chunk
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| seen.contains(&key(e)))
            .map(|(i, _)| i)
            .collect();
        if !duplicates.is_empty() {
            return Ok(Commit::Duplicates(duplicates));
        }
        seen.extend(chunk.events.iter().map(|e| key(e)));
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        for (counter, delta) in &chunk.counters {
            let total = totals.entry((tenant.clone(), counter.clone())).or_default();
            total.tokens += delta.tokens;
            total.events += delta.events;
        }
        Ok(Commit::Committed)
    }
}

#[async_trait::async_trait]
impl UsageReader for MemoryLedger {
    async fn period_total(&self, tenant: &TenantId, period: &str) -> Result<u64, StoreError> {
        self.outage.check("usage table")?;
        let counter = Counter::Period {
            period: period.to_owned(),
        };
        Ok(self.total(tenant, &counter).tokens)
    }

    async fn period_usage(
        &self,
        tenant: &TenantId,
        period: &str,
    ) -> Result<PeriodUsage, StoreError> {
        self.outage.check("usage table")?;
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut usage = PeriodUsage::default();
        for ((t, counter), delta) in totals.iter().filter(|((t, _), _)| t == tenant) {
            match counter {
                Counter::Period { period: p } if p == period => {
                    (usage.tokens, usage.events) = (delta.tokens, delta.events);
                }
                Counter::PeriodFeature { period: p, feature } if p == period && t == tenant => {
                    usage
                        .features
                        .push((feature.to_string(), delta.tokens, delta.events));
                }
                _ => {}
            }
        }
        Ok(usage)
    }

    async fn minutes(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MinuteUsage>, StoreError> {
        self.outage.check("usage table")?;
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        Ok(totals
            .iter()
            .filter_map(|((t, counter), delta)| match counter {
                Counter::Minute { minute, feature }
                    if t == tenant && *minute >= from && *minute < to =>
                {
                    Some(MinuteUsage {
                        minute: *minute,
                        feature: feature.to_string(),
                        tokens: delta.tokens,
                    })
                }
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::types::{EventId, Tokens};

    fn event(id: &str, feature: &str, tokens: u64, at: &str) -> UsageEvent {
        UsageEvent {
            id: EventId::try_from(id.to_owned()).unwrap(),
            feature: Feature::try_from(feature.to_owned()).unwrap(),
            tokens: Tokens::try_from(tokens).unwrap(),
            timestamp: DateTime::parse_from_rfc3339(at).unwrap().to_utc(),
            properties: Default::default(),
        }
    }

    fn day(d: u8) -> BillingDay {
        BillingDay::try_from(d).unwrap()
    }

    #[test]
    fn pre_aggregates_counters_within_a_chunk() {
        let events = vec![
            event("a", "chat", 10, "2026-11-22T10:00:05Z"),
            event("b", "chat", 20, "2026-11-22T10:00:55Z"),
            event("c", "search", 5, "2026-11-22T10:01:00Z"),
        ];
        let chunks = chunks(&events, day(1));
        assert_eq!(chunks.len(), 1);
        let c = &chunks[0].counters;
        assert_eq!(
            c[&Counter::Period {
                period: "2026-11-01".into()
            }],
            Delta {
                tokens: 35,
                events: 3
            }
        );
        let minute = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            c[&Counter::Minute {
                minute,
                feature: Feature::try_from("chat".to_owned()).unwrap()
            }],
            Delta {
                tokens: 30,
                events: 2
            }
        );
        // 3 dedup records + 2 minute + 2 period-feature + 1 period counters.
        assert_eq!(chunks[0].items(), 8);
    }

    #[test]
    fn events_count_towards_the_period_of_their_own_timestamp() {
        let events = vec![
            event("late", "chat", 7, "2026-11-14T23:59:00Z"),
            event("now", "chat", 3, "2026-11-15T00:00:00Z"),
        ];
        let c = &chunks(&events, day(15))[0].counters;
        assert_eq!(
            c[&Counter::Period {
                period: "2026-10-15".into()
            }]
                .tokens,
            7
        );
        assert_eq!(
            c[&Counter::Period {
                period: "2026-11-15".into()
            }]
                .tokens,
            3
        );
    }

    #[test]
    fn chunks_never_exceed_the_transaction_limit() {
        // Every event in its own minute: 1 dedup + 2 new counters each.
        let events: Vec<UsageEvent> = (0..1000)
            .map(|i| {
                let at = DateTime::parse_from_rfc3339("2026-11-22T00:00:00Z")
                    .unwrap()
                    .to_utc()
                    + TimeDelta::minutes(i);
                event(&format!("e{i}"), "f", 1, &at.to_rfc3339())
            })
            .collect();
        let chunks = chunks(&events, day(1));
        assert!(chunks.iter().all(|c| c.items() <= MAX_TRANSACTION_ITEMS));
        assert_eq!(chunks.iter().map(|c| c.events.len()).sum::<usize>(), 1000);
        let (_, full) = chunks.split_last().unwrap();
        assert!(
            full.iter().all(|c| c.items() >= MAX_TRANSACTION_ITEMS - 3),
            "chunks are filled"
        );
    }

    #[test]
    fn same_minute_events_share_counters_so_chunks_hold_97_events() {
        let events: Vec<UsageEvent> = (0..200)
            .map(|i| event(&format!("e{i}"), "f", 1, "2026-11-22T10:00:00Z"))
            .collect();
        let sizes: Vec<usize> = chunks(&events, day(1))
            .iter()
            .map(|c| c.events.len())
            .collect();
        assert_eq!(sizes, [97, 97, 6]);
    }

    #[test]
    fn repeats_within_a_delivery_are_dropped() {
        let events = unique_by_id(vec![
            event("a", "f", 1, "2026-11-22T10:00:00Z"),
            event("a", "f", 1, "2026-11-22T10:00:00Z"),
            event("b", "f", 1, "2026-11-22T10:00:00Z"),
        ]);
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn counts_redelivered_event_once() {
        let ledger = MemoryLedger::default();
        let tenant = TenantId::generate();
        let first = vec![
            event("a", "f", 10, "2026-11-22T10:00:00Z"),
            event("b", "f", 5, "2026-11-22T10:00:00Z"),
        ];
        let counted = count(&ledger, &tenant, day(1), &first).await.unwrap();
        assert_eq!(
            counted,
            Counted {
                events: 2,
                tokens: 15,
                duplicates: 0,
                // 2 dedup records + minute, period-feature and period counters.
                items_written: 5,
            }
        );

        // Redelivery of "a" together with a new event: only "c" counts.
        let second = vec![
            event("a", "f", 10, "2026-11-22T10:00:00Z"),
            event("c", "f", 1, "2026-11-22T10:00:00Z"),
        ];
        let counted = count(&ledger, &tenant, day(1), &second).await.unwrap();
        assert_eq!(
            counted,
            Counted {
                events: 1,
                tokens: 1,
                duplicates: 1,
                items_written: 4,
            }
        );

        assert_eq!(
            ledger.total(
                &tenant,
                &Counter::Period {
                    period: "2026-11-01".into()
                }
            ),
            Delta {
                tokens: 16,
                events: 3
            }
        );
    }
}
