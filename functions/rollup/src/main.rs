use std::sync::Arc;

use lambda_runtime::service_fn;

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::start(rollup::Config::from_env, |config, aws| {
        let consumer = Arc::new(rollup::consumer(&config, &aws));
        lambda_runtime::run_concurrent(service_fn(move |event| {
            let consumer = consumer.clone();
            async move { rollup::handle(&consumer, event).await }
        }))
    })
}
