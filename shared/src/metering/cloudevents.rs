//! Usage events as CloudEvents 1.0 JSON, the format OpenMeter ingests:
//! `application/cloudevents+json` (one event) or
//! `application/cloudevents-batch+json` (an array), beside Ingot's own.
//!
//! The mapping (README, "CloudEvents"):
//! - `type` is the feature, `data.tokens` the token count, `time` the
//!   timestamp (the receive time if absent);
//! - every other `data` member, and `subject`, become properties;
//! - (`source`, `id`) is the event's identity: the event id is derived from
//!   both, so a resend from the same source is counted once, and two
//!   sources may reuse an id;
//! - extension attributes are allowed and ignored; `data_base64` is refused.
//!
//! Each event is then checked like any other, and a bad one is named by its
//! index with the CloudEvents field at fault.

use serde_json::{Map, Value};

use super::ingest::{IngestError, parse_all, parse_event};
use super::types::{EventId, UsageEvent};

/// The content type of one event.
pub const SINGLE: &str = "application/cloudevents+json";
/// The content type of an array of events.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Ingot's field → the CloudEvents field it comes from, for messages.
const FIELD_NAMES: [(&str, &str); 4] = [
    ("feature", "type"),
    ("tokens", "data.tokens"),
    ("timestamp", "time"),
    ("properties", "data"),
];

/// Whether `content_type` (a `Content-Type` header) is a CloudEvents JSON
/// type, and if so whether it is the batch one.
pub fn mode(content_type: &str) -> Option<bool> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        SINGLE => Some(false),
        BATCH => Some(true),
        _ => None,
    }
}

/// Parses a CloudEvents body (`batch`: an array) into usage events.
pub fn parse(
    value: Value,
    batch: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<UsageEvent>, IngestError> {
    let raw = match (batch, value) {
        (false, event @ Value::Object(_)) => vec![event],
        (true, Value::Array(events)) => events,
        (false, _) => {
            return Err(IngestError::Shape(format!(
                "a {SINGLE} body is one CloudEvent object"
            )));
        }
        (true, _) => {
            return Err(IngestError::Shape(format!(
                "a {BATCH} body is an array of CloudEvent objects"
            )));
        }
    };
    parse_all(raw, |_, value| event(value, now))
}

/// One CloudEvent as a usage event, or every reason it is not one.
fn event(value: Value, now: chrono::DateTime<chrono::Utc>) -> Result<UsageEvent, Vec<String>> {
    let Value::Object(mut attributes) = value else {
        return Err(vec!["a CloudEvent must be a JSON object".to_owned()]);
    };
    let mut reasons = Vec::new();
    let mut required = |name: &str| match attributes.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::String(_)) => {
            reasons.push(format!("{name} must not be empty"));
            None
        }
        None => {
            reasons.push(format!("{name} is required"));
            None
        }
        Some(_) => {
            reasons.push(format!("{name} must be a string"));
            None
        }
    };
    let specversion = required("specversion");
    let id = required("id");
    let source = required("source");
    let kind = required("type");
    if specversion.as_deref().is_some_and(|v| v != "1.0") {
        reasons.push("specversion must be \"1.0\"".to_owned());
    }
    if attributes
        .remove("datacontenttype")
        .is_some_and(|t| !t.as_str().is_some_and(is_json))
    {
        reasons.push("datacontenttype must be application/json".to_owned());
    }
    if attributes.contains_key("data_base64") {
        reasons.push("data_base64 is not supported: send data as JSON".to_owned());
    }
    let mut properties = Map::new();
    match attributes.remove("subject") {
        None | Some(Value::Null) => {}
        Some(subject @ Value::String(_)) => {
            properties.insert("subject".to_owned(), subject);
        }
        Some(_) => reasons.push("subject must be a string".to_owned()),
    }
    let tokens = match attributes.remove("data") {
        Some(Value::Object(mut data)) => {
            let tokens = data.remove("tokens");
            if tokens.is_none() {
                reasons.push("data.tokens is required".to_owned());
            }
            properties.extend(data);
            tokens
        }
        None => {
            reasons.push("data is required: an object with \"tokens\"".to_owned());
            None
        }
        Some(_) => {
            reasons.push("data must be an object with \"tokens\"".to_owned());
            None
        }
    };
    let (Some(id), Some(source), Some(kind), Some(tokens)) = (id, source, kind, tokens) else {
        return Err(reasons);
    };
    if !reasons.is_empty() {
        return Err(reasons);
    }
    let mut plain = Map::new();
    plain.insert("feature".to_owned(), Value::String(kind));
    plain.insert("tokens".to_owned(), tokens);
    if let Some(time) = attributes.remove("time") {
        plain.insert("timestamp".to_owned(), time);
    }
    plain.insert("properties".to_owned(), Value::Object(properties));
    let id = EventId::from_cloudevent(&source, &id);
    parse_event(Value::Object(plain), || id, now).map_err(|reasons| {
        reasons
            .into_iter()
            .map(|reason| {
                FIELD_NAMES
                    .iter()
                    .find_map(|(ours, theirs)| {
                        reason
                            .strip_prefix(ours)
                            .map(|rest| format!("{theirs}{rest}"))
                    })
                    .unwrap_or(reason)
            })
            .collect()
    })
}

/// Whether a `datacontenttype` says `data` is JSON.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;

    fn now() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap()
    }

    fn cloudevent() -> Value {
        json!({"specversion": "1.0", "id": "e-1", "source": "/billing/app", "type": "chat",
               "subject": "customer-7", "time": "2026-11-22T09:59:00Z",
               "data": {"tokens": 120, "model": "small"}, "traceparent": "00-ab-cd-01"})
    }

    #[test]
    fn content_types_pick_the_mode() {
        assert_eq!(
            mode("application/cloudevents+json; charset=utf-8"),
            Some(false)
        );
        assert_eq!(mode("Application/CloudEvents-Batch+JSON"), Some(true));
        assert_eq!(mode("application/json"), None);
    }

    #[test]
    fn a_cloudevent_maps_to_a_usage_event() {
        let events = parse(cloudevent(), false, now()).unwrap();
        let event = &events[0];
        assert_eq!(event.feature.as_str(), "chat");
        assert_eq!(event.tokens.get(), 120);
        assert_eq!(
            event.timestamp,
            Utc.with_ymd_and_hms(2026, 11, 22, 9, 59, 0).unwrap()
        );
        assert_eq!(event.properties["subject"], "customer-7");
        assert_eq!(event.properties["model"], "small");
        assert_eq!(event.id, EventId::from_cloudevent("/billing/app", "e-1"));
    }

    #[test]
    fn identity_is_source_and_id() {
        let mut other_source = cloudevent();
        other_source["source"] = json!("/other");
        let batch = json!([cloudevent(), cloudevent(), other_source]);
        let events = parse(batch, true, now()).unwrap();
        assert_eq!(events[0].id, events[1].id);
        assert_ne!(events[0].id, events[2].id);
    }

    #[test]
    fn each_bad_cloudevent_is_named_by_index_and_field() {
        let mut cases = Vec::new();
        for (field, value, reason) in [
            ("specversion", json!("0.3"), "specversion must be \"1.0\""),
            ("id", json!(""), "id must not be empty"),
            ("source", Value::Null, "source must be a string"),
            ("type", json!("has space"), "type may only contain"),
            ("data", json!({"model": "x"}), "data.tokens is required"),
            ("data", json!({"tokens": 0}), "data.tokens must be"),
            ("data", json!(7), "data must be an object"),
            ("time", json!("yesterday"), "time must be RFC 3339"),
            (
                "datacontenttype",
                json!("text/plain"),
                "datacontenttype must be application/json",
            ),
            ("data_base64", json!("AAAA"), "data_base64 is not supported"),
        ] {
            let mut event = cloudevent();
            event[field] = value;
            cases.push((event, reason));
        }
        let (events, reasons): (Vec<Value>, Vec<&str>) = cases.into_iter().unzip();
        let Err(IngestError::InvalidEvents(problems)) = parse(Value::Array(events), true, now())
        else {
            panic!("expected invalid events");
        };
        assert_eq!(problems.len(), reasons.len());
        for (problem, reason) in problems.iter().zip(reasons) {
            assert!(
                problem.reason.contains(reason),
                "{problem:?} should say {reason}"
            );
        }
        let mut missing = cloudevent();
        missing.as_object_mut().unwrap().remove("type");
        let Err(IngestError::InvalidEvents(problems)) = parse(missing, false, now()) else {
            panic!("expected invalid events");
        };
        assert_eq!(problems[0].reason, "type is required");
    }

    #[test]
    fn the_body_shape_must_match_the_content_type() {
        assert!(matches!(
            parse(json!([cloudevent()]), false, now()),
            Err(IngestError::Shape(_))
        ));
        assert!(matches!(
            parse(cloudevent(), true, now()),
            Err(IngestError::Shape(_))
        ));
        assert!(matches!(
            parse(json!([]), true, now()),
            Err(IngestError::Shape(_))
        ));
    }
}
