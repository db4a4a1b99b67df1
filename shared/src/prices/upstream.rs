//! Asking a provider for quotes: the [`QuoteSource`] edge, its HTTP adapter
//! ([`HttpQuotes`], the providers' real APIs) and [`MemoryQuotes`], the
//! stand-in provider handler tests use.
//!
//! The edge takes a configured [`Provider`] (base URL and key) so failover,
//! breakers and the proxy are tested without a network; what each provider's
//! answer means stays in [`super::providers`]'s parsers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::providers::{
    Provider, ProviderError, ProviderId, parse_inverse_rates, parse_metals_dev, parse_single,
};
use super::types::{Currency, Metal, Quote};

/// Where quotes come from (the providers' HTTP APIs in production).
#[async_trait::async_trait]
pub trait QuoteSource: Send + Sync {
    /// Current prices of `metals` in `currency` from `provider`, per troy
    /// ounce, one quote per metal.
    async fn fetch(
        &self,
        provider: &Provider,
        metals: &[Metal],
        currency: &Currency,
    ) -> Result<Vec<Quote>, ProviderError>;
}

/// The providers' HTTP APIs, each request bounded by `timeout`.
#[derive(Debug, Clone)]
pub struct HttpQuotes {
    http: reqwest::Client,
    timeout: Duration,
}

impl HttpQuotes {
    pub fn new(timeout: Duration) -> Self {
        Self {
            http: reqwest::Client::builder()
                .user_agent(concat!("ingot/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            timeout,
        }
    }

    /// The status and body of `GET {provider}{path}`.
    async fn get(&self, provider: &Provider, path: &str) -> Result<(u16, String), ProviderError> {
        let url = format!("{}{path}", provider.base_url);
        let mut request = self.http.get(&url).timeout(self.timeout);
        if provider.id == ProviderId::GoldApiIo {
            request = request.header("x-access-token", provider.key().unwrap_or_default());
        }
        let response = request.send().await.map_err(|e| {
            // Never echo the URL: it carries the key for some providers.
            ProviderError::Transport(if e.is_timeout() {
                "timed out".into()
            } else {
                "could not connect".into()
            })
        })?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|_| ProviderError::Transport("body cut short".into()))?;
        Ok((status, body))
    }
}

#[async_trait::async_trait]
impl QuoteSource for HttpQuotes {
    async fn fetch(
        &self,
        provider: &Provider,
        metals: &[Metal],
        currency: &Currency,
    ) -> Result<Vec<Quote>, ProviderError> {
        let key = match (provider.key(), provider.id.needs_key()) {
            (Some(key), _) => key,
            (None, false) => "",
            (None, true) => return Err(ProviderError::NoKey),
        };
        // The rate-quoting providers answer in dollars plus the currency's
        // rate (see `parse_inverse_rates`).
        let mut symbols: Vec<&str> = metals.iter().map(|m| m.symbol()).collect();
        if currency.as_str() != "USD" {
            symbols.push(currency.as_str());
        }
        let symbols = symbols.join(",");
        let cur = currency.as_str();
        match provider.id {
            ProviderId::MetalsDev => {
                let path = format!("/v1/latest?api_key={key}&currency={cur}&unit=toz");
                let (status, body) = self.get(provider, &path).await?;
                parse_metals_dev(status, &body, metals, currency)
            }
            ProviderId::MetalPriceApi => {
                let path = format!("/v1/latest?api_key={key}&base=USD&currencies={symbols}");
                let (status, body) = self.get(provider, &path).await?;
                parse_inverse_rates(provider.id, status, &body, metals, currency)
            }
            ProviderId::MetalsApi => {
                let path = format!("/api/latest?access_key={key}&base=USD&symbols={symbols}");
                let (status, body) = self.get(provider, &path).await?;
                parse_inverse_rates(provider.id, status, &body, metals, currency)
            }
            ProviderId::GoldApiIo | ProviderId::GoldApiCom => {
                let mut quotes = Vec::with_capacity(metals.len());
                for metal in metals {
                    let path = match provider.id {
                        ProviderId::GoldApiIo => format!("/api/{}/{cur}", metal.symbol()),
                        _ => format!("/price/{}/{cur}", metal.symbol()),
                    };
                    let (status, body) = self.get(provider, &path).await?;
                    quotes.push(parse_single(provider.id, status, &body, *metal, currency)?);
                }
                Ok(quotes)
            }
        }
    }
}

/// Providers in memory: the double for handler tests. A provider told a
/// price quotes every metal at it, observed at the double's time; one told
/// nothing fails as an unreachable one does. Calls are counted per
/// provider, and `delay` holds each answer back (to line up concurrent
/// requests).
#[derive(Debug)]
pub struct MemoryQuotes {
    observed: DateTime<Utc>,
    delay: Duration,
    answers: Mutex<HashMap<ProviderId, Result<f64, ProviderError>>>,
    calls: Mutex<HashMap<ProviderId, usize>>,
}

impl MemoryQuotes {
    /// Quotes observed at `observed`.
    pub fn at(observed: DateTime<Utc>) -> Self {
        Self {
            observed,
            delay: Duration::ZERO,
            answers: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// `provider` quotes every metal at `price` from now on.
    pub fn quote(&self, provider: ProviderId, price: f64) {
        self.answer(provider, Ok(price));
    }

    /// `provider` fails with `error` from now on.
    pub fn fail(&self, provider: ProviderId, error: ProviderError) {
        self.answer(provider, Err(error));
    }

    fn answer(&self, provider: ProviderId, answer: Result<f64, ProviderError>) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.insert(provider, answer);
    }

    /// How often `provider` was asked.
    pub fn calls(&self, provider: ProviderId) -> usize {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.get(&provider).copied().unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl QuoteSource for MemoryQuotes {
    async fn fetch(
        &self,
        provider: &Provider,
        metals: &[Metal],
        currency: &Currency,
    ) -> Result<Vec<Quote>, ProviderError> {
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(provider.id)
            .or_default() += 1;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let answer = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&provider.id)
            .cloned()
            .unwrap_or_else(|| Err(ProviderError::Transport("could not connect".into())));
        let price = answer?;
        Ok(metals
            .iter()
            .map(|metal| Quote {
                metal: *metal,
                currency: currency.clone(),
                price,
                bid: None,
                ask: None,
                provider: provider.id.name().to_owned(),
                ts: self.observed,
                fx: None,
            })
            .collect())
    }
}
