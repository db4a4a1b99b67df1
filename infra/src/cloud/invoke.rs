//! Calls a function through cargo-lambda's emulation of Lambda's Invoke API
//! (`POST /2015-03-31/functions/{name}/invocations`), as AWS's event sources do.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The function ran and returned an error (or its payload did not parse).
    #[error("function error {error_type}: {message}")]
    Function { error_type: String, message: String },
    /// The invoke endpoint could not be reached or answered oddly.
    #[error("invoke failed: {0}")]
    Transport(String),
}

/// Something that can invoke a function with a JSON event: cargo-lambda in
/// `make dev`, a closure in tests.
pub trait Invoke {
    fn invoke(
        &self,
        function: &str,
        payload: &Value,
    ) -> impl Future<Output = Result<Value, InvokeError>> + Send;
}

/// The cargo-lambda invoke endpoint, e.g. `http://127.0.0.1:9000`.
#[derive(Debug, Clone)]
pub struct LambdaInvoker {
    http: reqwest::Client,
    base_url: String,
}

impl LambdaInvoker {
    /// `timeout` bounds one invocation, so a hung function cannot stall an
    /// event source forever (on AWS, the function's own timeout does that).
    pub fn new(base_url: &str, timeout: std::time::Duration) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }
}

impl Invoke for LambdaInvoker {
    async fn invoke(&self, function: &str, payload: &Value) -> Result<Value, InvokeError> {
        let url = format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.base_url
        );
        let response = self
            .http
            .post(&url)
            .json(payload)
            .send()
            .await
            .map_err(|e| InvokeError::Transport(format!("{url}: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| InvokeError::Transport(e.to_string()))?;
        let json: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|_| {
                InvokeError::Transport(format!("{status}: {}", String::from_utf8_lossy(&body)))
            })?
        };
        if let Some(error_type) = json.get("errorType").and_then(Value::as_str) {
            return Err(InvokeError::Function {
                error_type: error_type.to_owned(),
                message: json
                    .get("errorMessage")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        if !status.is_success() {
            return Err(InvokeError::Transport(format!("{status}: {json}")));
        }
        Ok(json)
    }
}
