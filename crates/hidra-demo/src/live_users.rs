//! Tokens outlive changes to their users; this check closes the gap.
//!
//! A JWT is valid until it expires, but an admin may delete or deactivate a
//! user, or take a role away, before that. [`check`] refuses, with `401`, the
//! token of a user who no longer exists, is inactive, or lost a role the token
//! still claims. What a user is now is read from the tenant's `users` table and
//! cached for [`TTL`]; changes made through this API invalidate at once, other
//! processes see them within the TTL.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hidra::TenantId;
use hidra_axum::{Auth, Tenant};
use moka::future::Cache;

use crate::error::ApiError;
use crate::routes::users::find_user;
use crate::state::AppState;

/// How long a user's state is trusted without reading it again.
pub const TTL: Duration = Duration::from_secs(10);

/// The current roles of active users, by tenant and user id; `None` for a
/// user who is gone or inactive.
#[derive(Clone, Debug)]
pub struct LiveUsers {
    cache: Cache<(TenantId, i64), Option<Arc<Vec<String>>>>,
}

impl Default for LiveUsers {
    fn default() -> Self {
        LiveUsers {
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(TTL)
                .build(),
        }
    }
}

impl LiveUsers {
    /// Forgets what is known of a user, after a change to it.
    pub async fn invalidate(&self, tenant: &TenantId, user: i64) {
        self.cache.invalidate(&(tenant.clone(), user)).await;
    }
}

/// Middleware for the tenant routes (inside the tenant layer): lets a request
/// through unless its token's user was deleted, deactivated or demoted.
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (Some(Auth::User(claims)), Some(Tenant(tenant))) = (
        Auth::from_extensions(request.extensions()),
        Tenant::from_extensions(request.extensions()),
    ) else {
        // No user token: the guards decide.
        return next.run(request).await;
    };
    let Ok(id) = claims.sub.parse::<i64>() else {
        return refuse();
    };
    let key = (tenant.id.clone(), id);
    let lookup = state
        .live_users
        .cache
        .try_get_with(key, async {
            let mut conn = state.hidra.acquire(&tenant).await?;
            let user = find_user(&mut conn, id).await?;
            let roles = user.filter(|u| u.is_active).map(|u| u.roles);
            Ok::<_, ApiError>(roles.map(Arc::new))
        })
        .await;
    match lookup {
        Ok(Some(roles)) if claims.roles.iter().all(|r| roles.contains(r)) => {
            next.run(request).await
        }
        Ok(_) => refuse(),
        Err(error) => match Arc::try_unwrap(error) {
            Ok(error) => error.into_response(),
            Err(_) => ApiError::Internal(anyhow::anyhow!("reading a user failed")).into_response(),
        },
    }
}

fn refuse() -> Response {
    tracing::debug!("token of a deleted, deactivated or demoted user");
    ApiError::Web(hidra_axum::Error::Unauthorized(
        "the user changed since the token was issued; sign in again".into(),
    ))
    .into_response()
}
