//! Spot prices: metals, currencies, units, the five upstream providers and
//! how quotes are chosen among them. DynamoDB lives in [`crate::aws`].

pub mod failover;
pub mod providers;
pub mod settings;
pub mod types;
