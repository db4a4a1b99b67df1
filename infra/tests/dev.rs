//! `make dev` end to end: the runner brings up the emulator, every function
//! and the SQS event source on free ports, each HTTP function answers its
//! health check, a chat reply streams through cargo-lambda as it is
//! generated (the local issuer's token, the Anthropic stub), a queued message
//! reaches `rollup`, and a Ctrl-C (SIGINT) stops everything and frees the
//! ports.
//!
//! The runner builds the functions with cargo while this test runs under
//! cargo, so it gets its own target directory (outside the checkout, kept
//! between runs) instead of waiting on the one `cargo test` holds.

use std::process::Stdio;
use std::time::Duration;

use local::emulator::{free_port, port_open};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread")]
async fn make_dev_runs_everything_and_ctrl_c_stops_it() {
    let root = local::workspace_root().unwrap();
    let (emulator_port, lambda_port) = (free_port().unwrap(), free_port().unwrap());
    let state =
        std::env::temp_dir().join(format!("ingot-dev-test-{}", uuid::Uuid::new_v4().simple()));
    let target = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/ingot/dev-test-target");

    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_ingot-local"))
        .arg("dev")
        .current_dir(&root)
        .env("INGOT_EMULATOR_PORT", emulator_port.to_string())
        .env("INGOT_LAMBDA_PORT", lambda_port.to_string())
        .env("INGOT_STATE_DIR", &state)
        .env("CARGO_TARGET_DIR", &target)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ingot-local dev starts");
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();

    // A first run compiles every function: allow for it.
    let up = tokio::time::timeout(Duration::from_secs(1500), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains("Ingot is up.");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        up,
        Ok(true),
        "make dev did not come up:\n{}",
        seen.join("\n")
    );

    let http = reqwest::Client::new();
    for function in ["prices", "ingest", "usage", "chat-stream"] {
        let url = format!("http://127.0.0.1:{lambda_port}/lambda-url/{function}/health");
        let status = http.get(&url).send().await.map(|r| r.status().as_u16());
        assert_eq!(status.ok(), Some(200), "{function}");
    }

    // Chat streams: the stub sends 50 deltas 100 ms apart, and the first
    // reaches us long before the last (what `curl -N` shows).
    let token = std::fs::read_to_string(state.join("dev-token")).expect("make dev wrote a token");
    let started = std::time::Instant::now();
    let response = http
        .post(format!(
            "http://127.0.0.1:{lambda_port}/lambda-url/chat-stream/api/v1/chat/stream"
        ))
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

    // A message on the queue is delivered to rollup by the event source.
    let aws = local::bootstrap::emulator_config(
        &format!("http://127.0.0.1:{emulator_port}"),
        "us-east-1",
    )
    .await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queue = sqs
        .get_queue_url()
        .queue_name("ingot-local-events")
        .send()
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(queue.queue_url().unwrap())
        .message_body("not an event batch")
        .send()
        .await
        .unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("batch delivered") && line.contains("rollup") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(delivered, Ok(true), "the message never reached rollup");

    // Ctrl-C: everything stops and both ports are free again.
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(dev.id().unwrap() as i32, libc::SIGINT) };
    let exited = tokio::time::timeout(Duration::from_secs(60), dev.wait()).await;
    assert!(
        matches!(exited, Ok(Ok(_))),
        "make dev did not stop on Ctrl-C"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!port_open(lambda_port), "cargo lambda still holds its port");
    assert!(
        !port_open(emulator_port),
        "the emulator still holds its port"
    );
    let _ = std::fs::remove_dir_all(state);
}
