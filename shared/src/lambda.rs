//! A function's process, as Lambda runs it.
//!
//! Classic Lambda hands an instance one invocation at a time: one thread is
//! all it can use, and the cheapest to start. Lambda Managed Instances set
//! `AWS_LAMBDA_MAX_CONCURRENCY` and hand out that many at once: lambda_runtime's
//! `run_concurrent` family then polls with that many workers, and a worker
//! thread per core lets them use the instance's vCPUs. Every function's state
//! is shared through `Arc`s of `Send + Sync` edges, so both modes run the
//! same code.

use std::convert::Infallible;
use std::future::Future;

use axum::routing::future::RouteFuture;

use crate::config::{ConfigError, Env};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

/// Every function allocates through mimalloc. A warm invocation makes
/// hundreds of small allocations (the event, headers, JSON, the calls), and
/// glibc's malloc and free were ~12% of ingest's CPU; with mimalloc an
/// accepted POST costs ~8% less and a rollup delivery ~11% (docs/perf.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Set by Lambda Managed Instances; lambda_runtime reads it too.
pub const MAX_CONCURRENCY_VAR: &str = "AWS_LAMBDA_MAX_CONCURRENCY";

/// How many invocations a process with this `AWS_LAMBDA_MAX_CONCURRENCY`
/// serves at once (unset or unreadable: one, as lambda_runtime counts it).
pub fn max_concurrency(value: Option<&str>) -> u32 {
    value.and_then(|v| v.parse().ok()).unwrap_or(1).max(1)
}

/// A function's `main`: JSON logs, its configuration from the environment
/// (failing fast with the variable's name), the AWS SDK configuration, then
/// `serve` (the runtime loop), on the runtime its concurrency calls for.
pub fn start<C, S, F>(
    configure: fn(&Env) -> Result<C, ConfigError>,
    serve: S,
) -> Result<(), lambda_http::Error>
where
    C: std::fmt::Debug,
    S: FnOnce(C, aws_config::SdkConfig) -> F,
    F: Future<Output = Result<(), lambda_http::Error>>,
{
    run(async {
        crate::telemetry::init();
        let config = configure(&Env::from_process())?;
        tracing::info!(?config, "cold start");
        let aws = crate::aws::sdk_config().await;
        serve(config, aws).await
    })?
}

/// Runs `main` on the runtime its concurrency calls for.
fn run<F: Future>(main: F) -> std::io::Result<F::Output> {
    let configured = std::env::var(MAX_CONCURRENCY_VAR).ok();
    let mut builder = if max_concurrency(configured.as_deref()) > 1 {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    Ok(builder.enable_all().build()?.block_on(main))
}

/// An axum app as lambda_http's `run_concurrent` takes it: that runtime
/// shares responses between tasks, so each body is collected into a
/// `Full<Bytes>` (`Sync`, unlike axum's). A buffered (non-streamed) Lambda
/// response is collected by lambda_http anyway, so nothing waits longer.
pub fn buffered(
    app: axum::Router,
) -> impl Service<
    lambda_http::Request,
    Response = http::Response<Full<Bytes>>,
    Error = lambda_http::Error,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    ServiceExt::<lambda_http::Request>::map_future(
        app,
        |answer: RouteFuture<Infallible>| async move {
            let (parts, body) = answer.await?.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok(http::Response::from_parts(parts, Full::new(bytes)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_unless_lambda_says_more() {
        assert_eq!(max_concurrency(None), 1);
        assert_eq!(max_concurrency(Some("0")), 1);
        assert_eq!(max_concurrency(Some("eight")), 1);
        assert_eq!(max_concurrency(Some("8")), 8);
    }

    #[tokio::test]
    async fn buffered_answers_as_the_app_does() {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async { (http::StatusCode::CREATED, "made") }),
        );
        let response = buffered(app)
            .oneshot(lambda_http::Request::default())
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::CREATED);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "made");
    }

    #[test]
    fn runs_main_to_completion() {
        assert_eq!(run(async { 42 }).unwrap(), 42);
    }
}
