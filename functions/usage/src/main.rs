fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::start(usage::Config::from_env, |config, aws| {
        lambda_http::run_concurrent(shared::lambda::buffered(usage::app(&config, &aws)))
    })
}
