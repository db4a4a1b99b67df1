//! The local EventBridge Scheduler: invokes a function on the template's
//! `rate(...)` expression with the template's `Input`, filling in the
//! Scheduler context attributes as AWS does.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::cloud::invoke::{Invoke, InvokeError};
use crate::cloud::template::ScheduleSource;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {0:?} is not supported locally (only rate(N unit)); trigger it by hand")]
    Unsupported(String),
    #[error("schedule input is not JSON after substitution: {0}")]
    Input(String),
}

/// The period of `rate(N minute|minutes|hour|hours|day|days)`.
pub fn period(expression: &str) -> Result<Duration, ScheduleError> {
    let unsupported = || ScheduleError::Unsupported(expression.to_owned());
    let inner = expression
        .trim()
        .strip_prefix("rate(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(unsupported)?;
    let (count, unit) = inner.trim().split_once(' ').ok_or_else(unsupported)?;
    let count: u64 = count.parse().map_err(|_| unsupported())?;
    let unit_secs = match (count, unit.trim()) {
        (1, "minute") | (2.., "minutes") => 60,
        (1, "hour") | (2.., "hours") => 3600,
        (1, "day") | (2.., "days") => 86_400,
        _ => return Err(unsupported()),
    };
    Ok(Duration::from_secs(count * unit_secs))
}

/// The event Scheduler sends for a run at `scheduled_time`.
pub fn render_input(
    source: &ScheduleSource,
    schedule_arn: &str,
    scheduled_time: DateTime<Utc>,
) -> Result<Value, ScheduleError> {
    let Some(template) = &source.input else {
        return Ok(Value::Object(Default::default()));
    };
    let text = template
        .replace(
            "<aws.scheduler.scheduled-time>",
            &scheduled_time.to_rfc3339_opts(SecondsFormat::Secs, true),
        )
        .replace(
            "<aws.scheduler.execution-id>",
            &uuid::Uuid::new_v4().to_string(),
        )
        .replace("<aws.scheduler.schedule-arn>", schedule_arn)
        .replace("<aws.scheduler.attempt-number>", "1");
    serde_json::from_str(&text).map_err(|e| ScheduleError::Input(e.to_string()))
}

/// Invokes `function` now with the schedule's input.
pub async fn fire<I: Invoke>(
    invoker: &I,
    function: &str,
    region: &str,
    source: &ScheduleSource,
) -> Result<Value, InvokeError> {
    let arn = format!(
        "arn:aws:scheduler:{region}:{}:schedule/default/{function}",
        crate::cloud::bootstrap::ACCOUNT_ID
    );
    let payload = render_input(source, &arn, Utc::now())
        .map_err(|e| InvokeError::Transport(e.to_string()))?;
    invoker.invoke(function, &payload).await
}

/// Fires `function`'s schedule in the template at `root` now, through the
/// Lambda endpoint at `endpoint` (`make trigger`); its answer.
pub async fn trigger(
    root: &std::path::Path,
    endpoint: &str,
    region: &str,
    function: &str,
) -> Result<Value, String> {
    let template =
        crate::cloud::template::Template::load(&root.join("template.yaml").to_string_lossy())
            .map_err(|e| e.to_string())?;
    let source = template
        .functions()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|f| f.binary == function)
        .flat_map(|f| f.triggers)
        .find_map(|t| match t {
            crate::cloud::template::Trigger::Schedule(source) => Some(source),
            _ => None,
        })
        .ok_or_else(|| format!("{function} has no schedule in template.yaml"))?;
    let invoker = crate::cloud::invoke::LambdaInvoker::new(endpoint, Duration::from_secs(900));
    fire(&invoker, function, region, &source)
        .await
        .map_err(|e| e.to_string())
}

/// Fires at start (so a fresh `make dev` has data at once), then every period.
pub async fn run<I: Invoke>(
    invoker: I,
    function: String,
    region: String,
    source: ScheduleSource,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        match fire(&invoker, &function, &region, &source).await {
            Ok(result) => tracing::info!(function, %result, "scheduled invocation"),
            Err(error) => tracing::warn!(function, %error, "scheduled invocation failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rate_expressions() {
        assert_eq!(period("rate(5 minutes)"), Ok(Duration::from_secs(300)));
        assert_eq!(period("rate(1 hour)"), Ok(Duration::from_secs(3600)));
        assert_eq!(period("rate(2 days)"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        for bad in [
            "cron(0 12 * * ? *)",
            "rate(1 minutes)",
            "rate(5 minute)",
            "rate(x minutes)",
            "at(2026-01-01T00:00:00)",
        ] {
            assert!(period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fills_in_scheduler_context_attributes() {
        let source = ScheduleSource {
            expression: "rate(5 minutes)".into(),
            input: Some(
                r#"{"scheduled_time": "<aws.scheduler.scheduled-time>", "execution_id": "<aws.scheduler.execution-id>"}"#.into(),
            ),
        };
        let at = DateTime::parse_from_rfc3339("2026-11-22T10:05:00Z")
            .unwrap()
            .to_utc();
        let input = render_input(&source, "arn", at).unwrap();
        assert_eq!(input["scheduled_time"], "2026-11-22T10:05:00Z");
        assert_eq!(input["execution_id"].as_str().unwrap().len(), 36);
    }

    #[test]
    fn no_input_sends_an_empty_object() {
        let source = ScheduleSource {
            expression: "rate(1 hour)".into(),
            input: None,
        };
        assert_eq!(
            render_input(&source, "arn", Utc::now()).unwrap(),
            serde_json::json!({})
        );
    }
}
