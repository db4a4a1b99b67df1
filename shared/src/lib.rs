//! Ingot's library crate: everything the six functions share.
//!
//! Functions are wiring; the behaviour lives here, in small modules that can be
//! read on their own (where each rule lives: docs/architecture.md):
//! - domain modules, each with its rules, the traits of the stores and
//!   services it uses, and a memory double of each: [`chat`] (sign-in,
//!   admission, budgets, the upstream policy, the stream), [`metering`]
//!   (tenants, usage events, exactly-once counting, alerts, reports),
//!   [`prices`] (providers, failover, the cache chain, the fetch),
//!   [`ratelimit`] (fixed windows), [`secrets`] (cached, redacted values);
//! - edges: [`aws`] (DynamoDB, SQS and Secrets Manager adapters; the endpoint
//!   is the only local/AWS difference), [`clock`], [`store`] (the error
//!   every store edge returns), [`jwt`] (JWKS sign-in), [`webhook`] (signed
//!   delivery with retries);
//! - the HTTP layer: [`error`] (problem+json, and domain errors into it),
//!   [`http`] (request ids, the log line, security headers, CORS, refusals
//!   into problems), [`auth`] (admin token, tenant keys, signed-in users),
//!   [`health`] (probes that really touch each dependency);
//! - [`config`] (environment → typed config, failing fast with the
//!   variable's name), [`lambda`] (the process: one invocation at a time,
//!   or several under Lambda Managed Instances), [`telemetry`] (JSON logs, embedded metrics),
//!   [`backoff`].

pub mod auth;
pub mod aws;
pub mod backoff;
pub mod chat;
pub mod clock;
pub mod config;
pub mod error;
pub mod health;
pub mod http;
pub mod jwt;
pub mod lambda;
pub mod metering;
pub mod prices;
pub mod public_limit;
pub mod ratelimit;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod webhook;

/// Lowercase hex digits of `bytes` (digests in ids, ETags and keys).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_two_lowercase_digits_per_byte() {
        assert_eq!(super::hex(&[0x00, 0x0a, 0xab, 0xff]), "000aabff");
        assert_eq!(super::hex(&[]), "");
    }
}
