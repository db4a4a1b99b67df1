//! docs/openapi.yaml and the routers agree: every route a function's router
//! declares is in the spec under that function's tag, every operation in the
//! spec is served (the router answers it, not its 404/405 fallback), and
//! nothing else is in either.

use std::collections::BTreeSet;

use http::StatusCode;
use serde_norway::Value;

type Route = (String, String, String); // (function, METHOD, path)

fn spec() -> Value {
    let text = std::fs::read_to_string(support::root().join("docs/openapi.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// Operations of the spec, once per function that serves them (its tags).
fn spec_routes(spec: &Value) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        for (method, operation) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if !["get", "post", "put", "patch", "delete"].contains(&method) {
                continue;
            }
            for tag in operation["tags"].as_sequence().unwrap() {
                routes.insert((
                    tag.as_str().unwrap().to_owned(),
                    method.to_uppercase(),
                    path.as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    routes
}

/// The text between the parenthesis that opens at `source[open]` and its match.
fn parenthesised(source: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in source[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &source[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses")
}

/// Routes declared in each function's sources: `.route("/path", get(..).post(..))`,
/// and `/health` where the function merges its health checks.
fn code_routes() -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(support::root().join("functions")).unwrap() {
        let dir = entry.unwrap().path();
        let function = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(dir.join("src")).unwrap() {
            let source = std::fs::read_to_string(file.unwrap().path()).unwrap();
            if source.contains("health.route()") {
                routes.insert((function.clone(), "GET".to_owned(), "/health".to_owned()));
            }
            for (at, _) in source.match_indices(".route(") {
                let args = parenthesised(&source, at + ".route".len());
                let Some(path) = args.split('"').nth(1).map(str::to_owned) else {
                    continue; // `health.route()`, counted above
                };
                for method in ["get", "post", "put", "patch", "delete"] {
                    if args.contains(&format!("{method}(")) {
                        routes.insert((function.clone(), method.to_uppercase(), path.clone()));
                    }
                }
            }
        }
    }
    routes
}

#[test]
fn the_spec_lists_exactly_the_routes_the_routers_declare() {
    let spec = spec_routes(&spec());
    let code = code_routes();
    let missing: Vec<_> = code.difference(&spec).collect();
    let extra: Vec<_> = spec.difference(&code).collect();
    assert!(
        missing.is_empty(),
        "served but not in docs/openapi.yaml: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "in docs/openapi.yaml but not served: {extra:?}"
    );
    assert!(spec.len() >= 20, "{spec:?}");
}

#[tokio::test]
async fn every_operation_in_the_spec_is_answered_by_its_router() {
    let stack = support::stack().await;
    let apps = support::http_apps(&stack).await;
    for (function, method, path) in spec_routes(&spec()) {
        let app = &apps.iter().find(|(name, _)| *name == function).unwrap().1;
        let concrete = path
            .replace("{provider}", "gold-api.com")
            .replace("{id}", "ten_00000000000000000000000000000000")
            .replace("{tenant}", "ten_00000000000000000000000000000000");
        let (status, _, body) =
            support::send(app, support::request(&method, &concrete, None, None)).await;
        let fallback = (status == StatusCode::NOT_FOUND
            && body["detail"] == "no route matches this path")
            || status == StatusCode::METHOD_NOT_ALLOWED;
        assert!(
            !fallback,
            "{function}: {method} {path} is not routed ({status})"
        );
    }
}
