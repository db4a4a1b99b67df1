//! `GET /dashboard`: one self-contained HTML page (no external assets) with
//! a bar per tenant, red from 80% of quota, refreshed every 5 s from
//! `GET /admin/usage`. Its inline script and style are allowed by hash in
//! the Content-Security-Policy, so nothing else can run on the page.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("../assets/dashboard.html");

fn hash_of(tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = PAGE.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = PAGE[start..].find(&close).map_or(start, |i| start + i);
    let digest = Sha256::digest(&PAGE.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

static POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
        hash_of("script"),
        hash_of("style")
    );
    HeaderValue::from_str(&policy).expect("hashes are header-safe")
});

pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, POLICY.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_allows_exactly_the_inline_script_and_style() {
        let policy = POLICY.to_str().unwrap();
        assert!(policy.contains("script-src 'sha256-"));
        assert!(policy.contains("style-src 'sha256-"));
        assert!(!policy.contains("unsafe-inline"));
        assert_ne!(hash_of("script"), hash_of("style"));
    }
}
