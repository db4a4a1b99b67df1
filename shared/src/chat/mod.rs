//! Metered chat, where every chat rule lives:
//! - [`users`]: signing a JWT subject in (user and metering tenant);
//! - [`admission`]: account, rate windows, quota, history: admit or [`admission::Refusal`];
//! - [`upstream`]: opening the model's stream, what is retried and what is not;
//! - [`stream`]: relaying it to the client and recording usage and history;
//! - [`request`]: what a client may ask; [`anthropic`]: Anthropic's wire format;
//! - [`relay`]: upstream events → client events, and what the reply used;
//! - [`history`]: which earlier turns are sent along; [`settings`]: tiers and prices;
//! - [`store`]: the chat data edge ([`store::ChatStore`]) and its memory double.
//!
//! Chat usage is metered through the same pipeline as tenant events: every
//! chat user is also a tenant ([`user_tenant`]), so the rollup, the quota and
//! the admin dashboard see chat tokens like any other usage.

pub mod account;
pub mod accounting;
pub mod admission;
pub mod anthropic;
pub mod budget;
pub mod gateway;
pub mod history;
pub mod relay;
pub mod request;
pub mod settings;
pub mod store;
pub mod stream;
pub mod upstream;
pub mod users;

use sha2::{Digest, Sha256};

use crate::metering::types::TenantId;

/// The function chat requests run in (the metrics' `Function` dimension).
pub const FUNCTION: &str = "chat-stream";

/// The metering tenant of a signed-in user: derived from the JWT subject,
/// so concurrent first sign-ins agree on it without coordination.
pub fn user_tenant(subject: &str) -> TenantId {
    let digest = Sha256::digest(format!("chat-user\0{subject}").as_bytes());
    let hex = crate::hex(&digest[..16]);
    TenantId::try_from(format!("ten_{hex}")).expect("32 lowercase hex digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_always_maps_to_the_same_tenant() {
        assert_eq!(user_tenant("user_2abc"), user_tenant("user_2abc"));
        assert_ne!(user_tenant("user_2abc"), user_tenant("user_2abd"));
    }
}
