//! Reads `template.yaml`: the one description of Ingot's resources.
//!
//! The local cloud creates exactly the tables, queues and secrets the template
//! declares and gives each function exactly the environment the template
//! sets, so local and AWS cannot drift. Only the CloudFormation intrinsics the
//! template uses for names and wiring are understood (`Ref`, `Fn::Sub`,
//! `Fn::GetAtt`); anything else is an error naming what it met, never a guess.

use std::collections::{BTreeMap, HashMap};

use serde_norway::Value;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("template is not valid YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("{at}: {reason}")]
    Invalid { at: String, reason: String },
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> TemplateError {
    TemplateError::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    root: Value,
}

/// Values `Ref` and `Fn::GetAtt` resolve to, per logical id. Parameters and
/// pseudo parameters are known up front; resources are added as the emulator
/// creates them.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    refs: HashMap<String, String>,
    arns: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub logical_id: String,
    pub name: String,
    /// `(attribute, type)` pairs, e.g. `("pk", "S")`.
    pub attributes: Vec<(String, String)>,
    pub hash_key: String,
    pub range_key: Option<String>,
    pub indexes: Vec<IndexSpec>,
    pub ttl_attribute: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: String,
    pub hash_key: String,
    pub range_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub logical_id: String,
    pub name: String,
    pub visibility_timeout_secs: Option<u32>,
    pub retention_secs: Option<u32>,
    pub redrive: Option<Redrive>,
    /// `FifoQueue: true`: ordered per message group.
    pub fifo: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    pub dead_letter_queue: String,
    pub max_receive_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub logical_id: String,
    pub name: String,
    pub value: SecretValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretValue {
    Literal(String),
    /// `GenerateSecretString`: the local cloud makes a random one.
    Generated {
        length: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    pub logical_id: String,
    /// The cargo binary (`BuildProperties.Binary`).
    pub binary: String,
    /// Globals first, then the function's own variables (which win).
    pub environment: Vec<(String, Value)>,
    /// `Timeout`, the function's own or the global one (Lambda's default: 3 s).
    pub timeout_secs: u64,
    /// `MemorySize` in MB, the function's own or the global one (Lambda's default: 128).
    pub memory_mb: u64,
    /// `ReservedConcurrentExecutions`: at most this many instances at once.
    pub reserved_concurrency: Option<u64>,
    pub triggers: Vec<Trigger>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Behind an HTTP API or a Function URL.
    Http {
        streaming: bool,
    },
    Sqs(SqsSource),
    Schedule(ScheduleSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsSource {
    pub queue: String,
    pub batch_size: usize,
    pub max_batching_window_secs: u64,
    pub report_batch_item_failures: bool,
    /// `ScalingConfig.MaximumConcurrency`: batches in flight at once.
    pub max_concurrency: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSource {
    pub expression: String,
    pub input: Option<String>,
}

impl Template {
    pub fn load(path: &str) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let root: Value = serde_norway::from_str(text)?;
        if !root.get("Resources").is_some_and(Value::is_mapping) {
            return Err(invalid("template", "has no Resources mapping"));
        }
        Ok(Self { root })
    }

    /// The whole template, for checks beyond what the local cloud creates.
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// A resolver for a stack named `stack` with these parameter overrides;
    /// parameters not overridden take their `Default`.
    pub fn resolver(
        &self,
        stack: &str,
        region: &str,
        account: &str,
        overrides: &[(&str, &str)],
    ) -> Result<Resolver, TemplateError> {
        let mut refs = HashMap::from([
            ("AWS::StackName".to_owned(), stack.to_owned()),
            ("AWS::Region".to_owned(), region.to_owned()),
            ("AWS::AccountId".to_owned(), account.to_owned()),
            ("AWS::Partition".to_owned(), "aws".to_owned()),
            ("AWS::URLSuffix".to_owned(), "amazonaws.com".to_owned()),
        ]);
        for (name, spec) in mapping(self.root.get("Parameters")) {
            let value = overrides
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
                .or_else(|| spec.get("Default").and_then(scalar))
                .ok_or_else(|| {
                    invalid(format!("Parameters.{name}"), "no Default and no override")
                })?;
            refs.insert(name.to_owned(), value);
        }
        Ok(Resolver {
            refs,
            arns: HashMap::new(),
        })
    }

    fn resources_of<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        mapping(self.root.get("Resources"))
            .filter(move |(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
            .map(|(id, r)| (id, r.get("Properties").unwrap_or(&Value::Null)))
    }

    pub fn tables(&self, resolver: &Resolver) -> Result<Vec<TableSpec>, TemplateError> {
        self.resources_of("AWS::DynamoDB::Table")
            .map(|(id, props)| {
                let at = |field: &str| format!("{id}.{field}");
                let name = resolver.resolve(required(props, "TableName", id)?, &at("TableName"))?;
                let attributes = sequence(props.get("AttributeDefinitions"))
                    .map(|a| {
                        Ok((
                            string_field(a, "AttributeName", id)?,
                            string_field(a, "AttributeType", id)?,
                        ))
                    })
                    .collect::<Result<_, TemplateError>>()?;
                let (hash_key, range_key) = key_schema(props.get("KeySchema"), id)?;
                let indexes = sequence(props.get("GlobalSecondaryIndexes"))
                    .map(|i| {
                        let (hash_key, range_key) = key_schema(i.get("KeySchema"), id)?;
                        Ok(IndexSpec {
                            name: string_field(i, "IndexName", id)?,
                            hash_key,
                            range_key,
                        })
                    })
                    .collect::<Result<_, TemplateError>>()?;
                let ttl_attribute = props
                    .get("TimeToLiveSpecification")
                    .filter(|t| t.get("Enabled").and_then(Value::as_bool) == Some(true))
                    .map(|t| string_field(t, "AttributeName", id))
                    .transpose()?;
                Ok(TableSpec {
                    logical_id: id.to_owned(),
                    name,
                    attributes,
                    hash_key,
                    range_key,
                    indexes,
                    ttl_attribute,
                })
            })
            .collect()
    }

    pub fn queues(&self, resolver: &Resolver) -> Result<Vec<QueueSpec>, TemplateError> {
        self.resources_of("AWS::SQS::Queue")
            .map(|(id, props)| {
                let name = resolver.resolve(
                    required(props, "QueueName", id)?,
                    &format!("{id}.QueueName"),
                )?;
                let redrive = props
                    .get("RedrivePolicy")
                    .map(|policy| {
                        let target = required(policy, "deadLetterTargetArn", id)?;
                        Ok::<_, TemplateError>(Redrive {
                            dead_letter_queue: get_att_target(target).ok_or_else(|| {
                                invalid(id, "deadLetterTargetArn must be !GetAtt <Queue>.Arn")
                            })?,
                            max_receive_count: number(
                                required(policy, "maxReceiveCount", id)?,
                                id,
                            )?,
                        })
                    })
                    .transpose()?;
                Ok(QueueSpec {
                    logical_id: id.to_owned(),
                    name,
                    visibility_timeout_secs: props
                        .get("VisibilityTimeout")
                        .map(|v| number(v, id))
                        .transpose()?,
                    retention_secs: props
                        .get("MessageRetentionPeriod")
                        .map(|v| number(v, id))
                        .transpose()?,
                    redrive,
                    fifo: props.get("FifoQueue").and_then(Value::as_bool) == Some(true),
                })
            })
            .collect()
    }

    pub fn secrets(&self, resolver: &Resolver) -> Result<Vec<SecretSpec>, TemplateError> {
        self.resources_of("AWS::SecretsManager::Secret")
            .map(|(id, props)| {
                let name = resolver.resolve(required(props, "Name", id)?, &format!("{id}.Name"))?;
                let value = if let Some(literal) = props.get("SecretString") {
                    SecretValue::Literal(resolver.resolve(literal, &format!("{id}.SecretString"))?)
                } else if let Some(generate) = props.get("GenerateSecretString") {
                    SecretValue::Generated {
                        length: generate
                            .get("PasswordLength")
                            .map(|v| number(v, id))
                            .transpose()?
                            .unwrap_or(32),
                    }
                } else {
                    return Err(invalid(id, "needs SecretString or GenerateSecretString"));
                };
                Ok(SecretSpec {
                    logical_id: id.to_owned(),
                    name,
                    value,
                })
            })
            .collect()
    }

    pub fn functions(&self) -> Result<Vec<FunctionSpec>, TemplateError> {
        let global_function = self.root.get("Globals").and_then(|g| g.get("Function"));
        let globals = global_function
            .and_then(|f| f.get("Environment"))
            .and_then(|e| e.get("Variables"));
        let resources = mapping(self.root.get("Resources")).filter(|(_, r)| {
            r.get("Type").and_then(Value::as_str) == Some("AWS::Serverless::Function")
        });
        resources
            .map(|(id, resource)| {
                let binary = resource
                    .get("Metadata")
                    .and_then(|m| m.get("BuildProperties"))
                    .and_then(|b| b.get("Binary"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(id, "needs Metadata.BuildProperties.Binary"))?
                    .to_owned();
                let props = resource.get("Properties").unwrap_or(&Value::Null);
                let own = props.get("Environment").and_then(|e| e.get("Variables"));
                let mut environment: Vec<(String, Value)> = Vec::new();
                for (name, value) in mapping(globals).chain(mapping(own)) {
                    environment.retain(|(n, _)| n != name);
                    environment.push((name.to_owned(), value.clone()));
                }
                let setting = |name: &str| {
                    props
                        .get(name)
                        .or_else(|| global_function.and_then(|g| g.get(name)))
                        .map(|v| number(v, id))
                        .transpose()
                };
                let timeout_secs = setting("Timeout")?.unwrap_or(3);
                let memory_mb = setting("MemorySize")?.unwrap_or(128);
                let reserved_concurrency = setting("ReservedConcurrentExecutions")?;
                let mut triggers = Vec::new();
                if let Some(url) = props.get("FunctionUrlConfig") {
                    triggers.push(Trigger::Http {
                        streaming: url.get("InvokeMode").and_then(Value::as_str)
                            == Some("RESPONSE_STREAM"),
                    });
                }
                for (name, event) in mapping(props.get("Events")) {
                    let at = format!("{id}.Events.{name}");
                    let eprops = event.get("Properties").unwrap_or(&Value::Null);
                    match event.get("Type").and_then(Value::as_str) {
                        Some("HttpApi" | "Api") => {
                            triggers.push(Trigger::Http { streaming: false })
                        }
                        Some("SQS") => triggers.push(Trigger::Sqs(SqsSource {
                            queue: get_att_target(required(eprops, "Queue", &at)?)
                                .ok_or_else(|| invalid(&at, "Queue must be !GetAtt <Queue>.Arn"))?,
                            batch_size: eprops
                                .get("BatchSize")
                                .map(|v| number(v, &at))
                                .transpose()?
                                .unwrap_or(10),
                            max_batching_window_secs: eprops
                                .get("MaximumBatchingWindowInSeconds")
                                .map(|v| number(v, &at))
                                .transpose()?
                                .unwrap_or(0),
                            report_batch_item_failures: sequence(
                                eprops.get("FunctionResponseTypes"),
                            )
                            .any(|t| t.as_str() == Some("ReportBatchItemFailures")),
                            max_concurrency: eprops
                                .get("ScalingConfig")
                                .and_then(|c| c.get("MaximumConcurrency"))
                                .map(|v| number(v, &at))
                                .transpose()?,
                        })),
                        Some("ScheduleV2" | "Schedule") => {
                            triggers.push(Trigger::Schedule(ScheduleSource {
                                expression: string_field(eprops, "ScheduleExpression", &at)?,
                                input: eprops
                                    .get("Input")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned),
                            }))
                        }
                        other => {
                            return Err(invalid(
                                at,
                                format!("event type {other:?} has no local equivalent"),
                            ));
                        }
                    }
                }
                Ok(FunctionSpec {
                    logical_id: id.to_owned(),
                    binary,
                    environment,
                    timeout_secs,
                    memory_mb,
                    reserved_concurrency,
                    triggers,
                })
            })
            .collect()
    }
}

impl Resolver {
    /// Records what `Ref` and `Fn::GetAtt <id>.Arn` of a created resource give.
    pub fn define(&mut self, logical_id: &str, reference: &str, arn: &str) {
        self.refs
            .insert(logical_id.to_owned(), reference.to_owned());
        self.arns.insert(logical_id.to_owned(), arn.to_owned());
    }

    pub fn reference(&self, logical_id: &str) -> Option<&str> {
        self.refs.get(logical_id).map(String::as_str)
    }

    pub fn arn(&self, logical_id: &str) -> Option<&str> {
        self.arns.get(logical_id).map(String::as_str)
    }

    /// Resolves a scalar or intrinsic to a string; `at` names it in errors.
    pub fn resolve(&self, value: &Value, at: &str) -> Result<String, TemplateError> {
        if let Some(s) = scalar(value) {
            return Ok(s);
        }
        let (function, argument) =
            intrinsic(value).ok_or_else(|| invalid(at, "expected a string or an intrinsic"))?;
        match function.as_str() {
            "Ref" => {
                let name = argument
                    .as_str()
                    .ok_or_else(|| invalid(at, "Ref takes a name"))?;
                self.reference(name).map(str::to_owned).ok_or_else(|| {
                    invalid(at, format!("Ref {name}: unknown or not created locally"))
                })
            }
            "Fn::GetAtt" => {
                let target = get_att_target(value)
                    .ok_or_else(|| invalid(at, "only <Resource>.Arn is supported"))?;
                self.arn(&target).map(str::to_owned).ok_or_else(|| {
                    invalid(
                        at,
                        format!("GetAtt {target}.Arn: unknown or not created locally"),
                    )
                })
            }
            "Fn::Sub" => {
                let text = argument
                    .as_str()
                    .ok_or_else(|| invalid(at, "only the string form of Fn::Sub is supported"))?;
                self.substitute(text, at)
            }
            other => Err(invalid(at, format!("{other} is not supported locally"))),
        }
    }

    fn substitute(&self, text: &str, at: &str) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| invalid(at, "unclosed ${ in Fn::Sub"))?;
            let name = &after[..end];
            let value = match name.strip_suffix(".Arn") {
                Some(id) => self.arn(id),
                None => self.reference(name),
            };
            out.push_str(value.ok_or_else(|| {
                invalid(at, format!("${{{name}}}: unknown or not created locally"))
            })?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// `(function, argument)` of `!Ref x` / `{"Ref": x}` and the other
/// intrinsics, with short-form tags named as their long form (`!Sub` → `Fn::Sub`).
fn intrinsic(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let function = if name == "Ref" {
                name.to_owned()
            } else {
                format!("Fn::{name}")
            };
            Some((function, &tagged.value))
        }
        Value::Mapping(map) if map.len() == 1 => {
            let (k, v) = map.iter().next()?;
            let key = k.as_str()?;
            (key == "Ref" || key.starts_with("Fn::")).then(|| (key.to_owned(), v))
        }
        _ => None,
    }
}

/// The logical id in `!GetAtt Id.Arn`, `!GetAtt [Id, Arn]` or the long forms.
fn get_att_target(value: &Value) -> Option<String> {
    let (function, argument) = intrinsic(value)?;
    if function != "Fn::GetAtt" {
        return None;
    }
    match argument {
        Value::String(s) => s.strip_suffix(".Arn").map(str::to_owned),
        Value::Sequence(parts) if parts.len() == 2 && parts[1].as_str() == Some("Arn") => {
            parts[0].as_str().map(str::to_owned)
        }
        _ => None,
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn mapping(value: Option<&Value>) -> impl Iterator<Item = (&str, &Value)> {
    value
        .and_then(Value::as_mapping)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, v)| Some((k.as_str()?, v)))
}

fn sequence(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value.and_then(Value::as_sequence).into_iter().flatten()
}

fn required<'a>(value: &'a Value, field: &str, at: &str) -> Result<&'a Value, TemplateError> {
    value
        .get(field)
        .ok_or_else(|| invalid(at, format!("missing {field}")))
}

fn string_field(value: &Value, field: &str, at: &str) -> Result<String, TemplateError> {
    required(value, field, at)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| invalid(at, format!("{field} must be a plain string")))
}

fn number<T: std::str::FromStr>(value: &Value, at: &str) -> Result<T, TemplateError> {
    scalar(value)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(at, format!("expected a number, found {value:?}")))
}

fn key_schema(value: Option<&Value>, at: &str) -> Result<(String, Option<String>), TemplateError> {
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for key in sequence(value) {
        keys.insert(
            string_field(key, "KeyType", at)?,
            string_field(key, "AttributeName", at)?,
        );
    }
    let hash = keys
        .remove("HASH")
        .ok_or_else(|| invalid(at, "KeySchema has no HASH key"))?;
    Ok((hash, keys.remove("RANGE")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Parameters:
  Stage: { Type: String, Default: dev }
Globals:
  Function:
    Environment:
      Variables:
        STAGE: !Ref Stage
        RUST_LOG: info
Resources:
  Items:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub "${AWS::StackName}-items"
      AttributeDefinitions:
        - { AttributeName: pk, AttributeType: S }
        - { AttributeName: sk, AttributeType: S }
        - { AttributeName: g, AttributeType: S }
      KeySchema:
        - { AttributeName: pk, KeyType: HASH }
        - { AttributeName: sk, KeyType: RANGE }
      GlobalSecondaryIndexes:
        - IndexName: by-g
          KeySchema: [{ AttributeName: g, KeyType: HASH }]
          Projection: { ProjectionType: ALL }
      TimeToLiveSpecification: { AttributeName: expires_at, Enabled: true }
  Work:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "${AWS::StackName}-work"
      VisibilityTimeout: 30
      RedrivePolicy: { deadLetterTargetArn: !GetAtt Dead.Arn, maxReceiveCount: 3 }
  Dead:
    Type: AWS::SQS::Queue
    Properties: { QueueName: { "Fn::Sub": "${AWS::StackName}-dead" } }
  Token:
    Type: AWS::SecretsManager::Secret
    Properties:
      Name: !Sub "${AWS::StackName}/token"
      GenerateSecretString: { PasswordLength: 40 }
  Worker:
    Type: AWS::Serverless::Function
    Metadata: { BuildMethod: rust-cargolambda, BuildProperties: { Binary: worker } }
    Properties:
      Environment:
        Variables:
          RUST_LOG: debug
          QUEUE_URL: !Ref Work
          DLQ_ARN: !GetAtt [Dead, Arn]
      Events:
        Q:
          Type: SQS
          Properties:
            Queue: !GetAtt Work.Arn
            BatchSize: 25
            MaximumBatchingWindowInSeconds: 2
            FunctionResponseTypes: [ReportBatchItemFailures]
        Tick:
          Type: ScheduleV2
          Properties: { ScheduleExpression: rate(5 minutes), Input: '{"a": 1}' }
"#;

    fn resolver(t: &Template) -> Resolver {
        t.resolver("ingot-local", "us-east-1", "123456789012", &[])
            .unwrap()
    }

    #[test]
    fn reads_tables_with_keys_indexes_and_ttl() {
        let t = Template::parse(TEMPLATE).unwrap();
        let tables = t.tables(&resolver(&t)).unwrap();
        assert_eq!(
            tables,
            [TableSpec {
                logical_id: "Items".into(),
                name: "ingot-local-items".into(),
                attributes: vec![
                    ("pk".into(), "S".into()),
                    ("sk".into(), "S".into()),
                    ("g".into(), "S".into())
                ],
                hash_key: "pk".into(),
                range_key: Some("sk".into()),
                indexes: vec![IndexSpec {
                    name: "by-g".into(),
                    hash_key: "g".into(),
                    range_key: None
                }],
                ttl_attribute: Some("expires_at".into()),
            }]
        );
    }

    #[test]
    fn reads_queues_with_redrive_in_either_sub_form() {
        let t = Template::parse(TEMPLATE).unwrap();
        let queues = t.queues(&resolver(&t)).unwrap();
        assert_eq!(queues[0].name, "ingot-local-work");
        assert_eq!(
            queues[0].redrive,
            Some(Redrive {
                dead_letter_queue: "Dead".into(),
                max_receive_count: 3
            })
        );
        assert_eq!(queues[0].visibility_timeout_secs, Some(30));
        assert_eq!(queues[1].name, "ingot-local-dead");
        assert_eq!(queues[1].redrive, None);
    }

    #[test]
    fn reads_generated_secrets() {
        let t = Template::parse(TEMPLATE).unwrap();
        let secrets = t.secrets(&resolver(&t)).unwrap();
        assert_eq!(secrets[0].name, "ingot-local/token");
        assert_eq!(secrets[0].value, SecretValue::Generated { length: 40 });
    }

    #[test]
    fn function_environment_merges_globals_and_resolves_refs() {
        let t = Template::parse(TEMPLATE).unwrap();
        let mut r = resolver(&t);
        r.define(
            "Work",
            "http://q/work",
            "arn:aws:sqs:us-east-1:123456789012:work",
        );
        r.define(
            "Dead",
            "http://q/dead",
            "arn:aws:sqs:us-east-1:123456789012:dead",
        );
        let f = &t.functions().unwrap()[0];
        assert_eq!(f.binary, "worker");
        let env: Vec<(String, String)> = f
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), r.resolve(v, k).unwrap()))
            .collect();
        assert_eq!(
            env,
            [
                ("STAGE".to_owned(), "dev".to_owned()),
                ("RUST_LOG".to_owned(), "debug".to_owned()),
                ("QUEUE_URL".to_owned(), "http://q/work".to_owned()),
                (
                    "DLQ_ARN".to_owned(),
                    "arn:aws:sqs:us-east-1:123456789012:dead".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn reads_event_sources() {
        let t = Template::parse(TEMPLATE).unwrap();
        let f = &t.functions().unwrap()[0];
        assert_eq!(
            f.triggers,
            [
                Trigger::Sqs(SqsSource {
                    queue: "Work".into(),
                    batch_size: 25,
                    max_batching_window_secs: 2,
                    report_batch_item_failures: true,
                    max_concurrency: None,
                }),
                Trigger::Schedule(ScheduleSource {
                    expression: "rate(5 minutes)".into(),
                    input: Some(r#"{"a": 1}"#.into()),
                }),
            ]
        );
    }

    #[test]
    fn parameter_overrides_win_over_defaults() {
        let t = Template::parse(TEMPLATE).unwrap();
        let r = t.resolver("s", "r", "a", &[("Stage", "local")]).unwrap();
        assert_eq!(r.reference("Stage"), Some("local"));
    }

    #[test]
    fn unsupported_intrinsics_are_named() {
        let r = Resolver::default();
        let v: Value = serde_norway::from_str("!Join ['-', [a, b]]").unwrap();
        let err = r.resolve(&v, "X.Name").unwrap_err().to_string();
        assert_eq!(err, "X.Name: Fn::Join is not supported locally");
    }

    #[test]
    fn unknown_references_are_errors_not_guesses() {
        let r = Resolver::default();
        let v: Value = serde_norway::from_str("!Ref Missing").unwrap();
        assert!(r.resolve(&v, "X").is_err());
    }

    #[test]
    fn reads_the_real_template() {
        let t = Template::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml")).unwrap();
        let r = resolver(&t);
        assert_eq!(t.tables(&r).unwrap().len(), 5);
        assert_eq!(
            t.queues(&r).unwrap().len(),
            4,
            "events and alerts, each with a DLQ"
        );
        assert_eq!(t.secrets(&r).unwrap().len(), 3);
        let binaries: Vec<_> = t
            .functions()
            .unwrap()
            .into_iter()
            .map(|f| f.binary)
            .collect();
        assert_eq!(
            binaries,
            [
                "prices",
                "price-fetch",
                "chat-stream",
                "ingest",
                "rollup",
                "usage"
            ]
        );
    }
}
