//! Secret values (API keys, tokens), cached per warm instance.
//!
//! Read lazily (a Secrets Manager hiccup must not fail a cold start) and
//! refreshed after `ttl`, so a rotated secret reaches every instance within
//! it. Values are never logged: [`Secret`] redacts itself in `Debug`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// A secret value; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("secret {id}: {message}")]
pub struct SecretError {
    pub id: String,
    pub message: String,
}

/// Where secrets are read from (Secrets Manager in production).
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    async fn read(&self, id: &str) -> Result<Secret, SecretError>;
}

pub struct CachedSecret {
    source: Arc<dyn SecretSource>,
    id: String,
    ttl: Duration,
    cached: Mutex<Option<(Secret, Instant)>>,
}

impl std::fmt::Debug for CachedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSecret")
            .field("id", &self.id)
            .finish()
    }
}

impl CachedSecret {
    pub fn new(source: Arc<dyn SecretSource>, id: &str, ttl: Duration) -> Self {
        Self {
            source,
            id: id.to_owned(),
            ttl,
            cached: Mutex::new(None),
        }
    }

    /// The current value: from memory while fresh, else from the source.
    pub async fn get(&self) -> Result<Secret, SecretError> {
        let mut cached = self.cached.lock().await;
        if let Some((secret, at)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(secret.clone());
        }
        let secret = self.source.read(&self.id).await?;
        *cached = Some((secret.clone(), Instant::now()));
        Ok(secret)
    }
}

/// Secrets in memory: the double for handler tests. A missing id fails
/// the way an unreachable Secrets Manager does.
#[derive(Debug, Default)]
pub struct MemorySecrets(std::sync::Mutex<HashMap<String, String>>);

impl MemorySecrets {
    pub fn with(self, id: &str, value: &str) -> Self {
        self.set(id, value);
        self
    }

    pub fn set(&self, id: &str, value: &str) {
        let mut values = self.0.lock().unwrap_or_else(|e| e.into_inner());
        values.insert(id.to_owned(), value.to_owned());
    }
}

#[async_trait::async_trait]
impl SecretSource for MemorySecrets {
    async fn read(&self, id: &str) -> Result<Secret, SecretError> {
        let values = self.0.lock().unwrap_or_else(|e| e.into_inner());
        values
            .get(id)
            .map(|v| Secret::new(v))
            .ok_or_else(|| SecretError {
                id: id.to_owned(),
                message: "no such secret".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cached_secret_is_read_once_per_ttl() {
        let source = Arc::new(MemorySecrets::default().with("k", "one"));
        let cached = CachedSecret::new(source.clone(), "k", Duration::from_secs(60));
        assert_eq!(cached.get().await.unwrap().expose(), "one");
        source.set("k", "two");
        assert_eq!(cached.get().await.unwrap().expose(), "one");
        let fresh = CachedSecret::new(source, "k", Duration::ZERO);
        assert_eq!(fresh.get().await.unwrap().expose(), "two");
    }

    #[test]
    fn debug_never_shows_the_value() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
