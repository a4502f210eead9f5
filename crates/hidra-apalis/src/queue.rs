//! The enqueue side: [`TenantJobs`] (the storage on Hidra's database) and
//! its typed queues, [`TenantQueue`].

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{PollWith, StreamStrategy, TaskBuilder, TaskId};
use apalis_postgres::{Config, PgTask, PostgresStorage, Pubsub};
use hidra::{Hidra, ListTenants, MAX_PAGE_SIZE, Tenant, TenantId, TenantStatus, TenantTx};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::error::{Error, Result};
use crate::job::TenantJob;
use crate::layer::TenantJobLayer;
use crate::tenants::Tenants;

/// The apalis backend of a [`TenantQueue`]: apalis-postgres storage of
/// [`TenantJob`]s, woken by its `LISTEN`er when a job is enqueued.
pub type TenantStorage<T> = PollWith<PostgresStorage<TenantJob<T>>, StreamStrategy<Pubsub>>;

/// Connections of the pool [`TenantJobs::new`] opens.
const POOL_SIZE: u32 = 10;

/// Tenant-aware jobs on apalis-postgres, in the database Hidra serves.
///
/// One per application, cheap to clone. It owns a small pool of its own on
/// Hidra's shared database ([`Hidra::connect_options`]), used by the apalis
/// workers and to enqueue, and the workers' registry cache. From it come the
/// typed queues ([`queue`](Self::queue)) and the worker middleware
/// ([`layer`](Self::layer)).
///
/// ```no_run
/// # async fn run(hidra: hidra::Hidra) -> hidra_apalis::Result<()> {
/// let jobs = hidra_apalis::TenantJobs::new(&hidra);
/// jobs.install().await?; // apalis-postgres's tables, once per database
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantJobs {
    inner: Arc<Inner>,
}

struct Inner {
    hidra: Hidra,
    pool: PgPool,
    tenants: Tenants,
}

/// Configures a [`TenantJobs`].
#[derive(Debug)]
#[must_use]
pub struct TenantJobsBuilder {
    hidra: Hidra,
    pool: Option<PgPool>,
    cache_ttl: Duration,
}

impl TenantJobsBuilder {
    /// The pool for apalis and for enqueueing, instead of one of 10
    /// connections opened on Hidra's shared database. It must be a pool on
    /// that same database: jobs enqueued in a tenant's transaction are
    /// written there. Each running worker keeps one of its connections for
    /// its `LISTEN`.
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// How long the workers keep a tenant's record (default 10 s). Changes
    /// the registry announces drop records sooner.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Builds it. Connections are opened when first needed.
    pub fn build(self) -> TenantJobs {
        let pool = self.pool.unwrap_or_else(|| {
            PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .connect_lazy_with(self.hidra.connect_options().clone())
        });
        TenantJobs {
            inner: Arc::new(Inner {
                tenants: Tenants::new(self.hidra.clone(), self.cache_ttl),
                hidra: self.hidra,
                pool,
            }),
        }
    }
}

impl TenantJobs {
    /// Jobs on `hidra`'s shared database, with a pool of 10 connections
    /// (each running worker keeps one for its `LISTEN`) and the default
    /// cache.
    pub fn new(hidra: &Hidra) -> Self {
        Self::builder(hidra).build()
    }

    /// Starts configuring jobs on `hidra`'s shared database.
    pub fn builder(hidra: &Hidra) -> TenantJobsBuilder {
        TenantJobsBuilder {
            hidra: hidra.clone(),
            pool: None,
            cache_ttl: Duration::from_secs(10),
        }
    }

    /// Creates or upgrades apalis-postgres's tables (schema `apalis`, and the
    /// `hstore` extension where it is missing) by running its migrations:
    /// the one call that does, on purpose, at startup or in a deploy step,
    /// like [`Hidra::install`]. Idempotent, and safe to run from several
    /// processes at once.
    ///
    /// `hstore` must be reachable from the tenants' `search_path` (Hidra's
    /// shared schemas, `public` by default) for
    /// [`push_in`](TenantQueue::push_in): leave it where this call creates it.
    pub async fn install(&self) -> Result<()> {
        const CONTEXT: &str = "installing apalis-postgres's tables";
        let database =
            |e: sqlx::Error| Error::storage(CONTEXT)(apalis_postgres::Error::Database(e));
        let mut conn = self.pool().acquire().await.map_err(database)?;
        // Its migrations create what may already be there: keep PostgreSQL's
        // "… already exists, skipping" notices out of every start's logs, as
        // `Hidra::install` does.
        sqlx::raw_sql("SET client_min_messages TO warning")
            .execute(&mut *conn)
            .await
            .map_err(database)?;
        let applied = PostgresStorage::<()>::migrations().run(&mut *conn).await;
        sqlx::raw_sql("RESET client_min_messages")
            .execute(&mut *conn)
            .await
            .map_err(database)?;
        applied.map_err(|e| database(sqlx::Error::Migrate(Box::new(e))))
    }

    /// The typed queue `name` (apalis's job type) of `T` jobs.
    pub fn queue<T>(&self, name: &str) -> TenantQueue<T> {
        TenantQueue {
            jobs: self.clone(),
            config: Config::default().queue(name),
            _job: PhantomData,
        }
    }

    /// The worker middleware over this registry cache, with the default
    /// policies; see [`TenantJobLayer`].
    pub fn layer(&self) -> TenantJobLayer {
        TenantJobLayer::new(self)
    }

    /// The tenant with this id (any status) as the workers see it: from their
    /// cache, or the registry.
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>> {
        self.inner.tenants.get(id).await
    }

    /// Drops the workers' cached record of `id`, for a change made without
    /// the registry's notification.
    pub fn invalidate(&self, id: &TenantId) {
        self.inner.tenants.invalidate(id);
    }

    /// The Hidra handle.
    pub fn hidra(&self) -> &Hidra {
        &self.inner.hidra
    }

    /// The pool apalis and enqueueing use.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
}

impl fmt::Debug for TenantJobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantJobs")
            .field("tenants", &self.inner.tenants)
            .finish_non_exhaustive()
    }
}

/// Where one job stands, as apalis-postgres records it; see
/// [`TenantQueue::status`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's id.
    pub id: String,
    /// apalis's status: `Pending`, `Queued`, `Running`, `Done`, `Failed`,
    /// `Killed`.
    pub status: String,
    /// How many times it ran.
    pub attempts: i32,
    /// What its last run returned (its error, for a failed run).
    pub last_result: Option<serde_json::Value>,
}

/// One apalis queue of `T` jobs, each carrying its tenant.
///
/// Enqueue with [`push`](Self::push) (the current tenant),
/// [`push_for`](Self::push_for) (a named one), [`push_in`](Self::push_in)
/// (in a tenant's transaction) or [`push_to_all`](Self::push_to_all) (every
/// active tenant); process with a worker on [`storage`](Self::storage) under
/// [`TenantJobs::layer`].
pub struct TenantQueue<T> {
    jobs: TenantJobs,
    config: Config,
    _job: PhantomData<fn(T) -> T>,
}

impl<T> Clone for TenantQueue<T> {
    fn clone(&self) -> Self {
        TenantQueue {
            jobs: self.jobs.clone(),
            config: self.config.clone(),
            _job: PhantomData,
        }
    }
}

impl<T> fmt::Debug for TenantQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantQueue")
            .field("name", &self.name())
            .field("job", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T> TenantQueue<T> {
    /// The queue's name (apalis's job type).
    pub fn name(&self) -> &str {
        self.config.queue.as_ref()
    }

    /// apalis-postgres's settings for this queue's workers (batch size,
    /// heartbeat, how many missed heartbeats make a worker dead and its jobs
    /// orphaned); the queue keeps its name. Keep `persist_results` on (the
    /// default): refused jobs are settled through it.
    pub fn with_config(self, config: Config) -> Self {
        let name = self.name().to_owned();
        TenantQueue {
            config: config.queue(name),
            ..self
        }
    }

    /// Where the job `job_id` of this queue stands, if it is `tenant`'s: a
    /// job of another tenant, or of an earlier incarnation of this one, is
    /// as unknown as a missing one (`None`), so an id guessed or leaked
    /// reveals nothing.
    pub async fn status(&self, tenant: &Tenant, job_id: &str) -> Result<Option<JobStatus>> {
        let row: Option<(String, String, i32, Option<serde_json::Value>)> = sqlx::query_as(
            "SELECT id, status, attempts, last_result FROM apalis.jobs \
             WHERE id = $1 AND job_type = $2 \
             AND convert_from(job, 'UTF8')::jsonb ->> 'tenant' = $3 \
             AND (convert_from(job, 'UTF8')::jsonb ->> 'incarnation')::bigint = $4",
        )
        .bind(job_id)
        .bind(self.name())
        .bind(tenant.id.as_str())
        .bind(tenant.incarnation())
        .fetch_optional(self.jobs.pool())
        .await
        .map_err(Error::db("reading a job's status"))?;
        Ok(row.map(|(id, status, attempts, last_result)| JobStatus {
            id,
            status,
            attempts,
            last_result,
        }))
    }

    /// The backend for a worker of this queue. It is woken by apalis's
    /// `NOTIFY` on every enqueued job, on a `LISTEN` connection it keeps
    /// from [`TenantJobs::pool`] while the worker runs, and polls at each
    /// heartbeat besides (jobs put back for later are found then).
    pub fn storage(&self) -> TenantStorage<T> {
        PostgresStorage::new(self.jobs.pool())
            .with_config(self.config.clone())
            .with_pubsub()
    }
}

impl<T: Serialize> TenantQueue<T> {
    /// Enqueues `job` for the current tenant ([`hidra::context::current`]):
    /// inside a request under `TenantLayer`, the request's tenant.
    ///
    /// The job is committed at once; to enqueue it only if a tenant
    /// transaction commits, use [`push_in`](Self::push_in).
    pub async fn push(&self, job: T) -> Result<TaskId> {
        let tenant = hidra::context::current().ok_or(Error::NoCurrentTenant)?;
        self.push_for(&tenant, job).await
    }

    /// Enqueues `job` for `tenant`.
    pub async fn push_for(&self, tenant: &Tenant, job: T) -> Result<TaskId> {
        let (id, task) = task(TenantJob::new(tenant, job))?;
        self.insert(vec![task]).await?;
        Ok(id)
    }

    /// Enqueues `job` for `tx`'s tenant, in `tx`: the job exists if, and
    /// once, the transaction commits, and workers hear of it then.
    ///
    /// The row is written by apalis-postgres's own statement, through `tx`'s
    /// executor. That statement names apalis's table with its schema; only
    /// the `hstore` type it binds is found through the tenant's
    /// `search_path`, which ends with Hidra's shared schemas (see
    /// [`TenantJobs::install`]). A tenant in its own database, or on a
    /// registered server, has no job table at hand: [`Error::OwnDatabase`].
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize)] struct Confirm { order: i64 }
    /// # async fn run(hidra: hidra::Hidra, tenant: hidra::Tenant, confirmations: hidra_apalis::TenantQueue<Confirm>) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = hidra.begin(&tenant).await?;
    /// let (order,): (i64,) = sqlx::query_as("INSERT INTO orders (total) VALUES (42) RETURNING id")
    ///     .fetch_one(&mut tx)
    ///     .await?;
    /// confirmations.push_in(&mut tx, Confirm { order }).await?;
    /// tx.commit().await?; // no order, no confirmation
    /// # Ok(()) }
    /// ```
    pub async fn push_in(&self, tx: &mut TenantTx, job: T) -> Result<TaskId> {
        let id = tx.tenant().clone();
        let tenant = match hidra::context::current() {
            Some(current) if current.id == id => current,
            _ => self
                .jobs
                .tenant(&id)
                .await?
                .ok_or_else(|| Error::UnknownTenant(id.clone()))?,
        };
        // The job table is in the shared database of the control server.
        if !tenant.placement.shares_control_database() {
            return Err(Error::OwnDatabase(id));
        }
        let (task_id, task) = task(TenantJob::new(&tenant, job))?;
        apalis_postgres::queries::push_tasks(tx, self.name(), vec![task])
            .await
            .map_err(Error::storage("enqueueing a job in a tenant transaction"))?;
        Ok(task_id)
    }

    /// Enqueues `job` for each of `tenants`, in one statement.
    async fn push_for_each(&self, tenants: &[Tenant], job: &T) -> Result<u64>
    where
        T: Clone,
    {
        let tasks = tenants
            .iter()
            .map(|tenant| task(TenantJob::new(tenant, job.clone())).map(|(_, task)| task))
            .collect::<Result<Vec<_>>>()?;
        let n = tasks.len() as u64;
        if n > 0 {
            self.insert(tasks).await?;
        }
        Ok(n)
    }

    /// Writes `tasks` in one statement.
    async fn insert(&self, tasks: Vec<PgTask>) -> Result<()> {
        let mut conn = self
            .jobs
            .pool()
            .acquire()
            .await
            .map_err(Error::db("enqueueing jobs"))?;
        apalis_postgres::queries::push_tasks(&mut *conn, self.name(), tasks)
            .await
            .map_err(Error::storage("enqueueing jobs"))
    }
}

impl<T: Serialize + Clone + Send + Sync + 'static> TenantQueue<T> {
    /// Enqueues `job` once for every active tenant: "a job for all tenants"
    /// (a nightly report, a per-tenant cleanup). Await it, after setting the
    /// [`page_size`](FanOut::page_size) and
    /// [`concurrency`](FanOut::concurrency) if the defaults do not fit; it
    /// returns how many jobs it enqueued.
    ///
    /// ```no_run
    /// # #[derive(Clone, serde::Serialize)] struct NightlyReport;
    /// # async fn run(reports: hidra_apalis::TenantQueue<NightlyReport>) -> hidra_apalis::Result<()> {
    /// let enqueued = reports.push_to_all(NightlyReport).concurrency(2).await?;
    /// # let _ = enqueued; Ok(()) }
    /// ```
    ///
    /// How many of these jobs run at once is the workers' business
    /// (`WorkerBuilder::concurrency`, and each tenant's connection cap).
    pub fn push_to_all(&self, job: T) -> FanOut<T> {
        FanOut {
            queue: self.clone(),
            job,
            page_size: 100,
            concurrency: 4,
        }
    }
}

/// A job for every active tenant, being enqueued: see
/// [`TenantQueue::push_to_all`].
///
/// Tenants are read from the registry a page at a time (keyset pages, in id
/// order) and each page's jobs are written in one statement; at most
/// [`concurrency`](Self::concurrency) pages are written at once, while the
/// next pages are read. It is not all or nothing: on an error, the pages
/// written before it stay enqueued.
#[must_use = "a fan-out does nothing until awaited"]
pub struct FanOut<T> {
    queue: TenantQueue<T>,
    job: T,
    page_size: u32,
    concurrency: usize,
}

impl<T> FanOut<T> {
    /// Tenants per page, and jobs per statement (default 100, at most
    /// [`MAX_PAGE_SIZE`]).
    pub fn page_size(mut self, tenants: u32) -> Self {
        self.page_size = tenants.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// Pages written at once (default 4, at least 1).
    pub fn concurrency(mut self, pages: usize) -> Self {
        self.concurrency = pages.max(1);
        self
    }
}

impl<T> fmt::Debug for FanOut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field("queue", &self.queue.name())
            .field("page_size", &self.page_size)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + Clone + Send + Sync + 'static> IntoFuture for FanOut<T> {
    type Output = Result<u64>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<u64>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

impl<T: Serialize + Clone + Send + Sync + 'static> FanOut<T> {
    async fn run(self) -> Result<u64> {
        let FanOut {
            queue,
            job,
            page_size,
            concurrency,
        } = self;
        let mut writes = tokio::task::JoinSet::new();
        let mut enqueued = 0;
        let mut page = Some(ListTenants::first(page_size).status(TenantStatus::Active));
        while let Some(list) = page.take() {
            // Pages one after the other (each starts after the last one's id),
            // while up to `concurrency` earlier ones are being written.
            let found = queue.jobs.hidra().list(&list).await?;
            page = found.next.map(|after| list.after(after));
            if writes.len() >= concurrency {
                enqueued += joined(writes.join_next().await)?;
            }
            let (queue, job) = (queue.clone(), job.clone());
            writes.spawn(async move { queue.push_for_each(&found.items, &job).await });
        }
        while let Some(written) = writes.join_next().await {
            enqueued += joined(Some(written))?;
        }
        tracing::debug!(
            queue = queue.name(),
            enqueued,
            "enqueued a job for every active tenant"
        );
        Ok(enqueued)
    }
}

/// The count of a finished page write (re-raising its panic).
fn joined(
    written: Option<std::result::Result<Result<u64>, tokio::task::JoinError>>,
) -> Result<u64> {
    match written {
        Some(Ok(count)) => count,
        Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        None => Ok(0),
    }
}

/// `job` as an apalis-postgres task (JSON, as its codec writes it), with a
/// new id.
fn task<T: Serialize>(job: TenantJob<T>) -> Result<(TaskId, PgTask)> {
    let bytes = serde_json::to_vec(&job).map_err(Error::Encode)?;
    let id = TaskId::from_ulid(ulid::Ulid::generate());
    let task = TaskBuilder::new(bytes).task_id(id.clone()).build();
    Ok((id, task))
}
