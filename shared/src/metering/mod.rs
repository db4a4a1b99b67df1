//! Usage metering: tenants send usage events, the rollup counts each one
//! exactly once per minute and per billing period, and the usage API reads
//! the totals back. This module is the domain; DynamoDB and SQS live in
//! [`crate::aws`].

pub mod alerts;
pub mod cloudevents;
pub mod consumer;
pub mod ingest;
pub mod period;
pub mod rollup;
pub mod tenants;
pub mod types;
pub mod usage;
