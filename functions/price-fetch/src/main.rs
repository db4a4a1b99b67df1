use lambda_runtime::service_fn;
use shared::config::Env;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    let config = price_fetch::Config::from_env(&Env::from_process())?;
    tracing::info!(?config, "cold start");
    let aws = shared::aws::sdk_config().await;
    let fetcher = price_fetch::fetcher(&config, &aws);
    lambda_runtime::run(service_fn(|event| price_fetch::handle(&fetcher, event))).await
}
