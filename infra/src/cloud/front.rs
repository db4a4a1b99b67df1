//! `make dev`'s front door on the Lambda port (9000): every request passes
//! to cargo-lambda, which listens on a private port, with at most
//! [`IN_FLIGHT`] per function at once; the rest wait here, in arrival order.
//!
//! Why: cargo-lambda 1.9.2 queues each function's invocations in a channel
//! of 100, and while it waits for room it holds the lock every function's
//! queue sits behind (`RequestCache::upsert`). The 101st waiting request of
//! one function therefore deadlocks all of them: under a burst (the load
//! test's first second, while instances start) `make dev` stopped answering
//! for good. Holding requests here keeps its queues short. Latency measured
//! through this door includes the wait, as it would behind Lambda's own
//! throttling.
//!
//! Header values that are not UTF-8 are read as ISO-8859-1 (HTTP's own
//! charset for such bytes) and passed on as UTF-8: a Lambda event is JSON,
//! and cargo-lambda answers its own bare 500 to a value it cannot put in
//! one, before any function runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::cloud::proxy::{self, Forwarder};

/// Requests in flight per function, well under cargo-lambda's 100.
pub const IN_FLIGHT: usize = 64;

/// Serves the front door on `listener`, passing requests to `upstream`.
pub async fn serve(listener: tokio::net::TcpListener, upstream: &str) {
    let forwarder = Arc::new(Forwarder::new(upstream));
    let gates: Arc<Mutex<HashMap<String, Arc<Semaphore>>>> = Arc::default();
    proxy::serve(listener, move |mut request| {
        latin1_to_utf8(request.headers_mut());
        let forwarder = forwarder.clone();
        let gate = function_of(request.uri().path()).map(|function| {
            gates
                .lock()
                .expect("gates")
                .entry(function.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(IN_FLIGHT)))
                .clone()
        });
        // Its own task, holding the permit until the answer's head arrives
        // (by then cargo-lambda has handed the invocation to an instance; a
        // stream may go on), even if the client hangs up first: cargo-lambda
        // keeps a request it has queued whether or not anyone still waits.
        let forwarding = tokio::spawn(async move {
            let _permit = match gate {
                Some(gate) => Some(gate.acquire_owned().await),
                None => None,
            };
            forwarder.forward(request).await
        });
        async move {
            forwarding
                .await
                .unwrap_or_else(|e| proxy::status(502, &format!("front door: {e}")))
        }
    })
    .await;
}

/// Rewrites every header value that is not UTF-8 from ISO-8859-1 to UTF-8.
fn latin1_to_utf8(headers: &mut hyper::HeaderMap) {
    for value in headers.values_mut() {
        if std::str::from_utf8(value.as_bytes()).is_err() {
            let text: String = value.as_bytes().iter().map(|&b| char::from(b)).collect();
            if let Ok(utf8) = hyper::header::HeaderValue::from_str(&text) {
                *value = utf8;
            }
        }
    }
}

/// The function a request is for: a function URL or an Invoke API call.
fn function_of(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/lambda-url/")
        .or_else(|| path.strip_prefix("/2015-03-31/functions/"))?;
    rest.split('/').next().filter(|f| !f.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_that_are_not_utf8_are_read_as_latin1() {
        let mut headers = hyper::HeaderMap::new();
        let latin1 = hyper::header::HeaderValue::from_bytes(b"caf\xe9").unwrap();
        headers.insert("x-latin1", latin1);
        headers.insert("x-ascii", hyper::header::HeaderValue::from_static("plain"));
        latin1_to_utf8(&mut headers);
        assert_eq!(
            headers["x-latin1"].to_str().ok(),
            None,
            "non-ASCII is not to_str()"
        );
        assert_eq!(
            std::str::from_utf8(headers["x-latin1"].as_bytes()),
            Ok("café")
        );
        assert_eq!(headers["x-ascii"], "plain");
    }

    #[test]
    fn requests_are_gated_by_the_function_they_are_for() {
        assert_eq!(function_of("/lambda-url/ingest/events"), Some("ingest"));
        assert_eq!(function_of("/lambda-url/usage"), Some("usage"));
        assert_eq!(
            function_of("/2015-03-31/functions/rollup/invocations"),
            Some("rollup")
        );
        assert_eq!(function_of("/lambda-url/"), None);
        assert_eq!(
            function_of("/.rt/ingest/2018-06-01/runtime/invocation/next"),
            None
        );
    }
}
