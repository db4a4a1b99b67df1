//! Admission: every check a chat request passes before anything is sent
//! upstream or streamed — the user's account, then the tier's rate windows
//! and the monthly budget together (one write: [`super::budget`]) — and the
//! body for Anthropic with the conversation's history. A request that fails
//! a check gets a [`Refusal`], which the HTTP layer renders once.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::FUNCTION;
use super::anthropic;
use super::budget::{Budget, Refused, Reservation, worst_case};
use super::history::{Turn, trim};
use super::request::ChatRequest;
use super::settings::ChatSettings;
use super::store::ChatStore;
use super::users::Users;
use crate::metering::tenants::{Tenant, Tier};
use crate::ratelimit::Verdict;
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
    /// The binding rate window, for the response's headers.
    pub limits: Option<Verdict>,
    /// The worst case held against the quota until the stream settles it.
    pub reservation: Reservation,
    pub at: DateTime<Utc>,
}

pub struct Admission {
    users: Users,
    budget: Budget,
    chat: Arc<dyn ChatStore>,
    settings: ChatSettings,
}

impl Admission {
    pub fn new(
        users: Users,
        budget: Budget,
        chat: Arc<dyn ChatStore>,
        settings: ChatSettings,
    ) -> Self {
        Self {
            users,
            budget,
            chat,
            settings,
        }
    }

    pub fn settings(&self) -> &ChatSettings {
        &self.settings
    }

    /// Admits `request` of the signed-in `subject`, or says why not: after
    /// sign-in (from memory when warm) and the history (read only when the
    /// conversation continues), one conditional write counts the request in
    /// the tier's rate windows and holds its worst case against the quota.
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
        let history = self.history(subject, &request).await?;
        let body = anthropic::messages_body(&self.settings.system_prompt, &history, &request);
        let limits = self.settings.tiers.limits(tenant.tier);
        let reserved = self
            .budget
            .reserve(
                &tenant,
                limits.monthly_tokens,
                worst_case(&body),
                &limits.windows(),
                now,
            )
            .await?;
        match reserved {
            Ok((reservation, limits)) => Ok(Admitted {
                subject: subject.to_owned(),
                tenant,
                request,
                body,
                limits,
                reservation,
                at: now,
            }),
            Err(Refused::Limited(verdict)) => {
                self.limited(subject, request_id, &verdict, now).await;
                Err(Refusal::RateLimited {
                    verdict,
                    tier: tenant.tier,
                    at: now,
                })
            }
            Err(Refused::OverQuota { over, limits }) => Err(Refusal::QuotaExceeded {
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

    /// Counts and records a refusal by a rate window (a failure to record
    /// it is logged: the refusal stands).
    async fn limited(
        &self,
        subject: &str,
        request_id: &str,
        verdict: &Verdict,
        now: DateTime<Utc>,
    ) {
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
    }
}
