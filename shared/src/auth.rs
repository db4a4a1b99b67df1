//! Who is calling: the admin (a bearer token from Secrets Manager) or a
//! tenant (a bearer API key). Failures are problem+json with stable codes;
//! a store that cannot answer is a 503, never a guess either way.

use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::http::bearer;
use crate::jwt::{Subject, TokenVerifier, VerifyError};
use crate::metering::tenants::{ApiKey, CachedKeys, Tenant, TenantStore};
use crate::metering::types::TenantId;
use crate::secrets::CachedSecret;

fn unauthorized(code: &'static str, detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, detail)
}

fn missing() -> ApiError {
    unauthorized("missing_credentials", "send Authorization: Bearer <token>")
}

/// Compares digests, so the time taken says nothing about the token.
fn same_secret(presented: &str, expected: &str) -> bool {
    !expected.is_empty()
        && Sha256::digest(presented.as_bytes())
            .ct_eq(&Sha256::digest(expected.as_bytes()))
            .into()
}

/// Whether the request carries the admin token.
pub async fn is_admin(headers: &HeaderMap, token: &CachedSecret) -> Result<bool, ApiError> {
    let Some(presented) = bearer(headers) else {
        return Ok(false);
    };
    let expected = token.get().await.map_err(|e| {
        tracing::error!(error = %e, "admin token unavailable");
        ApiError::unavailable("admin token secret", 5)
    })?;
    Ok(same_secret(presented, expected.expose()))
}

/// Requires the admin token.
pub async fn require_admin(headers: &HeaderMap, token: &CachedSecret) -> Result<(), ApiError> {
    if bearer(headers).is_none() {
        return Err(missing());
    }
    if is_admin(headers, token).await? {
        Ok(())
    } else {
        Err(unauthorized(
            "invalid_credentials",
            "the token is not valid",
        ))
    }
}

/// Requires a tenant API key of an enabled tenant.
pub async fn require_tenant(headers: &HeaderMap, keys: &CachedKeys) -> Result<Tenant, ApiError> {
    let presented = bearer(headers).ok_or_else(missing)?;
    let invalid = || unauthorized("invalid_api_key", "the API key is not valid");
    let key = ApiKey::parse(presented).ok_or_else(invalid)?;
    let tenant = keys.tenant(&key.hash()).await?.ok_or_else(invalid)?;
    if !tenant.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant_disabled",
            "this tenant is disabled",
        ));
    }
    Ok(tenant)
}

/// Requires the admin token, or the API key of tenant `id` itself: who may
/// read a tenant's usage. The admin may read any tenant; a key only its own.
pub async fn require_admin_or_own(
    headers: &HeaderMap,
    token: &CachedSecret,
    keys: &CachedKeys,
    tenants: &dyn TenantStore,
    id: &TenantId,
) -> Result<Tenant, ApiError> {
    if is_admin(headers, token).await? {
        return tenants
            .get(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no tenant {id}")));
    }
    let caller = require_tenant(headers, keys).await?;
    if &caller.id != id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "an API key can only read its own tenant's usage",
        ));
    }
    Ok(caller)
}

/// Requires a signed-in user: a JWT the issuer's keys verify.
pub async fn require_user(
    headers: &HeaderMap,
    verifier: Option<&dyn TokenVerifier>,
) -> Result<Subject, ApiError> {
    let token = bearer(headers).ok_or_else(missing)?;
    let Some(verifier) = verifier else {
        tracing::error!("JWKS_URL is not set: sign-in is off");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sign_in_unavailable",
            "sign-in is not configured on this deployment",
        ));
    };
    verifier.verify(token).await.map_err(|e| match e {
        VerifyError::KeysUnavailable(_) => ApiError::unavailable("sign-in keys (JWKS)", 5),
        other => unauthorized("invalid_token", &other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_value_and_never_match_an_empty_secret() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("", ""));
    }
}
