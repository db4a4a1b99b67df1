//! `make loadtest`: drives a running `make dev` like a fleet of tenants would,
//! then proves nothing was lost or counted twice.
//!
//! At a fixed request rate for a fixed time: 80% `POST /events` (10% of those
//! re-sent with the same event ids, as a client retrying would), 20% `GET
//! /usage/{tenant}`. When the queue has drained, every tenant's period total
//! must equal the tokens of its distinct accepted events. Locally the
//! emulator bounds throughput, so the figures that describe Ingot itself are
//! CPU time per event in the ingest and rollup processes, SQS requests per
//! event and DynamoDB write units per event (from the functions' own EMF
//! metrics); they go to docs/perf.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bench::replace_section;
use crate::bootstrap::emulator_config;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub root: PathBuf,
    pub lambda: String,
    pub emulator: String,
    pub region: String,
    pub stack: String,
    pub rate: u32,
    pub duration: Duration,
    pub tenants: usize,
    pub events_per_request: usize,
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

#[derive(Default)]
struct Record {
    latencies: HashMap<Kind, Vec<f64>>,
    errors: Vec<String>,
    /// tenant → event id → tokens, of accepted events.
    accepted: HashMap<String, HashMap<String, u64>>,
}

struct Tenant {
    id: String,
    key: String,
    sent: Mutex<Vec<Value>>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// CPU time (user + system) of the running process whose executable is
/// `.../<name>`, in milliseconds, and whether it is a release build.
fn process_cpu_ms(name: &str) -> Option<(f64, bool)> {
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if exe.file_name().and_then(|f| f.to_str()) != Some(name) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let release = exe.to_string_lossy().contains("/release/");
        return Some((ticks / ticks_per_sec * 1000.0, release));
    }
    None
}

/// Sums the EMF metrics the functions logged to `.local/dev.log` after `offset`.
fn metrics_since(log: &Path, offset: u64) -> HashMap<(String, String), f64> {
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
        let (Some(function), Some(_)) = (doc["Function"].as_str(), doc.get("_aws")) else {
            continue;
        };
        for (name, value) in doc.as_object().into_iter().flatten() {
            if let Some(v) = value.as_f64() {
                *sums.entry((function.to_owned(), name.clone())).or_default() += v;
            }
        }
    }
    sums
}

async fn admin_token(options: &LoadOptions) -> Result<String, String> {
    let aws = emulator_config(&options.emulator, &options.region).await;
    aws_sdk_secretsmanager::Client::new(&aws)
        .get_secret_value()
        .secret_id(format!("{}/admin-token", options.stack))
        .send()
        .await
        .map_err(|e| format!("admin token: {e} (is `make dev` running?)"))?
        .secret_string()
        .map(str::to_owned)
        .ok_or_else(|| "admin token is empty".to_owned())
}

async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<u64, String> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
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

pub async fn run(options: LoadOptions) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let admin = admin_token(&options).await?;
    let url =
        |function: &str, path: &str| format!("{}/lambda-url/{function}{path}", options.lambda);

    // Tenants, each with its own key. Quotas are out of reach: this measures counting.
    let mut tenants = Vec::new();
    for i in 0..options.tenants {
        let body = json!({"name": format!("load-{i:03}"), "monthly_quota": 1_000_000_000_000_u64, "billing_day": 1 + (i % 28), "tier": "pro"});
        let created: Value = http
            .post(url("usage", "/admin/tenants"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("creating tenants: {e} (is `make dev` running?)"))?
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

    // Warm both functions so their processes exist, then take baselines.
    let aws = emulator_config(&options.emulator, &options.region).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queue_url = sqs
        .get_queue_url()
        .queue_name(format!("{}-events", options.stack))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let warm = json!({"id": "warm-up", "feature": "warm-up", "tokens": 1});
    http.post(url("ingest", "/events"))
        .bearer_auth(&tenants[0].key)
        .json(&warm)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let record = Arc::new(Mutex::new(Record::default()));
    record
        .lock()
        .expect("record")
        .accepted
        .entry(tenants[0].id.clone())
        .or_default()
        .insert("warm-up".into(), 1);
    wait_for_drain(&sqs, &queue_url).await?;
    let log = options.root.join(".local/dev.log");
    let log_offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let cpu_before = (process_cpu_ms("ingest"), process_cpu_ms("rollup"));

    // The load, at a fixed rate.
    let total = (options.rate as f64 * options.duration.as_secs_f64()) as u64;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.rate)));
    let mut rng = Rng::new();
    let mut inflight = Vec::new();
    let started = Instant::now();
    for _ in 0..total {
        ticks.tick().await;
        let tenant = Arc::clone(&tenants[rng.below(tenants.len() as u64) as usize]);
        let roll = rng.below(100);
        // `body` is kept to record what the service accepted.
        let (kind, request, body) = if roll < 20 {
            let request = http.get(url("usage", &format!("/usage/{}", tenant.id)));
            (Kind::Usage, request.bearer_auth(&tenant.key), None)
        } else {
            let previous = {
                let sent = tenant.sent.lock().expect("sent");
                (roll < 28 && !sent.is_empty())
                    .then(|| sent[rng.below(sent.len() as u64) as usize].clone())
            };
            let (kind, body) = match previous {
                Some(body) => (Kind::Resend, body),
                None => {
                    let events: Vec<Value> = (0..options.events_per_request)
                        .map(|_| {
                            json!({
                                "id": format!("lt-{}", uuid::Uuid::new_v4().simple()),
                                "feature": format!("f{}", rng.below(5)),
                                "tokens": 1 + rng.below(1000),
                            })
                        })
                        .collect();
                    let body = json!({"events": events});
                    tenant.sent.lock().expect("sent").push(body.clone());
                    (Kind::Ingest, body)
                }
            };
            let request = http
                .post(url("ingest", "/events"))
                .bearer_auth(&tenant.key)
                .json(&body);
            (kind, request, Some(body))
        };
        let record = Arc::clone(&record);
        let tenant = Arc::clone(&tenant);
        inflight.push(tokio::spawn(async move {
            let at = Instant::now();
            let result = request.send().await;
            let ms = at.elapsed().as_secs_f64() * 1000.0;
            let mut r = record.lock().expect("record");
            r.latencies.entry(kind).or_default().push(ms);
            match result {
                Ok(response) if response.status().is_success() => {
                    let counted = r.accepted.entry(tenant.id.clone()).or_default();
                    for e in body.iter().flat_map(|b| b["events"].as_array()).flatten() {
                        let id = e["id"].as_str().unwrap_or_default().to_owned();
                        counted.insert(id, e["tokens"].as_u64().unwrap_or(0));
                    }
                }
                Ok(response) => r.errors.push(format!("{kind:?}: {}", response.status())),
                Err(e) => r.errors.push(format!("{kind:?}: {e}")),
            }
        }));
    }
    for task in inflight {
        let _ = task.await;
    }
    let elapsed = started.elapsed();

    // Drain, then check every tenant's total.
    wait_for_drain(&sqs, &queue_url).await?;
    let cpu_after = (process_cpu_ms("ingest"), process_cpu_ms("rollup"));
    let record = Arc::try_unwrap(record)
        .map_err(|_| "requests still running")?
        .into_inner()
        .map_err(|e| e.to_string())?;
    let mut difference: i128 = 0;
    let mut events_accepted = 0;
    for tenant in &tenants {
        let expected: u64 = record
            .accepted
            .get(&tenant.id)
            .map_or(0, |m| m.values().sum());
        events_accepted += record.accepted.get(&tenant.id).map_or(0, HashMap::len);
        let usage: Value = http
            .get(url("usage", &format!("/usage/{}", tenant.id)))
            .bearer_auth(&admin)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let counted = usage["totalTokens"].as_u64().unwrap_or(0);
        if counted != expected {
            println!("  {}: counted {counted}, expected {expected}", tenant.id);
        }
        difference += i128::from(counted) - i128::from(expected);
    }

    let metrics = metrics_since(&log, log_offset);
    let metric = |f: &str, n: &str| {
        metrics
            .get(&(f.to_owned(), n.to_owned()))
            .copied()
            .unwrap_or(0.0)
    };
    let accepted_in_window = metric("ingest", "EventsAccepted").max(1.0);
    let counted_in_window = metric("rollup", "EventsCounted").max(1.0);
    let cpu =
        |before: Option<(f64, bool)>, after: Option<(f64, bool)>, per: f64| match (before, after) {
            (Some((b, _)), Some((a, release))) => format!(
                "{:.0} µs ({})",
                (a - b) * 1000.0 / per,
                if release { "release" } else { "debug build" }
            ),
            _ => "n/a (process not found)".to_owned(),
        };

    let requests: usize = record.latencies.values().map(Vec::len).sum();
    let mut report = format!(
        "`make loadtest` on {}: {} tenants, {} req/s for {:.0} s, {} events per POST. \
         Latencies are the local emulator's and cargo-lambda's (one instance per function, \
         requests queue behind it), not Lambda's; the achieved rate counts until the last answer.\n\n\
         | requests | achieved rate | errors | events accepted | resent requests | total − distinct accepted |\n\
         |---:|---:|---:|---:|---:|---:|\n\
         | {requests} | {:.1} req/s | {} | {events_accepted} | {} | **{difference}** |\n\n\
         | request | count | p50 | p95 | p99 |\n|---|---:|---:|---:|---:|\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        options.tenants,
        options.rate,
        options.duration.as_secs_f64(),
        options.events_per_request,
        requests as f64 / elapsed.as_secs_f64(),
        record.errors.len(),
        record.latencies.get(&Kind::Resend).map_or(0, Vec::len),
    );
    for (kind, name) in [
        (Kind::Ingest, "POST /events"),
        (Kind::Resend, "POST /events (resend)"),
        (Kind::Usage, "GET /usage"),
    ] {
        let mut l = record.latencies.get(&kind).cloned().unwrap_or_default();
        l.sort_by(f64::total_cmp);
        report.push_str(&format!(
            "| {name} | {} | {:.0} ms | {:.0} ms | {:.0} ms |\n",
            l.len(),
            percentile(&l, 50.0),
            percentile(&l, 95.0),
            percentile(&l, 99.0)
        ));
    }
    report.push_str(&format!(
        "\nPer event (Ingot's own cost; the emulator bounds the rate above):\n\n\
         | figure | value |\n|---|---:|\n\
         | ingest CPU per accepted event | {} |\n\
         | rollup CPU per counted event | {} |\n\
         | SQS SendMessageBatch requests per event | {:.3} |\n\
         | SQS messages per event | {:.3} |\n\
         | DynamoDB transaction items per counted event | {:.2} |\n\
         | DynamoDB write units per counted event (2 per transactional item) | {:.2} |\n",
        cpu(cpu_before.0, cpu_after.0, accepted_in_window),
        cpu(cpu_before.1, cpu_after.1, counted_in_window),
        metric("ingest", "SqsRequests") / accepted_in_window,
        metric("ingest", "QueueMessages") / accepted_in_window,
        metric("rollup", "TransactionItems") / counted_in_window,
        2.0 * metric("rollup", "TransactionItems") / counted_in_window,
    ));
    if !record.errors.is_empty() {
        report.push_str(&format!(
            "\nFirst errors: {:?}\n",
            &record.errors[..record.errors.len().min(5)]
        ));
    }
    println!("{report}");
    let perf = options.root.join("docs/perf.md");
    let doc = std::fs::read_to_string(&perf).unwrap_or_else(|_| "# Performance\n".to_owned());
    std::fs::write(&perf, replace_section(&doc, "loadtest", &report)).map_err(|e| e.to_string())?;
    println!("wrote {}", perf.display());
    if difference != 0 {
        return Err(format!(
            "period totals differ from accepted events by {difference} tokens"
        ));
    }
    Ok(())
}

/// Waits until the events queue is empty for three consecutive seconds.
async fn wait_for_drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut empty_for = 0;
    while empty_for < 3 {
        if Instant::now() > deadline {
            return Err("the events queue did not drain within 10 minutes".to_owned());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        empty_for = if queue_depth(sqs, url).await? == 0 {
            empty_for + 1
        } else {
            0
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
            "[lambda] {\"Function\":\"ingest\",\"EventsAccepted\":5.0,\"_aws\":{}}\n\
             [lambda] {\"level\":\"INFO\",\"message\":\"request\"}\n\
             [lambda] {\"Function\":\"ingest\",\"EventsAccepted\":3.0,\"_aws\":{}}\n",
        )
        .unwrap();
        let sums = metrics_since(&log, 0);
        assert_eq!(
            sums[&("ingest".to_owned(), "EventsAccepted".to_owned())],
            8.0
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
