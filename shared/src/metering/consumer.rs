//! The queues' consumer: a delivery (an SQS batch) of the events queue
//! counted per tenant, with the quota alerts it reached raised; one of the
//! alerts queue, delivered to the webhooks.
//!
//! Events are grouped per tenant across the delivery (so counters are
//! pre-aggregated over all of it) and counted through the ledger in the
//! order of the tenant's message group, which makes redelivery harmless
//! ([`super::rollup`]). The delivery's tenants are read at once and their
//! claims share calls: a store call costs far more CPU than the work around
//! it, and a delivery often holds one message of each of several tenants.
//! A tenant whose events could not be counted, or whose crossings could not
//! be raised, has its messages reported as failed, so only they are
//! redelivered, still in order; nothing is
//! acknowledged that was not counted and raised. A message that can never
//! be counted (unreadable) is set aside on the dead-letter queue: it
//! claimed nothing, so a redrive is safe. Raising only records and queues an alert: webhooks
//! are called by the alerts queue's consumer, so a slow one never delays
//! counting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::alerts::{self, AlertKey, AlertQueue, AlertStore, Delivery, Notifier};
use super::period::BillingPeriod;
use super::rollup::{Ledger, Seq, Work, count_all};
use super::tenants::{CachedProfiles, Tenant};
use super::types::{BillingDay, EventBatch, TenantId, UsageEvent};
use super::usage::UsageReader;
use crate::store::StoreError;

/// One queue message as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub body: Option<String>,
    /// How often it was delivered, counting this time.
    pub receive_count: Option<u32>,
    /// What SQS needs to change its visibility.
    pub receipt_handle: Option<String>,
    /// Its place in its message group (events queue: the tenant's).
    pub sequence: Option<Seq>,
}

/// What consuming one delivery did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    /// Messages to redeliver: unreadable, or their events not counted.
    pub failed: Vec<String>,
    pub counted: u64,
    pub duplicates: u64,
    /// DynamoDB write units spent counting.
    pub write_units: f64,
    /// Of the events counted, those of tenants deleted since they were
    /// accepted (counted for billing; no alerts).
    pub of_deleted_tenants: u64,
    /// Unreadable messages set aside on the dead-letter queue.
    pub parked: u64,
}

/// The stores and notifier the consumer works with.
#[derive(Clone)]
pub struct Consumer {
    /// Profiles remembered per instance (`TENANT_CACHE_SECONDS`).
    pub tenants: CachedProfiles,
    pub ledger: Arc<dyn Ledger>,
    pub usage: Arc<dyn UsageReader>,
    pub alerts: Arc<dyn AlertStore>,
    pub alert_queue: Arc<dyn AlertQueue>,
    pub notifier: Arc<dyn Notifier>,
    pub dead_letters: Arc<dyn DeadLetters>,
    /// The wait before an alert's second delivery; it doubles per attempt.
    pub alert_backoff: Duration,
}

/// Where messages that can never be counted are set aside (the events
/// queue's DLQ): unreadable ones. They claimed nothing, so redriving them
/// (once mended) is safe at any time.
#[async_trait::async_trait]
pub trait DeadLetters: Send + Sync {
    async fn park(&self, message: &Message) -> Result<(), StoreError>;
}

/// Dead letters in memory: the double for handler tests.
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    parked: std::sync::Mutex<Vec<String>>,
    pub outage: crate::store::Outage,
}

impl MemoryDeadLetters {
    /// Ids of the messages parked so far.
    pub fn parked(&self) -> Vec<String> {
        self.parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait::async_trait]
impl DeadLetters for MemoryDeadLetters {
    async fn park(&self, message: &Message) -> Result<(), StoreError> {
        self.outage.check("events dead-letter queue")?;
        self.parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message.id.clone());
        Ok(())
    }
}

/// One tenant's share of a delivery: its messages' events in order.
#[derive(Default)]
struct TenantWork {
    messages: Vec<(Seq, Vec<UsageEvent>)>,
    message_ids: Vec<String>,
}

/// Whose events a tenant's share of a delivery is counted for.
enum Account {
    /// A tenant: counted, and its quota alerts raised.
    Live(Tenant),
    /// A tenant deleted since its events were accepted: counted in its
    /// billing periods (its tombstone keeps the day), no alerts.
    Deleted(TenantId, BillingDay),
}

impl Account {
    fn id(&self) -> &TenantId {
        match self {
            Self::Live(tenant) => &tenant.id,
            Self::Deleted(id, _) => id,
        }
    }

    fn billing_day(&self) -> BillingDay {
        match self {
            Self::Live(tenant) => tenant.billing_day,
            Self::Deleted(_, day) => *day,
        }
    }
}

/// What counting one tenant's events left for its alerts.
struct TenantOutcome {
    tenant: Tenant,
    periods: BTreeSet<BillingPeriod>,
    /// Totals of periods as counting left them (the others are read).
    period_tokens: BTreeMap<String, u64>,
}

impl Consumer {
    /// Counts `messages` (of the events queue) and raises the quota alerts
    /// their tenants reached.
    pub async fn consume(&self, messages: Vec<Message>) -> BatchOutcome {
        let mut delivery = BatchOutcome::default();
        let mut work: BTreeMap<TenantId, TenantWork> = BTreeMap::new();
        for message in messages {
            let parsed = message
                .body
                .as_deref()
                .map(serde_json::from_str::<EventBatch>);
            let readable = match (parsed, message.sequence) {
                (Some(Ok(batch)), Some(seq)) => Ok((batch, seq)),
                (Some(Ok(_)), None) => {
                    Err("no sequence number: not from the FIFO queue".to_owned())
                }
                (Some(Err(e)), _) => Err(e.to_string()),
                (None, _) => Err("no body".to_owned()),
            };
            match readable {
                Ok((batch, seq)) => {
                    let entry = work.entry(batch.tenant).or_default();
                    entry.messages.push((seq, batch.events));
                    entry.message_ids.push(message.id);
                }
                Err(error) => match self.dead_letters.park(&message).await {
                    Ok(()) => {
                        tracing::error!(
                            message_id = message.id,
                            error,
                            "unreadable message set aside on the DLQ"
                        );
                        delivery.parked += 1;
                    }
                    Err(park) => {
                        tracing::error!(message_id = message.id, error, %park, "unreadable message not parked; it will be retried");
                        delivery.failed.push(message.id);
                    }
                },
            }
        }

        let touched = self.count_tenants(work, &mut delivery).await;
        // A crossing that could not be raised is raised again by
        // redelivering its messages: their events are duplicates by then.
        delivery.failed.extend(self.raise_alerts(&touched).await);
        delivery
    }

    /// Counts each tenant's events: their profiles in one read, their
    /// claims in shared calls. Returns what counting each tenant did, with
    /// its messages; the messages of tenants not counted are in
    /// `delivery.failed`.
    async fn count_tenants(
        &self,
        work: BTreeMap<TenantId, TenantWork>,
        delivery: &mut BatchOutcome,
    ) -> Vec<(TenantOutcome, Vec<String>)> {
        let ids: Vec<TenantId> = work.keys().cloned().collect();
        let mut profiles: BTreeMap<TenantId, Tenant> = match self.tenants.get_many(&ids).await {
            Ok(found) => found.into_iter().map(|t| (t.id.clone(), t)).collect(),
            Err(error) => {
                tracing::error!(%error, "tenants not read; the delivery will be retried");
                delivery
                    .failed
                    .extend(work.into_values().flat_map(|w| w.message_ids));
                return Vec::new();
            }
        };
        let mut known = Vec::with_capacity(work.len());
        for (tenant_id, tenant_work) in work {
            let account = match profiles.remove(&tenant_id) {
                Some(tenant) => Some(Account::Live(tenant)),
                None => self.deleted(&tenant_id, &tenant_work).await,
            };
            match account {
                Some(account) => known.push((account, tenant_work)),
                None => delivery.failed.extend(tenant_work.message_ids),
            }
        }
        let counted = {
            let counting: Vec<Work> = known
                .iter()
                .map(|(account, w)| Work {
                    tenant: account.id(),
                    day: account.billing_day(),
                    messages: &w.messages,
                })
                .collect();
            count_all(self.ledger.as_ref(), &counting).await
        };
        let results = match counted {
            Ok(results) => results,
            Err(error) => {
                tracing::error!(%error, "events not claimed; their messages will be retried");
                delivery
                    .failed
                    .extend(known.into_iter().flat_map(|(_, w)| w.message_ids));
                return Vec::new();
            }
        };
        let mut touched = Vec::with_capacity(known.len());
        for ((account, w), result) in known.into_iter().zip(results) {
            match result {
                Ok(counted) => {
                    tracing::debug!(
                        tenant = %account.id(),
                        events = counted.events,
                        tokens = counted.tokens,
                        duplicates = counted.duplicates,
                        "counted"
                    );
                    delivery.counted += counted.events;
                    delivery.duplicates += counted.duplicates;
                    delivery.write_units += counted.write_units;
                    let tenant = match account {
                        Account::Live(tenant) => tenant,
                        Account::Deleted(id, _) => {
                            tracing::info!(tenant = %id, events = counted.events, "events of a deleted tenant counted");
                            delivery.of_deleted_tenants += counted.events;
                            continue;
                        }
                    };
                    let periods = w
                        .messages
                        .iter()
                        .flat_map(|(_, events)| events)
                        .map(|e| BillingPeriod::containing(e.timestamp, tenant.billing_day))
                        .collect();
                    let outcome = TenantOutcome {
                        tenant,
                        periods,
                        period_tokens: counted.period_tokens,
                    };
                    touched.push((outcome, w.message_ids));
                }
                Err(error) => {
                    tracing::error!(tenant = %account.id(), message_ids = ?w.message_ids, %error, "events not counted; their messages will be retried");
                    delivery.failed.extend(w.message_ids);
                }
            }
        }
        touched
    }

    /// The account of a tenant with no profile if it was deleted (its
    /// tombstone); `None` if it is not known yet or the tombstone could
    /// not be read: its messages are retried.
    async fn deleted(&self, tenant_id: &TenantId, work: &TenantWork) -> Option<Account> {
        match self.tenants.deleted(tenant_id).await {
            Ok(Some(day)) => Some(Account::Deleted(tenant_id.clone(), day)),
            Ok(None) => {
                tracing::error!(tenant = %tenant_id, message_ids = ?work.message_ids, "tenant does not exist; its messages will be retried");
                None
            }
            Err(error) => {
                tracing::error!(tenant = %tenant_id, message_ids = ?work.message_ids, %error, "events not counted; their messages will be retried");
                None
            }
        }
    }

    /// Raises the alerts each touched tenant has reached. Returns the
    /// messages to redeliver because raising failed.
    async fn raise_alerts(&self, touched: &[(TenantOutcome, Vec<String>)]) -> Vec<String> {
        let (store, queue) = (self.alerts.as_ref(), self.alert_queue.as_ref());
        let mut failed = Vec::new();
        for (outcome, message_ids) in touched {
            let tenant = &outcome.tenant;
            for period in &outcome.periods {
                let result = async {
                    let key = period.key();
                    let used = match outcome.period_tokens.get(&key) {
                        Some(tokens) => *tokens,
                        None => self.usage.period_total(&tenant.id, &key).await?,
                    };
                    alerts::raise(store, queue, tenant, period, used).await
                }
                .await;
                if let Err(error) = result {
                    tracing::error!(tenant = %tenant.id, %error, "quota alerts not raised; the messages will be retried");
                    failed.extend(message_ids.iter().cloned());
                    break;
                }
            }
        }
        failed
    }

    /// Delivers the alerts `messages` (of the alerts queue) name, until
    /// `until` (the invocation's deadline less the time to answer). Returns
    /// the messages to redeliver: each after a backoff doubling per
    /// attempt, and one cut off by `until` after the queue's visibility
    /// timeout (its lease keeps others off until then).
    pub async fn deliver_alerts(&self, messages: Vec<Message>, until: Instant) -> Vec<String> {
        let deliveries = messages.iter().map(|message| self.deliver_alert(message));
        let until = tokio::time::Instant::from_std(until);
        let done = tokio::time::timeout_at(until, futures_util::future::join_all(deliveries))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!("out of time for alert deliveries; they are retried");
                vec![false; messages.len()]
            });
        messages
            .iter()
            .zip(done)
            .filter(|(_, done)| !done)
            .map(|(message, _)| message.id.clone())
            .collect()
    }

    /// Delivers the alert one message names; `false` if the message is to
    /// be redelivered, after the backoff its attempt is due.
    async fn deliver_alert(&self, message: &Message) -> bool {
        let key = message
            .body
            .as_deref()
            .map(serde_json::from_str::<AlertKey>);
        let Some(Ok(key)) = key else {
            tracing::error!(
                message_id = message.id,
                ?key,
                "unreadable alert message; it will reach the DLQ"
            );
            return false;
        };
        let Ok(tenant) = TenantId::try_from(key.tenant.clone()) else {
            tracing::error!(
                message_id = message.id,
                ?key,
                "alert of no valid tenant id; it will reach the DLQ"
            );
            return false;
        };
        // Nothing goes to the webhooks of a tenant deleted since the alert
        // was raised (its price alerts included).
        let delivered = match self.tenants.exists(&tenant).await {
            Ok(false) => {
                tracing::info!(?key, "alert of a deleted tenant not delivered");
                return true;
            }
            Ok(true) => alerts::deliver(self.alerts.as_ref(), self.notifier.as_ref(), &key).await,
            Err(error) => Err(error),
        };
        match delivered {
            Ok(Delivery::Done) => return true,
            Ok(Delivery::Again) => {}
            Err(error) => tracing::error!(message_id = message.id, %error, "alert not delivered"),
        }
        let attempt = message.receive_count.unwrap_or(1) + 1;
        let delay = alerts::retry_delay(self.alert_backoff, attempt);
        if let Some(receipt) = &message.receipt_handle
            && let Err(error) = self.alert_queue.retry_in(receipt, delay).await
        {
            tracing::warn!(message_id = message.id, %error, "backoff not set; the queue's visibility timeout applies");
        }
        false
    }
}
