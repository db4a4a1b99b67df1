//! Tenants in DynamoDB (layout: docs/data-model.md, "tenants").

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    Dynamo, batch_get, decode_cursor, encode_cursor, failed, from_item, is_condition_failure, n,
    put_new, s, to_item,
};
use crate::metering::tenants::{KeyHash, Tenant, TenantPage, TenantPatch, TenantStore};
use crate::metering::types::{BillingDay, TenantId};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "tenants table";

#[derive(Debug, Clone)]
pub struct DynamoTenants {
    dynamo: Dynamo,
    table: String,
}

/// The profile item: the tenant plus the hash of its current key.
#[derive(Serialize, Deserialize)]
struct ProfileItem {
    pk: String,
    sk: String,
    key_hash: String,
    #[serde(flatten)]
    tenant: Tenant,
}

#[derive(Serialize, Deserialize)]
struct KeyItem {
    pk: String,
    sk: String,
    tenant: TenantId,
    /// Set when the key was rotated out: it works until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
}

impl KeyItem {
    /// Not rotated out, or still in its grace period. TTL deletion is lazy
    /// (and never happens in the emulator), so this is checked on read.
    fn live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| at > now.timestamp())
    }
}

const PROFILE: &str = "PROFILE";
const KEY: &str = "KEY";
/// A deleted tenant's tombstone.
const DELETED: &str = "DELETED";

/// A deleted tenant's tombstone: what counting its events still queued
/// needs.
#[derive(Deserialize)]
struct TombstoneItem {
    billing_day: BillingDay,
}

fn tenant_pk(id: &TenantId) -> String {
    format!("TENANT#{id}")
}

fn key_pk(hash: &KeyHash) -> String {
    format!("KEY#{}", hash.as_str())
}

fn key(pk: String, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

impl DynamoTenants {
    pub fn new(dynamo: Dynamo, table: &str) -> Self {
        Self {
            dynamo,
            table: table.to_owned(),
        }
    }

    async fn get_item(
        &self,
        pk: String,
        sk: &str,
        consistent: bool,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        Ok(self
            .dynamo
            .sdk
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item)
    }
}

#[async_trait::async_trait]
impl TenantStore for DynamoTenants {
    /// Stores a new tenant and its first key, atomically.
    async fn create(&self, tenant: &Tenant, key_hash: &KeyHash) -> Result<(), StoreError> {
        let profile = ProfileItem {
            pk: tenant_pk(&tenant.id),
            sk: PROFILE.to_owned(),
            key_hash: key_hash.as_str().to_owned(),
            tenant: tenant.clone(),
        };
        let key_item = KeyItem {
            pk: key_pk(key_hash),
            sk: KEY.to_owned(),
            tenant: tenant.id.clone(),
            expires_at: None,
        };
        let put = |item| put_new(STORE, &self.table, item);
        self.dynamo
            .sdk
            .transact_write_items()
            .transact_items(put(to_item(STORE, &profile)?)?)
            .transact_items(put(to_item(STORE, &key_item)?)?)
            .send()
            .await
            .map_err(|e| failed(STORE, "TransactWriteItems", &e))?;
        Ok(())
    }

    async fn get(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let item = self.get_item(tenant_pk(id), PROFILE, true).await?;
        item.map(|i| from_item::<ProfileItem>(STORE, i).map(|p| p.tenant))
            .transpose()
    }

    /// One `BatchGetItem` per 100 tenants.
    async fn get_many(&self, ids: &[TenantId]) -> Result<Vec<Tenant>, StoreError> {
        let keys = ids.iter().map(|id| key(tenant_pk(id), PROFILE)).collect();
        let items = batch_get(STORE, &self.dynamo, &self.table, keys, false, None).await?;
        items
            .into_iter()
            .map(|item| from_item::<ProfileItem>(STORE, item).map(|p| p.tenant))
            .collect()
    }

    /// The tenant a key belongs to, if the key exists and has not expired.
    async fn tenant_of_key(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<TenantId>, StoreError> {
        let Some(item) = self.get_item(key_pk(hash), KEY, true).await? else {
            return Ok(None);
        };
        let key: KeyItem = from_item(STORE, item)?;
        Ok(key.live(now).then_some(key.tenant))
    }

    /// One consistent `BatchGetItem` of the key and the profile.
    async fn recheck_key(
        &self,
        hash: &KeyHash,
        id: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Option<Tenant>, StoreError> {
        let keys = vec![key(key_pk(hash), KEY), key(tenant_pk(id), PROFILE)];
        let (mut key_live, mut profile) = (false, None);
        for item in batch_get(STORE, &self.dynamo, &self.table, keys, true, None).await? {
            if matches!(item.get("sk"), Some(AttributeValue::S(sk)) if sk == KEY) {
                let key: KeyItem = from_item(STORE, item)?;
                key_live = key.live(now) && &key.tenant == id;
            } else {
                profile = Some(from_item::<ProfileItem>(STORE, item)?.tenant);
            }
        }
        Ok(profile.filter(|_| key_live))
    }

    /// One page of tenants, oldest storage order first.
    async fn list(&self, limit: usize, cursor: Option<&str>) -> Result<TenantPage, StoreError> {
        let start = cursor.map(decode_cursor).transpose()?;
        let page = self
            .dynamo
            .sdk
            .scan()
            .table_name(&self.table)
            .filter_expression("sk = :profile")
            .expression_attribute_values(":profile", s(PROFILE))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| failed(STORE, "Scan", &e))?;
        let tenants = page
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|i| from_item::<ProfileItem>(STORE, i).map(|p| p.tenant))
            .collect::<Result<_, _>>()?;
        Ok(TenantPage {
            tenants,
            next: page.last_evaluated_key.as_ref().map(encode_cursor),
        })
    }

    /// Applies `patch` field by field (concurrent patches of different
    /// fields both land); `None` if the tenant does not exist.
    async fn update(
        &self,
        id: &TenantId,
        patch: &TenantPatch,
    ) -> Result<Option<Tenant>, StoreError> {
        let mut sets = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        let mut set = |field: &str, value: AttributeValue| {
            sets.push(format!("#{field} = :{field}"));
            names.insert(format!("#{field}"), field.to_owned());
            values.insert(format!(":{field}"), value);
        };
        if let Some(v) = &patch.name {
            set("name", attribute(v)?);
        }
        if let Some(v) = &patch.monthly_quota {
            set("monthly_quota", attribute(v)?);
        }
        if let Some(v) = &patch.billing_day {
            set("billing_day", attribute(v)?);
        }
        if let Some(v) = &patch.tier {
            set("tier", attribute(v)?);
        }
        if let Some(v) = &patch.webhooks {
            set("webhooks", attribute(v)?);
        }
        if let Some(v) = &patch.enabled {
            set("enabled", attribute(v)?);
        }
        if let Some((secret, previous)) = &patch.signing {
            set("signing_secret", attribute(secret)?);
            set("previous_signing_secret", attribute(previous)?);
        }
        if sets.is_empty() {
            return self.get(id).await;
        }
        let result = self
            .dynamo
            .sdk
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(id), PROFILE)))
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => out
                .attributes
                .map(|i| from_item::<ProfileItem>(STORE, i).map(|p| p.tenant))
                .transpose(),
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(failed(STORE, "UpdateItem", &e)),
        }
    }

    /// Makes `new` the tenant's key; the old one works until `grace_until`.
    /// `None` if the tenant does not exist.
    async fn rotate_key(
        &self,
        id: &TenantId,
        new: &KeyHash,
        grace_until: DateTime<Utc>,
    ) -> Result<Option<()>, StoreError> {
        let Some(item) = self.get_item(tenant_pk(id), PROFILE, true).await? else {
            return Ok(None);
        };
        let profile: ProfileItem = from_item(STORE, item)?;
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::corrupt(STORE, e);

        let new_key = Put::builder()
            .table_name(&self.table)
            .set_item(Some(to_item(
                STORE,
                &KeyItem {
                    pk: key_pk(new),
                    sk: KEY.to_owned(),
                    tenant: id.clone(),
                    expires_at: None,
                },
            )?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build)?;
        let expire_old = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(format!("KEY#{}", profile.key_hash), KEY)))
            .update_expression("SET expires_at = :at")
            .expression_attribute_values(":at", n(grace_until.timestamp()))
            .build()
            .map_err(build)?;
        // Guards against a concurrent rotation from the same old key.
        let point_profile = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(id), PROFILE)))
            .update_expression("SET key_hash = :new")
            .condition_expression("key_hash = :old")
            .expression_attribute_values(":new", s(new.as_str()))
            .expression_attribute_values(":old", s(&profile.key_hash))
            .build()
            .map_err(build)?;
        self.dynamo
            .sdk
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(new_key).build())
            .transact_items(TransactWriteItem::builder().update(expire_old).build())
            .transact_items(TransactWriteItem::builder().update(point_profile).build())
            .send()
            .await
            .map_err(|e| failed(STORE, "TransactWriteItems", &e))?;
        Ok(Some(()))
    }

    /// One transaction: the profile and the current key go, a tombstone
    /// (`sk = DELETED`, with a TTL) comes. Keys still in a rotation's grace
    /// find no profile, so they stop too.
    async fn delete(
        &self,
        id: &TenantId,
        now: DateTime<Utc>,
        remember_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let Some(item) = self.get_item(tenant_pk(id), PROFILE, true).await? else {
            return Ok(false);
        };
        let profile: ProfileItem = from_item(STORE, item)?;
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::corrupt(STORE, e);
        let profile_gone = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(id), PROFILE)))
            .condition_expression("key_hash = :key")
            .expression_attribute_values(":key", s(&profile.key_hash))
            .build()
            .map_err(build)?;
        let key_gone = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(format!("KEY#{}", profile.key_hash), KEY)))
            .build()
            .map_err(build)?;
        let tombstone = Put::builder()
            .table_name(&self.table)
            .set_item(Some(HashMap::from([
                ("pk".to_owned(), s(tenant_pk(id))),
                ("sk".to_owned(), s(DELETED)),
                ("deleted_at".to_owned(), s(now.to_rfc3339())),
                (
                    "billing_day".to_owned(),
                    attribute(&profile.tenant.billing_day)?,
                ),
                ("expires_at".to_owned(), n(remember_until.timestamp())),
            ])))
            .build()
            .map_err(build)?;
        // A concurrent rotation or deletion cancels it: a 503 to retry.
        self.dynamo
            .sdk
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().delete(profile_gone).build())
            .transact_items(TransactWriteItem::builder().delete(key_gone).build())
            .transact_items(TransactWriteItem::builder().put(tombstone).build())
            .send()
            .await
            .map_err(|e| failed(STORE, "TransactWriteItems", &e))?;
        Ok(true)
    }

    async fn deleted(&self, id: &TenantId) -> Result<Option<BillingDay>, StoreError> {
        let item = self.get_item(tenant_pk(id), DELETED, false).await?;
        item.map(|i| from_item::<TombstoneItem>(STORE, i).map(|t| t.billing_day))
            .transpose()
    }
}

fn attribute<T: Serialize>(value: &T) -> Result<AttributeValue, StoreError> {
    serde_dynamo::to_attribute_value(value).map_err(|e| StoreError::corrupt(STORE, e))
}
