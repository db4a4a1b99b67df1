//! Configuration, read from the environment once per cold start.
//!
//! Each function builds its own config struct from an [`Env`], so a missing or
//! malformed variable stops the cold start with the variable's name in the
//! message instead of surfacing later as a confusing runtime error. `Env` is a
//! snapshot rather than live `std::env` reads so tests can build one without
//! touching process-wide state.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("missing required environment variable {0}")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// A snapshot of environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// This snapshot with `name` set to `value` (tests and the local cloud
    /// override single variables this way).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The variable's value; unset and empty are the same thing.
    pub fn optional(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.optional(name)
            .map(str::to_owned)
            .ok_or(ConfigError::Missing(name))
    }

    /// Parses the variable if set, else returns `default`.
    pub fn parse_or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e: T::Err| ConfigError::Invalid {
                name,
                reason: e.to_string(),
            }),
        }
    }

    /// An http(s) URL, if set; trailing slashes trimmed.
    pub fn url(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        self.optional(name)
            .map(|url| checked_url(name, url))
            .transpose()
    }

    /// Base URL of an upstream API: the override if set, else the public default.
    pub fn upstream(&self, upstream: Upstream) -> Result<String, ConfigError> {
        let name = upstream.env_var();
        checked_url(
            name,
            self.optional(name).unwrap_or(upstream.default_base_url()),
        )
    }
}

fn checked_url(name: &'static str, url: &str) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => {
            Ok(url.trim_end_matches('/').to_owned())
        }
        _ => Err(ConfigError::Invalid {
            name,
            reason: format!("{url:?} is not an http(s) URL"),
        }),
    }
}

/// Every upstream HTTP API Ingot calls. Each base URL is overridable so tests,
/// `make dev` and egress proxies can point it elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Anthropic,
    MetalsDev,
    MetalPriceApi,
    MetalsApi,
    GoldApiIo,
    GoldApiCom,
}

impl Upstream {
    pub const fn env_var(self) -> &'static str {
        match self {
            Upstream::Anthropic => "ANTHROPIC_BASE_URL",
            Upstream::MetalsDev => "METALS_DEV_BASE_URL",
            Upstream::MetalPriceApi => "METALPRICEAPI_BASE_URL",
            Upstream::MetalsApi => "METALS_API_BASE_URL",
            Upstream::GoldApiIo => "GOLDAPI_IO_BASE_URL",
            Upstream::GoldApiCom => "GOLD_API_COM_BASE_URL",
        }
    }

    pub const fn default_base_url(self) -> &'static str {
        match self {
            Upstream::Anthropic => "https://api.anthropic.com",
            Upstream::MetalsDev => "https://api.metals.dev",
            Upstream::MetalPriceApi => "https://api.metalpriceapi.com",
            Upstream::MetalsApi => "https://metals-api.com",
            Upstream::GoldApiIo => "https://www.goldapi.io",
            Upstream::GoldApiCom => "https://api.gold-api.com",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variable_is_named_in_the_error() {
        let env = Env::from_pairs([("OTHER", "x")]);
        let err = env.required("TENANTS_TABLE").unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing required environment variable TENANTS_TABLE"
        );
    }

    #[test]
    fn empty_variable_counts_as_missing() {
        let env = Env::from_pairs([("TENANTS_TABLE", "  ")]);
        assert_eq!(
            env.required("TENANTS_TABLE"),
            Err(ConfigError::Missing("TENANTS_TABLE"))
        );
    }

    #[test]
    fn parse_or_uses_default_when_unset_and_names_bad_values() {
        let env = Env::from_pairs([("TIMEOUT_MS", "abc")]);
        assert_eq!(env.parse_or("RETRIES", 3u32), Ok(3));
        let err = env.parse_or("TIMEOUT_MS", 3000u64).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: "TIMEOUT_MS",
                ..
            }
        ));
    }

    #[test]
    fn upstream_defaults_and_overrides() {
        let env = Env::from_pairs([("ANTHROPIC_BASE_URL", "http://127.0.0.1:8080/")]);
        assert_eq!(
            env.upstream(Upstream::Anthropic).unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            env.upstream(Upstream::GoldApiCom).unwrap(),
            "https://api.gold-api.com"
        );
    }

    #[test]
    fn optional_urls_are_checked_when_set() {
        let env = Env::from_pairs([
            ("JWKS_URL", "https://x.example/jwks.json"),
            ("BAD", "x.example"),
        ]);
        assert_eq!(
            env.url("JWKS_URL"),
            Ok(Some("https://x.example/jwks.json".into()))
        );
        assert_eq!(env.url("UNSET"), Ok(None));
        assert!(env.url("BAD").is_err());
    }

    #[test]
    fn upstream_rejects_non_http_urls() {
        let env = Env::from_pairs([("METALS_DEV_BASE_URL", "ftp://example")]);
        assert!(matches!(
            env.upstream(Upstream::MetalsDev),
            Err(ConfigError::Invalid {
                name: "METALS_DEV_BASE_URL",
                ..
            })
        ));
    }
}
