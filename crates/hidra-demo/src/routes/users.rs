//! `/users`: the tenant's users and their roles, managed by its admins.

use axum::extract::State;
use axum::http::StatusCode;
use hidra::auth::{NewUser, User, UserUpdate};
use hidra_axum::{CurrentTenant, RequestConn, RequirePermission};
use serde::{Deserialize, Serialize};
use sqlx::{Executor, Postgres};
use utoipa::ToSchema;

use super::account::account_error;
use crate::error::{ApiError, Checks, ErrorBody};
use crate::extract::{Json, PageParams, Paginated, Path, Query, looks_like_email};
use crate::permissions::UsersManage;
use crate::state::AppState;

/// A user of the tenant.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct UserView {
    /// Its id, unique within the tenant; the `sub` of its tokens.
    pub id: i64,
    /// Its login email.
    pub email: String,
    /// Its name.
    pub full_name: String,
    /// Its role names: `admin`, `member`, `viewer`.
    pub roles: Vec<String>,
    /// Whether it may log in.
    pub is_active: bool,
}

impl UserView {
    /// The view of a user just registered (active).
    pub fn registered(user: User) -> Self {
        UserView {
            id: user.id,
            email: user.email,
            full_name: user.full_name,
            roles: user.roles,
            is_active: true,
        }
    }
}

/// A user to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    /// Its login email, unique across all tenants.
    #[serde(default)]
    #[schema(format = Email, required = true)]
    pub email: String,
    /// Its name, 1 to 200 characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, required = true)]
    pub full_name: String,
    /// 8 to 1024 bytes.
    #[serde(default)]
    #[schema(min_length = 8, max_length = 1024, format = Password, required = true)]
    pub password: String,
    /// Its roles (default `["member"]`).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

/// Changes to a user: absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// A new name, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub full_name: Option<String>,
    /// Its new set of roles (replaces the old one).
    pub roles: Option<Vec<String>>,
    /// `false` stops it from logging in.
    pub is_active: Option<bool>,
}

const SELECT: &str = "SELECT u.id, u.email, u.full_name, u.is_active, \
     coalesce(array_agg(r.name ORDER BY r.name) FILTER (WHERE r.name IS NOT NULL), '{}') AS roles \
     FROM users u LEFT JOIN user_roles ur ON ur.user_id = u.id LEFT JOIN roles r ON r.id = ur.role_id";

/// The user `id` of the connection's tenant.
pub(crate) async fn find_user<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    id: i64,
) -> Result<Option<UserView>, ApiError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE u.id = $1 GROUP BY u.id"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// The id of the signed-in user.
fn me(admin: &RequirePermission<UsersManage>) -> Option<i64> {
    admin.subject().parse().ok()
}

/// Lists the tenant's users.
#[utoipa::path(get, path = "/users", tag = "users", params(PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = Paginated<UserView>), (status = 403, body = ErrorBody)))]
pub async fn list(
    _: RequirePermission<UsersManage>,
    mut conn: RequestConn,
    Query(params): Query<PageParams>,
) -> Result<Json<Paginated<UserView>>, ApiError> {
    let page = params.page()?;
    let items: Vec<UserView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} GROUP BY u.id ORDER BY u.id LIMIT $1 OFFSET $2"
    )))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Json(Paginated::new(items, page, total)))
}

/// Creates a user who can then log in.
#[utoipa::path(post, path = "/users", tag = "users", request_body = NewUserBody,
    security(("bearer" = [])),
    responses((status = 201, body = UserView), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    _: RequirePermission<UsersManage>,
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
    Json(body): Json<NewUserBody>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let mut checks = Checks::default();
    checks.text("full_name", &body.full_name, 200);
    checks
        .check(
            looks_like_email(&body.email),
            "email",
            "must be an email address",
        )
        .check(
            state
                .accounts
                .passwords()
                .check_policy(&body.password)
                .is_ok(),
            "password",
            "must be at least 8 characters",
        )
        .finish()?;
    let roles = body.roles.unwrap_or_else(|| vec!["member".to_owned()]);
    let new = NewUser::new(&body.email, body.full_name.trim(), &body.password).roles(roles);
    let user = state
        .accounts
        .register(&tenant, new)
        .await
        .map_err(account_error)?;
    Ok((StatusCode::CREATED, Json(UserView::registered(user))))
}

/// One user.
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
pub async fn show(
    _: RequirePermission<UsersManage>,
    mut conn: RequestConn,
    Path(id): Path<i64>,
) -> Result<Json<UserView>, ApiError> {
    find_user(&mut conn, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("user"))
}

/// Renames, re-roles, deactivates or reactivates a user. Admins cannot take
/// their own admin role or deactivate themselves. Deactivating or re-roling
/// ends the user's sessions: its tokens are refused, it signs in again.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", params(("id" = i64, Path)), request_body = UserPatch,
    security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update(
    admin: RequirePermission<UsersManage>,
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
    Path(id): Path<i64>,
    Json(patch): Json<UserPatch>,
) -> Result<Json<UserView>, ApiError> {
    let mut checks = Checks::default();
    if let Some(name) = &patch.full_name {
        checks.text("full_name", name, 200);
    }
    let myself = me(&admin) == Some(id);
    checks
        .check(
            !(myself && patch.is_active == Some(false)),
            "is_active",
            "you cannot deactivate yourself",
        )
        .check(
            !(myself
                && patch
                    .roles
                    .as_ref()
                    .is_some_and(|r| !r.iter().any(|r| r == "admin"))),
            "roles",
            "you cannot take away your own admin role",
        )
        .finish()?;
    // Deactivating or re-roling ends the user's sessions: its tokens are
    // refused from now on, in every process.
    let mut update = UserUpdate::new();
    if let Some(name) = &patch.full_name {
        update = update.full_name(name.trim());
    }
    if let Some(active) = patch.is_active {
        update = update.active(active);
    }
    if let Some(roles) = &patch.roles {
        update = update.roles(roles);
    }
    state
        .accounts
        .update_user(&tenant, id, update)
        .await
        .map_err(account_error)?
        .ok_or(ApiError::NotFound("user"))?;
    let mut conn = state.hidra.acquire(&tenant).await?;
    let user = find_user(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(user))
}

/// Deletes a user (and its login); admins cannot delete themselves.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn delete(
    admin: RequirePermission<UsersManage>,
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
    mut conn: RequestConn,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if me(&admin) == Some(id) {
        return Err(ApiError::field("id", "you cannot delete yourself"));
    }
    let email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    drop(conn);
    let email = email.ok_or(ApiError::NotFound("user"))?;
    let deleted = state.accounts.delete_user(&tenant, &email).await?;
    match deleted {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::NotFound("user")),
    }
}
