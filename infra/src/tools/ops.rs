//! Operations on a deployed stage (or the local one): `make redrive` puts
//! dead-lettered usage events back on the queue, `make branch` copies one
//! stage's tables into another's as they were at a point in time.
//!
//! A stage `<s>` is the stack `ingot-<s>`; the stage `local` is `make dev`'s
//! stack, in the emulator (and a branch from or to it stays there). Table and queue names come from template.yaml, so
//! these tools and the template cannot drift.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, PutRequest, TableStatus, WriteRequest,
};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use chrono::{DateTime, Utc};

use shared::aws::describe;
use shared::metering::ingest::send_batches;

use crate::cloud::bootstrap::{ACCOUNT_ID, emulator_config};
use crate::cloud::template::{QueueSpec, TableSpec, Template};

/// The emulator, or AWS with the caller's credentials and region.
pub async fn aws_config(
    emulated: bool,
    emulator_endpoint: &str,
    region: &str,
) -> aws_config::SdkConfig {
    if emulated {
        emulator_config(emulator_endpoint, region).await
    } else {
        aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
    }
}

pub fn stack_of(stage: &str) -> String {
    format!("ingot-{stage}")
}

fn resolver(
    template: &Template,
    stack: &str,
    region: &str,
) -> Result<crate::cloud::template::Resolver, String> {
    template
        .resolver(stack, region, ACCOUNT_ID, &[])
        .map_err(|e| e.to_string())
}

/// The tables the template gives `stack`.
pub fn tables_of(template: &Template, stack: &str, region: &str) -> Result<Vec<TableSpec>, String> {
    template
        .tables(&resolver(template, stack, region)?)
        .map_err(|e| e.to_string())
}

/// The names of `stack`'s events queue and of its dead-letter queue.
pub fn dead_letter_pair(
    template: &Template,
    stack: &str,
    region: &str,
) -> Result<(String, String), String> {
    let queues: Vec<QueueSpec> = template
        .queues(&resolver(template, stack, region)?)
        .map_err(|e| e.to_string())?;
    let named = |id: &str| {
        queues
            .iter()
            .find(|q| q.logical_id == id)
            .map(|q| q.name.clone())
            .ok_or(format!("the template declares no {id}"))
    };
    Ok((named("EventsQueue")?, named("EventsDeadLetterQueue")?))
}

/// Moves every message of `dead_letter_url` to `queue_url`: sent first,
/// deleted from the DLQ only once sent, so a crash in between duplicates
/// (which the rollup counts once, by event id) and never loses. Returns how
/// many moved.
pub async fn redrive(
    sqs: &aws_sdk_sqs::Client,
    dead_letter_url: &str,
    queue_url: &str,
) -> Result<usize, String> {
    let mut moved = 0;
    loop {
        let received = sqs
            .receive_message()
            .queue_url(dead_letter_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .map_err(|e| format!("ReceiveMessage: {}", describe(&e)))?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(moved);
        }
        let bodies: Vec<String> = messages
            .iter()
            .map(|m| m.body().unwrap_or_default().to_owned())
            .collect();
        // Batches within SQS's count and size limits (messages can be 256 KB).
        let mut offset = 0;
        let mut failed = 0;
        for batch in send_batches(&bodies) {
            let entries = batch
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    let entry = SendMessageBatchRequestEntry::builder()
                        .id((offset + i).to_string())
                        .message_body(body);
                    // FIFO: back into its own group (the tenant's), after
                    // everything already there.
                    let message = &messages[offset + i];
                    let entry = match message
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    {
                        Some(group) => entry
                            .message_group_id(group)
                            .set_message_deduplication_id(message.message_id().map(str::to_owned)),
                        None => entry,
                    };
                    entry.build().map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            offset += batch.len();
            let sent = sqs
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| format!("SendMessageBatch: {}", describe(&e)))?;
            failed += sent.failed.len();
            let deletes = sent
                .successful
                .iter()
                .filter_map(|ok| ok.id.parse::<usize>().ok())
                .filter_map(|i| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(messages[i].receipt_handle()?)
                        .build()
                        .ok()
                })
                .collect::<Vec<_>>();
            moved += deletes.len();
            if !deletes.is_empty() {
                sqs.delete_message_batch()
                    .queue_url(dead_letter_url)
                    .set_entries(Some(deletes))
                    .send()
                    .await
                    .map_err(|e| format!("DeleteMessageBatch: {}", describe(&e)))?;
            }
        }
        if failed > 0 {
            return Err(format!(
                "{failed} messages could not be sent back; they stay in the DLQ"
            ));
        }
    }
}

/// Makes `target` a copy of `source` as it was at `at` (or its latest
/// restorable time): DynamoDB restores `source` into a scratch table, whose
/// items then replace `target`'s, and the scratch table is deleted. The
/// target stays the stack's own table, so CloudFormation never sees drift.
pub async fn branch_table(
    dynamodb: &aws_sdk_dynamodb::Client,
    source: &str,
    target: &str,
    at: Option<DateTime<Utc>>,
) -> Result<usize, String> {
    let scratch = format!("{target}-restore-{}", Utc::now().format("%Y%m%d%H%M%S"));
    let mut restore = dynamodb
        .restore_table_to_point_in_time()
        .source_table_name(source)
        .target_table_name(&scratch);
    restore = match at {
        Some(at) => restore.restore_date_time(aws_sdk_dynamodb::primitives::DateTime::from_secs(
            at.timestamp(),
        )),
        None => restore.use_latest_restorable_time(true),
    };
    restore
        .send()
        .await
        .map_err(|e| format!("RestoreTableToPointInTime {source}: {}", describe(&e)))?;
    let copied = async {
        wait_active(dynamodb, &scratch).await?;
        clear(dynamodb, target).await?;
        copy(dynamodb, &scratch, target).await
    }
    .await;
    match copied {
        Ok(copied) => {
            dynamodb
                .delete_table()
                .table_name(&scratch)
                .send()
                .await
                .map_err(|e| format!("DeleteTable {scratch}: {}", describe(&e)))?;
            Ok(copied)
        }
        // The scratch table is kept: it holds the restored data, so the copy
        // can be finished from it (or it can be deleted by hand).
        Err(error) => Err(format!(
            "{error}; {target} may be partly copied; the restored data is kept in {scratch}"
        )),
    }
}

/// Restores take minutes on AWS (and are instant in the emulator).
async fn wait_active(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), String> {
    for _ in 0..360 {
        let status = dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| format!("DescribeTable {table}: {}", describe(&e)))?
            .table
            .and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Err(format!("{table} did not become ACTIVE within 30 minutes"))
}

/// Every item of `table`, page by page.
pub async fn scan_pages(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    mut page: impl AsyncFnMut(Vec<HashMap<String, AttributeValue>>) -> Result<(), String>,
) -> Result<(), String> {
    let mut start = None;
    loop {
        let out = dynamodb
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| format!("Scan {table}: {}", describe(&e)))?;
        page(out.items.unwrap_or_default()).await?;
        start = out.last_evaluated_key;
        if start.is_none() {
            return Ok(());
        }
    }
}

async fn write_all(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    requests: Vec<WriteRequest>,
) -> Result<(), String> {
    for chunk in requests.chunks(25) {
        let mut pending = HashMap::from([(table.to_owned(), chunk.to_vec())]);
        for attempt in 0.. {
            let out = dynamodb
                .batch_write_item()
                .set_request_items(Some(pending))
                .send()
                .await
                .map_err(|e| format!("BatchWriteItem {table}: {}", describe(&e)))?;
            pending = out.unprocessed_items.unwrap_or_default();
            if pending.values().all(Vec::is_empty) {
                break;
            }
            if attempt == 10 {
                return Err(format!("BatchWriteItem {table}: items left unprocessed"));
            }
            tokio::time::sleep(shared::backoff::jittered(
                Duration::from_millis(100),
                attempt,
            ))
            .await;
        }
    }
    Ok(())
}

async fn clear(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), String> {
    scan_pages(dynamodb, table, async |items| {
        let deletes = items
            .into_iter()
            .filter_map(|item| {
                let key = ["pk", "sk"]
                    .into_iter()
                    .filter_map(|k| Some((k.to_owned(), item.get(k)?.clone())))
                    .collect();
                DeleteRequest::builder()
                    .set_key(Some(key))
                    .build()
                    .ok()
                    .map(|d| WriteRequest::builder().delete_request(d).build())
            })
            .collect();
        write_all(dynamodb, table, deletes).await
    })
    .await
}

async fn copy(dynamodb: &aws_sdk_dynamodb::Client, from: &str, to: &str) -> Result<usize, String> {
    let mut copied = 0;
    scan_pages(dynamodb, from, async |items| {
        copied += items.len();
        let puts = items
            .into_iter()
            .filter_map(|item| {
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .ok()
                    .map(|p| WriteRequest::builder().put_request(p).build())
            })
            .collect();
        write_all(dynamodb, to, puts).await
    })
    .await?;
    Ok(copied)
}

/// `make branch`: every table of stage `from` into stage `to`.
pub async fn branch(
    template: &Template,
    from: &str,
    to: &str,
    at: Option<DateTime<Utc>>,
    emulator_endpoint: &str,
    region: &str,
) -> Result<(), String> {
    if to == "prod" {
        return Err("refusing to overwrite prod's tables".to_owned());
    }
    // Branching from or to `local` happens in the emulator, where the other
    // stage's tables are created if missing (on AWS, deploy it first).
    let emulated = from == "local" || to == "local";
    let aws = aws_config(emulated, emulator_endpoint, region).await;
    if emulated {
        let mut resolver = resolver(template, &stack_of(to), region)?;
        crate::cloud::bootstrap::bootstrap(template, &mut resolver, &aws)
            .await
            .map_err(|e| e.to_string())?;
    }
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    let sources = tables_of(template, &stack_of(from), region)?;
    let targets = tables_of(template, &stack_of(to), region)?;
    for (source, target) in sources.iter().zip(&targets) {
        let copied = branch_table(&dynamodb, &source.name, &target.name, at).await?;
        println!("{} → {}: {copied} items", source.name, target.name);
    }
    Ok(())
}

/// `make redrive`: the stage's dead-letter queue back onto its events queue.
pub async fn redrive_stage(
    template: &Template,
    stage: &str,
    emulator_endpoint: &str,
    region: &str,
) -> Result<(), String> {
    let (queue_name, dead_name) = dead_letter_pair(template, &stack_of(stage), region)?;
    let aws = aws_config(stage == "local", emulator_endpoint, region).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let url = |name: String| {
        let sqs = sqs.clone();
        async move {
            sqs.get_queue_url()
                .queue_name(&name)
                .send()
                .await
                .map_err(|e| format!("GetQueueUrl {name}: {}", describe(&e)))
                .map(|o| o.queue_url.unwrap_or_default())
        }
    };
    let dead = url(dead_name).await?;
    let queue = url(queue_name).await?;
    let moved = redrive(&sqs, &dead, &queue).await?;
    println!("moved {moved} messages from {dead} to {queue}");
    Ok(())
}
