//! Usage counters in DynamoDB (layout: docs/data-model.md, "usage"): the
//! exactly-once [`Ledger`] the rollup writes through, and the reads the usage
//! API serves from.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::dynamo::{Dynamo, Failure, Text, n_json, s_json};
use super::{batch_get, failed, query_all, s};
use crate::metering::rollup::{Added, Claim, Counter, Ledger, Owner, Share};
use crate::metering::types::{TenantId, UsageEvent};
use crate::metering::usage::{MINUTE_RETENTION, MinuteUsage, PeriodUsage, UsageReader};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "usage table";

/// Claims outlive the 35 days an event may be back-dated, with margin.
const DEDUP_RETENTION: TimeDelta = TimeDelta::days(40);
/// DynamoDB's limit on statements per `BatchExecuteStatement`.
const CLAIMS_PER_CALL: usize = 25;

#[derive(Debug, Clone)]
pub struct DynamoLedger {
    /// Claims and counters go through its signed client (every delivery
    /// writes them), the usage API's reads through its SDK client.
    dynamo: Dynamo,
    table: String,
    /// The claim statement, built once: `INSERT` fails on an existing item,
    /// a conditional put that batches.
    insert: String,
}

fn minute_key(minute: DateTime<Utc>) -> String {
    minute.format("%Y-%m-%dT%H:%MZ").to_string()
}

fn counter_key(tenant: &TenantId, counter: &Counter) -> (String, String) {
    match counter {
        Counter::Minute { minute } => (format!("ROLLUP#{tenant}"), minute_key(*minute)),
        Counter::Period { period } => (format!("TENANT#{tenant}"), format!("PERIOD#{period}")),
    }
}

/// A counter's per-feature attributes: `t#<feature>` tokens and
/// `e#<feature>` events (`#` is never in a feature).
const FEATURE_TOKENS: &str = "t#";
const FEATURE_EVENTS: &str = "e#";

/// `(feature, tokens, events)` of each feature a counter item holds.
fn features_of(item: &HashMap<String, AttributeValue>) -> impl Iterator<Item = (&str, u64, u64)> {
    item.keys().filter_map(|name| {
        let feature = name.strip_prefix(FEATURE_TOKENS)?;
        let events = number(item, &format!("{FEATURE_EVENTS}{feature}"));
        Some((feature, number(item, name), events))
    })
}

fn claim_pk(tenant: &TenantId, event: &UsageEvent) -> String {
    format!("EVENT#{tenant}#{}", event.id)
}

fn key(pk: String, sk: String) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map_or("", String::as_str)
}

/// Who a stored claim names; a claim without `claimed_by` was written with
/// its counters in one transaction (before claims named messages).
fn owner(item: &HashMap<String, AttributeValue>) -> Owner {
    text(item, "claimed_by")
        .parse()
        .map_or(Owner::Counted, Owner::Message)
}

impl DynamoLedger {
    pub fn new(dynamo: Dynamo, table: &str) -> Self {
        Self {
            dynamo,
            insert: format!(
                "INSERT INTO \"{table}\" VALUE {{'pk': ?, 'sk': 'EVENT', 'claimed_by': ?, \
                 'feature': ?, 'tokens': ?, 'timestamp': ?, 'expires_at': ?}}"
            ),
            table: table.to_owned(),
        }
    }

    /// Claims up to [`CLAIMS_PER_CALL`] events: whether each claim is new
    /// (else the event was claimed before), and the write units spent.
    async fn insert_claims(&self, claims: &[Claim<'_>]) -> Result<(Vec<bool>, f64), StoreError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Output {
            #[serde(default)]
            responses: Vec<Response>,
            #[serde(default)]
            consumed_capacity: Vec<Consumed>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Response {
            error: Option<StatementError>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct StatementError {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let expires = n_json((Utc::now() + DEDUP_RETENTION).timestamp());
        let statements: Vec<Value> = claims
            .iter()
            .map(|claim| {
                let event = claim.event;
                let parameters = [
                    s_json(claim_pk(claim.tenant, event)),
                    s_json(claim.seq.key()),
                    s_json(event.feature.as_str()),
                    n_json(event.tokens.get()),
                    s_json(event.timestamp.to_rfc3339()),
                    expires.clone(),
                ];
                json!({"Statement": self.insert, "Parameters": parameters})
            })
            .collect();
        let input = json!({"Statements": statements, "ReturnConsumedCapacity": "TOTAL"});
        let out: Output = self
            .dynamo
            .expect(STORE, "BatchExecuteStatement", &input)
            .await?;
        let units = out.consumed_capacity.iter().map(|c| c.capacity_units).sum();
        let mut fresh = Vec::with_capacity(claims.len());
        for response in out.responses {
            fresh.push(match response.error {
                None => true,
                Some(e) if e.code == "DuplicateItem" => false,
                Some(e) => {
                    return Err(StoreError::Unavailable {
                        store: STORE,
                        operation: "BatchExecuteStatement",
                        message: format!("{}: {}", e.code, e.message),
                    });
                }
            });
        }
        if fresh.len() != claims.len() {
            return Err(StoreError::corrupt(STORE, "fewer responses than claims"));
        }
        Ok((fresh, units))
    }

    async fn query(
        &self,
        pk: String,
        sk_condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut request = self
            .dynamo
            .sdk
            .query()
            .table_name(&self.table)
            .key_condition_expression(format!("pk = :pk AND {sk_condition}"))
            .expression_attribute_values(":pk", s(&pk));
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        query_all(STORE, request).await
    }

    /// The owners of claims that exist (read consistently: they may have
    /// been written a moment ago), by claim key.
    async fn owners(&self, claims: &[&Claim<'_>]) -> Result<HashMap<String, Owner>, StoreError> {
        let keys = claims
            .iter()
            .map(|claim| key(claim_pk(claim.tenant, claim.event), "EVENT".to_owned()))
            .collect();
        let projection = Some("pk, claimed_by");
        let items = batch_get(STORE, &self.dynamo, &self.table, keys, true, projection).await?;
        Ok(items
            .iter()
            .map(|item| (text(item, "pk").to_owned(), owner(item)))
            .collect())
    }
}

#[async_trait::async_trait]
impl Ledger for DynamoLedger {
    /// `INSERT`s in batches of 25 (at once), then reads who owns the ones
    /// that existed.
    async fn claim(&self, claims: &[Claim<'_>]) -> Result<(Vec<Owner>, f64), StoreError> {
        let calls = claims
            .chunks(CLAIMS_PER_CALL)
            .map(|chunk| self.insert_claims(chunk));
        let mut fresh = Vec::with_capacity(claims.len());
        let mut units = 0.0;
        for result in futures_util::future::join_all(calls).await {
            let (chunk, spent) = result?;
            fresh.extend(chunk);
            units += spent;
        }
        let existing: Vec<&Claim> = claims
            .iter()
            .zip(&fresh)
            .filter(|(_, fresh)| !**fresh)
            .map(|(claim, _)| claim)
            .collect();
        let found = if existing.is_empty() {
            HashMap::new()
        } else {
            self.owners(&existing).await?
        };
        let owners = claims
            .iter()
            .zip(fresh)
            .map(|(claim, fresh)| {
                if fresh {
                    return Ok(Owner::Message(claim.seq));
                }
                found
                    .get(&claim_pk(claim.tenant, claim.event))
                    .copied()
                    .ok_or_else(|| {
                        StoreError::corrupt(STORE, "a claim that existed cannot be read")
                    })
            })
            .collect::<Result<Vec<Owner>, _>>()?;
        Ok((owners, units))
    }

    /// One `UpdateItem`: `ADD` the share and `SET through` on condition
    /// that `through` is older than the share's first message; the new
    /// values give the total, the old item (`ALL_OLD`) how far a refused
    /// counter already is.
    async fn add(
        &self,
        tenant: &TenantId,
        counter: &Counter,
        share: &Share,
    ) -> Result<Added, StoreError> {
        /// The counter's attributes the answer is read for: `tokens` (its
        /// new total), `through` (how far a refused counter is).
        #[derive(serde::Deserialize)]
        struct Counted {
            #[serde(default)]
            tokens: Text,
            #[serde(default)]
            through: Text,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Output {
            attributes: Option<Counted>,
            consumed_capacity: Option<Consumed>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Refusal {
            item: Option<Counted>,
        }
        let (pk, sk) = counter_key(tenant, counter);
        let total = share.total();
        let mut adds = vec!["tokens :tokens, events :events".to_owned()];
        let mut names = serde_json::Map::new();
        let mut values = serde_json::Map::new();
        values.insert(":tokens".into(), n_json(total.tokens));
        values.insert(":events".into(), n_json(total.events));
        values.insert(":first".into(), s_json(share.first.key()));
        values.insert(":last".into(), s_json(share.last.key()));
        for (i, (feature, delta)) in share.features.iter().enumerate() {
            adds.push(format!("#t{i} :t{i}, #e{i} :e{i}"));
            names.insert(
                format!("#t{i}"),
                format!("{FEATURE_TOKENS}{feature}").into(),
            );
            names.insert(
                format!("#e{i}"),
                format!("{FEATURE_EVENTS}{feature}").into(),
            );
            values.insert(format!(":t{i}"), n_json(delta.tokens));
            values.insert(format!(":e{i}"), n_json(delta.events));
        }
        let mut update = format!("ADD {} SET through = :last", adds.join(", "));
        if matches!(counter, Counter::Minute { .. }) {
            update.push_str(", expires_at = :expires");
            values.insert(
                ":expires".into(),
                n_json((Utc::now() + MINUTE_RETENTION).timestamp()),
            );
        }
        let mut input = json!({
            "TableName": self.table,
            "Key": {"pk": s_json(pk), "sk": s_json(sk)},
            "UpdateExpression": update,
            "ConditionExpression": "attribute_not_exists(through) OR through < :first",
            "ExpressionAttributeValues": values,
            "ReturnValues": "UPDATED_NEW",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            "ReturnConsumedCapacity": "TOTAL",
        });
        if !names.is_empty() {
            input["ExpressionAttributeNames"] = names.into();
        }
        match self
            .dynamo
            .call::<Output>(STORE, "UpdateItem", &input)
            .await
        {
            Ok(out) => Ok(Added::Added {
                write_units: out.consumed_capacity.map_or(1.0, |c| c.capacity_units),
                tokens: out
                    .attributes
                    .and_then(|item| item.tokens.text.parse().ok())
                    .unwrap_or(0),
            }),
            Err(Failure::Refused { code, body, .. })
                if code == "ConditionalCheckFailedException" =>
            {
                let through = serde_json::from_slice::<Refusal>(&body)
                    .ok()
                    .and_then(|r| r.item)
                    .and_then(|item| item.through.text.parse().ok())
                    .ok_or_else(|| {
                        StoreError::corrupt(STORE, "a refused counter names no message")
                    })?;
                // A refused write is charged as one unit.
                Ok(Added::Holds {
                    through,
                    write_units: 1.0,
                })
            }
            Err(other) => Err(other.into_store(STORE, "UpdateItem")),
        }
    }
}

/// The write units a call reports (`ReturnConsumedCapacity: TOTAL`).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Consumed {
    #[serde(default)]
    capacity_units: f64,
}

#[async_trait::async_trait]
impl UsageReader for DynamoLedger {
    /// The tokens counted for `tenant` in `period`, read consistently (the
    /// rollup checks quota thresholds right after its own writes).
    async fn period_total(&self, tenant: &TenantId, period: &str) -> Result<u64, StoreError> {
        let item = self
            .dynamo
            .sdk
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(
                format!("TENANT#{tenant}"),
                format!("PERIOD#{period}"),
            )))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item;
        Ok(item.as_ref().map_or(0, |i| number(i, "tokens")))
    }

    /// Usage of `tenant` in the period starting on `period` (its key).
    async fn period_usage(
        &self,
        tenant: &TenantId,
        period: &str,
    ) -> Result<PeriodUsage, StoreError> {
        let prefix = format!("PERIOD#{period}");
        let items = self
            .query(
                format!("TENANT#{tenant}"),
                "begins_with(sk, :from)",
                vec![(":from", s(&prefix))],
            )
            .await?;
        let mut usage = PeriodUsage::default();
        // Features live in the period's item; counted before 2026-12-05 they
        // have items of their own (`…#FEATURE#<feature>`): both add up.
        let mut features: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut add = |feature, tokens, events| {
            let total = features.entry(feature).or_default();
            total.0 += tokens;
            total.1 += events;
        };
        let feature_prefix = format!("{prefix}#FEATURE#");
        for item in &items {
            let sk = text(item, "sk");
            if sk == prefix {
                usage.tokens = number(item, "tokens");
                usage.events = number(item, "events");
                features_of(item).for_each(|(f, t, e)| add(f, t, e));
            } else if let Some(feature) = sk.strip_prefix(&feature_prefix) {
                add(feature, number(item, "tokens"), number(item, "events"));
            }
        }
        usage.features = features
            .into_iter()
            .map(|(feature, (tokens, events))| (feature.to_owned(), tokens, events))
            .collect();
        Ok(usage)
    }

    /// Per-minute usage of `tenant` in `[from, to)`.
    async fn minutes(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MinuteUsage>, StoreError> {
        let items = self
            .query(
                format!("ROLLUP#{tenant}"),
                "sk BETWEEN :from AND :to",
                // A minute's item, then (counted before 2026-12-05) its
                // `<minute>#<feature>` items; '$' sorts right after '#'.
                vec![
                    (":from", s(minute_key(from))),
                    (
                        ":to",
                        s(format!("{}$", minute_key(to - TimeDelta::minutes(1)))),
                    ),
                ],
            )
            .await?;
        let mut usage = Vec::new();
        for item in &items {
            let sk = text(item, "sk");
            let (minute, old_feature) =
                sk.split_once('#').map_or((sk, None), |(m, f)| (m, Some(f)));
            let Ok(minute) =
                DateTime::parse_from_str(&format!("{minute}:00+0000"), "%Y-%m-%dT%H:%MZ:%S%z")
            else {
                continue;
            };
            let minute = minute.to_utc();
            let mut push = |feature: &str, tokens| {
                usage.push(MinuteUsage {
                    minute,
                    feature: feature.to_owned(),
                    tokens,
                });
            };
            match old_feature {
                Some(feature) => push(feature, number(item, "tokens")),
                None => features_of(item).for_each(|(feature, tokens, _)| push(feature, tokens)),
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_keys_sort_by_time() {
        let a = DateTime::parse_from_rfc3339("2026-11-22T09:59:00Z")
            .unwrap()
            .to_utc();
        let b = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .to_utc();
        assert!(minute_key(a) < minute_key(b));
        assert_eq!(minute_key(b), "2026-11-22T10:00Z");
    }
}
