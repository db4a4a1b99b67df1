use std::sync::Arc;

use lambda_runtime::service_fn;

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::start(rollup::Config::from_env, |config, aws| {
        let rollup = Arc::new(rollup::rollup(&config, &aws));
        lambda_runtime::run_concurrent(service_fn(move |event| {
            let rollup = rollup.clone();
            async move { rollup::handle(&rollup, event).await }
        }))
    })
}
