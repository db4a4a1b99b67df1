//! The dashboard, in headless Chromium: tenants are created and use tokens
//! through the real ingest and rollup, the page is loaded from the real
//! usage function, and the rendered bars and their colours are checked.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::metering::{Fixture, drain, fixture, post_events, pump, tenant};

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// The page's DOM after its scripts ran, as headless Chromium renders it.
async fn rendered(url: &str) -> String {
    let profile = std::env::temp_dir().join(support::unique("chromium-profile"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let run = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finished within 90 s")
        .unwrap_or_else(|e| panic!("cannot run {chromium} ({e}); `make test` installs it"));
    let _ = std::fs::remove_dir_all(profile);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `(bar class, width)` of the tenant's row in the dumped DOM.
fn bar_of<'a>(dom: &'a str, tenant: &str) -> (&'a str, &'a str) {
    let row = &dom[dom
        .find(&format!("data-tenant=\"{tenant}\""))
        .expect("a row per tenant")..];
    let bar = &row[row.find("class=\"bar").expect("a bar")..];
    let class = bar["class=\"".len()..].split('"').next().unwrap();
    let width = bar
        .split("width: ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    (class, width)
}

async fn use_tokens(f: &Fixture, key: &str, tokens: u64) {
    let (status, _) = post_events(f, key, &json!({"feature": "chat", "tokens": tokens})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn bars_show_each_tenant_and_turn_red_from_80_percent() {
    let f = fixture().await;
    let (calm, calm_key) = tenant(&f, 100, 1).await;
    let (close, close_key) = tenant(&f, 100, 1).await;
    let (over, over_key) = tenant(&f, 100, 1).await;
    use_tokens(&f, &calm_key, 50).await;
    use_tokens(&f, &close_key, 80).await;
    use_tokens(&f, &over_key, 130).await;
    drain(&pump(&f.stack).await).await;

    let base = serve(f.usage.clone()).await;
    let dom = rendered(&format!("{base}/dashboard#token={}", f.admin)).await;

    assert_eq!(bar_of(&dom, &calm), ("bar", "50%"));
    assert_eq!(bar_of(&dom, &close), ("bar alert", "80%"));
    assert_eq!(
        bar_of(&dom, &over),
        ("bar alert", "100%"),
        "capped at the full width"
    );
    assert!(dom.contains("130 / 100 tokens (130%)"));
    assert!(dom.contains("3 tenants, updated"));
    assert!(
        dom.contains("<form id=\"login\" hidden=\"\">"),
        "no login needed with a token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_the_page_asks_for_one() {
    let f = fixture().await;
    let base = serve(f.usage.clone()).await;
    let dom = rendered(&format!("{base}/dashboard")).await;
    assert!(dom.contains("<form id=\"login\">"), "{dom}");
    assert!(dom.contains("Enter the admin token"));

    let dom = rendered(&format!("{base}/dashboard#token=wrong")).await;
    assert!(dom.contains("That token was not accepted."));
}
