fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::start(ingest::Config::from_env, |config, aws| {
        lambda_http::run_concurrent(shared::lambda::buffered(ingest::app(&config, &aws)))
    })
}
