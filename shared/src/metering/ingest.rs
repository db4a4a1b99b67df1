//! `POST /events`: validating a request body and packing the accepted events
//! into as few SQS messages as fit.
//!
//! A request is all or nothing: if any event is invalid, the response lists
//! every bad event by index and nothing is enqueued, so a client never has to
//! work out which half of a batch landed.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::cloudevents;
use super::types::{EventId, Feature, IdempotencyKey, TenantId, Tokens, UsageEvent};
use crate::store::{Outage, StoreError};

pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const MAX_EVENTS: usize = 1000;
pub const MAX_PROPERTIES: usize = 16;
const MAX_PROPERTY_KEY: usize = 64;
const MAX_PROPERTY_STRING: usize = 512;
const MAX_AGE: Duration = Duration::days(35);
const MAX_AHEAD: Duration = Duration::minutes(5);

/// SQS's limit for one message and for one `SendMessageBatch` call.
pub const SQS_MAX_BYTES: usize = 256 * 1024;
/// SQS's limit of entries per `SendMessageBatch` call.
pub const SQS_MAX_BATCH: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventProblem {
    pub index: usize,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    #[error("{0}")]
    Shape(String),
    #[error("{} event(s) are invalid", .0.len())]
    InvalidEvents(Vec<EventProblem>),
    #[error("{0}")]
    IdempotencyKey(String),
}

/// What a client sent to `POST /events`.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    pub body: &'a [u8],
    /// The `Content-Type` header: CloudEvents types pick that format
    /// ([`super::cloudevents`]); anything else is Ingot's own.
    pub content_type: Option<&'a str>,
    /// The `Idempotency-Key` header, as sent.
    pub idempotency_key: Option<&'a [u8]>,
}

/// Parses a submission into its events, in either format.
pub fn parse_submission(
    submission: &Submission<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<UsageEvent>, IngestError> {
    if submission.body.len() > MAX_BODY_BYTES {
        return Err(IngestError::TooLarge);
    }
    let key = submission
        .idempotency_key
        .map(|k| IdempotencyKey::try_from(String::from_utf8_lossy(k).into_owned()))
        .transpose()
        .map_err(|e| IngestError::IdempotencyKey(e.0))?;
    let value: Value = serde_json::from_slice(submission.body)
        .map_err(|e| IngestError::Malformed(e.to_string()))?;
    match submission.content_type.and_then(cloudevents::mode) {
        Some(batch) => cloudevents::parse(value, batch, now),
        None => parse_events(value, key.as_ref(), now),
    }
}

/// Parses one event or `{"events": [...]}`. An event with no id gets one
/// derived from `key` and its index when the request has an
/// `Idempotency-Key`, else a fresh one.
fn parse_events(
    value: Value,
    key: Option<&IdempotencyKey>,
    now: DateTime<Utc>,
) -> Result<Vec<UsageEvent>, IngestError> {
    let raw: Vec<Value> = match value {
        Value::Object(mut object) if object.contains_key("events") => {
            if object.len() > 1 {
                return Err(IngestError::Shape(
                    "a batch body has only the key \"events\"".to_owned(),
                ));
            }
            match object.remove("events") {
                Some(Value::Array(events)) => events,
                _ => return Err(IngestError::Shape("\"events\" must be an array".to_owned())),
            }
        }
        single @ Value::Object(_) => vec![single],
        _ => {
            return Err(IngestError::Shape(
                "the body must be an event object or {\"events\": [...]}".to_owned(),
            ));
        }
    };
    parse_all(raw, |index, value| {
        let fresh = || key.map_or_else(EventId::generate, |key| EventId::derived(key, index));
        parse_event(value, fresh, now)
    })
}

/// Parses each of a request's 1 to [`MAX_EVENTS`] raw events with `parse`
/// (given its index): all of them, or every bad one by index and reason.
pub(super) fn parse_all(
    raw: Vec<Value>,
    mut parse: impl FnMut(usize, Value) -> Result<UsageEvent, Vec<String>>,
) -> Result<Vec<UsageEvent>, IngestError> {
    check_count(raw.len())?;
    let mut events = Vec::with_capacity(raw.len());
    let mut problems = Vec::new();
    for (index, value) in raw.into_iter().enumerate() {
        match parse(index, value) {
            Ok(event) => events.push(event),
            Err(reasons) => problems.push(EventProblem {
                index,
                reason: reasons.join("; "),
            }),
        }
    }
    if problems.is_empty() {
        Ok(events)
    } else {
        Err(IngestError::InvalidEvents(problems))
    }
}

/// A request carries 1 to [`MAX_EVENTS`] events.
fn check_count(events: usize) -> Result<(), IngestError> {
    if events == 0 {
        return Err(IngestError::Shape("no events: send 1 or more".to_owned()));
    }
    if events > MAX_EVENTS {
        return Err(IngestError::Shape(format!(
            "at most {MAX_EVENTS} events per request, got {events}"
        )));
    }
    Ok(())
}

/// One event object, or every reason it is not one (each starting with the
/// field it is about).
pub(super) fn parse_event(
    value: Value,
    fresh: impl FnOnce() -> EventId,
    now: DateTime<Utc>,
) -> Result<UsageEvent, Vec<String>> {
    let Value::Object(mut fields) = value else {
        return Err(vec!["an event must be a JSON object".to_owned()]);
    };
    let mut reasons = Vec::new();
    let mut take = |name: &str| fields.remove(name);

    let id = match take("id") {
        None | Some(Value::Null) => Some(fresh()),
        Some(Value::String(s)) => EventId::try_from(s).map_err(|e| reasons.push(e.0)).ok(),
        Some(_) => {
            reasons.push("id must be a string".to_owned());
            None
        }
    };
    let feature = match take("feature") {
        Some(Value::String(s)) => Feature::try_from(s).map_err(|e| reasons.push(e.0)).ok(),
        None => {
            reasons.push("feature is required".to_owned());
            None
        }
        Some(_) => {
            reasons.push("feature must be a string".to_owned());
            None
        }
    };
    let tokens = match take("tokens") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(t) => Tokens::try_from(t).map_err(|e| reasons.push(e.0)).ok(),
            None => {
                reasons.push(format!(
                    "tokens must be an integer from 1 to {}",
                    Tokens::MAX
                ));
                None
            }
        },
        None => {
            reasons.push("tokens is required".to_owned());
            None
        }
        Some(_) => {
            reasons.push("tokens must be a number".to_owned());
            None
        }
    };
    let timestamp = match take("timestamp") {
        None | Some(Value::Null) => Some(now),
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(&s) {
            Ok(t) if t.to_utc() > now + MAX_AHEAD => {
                reasons.push("timestamp is more than 5 minutes in the future".to_owned());
                None
            }
            Ok(t) if t.to_utc() < now - MAX_AGE => {
                reasons.push("timestamp is more than 35 days in the past".to_owned());
                None
            }
            Ok(t) => Some(t.to_utc()),
            Err(_) => {
                reasons.push("timestamp must be RFC 3339, e.g. 2026-11-22T10:00:00Z".to_owned());
                None
            }
        },
        Some(_) => {
            reasons.push("timestamp must be a string".to_owned());
            None
        }
    };
    let properties = match take("properties") {
        None | Some(Value::Null) => Some(Map::new()),
        Some(Value::Object(map)) => check_properties(&map)
            .map_err(|r| reasons.push(r))
            .ok()
            .map(|()| map),
        Some(_) => {
            reasons.push("properties must be an object".to_owned());
            None
        }
    };
    for unknown in fields.keys() {
        reasons.push(format!("unknown field {unknown:?}"));
    }

    match (id, feature, tokens, timestamp, properties) {
        (Some(id), Some(feature), Some(tokens), Some(timestamp), Some(properties))
            if reasons.is_empty() =>
        {
            Ok(UsageEvent {
                id,
                feature,
                tokens,
                timestamp,
                properties,
            })
        }
        _ => Err(reasons),
    }
}

fn check_properties(map: &Map<String, Value>) -> Result<(), String> {
    if map.len() > MAX_PROPERTIES {
        return Err(format!("properties has more than {MAX_PROPERTIES} keys"));
    }
    for (key, value) in map {
        if key.is_empty() || key.chars().count() > MAX_PROPERTY_KEY {
            return Err(format!(
                "property keys must be 1 to {MAX_PROPERTY_KEY} characters"
            ));
        }
        match value {
            Value::Object(_) | Value::Array(_) => {
                return Err(format!(
                    "property {key:?} must be a string, number, boolean or null"
                ));
            }
            Value::String(s) if s.chars().count() > MAX_PROPERTY_STRING => {
                return Err(format!(
                    "property {key:?} is longer than {MAX_PROPERTY_STRING} characters"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why a request's events were not accepted: none of them were.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Invalid(#[from] IngestError),
    /// The queue did not take them: the client retries with the same ids.
    #[error(transparent)]
    Queue(#[from] StoreError),
}

/// What accepting a request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub ids: Vec<String>,
    pub messages: usize,
    pub queue_requests: usize,
}

/// Accepts `tenant`'s submission whole or not at all: every event valid,
/// and all of them on the queue, before it says so.
pub async fn accept(
    queue: &dyn EventSink,
    tenant: &TenantId,
    submission: &Submission<'_>,
    now: DateTime<Utc>,
) -> Result<Accepted, AcceptError> {
    let events = parse_submission(submission, now)?;
    let bodies = pack(tenant, &events);
    let queue_requests = queue.send(tenant, &bodies).await?;
    Ok(Accepted {
        ids: events.iter().map(|e| e.id.to_string()).collect(),
        messages: bodies.len(),
        queue_requests,
    })
}

/// The events queue: where accepted events wait for the rollup (SQS in
/// production).
#[async_trait::async_trait]
pub trait EventSink: Send + Sync {
    /// Sends every body ([`pack`]ed messages of `tenant`, in order); all are
    /// on the queue when this returns `Ok`, with the number of queue requests
    /// it took.
    async fn send(&self, tenant: &TenantId, bodies: &[String]) -> Result<usize, StoreError>;
}

/// A queue in memory: the double for handler tests. `outage` makes every
/// send fail, as an unreachable queue would.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    sent: std::sync::Mutex<Vec<String>>,
    pub outage: Outage,
}

impl MemoryQueue {
    /// Every message body sent so far, in order.
    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl EventSink for MemoryQueue {
    async fn send(&self, _tenant: &TenantId, bodies: &[String]) -> Result<usize, StoreError> {
        self.outage.check("events queue")?;
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.extend_from_slice(bodies);
        Ok(send_batches(bodies).len())
    }
}

/// Serialises `events` into as few queue message bodies as fit in
/// [`SQS_MAX_BYTES`] each, in order.
pub fn pack(tenant: &TenantId, events: &[UsageEvent]) -> Vec<String> {
    let head = format!("{{\"tenant\":\"{tenant}\",\"events\":[");
    let tail = "]}";
    let mut bodies = Vec::new();
    let mut current = head.clone();
    let mut count = 0;
    for event in events {
        let json = serde_json::to_string(event).expect("events serialise");
        if count > 0 && current.len() + 1 + json.len() + tail.len() > SQS_MAX_BYTES {
            current.push_str(tail);
            bodies.push(std::mem::replace(&mut current, head.clone()));
            count = 0;
        }
        if count > 0 {
            current.push(',');
        }
        current.push_str(&json);
        count += 1;
    }
    if count > 0 {
        current.push_str(tail);
        bodies.push(current);
    }
    bodies
}

/// Groups message bodies into `SendMessageBatch` calls: at most ten entries
/// and [`SQS_MAX_BYTES`] per call.
pub fn send_batches(bodies: &[String]) -> Vec<&[String]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, body) in bodies.iter().enumerate() {
        if i > start && (i - start == SQS_MAX_BATCH || bytes + body.len() > SQS_MAX_BYTES) {
            batches.push(&bodies[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += body.len();
    }
    if start < bodies.len() {
        batches.push(&bodies[start..]);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::types::EventBatch;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn parse(body: Value) -> Result<Vec<UsageEvent>, IngestError> {
        parse_bytes(body.to_string().as_bytes())
    }

    fn parse_bytes(body: &[u8]) -> Result<Vec<UsageEvent>, IngestError> {
        let submission = Submission {
            body,
            content_type: Some("application/json"),
            idempotency_key: None,
        };
        parse_submission(&submission, now())
    }

    fn problems(body: Value) -> Vec<(usize, String)> {
        match parse(body) {
            Err(IngestError::InvalidEvents(p)) => {
                p.into_iter().map(|p| (p.index, p.reason)).collect()
            }
            other => panic!("expected invalid events, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_single_event_and_fills_in_id_and_timestamp() {
        let events = parse(json!({"feature": "chat", "tokens": 42})).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].tokens.get(), 42);
        assert_eq!(events[0].timestamp, now());
        assert!(events[0].id.as_str().starts_with("evt_"));
    }

    #[test]
    fn accepts_a_batch_with_ids_timestamps_and_properties() {
        let events = parse(json!({"events": [
            {"id": "a-1", "feature": "chat", "tokens": 1, "timestamp": "2026-11-22T09:59:00Z"},
            {"id": "a-2", "feature": "search", "tokens": 1_000_000_000_000_u64, "properties": {"model": "x", "n": 2, "ok": true, "none": null}},
        ]}))
        .unwrap();
        assert_eq!(events[0].id.as_str(), "a-1");
        assert_eq!(events[1].properties.len(), 4);
    }

    #[test]
    fn rejects_event_with_negative_zero_fractional_or_huge_tokens() {
        let p = problems(json!({"events": [
            {"feature": "f", "tokens": -1},
            {"feature": "f", "tokens": 0},
            {"feature": "f", "tokens": 1.5},
            {"feature": "f", "tokens": 1_000_000_000_001_u64},
            {"feature": "f", "tokens": "5"},
            {"feature": "f"},
        ]}));
        assert_eq!(
            p.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        assert_eq!(p[4].1, "tokens must be a number");
        assert_eq!(p[5].1, "tokens is required");
    }

    #[test]
    fn rejects_bad_features_ids_and_unknown_fields() {
        let p = problems(json!({"events": [
            {"feature": "has space", "tokens": 1},
            {"tokens": 1},
            {"feature": "ok", "tokens": 1, "id": "x".repeat(129)},
            {"feature": "ok", "tokens": 1, "id": 7},
            {"feature": "ok", "tokens": 1, "token": 1},
            "not an object",
        ]}));
        assert_eq!(p.len(), 6);
        assert_eq!(p[1].1, "feature is required");
        assert_eq!(p[4].1, "unknown field \"token\"");
        assert_eq!(p[5].1, "an event must be a JSON object");
    }

    #[test]
    fn rejects_timestamps_outside_the_window_or_malformed() {
        let p = problems(json!({"events": [
            {"feature": "f", "tokens": 1, "timestamp": "2026-11-22T10:05:01Z"},
            {"feature": "f", "tokens": 1, "timestamp": "2026-10-17T09:59:59Z"},
            {"feature": "f", "tokens": 1, "timestamp": "yesterday"},
            {"feature": "f", "tokens": 1, "timestamp": "2026-11-22T10:05:00Z"},
        ]}));
        assert_eq!(p.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn rejects_nested_or_too_many_properties() {
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!(i))).collect();
        let p = problems(json!({"events": [
            {"feature": "f", "tokens": 1, "properties": {"nested": {"a": 1}}},
            {"feature": "f", "tokens": 1, "properties": many},
            {"feature": "f", "tokens": 1, "properties": [1]},
        ]}));
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn lists_every_bad_event_with_its_index() {
        let p = problems(json!({"events": [
            {"feature": "ok", "tokens": 1},
            {"feature": "ok", "tokens": 0},
            {"feature": "ok", "tokens": 2},
            {"feature": "", "tokens": 1},
        ]}));
        assert_eq!(p.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn rejects_bodies_of_the_wrong_shape() {
        assert!(matches!(
            parse_bytes(b"{not json"),
            Err(IngestError::Malformed(_))
        ));
        assert!(matches!(parse(json!([1, 2])), Err(IngestError::Shape(_))));
        assert!(matches!(
            parse(json!({"events": []})),
            Err(IngestError::Shape(_))
        ));
        assert!(matches!(
            parse(json!({"events": {}})),
            Err(IngestError::Shape(_))
        ));
        assert!(matches!(
            parse(json!({"events": [], "extra": 1})),
            Err(IngestError::Shape(_))
        ));
        let too_many: Vec<Value> = (0..1001)
            .map(|_| json!({"feature": "f", "tokens": 1}))
            .collect();
        assert!(matches!(
            parse(json!({"events": too_many})),
            Err(IngestError::Shape(_))
        ));
        assert_eq!(
            parse_bytes(&vec![b' '; MAX_BODY_BYTES + 1]),
            Err(IngestError::TooLarge)
        );
    }

    #[test]
    fn packs_events_into_as_few_messages_as_fit() {
        let tenant = TenantId::generate();
        let big = "x".repeat(500);
        let events: Vec<UsageEvent> = (0..1000)
            .map(|i| UsageEvent {
                id: EventId::try_from(format!("e{i}")).unwrap(),
                feature: Feature::try_from("f".to_owned()).unwrap(),
                tokens: Tokens::try_from(1).unwrap(),
                timestamp: now(),
                properties: (0..16).map(|k| (format!("k{k}"), json!(big))).collect(),
            })
            .collect();
        let bodies = pack(&tenant, &events);
        assert!(bodies.len() > 1);
        assert!(bodies.iter().all(|b| b.len() <= SQS_MAX_BYTES));
        let unpacked: Vec<UsageEvent> = bodies
            .iter()
            .flat_map(|b| serde_json::from_str::<EventBatch>(b).unwrap().events)
            .collect();
        assert_eq!(unpacked, events);

        // Every message but the last is too full to take one more event.
        let event_len = serde_json::to_string(&events[0]).unwrap().len();
        for body in &bodies[..bodies.len() - 1] {
            assert!(body.len() + 1 + event_len > SQS_MAX_BYTES);
        }
    }

    #[test]
    fn small_requests_are_one_message() {
        let events = parse(
            json!({"events": [{"feature": "a", "tokens": 1}, {"feature": "b", "tokens": 2}]}),
        )
        .unwrap();
        assert_eq!(pack(&TenantId::generate(), &events).len(), 1);
    }

    #[test]
    fn send_batches_respect_count_and_size_limits() {
        let small: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
        let sizes: Vec<usize> = send_batches(&small).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [10, 10, 5]);

        let large: Vec<String> = (0..3).map(|_| "x".repeat(SQS_MAX_BYTES / 2)).collect();
        let sizes: Vec<usize> = send_batches(&large).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 1]);
    }
}
