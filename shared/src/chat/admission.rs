//! Admission: every check a chat request passes before anything is sent
//! upstream or streamed — the user's account, the tier's rate windows, the
//! monthly budget (its worst case held: [`super::budget`]) — and the body
//! for Anthropic with the conversation's history. A request that fails a
//! check gets a [`Refusal`], which the HTTP layer renders once.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::FUNCTION;
use super::anthropic;
use super::budget::{Budget, Reservation, worst_case};
use super::history::{Turn, trim};
use super::request::ChatRequest;
use super::settings::ChatSettings;
use super::store::ChatStore;
use super::users::Users;
use crate::metering::tenants::{Tenant, Tier};
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
    /// The worst case held against the quota until the stream settles it.
    pub reservation: Reservation,
    pub at: DateTime<Utc>,
}

pub struct Admission {
    users: Users,
    limiter: RateLimiter,
    budget: Budget,
    chat: Arc<dyn ChatStore>,
    settings: ChatSettings,
}

impl Admission {
    pub fn new(
        users: Users,
        limiter: RateLimiter,
        budget: Budget,
        chat: Arc<dyn ChatStore>,
        settings: ChatSettings,
    ) -> Self {
        Self {
            users,
            limiter,
            budget,
            chat,
            settings,
        }
    }

    pub fn settings(&self) -> &ChatSettings {
        &self.settings
    }

    /// Admits `request` of the signed-in `subject`, or says why not. After
    /// sign-in (from memory when warm), the rate windows are counted while
    /// the history is read, then the budget holds the worst case. The hold
    /// waits for the rate windows so that a burst refused by them never
    /// holds budget, even briefly, that an admitted request needs.
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
        let (limits, history) = tokio::join!(
            self.rate_limit(subject, &tenant, request_id, now),
            self.history(subject, &request),
        );
        let (limits, history) = (limits?, history?);
        let body = anthropic::messages_body(&self.settings.system_prompt, &history, &request);
        let quota = self.settings.tiers.limits(tenant.tier).monthly_tokens;
        match self
            .budget
            .reserve(&tenant, quota, worst_case(&body), now)
            .await?
        {
            Ok(reservation) => Ok(Admitted {
                subject: subject.to_owned(),
                tenant,
                request,
                body,
                limits,
                reservation,
                at: now,
            }),
            Err(over) => Err(Refusal::QuotaExceeded {
                quota: over.quota,
                used: over.used,
                resets_at: over.resets_at,
                limits,
                at: now,
            }),
        }
    }

    /// Gives back a reservation nothing was used of (a refusal after it, or
    /// an upstream that never answered). A failure keeps the hold: the
    /// budget errs towards refusing.
    pub async fn release(&self, reservation: &Reservation) {
        if let Err(error) = self.budget.settle(reservation, 0).await {
            tracing::error!(%error, "could not release a budget reservation");
        }
    }

    /// The conversation's earlier turns, trimmed to the history budget
    /// (none for a new conversation).
    async fn history(&self, subject: &str, request: &ChatRequest) -> Result<Vec<Turn>, StoreError> {
        if !request.continues {
            return Ok(Vec::new());
        }
        let turns = self
            .chat
            .history(subject, request.conversation_id.as_str(), HISTORY_TURNS)
            .await?;
        Ok(trim(&turns, self.settings.history_budget_tokens))
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
