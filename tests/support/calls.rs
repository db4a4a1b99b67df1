//! Which AWS calls each function's code makes, noted as the tests drive it.
//!
//! A function's code gets its SDK configuration from [`aws_as`]: the
//! emulator behind a small proxy at `/as/<function>`, which notes every call's
//! IAM action and the resource it names. With `INGOT_SDK_CALLS` naming a
//! directory (`make test` sets it), each test process appends
//! `function\taction\tresource` lines to a file there, and
//! `infra/check_template.py --calls` compares them with each function's
//! policy in template.yaml, both ways.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use http_body_util::BodyExt;
use infra::cloud::proxy::{self, Forwarder};
use serde_json::Value;

/// SDK configuration for `function`'s code: the emulator, its calls noted.
pub async fn aws_as(function: &str) -> aws_config::SdkConfig {
    infra::cloud::bootstrap::emulator_config(
        &format!("{}/as/{function}", recorder()),
        super::REGION,
    )
    .await
}

/// The proxy's endpoint, started on first use (like the emulator, on a
/// thread that lives as long as the test process).
fn recorder() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let upstream = super::emulator().to_owned();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("recorder runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("recorder port");
                let address = listener.local_addr().expect("recorder address");
                tx.send(format!("http://{address}")).expect("test thread");
                let forwarder = Arc::new(Forwarder::new(&upstream));
                let log = std::env::var_os("INGOT_SDK_CALLS")
                    .map(|dir| PathBuf::from(dir).join(format!("{}.tsv", std::process::id())));
                proxy::serve(listener, move |request| {
                    let (forwarder, log) = (forwarder.clone(), log.clone());
                    async move { pass(&forwarder, log.as_ref(), request).await }
                })
                .await;
            });
        });
        rx.recv().expect("recorder thread")
    })
}

/// Notes the call, then forwards it without the `/as/<function>` prefix.
async fn pass(
    forwarder: &Forwarder,
    log: Option<&PathBuf>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<proxy::Body> {
    let (mut parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return proxy::status(400, "unreadable body");
    };
    let path = parts.uri.path().to_owned();
    let Some((function, rest)) = path
        .strip_prefix("/as/")
        .map(|p| p.split_once('/').unwrap_or((p, "")))
    else {
        return proxy::status(404, "expected /as/<function>/...");
    };
    if let Some(log) = log {
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|t| t.to_str().ok())
            .unwrap_or_default();
        let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let lines: String = actions(target, &input)
            .into_iter()
            .map(|(action, resource)| format!("{function}\t{action}\t{resource}\n"))
            .collect();
        let noted = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut file| file.write_all(lines.as_bytes()));
        if let Err(error) = noted {
            return proxy::status(500, &format!("{}: {error}", log.display()));
        }
    }
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.uri = match format!("{}/{rest}{query}", forwarder.upstream()).parse() {
        Ok(uri) => uri,
        Err(_) => return proxy::status(400, "bad path"),
    };
    parts.headers.remove(http::header::HOST);
    forwarder
        .send(http::Request::from_parts(parts, proxy::full(body)))
        .await
}

/// The IAM actions a call needs, each with the resource it names: a
/// DynamoDB transaction needs its items' actions, a batch its single one.
pub fn actions(target: &str, input: &Value) -> Vec<(String, String)> {
    let Some((service, operation)) = target.split_once('.') else {
        return Vec::new();
    };
    let str_at = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    match service {
        s if s.starts_with("DynamoDB") => match operation {
            "TransactWriteItems" | "TransactGetItems" => input["TransactItems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| item.as_object()?.iter().next())
                .map(|(kind, item)| {
                    let action = match kind.as_str() {
                        "ConditionCheck" => "ConditionCheckItem".to_owned(),
                        kind => format!("{kind}Item"),
                    };
                    (format!("dynamodb:{action}"), str_at(item, "TableName"))
                })
                .collect(),
            "BatchWriteItem" | "BatchGetItem" => input["RequestItems"]
                .as_object()
                .into_iter()
                .flat_map(|tables| tables.keys())
                .map(|table| (format!("dynamodb:{operation}"), table.clone()))
                .collect(),
            // PartiQL is authorised per statement verb, on the table it names.
            "BatchExecuteStatement" => input["Statements"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|statement| partiql(statement["Statement"].as_str()?))
                .collect(),
            _ => vec![(format!("dynamodb:{operation}"), str_at(input, "TableName"))],
        },
        "AmazonSQS" => {
            let queue = str_at(input, "QueueUrl");
            let name = queue.rsplit('/').next().unwrap_or_default().to_owned();
            let action = operation.trim_end_matches("Batch");
            vec![(format!("sqs:{action}"), name)]
        }
        "secretsmanager" => vec![(
            format!("secretsmanager:{operation}"),
            str_at(input, "SecretId"),
        )],
        _ => Vec::new(),
    }
}

/// `dynamodb:PartiQL<Verb>` and the quoted table of a PartiQL statement.
fn partiql(statement: &str) -> Option<(String, String)> {
    let verb = statement.split_whitespace().next()?.to_ascii_lowercase();
    let table = statement.split('"').nth(1)?;
    let verb = format!("{}{}", verb[..1].to_ascii_uppercase(), &verb[1..]);
    Some((format!("dynamodb:PartiQL{verb}"), table.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_partiql_statement_needs_its_verbs_action() {
        let input =
            json!({"Statements": [{"Statement": "INSERT INTO \"s-usage\" VALUE {'pk': ?}"}]});
        assert_eq!(
            actions("DynamoDB_20120810.BatchExecuteStatement", &input),
            [("dynamodb:PartiQLInsert".to_owned(), "s-usage".to_owned())]
        );
    }

    #[test]
    fn a_transaction_needs_its_items_actions_on_their_tables() {
        let input = json!({"TransactItems": [
            {"Put": {"TableName": "s-usage"}},
            {"ConditionCheck": {"TableName": "s-tenants"}},
            {"Update": {"TableName": "s-usage"}},
        ]});
        assert_eq!(
            actions("DynamoDB_20120810.TransactWriteItems", &input),
            [
                ("dynamodb:PutItem", "s-usage"),
                ("dynamodb:ConditionCheckItem", "s-tenants"),
                ("dynamodb:UpdateItem", "s-usage"),
            ]
            .map(|(a, r)| (a.to_owned(), r.to_owned()))
        );
    }

    #[test]
    fn batches_need_their_single_action() {
        let sqs = json!({"QueueUrl": "http://127.0.0.1:1/000000000000/s-events"});
        assert_eq!(
            actions("AmazonSQS.SendMessageBatch", &sqs),
            [("sqs:SendMessage".to_owned(), "s-events".to_owned())]
        );
        let dynamodb = json!({"RequestItems": {"s-chat": []}});
        assert_eq!(
            actions("DynamoDB_20120810.BatchWriteItem", &dynamodb),
            [("dynamodb:BatchWriteItem".to_owned(), "s-chat".to_owned())]
        );
    }
}
