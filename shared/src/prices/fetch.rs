//! The scheduled fetch: for every configured currency (at once), one
//! failover round over every metal (breakers and outlier guard, see [`super::failover`]),
//! each accepted quote written as the latest and a history point.
//!
//! The last stored price of each metal is what the outlier guard compares
//! against. A run that writes nothing is a failure
//! ([`FetchRun::require_quotes`]), so the function's error alarm counts it,
//! but only after its attempts have been reported.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::failover::{Attempt, Failover, Round};
use super::providers::{Provider, ProviderKeys};
use super::settings::PriceSettings;
use super::store::PriceStore;
use super::types::{Currency, Quote};
use super::{PriceEdges, PriceError};

pub struct PriceFetcher {
    settings: PriceSettings,
    store: Arc<dyn PriceStore>,
    failover: Failover,
    keys: ProviderKeys,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FetchRun {
    /// One round per currency, in configured order.
    pub rounds: Vec<Round>,
    /// Every quote written.
    pub written: Vec<Quote>,
}

impl FetchRun {
    pub fn attempts(&self) -> impl Iterator<Item = &Attempt> {
        self.rounds.iter().flat_map(|r| &r.attempts)
    }

    /// Quotes held back as outliers, unconfirmed.
    pub fn rejected_outliers(&self) -> usize {
        self.rounds.iter().map(|r| r.rejected.len()).sum()
    }

    /// The run, unless it wrote nothing: then why every provider failed.
    pub fn require_quotes(self) -> Result<Self, PriceError> {
        if !self.written.is_empty() {
            return Ok(self);
        }
        let failures = self
            .rounds
            .iter()
            .flat_map(Round::failed_attempts)
            .collect();
        let error = PriceError::AllProvidersFailed(failures);
        tracing::error!(%error, "nothing written");
        Err(error)
    }
}

impl PriceFetcher {
    pub fn new(settings: PriceSettings, edges: PriceEdges, keys_secret: &str) -> Self {
        Self {
            failover: Failover::new(edges.quotes, edges.breakers, edges.clock, settings.policy),
            keys: ProviderKeys::new(edges.secrets, keys_secret, settings.providers.clone()),
            store: edges.store,
            settings,
        }
    }

    /// One scheduled run: a round per currency, all at once (so a run with
    /// every provider timing out still ends within one round's worst case).
    /// Fails early only when the keys or the store cannot be read;
    /// providers failing is in the [`FetchRun`].
    pub async fn run(&self) -> Result<FetchRun, PriceError> {
        let providers = self.keys.providers().await?;
        let rounds = futures_util::future::join_all(
            self.settings
                .currencies
                .iter()
                .map(|currency| self.round(&providers, currency)),
        )
        .await;
        let mut run = FetchRun::default();
        for round in rounds {
            let round = round?;
            run.written.extend(round.accepted.values().cloned());
            run.rounds.push(round);
        }
        Ok(run)
    }

    /// One currency's failover round over every metal, its accepted quotes
    /// written.
    async fn round(
        &self,
        providers: &[Provider],
        currency: &Currency,
    ) -> Result<Round, PriceError> {
        let settings = &self.settings;
        let mut last = BTreeMap::new();
        for metal in &settings.metals {
            if let Some(q) = self.store.latest(*metal, currency).await? {
                last.insert(*metal, q.price);
            }
        }
        let round = self
            .failover
            .round(providers, &settings.metals, currency, &last)
            .await?;
        for (provider, reason) in &round.skipped {
            tracing::info!(provider = provider.name(), %reason, "provider skipped");
        }
        for quote in &round.rejected {
            tracing::warn!(metal = %quote.metal, currency = %quote.currency, provider = quote.provider, price = quote.price, "outlier rejected: no second provider confirmed it");
        }
        for quote in round.accepted.values() {
            self.store.record(quote, &settings.keeping).await?;
        }
        Ok(round)
    }
}
