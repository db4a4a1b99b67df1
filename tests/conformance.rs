//! Emulator conformance: every DynamoDB, SQS and Secrets Manager behaviour
//! Ingot relies on, one test each, through the same SDK clients the
//! functions use.
//!
//! The local cloud and every other integration test trust the emulator to
//! behave like AWS; this suite is what earns that trust. It decides which
//! emulator the local cloud uses (a candidate must pass all of it, the
//! scaling bound included) and runs against whichever one `support`
//! starts, so a switch or an upgrade is judged by evidence, not by reputation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put, PutRequest,
    ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType, Select, TableStatus,
    TimeToLiveStatus, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use infra::cloud::template::{IndexSpec, TableSpec, Template};
use support::unique;

type Item = HashMap<String, AttributeValue>;

// ------------------------------------------------------------------ helpers

async fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&support::aws().await)
}

async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&support::aws().await)
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The `pk`/`sk` key every Ingot table uses.
fn key(pk: &str, sk: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// `key(pk, sk)` plus `attributes`.
fn item<const N: usize>(pk: &str, sk: &str, attributes: [(&str, AttributeValue); N]) -> Item {
    let mut item = key(pk, sk);
    item.extend(attributes.map(|(k, v)| (k.to_owned(), v)));
    item
}

/// The service's error code of a failed call (panics if it succeeded).
fn error_code<T, E: ProvideErrorMetadata, R>(result: Result<T, SdkError<E, R>>) -> String {
    match result {
        Ok(_) => panic!("the call succeeded; an error was expected"),
        Err(error) => error.code().unwrap_or("<no code>").to_owned(),
    }
}

/// A table shaped like the template's: `pk`/`sk` strings, on demand.
async fn create_table(dynamodb: &aws_sdk_dynamodb::Client) -> String {
    let name = unique("conformance");
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    let string = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    dynamodb
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .attribute_definitions(string("pk"))
        .attribute_definitions(string("sk"))
        .send()
        .await
        .expect("CreateTable");
    name
}

async fn put(dynamodb: &aws_sdk_dynamodb::Client, table: &str, item: Item) {
    dynamodb
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .expect("PutItem");
}

async fn get(dynamodb: &aws_sdk_dynamodb::Client, table: &str, key: Item) -> Option<Item> {
    dynamodb
        .get_item()
        .table_name(table)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
}

/// Writes `items` 25 at a time, as BatchWriteItem allows; the emulator must
/// process every one (it has no throughput limit to leave any unprocessed).
async fn batch_write(dynamodb: &aws_sdk_dynamodb::Client, table: &str, items: &[Item]) {
    for chunk in items.chunks(25) {
        let puts = chunk
            .iter()
            .map(|item| {
                let put = PutRequest::builder()
                    .set_item(Some(item.clone()))
                    .build()
                    .unwrap();
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        let out = dynamodb
            .batch_write_item()
            .request_items(table, puts)
            .send()
            .await
            .expect("BatchWriteItem");
        let unprocessed = out.unprocessed_items.unwrap_or_default();
        assert!(
            unprocessed.values().all(Vec::is_empty),
            "unprocessed: {unprocessed:?}"
        );
    }
}

/// Every page of the items whose `attribute` equals `value`, in the table or
/// in one of its indexes, `limit` items per page.
async fn query_pages(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    index: Option<&str>,
    (attribute, value): (&str, AttributeValue),
    limit: i32,
) -> Vec<Vec<Item>> {
    let mut pages = Vec::new();
    let mut start = None;
    loop {
        let out = dynamodb
            .query()
            .table_name(table)
            .set_index_name(index.map(str::to_owned))
            .key_condition_expression("#k = :v")
            .expression_attribute_names("#k", attribute)
            .expression_attribute_values(":v", value.clone())
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("Query");
        pages.push(out.items.unwrap_or_default());
        start = out.last_evaluated_key;
        if start.is_none() {
            return pages;
        }
    }
}

/// Every item of `table`, read page by page as `make branch` reads it.
async fn scan_all(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Vec<Item> {
    let mut items = Vec::new();
    infra::tools::ops::scan_pages(dynamodb, table, async |page| {
        items.extend(page);
        Ok(())
    })
    .await
    .expect("Scan");
    items
}

/// The `sk` of each item, in order.
fn sort_keys(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["sk"].as_s().unwrap().clone())
        .collect()
}

/// The sort keys `0000`..`count` (zero-padded, so they sort as numbers).
fn numbered(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{i:04}")).collect()
}

/// A transaction item that creates `pk`/`sk` only if it does not exist: the
/// event-id dedup record of the exactly-once rollup.
fn put_new(table: &str, pk: &str, sk: &str) -> TransactWriteItem {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(key(pk, sk)))
        .condition_expression("attribute_not_exists(pk)")
        .build()
        .unwrap();
    TransactWriteItem::builder().put(put).build()
}

/// A transaction item that adds 1 to `pk`/`sk`'s `n`: a rollup counter.
fn increment(table: &str, pk: &str, sk: &str) -> TransactWriteItem {
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(key(pk, sk)))
        .update_expression("ADD n :one")
        .expression_attribute_values(":one", n(1))
        .build()
        .unwrap();
    TransactWriteItem::builder().update(update).build()
}

async fn transact(
    dynamodb: &aws_sdk_dynamodb::Client,
    items: Vec<TransactWriteItem>,
) -> Result<TransactWriteItemsOutput, SdkError<TransactWriteItemsError>> {
    dynamodb
        .transact_write_items()
        .set_transact_items(Some(items))
        .send()
        .await
}

fn template_yaml() -> Template {
    Template::load(&support::root().join("template.yaml").to_string_lossy()).expect("template")
}

/// Bootstraps `template` into the emulator as its own stack, exactly as the
/// local cloud does; returns its tables.
async fn bootstrap(template: &Template) -> Vec<TableSpec> {
    let mut resolver = template
        .resolver(
            &unique("conformance"),
            support::REGION,
            infra::cloud::bootstrap::ACCOUNT_ID,
            &[],
        )
        .expect("resolver");
    infra::cloud::bootstrap::bootstrap(template, &mut resolver, &support::aws().await)
        .await
        .expect("bootstrap");
    template.tables(&resolver).expect("tables")
}

/// A queue with `attributes`; returns its URL.
async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    attributes: &[(QueueAttributeName, String)],
) -> String {
    let mut request = sqs.create_queue().queue_name(unique("conformance"));
    for (name, value) in attributes {
        request = request.attributes(name.clone(), value);
    }
    request
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("a queue URL")
}

/// Up to `max` messages, waiting up to `wait_secs`, with their receive count
/// and every message attribute.
async fn receive(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    max: i32,
    wait_secs: i32,
    visibility_secs: Option<i32>,
) -> Vec<Message> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(max)
        .wait_time_seconds(wait_secs)
        .set_visibility_timeout(visibility_secs)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_attribute_names("All")
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .unwrap_or_default()
}

fn receive_count(message: &Message) -> &str {
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .map_or("<absent>", String::as_str)
}

/// The bodies of `messages`, in the order received.
fn bodies(messages: &[Message]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m.body().unwrap_or_default())
        .collect()
}

/// (visible, in flight) message counts of the queue at `url`.
async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (String, String) {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default();
    let count = |name| attributes.get(&name).cloned().unwrap_or_default();
    (
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

// ------------------------------------------------- DynamoDB: conditions

#[tokio::test]
async fn conditional_put_creates_once_then_fails_with_conditional_check_failed() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    let create = |value: &str| {
        dynamodb
            .put_item()
            .table_name(&table)
            .set_item(Some(item("EVENT#1", "DEDUP", [("value", s(value))])))
            .condition_expression("attribute_not_exists(pk)")
            .send()
    };

    create("first").await.expect("the first put");
    assert_eq!(
        error_code(create("second").await),
        "ConditionalCheckFailedException"
    );

    let stored = get(&dynamodb, &table, key("EVENT#1", "DEDUP")).await;
    assert_eq!(stored.unwrap()["value"], s("first"));
}

#[tokio::test]
async fn conditional_update_applies_only_while_its_condition_holds() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    put(
        &dynamodb,
        &table,
        item(
            "ALERT#1",
            "80",
            [("state", s("pending")), ("attempts", n(0))],
        ),
    )
    .await;
    let claim = || {
        dynamodb
            .update_item()
            .table_name(&table)
            .set_key(Some(key("ALERT#1", "80")))
            .update_expression("SET #state = :sent ADD attempts :one")
            .condition_expression("attribute_exists(pk) AND #state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":sent", s("sent"))
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":one", n(1))
            .send()
    };

    claim().await.expect("the first claim");
    assert_eq!(error_code(claim().await), "ConditionalCheckFailedException");

    let stored = get(&dynamodb, &table, key("ALERT#1", "80")).await.unwrap();
    assert_eq!((&stored["state"], &stored["attempts"]), (&s("sent"), &n(1)));
}

#[tokio::test]
async fn conditional_add_counts_every_window_or_none_and_returns_the_old_counts() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    // The rate limiter's record, verbatim: a minute (limit 2) and an hour
    // (limit 3) counter in one item, all counted or none.
    let hit = |minute: &'static str| {
        dynamodb
            .update_item()
            .table_name(&table)
            .set_key(Some(key("chat#u", "1700000000")))
            .update_expression("ADD #c0 :one, #c1 :one SET expires_at = :expires")
            .condition_expression(
                "(attribute_not_exists(#c0) OR #c0 < :l0) AND (attribute_not_exists(#c1) OR #c1 < :l1)",
            )
            .expression_attribute_names("#c0", minute)
            .expression_attribute_names("#c1", "hour#1700000000")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":l0", n(2))
            .expression_attribute_values(":l1", n(3))
            .expression_attribute_values(":expires", n(1_700_003_660))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
    };

    let counted = hit("minute#1700000000").await.unwrap();
    assert_eq!(counted.attributes.unwrap()["hour#1700000000"], n(1));
    hit("minute#1700000000").await.unwrap();
    // The minute is full: nothing counts, and the failure carries the counts.
    let refused = hit("minute#1700000000")
        .await
        .unwrap_err()
        .into_service_error();
    let UpdateItemError::ConditionalCheckFailedException(refused) = refused else {
        panic!("expected a condition failure, got {refused:?}");
    };
    let old = refused.item.expect("ALL_OLD returns the item");
    assert_eq!(
        (&old["minute#1700000000"], &old["hour#1700000000"]),
        (&n(2), &n(2))
    );
    // The next minute has room, the hour one slot: it counts; then the hour is full.
    hit("minute#1700000060").await.unwrap();
    assert!(hit("minute#1700000120").await.is_err());
    let stored = get(&dynamodb, &table, key("chat#u", "1700000000"))
        .await
        .unwrap();
    assert_eq!(
        (
            &stored["minute#1700000000"],
            &stored["minute#1700000060"],
            &stored["hour#1700000000"]
        ),
        (&n(2), &n(1), &n(3))
    );
    assert!(!stored.contains_key("minute#1700000120"));
}

#[tokio::test]
async fn a_budget_holds_within_its_quota_and_settles_down_by_a_negative_add() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    let budget = || key("TENANT#t", "BUDGET#2026-12-01");
    // The budget's hold, verbatim: `held + tokens <= quota` as `held <= room`.
    let hold = |tokens: u64, room: u64| {
        dynamodb
            .update_item()
            .table_name(&table)
            .set_key(Some(budget()))
            .update_expression("ADD held :tokens")
            .condition_expression("attribute_exists(held) AND held <= :room")
            .expression_attribute_values(":tokens", n(tokens))
            .expression_attribute_values(":room", n(room))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
    };
    let old_item = |error: SdkError<UpdateItemError, _>| match error.into_service_error() {
        UpdateItemError::ConditionalCheckFailedException(e) => e.item,
        other => panic!("expected a condition failure, got {other:?}"),
    };
    // Unopened: the failure carries no item.
    assert_eq!(old_item(hold(10, 90).await.unwrap_err()), None);
    let open = || {
        dynamodb
            .put_item()
            .table_name(&table)
            .set_item(Some(budget()))
            .item("held", n(40))
            .condition_expression("attribute_not_exists(pk)")
            .send()
    };
    open().await.unwrap();
    assert!(open().await.is_err(), "a second open changes nothing");
    hold(60, 40).await.unwrap(); // 40 + 60 = 100, the quota
    let refused = old_item(hold(1, 99).await.unwrap_err()).unwrap();
    assert_eq!(refused["held"], n(100));
    dynamodb
        .update_item()
        .table_name(&table)
        .set_key(Some(budget()))
        .update_expression("ADD held :delta")
        .expression_attribute_values(":delta", n(-45))
        .send()
        .await
        .unwrap();
    assert_eq!(
        get(&dynamodb, &table, budget()).await.unwrap()["held"],
        n(55)
    );
}

// ------------------------------------------------- DynamoDB: transactions

#[tokio::test]
async fn transaction_writes_nothing_when_one_condition_fails() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    put(
        &dynamodb,
        &table,
        item("EVENT#dup", "DEDUP", [("seen", n(1))]),
    )
    .await;

    let result = transact(
        &dynamodb,
        vec![
            put_new(&table, "EVENT#new", "DEDUP"),
            put_new(&table, "EVENT#dup", "DEDUP"),
            increment(&table, "TENANT#1", "TOTAL"),
        ],
    )
    .await;

    assert_eq!(error_code(result), "TransactionCanceledException");
    let items = scan_all(&dynamodb, &table).await;
    assert_eq!(items, [item("EVENT#dup", "DEDUP", [("seen", n(1))])]);
}

#[tokio::test]
async fn cancelled_transaction_gives_one_reason_per_item_in_order() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    put(&dynamodb, &table, key("EVENT#dup", "DEDUP")).await;

    let error = transact(
        &dynamodb,
        vec![
            put_new(&table, "EVENT#a", "DEDUP"),
            put_new(&table, "EVENT#dup", "DEDUP"),
            put_new(&table, "EVENT#b", "DEDUP"),
            increment(&table, "TENANT#1", "TOTAL"),
        ],
    )
    .await
    .expect_err("a duplicate cancels the transaction")
    .into_service_error();

    let TransactWriteItemsError::TransactionCanceledException(cancelled) = error else {
        panic!("not a cancellation: {error:?}");
    };
    let codes: Vec<Option<&str>> = cancelled
        .cancellation_reasons()
        .iter()
        .map(|r| r.code())
        .collect();
    assert_eq!(
        codes,
        [
            Some("None"),
            Some("ConditionalCheckFailed"),
            Some("None"),
            Some("None")
        ]
    );
}

#[tokio::test]
async fn transaction_of_100_items_is_accepted() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    let items = numbered(100)
        .iter()
        .map(|sk| put_new(&table, "EVENT", sk))
        .collect();

    transact(&dynamodb, items).await.expect("100 items");

    let pages = query_pages(&dynamodb, &table, None, ("pk", s("EVENT")), 1000).await;
    assert_eq!(sort_keys(&pages.concat()), numbered(100));
}

#[tokio::test]
async fn transaction_of_101_items_is_rejected_as_invalid() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    let items = numbered(101)
        .iter()
        .map(|sk| put_new(&table, "EVENT", sk))
        .collect();

    assert_eq!(
        error_code(transact(&dynamodb, items).await),
        "ValidationException"
    );
    assert_eq!(scan_all(&dynamodb, &table).await, Vec::<Item>::new());
}

// ------------------------------------------------- DynamoDB: reads and writes

#[tokio::test]
async fn query_pages_through_every_item_with_limit_and_exclusive_start_key() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    let mut items: Vec<Item> = numbered(25).iter().map(|sk| key("TENANT#1", sk)).collect();
    items.push(key("TENANT#2", "0000"));
    batch_write(&dynamodb, &table, &items).await;

    let pages = query_pages(&dynamodb, &table, None, ("pk", s("TENANT#1")), 7).await;

    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [7, 7, 7, 4]);
    // Pages come in sort-key order, each starting where the last stopped.
    assert_eq!(sort_keys(&pages.concat()), numbered(25));
}

/// An attribute value of DynamoDB `kind` (S, N or B) made from `number`.
fn value_of(kind: &str, number: u64) -> AttributeValue {
    match kind {
        "N" => n(number),
        "B" => AttributeValue::B(number.to_be_bytes().to_vec().into()),
        _ => s(format!("v{number:020}")),
    }
}

/// A number no other test uses.
fn unique_number() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 >> 1
}

/// Puts three items under one fresh index key and two under another, then
/// pages through the first with `Limit` 2: exactly its three come back.
async fn assert_index_answers(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &TableSpec,
    index: &IndexSpec,
) {
    let kind = |attribute: &str| {
        table
            .attributes
            .iter()
            .find(|(name, _)| name == attribute)
            .map_or("S", |(_, kind)| kind.as_str())
    };
    let wanted = unique_number();
    let items: Vec<Item> = (0..5u64)
        .map(|i| {
            let index_hash = if i < 3 { wanted } else { wanted + 1 };
            let mut item = HashMap::from([
                (
                    table.hash_key.clone(),
                    value_of(kind(&table.hash_key), unique_number()),
                ),
                (
                    index.hash_key.clone(),
                    value_of(kind(&index.hash_key), index_hash),
                ),
            ]);
            for range in [&table.range_key, &index.range_key].into_iter().flatten() {
                item.insert(range.clone(), value_of(kind(range), i));
            }
            item
        })
        .collect();
    batch_write(dynamodb, &table.name, &items).await;

    let pages = query_pages(
        dynamodb,
        &table.name,
        Some(&index.name),
        (&index.hash_key, value_of(kind(&index.hash_key), wanted)),
        2,
    )
    .await;

    let mut found = pages.concat();
    let order = |i: &Item| format!("{:?}", i[&table.hash_key]);
    found.sort_by_key(order);
    let mut expected = items[..3].to_vec();
    expected.sort_by_key(order);
    assert_eq!(found, expected, "{} / {}", table.name, index.name);
}

/// template.yaml declares no GSI today; a reference table with one stands in
/// (created by the same bootstrap), and any index the template gains is
/// covered as soon as it is declared.
#[tokio::test]
async fn query_answers_on_each_gsi_the_bootstrap_creates() {
    const WITH_AN_INDEX: &str = r#"
Resources:
  Keys:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub "${AWS::StackName}-keys"
      AttributeDefinitions:
        - { AttributeName: pk, AttributeType: S }
        - { AttributeName: sk, AttributeType: S }
        - { AttributeName: key_hash, AttributeType: S }
        - { AttributeName: created, AttributeType: N }
      KeySchema:
        - { AttributeName: pk, KeyType: HASH }
        - { AttributeName: sk, KeyType: RANGE }
      GlobalSecondaryIndexes:
        - IndexName: by-key-hash
          KeySchema:
            - { AttributeName: key_hash, KeyType: HASH }
            - { AttributeName: created, KeyType: RANGE }
          Projection: { ProjectionType: ALL }
"#;
    let dynamodb = dynamodb().await;
    let reference = Template::parse(WITH_AN_INDEX).expect("reference template");
    let mut tables = bootstrap(&template_yaml()).await;
    tables.extend(bootstrap(&reference).await);

    let mut queried = Vec::new();
    for table in &tables {
        for index in &table.indexes {
            assert_index_answers(&dynamodb, table, index).await;
            queried.push(index.name.as_str());
        }
    }
    assert!(queried.contains(&"by-key-hash"), "queried {queried:?}");
}

#[tokio::test]
async fn batch_write_of_25_items_stores_every_one() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    let items: Vec<Item> = numbered(25)
        .iter()
        .map(|sk| item("PRICE#XAU#USD", sk, [("price", n(2650))]))
        .collect();

    batch_write(&dynamodb, &table, &items).await;

    for expected in &items {
        let stored = get(
            &dynamodb,
            &table,
            key("PRICE#XAU#USD", expected["sk"].as_s().unwrap()),
        );
        assert_eq!(stored.await.as_ref(), Some(expected));
    }
}

/// Claims (shared/src/aws/ledger.rs): a batch of PartiQL `INSERT`s writes
/// the new items and answers `DuplicateItem` for one that exists, one write
/// unit each.
#[tokio::test]
async fn partiql_insert_batches_refuse_an_existing_item_as_a_duplicate() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    put(&dynamodb, &table, item("EVENT#taken", "EVENT", [])).await;
    let insert =
        format!("INSERT INTO \"{table}\" VALUE {{'pk': ?, 'sk': 'EVENT', 'claimed_by': ?}}");
    let statements = ["EVENT#new", "EVENT#taken"]
        .map(|pk| {
            aws_sdk_dynamodb::types::BatchStatementRequest::builder()
                .statement(&insert)
                .parameters(s(pk))
                .parameters(s("0001"))
                .build()
                .unwrap()
        })
        .to_vec();
    let out = dynamodb
        .batch_execute_statement()
        .set_statements(Some(statements))
        .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
        .send()
        .await
        .expect("BatchExecuteStatement");
    let codes: Vec<Option<String>> = out
        .responses()
        .iter()
        .map(|r| {
            r.error()
                .and_then(|e| e.code())
                .map(|c| c.as_str().to_owned())
        })
        .collect();
    assert_eq!(codes, [None, Some("DuplicateItem".to_owned())]);
    let units: f64 = out
        .consumed_capacity()
        .iter()
        .filter_map(|c| c.capacity_units())
        .sum();
    assert_eq!(units, 2.0);
    let new = get(&dynamodb, &table, key("EVENT#new", "EVENT"))
        .await
        .unwrap();
    assert_eq!(new["claimed_by"], s("0001"));
    assert!(
        !get(&dynamodb, &table, key("EVENT#taken", "EVENT"))
            .await
            .unwrap()
            .contains_key("claimed_by")
    );
}

#[tokio::test]
async fn ttl_is_enabled_on_every_template_table_and_items_keep_their_expiry() {
    let dynamodb = dynamodb().await;
    let tables = bootstrap(&template_yaml()).await;
    let expires = chrono::Utc::now().timestamp() + 3600;

    for table in &tables {
        let attribute = table
            .ttl_attribute
            .as_deref()
            .expect("every table has a TTL");
        let ttl = dynamodb
            .describe_time_to_live()
            .table_name(&table.name)
            .send()
            .await
            .expect("DescribeTimeToLive")
            .time_to_live_description
            .expect("a TTL description");
        assert_eq!(
            (ttl.time_to_live_status(), ttl.attribute_name()),
            (Some(&TimeToLiveStatus::Enabled), Some(attribute)),
            "{}",
            table.name
        );

        let stored = item("RATE#1", "60", [(attribute, n(expires))]);
        put(&dynamodb, &table.name, stored.clone()).await;
        assert_eq!(
            get(&dynamodb, &table.name, key("RATE#1", "60")).await,
            Some(stored)
        );
    }
}

// ------------------------------------------------- DynamoDB: make branch

/// `make branch`'s calls (`ops::branch_table`), one by one: restore into a
/// scratch table, wait for ACTIVE, scan it, delete it.
async fn assert_restores(at_a_given_time: bool) {
    let dynamodb = dynamodb().await;
    let source = create_table(&dynamodb).await;
    let items: Vec<Item> = numbered(30)
        .iter()
        .map(|sk| item("USER#1", sk, [("text", s(format!("message {sk}")))]))
        .collect();
    batch_write(&dynamodb, &source, &items).await;
    let scratch = format!("{source}-restore");

    let restore = dynamodb
        .restore_table_to_point_in_time()
        .source_table_name(&source)
        .target_table_name(&scratch);
    let restore = if at_a_given_time {
        // Restore times have one-second resolution: let the writes' second pass.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let at = chrono::Utc::now().timestamp();
        restore.restore_date_time(aws_sdk_dynamodb::primitives::DateTime::from_secs(at))
    } else {
        restore.use_latest_restorable_time(true)
    };
    restore.send().await.expect("RestoreTableToPointInTime");

    let mut status = None;
    for _ in 0..50 {
        status = dynamodb
            .describe_table()
            .table_name(&scratch)
            .send()
            .await
            .expect("DescribeTable")
            .table
            .and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, Some(TableStatus::Active));

    let mut restored = scan_all(&dynamodb, &scratch).await;
    restored.sort_by_key(|i| i["sk"].as_s().unwrap().clone());
    assert_eq!(restored, items);

    dynamodb
        .delete_table()
        .table_name(&scratch)
        .send()
        .await
        .expect("DeleteTable");
    assert_eq!(
        error_code(dynamodb.describe_table().table_name(&scratch).send().await),
        "ResourceNotFoundException"
    );
}

#[tokio::test]
async fn restore_to_latest_restorable_time_copies_every_item() {
    assert_restores(false).await;
}

#[tokio::test]
async fn restore_to_a_given_time_copies_every_item_written_before_it() {
    assert_restores(true).await;
}

// ------------------------------------------------------------------ SQS

/// The events queue: a message group's messages come in order, with rising
/// sequence numbers, none while an earlier one is in flight, and a repeated
/// deduplication id is dropped.
#[tokio::test]
async fn a_fifo_group_is_delivered_in_order_one_delivery_at_a_time() {
    let sqs = sqs().await;
    let url = sqs
        .create_queue()
        .queue_name(format!("{}.fifo", unique("conformance")))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("a queue URL");
    for body in ["m1", "m2", "m3", "m1"] {
        sqs.send_message()
            .queue_url(&url)
            .message_body(body)
            .message_group_id("tenant")
            .message_deduplication_id(body)
            .send()
            .await
            .expect("SendMessage");
    }
    let receive = |max: i32| {
        let (sqs, url) = (&sqs, &url);
        async move {
            sqs.receive_message()
                .queue_url(url)
                .max_number_of_messages(max)
                .visibility_timeout(30)
                .message_system_attribute_names(MessageSystemAttributeName::SequenceNumber)
                .send()
                .await
                .expect("ReceiveMessage")
                .messages
                .unwrap_or_default()
        }
    };
    let first = receive(1).await;
    assert_eq!(bodies(&first), ["m1"]);
    assert!(receive(10).await.is_empty(), "the group waits for m1");
    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(first[0].receipt_handle().unwrap())
        .send()
        .await
        .expect("DeleteMessage");
    let rest = receive(10).await;
    assert_eq!(bodies(&rest), ["m2", "m3"], "m1 again was a duplicate");
    let sequence = |m: &Message| -> u128 {
        m.attributes().unwrap()[&MessageSystemAttributeName::SequenceNumber]
            .parse()
            .unwrap()
    };
    assert!(sequence(&first[0]) < sequence(&rest[0]) && sequence(&rest[0]) < sequence(&rest[1]));
}

#[tokio::test]
async fn message_batch_of_10_round_trips_and_deletes() {
    let sqs = sqs().await;
    let url = create_queue(&sqs, &[]).await;
    let sent_bodies: Vec<String> = (0..10).map(|i| format!("event {i}")).collect();
    let entries = sent_bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(b)
                .build()
                .unwrap()
        })
        .collect();

    let sent = sqs
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries))
        .send()
        .await
        .expect("SendMessageBatch");
    assert_eq!((sent.successful.len(), sent.failed.len()), (10, 0));

    let mut received = Vec::new();
    for _ in 0..10 {
        if received.len() == 10 {
            break;
        }
        received.extend(receive(&sqs, &url, 10, 1, Some(60)).await);
    }
    let mut got = bodies(&received);
    got.sort();
    assert_eq!(got, sent_bodies);

    let deletes = received
        .iter()
        .enumerate()
        .map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap())
                .build()
                .unwrap()
        })
        .collect();
    let deleted = sqs
        .delete_message_batch()
        .queue_url(&url)
        .set_entries(Some(deletes))
        .send()
        .await
        .expect("DeleteMessageBatch");
    assert_eq!((deleted.successful.len(), deleted.failed.len()), (10, 0));
    assert_eq!(queue_depth(&sqs, &url).await, ("0".into(), "0".into()));
}

#[tokio::test]
async fn received_message_stays_invisible_until_its_visibility_timeout() {
    let sqs = sqs().await;
    let url = create_queue(&sqs, &[]).await;
    let id = support::send_message(&sqs, &url, "rollup me").await;

    let first = receive(&sqs, &url, 1, 1, Some(2)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(receive_count(&first[0]), "1");
    let hidden = receive(&sqs, &url, 1, 0, None).await;
    assert_eq!(bodies(&hidden), Vec::<&str>::new(), "still invisible");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = receive(&sqs, &url, 1, 1, None).await;
    assert_eq!(again.len(), 1, "visible again after the timeout");
    assert_eq!(
        (
            again[0].message_id(),
            bodies(&again),
            receive_count(&again[0])
        ),
        (Some(id.as_str()), vec!["rollup me"], "2")
    );
}

#[tokio::test]
async fn long_poll_returns_a_message_sent_during_the_wait() {
    let sqs = sqs().await;
    let url = create_queue(&sqs, &[]).await;
    let started = Instant::now();

    let (received, ()) = tokio::join!(receive(&sqs, &url, 1, 10, None), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        support::send_message(&sqs, &url, "late").await;
    });

    let waited = started.elapsed();
    assert_eq!(bodies(&received), ["late"]);
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(8),
        "returned after {waited:?}, not when the message arrived"
    );
}

#[tokio::test]
async fn message_moves_to_the_dead_letter_queue_after_max_receive_count() {
    let sqs = sqs().await;
    let dead = create_queue(&sqs, &[]).await;
    let dead_arn = infra::cloud::bootstrap::queue_arn(&sqs, &dead)
        .await
        .unwrap();
    let url = create_queue(&sqs, &[]).await;
    let max_receive_count = 2;
    // Set after creation, as the bootstrap does.
    let policy = serde_json::json!({
        "deadLetterTargetArn": dead_arn,
        "maxReceiveCount": max_receive_count,
    });
    sqs.set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .expect("SetQueueAttributes");
    support::send_message(&sqs, &url, "poison").await;

    for attempt in 1..=max_receive_count {
        let received = receive(&sqs, &url, 1, 2, Some(1)).await;
        assert_eq!(bodies(&received), ["poison"], "receive {attempt}");
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }

    let left = receive(&sqs, &url, 1, 1, None).await;
    assert_eq!(bodies(&left), Vec::<&str>::new(), "moved off the queue");
    let dead_lettered = receive(&sqs, &dead, 1, 1, None).await;
    assert_eq!(bodies(&dead_lettered), ["poison"]);
}

#[tokio::test]
async fn string_and_number_message_attributes_round_trip() {
    let sqs = sqs().await;
    let url = create_queue(&sqs, &[]).await;
    let attribute = |kind: &str, value: &str| {
        MessageAttributeValue::builder()
            .data_type(kind)
            .string_value(value)
            .build()
            .unwrap()
    };
    sqs.send_message()
        .queue_url(&url)
        .message_body("with attributes")
        .message_attributes("tenant", attribute("String", "ten_acme"))
        .message_attributes("tokens", attribute("Number", "1250"))
        .send()
        .await
        .expect("SendMessage");

    let received = receive(&sqs, &url, 1, 1, None).await;
    assert_eq!(received.len(), 1);
    let attributes = received[0].message_attributes().expect("attributes");
    let read = |name: &str| {
        attributes
            .get(name)
            .map(|a| (a.data_type(), a.string_value()))
    };
    assert_eq!(read("tenant"), Some(("String", Some("ten_acme"))));
    assert_eq!(read("tokens"), Some(("Number", Some("1250"))));
    assert_eq!(attributes.len(), 2);
}

// ------------------------------------------------------- Secrets Manager

#[tokio::test]
async fn secret_reads_back_its_latest_value() {
    let secrets = aws_sdk_secretsmanager::Client::new(&support::aws().await);
    let name = unique("conformance/secret");
    let current = async || {
        let value = secrets
            .get_secret_value()
            .secret_id(&name)
            .send()
            .await
            .expect("GetSecretValue");
        (
            value.secret_string.unwrap_or_default(),
            value.version_id.unwrap_or_default(),
        )
    };

    secrets
        .create_secret()
        .name(&name)
        .secret_string(r#"{"api_key": ""}"#)
        .send()
        .await
        .expect("CreateSecret");
    assert_eq!(current().await.0, r#"{"api_key": ""}"#);

    let put = secrets
        .put_secret_value()
        .secret_id(&name)
        .secret_string(r#"{"api_key": "sk-new"}"#)
        .send()
        .await
        .expect("PutSecretValue");
    assert_eq!(
        current().await,
        (
            r#"{"api_key": "sk-new"}"#.to_owned(),
            put.version_id.unwrap_or_default()
        )
    );
}

// ------------------------------------------------------------------ scaling

/// The exactly-once rollup writes up to 100 items per transaction into a
/// table that grows all day. moto copies the whole table for each item
/// (~4 s at 2,000 items); AWS and a usable emulator answer in milliseconds.
#[tokio::test]
async fn transaction_of_100_items_on_a_5000_item_table_answers_within_a_second() {
    let dynamodb = dynamodb().await;
    let table = create_table(&dynamodb).await;
    let filler: Vec<Item> = (0..5000)
        .map(|i| {
            item(
                &format!("TENANT#{}", i % 50),
                &format!("{i:05}"),
                [("n", n(i))],
            )
        })
        .collect();
    futures_util::future::join_all(
        filler
            .chunks(625)
            .map(|part| batch_write(&dynamodb, &table, part)),
    )
    .await;
    let items = numbered(100)
        .iter()
        .map(|sk| put_new(&table, "EVENT", sk))
        .collect();

    let started = Instant::now();
    transact(&dynamodb, items).await.expect("100 items");
    let took = started.elapsed();

    let count = dynamodb
        .scan()
        .table_name(&table)
        .select(Select::Count)
        .send()
        .await
        .expect("Scan")
        .count;
    assert_eq!(count, 5100, "every filler and transaction item is stored");
    assert!(
        took < Duration::from_secs(1),
        "a 100-item transaction took {took:?}"
    );
}
