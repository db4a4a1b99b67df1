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

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::providers::{Provider, ProviderId};
use super::types::{Currency, Metal, Quote};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
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

    pub fn name(&self, now: DateTime<Utc>) -> &'static str {
        match self.state(now) {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Where breakers are kept (DynamoDB in production).
pub trait BreakerStore {
    type Error: std::error::Error + Send + Sync + 'static;

    fn get(
        &self,
        provider: ProviderId,
    ) -> impl Future<Output = Result<Breaker, Self::Error>> + Send;

    /// Records a failure atomically; opens the breaker (until
    /// `now + cooldown`) when it reaches `threshold` in a row.
    fn failed(
        &self,
        provider: ProviderId,
        threshold: u32,
        open_until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Breaker, Self::Error>> + Send;

    /// Closes the breaker and resets its count.
    fn succeeded(
        &self,
        provider: ProviderId,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What one provider did in a round, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub provider: ProviderId,
    pub outcome: Result<usize, String>,
    pub latency: Duration,
}

/// The result of one round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    pub accepted: BTreeMap<Metal, Quote>,
    /// Quotes held back as outliers, unconfirmed.
    pub rejected: Vec<Quote>,
    pub attempts: Vec<Attempt>,
    pub skipped: Vec<(ProviderId, &'static str)>,
}

fn moved_percent(from: f64, to: f64) -> f64 {
    ((to - from) / from).abs() * 100.0
}

/// Asks providers in order until every metal has an accepted quote.
/// `last` holds the last accepted price per metal (per troy ounce).
pub async fn fetch_round<S: BreakerStore>(
    http: &reqwest::Client,
    providers: &[Provider],
    breakers: &S,
    policy: &Policy,
    metals: &[Metal],
    currency: &Currency,
    last: &BTreeMap<Metal, f64>,
) -> Result<Round, S::Error> {
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
            round.skipped.push((provider.id, "no key"));
            continue;
        }
        let now = Utc::now();
        if breakers.get(provider.id).await?.state(now) == BreakerState::Open {
            round.skipped.push((provider.id, "circuit open"));
            continue;
        }
        let started = std::time::Instant::now();
        let result = provider
            .fetch(http, &wanted, currency, policy.timeout)
            .await;
        let latency = started.elapsed();
        let quotes = match result {
            Ok(quotes) => {
                breakers.succeeded(provider.id).await?;
                round.attempts.push(Attempt {
                    provider: provider.id,
                    outcome: Ok(quotes.len()),
                    latency,
                });
                quotes
            }
            Err(error) => {
                let open_until = now + policy.breaker_cooldown;
                let breaker = breakers
                    .failed(provider.id, policy.breaker_failures, open_until)
                    .await?;
                let error = match (error, breaker.state(now)) {
                    (e, BreakerState::Open) => format!("{e}; circuit opened"),
                    (e, _) => e.to_string(),
                };
                round.attempts.push(Attempt {
                    provider: provider.id,
                    outcome: Err(error),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(open.name(now), "open");
    }

    #[test]
    fn moves_are_measured_in_percent_of_the_previous_price() {
        assert!((moved_percent(100.0, 105.0) - 5.0).abs() < 1e-12);
        assert!((moved_percent(100.0, 95.0) - 5.0).abs() < 1e-12);
    }
}
