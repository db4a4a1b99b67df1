//! `make dev` end to end, driven as a user would: the runner brings up the
//! emulator, every function and the SQS event source on free ports; each
//! HTTP function answers its health check; a chat reply streams through
//! cargo-lambda as it is generated; a tenant crossing 80% and then 100% of
//! its quota gets both signed alerts (which only happens if the local cloud
//! gives the rollup the template's invocation deadline); a queued message
//! reaches `rollup`; a Ctrl-C (SIGINT) stops everything and frees the ports.
//! And two clones sharing one target directory each serve their own code.
//!
//! The runner builds the functions with cargo while this test runs under
//! cargo, so it gets its own target directory (outside the checkout, kept
//! between runs) instead of waiting on the one `cargo test` holds. The tests
//! here share it, so they take turns.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use infra::cloud::emulator::{Emulator, free_port, port_open};
use infra::cloud::stubs::{Delivery, WebhookReceiver};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The tests share one target directory: one `make dev` at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn target_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/ingot/dev-test-target")
}

/// A running `infra dev`.
struct Dev {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
    lambda_port: u16,
    emulator_port: u16,
    state: PathBuf,
}

impl Dev {
    /// Starts `make dev`'s runner in `root` and waits until it is up.
    async fn start(root: &Path) -> Self {
        let (emulator_port, lambda_port) = (free_port().unwrap(), free_port().unwrap());
        let state =
            std::env::temp_dir().join(format!("ingot-dev-test-{}", uuid::Uuid::new_v4().simple()));
        // A clone has no venv of its own: it uses this checkout's emulator.
        let emulator = Emulator::from_env()
            .unwrap()
            .binary(&infra::workspace_root().unwrap());
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_infra"))
            .arg("dev")
            .current_dir(root)
            .env("INGOT_EMULATOR_PORT", emulator_port.to_string())
            .env("INGOT_LAMBDA_PORT", lambda_port.to_string())
            .env("INGOT_STATE_DIR", &state)
            .env("INGOT_EMULATOR_BIN", emulator)
            .env("CARGO_TARGET_DIR", target_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("infra dev starts");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut dev = Self {
            child,
            lines,
            seen: Vec::new(),
            lambda_port,
            emulator_port,
            state,
        };
        // A first run compiles every function: allow for it.
        let up = dev
            .wait_for_line("Ingot is up.", Duration::from_secs(1500))
            .await;
        assert!(up, "make dev did not come up:\n{}", dev.seen.join("\n"));
        dev
    }

    fn url(&self, function: &str, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/lambda-url/{function}{path}",
            self.lambda_port
        )
    }

    /// Reads the runner's output until a line holds `needle`.
    async fn wait_for_line(&mut self, needle: &str, within: Duration) -> bool {
        let found = tokio::time::timeout(within, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                let found = line.contains(needle);
                self.seen.push(line);
                if found {
                    return true;
                }
            }
            false
        })
        .await;
        found == Ok(true)
    }

    async fn aws(&self) -> aws_config::SdkConfig {
        infra::cloud::bootstrap::emulator_config(
            &format!("http://127.0.0.1:{}", self.emulator_port),
            "us-east-1",
        )
        .await
    }

    /// The admin token `make dev` generated.
    async fn admin_token(&self) -> String {
        aws_sdk_secretsmanager::Client::new(&self.aws().await)
            .get_secret_value()
            .secret_id("ingot-local/admin-token")
            .send()
            .await
            .unwrap()
            .secret_string()
            .unwrap()
            .to_owned()
    }

    /// A tenant created through the admin API, as curl or the dashboard
    /// does: its view, with its API key and signing secret.
    async fn create_tenant(&self, http: &reqwest::Client, body: Value) -> Value {
        let admin = self.admin_token().await;
        json_of(
            http.post(self.url("usage", "/admin/tenants"))
                .bearer_auth(admin)
                .json(&body),
        )
        .await
    }

    /// Ctrl-C: everything stops and both ports are free again.
    async fn stop(mut self) {
        // SAFETY: signalling the child we spawned.
        unsafe { libc::kill(self.child.id().unwrap() as i32, libc::SIGINT) };
        let exited = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        assert!(
            matches!(exited, Ok(Ok(_))),
            "make dev did not stop on Ctrl-C"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !port_open(self.lambda_port),
            "cargo lambda still holds its port"
        );
        assert!(
            !port_open(self.emulator_port),
            "the emulator still holds its port"
        );
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// The JSON answer to `request`.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn make_dev_runs_everything_and_ctrl_c_stops_it() {
    let _turn = TURN.lock().await;
    let mut dev = Dev::start(&infra::workspace_root().unwrap()).await;

    let http = reqwest::Client::new();
    for function in ["prices", "ingest", "usage", "chat-stream"] {
        let status = http
            .get(dev.url(function, "/health"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(status.ok(), Some(200), "{function}");
    }

    // The schedule (EventBridge's rate, run locally) invokes price-fetch at
    // start, and the read API serves what it stored.
    let ran = r#"scheduled invocation function="price-fetch" result"#;
    let scheduled = dev.seen.iter().any(|l| l.contains(ran))
        || dev.wait_for_line(ran, Duration::from_secs(120)).await;
    assert!(scheduled, "price-fetch was never invoked on schedule");
    let gold = json_of(http.get(dev.url("prices", "/api/prices?metal=gold"))).await;
    assert_eq!(gold["latest"]["provider"], "gold-api.com", "{gold}");
    // Every configured currency (the template's default list) is served,
    // with the rate the provider converted at.
    for currency in ["EUR", "GBP", "JPY"] {
        let path = format!("/api/prices?metal=gold&currency={currency}");
        let gold = json_of(http.get(dev.url("prices", &path))).await;
        assert_eq!(gold["currency"], currency, "{gold}");
        assert_eq!(gold["latest"]["fx"]["source"], "gold-api.com", "{gold}");
    }
    // A year of daily candles: today's, from the fetch.
    let year = json_of(http.get(dev.url("prices", "/api/prices?metal=gold&window=1y"))).await;
    assert_eq!(year["window"], "1y", "{year}");
    assert!(year["candles"][0]["close"].as_f64() > Some(0.0), "{year}");

    // Chat streams: the stub sends 50 deltas 100 ms apart, and the first
    // reaches us long before the last (what `curl -N` shows).
    let token =
        std::fs::read_to_string(dev.state.join("dev-token")).expect("make dev wrote a token");
    let started = std::time::Instant::now();
    let response = http
        .post(dev.url("chat-stream", "/api/v1/chat/stream"))
        .bearer_auth(token.trim())
        .timeout(Duration::from_secs(120))
        .body(r#"{"message": "[slow] stream please"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut body = response.bytes_stream();
    let (mut text, mut first_delta) = (String::new(), None);
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if first_delta.is_none() && text.contains("event: content_delta") {
            first_delta = Some(started.elapsed());
        }
    }
    let (first, all) = (first_delta.expect("a delta"), started.elapsed());
    assert!(text.contains("event: stream_complete"), "{text}");
    assert!(
        all - first > Duration::from_secs(3),
        "first delta at {first:?}, end at {all:?}"
    );

    quota_alerts_arrive_signed_once_each(&dev, &http).await;
    a_deleted_tenants_key_stops_at_once(&dev, &http).await;
    price_alert_fires_once_per_crossing(&dev, &http).await;

    // A message on the queue is delivered to rollup by the event source.
    let sqs = aws_sdk_sqs::Client::new(&dev.aws().await);
    let queue = sqs
        .get_queue_url()
        .queue_name("ingot-local-events.fifo")
        .send()
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(queue.queue_url().unwrap())
        .message_body("not an event batch")
        .message_group_id("dev-test")
        .message_deduplication_id(uuid::Uuid::new_v4().to_string())
        .send()
        .await
        .unwrap();
    let delivered = dev
        .wait_for_line("batch delivered", Duration::from_secs(120))
        .await;
    assert!(delivered, "the message never reached rollup");

    public_routes_refuse_a_client_past_120_a_minute(&dev, &http).await;

    dev.stop().await;
}

/// Every call above came from 127.0.0.1, as these do: within 121 more,
/// the public limit (120 a minute per client) answers a 429 problem.
async fn public_routes_refuse_a_client_past_120_a_minute(dev: &Dev, http: &reqwest::Client) {
    let second = chrono::Utc::now().timestamp().rem_euclid(60);
    if second >= 45 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
    for sent in 1..=121 {
        let response = http.get(dev.url("prices", "/health")).send().await.unwrap();
        if response.status().as_u16() == 200 {
            assert_eq!(response.headers()["x-ratelimit-limit"], "120");
            continue;
        }
        assert_eq!(response.status().as_u16(), 429, "request {sent}");
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "rate_limited");
        return;
    }
    panic!("121 requests in a minute and none refused");
}

/// A tenant with a quota of 100 tokens uses 85, then 20 more, through the
/// public ingest API; its webhook gets the 80% and then the 100% alert,
/// each signed with its secret, each once, each within 30 s of the event
/// that crossed being accepted (so of its being counted), with no traffic
/// after.
async fn quota_alerts_arrive_signed_once_each(dev: &Dev, http: &reqwest::Client) {
    let (receiver, hook) = WebhookReceiver::start(0).await;
    let body = json!({"name": "Alerted", "monthly_quota": 100, "billing_day": 1, "tier": "pro", "webhooks": [hook]});
    let tenant = dev.create_tenant(http, body).await;
    receiver.set_secret(tenant["signing_secret"].as_str().unwrap());
    let key = tenant["api_key"].as_str().unwrap();

    for (tokens, threshold) in [(85, 80), (20, 100)] {
        let status = http
            .post(dev.url("ingest", "/events"))
            .bearer_auth(key)
            .json(&json!({"feature": "chat", "tokens": tokens}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 202);
        let arrived = tokio::time::timeout(Duration::from_secs(30), async {
            while !receiver
                .accepted()
                .iter()
                .any(|d| d.body["threshold"] == threshold)
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(
            arrived.is_ok(),
            "no {threshold}% alert: {:?}",
            receiver.deliveries()
        );
    }
    // Nothing more arrives: one alert per threshold.
    let alerts = exactly_two_signed(&receiver).await;
    assert_eq!(alerts[1].body["used"], 105);
}

/// A key that ingest has just accepted events with is refused by the very
/// next request once `DELETE /admin/tenants/{id}` has answered, and the
/// price alert it registered is gone from the prices table.
async fn a_deleted_tenants_key_stops_at_once(dev: &Dev, http: &reqwest::Client) {
    let body = json!({"name": "Leaving", "monthly_quota": 100, "billing_day": 1, "tier": "free"});
    let tenant = dev.create_tenant(http, body).await;
    let key = tenant["api_key"].as_str().unwrap();
    let post = || async {
        http.post(dev.url("ingest", "/events"))
            .bearer_auth(key)
            .json(&json!({"feature": "chat", "tokens": 1}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post().await, 202);
    let alert = http
        .post(dev.url("prices", "/api/alerts"))
        .bearer_auth(key)
        .json(&json!({"metal": "silver", "direction": "below", "price": 1,
            "webhook": "https://hooks.example/leaving"}))
        .send()
        .await
        .unwrap();
    assert_eq!(alert.status().as_u16(), 201);
    let id = tenant["id"].as_str().unwrap();
    let path = format!("/admin/tenants/{id}");
    let deleted = http
        .delete(dev.url("usage", &path))
        .bearer_auth(dev.admin_token().await)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(post().await, 401);

    let env = std::fs::read_to_string(dev.state.join("functions.env")).unwrap();
    let table = env
        .lines()
        .find_map(|l| l.strip_prefix("PRICES_TABLE="))
        .expect("make dev gives the functions a prices table");
    // Neither its owner pointer nor the alert on the silver series is left.
    let dynamodb = aws_sdk_dynamodb::Client::new(&dev.aws().await);
    let partition = |pk: String| {
        dynamodb
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", aws_sdk_dynamodb::types::AttributeValue::S(pk))
            .send()
    };
    let pointers = partition(format!("OWNER#{id}")).await.unwrap().count();
    let series = partition("ALERTS#silver#USD".to_owned()).await.unwrap();
    let alerts = series
        .items()
        .iter()
        .filter(|item| {
            item.get("tenant")
                .and_then(|t| t.as_s().ok())
                .map(String::as_str)
                == Some(id)
        })
        .count();
    assert_eq!(
        (pointers, alerts),
        (0, 0),
        "the deleted tenant's alert is left"
    );
}

/// What `receiver` holds once nothing more arrives for 3 s: exactly two
/// deliveries, both signed with its secret, under distinct webhook-ids.
async fn exactly_two_signed(receiver: &WebhookReceiver) -> Vec<Delivery> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts = receiver.accepted();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert!(alerts.iter().all(|a| a.signature_valid), "{alerts:?}");
    assert_ne!(alerts[0].id, alerts[1].id);
    alerts
}

/// A tenant's "gold above 2,700 USD/toz", registered with its API key: the
/// stub moves gold to 2,750 and a fetch fires it (signed, at its webhook);
/// another fetch at 2,750 does not; at 2,620 it re-arms, and at 2,750 again
/// it fires once more, under a new webhook-id.
async fn price_alert_fires_once_per_crossing(dev: &Dev, http: &reqwest::Client) {
    let body = json!({"name": "Watcher", "monthly_quota": 1000, "billing_day": 1, "tier": "pro"});
    let tenant = dev.create_tenant(http, body).await;
    let (receiver, hook) = WebhookReceiver::start(0).await;
    receiver.set_secret(tenant["signing_secret"].as_str().unwrap());
    let key = tenant["api_key"].as_str().unwrap();
    let alert = json_of(
        http.post(dev.url("prices", "/api/alerts"))
            .bearer_auth(key)
            .json(&json!({"metal": "gold", "direction": "above", "price": 2700, "webhook": hook})),
    )
    .await;
    assert_eq!(alert["armed"], true, "{alert}");

    let env = std::fs::read_to_string(dev.state.join("functions.env")).unwrap();
    let stub = env
        .lines()
        .find_map(|l| l.strip_prefix("GOLD_API_COM_BASE_URL="))
        .expect("make dev runs the gold-api.com stub")
        .to_owned();
    let root = infra::workspace_root().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", dev.lambda_port);
    let fetch_at = |usd: u32| {
        let (http, stub, root, endpoint) = (http, &stub, &root, &endpoint);
        async move {
            let moved = http
                .put(format!("{stub}/__stub/price/XAU"))
                .body(usd.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(moved.status().as_u16(), 204);
            infra::cloud::schedule::trigger(root, endpoint, "us-east-1", "price-fetch")
                .await
                .unwrap()
        }
    };
    let arrivals = |count: usize| {
        let receiver = &receiver;
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                while receiver.accepted().len() < count {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert_eq!(fetch_at(2750).await["alerts_fired"], 1);
    assert!(
        arrivals(1).await,
        "no price alert: {:?}",
        receiver.deliveries()
    );
    assert_eq!(fetch_at(2750).await["alerts_fired"], 0);
    // Past the band, and within the outlier guard's 5% of the last price.
    assert_eq!(
        fetch_at(2620).await["alerts_fired"],
        0,
        "re-armed, not fired"
    );
    assert_eq!(fetch_at(2750).await["alerts_fired"], 1);
    assert!(
        arrivals(2).await,
        "no second crossing: {:?}",
        receiver.deliveries()
    );
    let alerts = exactly_two_signed(&receiver).await;
    assert_eq!(
        (&alerts[0].body["type"], &alerts[1].body["crossing"]),
        (&json!("price.alert"), &json!(2))
    );
    // Back where the rest of the run expects it.
    fetch_at(2650).await;
}

/// Two clones with different code (ingest reports a different version)
/// share one target directory; each `make dev` serves its own clone, also
/// when the first runs again after the second has built (its files are then
/// older than the other clone's build).
#[tokio::test(flavor = "multi_thread")]
async fn clones_sharing_a_target_directory_each_serve_their_own_code() {
    let _turn = TURN.lock().await;
    let root = infra::workspace_root().unwrap();
    let clones =
        std::env::temp_dir().join(format!("ingot-clones-{}", uuid::Uuid::new_v4().simple()));
    for n in [1, 2] {
        let clone = clones.join(n.to_string());
        let status = std::process::Command::new("git")
            .args(["clone", "--quiet"])
            .arg(&root)
            .arg(&clone)
            .status()
            .unwrap();
        assert!(status.success(), "git clone");
        let ingest = clone.join("functions/ingest/src/lib.rs");
        let code = std::fs::read_to_string(&ingest).unwrap();
        let marked = code.replace(
            r#"HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))"#,
            &format!(r#"HealthChecks::new(FUNCTION, "clone-{n}")"#),
        );
        assert_ne!(
            code, marked,
            "ingest's health version is where this test expects"
        );
        std::fs::write(&ingest, marked).unwrap();
    }

    let http = reqwest::Client::new();
    for n in [1, 2, 1] {
        let dev = Dev::start(&clones.join(n.to_string())).await;
        let health = json_of(http.get(dev.url("ingest", "/health"))).await;
        assert_eq!(health["version"], format!("clone-{n}"), "{health}");
        dev.stop().await;
    }
    let _ = std::fs::remove_dir_all(clones);
}
