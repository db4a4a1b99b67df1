//! AWS's JSON protocol for the hot path, without the SDK's orchestrator.
//!
//! One SDK call costs ~135 µs of client CPU where the same request made
//! bare costs ~45 µs (docs/perf.md: interceptors, config layers, endpoint
//! rules, retry bookkeeping, spread thin), and `ingest` makes one per
//! request. This client keeps what matters of the SDK: its SigV4 signer
//! (`aws-sigv4`) with the SDK config's credentials and region, a bounded
//! attempt, and retries of throttling, 5xx and transport errors with
//! backoff. TLS and pooling are reqwest's (rustls), as for every upstream.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;

use super::SdkConfig;

const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// Credentials without an expiry are read again after this long, as the
/// SDK's identity cache does.
const UNDATED: Duration = Duration::from_secs(15 * 60);

/// Credentials are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// How a call is bounded: attempts, each within `attempt_timeout`, spaced by
/// jittered backoff from `backoff`.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub attempts: u32,
    pub attempt_timeout: Duration,
    pub backoff: Duration,
}

impl Default for Bounds {
    /// The SDK's standard retry mode: three attempts.
    fn default() -> Self {
        Self {
            attempts: 3,
            attempt_timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(50),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The service answered with an error: its code (`__type` without the
    /// namespace), message, and the whole document (some errors carry more,
    /// e.g. the item a refused conditional write found).
    #[error("{code}: {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
        body: Bytes,
    },
    /// No answer: connection, timeout, credentials or signing.
    #[error("{0}")]
    Unavailable(String),
}

impl CallError {
    /// Throttling, a 5xx or no answer: worth another attempt.
    fn retryable(&self) -> bool {
        match self {
            CallError::Service { status, code, .. } => retryable(*status, code),
            CallError::Unavailable(_) => true,
        }
    }
}

/// Whether a service error is the service's moment (throttling, a 5xx), not
/// the request's fault.
pub(crate) fn retryable(status: u16, code: &str) -> bool {
    status >= 500
        || [
            "Throttl",
            "RequestLimitExceeded",
            "ProvisionedThroughputExceeded",
        ]
        .iter()
        .any(|c| code.contains(c))
}

/// One HTTP client per process for every signed service: building one
/// loads the TLS roots (~3 ms of a cold start), and one pool serves every
/// endpoint.
fn shared_http() -> &'static reqwest::Client {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .build()
            .expect("the HTTP client builds with static settings")
    })
}

/// One AWS service spoken in its JSON protocol (`x-amz-target`), signed.
pub struct SignedJson {
    http: &'static reqwest::Client,
    endpoint: String,
    region: String,
    /// The signing name (`sqs`, `dynamodb`).
    service: &'static str,
    /// The target prefix (`AmazonSQS`, `DynamoDB_20120810`).
    target: &'static str,
    credentials: Option<SharedCredentialsProvider>,
    cached: Mutex<Option<(Credentials, SystemTime)>>,
    bounds: Bounds,
}

impl std::fmt::Debug for SignedJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedJson")
            .field("endpoint", &self.endpoint)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl SignedJson {
    /// `service` at `endpoint` (the SDK config's `endpoint_url` wins, as in
    /// the SDK: the local emulator), with the config's region and credentials.
    pub fn new(
        aws: &SdkConfig,
        endpoint: &str,
        service: &'static str,
        target: &'static str,
        bounds: Bounds,
    ) -> Self {
        let endpoint = aws.endpoint_url().unwrap_or(endpoint);
        Self {
            http: shared_http(),
            endpoint: format!("{}/", endpoint.trim_end_matches('/')),
            region: aws.region().map(ToString::to_string).unwrap_or_default(),
            service,
            target,
            credentials: aws.credentials_provider(),
            cached: Mutex::new(None),
            bounds,
        }
    }

    /// Calls `operation` with `body` (its JSON input): the JSON output, or
    /// why not after the bounded attempts.
    pub async fn call(&self, operation: &str, body: Vec<u8>) -> Result<Bytes, CallError> {
        let target = format!("{}.{operation}", self.target);
        let body = Bytes::from(body);
        let mut attempt = 0;
        loop {
            match self.attempt(&target, &body).await {
                Err(e) if e.retryable() && attempt + 1 < self.bounds.attempts => {
                    tokio::time::sleep(crate::backoff::jittered(self.bounds.backoff, attempt))
                        .await;
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }

    async fn attempt(&self, target: &str, body: &Bytes) -> Result<Bytes, CallError> {
        let identity: Identity = self.credentials().await?.into();
        let unsigned = |e: &dyn std::fmt::Display| CallError::Unavailable(format!("signing: {e}"));
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| unsigned(&e))?
            .into();
        let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", target)];
        let signable = SignableRequest::new(
            "POST",
            self.endpoint.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| unsigned(&e))?;
        let (signature, _) = sign(signable, &params)
            .map_err(|e| unsigned(&e))?
            .into_parts();
        let mut request = self
            .http
            .post(&self.endpoint)
            .timeout(self.bounds.attempt_timeout)
            .body(body.clone());
        for (name, value) in headers.into_iter().chain(signature.headers()) {
            request = request.header(name, value);
        }
        let unanswered = |e: reqwest::Error| CallError::Unavailable(e.to_string());
        let response = request.send().await.map_err(unanswered)?;
        let status = response.status();
        let answer = response.bytes().await.map_err(unanswered)?;
        if status.is_success() {
            return Ok(answer);
        }
        #[derive(serde::Deserialize, Default)]
        struct Problem {
            #[serde(rename = "__type", default)]
            kind: String,
            #[serde(alias = "Message", default)]
            message: String,
        }
        let problem: Problem = serde_json::from_slice(&answer).unwrap_or_default();
        Err(CallError::Service {
            status: status.as_u16(),
            code: match problem.kind.rsplit_once('#') {
                Some((_, code)) => code.to_owned(),
                None if problem.kind.is_empty() => status.to_string(),
                None => problem.kind,
            },
            message: problem.message,
            body: answer,
        })
    }

    /// The credentials to sign with, read again shortly before they expire.
    async fn credentials(&self) -> Result<Credentials, CallError> {
        let now = SystemTime::now();
        if let Some((credentials, renew_at)) =
            &*self.cached.lock().unwrap_or_else(|e| e.into_inner())
            && now < *renew_at
        {
            return Ok(credentials.clone());
        }
        let provider = self
            .credentials
            .as_ref()
            .ok_or_else(|| CallError::Unavailable("no AWS credentials configured".to_owned()))?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| CallError::Unavailable(format!("credentials: {e}")))?;
        let renew_at = credentials
            .expiry()
            .and_then(|expiry| expiry.checked_sub(RENEW_BEFORE))
            .unwrap_or(now + UNDATED);
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((credentials.clone(), renew_at));
        Ok(credentials)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use aws_config::Region;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};

    use super::*;

    /// What a local stand-in of the service was sent, and what it answers
    /// next (then 200 `{}`).
    #[derive(Default)]
    struct Service {
        seen: Mutex<Vec<(HeaderMap, Bytes)>>,
        answers: Mutex<VecDeque<(u16, &'static str)>>,
    }

    async fn serve(answers: &[(u16, &'static str)]) -> (Arc<Service>, String) {
        let service = Arc::new(Service {
            answers: Mutex::new(answers.iter().copied().collect()),
            ..Service::default()
        });
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::post(
                    |State(s): State<Arc<Service>>, headers: HeaderMap, body: Bytes| async move {
                        s.seen.lock().unwrap().push((headers, body));
                        let (status, body) =
                            s.answers.lock().unwrap().pop_front().unwrap_or((200, "{}"));
                        (StatusCode::from_u16(status).unwrap(), body)
                    },
                ),
            )
            .with_state(service.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (service, url)
    }

    fn client(url: &str) -> SignedJson {
        let aws = SdkConfig::builder()
            .region(Region::new("eu-west-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDTEST",
                "secret",
                Some("token".to_owned()),
                None,
                "test",
            )))
            .build();
        let bounds = Bounds {
            backoff: Duration::from_millis(1),
            ..Bounds::default()
        };
        SignedJson::new(&aws, url, "sqs", "AmazonSQS", bounds)
    }

    #[tokio::test]
    async fn what_it_sends_is_what_it_signed() {
        let (service, url) = serve(&[]).await;
        let body = br#"{"QueueUrl":"q"}"#.to_vec();
        client(&url)
            .call("SendMessageBatch", body.clone())
            .await
            .unwrap();
        let (headers, sent) = service.seen.lock().unwrap().pop().unwrap();
        assert_eq!(sent, body);
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("x-amz-target"), "AmazonSQS.SendMessageBatch");
        assert_eq!(header("content-type"), CONTENT_TYPE);
        assert_eq!(header("x-amz-security-token"), "token");
        let authorization = header("authorization");
        assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"));
        assert!(authorization.contains("/eu-west-1/sqs/aws4_request"));
        assert!(authorization.contains(
            "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
        ));
        // Signing the request as it arrived (host from the URL, the time it
        // names) gives the signature it carries: nothing changed on the way.
        let date = chrono::NaiveDateTime::parse_from_str(&header("x-amz-date"), "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc();
        let identity: Identity = Credentials::new("AKIDTEST", "secret", None, None, "t").into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("eu-west-1")
            .name("sqs")
            .time(date.into())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let received = [
            ("content-type", header("content-type")),
            ("x-amz-target", header("x-amz-target")),
            ("x-amz-security-token", header("x-amz-security-token")),
        ];
        let signable = SignableRequest::new(
            "POST",
            format!("{url}/"),
            received.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(&sent),
        )
        .unwrap();
        let (_, signature) = sign(signable, &params).unwrap().into_parts();
        assert!(authorization.ends_with(&format!("Signature={signature}")));
    }

    #[tokio::test]
    async fn retries_throttling_and_server_errors_within_its_attempts() {
        let throttled = r#"{"__type":"com.amazonaws.sqs#ThrottlingException","message":"slow"}"#;
        let (service, url) = serve(&[(500, ""), (400, throttled)]).await;
        let answer = client(&url).call("SendMessageBatch", b"{}".to_vec()).await;
        assert_eq!(answer.unwrap(), "{}");
        assert_eq!(service.seen.lock().unwrap().len(), 3);

        let (service, url) = serve(&[(503, ""), (503, ""), (503, ""), (503, "")]).await;
        let answer = client(&url).call("SendMessageBatch", b"{}".to_vec()).await;
        assert!(matches!(
            answer,
            Err(CallError::Service { status: 503, .. })
        ));
        assert_eq!(service.seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_client_error_is_answered_once_with_its_code() {
        let invalid =
            r#"{"__type":"com.amazonaws.sqs#InvalidParameterValue","message":"bad group"}"#;
        let (service, url) = serve(&[(400, invalid)]).await;
        let answer = client(&url).call("SendMessageBatch", b"{}".to_vec()).await;
        match answer {
            Err(CallError::Service {
                status,
                code,
                message,
                ..
            }) => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (400, "InvalidParameterValue", "bad group")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(service.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn no_answer_is_unavailable() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let answer = client(&closed)
            .call("SendMessageBatch", b"{}".to_vec())
            .await;
        assert!(matches!(answer, Err(CallError::Unavailable(_))));
    }
}
