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
    proxy::serve(listener, move |request| {
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
