//! Tenants and their API keys.
//!
//! A tenant is created only through the admin API; ingest never creates one.
//! API keys are shown once, at creation or rotation: only their SHA-256 is
//! stored, so a leaked table does not leak keys. A rotated-out key keeps
//! working for a grace period so clients can roll over without downtime.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::types::{BillingDay, Invalid, TenantId};
use crate::clock::Clock;
use crate::config::{ConfigError, Env};
use crate::store::{Outage, StoreError, page_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Pro,
    Enterprise,
}

/// A webhook endpoint: an absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(String);

impl TryFrom<String> for WebhookUrl {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        let rest = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))
            .ok_or_else(|| Invalid(format!("webhook {value:?} must be an http(s) URL")))?;
        // A host name or address, an optional port, then anything printable.
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (host, port) = match rest[..host_end].rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (&rest[..host_end], None),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !host.starts_with(['.', '-']);
        let port_ok = port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        let printable = value.bytes().all(|b| b.is_ascii_graphic());
        if !host_ok || !port_ok || !printable || value.len() > 2048 {
            return Err(Invalid(format!("webhook {value:?} is not a valid URL")));
        }
        Ok(Self(value))
    }
}

impl From<WebhookUrl> for String {
    fn from(value: WebhookUrl) -> String {
        value.0
    }
}

impl WebhookUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most this many webhooks per tenant.
pub const MAX_WEBHOOKS: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub monthly_quota: u64,
    pub billing_day: BillingDay,
    pub tier: Tier,
    pub webhooks: Vec<WebhookUrl>,
    pub enabled: bool,
    /// Standard Webhooks signing secret (`whsec_` + base64).
    pub signing_secret: String,
    /// The secret a rotation replaced: webhooks are signed with both until
    /// it retires, so receivers can switch without a gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_signing_secret: Option<RetiringSecret>,
    pub created_at: DateTime<Utc>,
}

/// A signing secret still in use until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringSecret {
    pub secret: String,
    pub until: DateTime<Utc>,
}

impl Tenant {
    /// The secrets webhooks are signed with at `now`: the current one, and
    /// the previous one while it has not retired.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<String> {
        let previous = self
            .previous_signing_secret
            .as_ref()
            .filter(|p| p.until > now)
            .map(|p| p.secret.clone());
        std::iter::once(self.signing_secret.clone())
            .chain(previous)
            .collect()
    }
}

/// `POST /admin/tenants`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub name: String,
    pub monthly_quota: u64,
    pub billing_day: BillingDay,
    pub tier: Tier,
    #[serde(default)]
    pub webhooks: Vec<WebhookUrl>,
}

/// `PATCH /admin/tenants/{id}`: only the fields present change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub monthly_quota: Option<u64>,
    pub billing_day: Option<BillingDay>,
    pub tier: Option<Tier>,
    pub webhooks: Option<Vec<WebhookUrl>>,
    pub enabled: Option<bool>,
    /// Set by [`rotate_signing_secret`], never by a client's PATCH.
    #[serde(skip)]
    pub signing: Option<(String, RetiringSecret)>,
}

fn check_name(name: &str) -> Result<(), Invalid> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        Err(Invalid("name must be 1 to 200 characters".to_owned()))
    } else {
        Ok(())
    }
}

fn check_quota(quota: u64) -> Result<(), Invalid> {
    if quota == 0 {
        Err(Invalid("monthly_quota must be at least 1".to_owned()))
    } else {
        Ok(())
    }
}

fn check_webhooks(webhooks: &[WebhookUrl]) -> Result<(), Invalid> {
    if webhooks.len() > MAX_WEBHOOKS {
        Err(Invalid(format!("at most {MAX_WEBHOOKS} webhooks")))
    } else {
        Ok(())
    }
}

impl NewTenant {
    /// Checks what the types cannot, then builds the tenant.
    pub fn into_tenant(self, now: DateTime<Utc>) -> Result<Tenant, Invalid> {
        check_name(&self.name)?;
        check_quota(self.monthly_quota)?;
        check_webhooks(&self.webhooks)?;
        Ok(Tenant {
            id: TenantId::generate(),
            name: self.name.trim().to_owned(),
            monthly_quota: self.monthly_quota,
            billing_day: self.billing_day,
            tier: self.tier,
            webhooks: self.webhooks,
            enabled: true,
            signing_secret: signing_secret(),
            previous_signing_secret: None,
            created_at: now,
        })
    }
}

impl TenantPatch {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        if let Some(quota) = self.monthly_quota {
            check_quota(quota)?;
        }
        if let Some(webhooks) = &self.webhooks {
            check_webhooks(webhooks)?;
        }
        Ok(())
    }

    pub fn apply(self, tenant: &mut Tenant) {
        if let Some(name) = self.name {
            tenant.name = name.trim().to_owned();
        }
        if let Some(quota) = self.monthly_quota {
            tenant.monthly_quota = quota;
        }
        if let Some(day) = self.billing_day {
            tenant.billing_day = day;
        }
        if let Some(tier) = self.tier {
            tenant.tier = tier;
        }
        if let Some(webhooks) = self.webhooks {
            tenant.webhooks = webhooks;
        }
        if let Some(enabled) = self.enabled {
            tenant.enabled = enabled;
        }
        if let Some((secret, previous)) = self.signing {
            tenant.signing_secret = secret;
            tenant.previous_signing_secret = Some(previous);
        }
    }
}

/// 32 random bytes from the OS RNG (two v4 UUIDs' random bits are 244; the
/// hex of two UUIDs' digest is plenty for a bearer secret).
fn random_hex(uuids: usize) -> String {
    (0..uuids)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect()
}

pub fn signing_secret() -> String {
    use base64::Engine;
    let bytes: Vec<u8> = Sha256::digest(random_hex(2)).to_vec();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A tenant API key in clear: exists only in the response that creates it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl ApiKey {
    pub const PREFIX: &'static str = "igk_";

    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, random_hex(2)))
    }

    /// Reads a presented key; anything not shaped like a key is rejected
    /// before it costs a lookup.
    pub fn parse(presented: &str) -> Option<Self> {
        let hex = presented.strip_prefix(Self::PREFIX)?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(presented.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash(crate::hex(&Sha256::digest(self.0.as_bytes())))
    }
}

/// SHA-256 of an API key, hex: what the tenants table stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyHash(String);

impl KeyHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One page of tenants.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPage {
    pub tenants: Vec<Tenant>,
    /// Opaque; pass back to get the next page.
    pub next: Option<String>,
}

/// Where tenants and their key hashes are kept (DynamoDB in production).
#[async_trait::async_trait]
pub trait TenantStore: Send + Sync {
    /// Creates the tenant and its key; fails if the tenant exists.
    async fn create(&self, tenant: &Tenant, key_hash: &KeyHash) -> Result<(), StoreError>;

    /// Sees every write completed before it was asked (strongly
    /// consistent), as `tenant_of_key` does: [`CachedKeys`]'s bound on how
    /// long a stopped key works rests on it.
    async fn get(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;

    /// The tenants of `ids` that exist, as one read where the store can
    /// (the rollup reads a delivery's tenants at once).
    async fn get_many(&self, ids: &[TenantId]) -> Result<Vec<Tenant>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(self.get(id).await?);
        }
        Ok(found)
    }

    /// The tenant a key belongs to, if the key exists and has not expired.
    async fn tenant_of_key(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<TenantId>, StoreError>;

    /// The tenant key `hash` belongs to, if the key exists and has not
    /// expired: the key, then the profile it names.
    async fn tenant_by_key(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Tenant>, StoreError> {
        match self.tenant_of_key(hash, now).await? {
            Some(id) => self.get(&id).await,
            None => Ok(None),
        }
    }

    /// Tenant `id`, if key `hash` still belongs to it and has not expired:
    /// a key looked up before, checked again. The key and the profile are
    /// read together where the store can (one call instead of two), as
    /// strongly consistent as `get`.
    async fn recheck_key(
        &self,
        hash: &KeyHash,
        id: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Option<Tenant>, StoreError> {
        Ok(self
            .tenant_by_key(hash, now)
            .await?
            .filter(|tenant| &tenant.id == id))
    }

    /// One page of tenants, in storage order.
    async fn list(&self, limit: usize, cursor: Option<&str>) -> Result<TenantPage, StoreError>;

    /// Applies `patch`; `None` if there is no such tenant.
    async fn update(
        &self,
        id: &TenantId,
        patch: &TenantPatch,
    ) -> Result<Option<Tenant>, StoreError>;

    /// Makes `new` the tenant's key; the old one keeps working until
    /// `grace_until`. `None` if there is no such tenant.
    async fn rotate_key(
        &self,
        id: &TenantId,
        new: &KeyHash,
        grace_until: DateTime<Utc>,
    ) -> Result<Option<()>, StoreError>;

    /// Deletes the tenant (every key of it stops working, as a key finds its
    /// tenant by id) and leaves a tombstone until `remember_until`; `false`
    /// if there is no such tenant.
    async fn delete(
        &self,
        id: &TenantId,
        now: DateTime<Utc>,
        remember_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The billing day of `id` if it was deleted (its tombstone, still
    /// kept, says it): events it sent before are counted in their period.
    async fn deleted(&self, id: &TenantId) -> Result<Option<BillingDay>, StoreError>;
}

/// How long a deleted tenant is remembered: events of it still in the queue
/// (at most the queue's retention, 4 days) are counted, not retried.
pub const TOMBSTONE_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(14);

/// Stores a new tenant with a fresh API key: the key is returned once
/// (only its hash is stored).
pub async fn register(store: &dyn TenantStore, tenant: &Tenant) -> Result<ApiKey, StoreError> {
    let key = ApiKey::generate();
    store.create(tenant, &key.hash()).await?;
    tracing::info!(tenant = %tenant.id, "tenant created");
    Ok(key)
}

/// A new key, and how long the one it replaces keeps working.
#[derive(Debug)]
pub struct Rotated {
    pub key: ApiKey,
    pub previous_valid_until: DateTime<Utc>,
}

/// Gives tenant `id` a new key; the old one keeps working for `grace`.
/// `None` if there is no such tenant.
pub async fn rotate_key(
    store: &dyn TenantStore,
    id: &TenantId,
    grace: chrono::TimeDelta,
    now: DateTime<Utc>,
) -> Result<Option<Rotated>, StoreError> {
    let key = ApiKey::generate();
    let previous_valid_until = now + grace;
    let rotated = store
        .rotate_key(id, &key.hash(), previous_valid_until)
        .await?;
    if rotated.is_some() {
        tracing::info!(tenant = %id, "api key rotated");
    }
    Ok(rotated.map(|()| Rotated {
        key,
        previous_valid_until,
    }))
}

/// Gives tenant `id` a new webhook signing secret; the current one keeps
/// signing too (a second signature on every webhook) for `overlap`.
/// The updated tenant, or `None` if there is no such tenant.
pub async fn rotate_signing_secret(
    store: &dyn TenantStore,
    id: &TenantId,
    overlap: chrono::TimeDelta,
    now: DateTime<Utc>,
) -> Result<Option<Tenant>, StoreError> {
    let Some(tenant) = store.get(id).await? else {
        return Ok(None);
    };
    let previous = RetiringSecret {
        secret: tenant.signing_secret,
        until: now + overlap,
    };
    let patch = TenantPatch {
        signing: Some((signing_secret(), previous)),
        ..TenantPatch::default()
    };
    let rotated = store.update(id, &patch).await?;
    if rotated.is_some() {
        tracing::info!(tenant = %id, "signing secret rotated");
    }
    Ok(rotated)
}

/// Deletes tenant `id`: its keys stop working (in every warm instance once
/// [`CachedKeys::wait_out`] returns, which the admin API waits for), the
/// rollup still counts its events accepted before (the tombstone keeps its
/// billing day), and its usage stays until the usage table's TTLs
/// (docs/data-model.md). What else it owns is deleted after, by the caller;
/// so a tenant deleted before (its tombstone still kept) answers `true`
/// again, and a delete that failed after this step can be retried whole.
/// `false` if there is no such tenant, nor was lately.
pub async fn delete_tenant(
    store: &dyn TenantStore,
    id: &TenantId,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    if store.delete(id, now, now + TOMBSTONE_RETENTION).await? {
        tracing::info!(tenant = %id, "tenant deleted");
        return Ok(true);
    }
    Ok(store.deleted(id).await?.is_some())
}

/// Values remembered per warm instance for `ttl`, at most
/// [`REMEMBERED_ENTRIES`] (past it the map starts over: cheap, and bounded).
/// An entry's age counts from when its read was *asked*, so a value read
/// before a write the table had not yet applied is gone `ttl` after that
/// write at the latest.
struct Remembered<K, V> {
    ttl: std::time::Duration,
    entries: std::sync::Mutex<HashMap<K, (V, Instant)>>,
}

/// Entries remembered at most.
const REMEMBERED_ENTRIES: usize = 10_000;

impl<K: std::hash::Hash + Eq, V: Clone> Remembered<K, V> {
    fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            entries: std::sync::Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value remembered for `key`, and whether it is still fresh.
    fn recall(&self, key: &K) -> Option<(V, bool)> {
        self.entries()
            .get(key)
            .map(|(value, asked)| (value.clone(), asked.elapsed() < self.ttl))
    }

    fn get(&self, key: &K) -> Option<V> {
        self.recall(key)
            .and_then(|(value, fresh)| fresh.then_some(value))
    }

    /// Remembers `value`, read by a request sent at `asked`.
    fn put(&self, key: K, value: V, asked: Instant) {
        let mut entries = self.entries();
        if entries.len() >= REMEMBERED_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (value, asked));
    }
}

/// Tenants by API key, remembered per warm instance for `ttl`: ingest then
/// costs a table read per key per `ttl`, not per request. The reads are
/// strongly consistent and an entry ages from when its read was asked, so
/// a key deleted, disabled or expired is refused everywhere `ttl` after the
/// write (what [`CachedKeys::wait_out`] waits for). Unknown keys are
/// remembered too, so a flood of bad keys cannot hammer the table.
pub struct CachedKeys {
    tenants: Arc<dyn TenantStore>,
    /// Says whether a rotated-out key is past its grace period.
    clock: Arc<dyn Clock>,
    remembered: Remembered<KeyHash, Option<Tenant>>,
}

impl CachedKeys {
    pub fn new(
        tenants: Arc<dyn TenantStore>,
        ttl: std::time::Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            tenants,
            clock,
            remembered: Remembered::new(ttl),
        }
    }

    /// The tenant `hash` belongs to, if any.
    pub async fn tenant(&self, hash: &KeyHash) -> Result<Option<Tenant>, StoreError> {
        let known = match self.remembered.recall(hash) {
            Some((tenant, true)) => return Ok(tenant),
            Some((tenant, false)) => tenant.map(|t| t.id),
            None => None,
        };
        let asked = Instant::now();
        let now = self.clock.now();
        let tenant = match known {
            // Its tenant is known: one read of the key and the profile.
            Some(id) => self.tenants.recheck_key(hash, &id, now).await?,
            None => self.tenants.tenant_by_key(hash, now).await?,
        };
        self.remembered.put(hash.clone(), tenant.clone(), asked);
        Ok(tenant)
    }

    /// `KEY_CACHE_SECONDS` (default 1): how long a lookup is remembered,
    /// so both the most a stopped key keeps working and how long stopping
    /// one waits. The template sets it once for every function.
    pub fn ttl_from_env(env: &Env) -> Result<std::time::Duration, ConfigError> {
        Ok(std::time::Duration::from_secs(
            env.parse_or("KEY_CACHE_SECONDS", 1)?,
        ))
    }

    /// Returns once every lookup remembered before the call, in any
    /// instance with the same `ttl`, has expired: after a write that stops
    /// keys, the keys are refused everywhere when this returns.
    pub async fn wait_out(&self) {
        tokio::time::sleep(self.remembered.ttl).await;
    }
}

/// Tenant profiles by id, remembered per warm instance for `ttl`: the
/// rollup reads a tenant once per `ttl`, not once per delivery. A change to
/// a tenant (quota, billing day, webhooks, deletion) reaches a warm
/// instance within `ttl`. Only profiles
/// found are remembered: a tenant not found is asked for again, and whether
/// it was deleted is always read from the table.
#[derive(Clone)]
pub struct CachedProfiles {
    tenants: Arc<dyn TenantStore>,
    remembered: Arc<Remembered<TenantId, Tenant>>,
}

impl CachedProfiles {
    pub fn new(tenants: Arc<dyn TenantStore>, ttl: std::time::Duration) -> Self {
        Self {
            tenants,
            remembered: Arc::new(Remembered::new(ttl)),
        }
    }

    /// The profiles of `ids` that exist: those remembered, the rest in one
    /// read.
    pub async fn get_many(&self, ids: &[TenantId]) -> Result<Vec<Tenant>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        let mut unknown = Vec::new();
        for id in ids {
            match self.remembered.get(id) {
                Some(tenant) => found.push(tenant),
                None => unknown.push(id.clone()),
            }
        }
        if !unknown.is_empty() {
            let asked = Instant::now();
            for tenant in self.tenants.get_many(&unknown).await? {
                self.remembered
                    .put(tenant.id.clone(), tenant.clone(), asked);
                found.push(tenant);
            }
        }
        Ok(found)
    }

    /// Whether tenant `id` exists now: read from the table (strongly
    /// consistent), never remembered.
    pub async fn exists(&self, id: &TenantId) -> Result<bool, StoreError> {
        Ok(self.tenants.get(id).await?.is_some())
    }

    /// Tenant `id`'s billing day if it was deleted (its tombstone), never
    /// remembered.
    pub async fn deleted(&self, id: &TenantId) -> Result<Option<BillingDay>, StoreError> {
        self.tenants.deleted(id).await
    }
}

/// Tenants in memory: the double for handler tests. Cursors are offsets;
/// `outage` makes every call fail as an unreachable table would.
#[derive(Debug, Default)]
pub struct MemoryTenants {
    data: std::sync::Mutex<TenantData>,
    pub outage: Outage,
}

#[derive(Debug, Default)]
struct TenantData {
    /// In creation order.
    tenants: Vec<Tenant>,
    /// Key hash → tenant and, once rotated out, when it stops working.
    keys: HashMap<KeyHash, (TenantId, Option<DateTime<Utc>>)>,
    /// Tombstones: each deleted tenant's billing day.
    deleted: HashMap<TenantId, BillingDay>,
}

impl MemoryTenants {
    fn data(&self) -> Result<std::sync::MutexGuard<'_, TenantData>, StoreError> {
        self.outage.check("tenants table")?;
        Ok(self.data.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait::async_trait]
impl TenantStore for MemoryTenants {
    async fn create(&self, tenant: &Tenant, key_hash: &KeyHash) -> Result<(), StoreError> {
        let mut data = self.data()?;
        if data.tenants.iter().any(|t| t.id == tenant.id) {
            return Err(StoreError::Unavailable {
                store: "tenants table",
                operation: "create",
                message: format!("tenant {} exists", tenant.id),
            });
        }
        data.tenants.push(tenant.clone());
        data.keys
            .insert(key_hash.clone(), (tenant.id.clone(), None));
        Ok(())
    }

    async fn get(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        Ok(self.data()?.tenants.iter().find(|t| &t.id == id).cloned())
    }

    async fn tenant_of_key(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<TenantId>, StoreError> {
        Ok(match self.data()?.keys.get(hash) {
            Some((_, Some(until))) if *until <= now => None,
            Some((id, _)) => Some(id.clone()),
            None => None,
        })
    }

    async fn list(&self, limit: usize, cursor: Option<&str>) -> Result<TenantPage, StoreError> {
        let data = self.data()?;
        let (tenants, next) = page_of(&data.tenants, limit, cursor)?;
        Ok(TenantPage { tenants, next })
    }

    async fn update(
        &self,
        id: &TenantId,
        patch: &TenantPatch,
    ) -> Result<Option<Tenant>, StoreError> {
        let mut data = self.data()?;
        Ok(data.tenants.iter_mut().find(|t| &t.id == id).map(|t| {
            patch.clone().apply(t);
            t.clone()
        }))
    }

    async fn rotate_key(
        &self,
        id: &TenantId,
        new: &KeyHash,
        grace_until: DateTime<Utc>,
    ) -> Result<Option<()>, StoreError> {
        let mut data = self.data()?;
        if !data.tenants.iter().any(|t| &t.id == id) {
            return Ok(None);
        }
        for (tenant, until) in data.keys.values_mut() {
            if tenant == id && until.is_none() {
                *until = Some(grace_until);
            }
        }
        data.keys.insert(new.clone(), (id.clone(), None));
        Ok(Some(()))
    }

    async fn delete(
        &self,
        id: &TenantId,
        _now: DateTime<Utc>,
        _remember_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut data = self.data()?;
        let Some(at) = data.tenants.iter().position(|t| &t.id == id) else {
            return Ok(false);
        };
        let tenant = data.tenants.remove(at);
        data.keys.retain(|_, (owner, _)| owner != id);
        data.deleted.insert(tenant.id, tenant.billing_day);
        Ok(true)
    }

    async fn deleted(&self, id: &TenantId) -> Result<Option<BillingDay>, StoreError> {
        Ok(self.data()?.deleted.get(id).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rotated_signing_secret_signs_beside_the_new_one_for_the_overlap() {
        let store = MemoryTenants::default();
        let new: NewTenant = serde_json::from_value(serde_json::json!(
            {"name": "Acme", "monthly_quota": 100, "billing_day": 1, "tier": "free"}
        ))
        .unwrap();
        let now = Utc::now();
        let tenant = new.into_tenant(now).unwrap();
        register(&store, &tenant).await.unwrap();
        let overlap = chrono::TimeDelta::hours(24);
        let rotated = rotate_signing_secret(&store, &tenant.id, overlap, now)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(rotated.signing_secret, tenant.signing_secret);
        assert_eq!(
            rotated.signing_secrets(now),
            [
                rotated.signing_secret.clone(),
                tenant.signing_secret.clone()
            ]
        );
        assert_eq!(rotated.signing_secrets(now + overlap).len(), 1);
        assert_eq!(store.get(&tenant.id).await.unwrap(), Some(rotated));
        let unknown = TenantId::generate();
        assert_eq!(
            rotate_signing_secret(&store, &unknown, overlap, now)
                .await
                .unwrap(),
            None
        );
    }

    fn acme(now: DateTime<Utc>) -> Tenant {
        let new: NewTenant = serde_json::from_value(serde_json::json!(
            {"name": "Acme", "monthly_quota": 100, "billing_day": 1, "tier": "free"}
        ))
        .unwrap();
        new.into_tenant(now).unwrap()
    }

    /// A profile found is read once per TTL (the table may even be down
    /// meanwhile); one not found is asked for again; after the TTL a change
    /// shows.
    #[tokio::test]
    async fn profiles_found_are_remembered_for_their_ttl() {
        let store = Arc::new(MemoryTenants::default());
        let ttl = std::time::Duration::from_millis(200);
        let profiles = CachedProfiles::new(store.clone(), ttl);
        let tenant = acme(Utc::now());
        let id = std::slice::from_ref(&tenant.id);
        assert!(profiles.get_many(id).await.unwrap().is_empty());
        register(store.as_ref(), &tenant).await.unwrap();
        let found = profiles.get_many(id).await.unwrap();
        assert_eq!(found, std::slice::from_ref(&tenant));

        store.outage.begin();
        let remembered = profiles.get_many(id).await.unwrap();
        assert_eq!(remembered, std::slice::from_ref(&tenant));
        let other = TenantId::generate();
        assert!(
            profiles
                .get_many(&[tenant.id.clone(), other])
                .await
                .is_err()
        );
        store.outage.end();

        let patch = TenantPatch {
            monthly_quota: Some(500),
            ..TenantPatch::default()
        };
        store.update(&tenant.id, &patch).await.unwrap();
        let stale = profiles.get_many(id).await.unwrap();
        assert_eq!(stale[0].monthly_quota, 100);
        tokio::time::sleep(ttl).await;
        let fresh = profiles.get_many(id).await.unwrap();
        assert_eq!(fresh[0].monthly_quota, 500);
    }

    /// A key looked up before its tenant is deleted still answers from
    /// memory, until `wait_out` (what the admin API waits) has passed.
    #[tokio::test(start_paused = true)]
    async fn a_deleted_tenants_key_is_refused_once_wait_out_returns() {
        let store = Arc::new(MemoryTenants::default());
        let clock = Arc::new(crate::clock::SystemClock);
        let keys = CachedKeys::new(store.clone(), std::time::Duration::from_secs(1), clock);
        let tenant = acme(Utc::now());
        let key = register(store.as_ref(), &tenant).await.unwrap().hash();
        assert_eq!(keys.tenant(&key).await.unwrap(), Some(tenant.clone()));
        assert!(
            delete_tenant(store.as_ref(), &tenant.id, Utc::now())
                .await
                .unwrap()
        );
        assert_eq!(keys.tenant(&key).await.unwrap(), Some(tenant));
        keys.wait_out().await;
        assert_eq!(keys.tenant(&key).await.unwrap(), None);
    }

    /// A repeat delete answers as the first did, so one that failed after
    /// the tenant went can be retried whole; an unknown id is not deleted.
    #[tokio::test]
    async fn deleting_a_tenant_again_is_deleting_it() {
        let store = MemoryTenants::default();
        let tenant = acme(Utc::now());
        register(&store, &tenant).await.unwrap();
        for _ in 0..2 {
            assert!(delete_tenant(&store, &tenant.id, Utc::now()).await.unwrap());
        }
        assert!(store.get(&tenant.id).await.unwrap().is_none());
        let unknown = TenantId::generate();
        assert!(!delete_tenant(&store, &unknown, Utc::now()).await.unwrap());
    }

    /// A value read slowly is remembered for what is left of the TTL after
    /// its read was asked, so it cannot outlive a write made meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_remembered_value_ages_from_when_its_read_was_asked() {
        let remembered = Remembered::new(std::time::Duration::from_secs(1));
        let asked = Instant::now();
        tokio::time::advance(std::time::Duration::from_millis(600)).await;
        remembered.put("key", 1, asked);
        assert_eq!(remembered.get(&"key"), Some(1));
        tokio::time::advance(std::time::Duration::from_millis(400)).await;
        assert_eq!(remembered.get(&"key"), None);
    }

    #[test]
    fn webhook_urls_are_printable_ascii_with_a_real_host() {
        for good in [
            "https://hooks.example.com/ingot",
            "http://127.0.0.1:8080/x?y=1",
            "https://a.test",
        ] {
            assert!(WebhookUrl::try_from(good.to_owned()).is_ok(), "{good}");
        }
        for bad in [
            "ftp://example.com",
            "https://",
            "https:///path",
            "https://\u{ff}\u{fa}\u{12}",
            "https://exa mple.com",
            "https://example.com/\u{e9}",
            "https://example.com:80a/",
            "https://.example.com",
            "https://user@example.com",
        ] {
            assert!(WebhookUrl::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_keys_round_trip_and_hash_stably() {
        let key = ApiKey::generate();
        let parsed = ApiKey::parse(key.expose()).unwrap();
        assert_eq!(parsed.hash(), key.hash());
        assert_eq!(key.hash().as_str().len(), 64);
        assert_ne!(ApiKey::generate().hash(), key.hash());
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
    }

    #[test]
    fn malformed_keys_are_rejected_without_a_lookup() {
        for bad in [
            "",
            "igk_",
            "igk_xyz",
            "Bearer igk_00",
            &format!("key_{}", "0".repeat(64)),
        ] {
            assert!(ApiKey::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn new_tenant_validates_name_and_webhooks() {
        let json = |name: &str, hooks: usize| {
            serde_json::json!({
                "name": name, "monthly_quota": 1000, "billing_day": 5, "tier": "pro",
                "webhooks": (0..hooks).map(|i| format!("https://hooks.example/{i}")).collect::<Vec<_>>(),
            })
        };
        let ok: NewTenant = serde_json::from_value(json("Acme", 2)).unwrap();
        let tenant = ok.into_tenant(Utc::now()).unwrap();
        assert!(tenant.enabled);
        assert!(tenant.signing_secret.starts_with("whsec_"));

        let blank: NewTenant = serde_json::from_value(json("  ", 0)).unwrap();
        assert!(blank.into_tenant(Utc::now()).is_err());
        let many: NewTenant = serde_json::from_value(json("Acme", 6)).unwrap();
        assert!(many.into_tenant(Utc::now()).is_err());
    }

    #[test]
    fn new_tenant_rejects_bad_fields() {
        let base =
            serde_json::json!({"name": "A", "monthly_quota": 1, "billing_day": 1, "tier": "free"});
        for (field, value) in [
            ("billing_day", serde_json::json!(29)),
            ("tier", serde_json::json!("gold")),
            ("monthly_quota", serde_json::json!(-1)),
            ("webhooks", serde_json::json!(["ftp://x"])),
            ("unexpected", serde_json::json!(1)),
        ] {
            let mut body = base.clone();
            body[field] = value;
            assert!(
                serde_json::from_value::<NewTenant>(body).is_err(),
                "{field}"
            );
        }
    }

    #[test]
    fn patch_changes_only_given_fields() {
        let mut tenant = serde_json::from_value::<NewTenant>(serde_json::json!({
            "name": "A", "monthly_quota": 1, "billing_day": 1, "tier": "free"
        }))
        .unwrap()
        .into_tenant(Utc::now())
        .unwrap();
        let patch: TenantPatch =
            serde_json::from_value(serde_json::json!({"monthly_quota": 50, "enabled": false}))
                .unwrap();
        patch.validate().unwrap();
        patch.apply(&mut tenant);
        assert_eq!(
            (tenant.monthly_quota, tenant.enabled, tenant.name.as_str()),
            (50, false, "A")
        );
    }
}
