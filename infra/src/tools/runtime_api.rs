//! A small local Runtime API (the protocol Lambda's `provided.al2023`
//! speaks) and the function processes it serves: how the benchmark, the
//! arm64 package check and the concurrency test run a real `bootstrap`.
//!
//! A process is started as Lambda would start it (its environment only, no
//! terminal), optionally under a runner such as `qemu-aarch64-static`, and
//! handed events one by one or, with `AWS_LAMBDA_MAX_CONCURRENCY`, several
//! at once. Every wait is bounded: a broken binary fails, it never hangs.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{Barrier, mpsc};

const RUNTIME_PREFIX: &str = "/2018-06-01/runtime";

/// How long a process may take to answer one event (qemu is slow).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// What the Runtime API saw of one process.
#[derive(Default)]
struct RunState {
    events: VecDeque<Value>,
    first_poll: Option<Instant>,
    /// When the event being handled was handed out.
    handed_at: Option<Instant>,
    handing: Handing,
}

/// How a process is handed its events (by default: as fast as it asks,
/// each response taken alone).
#[derive(Default)]
struct Handing {
    /// Holds every response until this many are in: only a process running
    /// that many invocations at once gets past it.
    overlap: Option<Arc<Barrier>>,
    /// How long each event after the first is held once asked for: the
    /// process then waits idle between invocations, as a Lambda instance
    /// does between requests that are not back to back.
    gap: Duration,
}

/// One answer of a function to the Runtime API.
pub struct Answer {
    pub handed: Option<Instant>,
    /// When the first bytes of the response arrived (for a streamed one, its
    /// prelude: status and headers).
    pub first_byte: Option<Instant>,
    /// When a streamed body first carried a chat `content_delta`.
    pub first_delta: Option<Instant>,
    pub at: Instant,
    /// The response body, for checks.
    pub body: Vec<u8>,
    /// Why the answer is not a success, if it is not.
    problem: Option<String>,
}

#[derive(Clone)]
struct Api {
    state: Arc<Mutex<RunState>>,
    responses: mpsc::UnboundedSender<Answer>,
}

impl Api {
    fn state(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn next(State(api): State<Api>) -> axum::response::Response {
    let gap = {
        let state = api.state();
        state
            .first_poll
            .map(|_| state.handing.gap)
            .unwrap_or_default()
    };
    if !gap.is_zero() {
        tokio::time::sleep(gap).await;
    }
    let event = {
        let mut state = api.state();
        state.first_poll.get_or_insert_with(Instant::now);
        let event = state.events.pop_front();
        if event.is_some() {
            state.handed_at = Some(Instant::now());
        }
        event
    };
    let Some(event) = event else {
        // No more events for this process: hold the poll until it is killed.
        return std::future::pending().await;
    };
    let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(
        "lambda-runtime-aws-request-id",
        uuid::Uuid::new_v4().to_string(),
    );
    set("lambda-runtime-deadline-ms", deadline.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:local".to_owned(),
    );
    set(
        "lambda-runtime-trace-id",
        "Root=1-00000000-000000000000000000000000".to_owned(),
    );
    set("content-type", "application/json".to_owned());
    (headers, event.to_string()).into_response()
}

/// Reads the response as it arrives: a streaming function (response mode
/// `streaming`) sends it chunk by chunk, and the first chat delta is timed.
async fn respond(
    State(api): State<Api>,
    UrlPath((_, outcome)): UrlPath<(String, String)>,
    body: axum::body::Body,
) -> StatusCode {
    // Read before the runtime can poll for (and be handed) the next event.
    let (handed, overlap) = {
        let state = api.state();
        (state.handed_at, state.handing.overlap.clone())
    };
    let mut stream = body.into_data_stream();
    let (mut seen, mut first_byte, mut first_delta) = (Vec::new(), None, None);
    while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
        first_byte.get_or_insert_with(Instant::now);
        seen.extend_from_slice(&chunk);
        if first_delta.is_none() && seen.windows(13).any(|w| w == b"content_delta") {
            first_delta = Some(Instant::now());
        }
    }
    let at = Instant::now();
    // The invocation is not over until this call returns: a process that
    // runs one at a time never gets a second response here.
    let overlapped = match overlap {
        Some(barrier) => tokio::time::timeout(ANSWER_WITHIN, barrier.wait())
            .await
            .is_ok(),
        None => true,
    };
    let problem = if outcome != "response" {
        Some(format!("reported an {outcome}"))
    } else if !overlapped {
        Some("answered alone: its other invocations never ran at the same time".to_owned())
    } else {
        None
    };
    let _ = api.responses.send(Answer {
        handed,
        first_byte,
        first_delta,
        at,
        body: seen,
        problem,
    });
    StatusCode::ACCEPTED
}

async fn init_error(State(api): State<Api>, _body: Bytes) -> StatusCode {
    let _ = api.responses.send(Answer {
        handed: None,
        first_byte: None,
        first_delta: None,
        at: Instant::now(),
        body: Vec::new(),
        problem: Some("failed to start (init error)".to_owned()),
    });
    StatusCode::ACCEPTED
}

/// A local Runtime API and the processes it serves.
pub struct Harness {
    api: Api,
    responses: mpsc::UnboundedReceiver<Answer>,
    address: String,
    /// Runs each binary under this program (e.g. `qemu-aarch64-static`).
    runner: Option<PathBuf>,
}

impl Harness {
    pub async fn start() -> Result<Self, String> {
        let (tx, responses) = mpsc::unbounded_channel();
        let api = Api {
            state: Arc::default(),
            responses: tx,
        };
        let app = Router::new()
            .route(&format!("{RUNTIME_PREFIX}/invocation/next"), get(next))
            .route(
                &format!("{RUNTIME_PREFIX}/invocation/{{id}}/{{outcome}}"),
                post(respond),
            )
            .route(&format!("{RUNTIME_PREFIX}/init/error"), post(init_error))
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let address = listener
            .local_addr()
            .map_err(|e| e.to_string())?
            .to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            api,
            responses,
            address,
            runner: None,
        })
    }

    /// Every process from now on runs under `runner`.
    pub fn with_runner(mut self, runner: PathBuf) -> Self {
        self.runner = Some(runner);
        self
    }

    /// Starts `binary` as Lambda would, to be handed `events`.
    fn spawn(
        &self,
        binary: &Path,
        name: &str,
        env: &[(String, String)],
        events: Vec<Value>,
        handing: Handing,
    ) -> Result<tokio::process::Child, String> {
        *self.api.state() = RunState {
            events: events.into(),
            handing,
            ..RunState::default()
        };
        let mut command = match &self.runner {
            Some(runner) => {
                let mut command = tokio::process::Command::new(runner);
                command.arg(binary);
                command
            }
            None => tokio::process::Command::new(binary),
        };
        command
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", "/usr/bin:/bin")
            .env("AWS_LAMBDA_RUNTIME_API", &self.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("_HANDLER", "bootstrap")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))
    }

    /// The next answer, or why there was none.
    async fn answer(&mut self, name: &str) -> Result<Answer, String> {
        let answer = tokio::time::timeout(ANSWER_WITHIN, self.responses.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| format!("{name} did not answer its event"))?;
        match answer.problem {
            None => Ok(answer),
            Some(problem) => Err(format!("{name} {problem}")),
        }
    }

    /// One cold start: `(init ms, first invocation ms, peak RSS KiB, answer)`.
    pub async fn cold_start(
        &mut self,
        binary: &Path,
        name: &str,
        env: &[(String, String)],
        event: &Value,
    ) -> Result<(f64, f64, Option<u64>, Answer), String> {
        let started = Instant::now();
        let mut child = self.spawn(binary, name, env, vec![event.clone()], Handing::default())?;
        let answered = self.answer(name).await;
        let rss = child.id().and_then(peak_rss_kib);
        let _ = child.kill().await;
        let answer = answered?;
        let first_poll = self.api.state().first_poll.ok_or("no poll recorded")?;
        Ok((
            ms(first_poll - started),
            ms(answer.at - first_poll),
            rss,
            answer,
        ))
    }

    /// `count` warm invocations with `event` (the first, cold one is left
    /// out): per invocation `(first byte, first chat delta, answer)`, in ms
    /// from handing the event out.
    pub async fn warm(
        &mut self,
        binary: &Path,
        name: &str,
        env: &[(String, String)],
        event: &Value,
        count: usize,
    ) -> Result<Vec<(Option<f64>, Option<f64>, f64)>, String> {
        self.warm_answers(binary, name, env, event, count)
            .await?
            .into_iter()
            .map(|answer| {
                let handed = answer.handed.ok_or("no event handed")?;
                let since = |t: Instant| ms(t - handed);
                Ok((
                    answer.first_byte.map(since),
                    answer.first_delta.map(since),
                    since(answer.at),
                ))
            })
            .collect()
    }

    /// One process answering `count + 1` invocations with `event`, one
    /// after another: the answers but the first (cold) one.
    pub async fn warm_answers(
        &mut self,
        binary: &Path,
        name: &str,
        env: &[(String, String)],
        event: &Value,
        count: usize,
    ) -> Result<Vec<Answer>, String> {
        let events = std::iter::repeat_n(event.clone(), count + 1).collect();
        let (mut answers, _) = self
            .answers(binary, name, env, events, Handing::default())
            .await?;
        answers.remove(0);
        Ok(answers)
    }

    /// The CPU time of one warm invocation, in µs, and the warm answers: a
    /// process handed `event(1..=count + 1)`, each `gap` after it asked,
    /// less one handed `event(0)` alone (its start and cold invocation), by
    /// the kernel's run time of the process's threads. Every event is its
    /// own, so none repeats one the stores have already seen.
    pub async fn cpu_per_invocation(
        &mut self,
        binary: &Path,
        name: &str,
        env: &[(String, String)],
        event: impl Fn(usize) -> Value,
        count: usize,
        gap: Duration,
    ) -> Result<(f64, Vec<Answer>), String> {
        let (_, alone) = self
            .answers(binary, name, env, vec![event(0)], Handing::default())
            .await?;
        let events = (1..=count + 1).map(event).collect();
        let paced = Handing {
            gap,
            ..Handing::default()
        };
        let (mut answers, all) = self.answers(binary, name, env, events, paced).await?;
        let unreadable = || format!("{name}: its CPU time cannot be read");
        let warm = all
            .ok_or_else(unreadable)?
            .saturating_sub(alone.ok_or_else(unreadable)?);
        answers.remove(0);
        Ok((warm.as_secs_f64() * 1e6 / count.max(1) as f64, answers))
    }

    /// One process with `AWS_LAMBDA_MAX_CONCURRENCY=count`, handed `count`
    /// events that must all be in flight at once: no response is
    /// acknowledged until all `count` have arrived. Their answers, or why not.
    pub async fn overlapping(
        &mut self,
        binary: &Path,
        name: &str,
        env: &[(String, String)],
        event: &Value,
        count: usize,
    ) -> Result<Vec<Answer>, String> {
        let mut env = env.to_vec();
        env.push((
            shared::lambda::MAX_CONCURRENCY_VAR.to_owned(),
            count.to_string(),
        ));
        let events = std::iter::repeat_n(event.clone(), count).collect();
        let together = Handing {
            overlap: Some(Arc::new(Barrier::new(count))),
            ..Handing::default()
        };
        let (answers, _) = self.answers(binary, name, &env, events, together).await?;
        Ok(answers)
    }

    /// One process handed `events` as `handing` says: an answer to each, in
    /// the order they came, and the CPU time it used.
    async fn answers(
        &mut self,
        binary: &Path,
        name: &str,
        env: &[(String, String)],
        events: Vec<Value>,
        handing: Handing,
    ) -> Result<(Vec<Answer>, Option<Duration>), String> {
        let count = events.len();
        let mut child = self.spawn(binary, name, env, events, handing)?;
        let mut answers = Vec::with_capacity(count);
        for _ in 0..count {
            answers.push(self.answer(name).await?);
        }
        let cpu = child.id().and_then(cpu_time);
        let _ = child.kill().await;
        Ok((answers, cpu))
    }
}

/// The run time of a live process's threads (`schedstat`: nanoseconds,
/// where `stat` counts 10 ms ticks).
fn cpu_time(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|task| run_time(&task.path().join("schedstat")))
            .sum(),
    )
}

/// The run time a `schedstat` file reports (its first field, nanoseconds):
/// a thread's, or `/proc/thread-self/schedstat` for the caller's own.
pub fn run_time(schedstat: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(schedstat).ok()?;
    Some(Duration::from_nanos(
        stat.split_whitespace().next()?.parse().ok()?,
    ))
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `VmHWM` of a live process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
