//! Local stand-ins for the two upstreams chat depends on, speaking their
//! real formats: a sign-in issuer (generated keys, a JWKS endpoint, signed
//! tokens) and Anthropic's streaming Messages API. `make dev` runs both
//! unless real ones are configured; the integration tests drive them.
//!
//! A third stands in for gold-api.com (the keyless price provider), so
//! `make dev` has prices without a network; `INGOT_LIVE_PROVIDERS=1` uses the
//! real providers instead. A fourth, [`WebhookReceiver`], is a tenant's
//! webhook endpoint for the quota-alert tests.
//!
//! The Anthropic stub picks its behaviour from markers in the last user
//! message, so a test (or `curl`) chooses a scenario without a side channel:
//! - `[overloaded]`: HTTP 529 before any stream, every time;
//! - `[overloaded-once]`: 529 on the first attempt of this body, then a stream;
//! - `[error]`: starts streaming, then an `error` event (`overloaded_error`);
//! - `[gated]`: sends the first delta, then waits for [`AnthropicStub::open_gate`];
//! - `[slow]`: 50 deltas, 100 ms apart;
//! - anything else: echoes the message back word by word.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// Serves `router` on an ephemeral local port; returns its base URL. Each
/// event is written as it is produced (`TCP_NODELAY`), as a real streaming
/// API does, rather than held back by Nagle's algorithm.
pub async fn serve(router: Router) -> std::io::Result<String> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let address = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{address}"))
}

/// gold-api.com's `GET /price/{symbol}/{currency}`, in its real format:
/// dollars converted at steady rates (the provider's own practice, naming
/// the rate), or a 400 for a currency it does not know. Its dollar prices
/// hold still unless moved: `PUT /__stub/price/{symbol}` with a number (how
/// `make dev` users and tests cross a price alert).
pub fn gold_api_com() -> Router {
    type Prices = Arc<Mutex<HashMap<String, f64>>>;
    async fn price(
        State(prices): State<Prices>,
        uri: axum::http::Uri,
    ) -> (StatusCode, axum::Json<Value>) {
        let mut parts = uri.path().trim_start_matches("/price/").split('/');
        let symbol = parts.next().unwrap_or("XAU").to_owned();
        let currency = parts.next().unwrap_or("USD");
        let usd = prices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&symbol)
            .copied()
            .unwrap_or(2650.0);
        let Some(&(_, sign, rate)) = RATES.iter().find(|(code, ..)| *code == currency) else {
            let error = json!({"error": format!("Currency {currency} not supported")});
            return (StatusCode::BAD_REQUEST, axum::Json(error));
        };
        let price = (usd * rate * 100.0_f64).round() / 100.0;
        let body = json!({
            "currency": currency, "currencySymbol": sign, "exchangeRate": rate, "name": symbol,
            "price": price, "symbol": symbol, "updatedAt": chrono::Utc::now().to_rfc3339(),
            "updatedAtReadable": "a few seconds ago",
        });
        (StatusCode::OK, axum::Json(body))
    }
    async fn set(
        State(prices): State<Prices>,
        axum::extract::Path(symbol): axum::extract::Path<String>,
        body: String,
    ) -> StatusCode {
        match body.trim().parse::<f64>() {
            Ok(usd) if usd.is_finite() && usd > 0.0 => {
                prices
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(symbol, usd);
                StatusCode::NO_CONTENT
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
    let prices: Prices = Arc::new(Mutex::new(HashMap::from(
        [
            ("XAU", 2650.0),
            ("XAG", 31.2),
            ("XPT", 962.5),
            ("XPD", 1004.0),
        ]
        .map(|(symbol, usd)| (symbol.to_owned(), usd)),
    )));
    Router::new()
        .route("/__stub/price/{symbol}", axum::routing::put(set))
        .fallback(price)
        .with_state(prices)
}

/// The stub's exchange rates: currency, symbol, units per US dollar.
const RATES: [(&str, &str, f64); 8] = [
    ("USD", "$", 1.0),
    ("EUR", "€", 0.9213),
    ("GBP", "£", 0.7862),
    ("CHF", "CHF", 0.8814),
    ("CAD", "C$", 1.3931),
    ("AUD", "A$", 1.5324),
    ("JPY", "¥", 151.62),
    ("INR", "₹", 84.37),
];

/// Chat's upstreams for `make dev`: the local issuer always, and the
/// Anthropic stub unless `ANTHROPIC_BASE_URL` points at a real API.
pub struct DevUpstreams {
    pub issuer: Arc<Issuer>,
    pub jwks_url: String,
    pub anthropic_url: String,
    /// The key to store in the Anthropic secret: `ANTHROPIC_API_KEY`, or a
    /// placeholder the stub accepts.
    pub anthropic_key: String,
    pub stubbed: bool,
}

/// The audience of local sign-in tokens.
pub const DEV_AUDIENCE: &str = "http://localhost";

pub async fn dev_upstreams() -> std::io::Result<DevUpstreams> {
    let issuer_url = "https://ingot.local";
    let issuer = Arc::new(Issuer::generate(issuer_url, DEV_AUDIENCE));
    let jwks_url = format!("{}/.well-known/jwks.json", serve(issuer.router()).await?);
    let real = std::env::var("ANTHROPIC_BASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let (anthropic_url, stubbed) = match real {
        Some(url) => (url, false),
        None => (serve(AnthropicStub::new().router()).await?, true),
    };
    let anthropic_key = std::env::var("ANTHROPIC_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "sk-ant-local-stub".to_owned());
    Ok(DevUpstreams {
        issuer,
        jwks_url,
        anthropic_url,
        anthropic_key,
        stubbed,
    })
}

/// A sign-in issuer with one ES256 and one RS256 key, both in its JWKS.
pub struct Issuer {
    pub issuer: String,
    pub audience: String,
    /// The current ES256 key; [`Issuer::rotate`] replaces it.
    es256: std::sync::RwLock<(String, EncodingKey)>,
    rs256: (String, EncodingKey),
    jwks: std::sync::RwLock<JwkSet>,
    fetches: AtomicUsize,
}

/// A new P-256 key, as PKCS#8.
fn ec_key() -> EncodingKey {
    let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key");
    EncodingKey::from_ec_der(ec.to_pkcs8v1().expect("PKCS#8").as_ref())
}

/// The public half of `key`, as a JWK with its key id.
fn public_jwk((kid, key): &(String, EncodingKey), alg: Algorithm) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("public JWK");
    jwk.common.key_id = Some(kid.clone());
    jwk
}

/// The RSAPrivateKey (PKCS#1) inside a PKCS#8 PrivateKeyInfo, which is
/// what jsonwebtoken's RSA signer reads.
fn pkcs1_of_pkcs8(der: &[u8]) -> Option<&[u8]> {
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            let len = rest
                .get(..n)?
                .iter()
                .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
            (len, &rest[n..])
        };
        Some((tag, rest.get(..len)?, &rest[len..]))
    }
    let (0x30, info, _) = tlv(der)? else {
        return None;
    };
    let (0x02, _, rest) = tlv(info)? else {
        return None;
    };
    let (0x30, _, rest) = tlv(rest)? else {
        return None;
    };
    let (0x04, pkcs1, _) = tlv(rest)? else {
        return None;
    };
    Some(pkcs1)
}

impl Issuer {
    /// Fresh keys: every run (and every test) signs with its own.
    pub fn generate(issuer: &str, audience: &str) -> Self {
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
        let rsa_pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).expect("PKCS#8");
        let rsa_der = pkcs1_of_pkcs8(rsa_pkcs8.as_ref()).expect("PKCS#8 wraps PKCS#1");
        Self::from_keys(
            issuer,
            audience,
            ec_key(),
            EncodingKey::from_rsa_der(rsa_der),
        )
    }

    fn from_keys(issuer: &str, audience: &str, es: EncodingKey, rs: EncodingKey) -> Self {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let es256 = (format!("es-{suffix}"), es);
        let rs256 = (format!("rs-{suffix}"), rs);
        let jwks = JwkSet {
            keys: vec![
                public_jwk(&es256, Algorithm::ES256),
                public_jwk(&rs256, Algorithm::RS256),
            ],
        };
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            es256: std::sync::RwLock::new(es256),
            rs256,
            jwks: std::sync::RwLock::new(jwks),
            fetches: AtomicUsize::new(0),
        }
    }

    /// Rotates the ES256 key as an issuer does: a new key id signs from now
    /// on, and the JWKS publishes it instead of the old one.
    pub fn rotate(&self) {
        let old = self
            .es256
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone();
        let kid = format!("es-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let key = (kid, ec_key());
        let mut jwks = self.jwks.write().unwrap_or_else(|e| e.into_inner());
        jwks.keys
            .retain(|k| k.common.key_id.as_deref() != Some(old.as_str()));
        jwks.keys.push(public_jwk(&key, Algorithm::ES256));
        *self.es256.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// Signs `claims` as given (tests build bad tokens with this).
    pub fn sign(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let es256 = self.es256.read().unwrap_or_else(|e| e.into_inner());
        let (own_kid, key) = match alg {
            Algorithm::RS256 => &self.rs256,
            _ => &*es256,
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.unwrap_or(own_kid).to_owned());
        jsonwebtoken::encode(&header, claims, key).expect("signing with a generated key")
    }

    /// The claims of a valid session token for `subject`, good for `ttl`.
    pub fn claims(&self, subject: &str, ttl: Duration) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "sub": subject,
            "iss": self.issuer,
            "azp": self.audience,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl.as_secs() as i64,
        })
    }

    /// A valid ES256 token for `subject`.
    pub fn token(&self, subject: &str, ttl: Duration) -> String {
        self.sign(Algorithm::ES256, None, &self.claims(subject, ttl))
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// `GET /.well-known/jwks.json`.
    pub fn router(self: &Arc<Self>) -> Router {
        let issuer = Arc::clone(self);
        Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let issuer = Arc::clone(&issuer);
                async move {
                    issuer.fetches.fetch_add(1, Ordering::SeqCst);
                    let jwks = issuer.jwks.read().unwrap_or_else(|e| e.into_inner());
                    axum::Json(jwks.clone())
                }
            }),
        )
    }
}

/// What the Anthropic stub saw and did.
#[derive(Default)]
pub struct AnthropicStub {
    requests: Mutex<Vec<Value>>,
    /// Bodies already refused once (`[overloaded-once]`).
    refused: Mutex<HashSet<String>>,
    /// System prompts seen: the next request with one reads it from "cache".
    cached: Mutex<HashSet<String>>,
    gate: Notify,
    sent_last: AtomicBool,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
    attempts: AtomicUsize,
    /// When each streamed reply's first `content_block_delta` went out.
    first_deltas: Mutex<Vec<Instant>>,
    /// `HEAD`s of the Messages endpoint (connection warm-ups).
    warm_ups: AtomicUsize,
}

impl AnthropicStub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/messages", post(messages).head(warm_up))
            .with_state(Arc::clone(self))
    }

    /// Request bodies received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `HEAD /v1/messages` requests: connections warmed.
    pub fn warm_ups(&self) -> usize {
        self.warm_ups.load(Ordering::SeqCst)
    }

    /// HTTP requests received, including refused ones.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// When each streamed reply's first `content_block_delta` was handed
    /// to the response body, in order.
    pub fn first_deltas(&self) -> Vec<Instant> {
        self.first_deltas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Streams that ran to `message_stop`.
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }

    /// Streams whose client (the proxy) hung up before the end.
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Whether a stream has sent its last event.
    pub fn sent_last(&self) -> bool {
        self.sent_last.load(Ordering::SeqCst)
    }

    /// Lets a `[gated]` stream finish.
    pub fn open_gate(&self) {
        self.gate.notify_one();
    }
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

fn frame(data: &Value) -> Bytes {
    let name = data["type"].as_str().unwrap_or("message");
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn last_user_text(body: &Value) -> String {
    let Some(content) = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| &m["content"])
    else {
        return String::new();
    };
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// About four characters per token, like the real tokenizer on English.
fn tokens(chars: usize) -> u64 {
    chars.div_ceil(4).max(1) as u64
}

/// A `HEAD` of the Messages endpoint: counted and refused as Anthropic
/// refuses a method it does not serve.
async fn warm_up(State(stub): State<Arc<AnthropicStub>>) -> StatusCode {
    stub.warm_ups.fetch_add(1, Ordering::SeqCst);
    StatusCode::METHOD_NOT_ALLOWED
}

async fn messages(
    State(stub): State<Arc<AnthropicStub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    stub.attempts.fetch_add(1, Ordering::SeqCst);
    if headers.get("x-api-key").is_none_or(|k| k.is_empty()) {
        return error(401, "authentication_error", "invalid x-api-key");
    }
    if headers.get("anthropic-version").is_none() {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version header is required",
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "invalid_request_error", "body is not JSON");
    };
    let text = last_user_text(&request);
    if text.contains("[overloaded]") {
        return error(529, "overloaded_error", "Overloaded");
    }
    if text.contains("[overloaded-once]")
        && stub
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(String::from_utf8_lossy(&body).into_owned())
    {
        return error(529, "overloaded_error", "Overloaded");
    }
    stub.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(request.clone());

    let system = request["system"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let system_tokens = if system.is_empty() {
        0
    } else {
        tokens(system.len())
    };
    let cached = !stub
        .cached
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(system);
    let prompt_chars: usize = request["messages"].as_array().map_or(0, |m| {
        m.iter().map(|m| m["content"].to_string().len()).sum()
    });
    let input_tokens = tokens(prompt_chars);
    let (cache_write, cache_read) = if cached {
        (0, system_tokens)
    } else {
        (system_tokens, 0)
    };
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-sonnet-4-5")
        .to_owned();

    let words: Vec<String> = if text.contains("[slow]") {
        (0..50).map(|i| format!("word{i} ")).collect()
    } else {
        format!("You said: {text}")
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect()
    };
    let pace = if text.contains("[slow]") {
        Duration::from_millis(100)
    } else {
        Duration::ZERO
    };
    let gated = text.contains("[gated]");
    let fail = text.contains("[error]");

    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let task_stub = Arc::clone(&stub);
    tokio::spawn(async move {
        let stub = task_stub;
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let mut events = vec![
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": cache_write,
                          "cache_read_input_tokens": cache_read, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
        ];
        let first_delta = events.len();
        for word in &words {
            events.push(json!({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": word}}));
        }
        if fail {
            events.truncate(first_delta + 2);
            events.push(json!({"type": "message_delta",
                               "delta": {"stop_reason": null, "stop_sequence": null},
                               "usage": {"output_tokens": 2}}));
            events.push(json!({"type": "error",
                               "error": {"type": "overloaded_error", "message": "Overloaded"}}));
        } else {
            events.push(json!({"type": "content_block_stop", "index": 0}));
            events.push(json!({"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                               "usage": {"output_tokens": words.len() / 2 + 1}}));
            events.push(json!({"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                               "usage": {"output_tokens": words.len()}}));
            events.push(json!({"type": "message_stop"}));
        }
        let last = events.len() - 1;
        for (i, event) in events.iter().enumerate() {
            if i > first_delta && i < first_delta + words.len() && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            if gated && i == first_delta + 1 {
                stub.gate.notified().await;
            }
            if tx.send(frame(event)).await.is_err() {
                stub.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if i == first_delta {
                let mut sent = stub.first_deltas.lock().unwrap_or_else(|e| e.into_inner());
                sent.push(Instant::now());
            }
            if i == last {
                stub.sent_last.store(true, Ordering::SeqCst);
            }
        }
        stub.completed.fetch_add(1, Ordering::SeqCst);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_tokens_their_jwks_verifies() {
        let issuer = Issuer::generate("https://issuer.test", "app");
        for alg in [Algorithm::ES256, Algorithm::RS256] {
            let token = issuer.sign(alg, None, &issuer.claims("user_1", Duration::from_secs(60)));
            let header = jsonwebtoken::decode_header(&token).unwrap();
            let jwks = issuer.jwks.read().unwrap();
            let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.validate_aud = false;
            let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
            assert_eq!(data.claims["sub"], "user_1");
        }
    }
}

/// What a [`WebhookReceiver`] saw of one request.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    /// The Standard Webhooks signature verified against the receiver's secret.
    pub signature_valid: bool,
    /// How many signatures `webhook-signature` carried (two while a
    /// rotated-out secret still signs).
    pub signatures: usize,
    pub answered: StatusCode,
    pub body: Value,
}

/// A tenant's webhook endpoint, standing in for Slack or a customer's
/// server: it records every delivery and verifies its signature from the
/// Standard Webhooks spec (not from Ingot's sender), so a test sees what a
/// receiver would.
#[derive(Clone, Default)]
pub struct WebhookReceiver {
    secret: Arc<Mutex<String>>,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    /// Answer 500 to this many requests first.
    fail_first: Arc<AtomicUsize>,
}

impl WebhookReceiver {
    /// Serves on a local port; returns the receiver and its URL.
    pub async fn start(fail_first: usize) -> (Self, String) {
        let receiver = Self {
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            ..Self::default()
        };
        let router = Router::new()
            .route("/hook", post(receive_webhook))
            .with_state(receiver.clone());
        let base = serve(router).await.expect("a local port for the receiver");
        (receiver, format!("{base}/hook"))
    }

    /// The tenant's signing secret (`whsec_…`), known once it is created.
    pub fn set_secret(&self, secret: &str) {
        *self.secret.lock().expect("secret") = secret.to_owned();
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("deliveries").clone()
    }

    /// The deliveries answered with a 2xx.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.answered.is_success())
            .collect()
    }
}

/// Whether any of the `webhook-signature`'s signatures is `v1,` + base64
/// HMAC-SHA256 of `{id}.{timestamp}.{body}` under the secret.
fn signature_valid(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&key) else {
        return false;
    };
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

async fn receive_webhook(
    State(r): State<WebhookReceiver>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let answered = if r.fail_first.load(Ordering::SeqCst) > 0 {
        r.fail_first.fetch_sub(1, Ordering::SeqCst);
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    let secret = r.secret.lock().expect("secret").clone();
    r.deliveries.lock().expect("deliveries").push(Delivery {
        id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        signature_valid: signature_valid(&secret, &headers, &body),
        signatures: headers
            .get("webhook-signature")
            .and_then(|v| v.to_str().ok())
            .map_or(0, |v| v.split(' ').count()),
        answered,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    answered
}
