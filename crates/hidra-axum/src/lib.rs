//! axum and tower integration for [Hidra](hidra): multi-tenant request
//! handling in a few lines.
//!
//! **The guide** (getting started, concepts, the isolation and security model,
//! deployment, background work, SeaORM, the CLI, troubleshooting, the demo's
//! HTTP API) is the mdBook in the repository's `docs/` directory:
//! `mdbook serve docs` renders it; its Rust samples are compiled as tests.
//!
//! - [`TenantLayer`] resolves every request to a tenant (header, subdomain or
//!   custom domain, path prefix, cookie, or your own [`TenantResolver`]),
//!   validates the id, looks the tenant up through an in-process
//!   [`TenantCache`] kept fresh by the registry's change notifications, refuses
//!   tenants that are not active, and runs the handler inside a `tracing` span
//!   carrying the tenant id.
//! - Extractors hand handlers the [`CurrentTenant`], a connection bound to it
//!   ([`RequestConn`]) or a transaction bound to it that commits on success and
//!   rolls back otherwise ([`RequestTx`]).
//! - Refusals leak nothing: a missing, malformed, unknown or suspended tenant
//!   all get the same response, byte for byte.
//! - [`health`] routes for probes and dashboards.
//! - With the feature `auth`: the tenant from a verified JWT
//!   ([`JwtResolver`][auth-jwtresolver]) or API key
//!   ([`ApiKeyResolver`][auth-apikeyresolver]), the verified principal
//!   ([`Auth`][auth-auth]) and guards ([`RequireRole`][auth-requirerole],
//!   [`RequirePermission`][auth-requirepermission],
//!   [`RequireScope`][auth-requirescope]).
//!
//! The core crate knows nothing of HTTP; this crate depends on it, never the
//! reverse.
//!
//! # Usage
//!
//! ```no_run
//! use axum::{Json, Router, routing::get};
//! use hidra_axum::{CurrentTenant, RequestConn, TenantLayer};
//!
//! async fn customer(
//!     tenant: CurrentTenant,
//!     mut conn: RequestConn,
//!     axum::extract::Path(id): axum::extract::Path<i64>,
//! ) -> Result<Json<serde_json::Value>, axum::http::StatusCode> {
//!     let name: String = sqlx::query_scalar("SELECT name FROM customers WHERE id = $1")
//!         .bind(id)
//!         .fetch_optional(&mut conn)
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
//! let tenants = TenantLayer::new(hidra.clone()); // `X-Tenant-ID` by default
//! let api = Router::new()
//!     .route("/customers/{id}", get(customer))
//!     .layer(tenants);
//! // Public routes go beside the tenant-layered ones, outside the layer.
//! let app = api.merge(hidra_axum::health::router(hidra));
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
//! request away from the tenant of its credentials. Nested layers count the
//! tenant an outer layer resolved as verified: an inner layer agrees with it
//! or refuses. See [`TenantLayer`].
//!
//! # Errors
//!
//! | situation | status | body |
//! |-----------|--------|------|
//! | no id (and no resolver reads credentials), malformed id, unknown tenant, tenant not active | 404 (configurable) | `{"error":"tenant_not_found"}` (configurable), identical for all four |
//! | sources disagree with a verified one | 403 | `{"error":"tenant_conflict"}` |
//! | a resolver refuses a credential; a guard finds none; no id at all where a resolver [reads credentials](TenantResolver::reads_credentials) | 401, `WWW-Authenticate: Bearer` | `{"error":"unauthorized"}` |
//! | a guard finds a role, permission or scope missing (`auth`) | 403 | `{"error":"forbidden"}` |
//! | registry or database unreachable | 503 | `{"error":"service_unavailable"}` |
//! | commit of a [`RequestTx`] failed | 500 | `{"error":"internal_error"}` |
//! | extractor used without the layer | 500 | ``{"error":"internal_error","message":"no tenant in request extensions: is `TenantLayer` installed, …"}`` |
//!
//! Database text is never sent; it is logged with `tracing`.
//!
//! # Authentication (feature `auth`)
//!
//! ```no_run
//! # #[cfg(feature = "auth")]
//! # mod example {
//! use axum::{Router, routing::get};
//! use hidra::auth::{ApiKeys, Jwt};
//! use hidra_axum::{
//!     ApiKeyResolver, Auth, HeaderResolver, JwtResolver, Permission, PermissionCache,
//!     RequirePermission, RequireRole, Role, TenantLayer,
//! };
//!
//! struct Admin;
//! impl Role for Admin {
//!     const NAME: &'static str = "admin";
//! }
//!
//! struct CustomersRead;
//! impl Permission for CustomersRead {
//!     const NAME: &'static str = "customers:read";
//! }
//!
//! async fn me(auth: Auth) -> String {
//!     auth.subject().to_owned()
//! }
//!
//! async fn customers(_: RequirePermission<CustomersRead>) -> &'static str {
//!     "[]"
//! }
//!
//! async fn settings(_: RequireRole<Admin>) -> &'static str {
//!     "{}"
//! }
//!
//! # pub async fn run(hidra: hidra::Hidra) -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = Jwt::hs256(std::env::var("JWT_SECRET")?)?;
//! let keys = ApiKeys::new(hidra.clone(), std::env::var("API_KEY_PEPPER")?)?;
//! let tenants = TenantLayer::new(hidra)
//!     .with_resolver(JwtResolver::new(jwt)) // Authorization: Bearer <jwt>
//!     .with_resolver(ApiKeyResolver::new(keys)) // X-API-Key or Bearer hk_…
//!     .with_resolver(HeaderResolver::new()); // X-Tenant-ID, must agree with them
//! let app: Router = Router::new()
//!     .route("/me", get(me))
//!     .route("/customers", get(customers))
//!     .route("/settings", get(settings))
//!     .with_state(PermissionCache::new())
//!     .layer(tenants);
//! # let _ = app; Ok(()) }
//! # }
//! ```
//!
//! A bad token or key is refused by the layer with one `401` body whatever
//! the reason. A request without credentials that names a tenant otherwise
//! (the header above) passes the layer and is refused by the guards that need
//! them; one that names none gets the same `401` from the layer. [`Error`] maps the core's
//! [`AuthError`][auth-autherror] kinds to `401`, `403`, `409` and `422` (see
//! [`Error::Auth`][auth-error-auth]), so handlers can use `?` on login and
//! registration.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---------|---------|--------------|
//! | `auth` | no | resolvers from a verified JWT or API key, the [`Auth`][auth-auth] extractor, role, permission and scope guards (see [Authentication](#authentication-feature-auth)); enables `hidra/auth` |
//!
//! Everything else is always built.
//!

// The links to the items of the feature `auth`: to the items when it is
// enabled, to the feature table otherwise.
#![cfg_attr(
    feature = "auth",
    doc = "\n\
    [auth-jwtresolver]: crate::JwtResolver\n\
    [auth-apikeyresolver]: crate::ApiKeyResolver\n\
    [auth-auth]: crate::Auth\n\
    [auth-requirerole]: crate::RequireRole\n\
    [auth-requirepermission]: crate::RequirePermission\n\
    [auth-requirescope]: crate::RequireScope\n\
    [auth-error-auth]: crate::Error::Auth\n\
    [auth-autherror]: hidra::auth::AuthError"
)]
#![cfg_attr(
    not(feature = "auth"),
    doc = "\n\
    [auth-jwtresolver]: #feature-flags\n\
    [auth-apikeyresolver]: #feature-flags\n\
    [auth-auth]: #feature-flags\n\
    [auth-requirerole]: #feature-flags\n\
    [auth-requirepermission]: #feature-flags\n\
    [auth-requirescope]: #feature-flags\n\
    [auth-error-auth]: #feature-flags\n\
    [auth-autherror]: #feature-flags"
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "auth")]
mod auth;
mod cache;
mod error;
mod extract;
mod layer;
mod rate;
mod resolve;

pub mod future;
pub mod health;

#[cfg(feature = "auth")]
pub use crate::auth::{
    ApiKeyResolver, Auth, JwtResolver, Permission, PermissionCache, RequirePermission, RequireRole,
    RequireScope, Role,
};
pub use crate::cache::{CacheStats, TenantCache, TenantCacheBuilder};
pub use crate::error::{BoxError, Error, Result};
pub use crate::extract::{CurrentTenant, RequestConn, RequestReadConn, RequestTx, TenantHandle};
pub use crate::layer::{TenantLayer, TenantService};
pub use crate::rate::TenantRate;
pub use crate::resolve::{
    CookieResolver, HeaderResolver, PathPrefixResolver, Resolution, ResolveContext,
    SubdomainResolver, TenantResolver,
};

/// The core crate this layer is built on, so that an application depending
/// on `hidra-axum` alone reaches the matching `hidra` (and its `sqlx`:
/// `hidra_axum::hidra::sqlx`). Its `Tenant`, `TenantConn` and `TenantTx` are
/// the core types the extractors [`CurrentTenant`], [`RequestConn`] and
/// [`RequestTx`] wrap; the names differ so that both can be imported.
pub use hidra;
