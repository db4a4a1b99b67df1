//! Spot prices: metals, currencies, units, the five upstream providers, how
//! quotes are chosen among them, and the two things done with them: the
//! scheduled fetch ([`fetch`]) and the read API's cache chain ([`service`]).
//!
//! Every edge is a trait with a memory double next to it, so both price
//! functions are tested without AWS or a network: the quotes
//! ([`store::PriceStore`]), the breakers ([`failover::BreakerStore`]), the
//! providers ([`upstream::QuoteSource`]), the provider-keys secret
//! ([`crate::secrets::SecretSource`]) and the clock. DynamoDB lives in
//! [`crate::aws::prices`].

pub mod alerts;
pub mod cache;
pub mod candles;
pub mod failover;
pub mod fetch;
pub mod providers;
pub mod query;
pub mod service;
pub mod settings;
pub mod store;
pub mod types;
pub mod upstream;
pub mod view;

use std::sync::Arc;

use chrono::Utc;

use self::failover::{BreakerStore, MemoryBreakers, ProviderFailure};
use self::providers::{ProviderError, ProviderId};
use self::store::{MemoryPrices, PriceStore};
use self::types::Unknown;
use self::upstream::{MemoryQuotes, QuoteSource};
use crate::clock::{Clock, FixedClock};
use crate::secrets::{MemorySecrets, SecretError, SecretSource};
use crate::store::StoreError;

/// What the price functions reach outside the process, as traits: AWS, the
/// providers and the system clock in production, memory doubles in tests.
#[derive(Clone)]
pub struct PriceEdges {
    pub store: Arc<dyn PriceStore>,
    pub breakers: Arc<dyn BreakerStore>,
    pub quotes: Arc<dyn QuoteSource>,
    pub secrets: Arc<dyn SecretSource>,
    pub clock: Arc<dyn Clock>,
}

/// Every edge as its memory double, kept by type so a test can steer each
/// one: an empty store, breakers all closed, providers that answer nothing
/// until told, the clock standing at the time it was made.
pub struct MemoryEdges {
    pub store: Arc<MemoryPrices>,
    pub breakers: Arc<MemoryBreakers>,
    pub quotes: Arc<MemoryQuotes>,
    pub secrets: Arc<MemorySecrets>,
    pub clock: Arc<FixedClock>,
}

impl MemoryEdges {
    /// With the provider-keys secret `secret_id` holding `keys`.
    pub fn new(secret_id: &str, keys: &str) -> Self {
        let now = Utc::now();
        Self {
            store: Arc::default(),
            breakers: Arc::default(),
            quotes: Arc::new(MemoryQuotes::at(now)),
            secrets: Arc::new(MemorySecrets::default().with(secret_id, keys)),
            clock: Arc::new(FixedClock::at(now)),
        }
    }

    pub fn edges(&self) -> PriceEdges {
        PriceEdges {
            store: self.store.clone(),
            breakers: self.breakers.clone(),
            quotes: self.quotes.clone(),
            secrets: self.secrets.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// Why a price could not be had. The HTTP layer turns it into a problem
/// once (`From<PriceError> for ApiError` in [`crate::http`]); `price-fetch`
/// reports it as the run's error.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// A parameter names no metal, currency, unit, window or provider we know.
    #[error(transparent)]
    Invalid(#[from] Unknown),
    /// `from`/`to` name no range of days we answer.
    #[error("{0}")]
    Range(String),
    /// A price alert that cannot be (its price, or too many of them).
    #[error("{0}")]
    Alert(String),
    /// No price alert of the caller's by that id.
    #[error("no price alert {0}")]
    NoAlert(String),
    #[error("{} has no API key configured", .0.name())]
    NotConfigured(ProviderId),
    #[error("provider keys: {0}")]
    Keys(#[from] SecretError),
    #[error("provider keys: the provider-keys secret is not a JSON object of provider → key")]
    BadKeys,
    #[error("prices table: {0}")]
    Store(#[from] StoreError),
    /// The one provider asked (the proxy) failed.
    #[error("{}: {error}", provider.name())]
    Provider {
        provider: ProviderId,
        error: ProviderError,
    },
    /// The proxy's per-minute limit is reached.
    #[error("at most {} proxy requests per minute", .decision.limit)]
    RateLimited {
        decision: crate::ratelimit::Decision,
        at: chrono::DateTime<chrono::Utc>,
    },
    /// No provider gave a quote, and there is none stored to fall back on.
    #[error("every provider failed: {}", describe(.0))]
    AllProvidersFailed(Vec<ProviderFailure>),
}

fn describe(failures: &[ProviderFailure]) -> String {
    if failures.is_empty() {
        return "no provider is configured or every circuit is open".to_owned();
    }
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
