//! axum and tower integration for [Hidra](hidra): multi-tenant request
//! handling in a few lines.
//!
//! - [`TenantLayer`] resolves every request to a tenant (header, subdomain or
//!   custom domain, path prefix, cookie, or your own [`TenantResolver`]),
//!   validates the id, looks the tenant up through an in-process
//!   [`TenantCache`] kept fresh by the registry's change notifications, refuses
//!   tenants that are not active, and runs the handler inside a `tracing` span
//!   carrying the tenant id.
//! - Extractors hand handlers the [`Tenant`], a connection bound to it
//!   ([`TenantConn`]) or a transaction bound to it that commits on success and
//!   rolls back otherwise ([`TenantTx`]).
//! - Refusals leak nothing: a missing, malformed, unknown or suspended tenant
//!   all get the same response, byte for byte.
//! - [`health`] routes for probes and dashboards.
//!
//! The core crate knows nothing of HTTP; this crate depends on it, never the
//! reverse.
//!
//! # Usage
//!
//! ```no_run
//! use axum::{Json, Router, routing::get};
//! use hidra_axum::{Tenant, TenantConn, TenantLayer};
//!
//! async fn customer(
//!     tenant: Tenant,
//!     mut conn: TenantConn,
//!     axum::extract::Path(id): axum::extract::Path<i64>,
//! ) -> Result<Json<serde_json::Value>, axum::http::StatusCode> {
//!     let name: String = sqlx::query_scalar("SELECT name FROM customers WHERE id = $1")
//!         .bind(id)
//!         .fetch_optional(&mut *conn)
//!         .await
//!         .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?
//!         .ok_or(axum::http::StatusCode::NOT_FOUND)?;
//!     Ok(Json(serde_json::json!({ "tenant": tenant.id, "id": id, "name": name })))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hidra = hidra::Hidra::builder()
//!     .connect("postgres://postgres@127.0.0.1/app")
//!     .await?;
//! let tenants = TenantLayer::new(hidra.clone()) // `X-Tenant-ID` by default
//!     .with_excluded("/health");
//! let app = Router::new()
//!     .route("/customers/{id}", get(customer))
//!     .merge(hidra_axum::health::router(hidra))
//!     .layer(tenants);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Resolution and the 403 rule
//!
//! Resolvers form a chain; every one runs. The first candidate decides the
//! tenant, unless a *verified* source (a signed token's claim, an API key)
//! gave one: then every candidate must be that same id, or the request is
//! refused with `403 {"error":"tenant_conflict"}`. A header can never steer a
//! request away from the tenant of its credentials. See [`TenantLayer`].
//!
//! # Errors
//!
//! | situation | status | body |
//! |-----------|--------|------|
//! | no id, malformed id, unknown tenant, tenant not active | 404 (configurable) | `{"error":"tenant_not_found"}` (configurable), identical for all four |
//! | sources disagree with a verified one | 403 | `{"error":"tenant_conflict"}` |
//! | a resolver refuses a credential | 401 | `{"error":"unauthorized"}` |
//! | registry or database unreachable | 503 | `{"error":"service_unavailable"}` |
//! | commit of a [`TenantTx`] failed | 500 | `{"error":"internal_error"}` |
//! | extractor used without the layer | 500 | ``{"error":"internal_error","message":"no tenant in request extensions: is `TenantLayer` installed, …"}`` |
//!
//! Database text is never sent; it is logged with `tracing`.
//!
//! # Feature flags
//!
//! None yet: everything above is always built.

mod cache;
mod error;
mod extract;
mod layer;
mod resolve;

pub mod future;
pub mod health;

pub use crate::cache::{CacheStats, TenantCache, TenantCacheBuilder};
pub use crate::error::{BoxError, Error, Result};
pub use crate::extract::{Tenant, TenantConn, TenantTx};
pub use crate::layer::{TenantLayer, TenantService};
pub use crate::resolve::{
    CookieResolver, HeaderResolver, PathPrefixResolver, Resolution, ResolveContext,
    SubdomainResolver, TenantResolver,
};
