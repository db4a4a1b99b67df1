//! Counting events exactly once, without transactions.
//!
//! The events queue is FIFO with one message group per tenant, so a
//! tenant's messages reach the rollup in the order of their sequence numbers
//! ([`Seq`]), one delivery at a time, and a message is never followed by a
//! later one before it is acknowledged. Counting rests on that order:
//! - every event id is *claimed* once, by a conditional insert naming the
//!   message that carries it ([`Ledger::claim`]). Only the claim's owner
//!   counts the event: a claim holding this message's own number is its own,
//!   left by an attempt that did not finish; any other owner is a duplicate
//!   (an earlier message counted it, or a later one will).
//! - every counter remembers the last message it holds (`through`), and a
//!   delivery's share is added on condition that the counter holds none of
//!   it ([`Ledger::add`]). A counter an unfinished attempt already wrote
//!   answers with its `through`, and only the later messages' share is added.
//!
//! A counter is a tenant's minute or billing period, holding its total and
//! each feature's, so a delivery writes about two counters per tenant
//! whatever its features. Each event costs one write and each counter one
//! per delivery, at DynamoDB's plain (not transactional) price. The argument in full:
//! docs/data-model.md, "Counting exactly once".

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::period::BillingPeriod;
use super::types::{BillingDay, EventId, Feature, TenantId, UsageEvent};
use super::usage::{MinuteUsage, PeriodUsage, UsageReader};
use crate::store::{Outage, StoreError};

/// A message's sequence number in its tenant's group of the FIFO events
/// queue: the order counting relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u128);

impl Seq {
    /// Fixed width, so the stored form compares as the numbers do (SQS
    /// numbers can pass DynamoDB's 38 digits).
    pub fn key(self) -> String {
        format!("{:040}", self.0)
    }
}

impl std::str::FromStr for Seq {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// A counter the rollup adds tokens and event counts to: its total and
/// each feature's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// A tenant's minute.
    Minute { minute: DateTime<Utc> },
    /// A tenant's billing period.
    Period { period: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub tokens: u64,
    pub events: u64,
}

impl Delta {
    fn add(&mut self, other: Delta) {
        self.tokens += other.tokens;
        self.events += other.events;
    }
}

/// What a counter gets, per feature.
pub type Deltas = BTreeMap<Feature, Delta>;

fn merge(into: &mut Deltas, from: &Deltas) {
    for (feature, delta) in from {
        into.entry(feature.clone()).or_default().add(*delta);
    }
}

fn sum(deltas: &Deltas) -> Delta {
    let mut total = Delta::default();
    deltas.values().for_each(|delta| total.add(*delta));
    total
}

/// What some of a delivery's messages add to one counter, per feature: from
/// the messages `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub features: Deltas,
    pub first: Seq,
    pub last: Seq,
}

impl Share {
    /// What the share adds to the counter's total.
    pub fn total(&self) -> Delta {
        sum(&self.features)
    }
}

/// Who claimed an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Message(Seq),
    /// Counted before claims named their message (a transaction did both).
    Counted,
}

/// An event to claim for the message carrying it.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub tenant: &'a TenantId,
    pub seq: Seq,
    pub event: &'a UsageEvent,
}

/// What a [`Ledger::add`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Added {
    /// Added; the counter's total tokens are now `tokens`.
    Added { write_units: f64, tokens: u64 },
    /// Nothing: the counter already holds every message through this one.
    Holds { through: Seq, write_units: f64 },
}

/// The store behind counting (DynamoDB in production).
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// Claims each event for the message carrying it, unless claimed
    /// already; answers each event's owner (the given one for a new claim)
    /// and the write units spent. Claims of several tenants go together,
    /// so a delivery's claims cost a call per 25, however many tenants.
    async fn claim(&self, claims: &[Claim<'_>]) -> Result<(Vec<Owner>, f64), StoreError>;

    /// Adds `share` to `counter` if it holds no message from `share.first`
    /// on, and marks it as holding every message through `share.last`.
    async fn add(
        &self,
        tenant: &TenantId,
        counter: &Counter,
        share: &Share,
    ) -> Result<Added, StoreError>;
}

fn counters_of(event: &UsageEvent, day: BillingDay) -> [Counter; 2] {
    let period = BillingPeriod::containing(event.timestamp, day).key();
    let minute = event
        .timestamp
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap_or(event.timestamp);
    [Counter::Minute { minute }, Counter::Period { period }]
}

/// One tenant's messages of a delivery: each message's sequence number and
/// events.
pub type Messages = [(Seq, Vec<UsageEvent>)];

/// Each counter's share of a delivery, per message and feature.
type Shares = BTreeMap<Counter, BTreeMap<Seq, Deltas>>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counted {
    /// Events whose owner is in this delivery (counted now, or by an
    /// unfinished attempt of the same messages).
    pub events: u64,
    pub tokens: u64,
    /// Events another message claimed, and repeats within the delivery.
    pub duplicates: u64,
    /// DynamoDB write units spent.
    pub write_units: f64,
    /// Total tokens of the periods this delivery added to, by period key, as
    /// the writes left them (a period whose counter held the delivery
    /// already is not here: read it).
    pub period_tokens: BTreeMap<String, u64>,
}

/// Counts `messages` of `tenant` exactly once. On error, whatever was
/// written stays, and the redelivery of the same messages completes it.
pub async fn count(
    ledger: &dyn Ledger,
    tenant: &TenantId,
    day: BillingDay,
    messages: &Messages,
) -> Result<Counted, StoreError> {
    let work = Work {
        tenant,
        day,
        messages,
    };
    let mut counted = count_all(ledger, &[work]).await?;
    counted.pop().unwrap_or_else(|| {
        Err(StoreError::corrupt(
            "usage table",
            "no count for the tenant",
        ))
    })
}

/// One tenant's share of a delivery, to count.
#[derive(Debug, Clone, Copy)]
pub struct Work<'a> {
    pub tenant: &'a TenantId,
    pub day: BillingDay,
    pub messages: &'a Messages,
}

/// Counts several tenants' messages of one delivery exactly once, as
/// [`count`] does one's: their claims in shared calls (failing all of them
/// on error), then each tenant's counters (failing only that tenant).
pub async fn count_all(
    ledger: &dyn Ledger,
    work: &[Work<'_>],
) -> Result<Vec<Result<Counted, StoreError>>, StoreError> {
    let firsts: Vec<_> = work.iter().map(|w| first_copies(w.messages)).collect();
    let claims: Vec<Claim> = work
        .iter()
        .zip(&firsts)
        .flat_map(|(w, (claims, _))| {
            claims.iter().map(|&(seq, event)| Claim {
                tenant: w.tenant,
                seq,
                event,
            })
        })
        .collect();
    let (owners, units) = ledger.claim(&claims).await?;
    // Every claim costs the same: each tenant is charged its claims' share.
    let per_claim = units / claims.len().max(1) as f64;
    let mut owners = owners.into_iter();
    let tenants = work.iter().zip(&firsts).map(|(w, (claims, copies))| {
        let owners: Vec<Owner> = owners.by_ref().take(claims.len()).collect();
        tally(ledger, w, claims, copies, owners, per_claim)
    });
    Ok(futures_util::future::join_all(tenants).await)
}

/// Adds to its counters what one tenant's claims own.
async fn tally(
    ledger: &dyn Ledger,
    work: &Work<'_>,
    claims: &[(Seq, &UsageEvent)],
    copies: &Copies<'_>,
    owners: Vec<Owner>,
    per_claim: f64,
) -> Result<Counted, StoreError> {
    let (tenant, day) = (work.tenant, work.day);
    let mut counted = Counted::default();
    let received: usize = work.messages.iter().map(|(_, events)| events.len()).sum();
    counted.duplicates = (received - claims.len()) as u64;
    counted.write_units += per_claim * claims.len() as f64;
    let mut shares = Shares::new();
    for ((_, event), owner) in claims.iter().zip(owners) {
        // The owner's own copy: every attempt counts the same payload.
        let owned = match owner {
            Owner::Message(seq) => copies.get(&(&event.id, seq)).map(|copy| (seq, *copy)),
            Owner::Counted => None,
        };
        let Some((seq, copy)) = owned else {
            counted.duplicates += 1;
            continue;
        };
        counted.events += 1;
        counted.tokens += copy.tokens.get();
        let delta = Delta {
            tokens: copy.tokens.get(),
            events: 1,
        };
        for counter in counters_of(copy, day) {
            shares
                .entry(counter)
                .or_default()
                .entry(seq)
                .or_default()
                .entry(copy.feature.clone())
                .or_default()
                .add(delta);
        }
    }
    let adds = shares
        .iter()
        .map(|(counter, by_message)| add_share(ledger, tenant, counter, by_message));
    let added = futures_util::future::join_all(adds).await;
    for (counter, result) in shares.keys().zip(added) {
        let (units, tokens) = result?;
        counted.write_units += units;
        if let (Counter::Period { period }, Some(tokens)) = (counter, tokens) {
            counted.period_tokens.insert(period.clone(), tokens);
        }
    }
    Ok(counted)
}

/// Every copy of each event, by (id, message).
type Copies<'a> = HashMap<(&'a EventId, Seq), &'a UsageEvent>;

/// Each event id's first copy in sequence order (the one claimed), and
/// every copy.
fn first_copies(messages: &Messages) -> (Vec<(Seq, &UsageEvent)>, Copies<'_>) {
    let mut ordered: Vec<&(Seq, Vec<UsageEvent>)> = messages.iter().collect();
    ordered.sort_by_key(|(seq, _)| *seq);
    let mut claims = Vec::new();
    let mut copies = HashMap::new();
    let mut claimed = std::collections::HashSet::new();
    for (seq, events) in ordered {
        for event in events {
            copies.entry((&event.id, *seq)).or_insert(event);
            if claimed.insert(&event.id) {
                claims.push((*seq, event));
            }
        }
    }
    (claims, copies)
}

/// Adds one counter's share, skipping the messages it already holds.
/// Returns the write units spent, and the counter's total tokens if this
/// added to it.
async fn add_share(
    ledger: &dyn Ledger,
    tenant: &TenantId,
    counter: &Counter,
    by_message: &BTreeMap<Seq, Deltas>,
) -> Result<(f64, Option<u64>), StoreError> {
    let mut units = 0.0;
    let mut after = Bound::Unbounded;
    loop {
        let mut pending = by_message.range((after, Bound::Unbounded));
        let Some((&first, features)) = pending.next() else {
            return Ok((units, None));
        };
        let mut share = Share {
            features: features.clone(),
            first,
            last: first,
        };
        for (&seq, features) in pending {
            merge(&mut share.features, features);
            share.last = seq;
        }
        match ledger.add(tenant, counter, &share).await? {
            Added::Added {
                write_units,
                tokens,
            } => return Ok((units + write_units, Some(tokens))),
            // `through >= first`, so each turn leaves fewer messages.
            Added::Holds {
                through,
                write_units,
            } => {
                units += write_units;
                after = Bound::Excluded(through);
            }
        }
    }
}

/// Each counter's features and the last message it holds.
type Totals = BTreeMap<(TenantId, Counter), (Deltas, Option<Seq>)>;

/// A ledger in memory with DynamoDB's conditional writes (a write unit
/// each): the double for handler tests. It answers usage reads from what it
/// counted; `outage` makes every call fail.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    claims: Mutex<HashMap<(TenantId, String), Seq>>,
    totals: Mutex<Totals>,
    pub outage: Outage,
}

impl MemoryLedger {
    /// What `tenant` has on `counter`, per feature.
    pub fn features(&self, tenant: &TenantId, counter: &Counter) -> Deltas {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals
            .get(&(tenant.clone(), counter.clone()))
            .map(|(features, _)| features.clone())
            .unwrap_or_default()
    }

    /// What `tenant` has on `counter` in all.
    pub fn total(&self, tenant: &TenantId, counter: &Counter) -> Delta {
        sum(&self.features(tenant, counter))
    }
}

#[async_trait::async_trait]
impl Ledger for MemoryLedger {
    async fn claim(&self, claims: &[Claim<'_>]) -> Result<(Vec<Owner>, f64), StoreError> {
        self.outage.check("usage table")?;
        let mut stored = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let owners = claims
            .iter()
            .map(|claim| {
                let key = (claim.tenant.clone(), claim.event.id.to_string());
                Owner::Message(*stored.entry(key).or_insert(claim.seq))
            })
            .collect();
        Ok((owners, claims.len() as f64))
    }

    async fn add(
        &self,
        tenant: &TenantId,
        counter: &Counter,
        share: &Share,
    ) -> Result<Added, StoreError> {
        self.outage.check("usage table")?;
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let total = totals.entry((tenant.clone(), counter.clone())).or_default();
        if let Some(through) = total.1.filter(|through| *through >= share.first) {
            return Ok(Added::Holds {
                through,
                write_units: 1.0,
            });
        }
        merge(&mut total.0, &share.features);
        total.1 = Some(share.last);
        Ok(Added::Added {
            write_units: 1.0,
            tokens: sum(&total.0).tokens,
        })
    }
}

/// Any ledger whose counter writes fail after the first `adds`, as a crash
/// mid-delivery would (claims go through); it counts its claim calls. The
/// double for exactly-once tests, over memory or the emulator.
pub struct Crashing<'a> {
    inner: &'a dyn Ledger,
    adds: AtomicUsize,
    pub claim_calls: AtomicUsize,
}

impl<'a> Crashing<'a> {
    pub fn after(inner: &'a dyn Ledger, adds: usize) -> Self {
        Self {
            inner,
            adds: AtomicUsize::new(adds),
            claim_calls: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Ledger for Crashing<'_> {
    async fn claim(&self, claims: &[Claim<'_>]) -> Result<(Vec<Owner>, f64), StoreError> {
        self.claim_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(claims).await
    }

    async fn add(
        &self,
        tenant: &TenantId,
        counter: &Counter,
        share: &Share,
    ) -> Result<Added, StoreError> {
        if self.adds.fetch_sub(1, Ordering::SeqCst) == 0 {
            self.adds.store(0, Ordering::SeqCst);
            return Err(StoreError::corrupt("usage table", "a crash on purpose"));
        }
        self.inner.add(tenant, counter, share).await
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
        let counter = Counter::Period {
            period: period.to_owned(),
        };
        let features = self.features(tenant, &counter);
        let total = sum(&features);
        Ok(PeriodUsage {
            tokens: total.tokens,
            events: total.events,
            features: features
                .iter()
                .map(|(feature, delta)| (feature.to_string(), delta.tokens, delta.events))
                .collect(),
        })
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
            .filter_map(|((t, counter), (features, _))| match counter {
                Counter::Minute { minute } if t == tenant && *minute >= from && *minute < to => {
                    Some(features.iter().map(|(feature, delta)| MinuteUsage {
                        minute: *minute,
                        feature: feature.to_string(),
                        tokens: delta.tokens,
                    }))
                }
                _ => None,
            })
            .flatten()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::types::Tokens;

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

    const AT: &str = "2026-11-22T10:00:00Z";

    fn period(key: &str) -> Counter {
        Counter::Period { period: key.into() }
    }

    fn total(ledger: &MemoryLedger, tenant: &TenantId) -> Delta {
        ledger.total(tenant, &period("2026-11-01"))
    }

    /// Messages `first..`, each of `per_message` one-token events.
    fn messages(first: u128, count: u128, per_message: u128) -> Vec<(Seq, Vec<UsageEvent>)> {
        (first..first + count)
            .map(|m| {
                let events = (0..per_message)
                    .map(|i| event(&format!("m{m}e{i}"), "f", 1, AT))
                    .collect();
                (Seq(m), events)
            })
            .collect()
    }

    #[tokio::test]
    async fn one_write_per_event_and_one_per_counter() {
        let ledger = MemoryLedger::default();
        let tenant = TenantId::generate();
        let delivery = vec![
            (
                Seq(1),
                vec![
                    event("a", "chat", 10, "2026-11-22T10:00:05Z"),
                    event("b", "chat", 20, "2026-11-22T10:00:55Z"),
                ],
            ),
            (
                Seq(2),
                vec![event("c", "search", 5, "2026-11-22T10:01:00Z")],
            ),
        ];
        let counted = count(&ledger, &tenant, day(1), &delivery).await.unwrap();
        // 3 claims + 2 minutes + 1 period, whatever the features.
        assert_eq!(
            counted,
            Counted {
                events: 3,
                tokens: 35,
                duplicates: 0,
                write_units: 6.0,
                period_tokens: BTreeMap::from([("2026-11-01".to_owned(), 35)]),
            }
        );
        assert_eq!(
            total(&ledger, &tenant),
            Delta {
                tokens: 35,
                events: 3
            }
        );
        let minute = Counter::Minute {
            minute: DateTime::parse_from_rfc3339(AT).unwrap().to_utc(),
        };
        let chat = Feature::try_from("chat".to_owned()).unwrap();
        assert_eq!(
            ledger.features(&tenant, &minute),
            Deltas::from([(
                chat,
                Delta {
                    tokens: 30,
                    events: 2
                }
            )])
        );
        let period = ledger.features(&tenant, &period("2026-11-01"));
        assert_eq!(period.len(), 2);
        assert_eq!(period.values().map(|d| d.tokens).sum::<u64>(), 35);
    }

    #[tokio::test]
    async fn events_count_towards_the_period_of_their_own_timestamp() {
        let ledger = MemoryLedger::default();
        let tenant = TenantId::generate();
        let delivery = vec![(
            Seq(1),
            vec![
                event("late", "chat", 7, "2026-11-14T23:59:00Z"),
                event("now", "chat", 3, "2026-11-15T00:00:00Z"),
            ],
        )];
        count(&ledger, &tenant, day(15), &delivery).await.unwrap();
        assert_eq!(ledger.total(&tenant, &period("2026-10-15")).tokens, 7);
        assert_eq!(ledger.total(&tenant, &period("2026-11-15")).tokens, 3);
    }

    #[tokio::test]
    async fn counts_redelivered_and_resent_events_once() {
        let ledger = MemoryLedger::default();
        let tenant = TenantId::generate();
        let first = vec![(
            Seq(1),
            vec![event("a", "f", 10, AT), event("b", "f", 5, AT)],
        )];
        count(&ledger, &tenant, day(1), &first).await.unwrap();
        // SQS hands message 1 over again, with message 2: a client resent "a".
        let second = vec![
            first[0].clone(),
            (
                Seq(2),
                vec![event("a", "f", 10, AT), event("c", "f", 1, AT)],
            ),
        ];
        let counted = count(&ledger, &tenant, day(1), &second).await.unwrap();
        assert_eq!((counted.events, counted.duplicates), (3, 1));
        assert_eq!(
            total(&ledger, &tenant),
            Delta {
                tokens: 16,
                events: 3
            }
        );
    }

    #[tokio::test]
    async fn repeats_within_a_delivery_count_once() {
        let ledger = MemoryLedger::default();
        let tenant = TenantId::generate();
        let delivery = vec![
            (Seq(7), vec![event("a", "f", 1, AT), event("a", "f", 1, AT)]),
            (Seq(9), vec![event("a", "f", 1, AT)]),
        ];
        let counted = count(&ledger, &tenant, day(1), &delivery).await.unwrap();
        assert_eq!((counted.events, counted.duplicates), (1, 2));
        assert_eq!(total(&ledger, &tenant).events, 1);
    }

    #[tokio::test]
    async fn a_crash_mid_delivery_is_completed_by_a_regrouped_redelivery() {
        let ledger = MemoryLedger::default();
        // Five messages of three features, each in its own minute: 6 counters.
        let mut delivery = messages(1, 5, 20);
        for (i, (_, events)) in delivery.iter_mut().enumerate() {
            for e in events.iter_mut() {
                e.feature = Feature::try_from(format!("f{}", i % 3)).unwrap();
                e.timestamp += TimeDelta::minutes(i as i64);
            }
        }
        for crash_after in 0..6 {
            let tenant = TenantId::generate();
            let crashing = Crashing::after(&ledger, crash_after);
            assert!(count(&crashing, &tenant, day(1), &delivery).await.is_err());
            // Redelivered as two deliveries, then all of it once more.
            count(&ledger, &tenant, day(1), &delivery[..2])
                .await
                .unwrap();
            count(&ledger, &tenant, day(1), &delivery[2..])
                .await
                .unwrap();
            count(&ledger, &tenant, day(1), &delivery).await.unwrap();
            assert_eq!(
                total(&ledger, &tenant),
                Delta {
                    tokens: 100,
                    events: 100
                },
                "crash after {crash_after} counters"
            );
            let features = ledger.features(&tenant, &period("2026-11-01"));
            for f in 0..3 {
                let feature = Feature::try_from(format!("f{f}")).unwrap();
                let expected = if f == 2 { 20 } else { 40 };
                assert_eq!(features[&feature].events, expected);
            }
            for i in 0..5 {
                let minute = Counter::Minute {
                    minute: DateTime::parse_from_rfc3339(AT).unwrap().to_utc()
                        + TimeDelta::minutes(i),
                };
                assert_eq!(ledger.total(&tenant, &minute).events, 20);
            }
        }
    }

    #[tokio::test]
    async fn a_deliverys_tenants_claim_together_and_fail_apart() {
        let ledger = MemoryLedger::default();
        let (a, b) = (TenantId::generate(), TenantId::generate());
        // The same event ids: claims are the tenant's own.
        let (of_a, of_b) = (messages(1, 2, 3), messages(1, 1, 3));
        let work = |tenant, messages| Work {
            tenant,
            day: day(1),
            messages,
        };
        // A crash after a's two counters (one minute, one period).
        let crashing = Crashing::after(&ledger, 2);
        let counted = count_all(&crashing, &[work(&a, &of_a), work(&b, &of_b)])
            .await
            .unwrap();
        assert_eq!(crashing.claim_calls.load(Ordering::SeqCst), 1);
        let first = counted[0].as_ref().unwrap();
        assert_eq!((first.events, first.write_units), (6, 8.0));
        assert!(counted[1].is_err());
        assert_eq!(total(&ledger, &a).events, 6);
        assert_eq!(total(&ledger, &b).events, 0);
        // b's messages are redelivered: its claims are its own, counted now.
        let again = count(&ledger, &b, day(1), &of_b).await.unwrap();
        assert_eq!((again.events, again.duplicates), (3, 0));
        assert_eq!(total(&ledger, &b).events, 3);
    }

    #[tokio::test]
    async fn an_event_claimed_by_a_later_message_is_counted_by_that_message() {
        let ledger = MemoryLedger::default();
        let tenant = TenantId::generate();
        // An unfinished attempt claimed "x" for message 3 (a resend of it).
        let x = event("x", "f", 4, AT);
        let claim = Claim {
            tenant: &tenant,
            seq: Seq(3),
            event: &x,
        };
        ledger.claim(&[claim]).await.unwrap();
        let delivery = vec![
            (Seq(1), vec![event("x", "f", 4, AT)]),
            (Seq(2), vec![event("y", "f", 1, AT)]),
        ];
        // Message 3 is not in this delivery: "x" waits for it.
        let counted = count(&ledger, &tenant, day(1), &delivery).await.unwrap();
        assert_eq!((counted.events, counted.duplicates), (1, 1));
        let next = vec![(Seq(3), vec![event("x", "f", 4, AT)])];
        count(&ledger, &tenant, day(1), &next).await.unwrap();
        assert_eq!(
            total(&ledger, &tenant),
            Delta {
                tokens: 5,
                events: 2
            }
        );
    }
}
