//! Secrets Manager, as a [`SecretSource`].

use super::describe;
use crate::secrets::{Secret, SecretError, SecretSource};

#[derive(Debug, Clone)]
pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManager {
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl SecretSource for SecretsManager {
    async fn read(&self, id: &str) -> Result<Secret, SecretError> {
        let value = self
            .client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| SecretError {
                id: id.to_owned(),
                message: describe(&e),
            })?;
        Ok(Secret::new(value.secret_string().unwrap_or_default()))
    }
}
