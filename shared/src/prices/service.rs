//! The read API's rules: the cache chain for latest prices, the series, the
//! proxy's live quote and the providers' state.
//!
//! The chain: this instance's memory ([`AnswerCache`], TTL and single
//! flight), then the latest in the store (written by `price-fetch`), then a
//! live failover round when that is missing or stale, whose quote is
//! written back with the configured retention. If the round finds nothing,
//! a stale stored price is still served (marked `stale`); with none at all
//! the answer is [`PriceError::AllProvidersFailed`]. A store that cannot be
//! read counts as empty for the latest (the providers may still answer),
//! but not for a series.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::cache::{AnswerCache, Rendered};
use super::failover::{BreakerState, Failover};
use super::providers::{Provider, ProviderError, ProviderId, ProviderKeys};
use super::query::{History, PriceQuery, ProxyQuery};
use super::settings::PriceSettings;
use super::store::PriceStore;
use super::types::{Currency, HistoryWindow, Metal, Quote};
use super::upstream::QuoteSource;
use super::{PriceEdges, PriceError, view};
use crate::clock::Clock;
use crate::ratelimit::{Decision, RateLimiter};

/// Series longer than this are averaged down to it.
pub const MAX_POINTS: usize = 500;

/// How the read API caches and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPolicy {
    /// How long this instance reuses a rendered answer.
    pub memory_ttl: Duration,
    /// A stored latest older than this is refreshed live.
    pub stale_after: TimeDelta,
    /// Live quotes per client per minute through the proxy.
    pub proxy_limit: u32,
}

/// A latest quote and whether it is stale (older than
/// [`ReadPolicy::stale_after`] and no provider had a newer one).
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub quote: Quote,
    pub stale: bool,
}

/// One point of a series: the mean of its bucket per troy ounce, at the
/// bucket's last time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PricePoint {
    pub ts: DateTime<Utc>,
    pub price: f64,
}

/// `quotes` (oldest first) in at most `max_points` equal buckets, each
/// averaged.
pub fn downsample(quotes: &[Quote], max_points: usize) -> Vec<PricePoint> {
    let per_bucket = quotes.len().div_ceil(max_points.max(1)).max(1);
    quotes
        .chunks(per_bucket)
        .map(|bucket| PricePoint {
            ts: bucket[bucket.len() - 1].ts,
            price: bucket.iter().map(|q| q.price).sum::<f64>() / bucket.len() as f64,
        })
        .collect()
}

/// A provider as `/api/config` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderStatus {
    pub id: ProviderId,
    pub configured: bool,
    /// `None` when the breaker store cannot say.
    pub circuit: Option<BreakerState>,
}

pub struct PriceService {
    settings: PriceSettings,
    policy: ReadPolicy,
    store: Arc<dyn PriceStore>,
    quotes: Arc<dyn QuoteSource>,
    clock: Arc<dyn Clock>,
    failover: Failover,
    keys: ProviderKeys,
    limiter: RateLimiter,
    answers: AnswerCache,
}

impl PriceService {
    pub fn new(
        settings: PriceSettings,
        policy: ReadPolicy,
        edges: PriceEdges,
        limiter: RateLimiter,
        keys_secret: &str,
    ) -> Self {
        Self {
            failover: Failover::new(
                Arc::clone(&edges.quotes),
                edges.breakers,
                Arc::clone(&edges.clock),
                settings.policy,
            ),
            keys: ProviderKeys::new(edges.secrets, keys_secret, settings.providers.clone()),
            answers: AnswerCache::new(policy.memory_ttl, Arc::clone(&edges.clock)),
            store: edges.store,
            quotes: edges.quotes,
            clock: edges.clock,
            settings,
            policy,
            limiter,
        }
    }

    /// The answer to `GET /api/prices`, through the cache chain.
    pub async fn answer(&self, query: &PriceQuery) -> Result<Arc<Rendered>, PriceError> {
        self.answers
            .get_or_fill(&query.key(), self.render(query))
            .await
    }

    async fn render(&self, query: &PriceQuery) -> Result<Rendered, PriceError> {
        let body = match query.metal {
            Some(metal) => {
                let latest = self.latest(metal, &query.currency).await?;
                let now = self.clock.now();
                match query.history {
                    History::Points(window) => {
                        let series = self.series(metal, &query.currency, window).await?;
                        view::with_series(&latest, &series, query.unit, window, now)
                    }
                    History::Candles(days) => {
                        let candles = self
                            .store
                            .candles(metal, &query.currency, days.from, days.to)
                            .await?;
                        view::with_candles(&latest, &candles, query.unit, &days, now)
                    }
                }
            }
            None => {
                let mut all = Vec::with_capacity(self.settings.metals.len());
                for metal in &self.settings.metals {
                    all.push(self.latest(*metal, &query.currency).await?);
                }
                view::every_metal(&query.currency, query.unit, &all, self.clock.now())
            }
        };
        Ok(Rendered::new(body.to_string()))
    }

    /// The latest quote from the store, else (missing or stale) from a live
    /// round, which is also written back.
    pub async fn latest(&self, metal: Metal, currency: &Currency) -> Result<Latest, PriceError> {
        let stored = self
            .store
            .latest(metal, currency)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "prices table unavailable; trying the providers");
                None
            });
        if let Some(quote) = &stored
            && self.clock.now() - quote.ts <= self.policy.stale_after
        {
            return Ok(Latest {
                quote: quote.clone(),
                stale: false,
            });
        }
        let last = stored.iter().map(|q| (metal, q.price)).collect();
        let providers = self.keys.providers().await?;
        let round = self
            .failover
            .round(&providers, &[metal], currency, &last)
            .await?;
        if let Some(quote) = round.accepted.get(&metal) {
            if let Err(error) = self.store.record(quote, &self.settings.keeping).await {
                tracing::warn!(%error, "could not store a live quote");
            }
            return Ok(Latest {
                quote: quote.clone(),
                stale: false,
            });
        }
        match stored {
            Some(quote) => Ok(Latest { quote, stale: true }),
            None => Err(PriceError::AllProvidersFailed(round.failures())),
        }
    }

    /// The series of `window` up to now, averaged down to [`MAX_POINTS`].
    pub async fn series(
        &self,
        metal: Metal,
        currency: &Currency,
        window: HistoryWindow,
    ) -> Result<Vec<PricePoint>, PriceError> {
        let now = self.clock.now();
        let quotes = self
            .store
            .series(metal, currency, now - window.span(), now)
            .await?;
        Ok(downsample(&quotes, MAX_POINTS))
    }

    /// The proxy: counts one request of `client` against its per-minute
    /// limit (bad requests too), then asks the one provider named for a
    /// live quote. The limit fails open (`None`: a limiter outage does not
    /// take the API down); the decision comes back for the headers.
    pub async fn proxy(
        &self,
        client: &str,
        provider: &str,
        params: &HashMap<String, String>,
    ) -> Result<(Latest, Option<Decision>), PriceError> {
        let subject = format!("proxy#{client}");
        let limit = self.policy.proxy_limit;
        let now = self.clock.now();
        let decision = match self
            .limiter
            .hit(&subject, limit, TimeDelta::minutes(1), now)
            .await
        {
            Ok(decision) if !decision.allowed => {
                return Err(PriceError::RateLimited { decision, at: now });
            }
            Ok(decision) => Some(decision),
            Err(error) => {
                tracing::warn!(%error, "rate-limit store unavailable; allowing the request");
                None
            }
        };
        let query = ProxyQuery::parse(provider, params, &self.settings)?;
        let quote = self.live_quote(&query).await?;
        Ok((
            Latest {
                quote,
                stale: false,
            },
            decision,
        ))
    }

    /// A live quote from the one provider asked, past breakers and the
    /// outlier guard (the proxy shows what the provider says).
    async fn live_quote(&self, query: &ProxyQuery) -> Result<Quote, PriceError> {
        let id = query.provider;
        let provider = self
            .keys
            .providers()
            .await?
            .into_iter()
            .find(|p| p.id == id)
            .filter(Provider::is_configured)
            .ok_or(PriceError::NotConfigured(id))?;
        let failed = |error| PriceError::Provider {
            provider: id,
            error,
        };
        let quotes = self
            .quotes
            .fetch(&provider, &[query.metal], &query.currency)
            .await
            .map_err(failed)?;
        quotes
            .into_iter()
            .find(|q| q.metal == query.metal)
            .ok_or_else(|| failed(ProviderError::Invalid("no quote".into())))
    }

    /// Every configured provider in priority order, with its breaker.
    pub async fn provider_status(&self) -> Result<Vec<ProviderStatus>, PriceError> {
        let mut listed = Vec::new();
        for provider in self.keys.providers().await? {
            listed.push(ProviderStatus {
                id: provider.id,
                configured: provider.is_configured(),
                circuit: self.failover.circuit(provider.id).await.ok(),
            });
        }
        Ok(listed)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::future::join_all;

    use super::*;
    use crate::config::Env;
    use crate::prices::MemoryEdges;
    use crate::prices::types::{Currency, WeightUnit};
    use crate::prices::upstream::MemoryQuotes;
    use crate::ratelimit::MemoryCounter;

    struct World {
        doubles: MemoryEdges,
        service: PriceService,
    }

    /// Only gold-api.com (keyless), answering after 20 ms; history kept 30 days.
    fn world() -> World {
        let env = Env::from_pairs([
            ("PROVIDER_ORDER", "gold-api.com"),
            ("HISTORY_RETENTION_DAYS", "30"),
        ]);
        let settings = PriceSettings::from_env(&env).unwrap();
        let mut doubles = MemoryEdges::new("keys", "{}");
        let quotes = MemoryQuotes::at(doubles.clock.now()).with_delay(Duration::from_millis(20));
        quotes.quote(ProviderId::GoldApiCom, 2650.0);
        doubles.quotes = Arc::new(quotes);
        let policy = ReadPolicy {
            memory_ttl: Duration::from_secs(60),
            stale_after: TimeDelta::minutes(10),
            proxy_limit: 120,
        };
        let limiter = RateLimiter::new(Arc::new(MemoryCounter::default()));
        World {
            service: PriceService::new(settings, policy, doubles.edges(), limiter, "keys"),
            doubles,
        }
    }

    fn gold() -> PriceQuery {
        PriceQuery {
            metal: Some(Metal::Gold),
            currency: Currency::usd(),
            unit: WeightUnit::Toz,
            history: History::Points(HistoryWindow::Day),
        }
    }

    #[tokio::test]
    async fn concurrent_misses_fetch_upstream_once() {
        let w = world();
        let query = gold();
        let answers = join_all((0..10).map(|_| w.service.answer(&query))).await;
        assert_eq!(w.doubles.quotes.calls(ProviderId::GoldApiCom), 1);
        let first = answers[0].as_ref().unwrap();
        assert!(answers.iter().all(|a| a.as_ref().unwrap() == first));
    }

    #[tokio::test]
    async fn a_live_quote_is_written_back_with_the_configured_retention() {
        let w = world();
        let latest = w
            .service
            .latest(Metal::Gold, &Currency::usd())
            .await
            .unwrap();
        assert!(!latest.stale);
        assert_eq!(
            w.doubles.store.expires_at(&latest.quote),
            Some(latest.quote.ts + TimeDelta::days(30))
        );
    }

    #[tokio::test]
    async fn a_stored_quote_is_fresh_until_stale_after_has_passed() {
        let w = &world();
        let usd = &Currency::usd();
        let fetches_after = |wait: TimeDelta| async move {
            w.doubles.clock.advance(wait);
            w.service.latest(Metal::Gold, usd).await.unwrap();
            w.doubles.quotes.calls(ProviderId::GoldApiCom)
        };
        assert_eq!(
            fetches_after(TimeDelta::zero()).await,
            1,
            "missing: fetched"
        );
        assert_eq!(
            fetches_after(TimeDelta::minutes(10)).await,
            1,
            "still fresh"
        );
        assert_eq!(
            fetches_after(TimeDelta::seconds(1)).await,
            2,
            "stale: refreshed"
        );
    }

    #[test]
    fn downsampling_averages_equal_buckets_to_at_most_max_points() {
        let start = Utc::now();
        let quotes: Vec<Quote> = (0..7)
            .map(|i| Quote {
                metal: Metal::Gold,
                currency: Currency::usd(),
                price: f64::from(i),
                bid: None,
                ask: None,
                provider: "p".into(),
                ts: start + TimeDelta::minutes(i.into()),
                fx: None,
            })
            .collect();
        let points = downsample(&quotes, 3);
        assert_eq!(
            points.iter().map(|p| p.price).collect::<Vec<_>>(),
            [1.0, 4.0, 6.0]
        );
        assert_eq!(
            points[0].ts, quotes[2].ts,
            "a bucket is dated by its last point"
        );
        assert_eq!(downsample(&quotes, 500).len(), 7);
        assert!(downsample(&[], 500).is_empty());
    }
}
