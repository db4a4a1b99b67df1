//! The local SQS event source against the emulated SQS: acknowledged messages
//! are deleted, only reported failures come back, a message that always
//! fails ends in the DLQ after `maxReceiveCount`, and the event delivered is
//! the one Lambda sends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::MessageAttributeValue;
use infra::cloud::invoke::{Invoke, InvokeError};
use infra::cloud::pump::Pump;
use infra::cloud::template::{SqsSource, Template};
use serde_json::{Value, json};

/// Visibility timeout of the test queue: how long a failed message hides.
const VISIBILITY: Duration = Duration::from_secs(1);

type Behaviour = fn(&SqsEvent) -> Result<Value, InvokeError>;

/// Records every event and answers with `behaviour`.
#[derive(Clone)]
struct FakeFunction {
    events: Arc<Mutex<Vec<Value>>>,
    behaviour: Behaviour,
}

impl Invoke for FakeFunction {
    async fn invoke(&self, _function: &str, payload: &Value) -> Result<Value, InvokeError> {
        self.events.lock().unwrap().push(payload.clone());
        let event: SqsEvent = serde_json::from_value(payload.clone()).expect("a Lambda SQS event");
        (self.behaviour)(&event)
    }
}

fn fail_bodies_containing_fail(event: &SqsEvent) -> Result<Value, InvokeError> {
    let failures: Vec<Value> = event
        .records
        .iter()
        .filter(|r| r.body.as_deref().unwrap_or_default().contains("fail"))
        .map(|r| json!({"itemIdentifier": r.message_id}))
        .collect();
    Ok(json!({"batchItemFailures": failures}))
}

struct TestQueue<I> {
    pump: Pump<I>,
    dlq_url: String,
}

/// A fresh queue + DLQ (maxReceiveCount 2), created through the bootstrap.
async fn queue<I>(invoker: I, batch_size: usize, window_secs: u64) -> TestQueue<I> {
    let template = Template::parse(&format!(
        r#"
Resources:
  Work:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "${{AWS::StackName}}-work"
      VisibilityTimeout: {}
      RedrivePolicy: {{ deadLetterTargetArn: !GetAtt Dead.Arn, maxReceiveCount: 2 }}
  Dead:
    Type: AWS::SQS::Queue
    Properties: {{ QueueName: !Sub "${{AWS::StackName}}-dead" }}
"#,
        VISIBILITY.as_secs()
    ))
    .unwrap();
    let aws = support::aws().await;
    let mut resolver = template
        .resolver(
            &support::unique("pump"),
            support::REGION,
            "123456789012",
            &[],
        )
        .unwrap();
    infra::cloud::bootstrap::bootstrap(&template, &mut resolver, &aws)
        .await
        .unwrap();
    TestQueue {
        pump: Pump {
            sqs: aws_sdk_sqs::Client::new(&aws),
            queue_url: resolver.reference("Work").unwrap().to_owned(),
            queue_arn: resolver.arn("Work").unwrap().to_owned(),
            region: support::REGION.to_owned(),
            source: SqsSource {
                queue: "Work".into(),
                batch_size,
                max_batching_window_secs: window_secs,
                report_batch_item_failures: true,
                max_concurrency: None,
            },
            function: "test".into(),
            invoker,
        },
        dlq_url: resolver.reference("Dead").unwrap().to_owned(),
    }
}

impl<I: Invoke> TestQueue<I> {
    async fn send(&self, body: &str) -> String {
        support::send_message(&self.pump.sqs, &self.pump.queue_url, body).await
    }

    async fn dead_letters(&self) -> Vec<String> {
        support::waiting(&self.pump.sqs, &self.dlq_url)
            .await
            .iter()
            .filter_map(|m| m.body().map(str::to_owned))
            .collect()
    }
}

fn fake(behaviour: Behaviour) -> FakeFunction {
    FakeFunction {
        events: Arc::default(),
        behaviour,
    }
}

#[tokio::test]
async fn acknowledged_messages_are_deleted() {
    let q = queue(fake(fail_bodies_containing_fail), 10, 0).await;
    for body in ["a", "b", "c"] {
        q.send(body).await;
    }
    let outcome = q.pump.poll_once().await.unwrap();
    assert_eq!((outcome.delivered, outcome.acknowledged), (3, 3));
    assert!(outcome.failed.is_empty());

    tokio::time::sleep(VISIBILITY + Duration::from_millis(300)).await;
    let again = q.pump.poll_once().await.unwrap();
    assert_eq!(again.delivered, 0, "deleted messages must not come back");
}

#[tokio::test]
async fn only_the_failed_item_of_a_batch_is_redelivered() {
    let invoker = fake(fail_bodies_containing_fail);
    let q = queue(invoker.clone(), 10, 0).await;
    q.send("ok-1").await;
    let failing = q.send("fail-1").await;
    q.send("ok-2").await;

    let outcome = q.pump.poll_once().await.unwrap();
    assert_eq!(outcome.delivered, 3);
    assert_eq!(outcome.acknowledged, 2);
    assert_eq!(outcome.failed, std::slice::from_ref(&failing));

    tokio::time::sleep(VISIBILITY + Duration::from_millis(300)).await;
    let retry = q.pump.poll_once().await.unwrap();
    assert_eq!(retry.delivered, 1);
    let events = invoker.events.lock().unwrap();
    let redelivered = &events.last().unwrap()["Records"][0];
    assert_eq!(redelivered["messageId"], failing.as_str());
    assert_eq!(redelivered["body"], "fail-1");
    assert_eq!(redelivered["attributes"]["ApproximateReceiveCount"], "2");
}

#[tokio::test]
async fn a_message_that_always_fails_lands_in_the_dlq_after_max_receive_count() {
    let q = queue(fake(fail_bodies_containing_fail), 10, 0).await;
    q.send("fail-always").await;

    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        assert!(Instant::now() < deadline, "message never reached the DLQ");
        deliveries += q.pump.poll_once().await.unwrap().delivered;
        let dead = q.dead_letters().await;
        if !dead.is_empty() {
            break dead;
        }
        tokio::time::sleep(VISIBILITY + Duration::from_millis(200)).await;
    };
    assert_eq!(dead, ["fail-always"]);
    assert_eq!(deliveries, 2, "delivered exactly maxReceiveCount times");
    assert_eq!(q.pump.poll_once().await.unwrap().delivered, 0);
}

#[tokio::test]
async fn a_function_error_fails_the_whole_batch() {
    let q = queue(
        fake(|_| {
            Err(InvokeError::Function {
                error_type: "Panic".into(),
                message: "boom".into(),
            })
        }),
        10,
        0,
    )
    .await;
    let a = q.send("a").await;
    let b = q.send("b").await;
    let outcome = q.pump.poll_once().await.unwrap();
    assert_eq!(outcome.acknowledged, 0);
    assert_eq!(outcome.failed, [a, b]);
}

#[tokio::test]
async fn a_failure_report_naming_an_unknown_id_fails_the_whole_batch() {
    let q = queue(
        fake(|_| Ok(json!({"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}))),
        10,
        0,
    )
    .await;
    let a = q.send("a").await;
    let outcome = q.pump.poll_once().await.unwrap();
    assert_eq!(outcome.failed, [a]);
    assert_eq!(outcome.acknowledged, 0);
}

#[tokio::test]
async fn the_event_is_shaped_like_lambdas_sqs_event() {
    let invoker = fake(fail_bodies_containing_fail);
    let q = queue(invoker.clone(), 10, 0).await;
    q.pump
        .sqs
        .send_message()
        .queue_url(&q.pump.queue_url)
        .message_body(r#"{"tenant_id":"t1"}"#)
        .message_attributes(
            "source",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("ingest")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    q.pump.poll_once().await.unwrap();

    let events = invoker.events.lock().unwrap();
    let record = &events[0]["Records"][0];
    assert_eq!(record["eventSource"], "aws:sqs");
    assert_eq!(record["eventSourceARN"], q.pump.queue_arn.as_str());
    assert_eq!(record["awsRegion"], support::REGION);
    assert_eq!(record["body"], r#"{"tenant_id":"t1"}"#);
    assert_eq!(record["attributes"]["ApproximateReceiveCount"], "1");
    assert!(record["attributes"]["SentTimestamp"].is_string());
    assert!(record["receiptHandle"].is_string());
    assert_eq!(
        record["messageAttributes"]["source"]["stringValue"],
        "ingest"
    );
    assert_eq!(record["messageAttributes"]["source"]["dataType"], "String");
}

#[tokio::test]
async fn the_batching_window_fills_a_batch_beyond_one_receive() {
    let invoker = fake(fail_bodies_containing_fail);
    let q = queue(invoker.clone(), 15, 2).await;
    for i in 0..15 {
        q.send(&format!("m{i}")).await;
    }
    let outcome = q.pump.poll_once().await.unwrap();
    assert_eq!(outcome.delivered, 15);
    assert_eq!(invoker.events.lock().unwrap().len(), 1, "one invocation");
}

#[tokio::test]
async fn empty_or_null_failure_reports_mean_the_whole_batch_succeeded() {
    let responses: [Behaviour; 4] = [
        |_| Ok(json!(null)),
        |_| Ok(json!({})),
        |_| Ok(json!({"batchItemFailures": null})),
        |_| Ok(json!({"batchItemFailures": []})),
    ];
    for (i, behaviour) in responses.into_iter().enumerate() {
        let q = queue(fake(behaviour), 10, 0).await;
        q.send("a").await;
        let outcome = q.pump.poll_once().await.unwrap();
        assert_eq!(
            (outcome.acknowledged, outcome.failed.len()),
            (1, 0),
            "response #{i}"
        );
    }
}

#[tokio::test]
async fn an_empty_item_identifier_fails_the_whole_batch() {
    let q = queue(
        fake(|_| Ok(json!({"batchItemFailures": [{"itemIdentifier": ""}]}))),
        10,
        0,
    )
    .await;
    let a = q.send("a").await;
    let b = q.send("b").await;
    let outcome = q.pump.poll_once().await.unwrap();
    assert_eq!(outcome.failed, [a, b]);
}
