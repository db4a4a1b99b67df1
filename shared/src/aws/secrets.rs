//! Secrets Manager values, cached per warm instance.
//!
//! Read lazily (a Secrets Manager hiccup must not fail a cold start) and
//! refreshed after `ttl`, so a rotated secret reaches every instance within
//! it. Values are never logged: [`Secret`] redacts itself in `Debug`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::describe;

/// A secret value; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
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

#[derive(Debug)]
pub struct CachedSecret {
    client: aws_sdk_secretsmanager::Client,
    id: String,
    ttl: Duration,
    cached: Mutex<Option<(Secret, Instant)>>,
}

impl CachedSecret {
    pub fn new(client: aws_sdk_secretsmanager::Client, id: &str, ttl: Duration) -> Self {
        Self {
            client,
            id: id.to_owned(),
            ttl,
            cached: Mutex::new(None),
        }
    }

    /// The current value: from memory while fresh, else from Secrets Manager.
    pub async fn get(&self) -> Result<Secret, SecretError> {
        let mut cached = self.cached.lock().await;
        if let Some((secret, at)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(secret.clone());
        }
        let value = self
            .client
            .get_secret_value()
            .secret_id(&self.id)
            .send()
            .await
            .map_err(|e| SecretError {
                id: self.id.clone(),
                message: describe(&e),
            })?;
        let secret = Secret(Arc::from(value.secret_string().unwrap_or_default()));
        *cached = Some((secret.clone(), Instant::now()));
        Ok(secret)
    }
}
