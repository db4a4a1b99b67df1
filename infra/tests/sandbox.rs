//! `infra sandbox` keeps the template's Lambda limits around a real
//! function instance: its deadline, its memory size, its timeout and its
//! reserved concurrency.
//!
//! Those promises only exist between processes (a runtime polling through the
//! proxy, an instance killed and started again, a second sandbox waiting on
//! the first's slot), so these tests run the real binary between a fake
//! cargo-lambda Runtime API (an axum server here, one queue per runtime base
//! `/.rt/{runtime}`, like cargo-lambda's) and a fake function (a python3 Lambda
//! runtime, so no function needs building). Every wait is bounded: a broken
//! sandbox fails a test, it never hangs one.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use infra::cloud::sandbox::{Limits, SETTINGS_VAR, Settings};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The function cargo-lambda names; the settings file has its limits.
const FUNCTION: &str = "rollup";

/// Long enough for a sandbox and python3 to start on a loaded machine.
const STARTUP: Duration = Duration::from_secs(10);

/// A Lambda runtime: answers each event after sleeping its `sleep` seconds,
/// with what the sandbox told it (deadline, memory size) and who it is (pid).
const FAKE_FUNCTION: &str = r#"
import json, os, time, urllib.request

api = os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
while True:
    with http.open(api + "next") as next:
        request_id = next.headers["lambda-runtime-aws-request-id"]
        deadline_ms = int(next.headers["lambda-runtime-deadline-ms"])
        event = json.load(next)
    time.sleep(event.get("sleep", 0))
    answer = {
        "deadline_ms": deadline_ms,
        "memory_mb": os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
        "pid": os.getpid(),
    }
    http.open(urllib.request.Request(
        api + request_id + "/response", data=json.dumps(answer).encode(), method="POST"
    )).close()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn each_invocation_gets_the_template_timeout_as_its_deadline() {
    let upstream = Upstream::start().await;
    let function = Function::new(Limits {
        timeout_secs: 3,
        memory_mb: 256,
        reserved_concurrency: None,
    });
    let _sandbox = function.sandbox(&upstream, FUNCTION);

    // The first answer comes 2 s after its hand-out, so a deadline fixed per
    // instance rather than per invocation would be 2 s off for the second.
    for event in [json!({"sleep": 2}), json!({})] {
        let id = upstream.invoke(FUNCTION, event);
        let answer = upstream.answer(&id, STARTUP).await;
        assert_eq!(answer.outcome, "response", "{answer:?}");
        let handed_out = upstream.handed_out(&id);
        let deadline = answer.body["deadline_ms"].as_u64().unwrap();
        assert!(
            deadline.abs_diff(handed_out + 3_000) < 1_000,
            "deadline {deadline} ms is not 3 s after the hand-out at {handed_out} ms"
        );
        assert_eq!(answer.body["memory_mb"], "256");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_past_its_timeout_fails_and_the_instance_restarts() {
    let upstream = Upstream::start().await;
    let function = Function::new(Limits {
        timeout_secs: 1,
        memory_mb: 128,
        reserved_concurrency: None,
    });
    let _sandbox = function.sandbox(&upstream, FUNCTION);
    let warm = upstream.invoke(FUNCTION, json!({}));
    let killed_pid = upstream.answer(&warm, STARTUP).await.body["pid"].clone();

    let slow = upstream.invoke(FUNCTION, json!({"sleep": 5}));
    let failed = upstream.answer(&slow, Duration::from_secs(3)).await;
    assert_eq!(failed.outcome, "error", "{failed:?}");
    assert_eq!(failed.body["errorType"], "Sandbox.Timedout");
    assert_eq!(
        failed.headers["lambda-runtime-function-error-type"],
        "Sandbox.Timedout"
    );

    let after = upstream.invoke(FUNCTION, json!({}));
    let answer = upstream.answer(&after, STARTUP).await;
    assert_eq!(answer.outcome, "response", "{answer:?}");
    assert!(answer.body["pid"].is_u64(), "{answer:?}");
    assert_ne!(
        answer.body["pid"], killed_pid,
        "the timed-out instance answered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reserved_concurrency_lets_that_many_instances_run() {
    let upstream = Upstream::start().await;
    let function = Function::new(Limits {
        timeout_secs: 3,
        memory_mb: 128,
        reserved_concurrency: Some(1),
    });
    let mut first = function.sandbox(&upstream, "first");
    upstream.polled("first", STARTUP).await;

    let _second = function.sandbox(&upstream, "second");
    // Unlimited, it would poll within a few hundred milliseconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(upstream.polls("second"), 0, "a second instance ran");

    first.kill().await.expect("the first sandbox is killed");
    let id = upstream.invoke("second", json!({}));
    let answer = upstream.answer(&id, STARTUP).await;
    assert_eq!(answer.outcome, "response", "{answer:?}");
}

/// One function as `make dev` sets it up (its sandbox settings, its
/// program), in a directory of its own that goes when the test ends.
struct Function {
    dir: PathBuf,
}

impl Function {
    fn new(limits: Limits) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ingot-sandbox-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let settings = Settings {
            functions: HashMap::from([(FUNCTION.to_owned(), limits)]),
            slots: dir.join("slots"),
        };
        std::fs::write(
            dir.join("sandbox.json"),
            serde_json::to_vec(&settings).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("function.py"), FAKE_FUNCTION).unwrap();
        Self { dir }
    }

    /// Starts one instance as cargo-lambda does, through the sandbox, polling
    /// `upstream` at the base of `runtime`.
    fn sandbox(&self, upstream: &Upstream, runtime: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_infra"))
            .args(["sandbox", "python3"])
            .arg(self.dir.join("function.py"))
            .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://{}/.rt/{runtime}", upstream.addr),
            )
            .env(SETTINGS_VAR, self.dir.join("sandbox.json"))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("infra sandbox starts")
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the fake Runtime API holds and has seen.
#[derive(Debug, Default)]
struct Seen {
    /// Invocations not yet handed out, by runtime: (request id, event).
    queued: HashMap<String, VecDeque<(String, Value)>>,
    /// The runtime of each `GET .../invocation/next`, as it arrived.
    polls: Vec<String>,
    /// When each invocation was handed out, in ms since the epoch.
    handed_out: HashMap<String, u64>,
    answers: Vec<Answer>,
}

/// A `POST .../invocation/{id}/response|error`.
#[derive(Debug, Clone)]
struct Answer {
    request_id: String,
    /// `response` or `error`.
    outcome: String,
    headers: HeaderMap,
    body: Value,
}

/// cargo-lambda's side of the Runtime API, with a watchable record.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<watch::Sender<Seen>>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(watch::Sender::new(Seen::default()));
        let api = Router::new()
            .route(
                "/.rt/{runtime}/2018-06-01/runtime/invocation/next",
                get(next),
            )
            .route(
                "/.rt/{runtime}/2018-06-01/runtime/invocation/{id}/{outcome}",
                post(answered),
            )
            .with_state(seen.clone());
        tokio::spawn(async move { axum::serve(listener, api).await });
        Self { addr, seen }
    }

    /// Queues an event for `runtime`; returns its request id.
    fn invoke(&self, runtime: &str, event: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.seen.send_modify(|seen| {
            let queue = seen.queued.entry(runtime.to_owned()).or_default();
            queue.push_back((id.clone(), event));
        });
        id
    }

    /// The first answer to `request_id`, due `within` from now.
    async fn answer(&self, request_id: &str, within: Duration) -> Answer {
        self.until(&format!("answer to {request_id}"), within, |seen| {
            seen.answers
                .iter()
                .find(|a| a.request_id == request_id)
                .cloned()
        })
        .await
    }

    /// Waits for `runtime`'s first `next`, due `within` from now.
    async fn polled(&self, runtime: &str, within: Duration) {
        self.until(&format!("poll from {runtime}"), within, |seen| {
            seen.polls.iter().any(|r| r == runtime).then_some(())
        })
        .await
    }

    fn polls(&self, runtime: &str) -> usize {
        let seen = self.seen.borrow();
        seen.polls.iter().filter(|r| *r == runtime).count()
    }

    fn handed_out(&self, request_id: &str) -> u64 {
        self.seen.borrow().handed_out[request_id]
    }

    /// What `find` finds in the record, as soon as it is there; panics,
    /// showing the record, if it is not there `within` from now.
    async fn until<T>(&self, what: &str, within: Duration, find: impl Fn(&Seen) -> Option<T>) -> T {
        let mut changes = self.seen.subscribe();
        let found = tokio::time::timeout(within, async {
            loop {
                if let Some(found) = find(&changes.borrow_and_update()) {
                    return found;
                }
                changes.changed().await.expect("the record outlives us");
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no {what} within {within:?}; saw {:#?}",
                *self.seen.borrow()
            )
        })
    }
}

/// `GET .../invocation/next`: hands out `runtime`'s next invocation, waiting
/// for one as long as it takes, with cargo-lambda's past deadline.
async fn next(
    State(seen): State<Arc<watch::Sender<Seen>>>,
    Path(runtime): Path<String>,
) -> Response {
    let mut changes = seen.subscribe();
    seen.send_modify(|seen| seen.polls.push(runtime.clone()));
    loop {
        let mut invocation = None;
        seen.send_if_modified(|seen| {
            invocation = seen.queued.get_mut(&runtime).and_then(VecDeque::pop_front);
            if let Some((id, _)) = &invocation {
                seen.handed_out.insert(id.clone(), now_ms());
            }
            invocation.is_some()
        });
        if let Some((id, event)) = invocation {
            let headers = [
                ("lambda-runtime-aws-request-id", id),
                ("lambda-runtime-deadline-ms", "600000".to_owned()),
            ];
            return (headers, axum::Json(event)).into_response();
        }
        if changes.changed().await.is_err() {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
}

/// `POST .../invocation/{id}/response|error`: records the answer.
async fn answered(
    State(seen): State<Arc<watch::Sender<Seen>>>,
    Path((_runtime, request_id, outcome)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let answer = Answer {
        request_id,
        outcome,
        headers,
        body,
    };
    seen.send_modify(|seen| seen.answers.push(answer));
    StatusCode::ACCEPTED
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
