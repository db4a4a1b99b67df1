//! `make bench`: size, cold start and memory of every function's release
//! binary, measured the way Lambda would run it.
//!
//! Each binary is started against a small local Runtime API (the same
//! protocol Lambda's `provided.al2023` speaks): cold init is the time from
//! spawn to the binary's first `GET .../invocation/next`; it then gets its
//! sample event from `events/` (HTTP functions their `/health`, which touches
//! the emulated tables, queue and secrets), and peak RSS (`VmHWM`) is read
//! once it has answered. Medians over `runs` fresh processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use shared::aws::signed::{Bounds, SignedJson};
use shared::prices::store::PriceStore;

use crate::cloud::template::Template;
use crate::tools::rig::{Rig, sample_event};
use crate::tools::runtime_api::{Answer, Harness, ms, run_time};

/// One function's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    pub function: String,
    pub binary_bytes: u64,
    pub zip_bytes: u64,
    pub init_ms: Vec<f64>,
    pub first_invoke_ms: Vec<f64>,
    pub peak_rss_kib: Vec<u64>,
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Measures every function of the template whose release binary is in `release_dir`.
pub async fn measure(
    harness: &mut Harness,
    rig: &Rig,
    template: &Template,
    root: &Path,
    release_dir: &Path,
    runs: usize,
) -> Result<Vec<Figures>, String> {
    let mut all = Vec::new();
    for function in template.functions().map_err(|e| e.to_string())? {
        let binary = release_dir.join(&function.binary);
        let (env, event) = rig.sample(root, &function).await?;
        let mut figures = Figures {
            function: function.binary.clone(),
            binary_bytes: std::fs::metadata(&binary)
                .map_err(|e| {
                    format!(
                        "{}: {e} (run `make bench`, which builds it)",
                        binary.display()
                    )
                })?
                .len(),
            zip_bytes: zipped_size(&binary)?,
            init_ms: Vec::new(),
            first_invoke_ms: Vec::new(),
            peak_rss_kib: Vec::new(),
        };
        for _ in 0..runs {
            let (init, first, rss, _) = harness
                .cold_start(&binary, &function.binary, &env, &event)
                .await?;
            figures.init_ms.push(init);
            figures.first_invoke_ms.push(first);
            figures.peak_rss_kib.extend(rss);
        }
        all.push(figures);
    }
    Ok(all)
}

/// Size of the deployment zip: the binary as `bootstrap`, deflated by
/// Python's zipfile (what the SAM CLI zips a function with for deploy).
pub fn zipped_size(binary: &Path) -> Result<u64, String> {
    let dir = std::env::temp_dir().join(format!("ingot-zip-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let bootstrap = dir.join("bootstrap");
    std::fs::copy(binary, &bootstrap).map_err(|e| e.to_string())?;
    let zip = dir.join("function.zip");
    let status = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&zip)
        .arg(&bootstrap)
        .status()
        .map_err(|e| format!("python3 -m zipfile: {e}"));
    let size = std::fs::metadata(&zip).map(|m| m.len());
    let _ = std::fs::remove_dir_all(&dir);
    if !status?.success() {
        return Err("python3 -m zipfile failed".to_owned());
    }
    size.map_err(|e| e.to_string())
}

/// What users deploy: the arm64 artifacts of `make package` (`sam build`),
/// sized next to this machine's native build. Only sizes: under qemu,
/// timings measure the emulation, not the code (`make package-check` boots
/// each one and says it answered).
fn arm64_table(root: &Path, template: &Template, native: &[Figures]) -> Result<String, String> {
    let mut out = format!(
        "The deployed artifact: arm64 (`make package`, i.e. `sam build`; budget {} MiB \
         zipped per function) next to the native build above. No timings: under qemu they \
         would measure the emulator, not the code.\n\n\
         | function | arm64 binary | arm64 zip | native binary | native zip |\n\
         |---|---:|---:|---:|---:|\n",
        crate::tools::package::ZIP_LIMIT_BYTES / 1_048_576,
    );
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / 1_048_576.0);
    for function in template.functions().map_err(|e| e.to_string())? {
        let artifact = crate::tools::package::artifact(root, &function);
        let binary = std::fs::metadata(&artifact)
            .map_err(|e| format!("{}: {e} (run `make package`)", artifact.display()))?
            .len();
        let here = native.iter().find(|f| f.function == function.binary);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            function.binary,
            mib(binary),
            mib(zipped_size(&artifact)?),
            here.map_or_else(String::new, |f| mib(f.binary_bytes)),
            here.map_or_else(String::new, |f| mib(f.zip_bytes)),
        ));
    }
    Ok(out)
}

/// The Markdown table for docs/perf.md.
pub fn table(figures: &[Figures]) -> String {
    let mut out = String::from(
        "| function | binary (stripped) | zip | cold init, median | cold init, max | first invoke, median | peak RSS, max |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in figures {
        let max_init = f.init_ms.iter().copied().fold(0.0, f64::max);
        let rss = f.peak_rss_kib.iter().copied().max().unwrap_or(0);
        out.push_str(&format!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MiB |\n",
            f.function,
            f.binary_bytes as f64 / 1_048_576.0,
            f.zip_bytes as f64 / 1_048_576.0,
            median(&f.init_ms),
            max_init,
            median(&f.first_invoke_ms),
            rss as f64 / 1024.0,
        ));
    }
    out
}

/// Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->`
/// in `doc` (appending the section if absent), so each benchmark owns its
/// own part of docs/perf.md.
pub fn replace_section(doc: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let section = format!("{begin}\n{body}{end}");
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n{section}\n", doc.trim_end()),
    }
}

/// A line naming this machine: CPU model and core count.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cpu}, {cores} cores, {}", std::env::consts::ARCH)
}

/// `$CARGO_TARGET_DIR/release`, or `<root>/target/release`.
pub fn release_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release")
}

/// The whole benchmark: emulator, resources, measurements, docs/perf.md.
pub async fn run(root: &Path, runs: usize) -> Result<(), String> {
    let template =
        Template::load(&root.join("template.yaml").to_string_lossy()).map_err(|e| e.to_string())?;

    let rig = Rig::start(root, &template, "ingot-bench").await?;
    let mut harness = Harness::start().await?;
    let figures = measure(
        &mut harness,
        &rig,
        &template,
        root,
        &release_dir(root),
        runs,
    )
    .await?;
    let arm64 = arm64_table(root, &template, &figures)?;

    // Warm GET /api/prices: from this instance's memory, and with the memory
    // cache off, from DynamoDB (a fresh latest is seeded first).
    let mut prices_env = rig.env_of(&Rig::function(&template, "prices")?)?;
    let prices_table = prices_env
        .iter()
        .find(|(k, _)| k == "PRICES_TABLE")
        .map(|(_, v)| v.clone())
        .ok_or("prices has no PRICES_TABLE")?;
    let seeded = shared::prices::types::Quote {
        metal: shared::prices::types::Metal::Gold,
        currency: shared::prices::types::Currency::usd(),
        price: 2650.0,
        bid: None,
        ask: None,
        provider: "bench".into(),
        ts: chrono::Utc::now(),
        fx: None,
    };
    shared::aws::prices::DynamoPrices::new(shared::aws::Dynamo::new(&rig.aws), &prices_table)
        .record(
            &seeded,
            &shared::prices::store::Keeping {
                slot: chrono::TimeDelta::minutes(5),
                retention: chrono::TimeDelta::days(1),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let event = sample_event(root, "prices-gold")?;
    let binary = release_dir(root).join("prices");
    let from_memory = harness
        .warm(&binary, "prices", &prices_env, &event, 200)
        .await?;
    prices_env.push(("MEMORY_CACHE_SECONDS".into(), "0".into()));
    let from_dynamodb = harness
        .warm(&binary, "prices", &prices_env, &event, 50)
        .await?;
    let warm = |name: &str, answers: &[(Option<f64>, Option<f64>, f64)]| {
        let mut sample: Vec<f64> = answers.iter().map(|(_, _, end)| *end).collect();
        let [p50, p95, p99] = percentiles(&mut sample);
        format!(
            "| {name} | {} | {p50:.2} ms | {p95:.2} ms | {p99:.2} ms |\n",
            sample.len(),
        )
    };

    let body = format!(
        "Measured by `make bench` on {} ({}), {runs} cold starts per function, \
         release profile, native {} build.\n\n{}\n\
         Warm `GET /api/prices?metal=gold` in one instance (invocation handed out → answer), \
         DynamoDB being the local emulator:\n\n\
         | served from | requests | p50 | p95 | p99 |\n|---|---:|---:|---:|---:|\n{}{}\n{arm64}",
        chrono::Utc::now().format("%Y-%m-%d"),
        machine(),
        std::env::consts::ARCH,
        table(&figures),
        warm("memory (60 s cache)", &from_memory),
        warm("DynamoDB (memory cache off)", &from_dynamodb),
    );
    println!("{body}");
    write_section(root, "functions", &body)?;
    floor(root, &template, &rig, &mut harness).await?;
    chat(root, &template, &rig, &mut harness).await
}

/// A part of the bench that runs on its own.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    /// `make bench-chat`: the release `chat-stream` binary.
    Chat,
    /// `make bench-floor`: the release `ingest` and `rollup` binaries.
    Floor,
}

/// One part of the bench alone: a minute, not the whole bench's twenty.
pub async fn run_part(root: &Path, part: Part) -> Result<(), String> {
    let template =
        Template::load(&root.join("template.yaml").to_string_lossy()).map_err(|e| e.to_string())?;
    let rig = Rig::start(root, &template, "ingot-bench").await?;
    let mut harness = Harness::start().await?;
    match part {
        Part::Chat => chat(root, &template, &rig, &mut harness).await,
        Part::Floor => floor(root, &template, &rig, &mut harness).await,
    }
}

async fn floor(
    root: &Path,
    template: &Template,
    rig: &Rig,
    harness: &mut Harness,
) -> Result<(), String> {
    let floor = runtime_floor(harness, rig, template, root).await?;
    println!("{floor}");
    write_section(root, "floor", &floor)
}

/// Warm invocations handed out to one process.
const FLOOR_INVOCATIONS: usize = 2000;

/// How long the paced runs hold each event once asked for (the load test's
/// 300 requests a second, had one instance all of them).
const IDLE_BETWEEN: Duration = Duration::from_millis(3);

/// CPU per warm invocation: first with no store call (what the runtime
/// loop, the event's conversion and the answer cost before a function does
/// its work: the floor under the load test's per-request CPU), then the
/// load test's own work, one invocation at a time on an idle machine; each
/// back to back and with the process idle between invocations.
async fn runtime_floor(
    harness: &mut Harness,
    rig: &Rig,
    template: &Template,
    root: &Path,
) -> Result<String, String> {
    let ingest = rig.env_of(&Rig::function(template, "ingest")?)?;
    let rollup = rig.env_of(&Rig::function(template, "rollup")?)?;
    let tenant = Value::from("ten_00000000000000000000000000be4c01");
    let key = rig.register_tenant(&ingest, &tenant).await?;
    let health = sample_event(root, "ingest-health")?;
    let not_found_event = http_event(&health, "GET", "/none", None);
    let not_found = |_| not_found_event.clone();
    let empty = |_| json!({"Records": []});
    let post = |i: usize| {
        let body = json!({"id": format!("bench-{i}"), "feature": "f0", "tokens": 1});
        http_event(&health, "POST", "/events", Some((key.expose(), body)))
    };
    let batch = sample_event(root, "rollup-sqs-batch")?;
    let delivery = |i: usize| {
        let events: Vec<Value> = (0..5)
            .map(|k| {
                json!({"id": format!("bench-{i}-{k}"), "feature": format!("f{k}"),
                "tokens": 1, "timestamp": chrono::Utc::now().to_rfc3339()})
            })
            .collect();
        let mut record = batch["Records"][0].clone();
        record["messageId"] = format!("bench-{i}").into();
        record["body"] = json!({"tenant": tenant, "events": events})
            .to_string()
            .into();
        record["attributes"]["MessageGroupId"] = tenant.clone();
        record["attributes"]["SequenceNumber"] = (1_000_000 + i).to_string().into();
        json!({"Records": [record]})
    };
    let mut rows = String::new();
    for (function, what, env, event, status) in [
        (
            "ingest",
            "an HTTP request answered without a store call (404)",
            &ingest,
            &not_found as &dyn Fn(usize) -> Value,
            Some(404),
        ),
        ("rollup", "an empty SQS delivery", &rollup, &empty, None),
        (
            "ingest",
            "a POST /events of one event, queued: one `SendMessageBatch`",
            &ingest,
            &post,
            Some(202),
        ),
        (
            "rollup",
            "a delivery of one message of 5 events of one tenant, counted: three store \
             calls (claims, two counters; the profile is remembered)",
            &rollup,
            &delivery,
            None,
        ),
    ] {
        let back_to_back = cpu(harness, root, env, function, event, status, Duration::ZERO).await?;
        let idle = cpu(harness, root, env, function, event, status, IDLE_BETWEEN).await?;
        rows.push_str(&format!(
            "| {function} | {what} | {back_to_back:.0} µs | {idle:.0} µs |\n"
        ));
    }
    let CallCosts { sdk, signed, bare } = call_costs(rig).await?;
    let (warm, waited) = tokio::task::spawn_blocking(wait_price)
        .await
        .map_err(|e| e.to_string())??;
    let idle = IDLE_BETWEEN.as_millis();
    Ok(format!(
        "CPU per warm invocation ({FLOOR_INVOCATIONS} handed to one process \
         through the local Runtime API, each event its own, logs to /dev/null; the threads' \
         run time less a process handed one). The first two make no store call: the floor \
         under every request's CPU in `make loadtest`. The last two are the load test's \
         work, on an idle machine, where `make loadtest` shares two cores with the \
         emulator. Back to back, the process never waits for its next event and runs on \
         warm caches; handed out {idle} ms after each ask, it waits idle in between, as an \
         instance does between requests that are not back to back:\n\n\
         | function | invocation | CPU, back to back | CPU, {idle} ms idle between |\n\
         |---|---|---:|---:|\n{rows}\n\
         What one store call adds, client side: an SQS `SendMessageBatch` of one message to \
         the emulator, {CALLS} in a row on a thread of their own (its run time):\n\n\
         | made through | CPU per call |\n|---|---:|\n\
         | the AWS SDK, as the functions make their other calls | {sdk:.0} µs |\n\
         | the signed client (`shared::aws::signed`: SigV4 with a cached day key, \
         hyper), as the per-event calls are made | {signed:.0} µs |\n\
         | a bare HTTP request (hyper; the same JSON, unsigned: the emulator checks no \
         signature) | {bare:.0} µs |\n\n\
         What waiting costs any process on this machine, whatever its code: one fixed \
         piece of work ({PRICE_READS} random reads over {price_mib} MiB), {PRICE_PASSES} \
         times on a thread of its own (its run time), back to back and each after a \
         {idle} ms sleep (less the run time of the sleeps alone):\n\n\
         | the same work | CPU per pass |\n|---|---:|\n\
         | back to back | {warm:.1} µs |\n\
         | after a {idle} ms sleep | {waited:.1} µs ({ratio:.1}×) |\n",
        price_mib = PRICE_BYTES >> 20,
        ratio = waited / warm,
    ))
}

/// Passes of [`wait_price`]'s work per figure.
const PRICE_PASSES: usize = 2000;
/// Random reads per pass.
const PRICE_READS: usize = 4096;
/// The memory they read.
const PRICE_BYTES: usize = 2 << 20;

/// What a wait costs on this machine, apart from any function: CPU per
/// pass of the same fixed reads back to back and each after a sleep of
/// [`IDLE_BETWEEN`] (the sleep's own cost taken out), in µs. A machine that
/// keeps a waiting thread's caches shows about the same figure twice; one
/// that hands the core to others while it waits (a VM whose idle vCPU
/// halts) shows the idle column's gap.
fn wait_price() -> Result<(f64, f64), String> {
    let memory = vec![1u8; PRICE_BYTES];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut pass = || {
        let mut sum = 0u64;
        for _ in 0..PRICE_READS {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            sum += u64::from(memory[(state % PRICE_BYTES as u64) as usize]);
        }
        std::hint::black_box(sum);
    };
    let mut per_pass = |gap: Duration, work: bool| {
        pass();
        let before = thread_run_time()?;
        for _ in 0..PRICE_PASSES {
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
            if work {
                pass();
            }
        }
        Ok::<_, String>((thread_run_time()? - before) / 1000.0 / PRICE_PASSES as f64)
    };
    let warm = per_pass(Duration::ZERO, true)?;
    // The sleep's own system calls and wake-up, taken out.
    let after_sleep = per_pass(IDLE_BETWEEN, true)? - per_pass(IDLE_BETWEEN, false)?;
    Ok((warm, after_sleep))
}

/// This thread's run time, in nanoseconds.
fn thread_run_time() -> Result<f64, String> {
    run_time(Path::new("/proc/thread-self/schedstat"))
        .map(|t| t.as_nanos() as f64)
        .ok_or_else(|| "this thread's run time cannot be read".to_owned())
}

/// [`FLOOR_INVOCATIONS`] warm invocations of release `function` with
/// `event(i)`, each handed out `gap` after it was asked for and answered
/// with HTTP `status` or, for a delivery (`None`), with no failures: CPU
/// per invocation, in µs.
async fn cpu(
    harness: &mut Harness,
    root: &Path,
    env: &[(String, String)],
    function: &str,
    event: &dyn Fn(usize) -> Value,
    status: Option<u16>,
    gap: Duration,
) -> Result<f64, String> {
    let binary = release_dir(root).join(function);
    let (micros, answers) = harness
        .cpu_per_invocation(&binary, function, env, event, FLOOR_INVOCATIONS, gap)
        .await?;
    for answer in &answers {
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        let answered = match status {
            Some(status) => body["statusCode"].as_u64() == Some(status.into()),
            None => body["batchItemFailures"]
                .as_array()
                .is_some_and(Vec::is_empty),
        };
        if !answered {
            return Err(format!(
                "{function} answered {}",
                String::from_utf8_lossy(&answer.body)
            ));
        }
    }
    Ok(micros)
}

/// `sample` (an API Gateway HTTP API event) as `method path`, with a
/// bearer key and JSON body if given.
fn http_event(sample: &Value, method: &str, path: &str, post: Option<(&str, Value)>) -> Value {
    let mut event = sample.clone();
    event["rawPath"] = path.into();
    event["requestContext"]["http"]["path"] = path.into();
    event["requestContext"]["http"]["method"] = method.into();
    if let Some((key, body)) = post {
        event["headers"]["authorization"] = format!("Bearer {key}").into();
        event["headers"]["content-type"] = "application/json".into();
        event["body"] = body.to_string().into();
        event["isBase64Encoded"] = false.into();
    }
    event
}

/// Client CPU per call, in µs, by how it is made.
struct CallCosts {
    sdk: f64,
    signed: f64,
    bare: f64,
}

/// Calls per client in [`call_costs`].
const CALLS: usize = 1000;

/// The client-side CPU, in µs, of one `SendMessageBatch` through the SDK,
/// through the signed client and as a bare HTTP request, each measured on
/// a thread of its own.
async fn call_costs(rig: &Rig) -> Result<CallCosts, String> {
    let aws = rig.aws.clone();
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queue = sqs
        .create_queue()
        .queue_name("ingot-bench-calls.fifo")
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .map_err(|e| e.to_string())?
        .queue_url
        .ok_or("the bench queue has no URL")?;
    let endpoint = aws.endpoint_url().ok_or("no emulator endpoint")?.to_owned();
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let sdk = per_call(|i| {
                let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id("0")
                    .message_body("{}")
                    .message_group_id("bench")
                    .message_deduplication_id(format!("sdk-{i}"))
                    .build();
                let request = sqs.send_message_batch().queue_url(&queue);
                async move {
                    let entry = entry.map_err(|e| e.to_string())?;
                    request
                        .entries(entry)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                }
            })
            .await?;
            let http =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<axum::body::Bytes>>();
            let bare = per_call(|i| {
                let body = send_one(&queue, &format!("bare-{i}"));
                let request = axum::http::Request::post(&endpoint)
                    .header("content-type", "application/x-amz-json-1.0")
                    .header("x-amz-target", "AmazonSQS.SendMessageBatch")
                    .body(http_body_util::Full::new(axum::body::Bytes::from(
                        body.to_string(),
                    )));
                let http = http.clone();
                async move {
                    let request = request.map_err(|e| e.to_string())?;
                    let response = http.request(request).await.map_err(|e| e.to_string())?;
                    let status = response.status();
                    http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .map_err(|e| e.to_string())?;
                    status
                        .is_success()
                        .then_some(())
                        .ok_or_else(|| format!("bare SendMessageBatch: {status}"))
                }
            })
            .await?;
            let client = SignedJson::new(&aws, &endpoint, "sqs", "AmazonSQS", Bounds::default());
            let signed = per_call(|i| {
                let body = send_one(&queue, &format!("signed-{i}"));
                let call = client.call("SendMessageBatch", body.to_string().into_bytes());
                async move { call.await.map(drop).map_err(|e| e.to_string()) }
            })
            .await?;
            Ok(CallCosts { sdk, signed, bare })
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A `SendMessageBatch` input of one message, as JSON.
fn send_one(queue: &str, dedup: &str) -> Value {
    json!({"QueueUrl": queue, "Entries": [{
        "Id": "0", "MessageBody": "{}", "MessageGroupId": "bench",
        "MessageDeduplicationId": dedup,
    }]})
}

/// CPU per call of [`CALLS`] calls of `call`, in µs, by this thread's run
/// time (`schedstat`, nanoseconds).
async fn per_call<F, Fut>(call: F) -> Result<f64, String>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    call(0).await?;
    let before = thread_run_time()?;
    for i in 1..=CALLS {
        call(i).await?;
    }
    Ok((thread_run_time()? - before) / 1000.0 / CALLS as f64)
}

async fn chat(
    root: &Path,
    template: &Template,
    rig: &Rig,
    harness: &mut Harness,
) -> Result<(), String> {
    let chat = chat_ttfb(harness, root, rig, template, 50).await?;
    println!("{chat}");
    write_section(root, "chat", &chat)
}

/// Replaces section `name` of docs/perf.md with `body`.
fn write_section(root: &Path, name: &str, body: &str) -> Result<(), String> {
    let path = root.join("docs/perf.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Performance\n".to_owned());
    std::fs::write(&path, replace_section(&doc, name, body)).map_err(|e| e.to_string())?;
    println!("wrote {} ({name})", path.display());
    Ok(())
}

/// p50 / p95 / p99 of a sample, in ms.
fn percentiles(sample: &mut [f64]) -> [f64; 3] {
    sample.sort_by(f64::total_cmp);
    [0.5, 0.95, 0.99].map(|p| sample[((sample.len() - 1) as f64 * p).round() as usize])
}

/// Time to first byte the chat proxy adds: the release `chat-stream`
/// binary streaming through the Runtime API (event handed out → first
/// `content_delta`), against the same Anthropic stub called directly
/// (request → first `content_block_delta`).
async fn chat_ttfb(
    harness: &mut Harness,
    root: &Path,
    rig: &Rig,
    template: &Template,
    count: usize,
) -> Result<String, String> {
    let env = rig.env_of(&Rig::function(template, "chat-stream")?)?;
    rig.anthropic_key(&env).await?;
    let event = rig.chat_event(root, "bench-user")?;
    let sent_before = rig.upstream.first_deltas().len();
    let answers = harness
        .warm_answers(
            &release_dir(root).join("chat-stream"),
            "chat-stream",
            &env,
            &event,
            count,
        )
        .await?;
    // The stub's first delta of each warm reply (the cold one's is first).
    let upstream_deltas: Vec<Instant> = rig.upstream.first_deltas()[sent_before..]
        .iter()
        .skip(1)
        .copied()
        .collect();
    let since_handed = |answer: &Answer, at: Option<Instant>| Some(ms(at? - answer.handed?));
    let mut prelude: Vec<f64> = answers
        .iter()
        .filter_map(|a| since_handed(a, a.first_byte))
        .collect();
    let mut proxied: Vec<f64> = answers
        .iter()
        .filter_map(|a| since_handed(a, a.first_delta))
        .collect();
    let mut whole: Vec<f64> = answers
        .iter()
        .filter_map(|a| since_handed(a, Some(a.at)))
        .collect();
    let mut trailing: Vec<f64> = answers
        .iter()
        .filter_map(|a| Some(ms(a.first_delta? - a.first_byte?)))
        .collect();
    let mut relayed: Vec<f64> = answers
        .iter()
        .zip(&upstream_deltas)
        .filter_map(|(a, sent)| Some(ms(a.first_delta?.saturating_duration_since(*sent))))
        .collect();
    if proxied.len() != count || relayed.len() != count {
        return Err("chat-stream answered without a content_delta".to_owned());
    }
    let mut round_trips = store_round_trips(rig, &env, count).await?;

    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
        "system": [{"type": "text", "text": "You are a coach.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text",
            "text": "What is a good first step toward saving three months of expenses?"}]}],
    });
    let mut direct = Vec::with_capacity(count);
    for _ in 0..=count {
        let started = Instant::now();
        let response = http
            .post(format!("{}/v1/messages", rig.anthropic))
            .header("x-api-key", "sk-ant-local")
            .header("anthropic-version", shared::chat::anthropic::API_VERSION)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = response.bytes_stream();
        let (mut seen, mut first) = (Vec::new(), None);
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
            seen.extend_from_slice(&chunk);
            if first.is_none() && seen.windows(19).any(|w| w == b"content_block_delta") {
                first = Some(ms(started.elapsed()));
            }
        }
        direct.push(first.ok_or("the stub sent no delta")?);
    }
    direct.remove(0); // the first opened the connection
    let [p50, p95, p99] = percentiles(&mut proxied);
    let [d50, d95, d99] = percentiles(&mut direct);
    let [w50, w95, w99] = percentiles(&mut whole);
    let [b50, b95, b99] = percentiles(&mut prelude);
    let [t50, t95, t99] = percentiles(&mut trailing);
    let [r50, r95, r99] = percentiles(&mut relayed);
    let [s50, s95, s99] = percentiles(&mut round_trips);
    Ok(format!(
        "Chat time to first byte, {count} warm requests of one release `chat-stream` \
         instance streaming through the Runtime API (as on Lambda), against a local \
         Anthropic stub speaking the real event sequence; DynamoDB and SQS are the local \
         emulator:\n\n\
         | | p50 | p95 | p99 |\n|---|---:|---:|---:|\n\
         | stub alone: request → first `content_block_delta` | {d50:.2} ms | {d95:.2} ms | {d99:.2} ms |\n\
         | one store round trip: an `UpdateItem` on the emulator | {s50:.2} ms | {s95:.2} ms | {s99:.2} ms |\n\
         | through the proxy: event → first byte (the response prelude) | {b50:.2} ms | {b95:.2} ms | {b99:.2} ms |\n\
         | through the proxy: event → first `content_delta` | {p50:.2} ms | {p95:.2} ms | {p99:.2} ms |\n\
         | through the proxy: event → end of stream | {w50:.2} ms | {w95:.2} ms | {w99:.2} ms |\n\
         | first `content_delta` after the prelude | {t50:.2} ms | {t95:.2} ms | {t99:.2} ms |\n\
         | upstream's first `content_block_delta` → client's first `content_delta` | {r50:.2} ms | {r95:.2} ms | {r99:.2} ms |\n\n\
         **Added by the proxy before its first byte: {:.2} ms** (p50; target: 2 ms plus one \
         store round trip, {:.2} ms here): sign-in (keys, user and secret cached per \
         instance), one `UpdateItem` counting the rate windows and holding the budget \
         (alongside the upstream connection's warm-up; a new conversation reads no \
         history), then the upstream request. **Added before the first delta: {:.2} ms** (p50, against \
         the stub's first `content_block_delta`); **relaying a delta: {r50:.2} ms** (p50, \
         upstream's first delta out → client's first delta in; target 2 ms). The Runtime \
         API connection sets `TCP_NODELAY` (patched client, \
         docs/upstream/lambda-runtime-nodelay.md): without it each small chunk after the \
         prelude waited for the previous one's delayed ACK, and the first delta trailed the \
         prelude by ~40 ms.\n",
        b50 - d50,
        2.0 + s50,
        p50 - d50,
    ))
}

/// `count` conditional `UpdateItem`s (as the budget's hold makes) on the
/// chat function's usage table, one after another: each one's ms.
async fn store_round_trips(
    rig: &Rig,
    env: &[(String, String)],
    count: usize,
) -> Result<Vec<f64>, String> {
    let table = env
        .iter()
        .find(|(k, _)| k == "USAGE_TABLE")
        .map(|(_, v)| v.clone())
        .ok_or("chat-stream has no USAGE_TABLE")?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&rig.aws);
    let mut times = Vec::with_capacity(count);
    for i in 0..=count {
        let started = Instant::now();
        dynamodb
            .update_item()
            .table_name(&table)
            .key("pk", AttributeValue::S("BENCH#round-trip".into()))
            .key("sk", AttributeValue::S("BENCH".into()))
            .update_expression("ADD held :one")
            .condition_expression("attribute_not_exists(held) OR held < :max")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":max", AttributeValue::N(u64::MAX.to_string()))
            .send()
            .await
            .map_err(|e| shared::aws::describe(&e))?;
        if i > 0 {
            times.push(ms(started.elapsed()));
        }
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn replaces_only_its_own_section() {
        let doc = "# Perf\n<!-- BEGIN a -->\nold\n<!-- END a -->\nkeep\n";
        assert_eq!(
            replace_section(doc, "a", "new\n"),
            "# Perf\n<!-- BEGIN a -->\nnew\n<!-- END a -->\nkeep\n"
        );
        assert_eq!(
            replace_section("# Perf\n", "b", "x\n"),
            "# Perf\n<!-- BEGIN b -->\nx\n<!-- END b -->\n"
        );
    }
}
