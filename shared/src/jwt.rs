//! Sign-in: JWTs from a Clerk-style issuer, verified against its JWKS.
//!
//! Keys are fetched once per warm instance and kept. A token signed with a
//! `kid` we do not know (the issuer rotated keys) triggers one refresh, at
//! most one per refresh interval (`JWKS_REFRESH_SECONDS`, 30), so a flood
//! of made-up `kid`s cannot turn into a flood of JWKS requests; a refresh
//! also drops keys the issuer removed. Only RS256 and ES256 are accepted,
//! and the algorithm must match the key's, so `alg: none` or an HMAC token
//! signed with a public key never verifies.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::config::{ConfigError, Env};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Who may sign in: the issuer, its JWKS, and the `aud`/`azp` allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    pub jwks_url: String,
    pub issuer: String,
    /// A token passes when its `aud` (any of them) or its `azp` is listed.
    pub audiences: Vec<String>,
    /// At most one JWKS refresh per this interval: a rotated-in key works
    /// at most this long after the first token signed with it.
    pub refresh_interval: Duration,
}

impl JwtSettings {
    /// `JWKS_URL`, `JWT_ISSUER` and `JWT_AUDIENCES` (comma-separated); `None`
    /// when `JWKS_URL` is unset, and then sign-in is refused.
    pub fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        let Some(jwks_url) = env.url("JWKS_URL")? else {
            return Ok(None);
        };
        let audiences: Vec<String> = env
            .required("JWT_AUDIENCES")?
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if audiences.is_empty() {
            return Err(ConfigError::Invalid {
                name: "JWT_AUDIENCES",
                reason: "list at least one audience or authorized party".to_owned(),
            });
        }
        Ok(Some(Self {
            jwks_url,
            issuer: env.required("JWT_ISSUER")?,
            audiences,
            refresh_interval: Duration::from_secs(env.parse_or("JWKS_REFRESH_SECONDS", 30)?),
        }))
    }
}

/// The claims Ingot reads; the rest of the token is ignored.
#[derive(Debug, Clone, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    azp: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// A verified subject: the issuer's stable id for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(pub String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted (RS256 or ES256)")]
    Algorithm,
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token's signature or claims are invalid")]
    Invalid,
    /// The JWKS could not be fetched: the caller should answer 503.
    #[error("the sign-in keys are unavailable: {0}")]
    KeysUnavailable(String),
}

/// Checks a bearer token and says whose it is: the sign-in edge
/// ([`Verifier`] against the issuer's JWKS in production).
#[async_trait::async_trait]
pub trait TokenVerifier: Send + Sync {
    async fn verify(&self, token: &str) -> Result<Subject, VerifyError>;
}

/// Tokens known in advance, each standing for a subject: the double for
/// handler tests. Any other token is `Invalid`.
#[derive(Debug, Default)]
pub struct MemoryTokens(std::collections::HashMap<String, String>);

impl MemoryTokens {
    pub fn with(mut self, token: &str, subject: &str) -> Self {
        self.0.insert(token.to_owned(), subject.to_owned());
        self
    }
}

#[async_trait::async_trait]
impl TokenVerifier for MemoryTokens {
    async fn verify(&self, token: &str) -> Result<Subject, VerifyError> {
        self.0
            .get(token)
            .map(|s| Subject(s.clone()))
            .ok_or(VerifyError::Invalid)
    }
}

struct Keys {
    set: JwkSet,
    /// The last fetch attempt, successful or not: failures are rate-limited too.
    attempted: Option<Instant>,
}

/// Verifies bearer tokens; one per cold start.
pub struct Verifier {
    settings: JwtSettings,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(settings: JwtSettings, http: reqwest::Client) -> Self {
        Self {
            settings,
            http,
            keys: RwLock::new(Keys {
                set: JwkSet { keys: Vec::new() },
                attempted: None,
            }),
            refresh: tokio::sync::Mutex::new(()),
        }
    }
}

#[async_trait::async_trait]
impl TokenVerifier for Verifier {
    async fn verify(&self, token: &str) -> Result<Subject, VerifyError> {
        let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(VerifyError::Algorithm);
        }
        let kid = header.kid.ok_or(VerifyError::UnknownKey)?;
        let key = match self.key(&kid, header.alg)? {
            Some(key) => key,
            None => {
                self.refresh_keys().await?;
                self.key(&kid, header.alg)?.ok_or(VerifyError::UnknownKey)?
            }
        };

        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false; // `aud` or `azp`: checked below
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => VerifyError::Expired,
                    ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                    ErrorKind::InvalidIssuer => VerifyError::Issuer,
                    ErrorKind::InvalidAlgorithm => VerifyError::Algorithm,
                    ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                        VerifyError::Malformed
                    }
                    _ => VerifyError::Invalid,
                }
            })?
            .claims;

        let allowed: HashSet<&str> = self.settings.audiences.iter().map(String::as_str).collect();
        let audience_ok = match &claims.aud {
            Audience::None => false,
            Audience::One(a) => allowed.contains(a.as_str()),
            Audience::Many(all) => all.iter().any(|a| allowed.contains(a.as_str())),
        } || claims.azp.as_deref().is_some_and(|a| allowed.contains(a));
        if !audience_ok {
            return Err(VerifyError::Audience);
        }
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(VerifyError::Invalid);
        }
        Ok(Subject(claims.sub))
    }
}

impl Verifier {
    /// The key for `kid`, if known; an error if it does not fit `alg`.
    fn key(&self, kid: &str, alg: Algorithm) -> Result<Option<DecodingKey>, VerifyError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let Some(jwk) = keys.set.find(kid) else {
            return Ok(None);
        };
        if let Some(declared) = jwk.common.key_algorithm
            && Algorithm::try_from(declared).ok() != Some(alg)
        {
            return Err(VerifyError::Algorithm);
        }
        DecodingKey::from_jwk(jwk)
            .map(Some)
            .map_err(|_| VerifyError::Invalid)
    }

    /// Refetches the JWKS unless another caller just did (single flight,
    /// rate-limited). Cold instances fetch on first use.
    async fn refresh_keys(&self) -> Result<(), VerifyError> {
        let _guard = self.refresh.lock().await;
        let (recent, have_keys) = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            (
                keys.attempted
                    .is_some_and(|at| at.elapsed() < self.settings.refresh_interval),
                !keys.set.keys.is_empty(),
            )
        };
        if recent {
            // Within the interval: answer from what we have (or say the
            // keys are unavailable if we never got any).
            return if have_keys {
                Ok(())
            } else {
                Err(VerifyError::KeysUnavailable(
                    "the last JWKS fetch failed; retrying shortly".to_owned(),
                ))
            };
        }
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .attempted = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                self.keys.write().unwrap_or_else(|e| e.into_inner()).set = set;
                Ok(())
            }
            Err(reason) => {
                tracing::error!(reason, "JWKS fetch failed");
                Err(VerifyError::KeysUnavailable(reason))
            }
        }
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let response = self
            .http
            .get(&self.settings.jwks_url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("JWKS request failed: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("JWKS answered HTTP {}", response.status()));
        }
        response
            .json::<JwkSet>()
            .await
            .map_err(|e| format!("JWKS is not a key set: {}", e.without_url()))
    }
}
