//! Creates the template's tables, queues and secrets in the AWS emulator.
//!
//! Idempotent: what already exists is kept (with its data), so `make dev`
//! against an emulator that is still running reuses its state. Each created resource is
//! recorded in the [`Resolver`], which then resolves the functions'
//! environment exactly as CloudFormation would.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use shared::aws::describe;

use crate::cloud::template::{
    FunctionSpec, Resolver, SecretValue, TableSpec, Template, TemplateError,
};

/// The emulator's fixed account id (moto's default; ministack is told it).
pub const ACCOUNT_ID: &str = "123456789012";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{action} {resource}: {message}")]
    Aws {
        action: &'static str,
        resource: String,
        message: String,
    },
}

fn aws_error(action: &'static str, resource: &str, message: String) -> BootstrapError {
    BootstrapError::Aws {
        action,
        resource: resource.to_owned(),
        message,
    }
}

/// SDK configuration for the emulator at `endpoint`, with dummy credentials.
pub async fn emulator_config(endpoint: &str, region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.to_owned()))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "ingot-local",
        ))
        .load()
        .await
}

/// A secret the local cloud generated (or found from an earlier run): the
/// admin token, printed at start so a developer can use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedSecret {
    pub name: String,
    pub value: String,
}

/// Creates whatever is missing and records every resource in `resolver`.
pub async fn bootstrap(
    template: &Template,
    resolver: &mut Resolver,
    aws: &SdkConfig,
) -> Result<Vec<GeneratedSecret>, BootstrapError> {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    for table in template.tables(resolver)? {
        let arn = ensure_table(&dynamodb, &table).await?;
        resolver.define(&table.logical_id, &table.name, &arn);
    }

    let sqs = aws_sdk_sqs::Client::new(aws);
    let queues = template.queues(resolver)?;
    for queue in &queues {
        let (url, arn) = ensure_queue(&sqs, queue).await?;
        resolver.define(&queue.logical_id, &url, &arn);
    }
    // Redrive needs the dead-letter queue's ARN, so it is set once all exist.
    for queue in &queues {
        let Some(redrive) = &queue.redrive else {
            continue;
        };
        let dlq_arn = resolver.arn(&redrive.dead_letter_queue).ok_or_else(|| {
            aws_error(
                "SetQueueAttributes",
                &queue.name,
                format!(
                    "dead-letter queue {} is not declared",
                    redrive.dead_letter_queue
                ),
            )
        })?;
        let policy = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": redrive.max_receive_count,
        });
        let url = resolver.reference(&queue.logical_id).unwrap_or_default();
        sqs.set_queue_attributes()
            .queue_url(url)
            .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
            .send()
            .await
            .map_err(|e| aws_error("SetQueueAttributes", &queue.name, describe(&e)))?;
    }

    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let mut generated = Vec::new();
    for secret in template.secrets(resolver)? {
        let (arn, value) = ensure_secret(&secrets, &secret.name, &secret.value).await?;
        resolver.define(&secret.logical_id, &arn, &arn);
        if matches!(secret.value, SecretValue::Generated { .. }) {
            generated.push(GeneratedSecret {
                name: secret.name,
                value,
            });
        }
    }
    Ok(generated)
}

async fn ensure_table(
    client: &aws_sdk_dynamodb::Client,
    table: &TableSpec,
) -> Result<String, BootstrapError> {
    if let Ok(existing) = client.describe_table().table_name(&table.name).send().await {
        return Ok(existing
            .table()
            .and_then(|t| t.table_arn())
            .unwrap_or_default()
            .to_owned());
    }
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
    };
    let schema = |hash: &str, range: Option<&String>| {
        let mut keys = vec![key(hash, KeyType::Hash)];
        keys.extend(range.map(|r| key(r, KeyType::Range)));
        keys.into_iter().collect::<Result<Vec<_>, _>>()
    };
    let build_error = |e: aws_sdk_dynamodb::error::BuildError| {
        aws_error("CreateTable", &table.name, e.to_string())
    };

    let mut request = client
        .create_table()
        .table_name(&table.name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_key_schema(Some(
            schema(&table.hash_key, table.range_key.as_ref()).map_err(build_error)?,
        ));
    for (name, kind) in &table.attributes {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::from(kind.as_str()))
                .build()
                .map_err(build_error)?,
        );
    }
    for index in &table.indexes {
        request = request.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(&index.name)
                .set_key_schema(Some(
                    schema(&index.hash_key, index.range_key.as_ref()).map_err(build_error)?,
                ))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(build_error)?,
        );
    }
    let created = request
        .send()
        .await
        .map_err(|e| aws_error("CreateTable", &table.name, describe(&e)))?;

    if let Some(attribute) = &table.ttl_attribute {
        client
            .update_time_to_live()
            .table_name(&table.name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(attribute)
                    .enabled(true)
                    .build()
                    .map_err(build_error)?,
            )
            .send()
            .await
            .map_err(|e| aws_error("UpdateTimeToLive", &table.name, describe(&e)))?;
    }
    Ok(created
        .table_description()
        .and_then(|t| t.table_arn())
        .unwrap_or_default()
        .to_owned())
}

async fn ensure_queue(
    client: &aws_sdk_sqs::Client,
    queue: &crate::cloud::template::QueueSpec,
) -> Result<(String, String), BootstrapError> {
    let url = match client.get_queue_url().queue_name(&queue.name).send().await {
        Ok(found) => found.queue_url().unwrap_or_default().to_owned(),
        Err(_) => {
            let mut request = client.create_queue().queue_name(&queue.name);
            if let Some(secs) = queue.visibility_timeout_secs {
                request =
                    request.attributes(QueueAttributeName::VisibilityTimeout, secs.to_string());
            }
            if let Some(secs) = queue.retention_secs {
                request = request
                    .attributes(QueueAttributeName::MessageRetentionPeriod, secs.to_string());
            }
            if queue.fifo {
                request = request.attributes(QueueAttributeName::FifoQueue, "true");
            }
            request
                .send()
                .await
                .map_err(|e| aws_error("CreateQueue", &queue.name, describe(&e)))?
                .queue_url()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let arn = queue_arn(client, &url).await?;
    Ok((url, arn))
}

/// The ARN of the queue at `url`.
pub async fn queue_arn(client: &aws_sdk_sqs::Client, url: &str) -> Result<String, BootstrapError> {
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| aws_error("GetQueueAttributes", url, describe(&e)))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| aws_error("GetQueueAttributes", url, "no QueueArn".to_owned()))
}

async fn ensure_secret(
    client: &aws_sdk_secretsmanager::Client,
    name: &str,
    value: &SecretValue,
) -> Result<(String, String), BootstrapError> {
    if let Ok(existing) = client.get_secret_value().secret_id(name).send().await {
        return Ok((
            existing.arn().unwrap_or_default().to_owned(),
            existing.secret_string().unwrap_or_default().to_owned(),
        ));
    }
    let value = match value {
        SecretValue::Literal(text) => text.clone(),
        SecretValue::Generated { length } => random_token(*length),
    };
    let created = client
        .create_secret()
        .name(name)
        .secret_string(&value)
        .send()
        .await
        .map_err(|e| aws_error("CreateSecret", name, describe(&e)))?;
    Ok((created.arn().unwrap_or_default().to_owned(), value))
}

/// `length` random alphanumeric characters (hex digits of v4 UUIDs, which
/// come from the OS RNG).
fn random_token(length: usize) -> String {
    let mut token = String::with_capacity(length + 32);
    while token.len() < length {
        token.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    token.truncate(length);
    token
}

/// The environment `function` gets locally: what the template sets for it,
/// resolved against the emulator's resources, plus the emulator endpoint and
/// dummy credentials.
pub fn environment_of(
    function: &FunctionSpec,
    resolver: &Resolver,
    endpoint: &str,
    region: &str,
) -> Result<Vec<(String, String)>, TemplateError> {
    let mut env: Vec<(String, String)> = vec![
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
        ("AWS_REGION".into(), region.into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    for (name, value) in &function.environment {
        let value = resolver.resolve(value, &format!("{}.{name}", function.logical_id))?;
        env.push((name.clone(), value));
    }
    Ok(env)
}

/// Every function's environment in one list, as cargo-lambda's single env
/// file needs it; two functions giving one variable different values is an
/// error rather than a silent pick.
pub fn merged_environment(
    template: &Template,
    resolver: &Resolver,
    endpoint: &str,
    region: &str,
) -> Result<Vec<(String, String)>, TemplateError> {
    let mut merged: Vec<(String, String)> = Vec::new();
    for function in template.functions()? {
        for (name, value) in environment_of(&function, resolver, endpoint, region)? {
            match merged.iter().find(|(n, _)| *n == name) {
                Some((_, existing)) if *existing != value => {
                    return Err(TemplateError::Invalid {
                        at: format!("{}.{name}", function.logical_id),
                        reason: format!(
                            "{value:?} differs from another function's {existing:?}; \
                             locally all functions share one environment"
                        ),
                    });
                }
                Some(_) => {}
                None => merged.push((name, value)),
            }
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_have_the_requested_length_and_differ() {
        let a = random_token(48);
        assert_eq!(a.len(), 48);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, random_token(48));
    }

    #[test]
    fn conflicting_variables_across_functions_are_rejected() {
        let template = Template::parse(
            r#"
Resources:
  A:
    Type: AWS::Serverless::Function
    Metadata: { BuildProperties: { Binary: a } }
    Properties: { Environment: { Variables: { MODE: one } } }
  B:
    Type: AWS::Serverless::Function
    Metadata: { BuildProperties: { Binary: b } }
    Properties: { Environment: { Variables: { MODE: two } } }
"#,
        )
        .unwrap();
        let resolver = template.resolver("s", "r", "a", &[]).unwrap();
        let err = merged_environment(&template, &resolver, "http://e", "r").unwrap_err();
        assert!(err.to_string().starts_with("B.MODE:"), "{err}");
    }
}
