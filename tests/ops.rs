//! `make redrive` and `make branch` against the emulator.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use infra::cloud::template::Template;
use infra::tools::ops::{branch, branch_table, dead_letter_pair, redrive, tables_of};

fn template() -> Template {
    Template::load(&support::root().join("template.yaml").to_string_lossy()).unwrap()
}

fn item(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk.to_owned())),
        ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

async fn keys(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Vec<String> {
    let mut keys: Vec<String> = dynamodb
        .scan()
        .table_name(table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default()
        .iter()
        .map(|i| i["pk"].as_s().unwrap().clone())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn redrive_moves_every_dead_letter_back_to_the_queue() {
    let stack = support::stack().await;
    let aws = support::aws().await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queue = stack.resolver.reference("EventsQueue").unwrap().to_owned();
    let dead = stack
        .resolver
        .reference("EventsDeadLetterQueue")
        .unwrap()
        .to_owned();
    for i in 0..13 {
        support::send_message(&sqs, &dead, &format!("message {i}")).await;
    }

    assert_eq!(redrive(&sqs, &dead, &queue).await.unwrap(), 13);

    let mut bodies = Vec::new();
    while bodies.len() < 13 {
        let messages = support::waiting(&sqs, &queue).await;
        assert!(!messages.is_empty(), "only {} came back", bodies.len());
        bodies.extend(messages.iter().map(|m| m.body().unwrap().to_owned()));
        // FIFO: the rest of the group comes once these are done with.
        for message in &messages {
            sqs.delete_message()
                .queue_url(&queue)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    bodies.sort();
    let mut expected: Vec<String> = (0..13).map(|i| format!("message {i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected);
    assert_eq!(
        redrive(&sqs, &dead, &queue).await.unwrap(),
        0,
        "the DLQ is empty"
    );
}

#[tokio::test]
async fn branch_makes_the_target_table_a_copy_of_the_source() {
    let source = support::stack().await;
    let target = support::stack().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&support::aws().await);
    let from = source.resolver.reference("ChatTable").unwrap().to_owned();
    let to = target.resolver.reference("ChatTable").unwrap().to_owned();
    for pk in ["USER#a", "USER#b", "USER#c"] {
        dynamodb
            .put_item()
            .table_name(&from)
            .set_item(Some(item(pk, "PROFILE")))
            .send()
            .await
            .unwrap();
    }
    dynamodb
        .put_item()
        .table_name(&to)
        .set_item(Some(item("USER#stale", "PROFILE")))
        .send()
        .await
        .unwrap();

    assert_eq!(branch_table(&dynamodb, &from, &to, None).await.unwrap(), 3);

    assert_eq!(keys(&dynamodb, &to).await, ["USER#a", "USER#b", "USER#c"]);
    assert_eq!(keys(&dynamodb, &from).await, ["USER#a", "USER#b", "USER#c"]);
    let tables = dynamodb
        .list_tables()
        .send()
        .await
        .unwrap()
        .table_names
        .unwrap_or_default();
    assert!(
        !tables.iter().any(|t| t.contains("-restore-")),
        "the scratch table is gone"
    );
}

#[tokio::test]
async fn names_come_from_the_template_and_prod_is_never_a_branch_target() {
    let names = tables_of(&template(), "ingot-pr-7", support::REGION).unwrap();
    let names: Vec<&str> = names.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ingot-pr-7-prices",
            "ingot-pr-7-tenants",
            "ingot-pr-7-usage",
            "ingot-pr-7-chat",
            "ingot-pr-7-ratelimits"
        ]
    );
    let (queue, dead) = dead_letter_pair(&template(), "ingot-pr-7", support::REGION).unwrap();
    assert_eq!(
        (queue.as_str(), dead.as_str()),
        ("ingot-pr-7-events.fifo", "ingot-pr-7-events-dlq.fifo")
    );
    let refused = branch(
        &template(),
        "dev",
        "prod",
        None,
        support::emulator(),
        support::REGION,
    )
    .await;
    assert!(refused.unwrap_err().contains("prod"));
}
