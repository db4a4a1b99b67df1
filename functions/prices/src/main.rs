fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::start(prices::Config::from_env, |config, aws| {
        lambda_http::run_concurrent(shared::lambda::buffered(prices::app(&config, &aws)))
    })
}
