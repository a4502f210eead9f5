//! SeaORM on Hidra: entities, `ActiveModel`s, raw statements and transactions
//! that run as one tenant, through Hidra's per-tenant statements.
//!
//! SeaORM methods take any [`sea_orm::ConnectionTrait`]; this crate gives
//! three, each bound to one tenant:
//!
//! - [`TenantDatabase`]: the tenant's database, as SeaORM's
//!   `DatabaseConnection` is the whole database's; each statement checks a
//!   tenant connection out of Hidra's pool, `begin` starts a tenant
//!   transaction. With feature `axum` it is an extractor for the request's
//!   tenant.
//! - [`TenantTransaction`]: a tenant transaction; nested ones are savepoints.
//! - [`TenantConnection`]: a `hidra::TenantConn` or `hidra::TenantTx` you
//!   already hold (for example the request transaction `hidra-axum` settles).
//!
//! Every statement goes through `&mut TenantConn` / `&mut TenantTx`, Hidra's
//! [`sqlx::Executor`]s, so SeaORM code keeps every guarantee they give: the
//! connection is bound to the tenant for the checkout and nothing else,
//! prepared statements are the tenant's own (tenants at different migration
//! versions never share a plan), and a cancelled or panicking request leaves
//! no bound connection behind.
//!
//! ```no_run
//! use hidra_sea_orm::TenantDatabase;
//! use sea_orm::entity::prelude::*;
//!
//! mod customer {
//!     use sea_orm::entity::prelude::*;
//!
//!     #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
//!     #[sea_orm(table_name = "customers")]
//!     pub struct Model {
//!         #[sea_orm(primary_key)]
//!         pub id: i64,
//!         pub name: String,
//!     }
//!
//!     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//!     pub enum Relation {}
//!
//!     impl ActiveModelBehavior for ActiveModel {}
//! }
//!
//! # async fn run(hidra: hidra::Hidra, acme: hidra::Tenant) -> Result<(), DbErr> {
//! let db = TenantDatabase::new(hidra, acme);
//! let theirs: Vec<customer::Model> = customer::Entity::find().all(&db).await?;
//! # Ok(()) }
//! ```
//!
//! Not supported yet: SeaORM's streaming (`stream()`, `StreamTrait`); page
//! through large results with `paginate` instead.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
mod axum;
mod connection;
mod database;
mod error;
mod run;
mod transaction;

pub use crate::connection::TenantConnection;
pub use crate::database::TenantDatabase;
pub use crate::error::is_tenant_busy;
pub use crate::run::TenantExecutor;
pub use crate::transaction::TenantTransaction;

/// The SeaORM this crate is built with.
pub use sea_orm;
