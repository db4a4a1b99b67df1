use shared::config::Env;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init();
    let config = chat_stream::Config::from_env(&Env::from_process())?;
    tracing::info!(?config, "cold start");
    let aws = shared::aws::sdk_config().await;
    lambda_http::run_with_streaming_response(chat_stream::app(&config, &aws)).await
}
