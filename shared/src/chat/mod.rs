//! Metered chat: who may ask (tiers, limits, quotas), what they ask
//! ([`request`]), what goes to Anthropic and what comes back
//! ([`anthropic`]), how the upstream stream becomes ours and what it cost
//! ([`relay`]), and what earlier turns are sent along ([`history`]).
//!
//! Chat usage is metered through the same pipeline as tenant events: every
//! chat user is also a tenant ([`user_tenant`]), so the rollup, the quota and
//! the admin dashboard see chat tokens like any other usage.

pub mod anthropic;
pub mod history;
pub mod metering;
pub mod relay;
pub mod request;
pub mod settings;

use sha2::{Digest, Sha256};

use crate::metering::types::TenantId;

/// The metering tenant of a signed-in user: derived from the JWT subject,
/// so concurrent first sign-ins agree on it without coordination.
pub fn user_tenant(subject: &str) -> TenantId {
    let digest = Sha256::digest(format!("chat-user\0{subject}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
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
