//! One chat request from admission to the stream: admit it (holding its
//! budget), open the model's stream (releasing the budget if that fails),
//! and relay the stream into the response in the background.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::admission::{Admission, Refusal};
use super::request::ChatRequest;
use super::stream::{Exchange, Streamer};
use super::upstream::{self, ModelApi, UpstreamError};
use crate::ratelimit::Decision;
use crate::secrets::CachedSecret;

/// Why a request got no stream.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Time kept back from the invocation's deadline to record usage and end
/// the stream cleanly.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

/// A request on its way in.
pub struct Ask {
    pub subject: String,
    pub request: ChatRequest,
    pub request_id: String,
    pub now: DateTime<Utc>,
    /// When the handler started.
    pub started: Instant,
    /// The invocation's deadline, if it has one.
    pub deadline: Option<Instant>,
}

pub struct Gateway {
    pub admission: Admission,
    pub streamer: Streamer,
    pub api_key: CachedSecret,
    pub model: Arc<dyn ModelApi>,
}

impl Gateway {
    /// Starts relaying `ask`'s reply into `tx`; returns the binding rate
    /// window, for the response's headers. Every refusal happens before the
    /// first byte is sent. The model's connection is opened alongside
    /// admission; the request waits for it, since one sent before the
    /// budget is held could be billed past the quota.
    pub async fn start(
        &self,
        ask: Ask,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<Option<Decision>, ChatError> {
        let deadline = ask
            .deadline
            .map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or(ask.started));
        let model = Arc::clone(&self.model);
        tokio::spawn(async move { model.warm().await });
        let admitted = self
            .admission
            .admit(&ask.subject, ask.request, &ask.request_id, ask.now)
            .await?;
        let opened =
            upstream::open(self.model.as_ref(), &self.api_key, &admitted.body, deadline).await;
        let upstream = match opened {
            Ok(upstream) => upstream,
            Err(error) => {
                self.admission.release(&admitted.reservation).await;
                return Err(error.into());
            }
        };
        let limits = admitted.limits.map(|l| l.binding);
        let exchange = Exchange {
            admitted,
            request_id: ask.request_id,
            started: ask.started,
            deadline,
        };
        let streamer = self.streamer.clone();
        tokio::spawn(async move { streamer.run(exchange, upstream, tx).await });
        Ok(limits)
    }
}
