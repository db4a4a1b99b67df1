//! The release shape of chat-stream under Lambda Managed Instances: one
//! process, `AWS_LAMBDA_MAX_CONCURRENCY=8`, eight streamed replies in flight
//! at once through the Runtime API, against the emulator and the upstream
//! stubs. The Runtime API acknowledges no response until all eight have
//! arrived, so a process that serves one invocation at a time fails here.

use std::path::Path;

use infra::cloud::template::Template;
use infra::tools::rig::Rig;
use infra::tools::runtime_api::Harness;

const CONCURRENCY: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_streams_eight_replies_at_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let template = Template::load(&root.join("template.yaml").to_string_lossy()).unwrap();
    let stack = format!("concurrent-{}", uuid::Uuid::new_v4().simple());
    let rig = Rig::start(&root, &template, &stack).await.unwrap();
    let env = rig
        .env_of(&Rig::function(&template, "chat-stream").unwrap())
        .unwrap();
    rig.anthropic_key(&env).await.unwrap();
    let event = rig.chat_event(&root, "concurrent-user").unwrap();

    let mut harness = Harness::start().await.unwrap();
    let answers = harness
        .overlapping(
            Path::new(env!("CARGO_BIN_EXE_chat-stream")),
            "chat-stream",
            &env,
            &event,
            CONCURRENCY,
        )
        .await
        .unwrap();

    assert_eq!(answers.len(), CONCURRENCY);
    for answer in &answers {
        let body = String::from_utf8_lossy(&answer.body);
        assert!(answer.first_delta.is_some(), "no content_delta in {body}");
        assert!(body.contains("stream_complete"), "not completed: {body}");
    }
    assert_eq!(rig.upstream.completed(), CONCURRENCY);
}
