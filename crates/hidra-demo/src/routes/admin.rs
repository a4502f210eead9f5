//! `/admin/tenants`: the operator's tenant management API.
//!
//! Not any tenant's: these routes sit outside the tenant layer and accept
//! only the operator token configured at start (`HIDRA_DEMO_ADMIN_TOKEN`),
//! sent as `Authorization: Bearer <token>`. A tenant's token or API key,
//! even an admin's, is refused with 401 like no credential at all. Without a
//! configured token the routes are not mounted (404), except in the
//! zero-setup mode, which makes one for the run and prints it.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use hidra::auth::NewApiKey;
use hidra::{
    Confirmation, ListTenants, MAX_PAGE_SIZE, Tenant, TenantId, TenantStatus, TenantUpdate,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, Checks, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::routes::api_keys::{NewKeyView, valid_scope};
use crate::state::AppState;

/// The shortest operator token accepted.
pub const MIN_TOKEN_LEN: usize = 32;

/// The operator's credential: compared in constant time, never logged.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    /// The token, if it is long enough to resist guessing.
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "HIDRA_DEMO_ADMIN_TOKEN must be at least {MIN_TOKEN_LEN} characters \
                 (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(AdminToken(token.into()))
    }

    /// The token itself, to show once to whoever started the demo.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &str) -> bool {
        // Lengths differ only for a wrong token; the comparison of equal
        // lengths takes the same time whatever bytes differ.
        presented.len() == self.0.len() && bool::from(presented.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Lets a request through only with the operator token.
async fn require_admin(State(token): State<AdminToken>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if token.matches(p) => next.run(request).await,
        _ => {
            let body = ErrorBody {
                error: "unauthorized".into(),
                message: Some(
                    "send the operator token as `Authorization: Bearer <token>`; \
                     tenant credentials are not accepted here"
                        .into(),
                ),
                fields: None,
            };
            let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hidra-admin\""),
            );
            response
        }
    }
}

/// The admin routes, behind the operator token.
pub fn routes(token: AdminToken) -> Router<AppState> {
    Router::new()
        .route("/admin/tenants", get(list))
        .route("/admin/tenants/{id}", get(show).put(update).delete(delete))
        .route("/admin/tenants/{id}/suspend", post(suspend))
        .route("/admin/tenants/{id}/activate", post(activate))
        .route("/admin/tenants/{id}/api-keys", post(regenerate_keys))
        .route("/admin/tenants/{id}/export", get(export))
        .layer(axum::middleware::from_fn_with_state(token, require_admin))
}

/// Where a tenant's data lives.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlacementView {
    /// `schema`, `row_level` or `database`.
    pub strategy: String,
    /// Its schema (the shared one for row-level tenants).
    pub schema: String,
    /// Its own database, for database-per-tenant tenants.
    pub database: Option<String>,
    /// Its server, when not the control server.
    pub server: Option<String>,
}

/// A tenant's registry record.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// `provisioning`, `active`, `suspended`, `deleting` or `failed`.
    pub status: String,
    /// Where its data lives.
    pub placement: PlacementView,
    /// Free-form data (a JSON object).
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When its record last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        TenantView {
            id: t.id.to_string(),
            name: t.name.clone(),
            status: t.status.to_string(),
            placement: PlacementView {
                strategy: t.placement.strategy.to_string(),
                schema: t.placement.schema.clone(),
                database: t.placement.database.clone(),
                server: t.placement.server.clone(),
            },
            metadata: t.metadata.clone(),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A tenant's migration state.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationView {
    /// The latest migration it has (0: none; `null` when it has no version of
    /// its own: row-level tenants share the tables' version, and a tenant in
    /// another status than active or suspended is not migrated).
    pub version: Option<i64>,
    /// The latest migration of the application.
    pub latest: i64,
    /// Migrations still to apply to it.
    pub pending: usize,
    /// Why it cannot be migrated, if it cannot (an edited migration, an
    /// unknown version).
    pub problem: Option<String>,
}

/// One tenant in detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantDetail {
    /// Its record.
    #[serde(flatten)]
    pub tenant: TenantView,
    /// Its migration state.
    pub migration: MigrationView,
    /// Users who can log in to it.
    pub users: u64,
    /// Its API keys that are not revoked.
    pub active_api_keys: usize,
}

/// A page of tenants.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantPage {
    /// The tenants of this page, in id order.
    pub items: Vec<TenantView>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// `GET /admin/tenants`: search and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// Only tenants whose id or name contains this text (case-insensitive).
    pub q: Option<String>,
    /// Only tenants in this status.
    pub status: Option<String>,
    /// Tenants per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The previous page's `next`.
    pub after: Option<String>,
}

/// Changes to a tenant's record: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantChanges {
    /// A new display name, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// New metadata, a JSON object replacing the old one.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `DELETE /admin/tenants/{id}?force=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete even though it still has users (their logins go with it).
    #[serde(default)]
    pub force: bool,
}

/// The key `POST /admin/tenants/{id}/api-keys` creates.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegeneratedKeyBody {
    /// Its name, 1 to 100 characters (default `regenerated by the operator`).
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// Its scopes (default: read and write on customers, products and orders).
    #[schema(min_items = 1)]
    pub scopes: Option<Vec<String>>,
}

/// The answer of `POST /admin/tenants/{id}/api-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegeneratedKeys {
    /// How many keys were revoked.
    pub revoked: u64,
    /// The new key, with its secret (shown this once).
    pub key: NewKeyView,
}

fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    // Not a valid id: no such tenant (the operator sees the same 404 for a
    // typo as for a tenant deleted meanwhile).
    TenantId::new(raw).map_err(|_| ApiError::NotFound("tenant"))
}

fn not_found(error: hidra::Error) -> ApiError {
    match error {
        hidra::Error::NotFound(_) => ApiError::NotFound("tenant"),
        hidra::Error::InvalidStatus { .. } => ApiError::Conflict(error.to_string()),
        other => other.into(),
    }
}

async fn get_tenant(state: &AppState, id: &TenantId) -> Result<Tenant, ApiError> {
    state
        .hidra
        .tenant(id)
        .await?
        .ok_or(ApiError::NotFound("tenant"))
}

/// Lists tenants by id, with a search and a status filter.
#[utoipa::path(get, path = "/admin/tenants", tag = "admin", params(TenantQuery),
    security(("admin_token" = [])),
    responses((status = 200, body = TenantPage), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<TenantPage>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    let status = query.status.as_deref().map(str::parse::<TenantStatus>);
    let after = query.after.as_deref().map(TenantId::new);
    Checks::default()
        .check(
            (1..=MAX_PAGE_SIZE).contains(&limit),
            "limit",
            "must be 1 to 1000",
        )
        .check(
            status.as_ref().is_none_or(Result::is_ok),
            "status",
            "must be provisioning, active, suspended, deleting or failed",
        )
        .check(
            after.as_ref().is_none_or(Result::is_ok),
            "after",
            "must be a tenant id (the previous page's `next`)",
        )
        .no_nul("q", query.q.as_deref().unwrap_or_default())
        .finish()?;
    let mut page = ListTenants::first(limit);
    if let Some(Ok(status)) = status {
        page = page.status(status);
    }
    if let Some(Ok(after)) = after {
        page = page.after(after);
    }
    if let Some(q) = query.q.filter(|q| !q.trim().is_empty()) {
        page = page.search(q.trim());
    }
    let found = state.hidra.list(&page).await?;
    Ok(Json(TenantPage {
        items: found.items.iter().map(TenantView::from).collect(),
        next: found.next.map(|id| id.to_string()),
    }))
}

/// A tenant in detail: status, placement, migration version, user count.
#[utoipa::path(get, path = "/admin/tenants/{id}", tag = "admin",
    params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = TenantDetail), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TenantDetail>, ApiError> {
    let id = tenant_id(&id)?;
    let tenant = get_tenant(&state, &id).await?;
    let migration = migration_of(&state, &tenant).await?;
    let users = state.accounts.user_count(&id).await?;
    let keys = state.api_keys.list(&id).await?;
    Ok(Json(TenantDetail {
        tenant: TenantView::from(&tenant),
        migration,
        users,
        active_api_keys: keys.iter().filter(|k| k.revoked_at.is_none()).count(),
    }))
}

async fn migration_of(state: &AppState, tenant: &Tenant) -> Result<MigrationView, ApiError> {
    let plan = state
        .hidra
        .migrator()
        .tenants([tenant.id.clone()])
        .plan()
        .await
        .map_err(not_found)?;
    let mine = |t: &hidra::migrate::Target| t.tenant.as_ref() == Some(&tenant.id);
    let mut view = MigrationView {
        version: None,
        latest: plan.latest,
        pending: 0,
        problem: None,
    };
    if let Some(p) = plan.pending.iter().find(|p| mine(&p.target)) {
        view.version = Some(p.version);
        view.pending = p.pending.len();
    } else if plan.current.iter().any(mine) {
        view.version = Some(plan.latest);
    } else if let Some(f) = plan.refused.iter().find(|f| mine(&f.target)) {
        view.problem = Some(f.error.to_string());
    }
    Ok(view)
}

/// Renames a tenant and/or replaces its metadata.
#[utoipa::path(put, path = "/admin/tenants/{id}", tag = "admin",
    params(("id" = String, Path)), request_body = TenantChanges, security(("admin_token" = [])),
    responses((status = 200, body = TenantView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<TenantChanges>,
) -> Result<Json<TenantView>, ApiError> {
    let id = tenant_id(&id)?;
    let mut checks = Checks::default();
    checks.check(
        body.name.is_some() || body.metadata.is_some(),
        "body",
        "must change `name`, `metadata` or both",
    );
    if let Some(name) = &body.name {
        checks.text("name", name, 200);
    }
    checks
        .check(
            body.metadata.as_ref().is_none_or(|m| m.is_object()),
            "metadata",
            "must be a JSON object",
        )
        .no_nul(
            "metadata",
            &body
                .metadata
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
        )
        .finish()?;
    let mut update = TenantUpdate::default();
    if let Some(name) = body.name {
        update = update.name(name.trim());
    }
    if let Some(metadata) = body.metadata {
        update = update.metadata(metadata);
    }
    let tenant = state
        .hidra
        .update_tenant(&id, update)
        .await
        .map_err(not_found)?;
    // This process serves the change at once; the others when the
    // registry's notification reaches them.
    state.tenants.invalidate(&id).await;
    Ok(Json(TenantView::from(&tenant)))
}

/// Suspends a tenant: its data stays, its requests are refused at once (404,
/// as for an unknown tenant).
#[utoipa::path(post, path = "/admin/tenants/{id}/suspend", tag = "admin",
    params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = TenantView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn suspend(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let id = tenant_id(&id)?;
    let tenant = state.hidra.suspend(&id).await.map_err(not_found)?;
    state.tenants.invalidate(&id).await;
    Ok(Json(TenantView::from(&tenant)))
}

/// Re-activates a suspended tenant.
#[utoipa::path(post, path = "/admin/tenants/{id}/activate", tag = "admin",
    params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = TenantView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn activate(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let id = tenant_id(&id)?;
    let tenant = state.hidra.activate(&id).await.map_err(not_found)?;
    state.tenants.invalidate(&id).await;
    Ok(Json(TenantView::from(&tenant)))
}

/// Deletes a tenant with all its data, logins and keys; refused (409) while it
/// still has users, unless `force=true`.
#[utoipa::path(delete, path = "/admin/tenants/{id}", tag = "admin",
    params(("id" = String, Path), DeleteQuery), security(("admin_token" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let id = tenant_id(&id)?;
    get_tenant(&state, &id).await?;
    let users = state.accounts.user_count(&id).await?;
    if users > 0 && !query.force {
        return Err(ApiError::Conflict(format!(
            "tenant `{id}` still has {users} user(s); delete them first, or pass ?force=true \
             to delete the tenant with its users"
        )));
    }
    state
        .hidra
        .deprovision(&id, Confirmation::of(&id))
        .await
        .map_err(not_found)?;
    state.tenants.invalidate(&id).await;
    tracing::info!(tenant = %id, users, "the operator deleted a tenant");
    Ok(StatusCode::NO_CONTENT)
}

/// The scopes of a regenerated key when none are asked for.
const DEFAULT_SCOPES: [&str; 3] = ["customers:*", "products:*", "orders:*"];

/// Revokes every API key of the tenant and issues one new key (after a leak,
/// or for a customer who lost theirs).
#[utoipa::path(post, path = "/admin/tenants/{id}/api-keys", tag = "admin",
    params(("id" = String, Path)), request_body(content = RegeneratedKeyBody),
    security(("admin_token" = [])),
    responses((status = 201, body = RegeneratedKeys), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn regenerate_keys(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<RegeneratedKeys>), ApiError> {
    let id = tenant_id(&id)?;
    // The body is optional: none means a key with the default name and scopes.
    let body: RegeneratedKeyBody = if body.iter().all(u8::is_ascii_whitespace) {
        RegeneratedKeyBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::field("body", e.to_string()))?
    };
    let name = body
        .name
        .unwrap_or_else(|| "regenerated by the operator".into());
    let scopes = body
        .scopes
        .unwrap_or_else(|| DEFAULT_SCOPES.map(String::from).to_vec());
    Checks::default()
        .text("name", &name, 100)
        .check(!scopes.is_empty(), "scopes", "must list at least one scope")
        .check(
            scopes.iter().all(|s| valid_scope(s)),
            "scopes",
            "must be permissions of this API, such as customers:read or orders:*",
        )
        .finish()?;
    let tenant = get_tenant(&state, &id).await?;
    if !matches!(
        tenant.status,
        TenantStatus::Active | TenantStatus::Suspended
    ) {
        return Err(ApiError::Conflict(format!(
            "tenant `{id}` is {}; keys can be issued to active or suspended tenants",
            tenant.status
        )));
    }
    let revoked = state.api_keys.revoke_all(&id).await?;
    let created = state
        .api_keys
        .create(&id, NewApiKey::new(name.trim()).scopes(scopes))
        .await?;
    tracing::info!(tenant = %id, revoked, "the operator regenerated a tenant's API keys");
    Ok((
        StatusCode::CREATED,
        Json(RegeneratedKeys {
            revoked,
            key: created.into(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(AdminToken::new("short").is_err());
        let token = AdminToken::new(&"x".repeat(40)).expect("long enough");
        assert!(token.matches(&"x".repeat(40)));
        assert!(!token.matches(&"x".repeat(39)));
        assert!(!token.matches(&format!("{}y", "x".repeat(39))));
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
    }
}

/// How much of an export is buffered between the database and the client.
const EXPORT_PIPE: usize = 256 * 1024;

/// Streams the tenant's archive (`hidra tenant import FILE` restores it): its
/// schema's migrations, its rows in one consistent snapshot, its registry
/// record, logins and API keys, with a manifest and checksums.
#[utoipa::path(get, path = "/admin/tenants/{id}/export", tag = "admin",
    params(("id" = String, Path)), security(("admin_token" = [])),
    responses(
        (status = 200, content_type = "application/x-tar",
            description = "the archive, streamed; a failure mid-way ends it early (an import \
                refuses a truncated archive)"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the tenant is being created or deleted")))]
pub async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use tokio::io::AsyncReadExt;

    let id = tenant_id(&id)?;
    let tenant = get_tenant(&state, &id).await?;
    if !matches!(
        tenant.status,
        TenantStatus::Active | TenantStatus::Suspended
    ) {
        return Err(ApiError::Conflict(format!(
            "tenant `{id}` is {}; only active or suspended tenants are exported",
            tenant.status
        )));
    }
    let (writer, mut reader) = tokio::io::duplex(EXPORT_PIPE);
    let hidra = state.hidra.clone();
    let task_id = id.clone();
    let mut task = tokio::spawn(async move {
        hidra
            .export_tenant(&task_id, writer, hidra::archive::ExportOptions::new())
            .await
    });
    // The first block, before answering: an export that fails at once (the
    // tenant deleted meanwhile, the database gone) is an error status, not
    // an empty 200.
    let mut first = vec![0u8; 512];
    let read = tokio::select! {
        read = reader.read_exact(&mut first) => read.ok(),
        done = &mut task => {
            return Err(match done {
                Ok(Err(e)) => not_found(e),
                Ok(Ok(_)) => ApiError::Internal(anyhow::anyhow!("an export ended before its first block")),
                Err(e) => ApiError::Internal(e.into()),
            });
        }
    };
    if read.is_none() {
        return Err(match task.await {
            Ok(Err(e)) => not_found(e),
            _ => ApiError::Internal(anyhow::anyhow!("an export ended before its first block")),
        });
    }
    // The rest streams; a failure from here on is logged and ends the body.
    let log_id = id.clone();
    tokio::spawn(async move {
        match task.await {
            Ok(Ok(summary)) => tracing::info!(
                tenant = %log_id, rows = summary.rows, bytes = summary.bytes,
                "the operator exported a tenant"
            ),
            Ok(Err(e)) => {
                tracing::warn!(tenant = %log_id, error = %e, "a tenant export failed mid-way")
            }
            Err(e) => tracing::warn!(tenant = %log_id, error = %e, "a tenant export task ended"),
        }
    });
    let head = futures_util::stream::once(async move { Ok(Bytes::from(first)) });
    let rest = tokio_util::io::ReaderStream::new(reader);
    let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(head, rest));
    let file = format!("{id}-{}.tar", Utc::now().format("%Y%m%dT%H%M%SZ"));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response())
}
