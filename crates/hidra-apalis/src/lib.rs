//! Tenant-aware background jobs for Hidra, on [apalis](https://docs.rs/apalis)
//! 1.0 and [apalis-postgres](https://docs.rs/apalis-postgres) in the database
//! Hidra serves.
//!
//! Background jobs are where multi-tenant code most often loses its tenant: a
//! job enqueued by a request runs later, in another task, and unless the
//! tenant travels with it, it runs on the shared schema or on whichever
//! tenant the worker served last. Here the tenant travels with the job and
//! the worker runs it as that tenant, or not at all:
//!
//! - **Enqueue**: a [`TenantQueue<T>`] stores [`TenantJob<T>`] envelopes, so
//!   no job is enqueued without a tenant. [`push`](TenantQueue::push) takes
//!   the current tenant ([`hidra::context::current`], set for every request
//!   by `hidra-axum`'s `TenantLayer`); [`push_for`](TenantQueue::push_for)
//!   names one; [`push_in`](TenantQueue::push_in) writes the job in a
//!   tenant's [`TenantTx`](hidra::TenantTx), so that it exists only if the
//!   transaction commits; [`push_to_all`](TenantQueue::push_to_all) enqueues
//!   one job per active tenant.
//! - **Run**: [`TenantJobLayer`] (worker middleware, a tower layer) looks the
//!   job's tenant up through a registry cache, runs the job inside
//!   [`hidra::context::scope`] of that tenant with a [`TenantJobContext`]
//!   whose connections are bound to it, and refuses jobs of tenants that are
//!   suspended or gone, as configured ([`Refusal`]: retry later, drop, or
//!   dead-letter).
//! - **Storage**: apalis-postgres's tables (schema `apalis`) in Hidra's shared
//!   database, created by [`TenantJobs::install`]; workers that die mid-job
//!   leave their jobs to be taken over once their heartbeats stop
//!   (apalis-postgres's orphan recovery, tuned with
//!   [`TenantQueue::with_config`]).
//!
//! # Building with `DATABASE_URL` set
//!
//! apalis-postgres checks its SQL at compile time with sqlx's macros, against
//! the query data it ships. When `DATABASE_URL` is set while building (it is
//! for most database tests), sqlx checks against that database instead, which
//! has no apalis tables yet, and the build fails with `relation
//! "apalis.jobs" does not exist`. Build with `SQLX_OFFLINE=true`, or set it
//! for the project in `.cargo/config.toml` as this workspace does:
//!
//! ```toml
//! [env]
//! SQLX_OFFLINE = { value = "true", force = true }
//! ```
//!
//! # Usage
//!
//! ```no_run
//! use apalis::prelude::*;
//! use hidra_apalis::{TenantJob, TenantJobContext, TenantJobs};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct ConfirmOrder {
//!     order_id: i64,
//! }
//!
//! // A job function: the envelope first, then anything apalis can extract.
//! async fn confirm_order(
//!     job: TenantJob<ConfirmOrder>,
//!     ctx: TenantJobContext,
//! ) -> Result<(), BoxDynError> {
//!     let mut tx = ctx.begin().await?; // the job's tenant's schema
//!     sqlx::query("UPDATE orders SET confirmed = true WHERE id = $1")
//!         .bind(job.order_id)
//!         .execute(&mut tx)
//!         .await?;
//!     tx.commit().await?;
//!     Ok(())
//! }
//!
//! # async fn run(hidra: hidra::Hidra, tenant: hidra::Tenant) -> Result<(), Box<dyn std::error::Error>> {
//! let jobs = TenantJobs::new(&hidra);
//! jobs.install().await?;
//! let confirmations = jobs.queue::<ConfirmOrder>("confirm-order");
//!
//! // In a request handler (the current tenant), or naming the tenant:
//! confirmations.push_for(&tenant, ConfirmOrder { order_id: 7 }).await?;
//!
//! // A worker: apalis's builder, with the tenant layer.
//! WorkerBuilder::new("confirm-order-1")
//!     .backend(confirmations.storage())
//!     .layer(jobs.layer())
//!     .build(confirm_order)
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! `examples/jobs.rs` runs this end to end against a throw-away database.
//!
//! # Guarantees
//!
//! - A job runs only as the tenant recorded in it, and only while that tenant
//!   is active: its [`TenantJobContext`] and the current tenant of its task
//!   are that tenant, and a job refused for its tenant's status never reaches
//!   the job function.
//! - A tenant deleted and registered again under the same id is another
//!   tenant: the jobs of the first are refused as gone (the envelope records
//!   the incarnation).
//! - A suspension or deletion reaches the workers' cache through the
//!   registry's change notifications, not after the cache's TTL.
//! - A job enqueued with [`push_in`](TenantQueue::push_in) in a transaction
//!   that rolls back does not exist.
//!
//! A job still runs *at least* once, as apalis-postgres guarantees: a worker
//! killed mid-job leaves the job to run again. Make jobs idempotent, or have
//! them record their effect in the tenant's transaction.
//!
//! # Feature flags
//!
//! None: the crate adds apalis (no default features: no runtime, no TLS of its
//! own) and apalis-postgres (its `migrate` feature only) to Hidra.

mod context;
mod error;
mod job;
mod layer;
mod queue;
mod rows;
mod tenants;

pub use crate::context::TenantJobContext;
pub use crate::error::{Error, Result};
pub use crate::job::TenantJob;
pub use crate::layer::{Refusal, TenantJobLayer, TenantJobService};
pub use crate::queue::{
    FanOut, JobStatus, TenantJobs, TenantJobsBuilder, TenantQueue, TenantStorage,
};

/// The apalis this crate is built with, for the worker builder
/// (`apalis::prelude::*`).
pub use apalis;
/// The apalis-postgres this crate is built with, for its
/// [`Config`](apalis_postgres::Config).
pub use apalis_postgres;
