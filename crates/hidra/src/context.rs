//! The task-local "current tenant", for code that does not pass the tenant
//! explicitly (background jobs, deep helpers, log fields).
//!
//! [`scope`] runs a future with a current tenant; [`current`] reads it.
//!
//! A task spawned with `tokio::spawn` does **not** inherit the current tenant:
//! task-locals belong to one task, and silently carrying a tenant into work that
//! outlives the request would be an isolation hazard. Carry it on purpose with
//! [`spawn`] (or [`propagate`] for a `JoinSet` or another executor):
//!
//! ```
//! # async fn run(tenant: hidra::Tenant) {
//! let job = hidra::context::scope(tenant, async {
//!     // ...
//!     let carried = hidra::context::spawn(async {
//!         assert!(hidra::context::current().is_some());
//!     });
//!     carried.await.unwrap();
//!     let plain = tokio::spawn(async {
//!         assert!(hidra::context::current().is_none());
//!     });
//!     plain.await.unwrap();
//! });
//! job.await;
//! # }
//! ```
//!
//! A carried task still runs on its own: it does not see the rows of a
//! transaction its request has not committed yet (the web layer commits a
//! `TenantTx` after the handler returns). Commit first, or hand the task the
//! data it needs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::tenant::{Tenant, TenantId};

tokio::task_local! {
    static CURRENT: Arc<Tenant>;
}

/// Runs `fut` with `tenant` as the current tenant of this task.
///
/// The returned future is a named type, [`Scoped`], so that a hand-written
/// future (a tower service's, say) can hold it without boxing.
pub fn scope<F: Future>(tenant: impl Into<Arc<Tenant>>, fut: F) -> Scoped<F> {
    Scoped {
        inner: CURRENT.scope(tenant.into(), fut),
    }
}

/// Runs `f` with `tenant` as the current tenant, synchronously: for work
/// done before a future exists, such as a tower service's `call`.
pub fn sync_scope<R>(tenant: impl Into<Arc<Tenant>>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(tenant.into(), f)
}

pin_project_lite::pin_project! {
    /// The future of [`scope`]: `F`, run with a current tenant.
    pub struct Scoped<F: Future> {
        #[pin]
        inner: tokio::task::futures::TaskLocalFuture<Arc<Tenant>, F>,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F: Future> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped").finish_non_exhaustive()
    }
}

/// The current tenant of this task, if it runs inside [`scope`].
pub fn current() -> Option<Arc<Tenant>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// The id of the current tenant, if any.
pub fn current_id() -> Option<TenantId> {
    CURRENT.try_with(|t| t.id.clone()).ok()
}

/// Wraps `fut` so that it runs with the current tenant of the *calling* task
/// (or none), for handing to `tokio::spawn`, a `JoinSet` or another executor.
pub fn propagate<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let tenant = current();
    async move {
        match tenant {
            Some(t) => CURRENT.scope(t, fut).await,
            None => fut.await,
        }
    }
}

/// Spawns `fut` on the Tokio runtime with the current tenant of the *calling*
/// task (or none): `tokio::spawn(propagate(fut))`.
///
/// # Panics
///
/// Outside a Tokio runtime, as `tokio::spawn` does.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(propagate(fut))
}
