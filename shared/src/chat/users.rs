//! Signing a JWT subject in: the user (and its metering tenant, tier
//! `free`) is created on first sight, `last_active_at` is kept within a
//! minute, and users are remembered per warm instance so a request costs no
//! extra reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

use super::settings::Tiers;
use super::store::{ChatStore, UserProfile};
use super::user_tenant;
use crate::metering::tenants::{ApiKey, Tenant, TenantStore, Tier, signing_secret};
use crate::metering::types::BillingDay;
use crate::store::StoreError;

/// `last_active_at` moves at most this often.
const TOUCH_INTERVAL: TimeDelta = TimeDelta::minutes(1);
/// A tenant (tier, quota, enabled) is re-read after this long.
const TENANT_TTL: Duration = Duration::from_secs(30);
const MAX_REMEMBERED_USERS: usize = 10_000;

pub struct Users {
    chat: Arc<dyn ChatStore>,
    tenants: Arc<dyn TenantStore>,
    tiers: Tiers,
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug, Clone)]
struct Seen {
    tenant: Tenant,
    read_at: Instant,
    touched_at: DateTime<Utc>,
}

impl Users {
    pub fn new(chat: Arc<dyn ChatStore>, tenants: Arc<dyn TenantStore>, tiers: Tiers) -> Self {
        Self {
            chat,
            tenants,
            tiers,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The signed-in user's metering tenant (tier, quota, billing day).
    pub async fn sign_in(&self, subject: &str, now: DateTime<Utc>) -> Result<Tenant, StoreError> {
        let remembered = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(subject)
            .cloned();
        let (tenant, read_at, touched_at) = match remembered {
            Some(seen) if seen.read_at.elapsed() < TENANT_TTL => {
                (seen.tenant, seen.read_at, seen.touched_at)
            }
            Some(seen) => (
                self.tenant(subject, now).await?,
                Instant::now(),
                seen.touched_at,
            ),
            None => match self.chat.user(subject).await? {
                Some(profile) => (
                    self.tenant(subject, now).await?,
                    Instant::now(),
                    profile.last_active_at,
                ),
                None => {
                    let tenant = self.tenant(subject, now).await?;
                    self.chat
                        .create_user(&UserProfile {
                            subject: subject.to_owned(),
                            created_at: now,
                            last_active_at: now,
                        })
                        .await?;
                    (tenant, Instant::now(), now)
                }
            },
        };
        let touched_at = if now - touched_at >= TOUCH_INTERVAL {
            self.chat.touch(subject, now, now - TOUCH_INTERVAL).await?;
            now
        } else {
            touched_at
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED_USERS {
            seen.clear();
        }
        seen.insert(
            subject.to_owned(),
            Seen {
                tenant: tenant.clone(),
                read_at,
                touched_at,
            },
        );
        Ok(tenant)
    }

    /// Reads the user's tenant, creating it (tier free) if missing.
    async fn tenant(&self, subject: &str, now: DateTime<Utc>) -> Result<Tenant, StoreError> {
        let id = user_tenant(subject);
        if let Some(tenant) = self.tenants.get(&id).await? {
            return Ok(tenant);
        }
        let tenant = Tenant {
            id: id.clone(),
            name: format!(
                "chat user {}",
                subject.chars().take(150).collect::<String>()
            ),
            monthly_quota: self.tiers.free.monthly_tokens,
            billing_day: BillingDay::try_from(1).expect("1 is a billing day"),
            tier: Tier::Free,
            webhooks: Vec::new(),
            enabled: true,
            signing_secret: signing_secret(),
            previous_signing_secret: None,
            created_at: now,
        };
        // The key is never shown: chat users sign in with JWTs, and the
        // tenant exists for metering. A concurrent creator may win.
        if let Err(e) = self
            .tenants
            .create(&tenant, &ApiKey::generate().hash())
            .await
        {
            return self.tenants.get(&id).await?.ok_or(e);
        }
        Ok(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::store::MemoryChat;
    use crate::metering::tenants::MemoryTenants;

    fn users(chat: Arc<MemoryChat>, tenants: Arc<MemoryTenants>) -> Users {
        Users::new(chat, tenants, Tiers::default())
    }

    #[tokio::test]
    async fn first_sign_in_creates_the_user_and_a_free_tenant() {
        let (chat, tenants) = (
            Arc::new(MemoryChat::default()),
            Arc::new(MemoryTenants::default()),
        );
        let now = Utc::now();
        let tenant = users(chat.clone(), tenants.clone())
            .sign_in("user_1", now)
            .await
            .unwrap();
        assert_eq!(
            (tenant.id.clone(), tenant.tier),
            (user_tenant("user_1"), Tier::Free)
        );
        assert_eq!(tenants.get(&tenant.id).await.unwrap(), Some(tenant));
        assert_eq!(chat.snapshot().users["user_1"].created_at, now);
    }

    #[tokio::test]
    async fn activity_moves_at_most_once_a_minute() {
        let chat = Arc::new(MemoryChat::default());
        let users = users(chat.clone(), Arc::new(MemoryTenants::default()));
        let start = Utc::now();
        users.sign_in("u", start).await.unwrap();
        users
            .sign_in("u", start + TimeDelta::seconds(30))
            .await
            .unwrap();
        assert_eq!(chat.snapshot().users["u"].last_active_at, start);
        let later = start + TimeDelta::seconds(61);
        users.sign_in("u", later).await.unwrap();
        assert_eq!(chat.snapshot().users["u"].last_active_at, later);
    }
}
