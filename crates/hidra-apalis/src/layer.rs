//! The worker side: [`TenantJobLayer`] runs each job as its tenant, or
//! refuses it.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{AbortError, BoxDynError, RetryAfterError, Status, Task};
use futures_util::future::BoxFuture;
use hidra::{Tenant, TenantStatus};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::context::TenantJobContext;
use crate::error::Error;
use crate::job::TenantJob;
use crate::queue::TenantJobs;
use crate::rows;

/// How long a job waits before it is tried again when its tenant could not
/// be looked up (the registry did not answer).
const LOOKUP_RETRY: Duration = Duration::from_secs(5);

/// What a worker does with a job it does not run because of its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Put the job back, to be tried again after this long. The wait does
    /// not use one of its attempts: a job of a tenant suspended for a month
    /// is still there when it comes back.
    RetryAfter(Duration),
    /// Delete the job (a warning is logged).
    Drop,
    /// Keep the job, with apalis's status `Killed` and the refusal as its
    /// result, never to be retried: a dead letter to inspect.
    DeadLetter,
}

/// Worker middleware that runs each [`TenantJob`] as its tenant.
///
/// For each job it looks the job's tenant up through the registry cache of
/// its [`TenantJobs`], then:
///
/// - tenant **active** (and the incarnation the job was enqueued for): runs
///   the job inside [`hidra::context::scope`] of that tenant, in a
///   `tenant_job` span with the tenant's id, with a [`TenantJobContext`] for
///   the job function to extract;
/// - tenant **suspended** (or still provisioning): applies
///   [`on_unavailable`](Self::on_unavailable), by default
///   [`Refusal::RetryAfter`] one minute;
/// - tenant **gone** (not registered, being deleted, or deleted and
///   registered again under the same id since the job was enqueued): applies
///   [`on_gone`](Self::on_gone), by default [`Refusal::DeadLetter`].
///
/// A refused job is never run, as its tenant or any other: the job function
/// is not called. Its result (see [`Error::is_refusal`]) is recorded by
/// apalis-postgres like any job's, which needs its default
/// `persist_results(true)`.
///
/// ```no_run
/// use std::time::Duration;
/// use apalis::prelude::*;
/// use hidra_apalis::{Refusal, TenantJob, TenantJobContext, TenantJobs};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Email { to: String }
///
/// async fn send(email: TenantJob<Email>, ctx: TenantJobContext) -> Result<(), BoxDynError> {
///     let mut conn = ctx.acquire().await?;
///     # let _ = (&mut conn, &email.to);
///     Ok(())
/// }
///
/// # async fn run(hidra: hidra::Hidra) -> Result<(), Box<dyn std::error::Error>> {
/// let jobs = TenantJobs::new(&hidra);
/// let emails = jobs.queue::<Email>("emails");
/// let worker = WorkerBuilder::new("emails-1")
///     .backend(emails.storage())
///     .layer(jobs.layer().on_unavailable(Refusal::RetryAfter(Duration::from_secs(600))))
///     .build(send);
/// worker.run().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantJobLayer {
    jobs: TenantJobs,
    on_unavailable: Refusal,
    on_gone: Refusal,
}

impl TenantJobLayer {
    /// The layer over `jobs`' registry cache, with the default policies.
    pub fn new(jobs: &TenantJobs) -> Self {
        TenantJobLayer {
            jobs: jobs.clone(),
            on_unavailable: Refusal::RetryAfter(Duration::from_secs(60)),
            on_gone: Refusal::DeadLetter,
        }
    }

    /// What to do with a job whose tenant is suspended or still
    /// provisioning (default: [`Refusal::RetryAfter`] one minute).
    pub fn on_unavailable(mut self, refusal: Refusal) -> Self {
        self.on_unavailable = refusal;
        self
    }

    /// What to do with a job whose tenant is gone (default:
    /// [`Refusal::DeadLetter`]).
    pub fn on_gone(mut self, refusal: Refusal) -> Self {
        self.on_gone = refusal;
        self
    }

    /// The job's tenant, if it is active and the one the job was made for.
    async fn admit<T>(&self, job: &TenantJob<T>) -> Result<Arc<Tenant>, Error> {
        let id = job.tenant();
        let gone = |reason| Error::TenantGone {
            tenant: id.clone(),
            reason,
        };
        let tenant = self
            .jobs
            .tenant(id)
            .await?
            .ok_or_else(|| gone("is not registered"))?;
        if job
            .incarnation()
            .is_some_and(|made_for| made_for != tenant.incarnation())
        {
            return Err(gone(
                "was deleted and registered again since the job was enqueued",
            ));
        }
        match tenant.status {
            TenantStatus::Active => Ok(tenant),
            TenantStatus::Deleting => Err(gone("is being deleted")),
            status => Err(Error::TenantUnavailable {
                tenant: id.clone(),
                status,
            }),
        }
    }

    /// Settles a job refused with `error` and returns the task's error.
    async fn refuse<A>(&self, task: &Task<A>, error: Error) -> BoxDynError {
        let id = task.task_id().map(ToString::to_string).unwrap_or_default();
        let refusal = match &error {
            Error::TenantUnavailable { .. } => self.on_unavailable,
            Error::TenantGone { .. } => self.on_gone,
            // The registry did not answer: not a refusal, try again soon.
            _ => Refusal::RetryAfter(LOOKUP_RETRY),
        };
        tracing::warn!(
            task = %id,
            ?refusal,
            error = &error as &dyn std::error::Error,
            "not running a tenant job"
        );
        let settled = match refusal {
            Refusal::RetryAfter(delay) => {
                rows::reschedule(self.jobs.pool(), &id, delay, &error.to_string())
                    .await
                    .map(|()| (Status::Pending, RetryAfterError::new(error, delay).into()))
            }
            Refusal::Drop => rows::delete(self.jobs.pool(), &id)
                .await
                .map(|()| (Status::Killed, AbortError::new(error).into())),
            Refusal::DeadLetter => Ok((Status::Killed, AbortError::new(error).into())),
        };
        // Which status apalis-postgres records (the job function, whose
        // wrapper sets it otherwise, is not called).
        let (status, error) = settled.unwrap_or_else(|failed| (Status::Failed, failed.into()));
        task.raw_status().store(status);
        error
    }
}

impl fmt::Debug for TenantJobLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantJobLayer")
            .field("on_unavailable", &self.on_unavailable)
            .field("on_gone", &self.on_gone)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for TenantJobLayer {
    type Service = TenantJobService<S>;

    fn layer(&self, inner: S) -> TenantJobService<S> {
        TenantJobService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of a [`TenantJobLayer`].
#[derive(Clone)]
pub struct TenantJobService<S> {
    inner: S,
    layer: TenantJobLayer,
}

impl<S> TenantJobService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for TenantJobService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantJobService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, T> Service<Task<TenantJob<T>>> for TenantJobService<S>
where
    S: Service<Task<TenantJob<T>>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    T: Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut task: Task<TenantJob<T>>) -> Self::Future {
        // The clone may not be ready: call the one that is.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let tenant = match layer.admit(&task.args).await {
                Ok(tenant) => tenant,
                Err(refused) => return Err(layer.refuse(&task, refused).await),
            };
            let span = tracing::info_span!("tenant_job", tenant = %tenant.id);
            let context = TenantJobContext::new(layer.jobs.hidra().clone(), Arc::clone(&tenant));
            task.inject_data(context);
            let run = async move { inner.call(task).await.map_err(Into::into) };
            hidra::context::scope(tenant, run).instrument(span).await
        })
    }
}
