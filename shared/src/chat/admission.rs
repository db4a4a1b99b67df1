//! Admission: every check a chat request passes before anything is sent
//! upstream or streamed, in order — the user's account, the tier's rate
//! windows, the monthly quota — then the conversation's history and the
//! body for Anthropic. A request that fails a check gets a [`Refusal`],
//! which the HTTP layer renders once.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::FUNCTION;
use super::anthropic;
use super::history::trim;
use super::request::ChatRequest;
use super::settings::ChatSettings;
use super::store::ChatStore;
use super::users::Users;
use crate::metering::period::BillingPeriod;
use crate::metering::tenants::{Tenant, Tier};
use crate::metering::usage::UsageReader;
use crate::ratelimit::{RateLimiter, RateWindow, Verdict};
use crate::store::StoreError;
use crate::telemetry::{MetricUnit, Metrics};

/// At most this many stored turns are read to build the history.
const HISTORY_TURNS: usize = 100;

/// Why a request was refused before it went upstream.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("this account is disabled")]
    Disabled,
    #[error("at most {} chat requests per {} on the {tier:?} tier", verdict.binding.limit, verdict.window)]
    RateLimited {
        verdict: Verdict,
        tier: Tier,
        at: DateTime<Utc>,
    },
    #[error("the monthly quota of {quota} tokens is used up; it resets at {}", resets_at.to_rfc3339())]
    QuotaExceeded {
        quota: u64,
        used: u64,
        resets_at: DateTime<Utc>,
        limits: Option<Verdict>,
        at: DateTime<Utc>,
    },
    /// The rate-limit store failed and `RATE_LIMIT_FAIL_CLOSED` is set.
    #[error("the rate-limit store is unavailable: {0}")]
    RateLimitsUnavailable(StoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request that passed every check and may go upstream.
#[derive(Debug)]
pub struct Admitted {
    pub subject: String,
    pub tenant: Tenant,
    pub request: ChatRequest,
    /// The Messages API body, history included.
    pub body: Value,
    /// The binding rate window, for the response's headers (`None` when
    /// the rate-limit store failed open).
    pub limits: Option<Verdict>,
    pub at: DateTime<Utc>,
}

pub struct Admission {
    users: Users,
    limiter: RateLimiter,
    usage: Arc<dyn UsageReader>,
    chat: Arc<dyn ChatStore>,
    settings: ChatSettings,
}

impl Admission {
    pub fn new(
        users: Users,
        limiter: RateLimiter,
        usage: Arc<dyn UsageReader>,
        chat: Arc<dyn ChatStore>,
        settings: ChatSettings,
    ) -> Self {
        Self {
            users,
            limiter,
            usage,
            chat,
            settings,
        }
    }

    pub fn settings(&self) -> &ChatSettings {
        &self.settings
    }

    /// Admits `request` of the signed-in `subject`, or says why not.
    pub async fn admit(
        &self,
        subject: &str,
        request: ChatRequest,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Admitted, Refusal> {
        let tenant = self.users.sign_in(subject, now).await?;
        if !tenant.enabled {
            return Err(Refusal::Disabled);
        }
        let limits = self.rate_limit(subject, &tenant, request_id, now).await?;

        let period = BillingPeriod::containing(now, tenant.billing_day);
        let used = self.usage.period_total(&tenant.id, &period.key()).await?;
        if used >= tenant.monthly_quota {
            return Err(Refusal::QuotaExceeded {
                quota: tenant.monthly_quota,
                used,
                resets_at: period.end,
                limits,
                at: now,
            });
        }

        let history = if request.continues {
            let turns = self
                .chat
                .history(subject, request.conversation_id.as_str(), HISTORY_TURNS)
                .await?;
            trim(&turns, self.settings.history_budget_tokens)
        } else {
            Vec::new()
        };
        let body = anthropic::messages_body(&self.settings.system_prompt, &history, &request);
        Ok(Admitted {
            subject: subject.to_owned(),
            tenant,
            request,
            body,
            limits,
            at: now,
        })
    }

    /// Counts the request against the tier's windows. A store failure lets
    /// the request through (logged, counted in `RateLimitStoreErrors`)
    /// unless `RATE_LIMIT_FAIL_CLOSED` is set.
    async fn rate_limit(
        &self,
        subject: &str,
        tenant: &Tenant,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Verdict>, Refusal> {
        let limits = self.settings.tiers.limits(tenant.tier);
        let mut windows = vec![RateWindow {
            name: "minute",
            length: TimeDelta::minutes(1),
            limit: limits.per_minute,
        }];
        if let Some(per_hour) = limits.per_hour {
            windows.push(RateWindow {
                name: "hour",
                length: TimeDelta::hours(1),
                limit: per_hour,
            });
        }
        let verdict = match self
            .limiter
            .hit_windows(&format!("chat#{subject}"), &windows, now)
            .await
        {
            Ok(verdict) => verdict,
            Err(error) if self.settings.rate_limit_fail_closed => {
                tracing::error!(%error, "rate-limit store unavailable; refusing (fail closed)");
                return Err(Refusal::RateLimitsUnavailable(error));
            }
            Err(error) => {
                tracing::warn!(%error, "rate-limit store unavailable; allowing (fail open)");
                Metrics::new()
                    .dimension("Function", FUNCTION)
                    .value("RateLimitStoreErrors", MetricUnit::Count, 1.0)
                    .emit();
                return Ok(None);
            }
        };
        match verdict {
            Some(verdict) if !verdict.binding.allowed => {
                Metrics::new()
                    .dimension("Function", FUNCTION)
                    .value("RateLimited", MetricUnit::Count, 1.0)
                    .emit();
                if let Err(error) = self
                    .chat
                    .record_refusal(
                        subject,
                        request_id,
                        verdict.window,
                        verdict.binding.limit,
                        now,
                    )
                    .await
                {
                    tracing::warn!(%error, "could not record the rate-limit refusal");
                }
                Err(Refusal::RateLimited {
                    verdict,
                    tier: tenant.tier,
                    at: now,
                })
            }
            other => Ok(other),
        }
    }
}
