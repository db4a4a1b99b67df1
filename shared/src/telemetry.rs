//! Logs and metrics.
//!
//! Logs are JSON lines (CloudWatch Logs Insights can query every field).
//! Metrics use CloudWatch Embedded Metric Format: a specially shaped JSON log
//! line that CloudWatch turns into metrics asynchronously, so emitting one
//! costs a `println!`, not an API call on the request path.

use serde_json::{Map, Value, json};
use tracing_subscriber::EnvFilter;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `work` as the handling of request `id`, so problems and log lines
/// inside it can name the request.
pub async fn with_request_id<F: Future>(id: String, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// The id of the request being handled, inside [`with_request_id`].
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Where lambda_runtime opens its span around every invocation. No line
/// prints span fields (the request id is a field of its own), so that span
/// is only bookkeeping on every invocation: it is turned off.
const INVOCATION_SPAN: &str = "lambda_runtime::layers::trace=off";

/// Installs the JSON log subscriber; level from `RUST_LOG` (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(INVOCATION_SPAN.parse().expect("a valid directive"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .init();
}

/// The namespace when `METRICS_NAMESPACE` is unset (tests, tools).
pub const DEFAULT_NAMESPACE: &str = "Ingot";

/// `METRICS_NAMESPACE` (the template sets `Ingot/<stack>`, so stages never
/// mix their metrics), read once.
pub fn namespace() -> &'static str {
    static NAMESPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAMESPACE.get_or_init(|| {
        std::env::var("METRICS_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricUnit {
    Count,
    Milliseconds,
    /// A plain number, e.g. a cost in USD.
    None,
}

impl MetricUnit {
    fn as_str(self) -> &'static str {
        match self {
            MetricUnit::Count => "Count",
            MetricUnit::Milliseconds => "Milliseconds",
            MetricUnit::None => "None",
        }
    }
}

/// One EMF record: a set of dimensions and the metric values measured under them.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    dimensions: Vec<(&'static str, String)>,
    values: Vec<(&'static str, MetricUnit, f64)>,
    properties: Vec<(&'static str, Value)>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dimension(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.dimensions.push((name, value.into()));
        self
    }

    pub fn value(mut self, name: &'static str, unit: MetricUnit, value: f64) -> Self {
        self.values.push((name, unit, value));
        self
    }

    /// A field logged with the record but not a metric (EMF keeps it as a
    /// log field): the record doubles as the request's log line, one write
    /// instead of two.
    pub fn property(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.properties.push((name, value.into()));
        self
    }

    /// The EMF document, timestamped `timestamp_ms` (Unix epoch milliseconds).
    pub fn render(self, timestamp_ms: i64) -> Value {
        let mut root = Map::new();
        let dimension_names: Vec<_> = self.dimensions.iter().map(|(n, _)| *n).collect();
        for (name, value) in self.dimensions {
            root.insert(name.to_owned(), Value::String(value));
        }
        for (name, value) in self.properties {
            root.insert(name.to_owned(), value);
        }
        let metrics: Vec<_> = self
            .values
            .iter()
            .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
            .collect();
        for (name, _, value) in self.values {
            root.insert(name.to_owned(), json!(value));
        }
        root.insert(
            "_aws".to_owned(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace(),
                    "Dimensions": [dimension_names],
                    "Metrics": metrics,
                }],
            }),
        );
        Value::Object(root)
    }

    /// Writes the record to stdout, where the Lambda log agent picks it up.
    /// EMF must be the whole log line, so it bypasses the tracing formatter.
    pub fn emit(self) {
        if !self.values.is_empty() {
            println!("{}", self.render(chrono::Utc::now().timestamp_millis()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_embedded_metric_format() {
        let doc = Metrics::new()
            .dimension("Function", "rollup")
            .value("MessagesReceived", MetricUnit::Count, 3.0)
            .value("BatchLatency", MetricUnit::Milliseconds, 12.5)
            .property("tenant", "t_1")
            .render(1_700_000_000_000);
        assert_eq!(
            doc,
            json!({
                "Function": "rollup",
                "tenant": "t_1",
                "MessagesReceived": 3.0,
                "BatchLatency": 12.5,
                "_aws": {
                    "Timestamp": 1_700_000_000_000_i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "Ingot",
                        "Dimensions": [["Function"]],
                        "Metrics": [
                            {"Name": "MessagesReceived", "Unit": "Count"},
                            {"Name": "BatchLatency", "Unit": "Milliseconds"},
                        ],
                    }],
                },
            })
        );
    }
}
