//! The Lambda sandbox around each function instance under `make dev`.
//!
//! cargo-lambda's Runtime API gives every invocation the same deadline,
//! 600,000 ms after the Unix epoch (always past), and every function 4 GB.
//! Code that budgets its time (the rollup's quota alerts, chat's stream
//! cut-off) then sees none left, and no timeout ever fires, so a feature can
//! pass its tests and never happen locally. cargo runs each function binary
//! through this sandbox (`make dev` sets cargo's target runner to
//! `infra sandbox`), which keeps the template's promises as Lambda does:
//! - `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` is the function's `MemorySize`;
//! - it proxies the Runtime API and gives each invocation a deadline of
//!   now + `Timeout`;
//! - an invocation still running at its deadline fails with
//!   `Sandbox.Timedout`, and the instance is killed and started afresh;
//! - with `ReservedConcurrentExecutions`, an instance waits for one of that
//!   many slots before it starts, so no more run at once.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::cloud::proxy::{self, Body, Forwarder};
use crate::cloud::template::FunctionSpec;

/// The variable naming the settings file, set for cargo-lambda by `make dev`.
pub const SETTINGS_VAR: &str = "INGOT_SANDBOX";

const DEADLINE_HEADER: &str = "lambda-runtime-deadline-ms";
const REQUEST_ID_HEADER: &str = "lambda-runtime-aws-request-id";

/// What the template says about each function, written by `make dev`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    pub functions: HashMap<String, Limits>,
    /// Where reserved-concurrency slots are locked.
    pub slots: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub timeout_secs: u64,
    pub memory_mb: u64,
    pub reserved_concurrency: Option<u64>,
}

impl Settings {
    /// Each function's limits as the template sets them; slots under `slots`.
    pub fn of(functions: &[FunctionSpec], slots: PathBuf) -> Self {
        let limits = |f: &FunctionSpec| Limits {
            timeout_secs: f.timeout_secs,
            memory_mb: f.memory_mb,
            reserved_concurrency: f.reserved_concurrency,
        };
        Self {
            functions: functions
                .iter()
                .map(|f| (f.binary.clone(), limits(f)))
                .collect(),
            slots,
        }
    }

    /// The cargo runner variable that puts `sandbox` (this binary's
    /// `sandbox` subcommand) around every `cargo run` of the host target.
    pub fn runner(sandbox: &Path) -> (String, String) {
        let arch = std::env::consts::ARCH.to_uppercase();
        (
            format!("CARGO_TARGET_{arch}_UNKNOWN_LINUX_GNU_RUNNER"),
            format!("{} sandbox", sandbox.display()),
        )
    }
}

/// The Runtime API between one instance and cargo-lambda.
struct Proxy {
    upstream: Forwarder,
    timeout: Duration,
    /// Invocations handed out and not yet answered, by request id.
    inflight: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    timed_out: mpsc::UnboundedSender<String>,
}

/// Runs `program` as one instance of the function cargo-lambda named, until
/// it exits; returns its exit code.
pub async fn run(program: OsString, args: Vec<OsString>) -> Result<ExitCode, String> {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME")
        .map_err(|_| "AWS_LAMBDA_FUNCTION_NAME is not set (is cargo-lambda running this?)")?;
    let upstream =
        std::env::var("AWS_LAMBDA_RUNTIME_API").map_err(|_| "AWS_LAMBDA_RUNTIME_API is not set")?;
    let settings_path =
        std::env::var_os(SETTINGS_VAR).ok_or_else(|| format!("{SETTINGS_VAR} is not set"))?;
    let settings: Settings = std::fs::read(&settings_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: {e}", PathBuf::from(&settings_path).display()))?;
    let limits = *settings
        .functions
        .get(&function)
        .ok_or_else(|| format!("{function} is not in template.yaml"))?;
    let _slot = match limits.reserved_concurrency {
        Some(slots) => Some(Slot::acquire(&settings.slots, &function, slots).await?),
        None => None,
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("sandbox listener: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let (timed_out, mut timeouts) = mpsc::unbounded_channel();
    let proxy = Arc::new(Proxy {
        upstream: Forwarder::new(&upstream),
        timeout: Duration::from_secs(limits.timeout_secs),
        inflight: Mutex::new(HashMap::new()),
        timed_out,
    });
    let handler = proxy.clone();
    tokio::spawn(proxy::serve(listener, move |request| {
        let proxy = handler.clone();
        async move { proxy.forward(request).await }
    }));

    loop {
        let mut command = tokio::process::Command::new(&program);
        // SAFETY: prctl is async-signal-safe; the instance dies with its sandbox.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .args(&args)
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://{local}"))
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                limits.memory_mb.to_string(),
            )
            .env_remove(SETTINGS_VAR)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", PathBuf::from(&program).display()))?;
        tokio::select! {
            status = child.wait() => {
                let code = status.map_err(|e| e.to_string())?.code().unwrap_or(1);
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            Some(request_id) = timeouts.recv() => {
                let _ = child.kill().await;
                eprintln!(
                    "{function}: invocation {request_id} timed out after {} s: instance restarted",
                    limits.timeout_secs
                );
                proxy.fail_timed_out(&request_id).await;
            }
        }
    }
}

impl Proxy {
    /// Passes one Runtime API call through, setting the deadline of each
    /// invocation handed out and settling it once answered.
    async fn forward(self: &Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let answered = answered_request_id(&path);
        let response = self.upstream.forward(request).await;
        if let Some(request_id) = answered {
            self.settle(&request_id);
        }
        let (mut parts, body) = response.into_parts();
        if path.ends_with("/invocation/next")
            && let Some(request_id) = parts
                .headers
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        {
            let deadline = SystemTime::now() + self.timeout;
            let millis = deadline
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            parts.headers.insert(DEADLINE_HEADER, millis.into());
            self.watch(request_id);
        }
        Response::from_parts(parts, body)
    }

    /// Starts the clock on an invocation.
    fn watch(self: &Arc<Self>, request_id: String) {
        let proxy = self.clone();
        let id = request_id.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(proxy.timeout).await;
            if proxy.take(&id).is_some() {
                let _ = proxy.timed_out.send(id);
            }
        });
        if let Ok(mut inflight) = self.inflight.lock() {
            inflight.insert(request_id, timer);
        }
    }

    /// The function answered in time: stop its clock.
    fn settle(&self, request_id: &str) {
        if let Some(timer) = self.take(request_id) {
            timer.abort();
        }
    }

    /// The clock of an invocation still in flight, which is then no longer.
    fn take(&self, request_id: &str) -> Option<tokio::task::JoinHandle<()>> {
        self.inflight.lock().ok()?.remove(request_id)
    }

    /// Answers a timed-out invocation for the killed instance, as Lambda does.
    async fn fail_timed_out(&self, request_id: &str) {
        let message = format!("Task timed out after {}.00 seconds", self.timeout.as_secs());
        let body = serde_json::json!({"errorType": "Sandbox.Timedout", "errorMessage": message});
        let request = Request::post(format!(
            "{}/2018-06-01/runtime/invocation/{request_id}/error",
            self.upstream.upstream()
        ))
        .header("lambda-runtime-function-error-type", "Sandbox.Timedout")
        .header("content-type", "application/json")
        .body(proxy::full(body.to_string()));
        if let Ok(request) = request {
            let answer = self.upstream.send(request).await;
            if !answer.status().is_success() {
                eprintln!(
                    "cannot report the timeout of {request_id}: {}",
                    answer.status()
                );
            }
        }
    }
}

/// The request id a `POST .../invocation/{id}/response|error` answers.
fn answered_request_id(path: &str) -> Option<String> {
    let rest = path.split("/invocation/").nth(1)?;
    let (id, verb) = rest.split_once('/')?;
    matches!(verb, "response" | "error").then(|| id.to_owned())
}

/// One of a function's reserved-concurrency slots, held (an exclusive
/// `flock`) for the instance's lifetime and freed by the kernel when it ends.
struct Slot {
    _lock: std::fs::File,
}

impl Slot {
    async fn acquire(dir: &Path, function: &str, slots: u64) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        loop {
            for n in 0..slots {
                let path = dir.join(format!("{function}.{n}.lock"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
                let locked = unsafe {
                    libc::flock(
                        std::os::fd::AsRawFd::as_raw_fd(&file),
                        libc::LOCK_EX | libc::LOCK_NB,
                    )
                };
                if locked == 0 {
                    return Ok(Self { _lock: file });
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_request_id_an_answer_settles() {
        let id = |p| answered_request_id(p);
        assert_eq!(
            id("/2018-06-01/runtime/invocation/abc-1/response"),
            Some("abc-1".to_owned())
        );
        assert_eq!(
            id("/.rt/rollup/2018-06-01/runtime/invocation/abc-1/error"),
            Some("abc-1".to_owned())
        );
        assert_eq!(id("/2018-06-01/runtime/invocation/next"), None);
        assert_eq!(id("/2018-06-01/runtime/init/error"), None);
    }

    #[test]
    fn the_runner_variable_names_the_host_target() {
        let (name, value) = Settings::runner(Path::new("/x/infra"));
        assert!(name.starts_with("CARGO_TARGET_") && name.ends_with("_UNKNOWN_LINUX_GNU_RUNNER"));
        assert_eq!(value, "/x/infra sandbox");
    }
}
