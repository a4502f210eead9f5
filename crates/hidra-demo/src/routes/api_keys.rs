//! `/api-keys`: keys for the tenant's machine clients, managed by its admins.
//!
//! A client sends its key as `X-API-Key: hk_…` (or `Authorization: Bearer
//! hk_…`); the key names its tenant, and its scopes are the permissions it has
//! (`customers:read`, `orders:*`, …). Only a keyed hash is stored: the key is
//! shown once, when it is created or rotated.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hidra::auth::{ApiKeyInfo, AuthError, CreatedApiKey, NewApiKey};
use hidra_axum::{CurrentTenant, RequirePermission};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, Checks, ErrorBody};
use crate::extract::{Json, Path};
use crate::permissions::{self, UsersManage};
use crate::state::AppState;

/// An API key, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    /// The non-secret key id.
    pub key_id: String,
    /// `hk_<key id>`: how the key starts, to recognise it.
    pub prefix: String,
    /// Its name.
    pub name: String,
    /// The permissions it grants.
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it expires, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was last used (to within a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&ApiKeyInfo> for ApiKeyView {
    fn from(info: &ApiKeyInfo) -> Self {
        ApiKeyView {
            key_id: info.key_id.clone(),
            prefix: info.prefix(),
            name: info.name.clone(),
            scopes: info.scopes.clone(),
            created_at: info.created_at,
            expires_at: info.expires_at,
            revoked_at: info.revoked_at,
            last_used_at: info.last_used_at,
        }
    }
}

/// A key just created or rotated: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewKeyView {
    /// The full key, `hk_<key id>_<secret>`: store it now, it is not kept.
    pub key: String,
    /// The key's record.
    #[serde(flatten)]
    pub info: ApiKeyView,
}

impl From<CreatedApiKey> for NewKeyView {
    fn from(created: CreatedApiKey) -> Self {
        NewKeyView {
            info: created.info().into(),
            key: created.into_secret(),
        }
    }
}

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    /// What it is for, 1 to 100 characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100, required = true)]
    pub name: String,
    /// Permissions it grants, among those of the API (`customers:read`,
    /// `customers:write`, `products:read`, `products:write`, `orders:read`,
    /// `orders:write`, or `customers:*`-style wildcards). At least one.
    #[serde(default)]
    #[schema(min_items = 1, required = true)]
    pub scopes: Vec<String>,
    /// Days until it expires (default: never).
    #[schema(minimum = 1)]
    pub expires_in_days: Option<u32>,
}

/// Whether a scope grants at least one of the permissions API keys may hold
/// (not user management) and nothing else.
pub(crate) fn valid_scope(scope: &str) -> bool {
    let grantable = permissions::FOR_KEYS;
    match scope.strip_suffix(":*") {
        Some(resource) => grantable
            .iter()
            .any(|p| p.split_once(':').is_some_and(|(r, _)| r == resource)),
        None => grantable.contains(&scope),
    }
}

/// Maps the refusals of key management: a key of another tenant is as
/// unknown as a key that does not exist.
fn key_error(error: hidra::Error) -> ApiError {
    match error {
        hidra::Error::Auth(AuthError::UnknownKey) => ApiError::NotFound("API key"),
        hidra::Error::Auth(AuthError::KeyRevoked) => {
            ApiError::Conflict("the key is revoked; create a new one".into())
        }
        hidra::Error::Auth(AuthError::KeyRotated) => {
            ApiError::Conflict("the key was already rotated; rotate its successor".into())
        }
        other => other.into(),
    }
}

/// Lists the tenant's keys, revoked ones included.
#[utoipa::path(get, path = "/api-keys", tag = "api-keys", security(("bearer" = [])),
    responses((status = 200, body = Vec<ApiKeyView>), (status = 403, body = ErrorBody)))]
pub async fn list(
    _: RequirePermission<UsersManage>,
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    let keys = state.api_keys.list(&tenant.id).await?;
    Ok(Json(keys.iter().map(ApiKeyView::from).collect()))
}

/// Creates a key; the answer holds its secret, shown this once.
#[utoipa::path(post, path = "/api-keys", tag = "api-keys", request_body = NewKeyBody,
    security(("bearer" = [])),
    responses((status = 201, body = NewKeyView), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    _: RequirePermission<UsersManage>,
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
    Json(body): Json<NewKeyBody>,
) -> Result<(StatusCode, Json<NewKeyView>), ApiError> {
    Checks::default()
        .text("name", &body.name, 100)
        .check(
            !body.scopes.is_empty(),
            "scopes",
            "must list at least one scope",
        )
        .check(
            body.scopes.iter().all(|s| valid_scope(s)),
            "scopes",
            "must be permissions of this API, such as customers:read or orders:*",
        )
        .check(
            body.expires_in_days.is_none_or(|d| d > 0),
            "expires_in_days",
            "must be at least 1",
        )
        .finish()?;
    let mut new = NewApiKey::new(body.name.trim()).scopes(body.scopes);
    if let Some(days) = body.expires_in_days {
        new = new.expires_in(std::time::Duration::from_secs(u64::from(days) * 86_400));
    }
    let created = state.api_keys.create(&tenant.id, new).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Replaces a key by a new one with the same name and scopes; the old one
/// keeps working for a grace period (a day).
#[utoipa::path(post, path = "/api-keys/{key_id}/rotate", tag = "api-keys",
    params(("key_id" = String, Path)), security(("bearer" = [])),
    responses((status = 201, body = NewKeyView), (status = 404, body = ErrorBody)))]
pub async fn rotate(
    _: RequirePermission<UsersManage>,
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
    Path(key_id): Path<String>,
) -> Result<(StatusCode, Json<NewKeyView>), ApiError> {
    Checks::default().no_nul("key_id", &key_id).finish()?;
    let created = state
        .api_keys
        .rotate(&tenant.id, &key_id)
        .await
        .map_err(key_error)?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Revokes a key at once.
#[utoipa::path(delete, path = "/api-keys/{key_id}", tag = "api-keys",
    params(("key_id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    _: RequirePermission<UsersManage>,
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    Checks::default().no_nul("key_id", &key_id).finish()?;
    state
        .api_keys
        .revoke(&tenant.id, &key_id)
        .await
        .map_err(key_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use hidra::auth::grants;

    use super::*;

    #[test]
    fn scopes() {
        for ok in [
            "customers:read",
            "orders:write",
            "customers:*",
            "products:*",
        ] {
            assert!(valid_scope(ok), "{ok}");
        }
        for bad in [
            "*",
            "users:manage",
            "users:*",
            "customers",
            "customers:delete",
            "",
        ] {
            assert!(!valid_scope(bad), "{bad}");
        }
        // The wildcards accepted grant what they say.
        assert!(grants("customers:*", "customers:read"));
    }
}
