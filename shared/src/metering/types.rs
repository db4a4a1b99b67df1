//! The metering vocabulary. Each type can only hold a valid value: parsing
//! (from JSON, a path or the queue) is where validation happens, once.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why a value was rejected; shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Invalid;
            fn try_from(value: String) -> Result<Self, Invalid> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&value).map_err(Invalid)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// `ten_` followed by 32 lowercase hex digits.
    TenantId,
    |s| {
        let hex = s.strip_prefix("ten_").ok_or("tenant id must start with ten_")?;
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(())
        } else {
            Err("tenant id must be ten_ and 32 lowercase hex digits".to_owned())
        }
    }
);

string_newtype!(
    /// A client's idempotency key: 1–128 printable characters.
    EventId,
    |s| {
        if s.is_empty() || s.chars().count() > 128 {
            Err("id must be 1 to 128 characters".to_owned())
        } else if s.chars().any(char::is_control) {
            Err("id must not contain control characters".to_owned())
        } else {
            Ok(())
        }
    }
);

string_newtype!(
    /// What was used: 1–128 characters of `[A-Za-z0-9_.:-]`.
    Feature,
    |s| {
        if s.is_empty() || s.len() > 128 {
            Err("feature must be 1 to 128 characters".to_owned())
        } else if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)) {
            Err("feature may only contain A-Z a-z 0-9 _ . : -".to_owned())
        } else {
            Ok(())
        }
    }
);

string_newtype!(
    /// An `Idempotency-Key` request header: 1–255 printable ASCII characters.
    IdempotencyKey,
    |s| {
        if s.is_empty() || s.len() > 255 {
            Err("Idempotency-Key must be 1 to 255 characters".to_owned())
        } else if !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            Err("Idempotency-Key may only contain printable ASCII".to_owned())
        } else {
            Ok(())
        }
    }
);

impl TenantId {
    pub fn generate() -> Self {
        Self(format!("ten_{}", uuid::Uuid::new_v4().simple()))
    }
}

impl EventId {
    /// A fresh id for an event the client sent without one.
    pub fn generate() -> Self {
        Self(format!("evt_{}", uuid::Uuid::new_v4().simple()))
    }

    /// The id of the `index`th event of a request sent with `key` and no id
    /// of its own: the same on every retry of that request, so a retry is
    /// counted once (ids are unique per tenant, and so is the key).
    pub fn derived(key: &IdempotencyKey, index: usize) -> Self {
        Self::digest("idem", key.as_str(), &index.to_string())
    }

    /// The id of a CloudEvent: its identity is (`source`, `id`).
    pub fn from_cloudevent(source: &str, id: &str) -> Self {
        Self::digest("ce", source, id)
    }

    /// `prefix_` + 32 hex digits of SHA-256 over the two parts.
    fn digest(prefix: &str, first: &str, second: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(first)
            .chain_update([0])
            .chain_update(second)
            .finalize();
        let hex = crate::hex(&digest[..16]);
        Self(format!("{prefix}_{hex}"))
    }
}

/// A token count of one event: 1 to 10^12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Tokens(u64);

impl Tokens {
    pub const MAX: u64 = 1_000_000_000_000;

    pub fn get(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for Tokens {
    type Error = Invalid;
    fn try_from(value: u64) -> Result<Self, Invalid> {
        if (1..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(Invalid(format!(
                "tokens must be an integer from 1 to {}",
                Self::MAX
            )))
        }
    }
}

impl From<Tokens> for u64 {
    fn from(value: Tokens) -> u64 {
        value.0
    }
}

/// The day of the month a tenant's billing period starts: 1 to 28, so every
/// month has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct BillingDay(u8);

impl BillingDay {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for BillingDay {
    type Error = Invalid;
    fn try_from(value: u8) -> Result<Self, Invalid> {
        if (1..=28).contains(&value) {
            Ok(Self(value))
        } else {
            Err(Invalid("billing_day must be from 1 to 28".to_owned()))
        }
    }
}

impl From<BillingDay> for u8 {
    fn from(value: BillingDay) -> u8 {
        value.0
    }
}

/// One accepted usage event, as it travels through the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub id: EventId,
    pub feature: Feature,
    pub tokens: Tokens,
    pub timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub properties: serde_json::Map<String, serde_json::Value>,
}

/// One SQS message: accepted events of one tenant. The tenant comes from the
/// API key that sent them, never from the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub tenant: TenantId,
    pub events: Vec<UsageEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_generated_valid_and_parsed_strictly() {
        let id = TenantId::generate();
        assert_eq!(TenantId::try_from(id.to_string()), Ok(id));
        for bad in [
            "",
            "ten_",
            "ten_XYZ",
            "tenant_0123456789abcdef0123456789abcdef",
            "ten_0123456789ABCDEF0123456789abcdef",
        ] {
            assert!(TenantId::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn feature_names_allow_only_the_documented_characters() {
        assert!(Feature::try_from("chat.completions:v2-beta_1".to_owned()).is_ok());
        assert!(Feature::try_from("a".repeat(128)).is_ok());
        for bad in ["", "has space", "emoji😀", "slash/", &"a".repeat(129)] {
            assert!(Feature::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_ids_are_1_to_128_printable_characters() {
        assert!(EventId::try_from("é".repeat(128)).is_ok());
        assert!(EventId::try_from("x".repeat(129)).is_err());
        assert!(EventId::try_from(String::new()).is_err());
        assert!(EventId::try_from("a\nb".to_owned()).is_err());
    }

    #[test]
    fn derived_event_ids_depend_on_the_key_and_the_index_only() {
        let key = IdempotencyKey::try_from("order-42".to_owned()).unwrap();
        let other = IdempotencyKey::try_from("order-43".to_owned()).unwrap();
        let id = EventId::derived(&key, 0);
        assert_eq!(id, EventId::derived(&key, 0));
        assert_ne!(id, EventId::derived(&key, 1));
        assert_ne!(id, EventId::derived(&other, 0));
        assert_eq!(id.as_str().len(), "idem_".len() + 32);
        assert!(EventId::try_from(id.as_str().to_owned()).is_ok());
    }

    #[test]
    fn idempotency_keys_are_1_to_255_printable_ascii_characters() {
        assert!(IdempotencyKey::try_from("a b~".to_owned()).is_ok());
        assert!(IdempotencyKey::try_from("k".repeat(255)).is_ok());
        for bad in [
            String::new(),
            "k".repeat(256),
            "clé".to_owned(),
            "a\tb".to_owned(),
        ] {
            assert!(IdempotencyKey::try_from(bad).is_err());
        }
    }

    #[test]
    fn tokens_are_1_to_10_to_the_12() {
        assert!(Tokens::try_from(0).is_err());
        assert_eq!(Tokens::try_from(1).map(Tokens::get), Ok(1));
        assert!(Tokens::try_from(Tokens::MAX).is_ok());
        assert!(Tokens::try_from(Tokens::MAX + 1).is_err());
    }

    #[test]
    fn billing_day_is_1_to_28() {
        assert!(BillingDay::try_from(0).is_err());
        assert!(BillingDay::try_from(28).is_ok());
        assert!(BillingDay::try_from(29).is_err());
    }

    #[test]
    fn queue_messages_reject_invalid_values_on_the_way_in() {
        let bad = r#"{"tenant":"ten_0123456789abcdef0123456789abcdef","events":[{"id":"a","feature":"x","tokens":0,"timestamp":"2026-11-22T10:00:00Z"}]}"#;
        assert!(serde_json::from_str::<EventBatch>(bad).is_err());
    }
}
