//! AWS's JSON protocol for the hot path, without the SDK's orchestrator.
//!
//! One SDK call costs ~135 µs of client CPU where the same request made
//! bare costs ~45 µs (docs/perf.md: interceptors, config layers, endpoint
//! rules, retry bookkeeping, spread thin), and `ingest` makes one per
//! request. This client keeps what matters of the SDK: SigV4 with the SDK
//! config's credentials and region, a bounded attempt, and retries of
//! throttling, 5xx and transport errors with backoff.
//!
//! Every request it signs has one shape (a JSON `POST` to the endpoint's
//! path with four or five headers), so it signs it directly: the canonical
//! request is one `format!`, and the day's signing key is derived once per
//! day and credentials, not per call. The tests check each signature
//! against the SDK's own signer (`aws-sigv4`). The transport is hyper with
//! the rustls stack the SDK already builds.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use sha2::{Digest, Sha256};

use super::SdkConfig;
use crate::hex;

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

type Https = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One HTTP client per process for every signed service: building one
/// loads the TLS roots (~3 ms of a cold start), and one pool serves every
/// endpoint. `Err` if the system has no TLS roots (every call then says so).
fn shared_http() -> &'static Result<Https, String> {
    static HTTP: OnceLock<Result<Https, String>> = OnceLock::new();
    HTTP.get_or_init(|| {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
    })
}

/// The credentials in use and the signing key they give for a day.
struct Signing {
    credentials: Credentials,
    renew_at: SystemTime,
    /// `YYYYMMDD` and its key.
    day: String,
    key: [u8; 32],
}

/// One AWS service spoken in its JSON protocol (`x-amz-target`), signed.
pub struct SignedJson {
    http: &'static Result<Https, String>,
    endpoint: Uri,
    host: String,
    region: String,
    /// The signing name (`sqs`, `dynamodb`).
    service: &'static str,
    /// The target prefix (`AmazonSQS`, `DynamoDB_20120810`).
    target: &'static str,
    credentials: Option<SharedCredentialsProvider>,
    signing: Mutex<Option<Signing>>,
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

/// A request's signature headers: `x-amz-date`, the session token if any,
/// `authorization`.
struct Signed {
    date: String,
    token: Option<String>,
    authorization: String,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl SignedJson {
    /// `service` at `endpoint` (the SDK config's `endpoint_url` wins, as in
    /// the SDK: the local emulator), with the config's region and
    /// credentials. An endpoint that is not a URL fails every call, saying so.
    pub fn new(
        aws: &SdkConfig,
        endpoint: &str,
        service: &'static str,
        target: &'static str,
        bounds: Bounds,
    ) -> Self {
        let endpoint = aws.endpoint_url().unwrap_or(endpoint);
        let endpoint: Uri = format!("{}/", endpoint.trim_end_matches('/'))
            .parse()
            .unwrap_or_default();
        Self {
            http: shared_http(),
            host: endpoint
                .authority()
                .map(ToString::to_string)
                .unwrap_or_default(),
            endpoint,
            region: aws.region().map(ToString::to_string).unwrap_or_default(),
            service,
            target,
            credentials: aws.credentials_provider(),
            signing: Mutex::new(None),
            bounds,
        }
    }

    /// Calls `operation` with `body` (its JSON input): the JSON output, or
    /// why not after the bounded attempts.
    pub async fn call(&self, operation: &str, body: Vec<u8>) -> Result<Bytes, CallError> {
        let target = format!("{}.{operation}", self.target);
        let body = Bytes::from(body);
        let body_hash = hex(&Sha256::digest(&body));
        let mut attempt = 0;
        loop {
            match self.attempt(&target, &body, &body_hash).await {
                Err(e) if e.retryable() && attempt + 1 < self.bounds.attempts => {
                    tokio::time::sleep(crate::backoff::jittered(self.bounds.backoff, attempt))
                        .await;
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }

    async fn attempt(
        &self,
        target: &str,
        body: &Bytes,
        body_hash: &str,
    ) -> Result<Bytes, CallError> {
        let http = self
            .http
            .as_ref()
            .map_err(|e| CallError::Unavailable(e.clone()))?;
        let signed = self.sign(target, body_hash, Utc::now()).await?;
        let unsigned = |e: http::Error| CallError::Unavailable(format!("request: {e}"));
        let value = |v: &str| HeaderValue::from_str(v).map_err(|e| unsigned(e.into()));
        let mut request = http::Request::post(self.endpoint.clone())
            .header(http::header::HOST, value(&self.host)?)
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .header("x-amz-target", value(target)?)
            .header("x-amz-date", value(&signed.date)?)
            .header(http::header::AUTHORIZATION, value(&signed.authorization)?);
        if let Some(token) = &signed.token {
            request = request.header("x-amz-security-token", value(token)?);
        }
        let request = request.body(Full::new(body.clone())).map_err(unsigned)?;
        let exchange = async {
            let response = http.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let answer = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, answer))
        };
        let (status, answer) = tokio::time::timeout(self.bounds.attempt_timeout, exchange)
            .await
            .map_err(|_| CallError::Unavailable("no answer within the attempt's time".to_owned()))?
            .map_err(CallError::Unavailable)?;
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

    /// SigV4 of a `POST` of a body hashing to `body_hash` to the endpoint
    /// with `target`, at `now`.
    async fn sign(
        &self,
        target: &str,
        body_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Signed, CallError> {
        let date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let day = &date[..8];
        let (credentials, key) = self.signing_key(day, now.into()).await?;
        let token = credentials.session_token().map(str::to_owned);
        let (token_header, token_name) = match &token {
            Some(token) => (
                format!("x-amz-security-token:{token}\n"),
                ";x-amz-security-token",
            ),
            None => (String::new(), ""),
        };
        let signed_headers = format!("content-type;host;x-amz-date{token_name};x-amz-target");
        let canonical = format!(
            "POST\n{path}\n\ncontent-type:{CONTENT_TYPE}\nhost:{host}\nx-amz-date:{date}\n\
             {token_header}x-amz-target:{target}\n\n{signed_headers}\n{body_hash}",
            path = self.endpoint.path(),
            host = self.host,
        );
        let scope = format!("{day}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let signature = hex(&hmac(&key, to_sign.as_bytes()));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
             Signature={signature}",
            credentials.access_key_id()
        );
        Ok(Signed {
            date,
            token,
            authorization,
        })
    }

    /// The credentials to sign with (read again shortly before they
    /// expire) and their signing key for `day`, derived once per day.
    async fn signing_key(
        &self,
        day: &str,
        now: SystemTime,
    ) -> Result<(Credentials, [u8; 32]), CallError> {
        let lock = || self.signing.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut signing = lock();
            if let Some(s) = signing.as_mut().filter(|s| now < s.renew_at) {
                if s.day != day {
                    s.key = self.derive_key(&s.credentials, day);
                    s.day = day.to_owned();
                }
                return Ok((s.credentials.clone(), s.key));
            }
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
        let key = self.derive_key(&credentials, day);
        *lock() = Some(Signing {
            credentials: credentials.clone(),
            renew_at,
            day: day.to_owned(),
            key,
        });
        Ok((credentials, key))
    }

    /// SigV4's signing key: the secret, chained through day, region,
    /// service and `aws4_request`.
    fn derive_key(&self, credentials: &Credentials, day: &str) -> [u8; 32] {
        let secret = format!("AWS4{}", credentials.secret_access_key());
        [self.region.as_str(), self.service, "aws4_request"]
            .iter()
            .fold(hmac(secret.as_bytes(), day.as_bytes()), |key, part| {
                hmac(&key, part.as_bytes())
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use aws_config::Region;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_smithy_runtime_api::client::identity::Identity;
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
        // names) with the SDK's signer gives the signature it carries:
        // nothing changed on the way.
        let received = [
            ("content-type", header("content-type")),
            ("x-amz-target", header("x-amz-target")),
            ("x-amz-security-token", header("x-amz-security-token")),
        ];
        let expected = reference(&format!("{url}/"), &received, &sent, &header("x-amz-date"));
        assert!(authorization.ends_with(&format!("Signature={expected}")));
    }

    /// The signature the SDK's signer (`aws-sigv4`) gives a `POST` of `body`
    /// to `url` with `headers`, at `date` (`x-amz-date`), with the test's
    /// secret.
    fn reference(url: &str, headers: &[(&str, String)], body: &[u8], date: &str) -> String {
        let date = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
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
        let signable = SignableRequest::new(
            "POST",
            url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (_, signature) = sign(signable, &params).unwrap().into_parts();
        signature
    }

    /// Across a change of day (a new signing key from the cached
    /// credentials) and without a session token, each signature is the
    /// SDK signer's.
    #[tokio::test]
    async fn signatures_agree_with_the_sdk_signer_across_days() {
        let aws = SdkConfig::builder()
            .region(Region::new("eu-west-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            )))
            .build();
        let url = "https://sqs.eu-west-1.amazonaws.com";
        let client = SignedJson::new(&aws, url, "sqs", "AmazonSQS", Bounds::default());
        let body = br#"{"QueueUrl":"q","Entries":[]}"#;
        let body_hash = hex(&Sha256::digest(body));
        let target = "AmazonSQS.SendMessageBatch";
        for now in [
            "2026-12-04T23:59:59Z",
            "2026-12-05T00:00:01Z",
            "2027-01-01T12:00:00Z",
        ] {
            let now = DateTime::parse_from_rfc3339(now).unwrap().to_utc();
            let signed = client.sign(target, &body_hash, now).await.unwrap();
            assert!(signed.token.is_none());
            assert!(signed.authorization.contains(&format!(
                "Credential=AKIDTEST/{}/eu-west-1/sqs/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-target, ",
                now.format("%Y%m%d")
            )));
            let headers = [
                ("content-type", CONTENT_TYPE.to_owned()),
                ("x-amz-target", target.to_owned()),
            ];
            let expected = reference(&format!("{url}/"), &headers, body, &signed.date);
            assert!(
                signed
                    .authorization
                    .ends_with(&format!("Signature={expected}"))
            );
        }
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
