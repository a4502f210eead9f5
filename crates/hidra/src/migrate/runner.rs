//! The fan-out runner: plan with a handful of queries, apply with bounded
//! concurrency, one lock and one round trip per tenant, report per tenant.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::Row;

use super::batch::{self, Batch};
use super::{Migration, Migrations};
use crate::error::{Error, Result, db_code, sqlstate};
use crate::hidra::Hidra;
use crate::scope::Pooled;
use crate::sql::{self, Ident};
use crate::tenant::{TenantId, TenantStatus};

/// One schema the runner migrates: a tenant's, or a spare of the warm pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Target {
    /// The schema.
    pub schema: String,
    /// The tenant owning it; `None` for a spare schema or the template database.
    pub tenant: Option<TenantId>,
    /// The database holding it, for database-per-tenant tenants (`None`: the
    /// shared database).
    pub database: Option<String>,
    /// The registered server holding it (`None`: the control server).
    pub server: Option<String>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.tenant, &self.database) {
            (Some(id), _) => write!(f, "{id}")?,
            (None, Some(db)) => write!(f, "database {db}")?,
            (None, None) => write!(f, "spare {}", self.schema)?,
        }
        match &self.server {
            Some(server) => write!(f, " on server {server}"),
            None => Ok(()),
        }
    }
}

/// A schema with migrations to apply.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PlannedTarget {
    /// The schema.
    pub target: Target,
    /// Its current version (0: none applied).
    pub version: i64,
    /// Versions still to apply, in order.
    pub pending: Vec<i64>,
    /// What `hidra.schema_versions` says (`None`: no row yet).
    recorded: Option<i64>,
    /// The schema has no history table yet.
    no_history: bool,
}

/// What a run would do.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Plan {
    /// Schemas with pending migrations.
    pub pending: Vec<PlannedTarget>,
    /// Schemas already at the latest version.
    pub current: Vec<Target>,
    /// Schemas that cannot be migrated (edited migration, unknown version).
    pub refused: Vec<Failure>,
    /// The latest version.
    pub latest: i64,
}

/// A schema that failed, with why.
#[derive(Debug)]
#[non_exhaustive]
pub struct Failure {
    /// The schema.
    pub target: Target,
    /// Why.
    pub error: Error,
}

/// A schema a run migrated (or, on a dry run, would migrate).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migrated {
    /// The schema.
    pub target: Target,
    /// Its version before.
    pub from: i64,
    /// Its version after.
    pub to: i64,
}

/// The outcome of a run: every schema is in exactly one list.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RunSummary {
    /// Schemas migrated (or, on a dry run, that would be).
    pub migrated: Vec<Migrated>,
    /// Schemas already at the latest version.
    pub current: usize,
    /// Schemas that failed, each with its error.
    pub failed: Vec<Failure>,
    /// Nothing was applied.
    pub dry_run: bool,
    /// How long the run took.
    pub elapsed: Duration,
}

impl RunSummary {
    /// No schema failed.
    pub fn is_success(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would migrate"
        } else {
            "migrated"
        };
        write!(
            f,
            "{verb} {}, already current {}, failed {} ({:.2?})",
            self.migrated.len(),
            self.current,
            self.failed.len(),
            self.elapsed
        )?;
        for failure in &self.failed {
            write!(f, "\n  {}: {}", failure.target, failure.error)?;
            let mut source = std::error::Error::source(&failure.error);
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
        }
        Ok(())
    }
}

/// Progress of a run, passed to [`MigrationRunner::on_progress`] after each schema.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Progress {
    /// Schemas to migrate in this run.
    pub total: usize,
    /// Schemas finished (migrated or failed).
    pub done: usize,
    /// Schemas failed so far.
    pub failed: usize,
    /// The schema just finished.
    pub target: Target,
}

/// Per schema: current version and pending count, for `migrate status`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The schema.
    pub target: Target,
    /// Its current version (0: none).
    pub version: i64,
    /// Migrations still to apply.
    pub pending: usize,
    /// Why it cannot be migrated, if so (edited migration, unknown version).
    pub problem: Option<String>,
}

type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Applies pending tenant migrations to every tenant (or a subset); see the
/// [module docs](crate::migrate). Made by [`Hidra::migrator`].
#[must_use]
pub struct MigrationRunner {
    hidra: Hidra,
    concurrency: usize,
    only: Option<Vec<TenantId>>,
    dry_run: bool,
    progress: Option<ProgressFn>,
}

impl fmt::Debug for MigrationRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrationRunner")
            .field("concurrency", &self.concurrency)
            .field("only", &self.only)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

impl Hidra {
    /// A runner for the tenant migrations, with concurrency defaulting to the
    /// pool size minus one (at least 1).
    pub fn migrator(&self) -> MigrationRunner {
        let max = self.pool_status().max as usize;
        MigrationRunner {
            hidra: self.clone(),
            concurrency: max.saturating_sub(1).max(1),
            only: None,
            dry_run: false,
            progress: None,
        }
    }

    /// Per schema (tenants and spares): current version and pending count.
    pub async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
        let plan = self.migrator().plan().await?;
        let mut out: Vec<MigrationStatus> = plan
            .current
            .into_iter()
            .map(|target| MigrationStatus {
                target,
                version: plan.latest,
                pending: 0,
                problem: None,
            })
            .chain(plan.pending.into_iter().map(|p| MigrationStatus {
                target: p.target,
                version: p.version,
                pending: p.pending.len(),
                problem: None,
            }))
            .chain(plan.refused.into_iter().map(|f| MigrationStatus {
                target: f.target,
                version: -1,
                pending: 0,
                problem: Some(f.error.to_string()),
            }))
            .collect();
        out.sort_by(|a, b| a.target.schema.cmp(&b.target.schema));
        Ok(out)
    }
}

impl MigrationRunner {
    /// How many schemas are migrated at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Only these tenants (spares are then skipped).
    pub fn tenants(mut self, ids: impl IntoIterator<Item = TenantId>) -> Self {
        self.only = Some(ids.into_iter().collect());
        self
    }

    /// Plan only: report what would be applied, apply nothing.
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }

    /// Called after each schema is done, from the runner's tasks.
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    fn migrations(&self) -> &Migrations {
        &self.hidra.inner.migrations.tenant
    }

    /// Decides what is pending for every target with a handful of queries: the
    /// registry (pages of 1,000), `hidra.schema_versions` and the spares.
    pub async fn plan(&self) -> Result<Plan> {
        let hidra = &self.hidra;
        let migrations = self.migrations();
        let mut conn = hidra.acquire_shared().await?;
        hidra.ensure_internal(&mut conn).await?;

        let mut targets = Vec::new();
        match &self.only {
            Some(ids) => {
                for id in ids {
                    let t = hidra
                        .inner
                        .registry
                        .store
                        .get(&mut conn, id)
                        .await?
                        .ok_or_else(|| Error::NotFound(id.clone()))?;
                    targets.push(t);
                }
            }
            None => {
                targets = crate::store::list_all(&hidra.inner.registry.store, &mut conn).await?
            }
        }
        let mut all: Vec<Target> = targets
            .into_iter()
            .filter(|t| {
                t.placement.has_own_tables()
                    && matches!(t.status, TenantStatus::Active | TenantStatus::Suspended)
            })
            .map(|t| Target {
                schema: t.placement.schema,
                tenant: Some(t.id),
                database: t.placement.database,
                server: t.placement.server,
            })
            .collect();
        if self.only.is_none() {
            let spares: Vec<String> =
                sqlx::query_scalar("SELECT schema_name FROM hidra.spare_schemas ORDER BY 1")
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(Error::db("listing spare schemas"))?;
            all.extend(spares.into_iter().map(|schema| Target {
                schema,
                tenant: None,
                database: None,
                server: None,
            }));
        }

        // For chosen tenants (an admin page, one tenant's run), only their
        // rows: not the whole fleet's bookkeeping.
        let chosen: Option<Vec<&str>> = self
            .only
            .as_ref()
            .map(|_| all.iter().map(|t| t.schema.as_str()).collect());
        let mut recorded: HashMap<Option<String>, Versions> = HashMap::new();
        recorded.insert(None, read_versions(&mut conn, chosen.as_deref()).await?);
        // Each registered server keeps the bookkeeping of its own tenants;
        // one that cannot be read fails its tenants only.
        let mut servers: Vec<String> = all.iter().filter_map(|t| t.server.clone()).collect();
        servers.sort();
        servers.dedup();
        // One connection per server for the whole plan.
        let mut remotes: HashMap<String, crate::SharedConn> = HashMap::new();
        let mut down: HashMap<String, std::sync::Arc<Error>> = HashMap::new();
        for server in servers {
            let read = async {
                let home = hidra.home_of(Some(&server)).await?;
                let mut remote = hidra.acquire_internal_at(&home).await?;
                let versions = read_versions(&mut remote, chosen.as_deref()).await?;
                Ok::<_, Error>((remote, versions))
            };
            match read.await {
                Ok((remote, versions)) => {
                    recorded.insert(Some(server.clone()), versions);
                    remotes.insert(server, remote);
                }
                Err(e) => {
                    tracing::warn!(server = %server, error = %e, "cannot read a server's schema versions; its tenants are not migrated");
                    down.insert(server, std::sync::Arc::new(e));
                }
            }
        }

        let mut plan = Plan {
            latest: migrations.latest(),
            ..Plan::default()
        };
        for target in all {
            if let Some((server, e)) = target.server.as_ref().and_then(|s| down.get_key_value(s)) {
                let error = match crate::ServerName::new(server) {
                    Ok(server) => Error::ServerFailed {
                        server,
                        source: std::sync::Arc::clone(e),
                    },
                    Err(invalid) => invalid,
                };
                plan.refused.push(Failure { error, target });
                continue;
            }
            // A tenant database keeps its own bookkeeping: one round trip each.
            let mut own = match &target.database {
                Some(db) => {
                    let acquired = async {
                        let home = hidra.home_of(target.server.as_deref()).await?;
                        hidra.databases_at(&home).0.acquire(db).await
                    };
                    match acquired.await {
                        Ok(c) => Some(Pooled::Database(c)),
                        Err(error) => {
                            plan.refused.push(Failure { error, target });
                            continue;
                        }
                    }
                }
                None => None,
            };
            let recorded_here = match &mut own {
                Some(c) => recorded_state(c, &target.schema).await?,
                None => recorded
                    .get(&target.server)
                    .and_then(|r| r.get(&target.schema))
                    .cloned(),
            };
            let conn: &mut sqlx::PgConnection = match (&mut own, &target.server) {
                (Some(c), _) => c,
                (None, None) => &mut conn,
                (None, Some(server)) => remotes
                    .get_mut(server)
                    .expect("a server that is not down was read above"),
            };
            let (version, digest, recorded_version, no_history) = match recorded_here {
                Some((v, d)) => (v, d, Some(v), false),
                // Not recorded: read the schema's own history (rare: schemas
                // made before hidra kept the summary, or by other means).
                None => {
                    let (v, d, has_table) = read_history(conn, &target.schema).await?;
                    (v, d, None, !has_table)
                }
            };
            match migrations.digest_at(version) {
                None => plan.refused.push(Failure {
                    error: Error::ChecksumMismatch {
                        schema: target.schema.clone(),
                        detail: format!(
                            "it is at version {version}, which is not among the migrations given (latest {})",
                            migrations.latest()
                        ),
                    },
                    target,
                }),
                Some(expected) if expected != digest.as_slice() => {
                    let detail = explain_mismatch(conn, &target.schema, migrations).await;
                    plan.refused.push(Failure {
                        error: Error::ChecksumMismatch {
                            schema: target.schema.clone(),
                            detail,
                        },
                        target,
                    });
                }
                Some(_) => {
                    let pending: Vec<i64> =
                        migrations.after(version).iter().map(|m| m.version).collect();
                    if pending.is_empty() {
                        plan.current.push(target);
                    } else {
                        plan.pending.push(PlannedTarget {
                            target,
                            version,
                            pending,
                            recorded: recorded_version,
                            no_history,
                        });
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Plans, then applies what is pending. Returns `Ok` with a summary even
    /// when some schemas failed: check [`RunSummary::is_success`].
    pub async fn run(self) -> Result<RunSummary> {
        let this = &self;
        let started = Instant::now();
        let plan = self.plan().await?;
        let mut summary = RunSummary {
            current: plan.current.len(),
            failed: plan.refused,
            dry_run: self.dry_run,
            ..RunSummary::default()
        };
        if self.dry_run {
            summary.migrated = plan
                .pending
                .into_iter()
                .map(|p| Migrated {
                    target: p.target,
                    from: p.version,
                    to: plan.latest,
                })
                .collect();
            summary.elapsed = started.elapsed();
            return Ok(summary);
        }
        let total = plan.pending.len();
        let done = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        // `concurrency` workers per server, each keeping its connection from
        // one tenant to the next: a tenant costs its batch, not a checkout
        // too. A server that is slow or down holds up its own tenants only.
        let mut queues: HashMap<Option<String>, std::collections::VecDeque<PlannedTarget>> =
            HashMap::new();
        for p in plan.pending {
            queues
                .entry(p.target.server.clone())
                .or_default()
                .push_back(p);
        }
        let queues: Vec<std::sync::Mutex<std::collections::VecDeque<PlannedTarget>>> =
            queues.into_values().map(std::sync::Mutex::new).collect();
        let next = |queue: &std::sync::Mutex<std::collections::VecDeque<PlannedTarget>>| {
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front()
        };
        let (done, failed) = (&done, &failed);
        let worker = |queue| async move {
            let mut slot = None;
            let mut out = Vec::new();
            while let Some(p) = next(queue) {
                let from = p.version;
                let target = p.target.clone();
                let result = this.apply(p, &mut slot).await;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                let f = failed.load(Ordering::Relaxed) + usize::from(result.is_err());
                if result.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                match &result {
                    Ok(Some(to)) => tracing::debug!(schema = %target.schema, from, to, "migrated"),
                    Ok(None) => {
                        tracing::debug!(schema = %target.schema, "migrated by another runner")
                    }
                    Err(e) => {
                        tracing::warn!(schema = %target.schema, error = %e, "migration failed")
                    }
                }
                if let Some(progress) = &this.progress {
                    progress(&Progress {
                        total,
                        done: d,
                        failed: f,
                        target: target.clone(),
                    });
                }
                out.push((target, from, result));
            }
            out
        };
        let workers = queues.iter().flat_map(|queue| {
            let len = next_len(queue);
            (0..self.concurrency.clamp(1, len.max(1))).map(move |_| queue)
        });
        let results: Vec<(Target, i64, Result<Option<i64>>)> =
            futures_util::future::join_all(workers.map(worker))
                .await
                .into_iter()
                .flatten()
                .collect();
        for (target, from, result) in results {
            match result {
                Ok(Some(to)) => summary.migrated.push(Migrated { target, from, to }),
                Ok(None) => summary.current += 1,
                Err(error) => summary.failed.push(Failure { target, error }),
            }
        }
        summary
            .migrated
            .sort_by(|a, b| a.target.schema.cmp(&b.target.schema));
        summary
            .failed
            .sort_by(|a, b| a.target.schema.cmp(&b.target.schema));
        summary.elapsed = started.elapsed();
        tracing::info!(
            migrated = summary.migrated.len(),
            current = summary.current,
            failed = summary.failed.len(),
            elapsed_ms = summary.elapsed.as_millis() as u64,
            "tenant migration run finished"
        );
        Ok(summary)
    }

    /// Brings a schema just created at `version` (recorded) to the latest version.
    pub(crate) async fn finish(
        &self,
        schema: &str,
        tenant: Option<TenantId>,
        database: Option<String>,
        version: i64,
    ) -> Result<()> {
        let target = Target {
            schema: schema.to_owned(),
            tenant,
            database,
            server: None,
        };
        self.finish_target(target, version, Some(version), false)
            .await
    }

    /// Brings `target` from `version` to the latest version, knowing what its
    /// bookkeeping says (`recorded`) and whether it has a history table.
    pub(crate) async fn finish_target(
        &self,
        target: Target,
        version: i64,
        recorded: Option<i64>,
        no_history: bool,
    ) -> Result<()> {
        let p = PlannedTarget {
            target,
            version,
            pending: Vec::new(),
            recorded,
            no_history,
        };
        self.apply(p, &mut None).await.map(|_| ())
    }

    /// Brings one schema to the latest version; returns the version reached,
    /// or `None` when another runner had already done it all. A schema of the
    /// shared database runs on the connection in `slot` (checked out if
    /// empty), which is left there when the schema is done with it cleanly.
    async fn apply(
        &self,
        p: PlannedTarget,
        slot: &mut Option<crate::scope::PoolConn>,
    ) -> Result<Option<i64>> {
        let hidra = &self.hidra;
        let home = hidra.home_of(p.target.server.as_deref()).await?;
        let mut conn = match &p.target.database {
            Some(db) => Pooled::Database(hidra.databases_at(&home).0.acquire(db).await?),
            None => match slot.take() {
                Some(conn) => Pooled::Shared(conn),
                None => Pooled::Shared(hidra.acquire_shared_at(&home).await?.into_pool_conn()),
            },
        };
        let result = self.apply_on(&mut conn, p).await;
        if let (Ok(_), Pooled::Shared(conn)) = (&result, conn) {
            *slot = Some(conn);
        }
        result
    }

    async fn apply_on(&self, conn: &mut Pooled, mut p: PlannedTarget) -> Result<Option<i64>> {
        let hidra = &self.hidra;
        let migrations = self.migrations();
        let schema = Ident::new(p.target.schema.clone(), "tenant schema name")?;
        let path = sql::search_path_value(&schema, &hidra.inner.schema.shared);
        let mut raced = 0;
        let mut applied_any = false;
        loop {
            let pending = migrations.after(p.version);
            if pending.is_empty() {
                return Ok(applied_any.then_some(p.version));
            }
            // Transactional migrations up to the next no-transaction one go in one batch.
            let n = pending.iter().take_while(|m| !m.no_tx).count();
            let step = if n > 0 {
                self.apply_batch(conn, &schema, &path, &p, &pending[..n])
                    .await
            } else {
                apply_no_tx(conn, &schema, &path, &p, &pending[0], migrations).await
            };
            match step {
                Ok(version) => {
                    applied_any = true;
                    p.version = version;
                    p.recorded = Some(version);
                    p.no_history = false;
                }
                Err(Step::Raced) if raced < 3 => {
                    // Another runner moved this schema since the plan: re-read it.
                    raced += 1;
                    let (v, digest, has_table) = read_history(conn, &p.target.schema).await?;
                    // The other runner may have applied another migration
                    // set: the same check as the plan's, before going on.
                    let migrations = self.migrations();
                    if migrations
                        .digest_at(v)
                        .is_none_or(|expected| expected != digest.as_slice())
                    {
                        let detail = explain_mismatch(conn, &p.target.schema, migrations).await;
                        return Err(Error::ChecksumMismatch {
                            schema: p.target.schema.clone(),
                            detail,
                        });
                    }
                    p.version = v;
                    p.recorded = recorded_version(conn, &p.target.schema).await?;
                    p.no_history = !has_table;
                }
                Err(Step::Raced) => {
                    return Err(Error::Database {
                        context: "migrating a schema that other runners keep changing",
                        source: sqlx::Error::Protocol("concurrent migration runners".into()),
                    });
                }
                Err(Step::Failed(e)) => return Err(e),
            }
        }
    }

    async fn apply_batch(
        &self,
        conn: &mut Pooled,
        schema: &Ident,
        path: &str,
        p: &PlannedTarget,
        batch: &[Migration],
    ) -> Result<i64, Step> {
        let migrations = self.migrations();
        let last = batch.last().expect("non-empty batch");
        let digest = migrations.digest_at(last.version).expect("our own version");
        let (sql, spans) = batch::migration_batch(
            &Batch {
                schema,
                search_path: path,
                own_transaction: Some(p.recorded),
                create_schema: false,
                create_history: p.no_history,
            },
            batch,
            last.version,
            digest,
        );
        let Err(super::BatchFailure {
            error: err,
            applied,
            claimed,
        }) = super::execute_batch(conn, sql).await
        else {
            return Ok(last.version);
        };
        // The batch stopped inside its transaction: end it.
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut **conn).await;
        // Only the claim fails these ways before it answers: the schema's
        // recorded version moved since the plan, or a row appeared.
        if !claimed
            && db_code(&err).is_some_and(|(code, _)| {
                code == sqlstate::SERIALIZATION_FAILURE || code == sqlstate::UNIQUE_VIOLATION
            })
        {
            return Err(Step::Raced);
        }
        // A tenant database created before the claim function existed:
        // give it the function, then take the claim again.
        if !claimed && db_code(&err).is_some_and(|(code, _)| code == sqlstate::UNDEFINED_FUNCTION) {
            super::ensure_internal(conn).await?;
            return Err(Step::Raced);
        }
        let failed =
            super::failed_migration(batch, &spans, &err, 0, applied).expect("a non-empty batch");
        Err(Step::Failed(failed.error(schema.as_str(), err)))
    }
}

enum Step {
    Raced,
    Failed(Error),
}

impl From<Error> for Step {
    fn from(e: Error) -> Self {
        Step::Failed(e)
    }
}

/// A migration that cannot run in a transaction, on its own, under a
/// session-level lock. The connection is closed if this is interrupted, which
/// releases the lock.
async fn apply_no_tx(
    conn: &mut Pooled,
    schema: &Ident,
    path: &str,
    p: &PlannedTarget,
    m: &Migration,
    migrations: &Migrations,
) -> Result<i64, Step> {
    // A tenant database's connection cannot be closed on drop; an interrupted
    // run there keeps the lock until that idle connection is reaped.
    struct CloseUnlessDone<'a>(&'a mut Pooled, bool);
    impl Drop for CloseUnlessDone<'_> {
        fn drop(&mut self) {
            if let (false, Pooled::Shared(c)) = (self.1, &mut *self.0) {
                c.close_on_drop();
            }
        }
    }
    let mut guard = CloseUnlessDone(conn, false);
    let c = &mut **guard.0;
    let db = |context| move |source| Step::Failed(Error::Database { context, source });

    sqlx::raw_sql(batch::migration_session_lock(schema, true))
        .execute(&mut *c)
        .await
        .map_err(db("locking a schema for migration"))?;
    let now = recorded_version(c, schema.as_str()).await?;
    let result = if now != p.recorded {
        Err(Step::Raced)
    } else {
        run_no_tx(c, schema, path, p, m, migrations).await
    };
    sqlx::raw_sql("RESET search_path")
        .execute(&mut *c)
        .await
        .map_err(db("resetting the search_path"))?;
    sqlx::raw_sql(batch::migration_session_lock(schema, false))
        .execute(&mut *c)
        .await
        .map_err(db("unlocking a schema after migration"))?;
    guard.1 = true;
    result
}

async fn run_no_tx(
    c: &mut sqlx::PgConnection,
    schema: &Ident,
    path: &str,
    p: &PlannedTarget,
    m: &Migration,
    migrations: &Migrations,
) -> Result<i64, Step> {
    let started = Instant::now();
    sqlx::raw_sql(batch::set_session_search_path(path))
        .execute(&mut *c)
        .await
        .map_err(|source| {
            Step::Failed(Error::Database {
                context: "binding a schema for migration",
                source,
            })
        })?;
    if p.no_history {
        sqlx::raw_sql(batch::tenant_history_ddl(schema).into_sql())
            .execute(&mut *c)
            .await
            .map_err(|source| {
                Step::Failed(Error::Database {
                    context: "creating the migration history table",
                    source,
                })
            })?;
    }
    sqlx::raw_sql(sql::trusted(&m.sql))
        .execute(&mut *c)
        .await
        .map_err(|source| Step::Failed(super::failed_alone(m, schema.as_str(), source)))?;
    let prev = migrations
        .digest_at(p.version)
        .expect("planned version is ours");
    let digest = Migrations::next_digest(prev, m);
    let record = async {
        let mut tx = sqlx::Connection::begin(&mut *c).await?;
        sqlx::query(batch::record_history(schema))
            .bind(m.version)
            .bind(&m.description)
            .bind(&m.checksum)
            .bind(started.elapsed().as_millis() as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO hidra.schema_versions (schema_name, version, digest) VALUES ($1, $2, $3) \
             ON CONFLICT (schema_name) DO UPDATE SET version = EXCLUDED.version, digest = EXCLUDED.digest, updated_at = now()",
        )
        .bind(schema.as_str())
        .bind(m.version)
        .bind(&digest)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    };
    record.await.map_err(|source| {
        Step::Failed(Error::Database {
            context: "recording a no-transaction migration",
            source,
        })
    })?;
    Ok(m.version)
}

/// What a database's own `hidra.schema_versions` says of `schema`.
/// How many targets are queued.
fn next_len(queue: &std::sync::Mutex<std::collections::VecDeque<PlannedTarget>>) -> usize {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len()
}

/// What one server's `hidra.schema_versions` says: version and digest, by
/// schema.
type Versions = HashMap<String, (i64, Vec<u8>)>;

/// What `hidra.schema_versions` says on `conn`'s server, by schema (`only`:
/// those schemas).
async fn read_versions(conn: &mut sqlx::PgConnection, only: Option<&[&str]>) -> Result<Versions> {
    sqlx::query(
        "SELECT schema_name, version, digest FROM hidra.schema_versions \
         WHERE $1::text[] IS NULL OR schema_name = ANY($1)",
    )
    .bind(only)
    .fetch(conn)
    .map_ok(|row| (row.get::<String, _>(0), (row.get(1), row.get(2))))
    .try_collect()
    .await
    .map_err(Error::db("reading schema versions"))
}

pub(crate) async fn recorded_state(
    conn: &mut sqlx::PgConnection,
    schema: &str,
) -> Result<Option<(i64, Vec<u8>)>> {
    sqlx::query_as("SELECT version, digest FROM hidra.schema_versions WHERE schema_name = $1")
        .bind(schema)
        .fetch_optional(conn)
        .await
        .map_err(Error::db("reading a tenant database's schema version"))
}

async fn recorded_version(conn: &mut sqlx::PgConnection, schema: &str) -> Result<Option<i64>> {
    sqlx::query_scalar("SELECT version FROM hidra.schema_versions WHERE schema_name = $1")
        .bind(schema)
        .fetch_optional(conn)
        .await
        .map_err(Error::db("reading a schema version"))
}

/// Reads a schema's own history: (version, digest of what it applied, whether
/// the history table exists).
pub(crate) async fn read_history(
    conn: &mut sqlx::PgConnection,
    schema: &str,
) -> Result<(i64, Vec<u8>, bool)> {
    let schema = Ident::new(schema.to_owned(), "tenant schema name")?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{}._hidra_migrations", schema.quoted()))
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("looking for a migration history"))?;
    if !exists {
        return Ok((0, Vec::new(), false));
    }
    let mut history = sql::Statement::new();
    history
        .sql("SELECT version, checksum FROM ")
        .ident(&schema)
        .sql("._hidra_migrations ORDER BY version");
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(history.into_sql())
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("reading a migration history"))?;
    let mut digest = Vec::new();
    let mut version = 0;
    for (v, checksum) in rows {
        let m = Migration {
            version: v,
            description: String::new(),
            sql: String::new(),
            checksum,
            no_tx: false,
        };
        digest = Migrations::next_digest(&digest, &m);
        version = v;
    }
    Ok((version, digest, true))
}

/// Names the first applied migration whose checksum differs from ours.
async fn explain_mismatch(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    migrations: &Migrations,
) -> String {
    let Ok(ident) = Ident::new(schema.to_owned(), "tenant schema name") else {
        return "its schema name is invalid".into();
    };
    let mut history = sql::Statement::new();
    history
        .sql("SELECT version, description, checksum FROM ")
        .ident(&ident)
        .sql("._hidra_migrations ORDER BY version");
    let rows: Vec<(i64, String, Vec<u8>)> = match sqlx::query_as(history.into_sql())
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => rows,
        Err(_) => return "its recorded digest differs from the migrations given".into(),
    };
    for (version, description, checksum) in rows {
        match migrations.iter().find(|m| m.version == version) {
            None => return format!("applied migration {version} ({description}) is missing"),
            Some(m) if m.checksum != checksum => {
                return format!(
                    "applied migration {version} ({description}) was edited (checksum mismatch)"
                );
            }
            Some(_) => {}
        }
    }
    "its recorded digest differs from the migrations given".into()
}
