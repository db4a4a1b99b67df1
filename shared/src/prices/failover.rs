//! Choosing prices among providers: priority order, a circuit breaker per
//! provider shared by every instance, and an outlier guard.
//!
//! Providers are asked in priority order until every wanted metal has an
//! accepted quote. A provider that fails N times in a row is skipped for T
//! (its breaker is open); once T has passed one request is let through
//! (half-open): success closes the breaker, failure opens it again. The
//! breaker state lives in a store (DynamoDB), so all instances agree.
//!
//! A quote more than the guard's percentage away from the last accepted
//! price is held back unless a second provider confirms it (within the same
//! percentage); a quote with no previous price to compare is accepted.
//!
//! [`Failover`] is the round over its edges: the providers
//! ([`QuoteSource`]), the breakers ([`BreakerStore`], with the
//! [`MemoryBreakers`] double) and the clock.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::providers::{Provider, ProviderError, ProviderId};
use super::types::{Currency, Metal, Quote};
use super::upstream::QuoteSource;
use crate::clock::Clock;
use crate::store::{Outage, StoreError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Per provider request (the upstream adapter applies it).
    pub timeout: Duration,
    /// Consecutive failures that open a breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips its provider.
    pub breaker_cooldown: TimeDelta,
    /// Largest accepted move from the last accepted price, in percent.
    pub outlier_percent: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            breaker_failures: 3,
            breaker_cooldown: TimeDelta::minutes(10),
            outlier_percent: 5.0,
        }
    }
}

/// A provider's breaker as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breaker {
    pub consecutive_failures: u32,
    pub open_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    /// The cooldown has passed: one trial request decides.
    HalfOpen,
}

impl Breaker {
    pub fn state(&self, now: DateTime<Utc>) -> BreakerState {
        match self.open_until {
            Some(until) if until > now => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
            None => BreakerState::Closed,
        }
    }
}

impl BreakerState {
    /// As `/api/config` shows it.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Where breakers are kept (DynamoDB in production), shared by every
/// instance.
#[async_trait::async_trait]
pub trait BreakerStore: Send + Sync {
    async fn get(&self, provider: ProviderId) -> Result<Breaker, StoreError>;

    /// Records a failure atomically; opens the breaker (until `open_until`)
    /// when it reaches `threshold` in a row.
    async fn failed(
        &self,
        provider: ProviderId,
        threshold: u32,
        open_until: DateTime<Utc>,
    ) -> Result<Breaker, StoreError>;

    /// Closes the breaker and resets its count.
    async fn succeeded(&self, provider: ProviderId) -> Result<(), StoreError>;
}

/// Breakers in memory: the double for handler tests. During an `outage`
/// every call fails, as with an unreachable table.
#[derive(Debug, Default)]
pub struct MemoryBreakers {
    breakers: Mutex<HashMap<ProviderId, Breaker>>,
    pub outage: Outage,
}

impl MemoryBreakers {
    /// Sets `provider`'s breaker as if it had been stored so.
    pub fn set(&self, provider: ProviderId, breaker: Breaker) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers.insert(provider, breaker);
    }

    fn update<T>(&self, provider: ProviderId, change: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        change(breakers.entry(provider).or_default())
    }
}

#[async_trait::async_trait]
impl BreakerStore for MemoryBreakers {
    async fn get(&self, provider: ProviderId) -> Result<Breaker, StoreError> {
        self.outage.check("prices table")?;
        Ok(self.update(provider, |b| *b))
    }

    async fn failed(
        &self,
        provider: ProviderId,
        threshold: u32,
        open_until: DateTime<Utc>,
    ) -> Result<Breaker, StoreError> {
        self.outage.check("prices table")?;
        Ok(self.update(provider, |b| {
            b.consecutive_failures += 1;
            if b.consecutive_failures >= threshold {
                b.open_until = Some(open_until);
            }
            *b
        }))
    }

    async fn succeeded(&self, provider: ProviderId) -> Result<(), StoreError> {
        self.outage.check("prices table")?;
        self.update(provider, |b| *b = Breaker::default());
        Ok(())
    }
}

/// Why a provider was not asked in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NoKey,
    CircuitOpen,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::NoKey => "no key",
            Skip::CircuitOpen => "circuit open",
        })
    }
}

/// What one provider did in a round, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub provider: ProviderId,
    /// How many quotes it gave, or why it gave none.
    pub outcome: Result<usize, ProviderError>,
    /// Whether this failure opened its breaker.
    pub opened_circuit: bool,
    pub latency: Duration,
}

/// Why one provider gave no quote, as logs and problems say it
/// (`metals.dev: answered HTTP 500; circuit opened`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderFailure {
    pub provider: ProviderId,
    pub reason: FailureReason,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FailureReason {
    Skipped(Skip),
    Failed {
        error: ProviderError,
        opened_circuit: bool,
    },
}

impl fmt::Display for ProviderFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.provider.name())?;
        match &self.reason {
            FailureReason::Skipped(skip) => write!(f, "{skip}"),
            FailureReason::Failed {
                error,
                opened_circuit: true,
            } => write!(f, "{error}; circuit opened"),
            FailureReason::Failed { error, .. } => write!(f, "{error}"),
        }
    }
}

/// The result of one round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    pub accepted: BTreeMap<Metal, Quote>,
    /// Quotes held back as outliers, unconfirmed.
    pub rejected: Vec<Quote>,
    pub attempts: Vec<Attempt>,
    pub skipped: Vec<(ProviderId, Skip)>,
}

impl Round {
    /// The providers asked that failed, in the order asked.
    pub fn failed_attempts(&self) -> Vec<ProviderFailure> {
        self.attempts
            .iter()
            .filter_map(|a| {
                let error = a.outcome.as_ref().err()?;
                Some(ProviderFailure {
                    provider: a.provider,
                    reason: FailureReason::Failed {
                        error: error.clone(),
                        opened_circuit: a.opened_circuit,
                    },
                })
            })
            .collect()
    }

    /// Every provider that gave no quote: those that failed, then those
    /// skipped.
    pub fn failures(&self) -> Vec<ProviderFailure> {
        let skipped = self.skipped.iter().map(|(provider, skip)| ProviderFailure {
            provider: *provider,
            reason: FailureReason::Skipped(*skip),
        });
        let mut failures = self.failed_attempts();
        failures.extend(skipped);
        failures
    }
}

fn moved_percent(from: f64, to: f64) -> f64 {
    ((to - from) / from).abs() * 100.0
}

/// Rounds of providers under one policy.
#[derive(Clone)]
pub struct Failover {
    quotes: Arc<dyn QuoteSource>,
    breakers: Arc<dyn BreakerStore>,
    clock: Arc<dyn Clock>,
    policy: Policy,
}

impl Failover {
    pub fn new(
        quotes: Arc<dyn QuoteSource>,
        breakers: Arc<dyn BreakerStore>,
        clock: Arc<dyn Clock>,
        policy: Policy,
    ) -> Self {
        Self {
            quotes,
            breakers,
            clock,
            policy,
        }
    }

    /// The state of `provider`'s breaker now.
    pub async fn circuit(&self, provider: ProviderId) -> Result<BreakerState, StoreError> {
        let breaker = self.breakers.get(provider).await?;
        Ok(breaker.state(self.clock.now()))
    }

    /// Asks `providers` in order until every metal has an accepted quote.
    /// `last` holds the last accepted price per metal (per troy ounce).
    pub async fn round(
        &self,
        providers: &[Provider],
        metals: &[Metal],
        currency: &Currency,
        last: &BTreeMap<Metal, f64>,
    ) -> Result<Round, StoreError> {
        let policy = &self.policy;
        let mut round = Round::default();
        // Outliers waiting for a second opinion.
        let mut suspects: BTreeMap<Metal, Quote> = BTreeMap::new();
        for provider in providers {
            let wanted: Vec<Metal> = metals
                .iter()
                .copied()
                .filter(|m| !round.accepted.contains_key(m))
                .collect();
            if wanted.is_empty() {
                break;
            }
            if !provider.is_configured() {
                round.skipped.push((provider.id, Skip::NoKey));
                continue;
            }
            let now = self.clock.now();
            if self.breakers.get(provider.id).await?.state(now) == BreakerState::Open {
                round.skipped.push((provider.id, Skip::CircuitOpen));
                continue;
            }
            let started = std::time::Instant::now();
            let result = self.quotes.fetch(provider, &wanted, currency).await;
            let latency = started.elapsed();
            let quotes = match result {
                Ok(quotes) => {
                    self.breakers.succeeded(provider.id).await?;
                    round.attempts.push(Attempt {
                        provider: provider.id,
                        outcome: Ok(quotes.len()),
                        opened_circuit: false,
                        latency,
                    });
                    quotes
                }
                Err(error) => {
                    let open_until = now + policy.breaker_cooldown;
                    let breaker = self
                        .breakers
                        .failed(provider.id, policy.breaker_failures, open_until)
                        .await?;
                    round.attempts.push(Attempt {
                        provider: provider.id,
                        outcome: Err(error),
                        opened_circuit: breaker.state(now) == BreakerState::Open,
                        latency,
                    });
                    continue;
                }
            };
            for quote in quotes {
                let metal = quote.metal;
                let confirms = suspects
                    .get(&metal)
                    .is_some_and(|s| moved_percent(s.price, quote.price) <= policy.outlier_percent);
                let in_range = last
                    .get(&metal)
                    .is_none_or(|prev| moved_percent(*prev, quote.price) <= policy.outlier_percent);
                if confirms {
                    // The first provider was right: a second one sees the same move.
                    let suspect = suspects.remove(&metal).expect("checked above");
                    round.accepted.insert(metal, suspect);
                } else if in_range {
                    round.accepted.insert(metal, quote);
                } else if let Some(previous) = suspects.insert(metal, quote) {
                    round.rejected.push(previous);
                }
            }
        }
        round.rejected.extend(suspects.into_values());
        Ok(round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use crate::prices::upstream::MemoryQuotes;

    use ProviderId::{GoldApiCom, MetalPriceApi, MetalsDev};

    struct World {
        quotes: Arc<MemoryQuotes>,
        breakers: Arc<MemoryBreakers>,
        clock: Arc<FixedClock>,
        failover: Failover,
    }

    /// A failover whose breakers open after two failures for a minute.
    fn world() -> World {
        let clock = Arc::new(FixedClock::at(Utc::now()));
        let quotes = Arc::new(MemoryQuotes::at(clock.now()));
        let breakers = Arc::new(MemoryBreakers::default());
        let policy = Policy {
            breaker_failures: 2,
            breaker_cooldown: TimeDelta::minutes(1),
            ..Policy::default()
        };
        let failover = Failover::new(quotes.clone(), breakers.clone(), clock.clone(), policy);
        World {
            quotes,
            breakers,
            clock,
            failover,
        }
    }

    fn keyed(ids: &[ProviderId]) -> Vec<Provider> {
        ids.iter()
            .map(|id| Provider::new(*id, "http://stub", Some("k".into())))
            .collect()
    }

    impl World {
        async fn round(&self, providers: &[Provider], last: &[(Metal, f64)]) -> Round {
            let last = last.iter().copied().collect();
            let metals = [Metal::Gold, Metal::Silver];
            self.failover
                .round(providers, &metals, &Currency::usd(), &last)
                .await
                .unwrap()
        }
    }

    fn providers_of(round: &Round) -> Vec<&str> {
        round
            .accepted
            .values()
            .map(|q| q.provider.as_str())
            .collect()
    }

    #[tokio::test]
    async fn a_failing_provider_fails_over_to_the_next_in_order() {
        let w = world();
        w.quotes.fail(MetalsDev, ProviderError::Status(500));
        w.quotes.quote(MetalPriceApi, 2650.0);
        w.quotes.quote(GoldApiCom, 2651.0);
        let round = w
            .round(&keyed(&[MetalsDev, MetalPriceApi, GoldApiCom]), &[])
            .await;
        assert_eq!(providers_of(&round), ["metalpriceapi", "metalpriceapi"]);
        assert_eq!(w.quotes.calls(GoldApiCom), 0, "every metal was in");
        assert_eq!(
            round
                .failures()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["metals.dev: answered HTTP 500"]
        );
    }

    #[tokio::test]
    async fn a_provider_without_a_key_is_skipped_and_said_so() {
        let w = world();
        w.quotes.quote(GoldApiCom, 2650.0);
        let providers = vec![
            Provider::new(MetalsDev, "http://stub", None),
            Provider::new(GoldApiCom, "http://stub", None),
        ];
        let round = w.round(&providers, &[]).await;
        assert_eq!(w.quotes.calls(MetalsDev), 0);
        assert_eq!(round.skipped, [(MetalsDev, Skip::NoKey)]);
        assert_eq!(round.failures()[0].to_string(), "metals.dev: no key");
        assert!(round.failed_attempts().is_empty());
    }

    #[tokio::test]
    async fn the_breaker_opens_skips_then_lets_one_trial_through() {
        let w = world();
        w.quotes.fail(MetalsDev, ProviderError::Status(500));
        w.quotes.quote(GoldApiCom, 2650.0);
        let providers = keyed(&[MetalsDev, GoldApiCom]);
        w.round(&providers, &[]).await;
        let second = w.round(&providers, &[]).await;
        assert_eq!(
            second.failed_attempts()[0].to_string(),
            "metals.dev: answered HTTP 500; circuit opened"
        );
        let skipped = w.round(&providers, &[]).await;
        assert_eq!(skipped.skipped, [(MetalsDev, Skip::CircuitOpen)]);
        assert_eq!(w.quotes.calls(MetalsDev), 2);

        w.clock.advance(TimeDelta::minutes(1));
        assert_eq!(
            w.failover.circuit(MetalsDev).await.unwrap(),
            BreakerState::HalfOpen
        );
        w.quotes.quote(MetalsDev, 2650.0);
        let trial = w.round(&providers, &[]).await;
        assert_eq!(providers_of(&trial), ["metals.dev", "metals.dev"]);
        assert_eq!(
            w.failover.circuit(MetalsDev).await.unwrap(),
            BreakerState::Closed
        );
    }

    #[tokio::test]
    async fn an_outlier_is_held_back_unless_a_second_provider_confirms_it() {
        let w = world();
        w.quotes.quote(MetalsDev, 2640.0);
        w.quotes.quote(MetalPriceApi, 2010.0);
        let providers = keyed(&[MetalsDev, MetalPriceApi]);
        let round = w.round(&providers, &[(Metal::Gold, 2000.0)]).await;
        assert_eq!(round.accepted[&Metal::Gold].provider, "metalpriceapi");
        assert_eq!(round.accepted[&Metal::Silver].provider, "metals.dev");
        assert_eq!(round.rejected.len(), 1);

        w.quotes.quote(MetalPriceApi, 2645.0);
        let confirmed = w.round(&providers, &[(Metal::Gold, 2000.0)]).await;
        assert_eq!(confirmed.accepted[&Metal::Gold].price, 2640.0);
        assert!(confirmed.rejected.is_empty());
    }

    #[tokio::test]
    async fn a_breaker_store_outage_fails_the_round() {
        let w = world();
        w.breakers.outage.begin();
        let result = w
            .failover
            .round(
                &keyed(&[MetalsDev]),
                &[Metal::Gold],
                &Currency::usd(),
                &BTreeMap::new(),
            )
            .await;
        assert!(matches!(result, Err(StoreError::Unavailable { .. })));
    }

    #[test]
    fn breaker_states_follow_the_cooldown() {
        let now = Utc::now();
        assert_eq!(Breaker::default().state(now), BreakerState::Closed);
        let open = Breaker {
            consecutive_failures: 3,
            open_until: Some(now + TimeDelta::minutes(1)),
        };
        assert_eq!(open.state(now), BreakerState::Open);
        assert_eq!(
            open.state(now + TimeDelta::minutes(2)),
            BreakerState::HalfOpen
        );
        assert_eq!(open.state(now).name(), "open");
    }

    #[test]
    fn moves_are_measured_in_percent_of_the_previous_price() {
        assert!((moved_percent(100.0, 105.0) - 5.0).abs() < 1e-12);
        assert!((moved_percent(100.0, 95.0) - 5.0).abs() < 1e-12);
    }
}
