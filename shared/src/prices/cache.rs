//! This instance's memory of rendered answers, the first link of the read
//! API's cache chain.
//!
//! An answer is reused for a TTL, body and ETag together, so repeated
//! requests get identical bytes (and `If-None-Match` works) until it
//! expires. A missing key is filled once at a time (single flight): the
//! requests that arrive meanwhile wait for that fill and read its result,
//! so a burst on a cold key makes one trip to DynamoDB and the providers,
//! not one each.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use crate::clock::Clock;

/// A rendered JSON body and its ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub body: String,
    pub etag: String,
}

impl Rendered {
    /// `body` with a strong ETag: the first 16 bytes of its SHA-256.
    pub fn new(body: String) -> Self {
        let digest = Sha256::digest(body.as_bytes());
        let hex = crate::hex(&digest[..16]);
        Self {
            etag: format!("\"{hex}\""),
            body,
        }
    }
}

type Flight = Arc<tokio::sync::Mutex<()>>;

/// An answer and when it was rendered.
type Remembered = (Arc<Rendered>, DateTime<Utc>);

pub struct AnswerCache {
    ttl: TimeDelta,
    clock: Arc<dyn Clock>,
    answers: Mutex<HashMap<String, Remembered>>,
    flights: Mutex<HashMap<String, Flight>>,
}

impl AnswerCache {
    pub fn new(ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            ttl: TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX),
            clock,
            answers: Mutex::default(),
            flights: Mutex::default(),
        }
    }

    /// The answer under `key`: from memory while fresh, else from `fill`,
    /// which runs for one caller at a time per key and is remembered when
    /// it succeeds (a failure is not: the next caller tries again).
    pub async fn get_or_fill<E>(
        &self,
        key: &str,
        fill: impl Future<Output = Result<Rendered, E>>,
    ) -> Result<Arc<Rendered>, E> {
        if let Some(hit) = self.fresh(key) {
            return Ok(hit);
        }
        let flight = self.flight(key);
        let _turn = flight.lock().await;
        // Whoever held the flight before may have filled it.
        if let Some(hit) = self.fresh(key) {
            return Ok(hit);
        }
        let answer = Arc::new(fill.await?);
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.insert(key.to_owned(), (Arc::clone(&answer), self.clock.now()));
        Ok(answer)
    }

    fn fresh(&self, key: &str) -> Option<Arc<Rendered>> {
        let now = self.clock.now();
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers
            .get(key)
            .filter(|(_, at)| now - *at < self.ttl)
            .map(|(answer, _)| Arc::clone(answer))
    }

    fn flight(&self, key: &str) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(flights.entry(key.to_owned()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::future::join_all;

    use super::*;
    use crate::clock::FixedClock;

    fn cache(ttl_secs: u64) -> (AnswerCache, Arc<FixedClock>) {
        let clock = Arc::new(FixedClock::at(Utc::now()));
        (
            AnswerCache::new(Duration::from_secs(ttl_secs), clock.clone()),
            clock,
        )
    }

    async fn fill(body: &str, fills: &AtomicUsize) -> Result<Rendered, ()> {
        fills.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(Rendered::new(body.to_owned()))
    }

    #[tokio::test]
    async fn concurrent_misses_of_one_key_fill_it_once() {
        let (cache, _) = cache(60);
        let fills = AtomicUsize::new(0);
        let answers = join_all((0..8).map(|_| cache.get_or_fill("k", fill("a", &fills)))).await;
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|a| a.as_ref().unwrap().body == "a"));
    }

    #[tokio::test]
    async fn an_answer_is_reused_until_its_ttl_has_passed() {
        let (cache, clock) = cache(60);
        let fills = AtomicUsize::new(0);
        cache.get_or_fill("k", fill("a", &fills)).await.unwrap();
        clock.advance(TimeDelta::seconds(59));
        let hit = cache.get_or_fill("k", fill("b", &fills)).await.unwrap();
        assert_eq!((hit.body.as_str(), fills.load(Ordering::SeqCst)), ("a", 1));
        clock.advance(TimeDelta::seconds(1));
        let refilled = cache.get_or_fill("k", fill("b", &fills)).await.unwrap();
        assert_eq!(refilled.body, "b");
    }

    #[tokio::test]
    async fn a_zero_ttl_never_hits_and_a_failed_fill_is_not_remembered() {
        let (cache, _) = cache(0);
        let fills = AtomicUsize::new(0);
        cache.get_or_fill("k", fill("a", &fills)).await.unwrap();
        cache.get_or_fill("k", fill("a", &fills)).await.unwrap();
        assert_eq!(fills.load(Ordering::SeqCst), 2);
        let (cache, _) = self::cache(60);
        assert_eq!(cache.get_or_fill("k", async { Err(7) }).await, Err(7));
        let answer = cache.get_or_fill("k", fill("a", &fills)).await.unwrap();
        assert_eq!(answer.body, "a");
    }

    #[test]
    fn the_etag_is_a_quoted_digest_of_the_body() {
        let a = Rendered::new("{}".into());
        assert_eq!(a.etag.len(), 34);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
        assert_eq!(a, Rendered::new("{}".into()));
        assert_ne!(a.etag, Rendered::new("[]".into()).etag);
    }
}
