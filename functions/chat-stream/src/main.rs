fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::start(chat_stream::Config::from_env, |config, aws| async move {
        let app = chat_stream::app(&config, &aws);
        // The runtime returns only when a call to the Runtime API fails (seen
        // locally: cargo-lambda closing a kept-alive connection mid-stream).
        // Polling again keeps the instance serving instead of exiting with it.
        loop {
            if let Err(error) =
                lambda_http::run_with_streaming_response_concurrent(app.clone()).await
            {
                tracing::error!(%error, "Runtime API call failed; polling again");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    })
}
