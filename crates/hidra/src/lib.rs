//! Multi-tenancy for Rust services on PostgreSQL.
//!
//! Hidra gives every tenant of a SaaS its own PostgreSQL schema in one shared
//! database, keeps a registry of tenants in a table the application owns,
//! creates and removes tenants all or nothing, and hands out connections and
//! transactions already scoped to one tenant, so that unqualified sqlx queries
//! reach that tenant's tables and no other's.
//!
//! **The guide** (getting started, concepts, the isolation and security model,
//! deployment, background work, SeaORM, the CLI, troubleshooting, the demo's
//! HTTP API) is the mdBook in the repository's `docs/` directory:
//! `mdbook serve docs` renders it; its Rust samples are compiled as tests.
//!
//! # Usage
//!
//! ```no_run
//! use hidra::{Hidra, NewTenant, TenantId};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hidra = Hidra::builder()
//!     .schema_sql("001_customers", "CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL)")
//!     .connect("postgres://postgres@127.0.0.1/app")
//!     .await?;
//!
//! // The application creates the registry table on purpose (idempotent).
//! hidra.install().await?;
//!
//! let acme = hidra.provision(NewTenant::new(TenantId::new("acme")?).name("Acme")).await?;
//!
//! let mut conn = hidra.acquire(&acme).await?;
//! sqlx::query("INSERT INTO customers (name) VALUES ($1)")
//!     .bind("Wile E.")
//!     .execute(&mut conn)
//!     .await?;
//!
//! let mut tx = hidra.begin(&acme).await?;
//! let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM customers")
//!     .fetch_one(&mut tx)
//!     .await?;
//! tx.commit().await?;
//! # let _ = n; Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - A [`TenantId`] is validated before any SQL is built from it, and schema
//!   names reach SQL only quoted, from one audited module.
//! - Every checkout of the shared pool binds (or resets) the connection's
//!   `search_path` before handing it over, in the round trip that also proves
//!   it alive and outside any leftover transaction: no connection carries a
//!   tenant into another tenant's or unscoped use, whatever happened to it
//!   before (cancellation, panic). A connection cut off mid-statement or
//!   inside a transaction is settled (pinged, rolled back) before it is
//!   reused. See [`TenantConn`] and [`TenantTx`], and
//!   [`HidraBuilder::transaction_pooler`] behind PgBouncer.
//! - Provisioning is one transaction: a tenant exists fully or not at all.
//!
//! # Strategies
//!
//! Each tenant has a [`Placement`] naming its [`Strategy`]; tenants of all three
//! coexist and are served by the same code, since [`Hidra::acquire`] and
//! [`Hidra::begin`] pick the mechanism:
//!
//! | strategy | data lives in | bound by |
//! |---|---|---|
//! | [`Strategy::Schema`] (default) | the tenant's schema in the shared database | `search_path` |
//! | [`Strategy::RowLevel`] | shared tables with a tenant column ([`rls`]) | `hidra.tenant_id` read by RLS policies |
//! | [`Strategy::Database`] | the tenant's own database | a per-database pool under a global budget ([`TenantDatabases`]) |
//!
//! [`Hidra::move_tenant`] moves a tenant between strategies keeping every row;
//! [`migrate`] migrates schema and database tenants alike.
//!
//! # Behind PgBouncer
//!
//! A transaction-pooling proxy hands each transaction to any server
//! connection, so session settings leak between its clients. [`Hidra::begin`]
//! binds with transaction-local settings and is safe there;
//! [`Hidra::acquire`] binds the session and is not.
//!
//! # Feature flags
//!
//! | feature   | default | what it adds |
//! |-----------|---------|--------------|
#![cfg_attr(
    feature = "testing",
    doc = "| `testing` | no      | [`testing`]: throw-away databases and PostgreSQL clusters for tests and demos |"
)]
#![cfg_attr(
    not(feature = "testing"),
    doc = "| `testing` | no      | `testing`: throw-away databases and PostgreSQL clusters for tests and demos |"
)]
#![cfg_attr(
    feature = "auth",
    doc = "| `auth`    | no      | [`auth`]: tenant-bound JWTs, argon2id passwords, login through a shared email lookup, role permissions, per-tenant API keys |"
)]
#![cfg_attr(
    not(feature = "auth"),
    doc = "| `auth`    | no      | `auth`: tenant-bound JWTs, argon2id passwords, login through a shared email lookup, role permissions, per-tenant API keys |"
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod hidra;
mod lifecycle;
mod moves;
mod scope;
mod servers;
mod sql;
mod store;
mod strategy;
mod tenant;
mod union_view;

pub mod adopt;
pub mod archive;
#[cfg(feature = "auth")]
pub mod auth;
pub mod context;
pub mod fanout;
pub mod migrate;
pub mod replica;
#[cfg(feature = "testing")]
pub mod testing;

/// The README's examples, compiled as doc-tests so that they cannot go stale
/// (`tests/readme.rs` runs the same steps against a database).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

pub use crate::error::{BoxError, Error, Result, is_connection_error};
pub use crate::hidra::{Hidra, HidraBuilder, PoolStatus, Seed, TenantCap};
pub use crate::lifecycle::Confirmation;
pub use crate::migrate::{MigrationRunner, Migrations, RunSummary};
pub use crate::replica::{ReplicaStatus, WalPosition};
pub use crate::scope::{
    DatabasePoolConfig, DatabasePoolStats, DbConn, LoadReport, OTHER_TENANTS, SharedConn,
    StaleStatement, TenantConn, TenantDatabases, TenantLoad, TenantLoads, TenantTx,
};
pub use crate::servers::{
    Candidate, FewestTenants, LOADS_TTL, MAX_SERVER_NAME_LEN, MIN_SERVER_VERSION_NUM, MoveProgress,
    NewServer, PlacementPolicy, SERVER_CHECK_TIMEOUT, Server, ServerBudget, ServerCheck,
    ServerHealth, ServerMove, ServerName, ServerPoolConfig, ServerState, Servers, ServersTable,
    redact_url,
};
pub use crate::sql::{Ident, TableName};
pub use crate::store::{
    AnyTenantStore, ListTenants, MAX_PAGE_SIZE, Page, PgTenantStore, RegistryColumns,
    RegistryTable, TenantStore, TenantUpdate,
};
pub use crate::strategy::row_level as rls;
pub use crate::tenant::{
    MAX_TENANT_ID_LEN, NewTenant, Placement, Strategy, Tenant, TenantId, TenantStatus,
};
pub use crate::union_view::{UNION_VIEW_SCHEMA, UnionView};

/// The registry's change-notification channel; see [`RegistryTable::ddl`].
pub use crate::store::CHANGES_CHANNEL;

/// The sqlx this crate is built with, so users get the matching version.
pub use sqlx;

/// What hidra's own macros name; not public API.
#[doc(hidden)]
pub mod __private {
    pub use futures_util::future::BoxFuture;
    pub use futures_util::stream::BoxStream;
}
