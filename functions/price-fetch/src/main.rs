use std::sync::Arc;

use lambda_runtime::service_fn;

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::start(price_fetch::Config::from_env, |config, aws| {
        let fetch = Arc::new(price_fetch::fetcher(&config, &aws));
        lambda_runtime::run_concurrent(service_fn(move |event| {
            let fetch = fetch.clone();
            async move { price_fetch::handle(&fetch, event).await }
        }))
    })
}
