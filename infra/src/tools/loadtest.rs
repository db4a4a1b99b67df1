//! `make loadtest`: drives `make dev` (or a deployed stage) as the seed
//! prototype's users did, then proves nothing was lost or counted twice.
//!
//! Open loop: requests leave at a fixed rate whatever the answers, so a slow
//! service shows up as latency and a lower achieved rate, never as a politely
//! slower client. The seed's mix is 80% `POST /events` (one event per request,
//! or a batch) with 10% of those re-sent with the same ids, as a retrying
//! client would, and 20% `GET /usage/{tenant}`; `LOADTEST_MIX=ingest` sends
//! only the POSTs. After the load, once the queue has drained, every tenant's
//! usage is checked per feature against the distinct events it accepted, in
//! both directions (lost and double-counted are reported apart, so opposite
//! errors never cancel). A POST that failed may still have been taken (a 503
//! after the queue did get it, a timeout), so it is re-sent with the same ids
//! once the load ends, as a retrying client would; latency is measured from
//! when each request was due, so a generator running late cannot hide it.
//!
//! Against `make dev` it also reports where the CPU went, by process (the
//! functions, the emulator, cargo-lambda, the sandboxes, the poller and this
//! load generator), and Ingot's own cost per event from the functions' EMF
//! metrics; figures go to docs/perf.md.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cloud::bootstrap::emulator_config;
use crate::tools::bench::replace_section;

/// Where the load goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A running `make dev`: its queue, logs and processes are on this machine.
    Local {
        root: PathBuf,
        lambda: String,
        emulator: String,
        region: String,
        stack: String,
        /// `make dev`'s log, where the functions' metrics are.
        log: PathBuf,
        /// The functions' binaries, whose processes' CPU is reported.
        functions: Vec<String>,
    },
    /// A deployed stage: base URLs of its ingest and usage APIs, and its admin token.
    Deployed {
        ingest: String,
        usage: String,
        admin_token: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// 80% POST /events (10% of them resends), 20% GET /usage.
    Seed,
    /// POST /events only (10% of them resends).
    Ingest,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: Target,
    pub rate: u32,
    pub duration: Duration,
    /// At the same rate before the measured window, so every function has
    /// scaled out; counted in the exactness check, not in the figures.
    pub warmup: Duration,
    pub tenants: usize,
    pub events_per_request: usize,
    pub mix: Mix,
    /// Of the POSTs, the percentage that re-send an earlier body.
    pub resend_percent: u64,
}

impl LoadOptions {
    /// From `LOADTEST_*`; `local` is used unless `LOADTEST_INGEST_URL`,
    /// `LOADTEST_USAGE_URL` and `LOADTEST_ADMIN_TOKEN` name a deployed stage.
    pub fn from_env(local: Target) -> Result<Self, String> {
        // A number in `range` (`what` says which), or `default` when unset.
        let within =
            |name: &str, default: u64, range: RangeInclusive<u64>, what: &str| match std::env::var(
                name,
            ) {
                Ok(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| format!("{name}={v:?} is not {what}")),
                Err(_) => Ok(default),
            };
        let number =
            |name: &str, default: u64| within(name, default, 1..=u64::MAX, "a positive number");
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let target = match (
            var("LOADTEST_INGEST_URL"),
            var("LOADTEST_USAGE_URL"),
            var("LOADTEST_ADMIN_TOKEN"),
        ) {
            (None, None, None) => local,
            (Some(ingest), Some(usage), Some(admin_token)) => Target::Deployed {
                ingest: ingest.trim_end_matches('/').to_owned(),
                usage: usage.trim_end_matches('/').to_owned(),
                admin_token,
            },
            _ => {
                return Err(
                    "a deployed target needs LOADTEST_INGEST_URL, LOADTEST_USAGE_URL \
                     and LOADTEST_ADMIN_TOKEN together"
                        .to_owned(),
                );
            }
        };
        let mix = match var("LOADTEST_MIX").as_deref() {
            None | Some("seed") => Mix::Seed,
            Some("ingest") => Mix::Ingest,
            Some(other) => return Err(format!("LOADTEST_MIX={other:?}: seed or ingest")),
        };
        Ok(Self {
            target,
            rate: u32::try_from(number("LOADTEST_RATE", 330)?).map_err(|e| e.to_string())?,
            duration: Duration::from_secs(number("LOADTEST_SECONDS", 60)?),
            warmup: Duration::from_secs(number("LOADTEST_WARMUP_SECONDS", 5)?),
            tenants: number("LOADTEST_TENANTS", 20)? as usize,
            events_per_request: number("LOADTEST_EVENTS_PER_REQUEST", 1)? as usize,
            mix,
            resend_percent: within("LOADTEST_RESEND_PERCENT", 10, 0..=100, "0 to 100")?,
        })
    }

    fn url(&self, function: &str, path: &str) -> String {
        match &self.target {
            Target::Local { lambda, .. } => format!("{lambda}/lambda-url/{function}{path}"),
            Target::Deployed { ingest, usage, .. } => {
                let base = if function == "ingest" { ingest } else { usage };
                format!("{base}{path}")
            }
        }
    }
}

/// A tiny xorshift generator: the mix of requests, not cryptography.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(uuid::Uuid::new_v4().as_u64_pair().0 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Ingest,
    Resend,
    Usage,
}

/// One event as sent: what the usage must show for it once counted.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    feature: String,
    tokens: u64,
}

#[derive(Default)]
struct Record {
    latencies: HashMap<Kind, Vec<f64>>,
    errors: Vec<String>,
    /// tenant → event id → event, of accepted events.
    accepted: HashMap<String, HashMap<String, Sent>>,
    /// POSTs that failed: the service may or may not have taken them, so
    /// they are re-sent with the same ids afterwards, as a client retries.
    in_doubt: Vec<InDoubt>,
}

struct InDoubt {
    tenant: Arc<Tenant>,
    body: Value,
    events: Vec<Sent>,
}

struct Tenant {
    id: String,
    key: String,
    /// Bodies sent, for resends.
    sent: Mutex<Vec<(Value, Vec<Sent>)>>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// What each kind of process on this machine has used so far, and how many
/// of that kind are running.
type CpuSplit = HashMap<String, CpuUse>;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuUse {
    /// CPU time (user + system), in milliseconds.
    ms: f64,
    processes: usize,
}

/// The process kinds of `make dev`, by executable and command line; a
/// function's processes go by its binary (`functions`, from the template).
fn process_kind<'a>(
    exe: &'a str,
    cmdline: &[String],
    own: bool,
    functions: &[String],
) -> Option<&'a str> {
    if own {
        return Some("load generator");
    }
    if functions.iter().any(|f| f == exe) {
        return Some(exe);
    }
    let args = cmdline.join(" ");
    match exe {
        "infra" if cmdline.get(1).is_some_and(|a| a == "sandbox") => Some("sandboxes"),
        "infra" => Some("infra dev (SQS poller, schedule)"),
        "cargo-lambda" => Some("cargo-lambda"),
        "cargo" => Some("cargo (instance launchers)"),
        _ if args.contains("ministack") || args.contains("moto_server") => Some("emulator"),
        _ => None,
    }
}

/// CPU time (user + system) so far of every `make dev` process, by kind.
fn cpu_split(functions: &[String]) -> CpuSplit {
    let own = std::process::id().to_string();
    let mut split = CpuSplit::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return split;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(exe) = std::fs::read_link(path.join("exe")) else {
            continue;
        };
        let exe = exe
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmdline: Vec<String> = std::fs::read(path.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let own = entry.file_name().to_string_lossy() == own;
        let Some(kind) = process_kind(&exe, &cmdline, own, functions) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            // A tick is 10 ms (USER_HZ is 100 on Linux).
            let usage = split.entry(kind.to_owned()).or_default();
            usage.ms += (user + system) * 10.0;
            usage.processes += 1;
        }
    }
    split
}

/// Sums the EMF metrics the functions logged to `.local/dev.log` after `offset`.
fn metrics_since(log: &std::path::Path, offset: u64) -> HashMap<(String, String), f64> {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]).into_owned();
    let mut sums = HashMap::new();
    for line in text.lines() {
        let Some(json) = line.find("{\"").map(|i| &line[i..]) else {
            continue;
        };
        let Ok(doc) = serde_json::from_str::<Value>(json) else {
            continue;
        };
        let Some(function) = doc["Function"].as_str() else {
            continue;
        };
        // Only the record's declared metrics: it also carries log fields
        // (a request's status and latency).
        let declared = doc["_aws"]["CloudWatchMetrics"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|set| set["Metrics"].as_array().into_iter().flatten())
            .filter_map(|metric| metric["Name"].as_str());
        for name in declared {
            if let Some(v) = doc[name].as_f64() {
                *sums
                    .entry((function.to_owned(), name.to_owned()))
                    .or_default() += v;
            }
        }
    }
    sums
}

/// What `make dev` lets the load test see beside the HTTP APIs.
struct Local {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    log: PathBuf,
    functions: Vec<String>,
}

impl Local {
    async fn connect(
        emulator: &str,
        region: &str,
        stack: &str,
        log: PathBuf,
        functions: Vec<String>,
    ) -> Result<(Self, String), String> {
        let aws = emulator_config(emulator, region).await;
        let admin = aws_sdk_secretsmanager::Client::new(&aws)
            .get_secret_value()
            .secret_id(format!("{stack}/admin-token"))
            .send()
            .await
            .map_err(|e| format!("admin token: {e} (is `make dev` running?)"))?
            .secret_string()
            .map(str::to_owned)
            .ok_or("the admin token is empty")?;
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let queue_url = sqs
            .get_queue_url()
            .queue_name(format!("{stack}-events.fifo"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        Ok((
            Self {
                sqs,
                queue_url,
                log,
                functions,
            },
            admin,
        ))
    }

    async fn queue_depth(&self) -> Result<u64, String> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let attrs = out.attributes().cloned().unwrap_or_default();
        let get = |a: A| {
            attrs
                .get(&a)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(get(A::ApproximateNumberOfMessages) + get(A::ApproximateNumberOfMessagesNotVisible))
    }

    /// Waits until the events queue stays empty for three seconds; returns
    /// when it first became empty.
    async fn drained(&self) -> Result<Instant, String> {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut empty_since: Option<Instant> = None;
        loop {
            if Instant::now() > deadline {
                return Err("the events queue did not drain within 10 minutes".to_owned());
            }
            if self.queue_depth().await? == 0 {
                let since = *empty_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(3) {
                    return Ok(since);
                }
            } else {
                empty_since = None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Per (tenant, feature): tokens and events expected and counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    tokens: u64,
    events: u64,
}

/// How far counted usage is from the accepted events, each direction apart.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Discrepancy {
    pub lost_tokens: u64,
    pub lost_events: u64,
    pub extra_tokens: u64,
    pub extra_events: u64,
}

impl std::ops::AddAssign for Discrepancy {
    fn add_assign(&mut self, other: Self) {
        self.lost_tokens += other.lost_tokens;
        self.lost_events += other.lost_events;
        self.extra_tokens += other.extra_tokens;
        self.extra_events += other.extra_events;
    }
}

impl Discrepancy {
    fn add(&mut self, expected: Tally, counted: Tally) {
        self.lost_tokens += expected.tokens.saturating_sub(counted.tokens);
        self.lost_events += expected.events.saturating_sub(counted.events);
        self.extra_tokens += counted.tokens.saturating_sub(expected.tokens);
        self.extra_events += counted.events.saturating_sub(expected.events);
    }

    fn exact(&self) -> bool {
        *self == Self::default()
    }
}

/// Expected per feature, from the accepted events of one tenant.
fn expected_by_feature(events: &HashMap<String, Sent>) -> HashMap<String, Tally> {
    let mut tally: HashMap<String, Tally> = HashMap::new();
    for event in events.values() {
        let t = tally.entry(event.feature.clone()).or_default();
        t.tokens += event.tokens;
        t.events += 1;
    }
    tally
}

/// Counted per feature, from a `GET /usage/{tenant}` answer.
fn counted_by_feature(usage: &Value) -> HashMap<String, Tally> {
    usage["features"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["feature"].as_str().unwrap_or_default().to_owned(),
                Tally {
                    tokens: f["tokens"].as_u64().unwrap_or(0),
                    events: f["events"].as_u64().unwrap_or(0),
                },
            )
        })
        .collect()
}

fn compare(
    expected: &HashMap<String, Tally>,
    counted: &HashMap<String, Tally>,
) -> (Discrepancy, Vec<String>) {
    let mut discrepancy = Discrepancy::default();
    let mut notes = Vec::new();
    let mut features: Vec<&String> = expected.keys().chain(counted.keys()).collect();
    features.sort();
    features.dedup();
    for feature in features {
        let (e, c) = (
            expected.get(feature).copied().unwrap_or_default(),
            counted.get(feature).copied().unwrap_or_default(),
        );
        if e != c {
            notes.push(format!("{feature}: counted {c:?}, expected {e:?}"));
        }
        discrepancy.add(e, c);
    }
    (discrepancy, notes)
}

pub async fn run(options: LoadOptions) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let (local, admin) = match &options.target {
        Target::Local {
            emulator,
            region,
            stack,
            log,
            functions,
            ..
        } => {
            let (local, admin) =
                Local::connect(emulator, region, stack, log.clone(), functions.clone()).await?;
            (Some(local), admin)
        }
        Target::Deployed { admin_token, .. } => (None, admin_token.clone()),
    };

    // Tenants, each with its own key. Quotas are out of reach: this measures counting.
    let mut tenants = Vec::new();
    for i in 0..options.tenants {
        let body = json!({"name": format!("load-{i:03}"), "monthly_quota": 1_000_000_000_000_u64, "billing_day": 1 + (i % 28), "tier": "pro"});
        let created: Value = http
            .post(options.url("usage", "/admin/tenants"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("creating tenants: {e} (is the target up?)"))?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        tenants.push(Arc::new(Tenant {
            id: created["id"]
                .as_str()
                .ok_or(format!("tenant not created: {created}"))?
                .to_owned(),
            key: created["api_key"].as_str().unwrap_or_default().to_owned(),
            sent: Mutex::default(),
        }));
    }

    let record = Arc::new(Mutex::new(Record::default()));
    let mut rng = Rng::new();
    let warmup = Phase::run(&options, &http, &tenants, &record, &mut rng, options.warmup).await;
    let (mut retried, mut unresolved) = retry_in_doubt(&options, &http, &record).await;
    if let Some(local) = &local {
        local.drained().await?;
    }
    let log_offset = local
        .as_ref()
        .and_then(|l| std::fs::metadata(&l.log).ok())
        .map_or(0, |m| m.len());
    record.lock().expect("record").latencies.clear();
    let functions = local.as_ref().map_or(&[][..], |l| &l.functions[..]);
    let cpu_before = cpu_split(functions);
    let measured = Phase::run(
        &options,
        &http,
        &tenants,
        &record,
        &mut rng,
        options.duration,
    )
    .await;
    let load_end = Instant::now();
    let (more_retried, more_unresolved) = retry_in_doubt(&options, &http, &record).await;
    retried += more_retried;
    unresolved += more_unresolved;
    let drained = match &local {
        Some(local) => Some(local.drained().await?.saturating_duration_since(load_end)),
        None => None,
    };
    let cpu_after = cpu_split(functions);
    let window = cpu_window(&cpu_before, &cpu_after);

    let record = Arc::try_unwrap(record)
        .map_err(|_| "requests still running")?
        .into_inner()
        .map_err(|e| e.to_string())?;
    let (discrepancy, notes, events_accepted) = check(&options, &http, &admin, &tenants, &record)
        .await
        .map_err(|e| format!("checking the counts: {e}"))?;
    for note in &notes {
        println!("  {note}");
    }

    let mut report = summary(&options, &record, &measured, &warmup, drained, &discrepancy);
    report.push_str(&format!(
        "\nEvents accepted in all: {events_accepted}. POSTs that failed and were re-sent \
         afterwards with the same ids, as a client retries: {retried} ({unresolved} never taken).\n"
    ));
    if let Some(local) = &local {
        let metrics = metrics_since(&local.log, log_offset);
        report.push_str(&costs(&metrics, &window, measured.requests));
    }
    if !record.errors.is_empty() {
        report.push_str(&format!(
            "\nFirst errors: {:?}\n",
            &record.errors[..record.errors.len().min(5)]
        ));
    }
    println!("{report}");
    if let Target::Local { root, .. } = &options.target {
        let section = format!(
            "loadtest-{}-{}",
            match options.mix {
                Mix::Seed => "seed",
                Mix::Ingest => "ingest",
            },
            if options.events_per_request == 1 {
                "single".to_owned()
            } else {
                format!("batch{}", options.events_per_request)
            }
        ) + &match options.resend_percent {
            10 => String::new(),
            p => format!("-resend{p}"),
        };
        let perf = root.join("docs/perf.md");
        let doc = std::fs::read_to_string(&perf).unwrap_or_else(|_| "# Performance\n".to_owned());
        std::fs::write(&perf, replace_section(&doc, &section, &report))
            .map_err(|e| e.to_string())?;
        println!("wrote {} (section {section})", perf.display());
    }
    if unresolved > 0 {
        return Err(format!(
            "{unresolved} failed POSTs were never taken on retry: the count check is inconclusive"
        ));
    }
    if !discrepancy.exact() {
        return Err(format!(
            "usage differs from the accepted events: {discrepancy:?}"
        ));
    }
    Ok(())
}

/// One stretch of open-loop load.
struct Phase {
    requests: u64,
    /// First request sent → last answer received.
    elapsed: Duration,
    /// How late the last request left against its schedule (the generator's own lag).
    send_lag: Duration,
}

impl Phase {
    async fn run(
        options: &LoadOptions,
        http: &reqwest::Client,
        tenants: &[Arc<Tenant>],
        record: &Arc<Mutex<Record>>,
        rng: &mut Rng,
        length: Duration,
    ) -> Self {
        let total = (f64::from(options.rate) * length.as_secs_f64()) as u64;
        let period = Duration::from_secs_f64(1.0 / f64::from(options.rate));
        let started = Instant::now();
        let mut send_lag = Duration::ZERO;
        let mut inflight = Vec::with_capacity(total as usize);
        for n in 0..total {
            let due = started + period * n as u32;
            tokio::time::sleep_until(due.into()).await;
            send_lag = due.elapsed();
            let tenant = Arc::clone(&tenants[rng.below(tenants.len() as u64) as usize]);
            let (kind, request, sent) = next_request(options, http, &tenant, rng);
            let record = Arc::clone(record);
            inflight.push(tokio::spawn(async move {
                let result = request.send().await;
                // From when it was due, so a late send counts as waiting.
                let ms = due.elapsed().as_secs_f64() * 1000.0;
                let mut r = record.lock().expect("record");
                r.latencies.entry(kind).or_default().push(ms);
                let failure = match result {
                    Ok(response) if response.status().is_success() => {
                        if let Some((_, events)) = sent {
                            r.accept(&tenant, events);
                        }
                        return;
                    }
                    Ok(response) => format!("{kind:?}: {}", response.status()),
                    Err(e) => format!("{kind:?}: {e}"),
                };
                r.errors.push(failure);
                if let Some((body, events)) = sent {
                    r.in_doubt.push(InDoubt {
                        tenant,
                        body,
                        events,
                    });
                }
            }));
        }
        for task in inflight {
            let _ = task.await;
        }
        Self {
            requests: total,
            elapsed: started.elapsed(),
            send_lag,
        }
    }
}

/// The next request of the mix, and for a POST its body and events.
fn next_request(
    options: &LoadOptions,
    http: &reqwest::Client,
    tenant: &Tenant,
    rng: &mut Rng,
) -> (Kind, reqwest::RequestBuilder, Option<(Value, Vec<Sent>)>) {
    let roll = rng.below(100);
    if options.mix == Mix::Seed && roll < 20 {
        let request = http.get(options.url("usage", &format!("/usage/{}", tenant.id)));
        return (Kind::Usage, request.bearer_auth(&tenant.key), None);
    }
    // Some POSTs (10%) re-send an earlier body with the same ids.
    let resend = {
        let sent = tenant.sent.lock().expect("sent");
        (rng.below(100) < options.resend_percent && !sent.is_empty())
            .then(|| sent[rng.below(sent.len() as u64) as usize].clone())
    };
    let (kind, (body, events)) = match resend {
        Some(previous) => (Kind::Resend, previous),
        None => {
            let events: Vec<Sent> = (0..options.events_per_request)
                .map(|_| Sent {
                    id: format!("lt-{}", uuid::Uuid::new_v4().simple()),
                    feature: format!("f{}", rng.below(5)),
                    tokens: 1 + rng.below(1000),
                })
                .collect();
            let as_json = |e: &Sent| json!({"id": e.id, "feature": e.feature, "tokens": e.tokens});
            let body = match events.as_slice() {
                [one] => as_json(one),
                many => json!({"events": many.iter().map(as_json).collect::<Vec<_>>()}),
            };
            tenant
                .sent
                .lock()
                .expect("sent")
                .push((body.clone(), events.clone()));
            (Kind::Ingest, (body, events))
        }
    };
    (
        kind,
        post(options, http, tenant, &body),
        Some((body, events)),
    )
}

fn post(
    options: &LoadOptions,
    http: &reqwest::Client,
    tenant: &Tenant,
    body: &Value,
) -> reqwest::RequestBuilder {
    http.post(options.url("ingest", "/events"))
        .bearer_auth(&tenant.key)
        .json(body)
}

impl Record {
    fn accept(&mut self, tenant: &Tenant, events: Vec<Sent>) {
        let accepted = self.accepted.entry(tenant.id.clone()).or_default();
        for event in events {
            accepted.insert(event.id.clone(), event);
        }
    }
}

/// Re-sends every POST that failed, with the same ids, until it is taken
/// (five tries, a second apart); returns how many were re-sent and how many
/// never were taken.
async fn retry_in_doubt(
    options: &LoadOptions,
    http: &reqwest::Client,
    record: &Mutex<Record>,
) -> (usize, usize) {
    let in_doubt = std::mem::take(&mut record.lock().expect("record").in_doubt);
    let retried = in_doubt.len();
    let mut unresolved = 0;
    for doubt in in_doubt {
        let mut taken = false;
        for _ in 0..5 {
            let answer = post(options, http, &doubt.tenant, &doubt.body).send().await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                taken = true;
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if taken {
            record
                .lock()
                .expect("record")
                .accept(&doubt.tenant, doubt.events);
        } else {
            unresolved += 1;
        }
    }
    (retried, unresolved)
}

/// Every tenant's usage per feature against its accepted events.
async fn check(
    options: &LoadOptions,
    http: &reqwest::Client,
    admin: &str,
    tenants: &[Arc<Tenant>],
    record: &Record,
) -> Result<(Discrepancy, Vec<String>, usize), String> {
    let mut discrepancy = Discrepancy::default();
    let mut notes = Vec::new();
    let mut events_accepted = 0;
    let none = HashMap::new();
    for tenant in tenants {
        let accepted = record.accepted.get(&tenant.id).unwrap_or(&none);
        events_accepted += accepted.len();
        let usage: Value = http
            .get(options.url("usage", &format!("/usage/{}", tenant.id)))
            .bearer_auth(admin)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let (d, n) = compare(&expected_by_feature(accepted), &counted_by_feature(&usage));
        discrepancy += d;
        notes.extend(n.into_iter().map(|n| format!("{}: {n}", tenant.id)));
    }
    Ok((discrepancy, notes, events_accepted))
}

/// CPU per process kind over the measured window, busiest first, with how
/// many processes of the kind ran at its end (a function's instances: a run
/// with fewer than `make dev`'s default says so in its report).
fn cpu_window(before: &CpuSplit, after: &CpuSplit) -> Vec<(String, CpuUse)> {
    let mut used: Vec<(String, CpuUse)> = after
        .iter()
        .map(|(kind, usage)| {
            let earlier = before.get(kind).map_or(0.0, |u| u.ms);
            let window = CpuUse {
                ms: usage.ms - earlier,
                ..*usage
            };
            (kind.clone(), window)
        })
        .filter(|(_, usage)| usage.ms > 0.0)
        .collect();
    used.sort_by(|a, b| b.1.ms.total_cmp(&a.1.ms));
    used
}

fn summary(
    options: &LoadOptions,
    record: &Record,
    measured: &Phase,
    warmup: &Phase,
    drained: Option<Duration>,
    discrepancy: &Discrepancy,
) -> String {
    let answered: usize = record.latencies.values().map(Vec::len).sum();
    let mut report = format!(
        "`make loadtest` on {} ({}): {} mix, {} event(s) per POST, {} tenants, open loop at {} req/s \
         for {:.0} s after a {:.0} s warm-up.\n\n\
         | requests | achieved rate | generator lag | errors | drained after the load | lost (events / tokens) | double-counted (events / tokens) |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {:.1} req/s | {:.0} ms | {} | {} | **{} / {}** | **{} / {}** |\n\n\
         | request | count | p50 | p95 | p99 |\n|---|---:|---:|---:|---:|\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        crate::tools::bench::machine(),
        match options.mix {
            Mix::Seed => format!(
                "the seed's (80% POST /events, {}% of them resends; 20% GET /usage)",
                options.resend_percent
            ),
            Mix::Ingest => format!(
                "an ingest-only (POST /events, {}% resends)",
                options.resend_percent
            ),
        },
        options.events_per_request,
        options.tenants,
        options.rate,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
        answered,
        measured.requests as f64 / measured.elapsed.as_secs_f64(),
        measured.send_lag.max(warmup.send_lag).as_secs_f64() * 1000.0,
        record.errors.len(),
        drained.map_or("n/a (deployed)".to_owned(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        )),
        discrepancy.lost_events,
        discrepancy.lost_tokens,
        discrepancy.extra_events,
        discrepancy.extra_tokens,
    );
    for (kind, name) in [
        (Kind::Ingest, "POST /events"),
        (Kind::Resend, "POST /events (resend)"),
        (Kind::Usage, "GET /usage"),
    ] {
        let mut l = record.latencies.get(&kind).cloned().unwrap_or_default();
        if l.is_empty() {
            continue;
        }
        l.sort_by(f64::total_cmp);
        report.push_str(&format!(
            "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
            l.len(),
            percentile(&l, 50.0),
            percentile(&l, 95.0),
            percentile(&l, 99.0)
        ));
    }
    report
}

/// Where the CPU went, and Ingot's own cost per event.
fn costs(
    metrics: &HashMap<(String, String), f64>,
    window: &[(String, CpuUse)],
    requests: u64,
) -> String {
    let metric = |f: &str, n: &str| {
        metrics
            .get(&(f.to_owned(), n.to_owned()))
            .copied()
            .unwrap_or(0.0)
    };
    let cpu = |kind: &str| {
        window
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0.0, |(_, used)| used.ms)
    };
    let accepted = metric("ingest", "EventsAccepted").max(1.0);
    let counted = metric("rollup", "EventsCounted").max(1.0);
    let total: f64 = window.iter().map(|(_, used)| used.ms).sum();
    let mut report = String::from(
        "\nCPU by process over the measured window (2 cores = 200%):\n\n\
         | process | processes | CPU | share | per request |\n|---|---:|---:|---:|---:|\n",
    );
    for (kind, used) in window {
        report.push_str(&format!(
            "| {kind} | {} | {:.1} s | {:.0}% | {:.0} µs |\n",
            used.processes,
            used.ms / 1000.0,
            100.0 * used.ms / total.max(1.0),
            used.ms * 1000.0 / requests.max(1) as f64,
        ));
    }
    report.push_str(&format!(
        "\nPer event, from the functions' own metrics:\n\n\
         | figure | value |\n|---|---:|\n\
         | ingest CPU per accepted event | {:.0} µs |\n\
         | rollup CPU per counted event | {:.0} µs |\n\
         | emulator CPU per accepted event | {:.0} µs |\n\
         | SQS send requests per event (ingest) | {:.3} |\n\
         | SQS messages per event | {:.3} |\n\
         | DynamoDB write units per counted event (as DynamoDB reported them to rollup) | {:.2} |\n",
        cpu("ingest") * 1000.0 / accepted,
        cpu("rollup") * 1000.0 / counted,
        cpu("emulator") * 1000.0 / accepted,
        metric("ingest", "SqsRequests") / accepted,
        metric("ingest", "QueueMessages") / accepted,
        metric("rollup", "WriteUnits") / counted,
    ));
    report
}

#[cfg(test)]
mod tests {
    use shared::telemetry::{MetricUnit, Metrics};

    use super::*;

    #[test]
    fn percentiles_of_a_sorted_sample() {
        let sample: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sample, 50.0), 51.0);
        assert_eq!(percentile(&sample, 99.0), 99.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn sums_emf_lines_per_function() {
        let dir = std::env::temp_dir().join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("dev.log");
        std::fs::write(
            &log,
            [
                Metrics::new()
                    .dimension("Function", "ingest")
                    .value("EventsAccepted", MetricUnit::Count, 5.0)
                    .property("status", 202),
                Metrics::new().dimension("Function", "ingest").value(
                    "EventsAccepted",
                    MetricUnit::Count,
                    3.0,
                ),
            ]
            .map(|m| format!("[lambda] {}\n", m.render(0)))
            .join("[lambda] {\"level\":\"INFO\",\"message\":\"request\"}\n"),
        )
        .unwrap();
        let sums = metrics_since(&log, 0);
        assert_eq!(
            sums,
            HashMap::from([(("ingest".to_owned(), "EventsAccepted".to_owned()), 8.0)])
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tally(pairs: &[(&str, u64, u64)]) -> HashMap<String, Tally> {
        pairs
            .iter()
            .map(|(f, tokens, events)| {
                (
                    (*f).to_owned(),
                    Tally {
                        tokens: *tokens,
                        events: *events,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn opposite_errors_in_two_features_do_not_cancel() {
        let expected = tally(&[("a", 100, 2), ("b", 50, 1)]);
        let counted = tally(&[("a", 150, 3), ("b", 0, 0)]);
        let (d, notes) = compare(&expected, &counted);
        assert_eq!(
            d,
            Discrepancy {
                lost_tokens: 50,
                lost_events: 1,
                extra_tokens: 50,
                extra_events: 1
            }
        );
        assert_eq!(notes.len(), 2);
        assert!(!d.exact());
    }

    #[test]
    fn a_feature_counted_but_never_sent_is_double_counting() {
        let (d, _) = compare(&tally(&[]), &tally(&[("ghost", 7, 1)]));
        assert_eq!((d.extra_tokens, d.extra_events, d.lost_tokens), (7, 1, 0));
    }

    #[test]
    fn exact_usage_has_no_discrepancy() {
        let t = tally(&[("a", 10, 1)]);
        assert!(compare(&t, &t).0.exact());
    }

    #[test]
    fn processes_are_told_apart_by_executable_and_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let functions = args(&["ingest", "rollup"]);
        assert_eq!(
            process_kind("ingest", &[], false, &functions),
            Some("ingest")
        );
        assert_eq!(
            process_kind(
                "infra",
                &args(&["infra", "sandbox", "x"]),
                false,
                &functions
            ),
            Some("sandboxes")
        );
        assert_eq!(
            process_kind(
                "python3.11",
                &args(&["python", ".venv-ministack/bin/ministack"]),
                false,
                &functions
            ),
            Some("emulator")
        );
        assert_eq!(
            process_kind("bash", &[], true, &functions),
            Some("load generator")
        );
        assert_eq!(process_kind("bash", &[], false, &functions), None);
    }

    #[test]
    fn the_window_is_cpu_used_in_it_with_the_instances_at_its_end() {
        let used = |ms, processes| CpuUse { ms, processes };
        let before = CpuSplit::from([
            ("ingest".to_owned(), used(1000.0, 4)),
            ("rollup".to_owned(), used(500.0, 2)),
        ]);
        let after = CpuSplit::from([
            ("ingest".to_owned(), used(1200.0, 1)),
            ("rollup".to_owned(), used(500.0, 2)),
            ("emulator".to_owned(), used(900.0, 1)),
        ]);
        assert_eq!(
            cpu_window(&before, &after),
            [
                ("emulator".to_owned(), used(900.0, 1)),
                ("ingest".to_owned(), used(200.0, 1)),
            ]
        );
    }
}
