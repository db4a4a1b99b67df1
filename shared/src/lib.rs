//! Ingot's library crate: everything the six functions share.
//!
//! Functions are wiring; the behaviour lives here, in small modules that can be
//! read on their own:
//! - [`config`]: environment → typed config, failing fast with the variable's name;
//! - [`error`]: the one HTTP error type, rendered as `application/problem+json`;
//! - [`http`]: request ids, the per-request log line, security headers and CORS;
//! - [`health`]: `/health` probes that really touch each dependency;
//! - [`auth`]: the admin token and tenant API keys;
//! - [`metering`]: tenants, usage events, billing periods, exactly-once counting;
//! - [`prices`]: metals, units, the price providers, failover and breakers,
//!   the read API's cache chain and the scheduled fetch;
//! - [`aws`]: the AWS adapters: SDK configuration (the endpoint is the only
//!   local/AWS difference), tables, queue and secrets;
//! - [`store`]: the error every store edge returns;
//! - [`telemetry`]: JSON logs and CloudWatch embedded metrics;
//! - [`webhook`]: signed webhook delivery with retries.

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
pub mod metering;
pub mod prices;
pub mod ratelimit;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod webhook;
