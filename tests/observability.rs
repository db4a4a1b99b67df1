//! The dashboard and alarms in template.yaml read the metrics the functions
//! really emit: every metric under the stack's `Ingot/...` namespace is
//! written by an EMF record in the code of the function its `Function`
//! dimension names (or, for `Provider`, by price-fetch), and every function
//! has its log group, retention and an error-rate alarm.

use std::collections::{BTreeSet, HashMap};

use serde_norway::Value;

/// `(metric, dimension name, dimension value)` under the Ingot namespace,
/// from every alarm and every dashboard widget.
fn template_metrics(root: &Value) -> BTreeSet<(String, String, String)> {
    let mut found = BTreeSet::new();
    for (_, resource) in root["Resources"].as_mapping().unwrap() {
        let properties = &resource["Properties"];
        match resource["Type"].as_str() {
            Some("AWS::CloudWatch::Alarm") if is_ingot(&properties["Namespace"]) => {
                let dimension = &properties["Dimensions"][0];
                found.insert((
                    properties["MetricName"].as_str().unwrap().to_owned(),
                    dimension["Name"].as_str().unwrap().to_owned(),
                    dimension["Value"].as_str().unwrap().to_owned(),
                ));
            }
            Some("AWS::CloudWatch::Dashboard") => {
                let Value::Tagged(sub) = &properties["DashboardBody"] else {
                    panic!("the dashboard body is a !Sub string");
                };
                let body: serde_json::Value =
                    serde_json::from_str(sub.value.as_str().unwrap()).unwrap();
                for widget in body["widgets"].as_array().unwrap() {
                    for line in widget["properties"]["metrics"].as_array().unwrap() {
                        let line = line.as_array().unwrap();
                        if line[0].as_str().unwrap().starts_with("Ingot/") {
                            found.insert((
                                line[1].as_str().unwrap().to_owned(),
                                line[2].as_str().unwrap().to_owned(),
                                line[3].as_str().unwrap().to_owned(),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    found
}

fn is_ingot(namespace: &Value) -> bool {
    match namespace {
        Value::Tagged(sub) => sub.value.as_str() == Some("Ingot/${AWS::StackName}"),
        _ => false,
    }
}

/// Domain modules whose metrics only one function emits (their rules run
/// there): their sources count as that function's.
const DOMAIN_OF: &[(&str, &str)] = &[("chat-stream", "shared/src/chat")];

/// Metric names in the `.value("Name", ...)` calls of the `.rs` files under `dir`.
fn metric_names(dir: &std::path::Path, names: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            metric_names(&path, names);
            continue;
        }
        let source = std::fs::read_to_string(path).unwrap();
        for part in source.split(".value(").skip(1) {
            let quoted = part.trim_start().strip_prefix('"').unwrap_or_default();
            if let Some((metric, _)) = quoted.split_once('"') {
                names.insert(metric.to_owned());
            }
        }
    }
}

/// Metric names each function emits, from its own sources and its domain's.
fn emitted() -> HashMap<String, BTreeSet<String>> {
    let mut by_function = HashMap::new();
    for entry in std::fs::read_dir(support::root().join("functions")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut names = BTreeSet::new();
        metric_names(&dir.join("src"), &mut names);
        for (_, domain) in DOMAIN_OF.iter().filter(|(f, _)| *f == name) {
            metric_names(&support::root().join(domain), &mut names);
        }
        by_function.insert(name, names);
    }
    by_function
}

#[test]
fn dashboard_and_alarm_metrics_are_the_ones_the_functions_emit() {
    let template = infra::cloud::template::Template::load(
        &support::root().join("template.yaml").to_string_lossy(),
    )
    .unwrap();
    let used = template_metrics(template.root());
    assert!(used.len() >= 10, "{used:?}");
    let emitted = emitted();
    for (metric, dimension, value) in &used {
        let function = match dimension.as_str() {
            "Function" => value.as_str(),
            "Provider" => "price-fetch",
            other => panic!("{metric}: no function emits dimension {other}"),
        };
        assert!(
            emitted[function].contains(metric),
            "{metric} ({dimension}={value}) is read by the template but {function} never emits it"
        );
    }
}

#[test]
fn every_function_has_retention_tracing_and_an_error_alarm() {
    let template = infra::cloud::template::Template::load(
        &support::root().join("template.yaml").to_string_lossy(),
    )
    .unwrap();
    let root = template.root();
    assert_eq!(
        root["Globals"]["Function"]["Tracing"].as_str(),
        Some("Active")
    );
    let resources = root["Resources"].as_mapping().unwrap();
    let by_id = |id: &str| &root["Resources"][id];
    let alarms: Vec<String> = resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .map(|(id, _)| id.as_str().unwrap().to_owned())
        .collect();
    for function in template.functions().unwrap() {
        let resource = by_id(&function.logical_id);
        let Value::Tagged(group) = &resource["Properties"]["LoggingConfig"]["LogGroup"] else {
            panic!("{} has no LoggingConfig.LogGroup !Ref", function.logical_id);
        };
        let group = by_id(group.value.as_str().unwrap());
        assert_eq!(group["Type"].as_str(), Some("AWS::Logs::LogGroup"));
        assert!(!group["Properties"]["RetentionInDays"].is_null());
        let alarm = format!(
            "{}ErrorRateAlarm",
            function.logical_id.trim_end_matches("Function")
        );
        assert!(alarms.contains(&alarm), "no {alarm}");
    }
    for alarm in [
        "DeadLetterQueueAlarm",
        "QueueAgeAlarm",
        "PriceFetchAlarm",
        "ThrottlesAlarm",
    ] {
        assert!(alarms.contains(&alarm.to_owned()), "no {alarm}");
    }
}
