//! Tenant-scoped database access: [`TenantConn`] and [`TenantTx`].
//!
//! One shared pool serves every schema-per-tenant and row-level tenant. A
//! connection is bound to a tenant by its `search_path`, and the binding is
//! made *as part of checking the connection out*, never left to chance:
//!
//! - Hidra owns its pool (see the `pool` module) and never hands it out, so
//!   no checkout can bypass it. Every checkout runs one simple query before
//!   the connection is handed over: a tenant connection
//!   ([`Hidra::acquire`](crate::Hidra::acquire)) gets
//!   `SET search_path TO "tenant_acme", "public"; SET hidra.tenant_id TO ''`;
//!   a shared connection
//!   ([`Hidra::acquire_shared`](crate::Hidra::acquire_shared)), a
//!   transaction checkout ([`Hidra::begin`](crate::Hidra::begin), whose
//!   binding is transaction-local) and anything else get `RESET search_path`
//!   and no row-level tenant, so no session binding of an earlier tenant is
//!   left under a transaction that user code might end early.
//! - The same round trip proves that the connection is not inside a
//!   transaction an earlier user left open: every reply of PostgreSQL ends
//!   with the connection's transaction status, and the checkout statement is
//!   sent through sqlx's `begin_with`, which reports a statement that leaves
//!   the connection outside a transaction as `BeginFailed`. That is the
//!   answer wanted; a connection still inside a transaction is closed (which
//!   rolls the transaction back). The statement also reads any reply an
//!   earlier user left unread, and proves the connection alive, so it is the
//!   only statement a checkout costs: no ping on checkout, none on return.
//!   Utility `SET`s cost about half of an equivalent `SELECT set_config(…)`,
//!   which goes through the planner (measured with `bench-checkout`).
//! - [`Hidra::begin`](crate::Hidra::begin) sends `BEGIN` and
//!   transaction-local `SET LOCAL`s as one simple query: one round trip, and
//!   the binding ends with the transaction.
//! - Statements run through [`sqlx::Executor`], implemented by `&mut
//!   TenantConn` and `&mut TenantTx`: every prepared statement is the
//!   tenant's own (see the `statements` module), so no plan is shared between
//!   tenants.
//!
//! Because every checkout re-establishes the binding, what a connection carried
//! before does not matter: a query cancelled mid-flight, a panicking handler, a
//! stray `SET search_path` or a raw `BEGIN` left open in user code cannot carry
//! one tenant's `search_path` or transaction into the next use of that
//! connection.
//!
//! # Behind PgBouncer (transaction pooling)
//!
//! A transaction-pooling proxy hands each *transaction* to any server
//! connection, so session state leaks between its clients. [`TenantTx`] is safe
//! there: its binding is transaction-local. [`TenantConn`] is **not**: its
//! binding is a session setting, and statements outside a transaction may run
//! on server connections bound by someone else. Behind such a proxy, use
//! [`Hidra::begin`](crate::Hidra::begin) only.

mod load;
mod pool;
mod reachability;
mod statements;
pub use crate::strategy::database::pools::{
    DatabasePoolConfig, DatabasePoolStats, DbConn, TenantDatabases,
};
pub(crate) use pool::{Budget, Pool, PoolConfig, PoolConn, Settle};

pub(crate) use load::Counters;
pub use load::{LoadReport, OTHER_TENANTS, TenantLoad, TenantLoads};
pub(crate) use reachability::Reachability;
pub use statements::StaleStatement;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{PgConnection, Postgres, SqlStr, Transaction};

use crate::error::{Error, Result};
use crate::sql::Ident;
use crate::tenant::{Strategy, Tenant, TenantId};
use statements::{Pooler, Scoped, Statements};

/// The per-tenant timeouts a checkout applies, in milliseconds; `None`:
/// not managed by Hidra (the server's setting stands).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) statement_ms: Option<u64>,
    pub(crate) idle_in_transaction_ms: Option<u64>,
}

impl Timeouts {
    /// Both timeouts marked managed, for a reset that gives each back its
    /// server value whatever the last user set.
    pub(crate) const ALL: Timeouts = Timeouts {
        statement_ms: Some(0),
        idle_in_transaction_ms: Some(0),
    };

    /// The metadata keys of a tenant's own values.
    pub(crate) const STATEMENT_KEY: &str = "statement_timeout_ms";
    pub(crate) const IDLE_KEY: &str = "idle_in_transaction_timeout_ms";

    /// The largest value PostgreSQL takes for these settings.
    pub(crate) const MAX_MS: u64 = i32::MAX as u64;

    /// The values, statement timeout first, as the statement builder takes
    /// them (`sql::Timeouts`).
    pub(crate) fn values(self) -> crate::sql::Timeouts {
        [self.statement_ms, self.idle_in_transaction_ms]
    }

    /// These defaults, or `tenant`'s own values where its registry metadata
    /// has them (integers PostgreSQL accepts: anything else is ignored, so a
    /// bad record cannot make every checkout of its tenant fail), for the
    /// timeouts that are managed.
    pub(crate) fn for_tenant(self, tenant: &Tenant) -> Timeouts {
        let own = |key: &str, default: Option<u64>| {
            default.map(|d| {
                tenant
                    .metadata
                    .get(key)
                    .and_then(serde_json::Value::as_u64)
                    .filter(|ms| *ms <= Self::MAX_MS)
                    .unwrap_or(d)
            })
        };
        Timeouts {
            statement_ms: own(Self::STATEMENT_KEY, self.statement_ms),
            idle_in_transaction_ms: own(Self::IDLE_KEY, self.idle_in_transaction_ms),
        }
    }
}

/// Everything a tenant's connections need, computed once per tenant record
/// (see `Hidra::scope`): the statements that bind it, and its statement texts.
#[derive(Debug)]
pub(crate) struct TenantScope {
    /// The placement it was built for; a moved tenant gets a new one.
    schema: String,
    strategy: Strategy,
    server: Option<String>,
    /// The timeouts it binds; new values in the registry get a new scope.
    timeouts: Timeouts,
    /// The registry's `_bind_row_level` function the binding calls, if any.
    guard: Option<String>,
    /// The session binding of a checkout.
    checkout: SqlStr,
    /// `BEGIN` plus the transaction-local binding.
    begin: SqlStr,
    statements: Statements,
    /// The tenant's share of the shared pool: one permit per connection it
    /// may hold at once (FIFO, so no checkout of it waits forever).
    shares: Arc<tokio::sync::Semaphore>,
    cap: u32,
    /// The tenant's load counters (kept across scope rebuilds).
    load: Arc<Counters>,
}

impl TenantScope {
    pub(crate) fn new(
        tenant: &Tenant,
        schema: &Ident,
        binding: crate::strategy::Binding,
        cap: u32,
        load: Arc<Counters>,
    ) -> Self {
        TenantScope {
            schema: tenant.placement.schema.clone(),
            strategy: tenant.placement.strategy,
            server: tenant.placement.server.clone(),
            timeouts: binding.timeouts,
            checkout: binding.session_statement(),
            guard: binding.guard.clone(),
            begin: binding.begin_statement(),
            statements: Statements::new(schema),
            shares: Arc::new(tokio::sync::Semaphore::new(cap as usize)),
            cap,
            load,
        }
    }

    /// The registry's `_bind_row_level` function its binding calls, if any.
    pub(crate) fn guard(&self) -> Option<&str> {
        self.guard.as_deref()
    }

    /// Whether this scope was built for `tenant`'s current placement and
    /// `timeouts`.
    pub(crate) fn fits(&self, tenant: &Tenant, timeouts: Timeouts) -> bool {
        self.strategy == tenant.placement.strategy
            && self.schema == tenant.placement.schema
            && self.server == tenant.placement.server
            && self.timeouts == timeouts
    }

    /// A share of the pool for one more connection of this tenant: at once
    /// while it holds fewer than its cap, else when one of its connections
    /// comes back (first come, first served), for at most `wait`. A tenant at
    /// its cap waits outside the pool's queue, so the other tenants'
    /// checkouts go first.
    pub(crate) async fn admit(&self, id: &TenantId, wait: std::time::Duration) -> Result<Share> {
        let shares = &self.shares;
        if let Ok(permit) = Arc::clone(shares).try_acquire_owned() {
            return Ok(self.share(permit, false));
        }
        match tokio::time::timeout(wait, Arc::clone(shares).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.share(permit, true)),
            // Never closed; a timeout either way.
            Ok(Err(_)) | Err(_) => {
                self.load.refused();
                Err(Error::TenantBusy {
                    id: id.clone(),
                    cap: self.cap,
                    waited: wait,
                })
            }
        }
    }

    /// Applies the tenant's timeouts to a connection of its own database
    /// (nothing to send when none is managed).
    pub(crate) async fn bind_database_session(&self, conn: &mut DbConn) -> Result<()> {
        if let Some(statement) = crate::sql::database_session_timeouts(self.timeouts.values()) {
            sqlx::raw_sql(statement)
                .execute(&mut **conn)
                .await
                .map_err(Error::db("applying the tenant's timeouts"))?;
        }
        Ok(())
    }

    fn share(&self, permit: tokio::sync::OwnedSemaphorePermit, waited: bool) -> Share {
        Share {
            since: self.load.checked_out(waited),
            _permit: permit,
            load: Arc::clone(&self.load),
        }
    }
}

/// One connection's worth of a tenant's share of the pool, given back when
/// dropped (with the connection it came with), and counted in its load.
pub(crate) struct Share {
    _permit: tokio::sync::OwnedSemaphorePermit,
    load: Arc<Counters>,
    /// When it was taken (`load::now_nanos`).
    since: u64,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.load.returned(self.since);
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share").finish_non_exhaustive()
    }
}

/// Runs `statement` (which must not begin a transaction) and returns whether
/// the connection was outside any transaction, read from the transaction
/// status PostgreSQL sends with its reply: sqlx's `begin_with` fails with
/// `BeginFailed` exactly when the statement left the connection outside one.
/// Inside a *failed* transaction the status reads "not in a transaction", but
/// there any statement but a rollback fails (`25P02`), so `statement` must be
/// a real one, never empty.
pub(crate) async fn run_outside_transaction(
    conn: &mut PgConnection,
    statement: SqlStr,
) -> Result<bool, sqlx::Error> {
    match Transaction::<Postgres>::begin(conn, Some(statement)).await {
        Err(sqlx::Error::BeginFailed) => Ok(true),
        // Still inside a transaction begun before: dropping this queues its
        // rollback, and the caller closes the connection.
        Ok(leftover) => {
            drop(leftover);
            Ok(false)
        }
        // A sqlx transaction was leaked on this connection.
        Err(sqlx::Error::InvalidSavePointStatement) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A connection of `pool` on which `statement` ran, outside any transaction.
///
/// A connection found inside a transaction an earlier user left open, or
/// failing the statement, is closed (the server rolls that transaction back)
/// and another is taken, as sqlx's pool does with a failing
/// `before_acquire`; a connection opened for this checkout that fails it
/// returns the error.
async fn checked_out(pool: &Pool, statement: &SqlStr) -> Result<PoolConn, sqlx::Error> {
    loop {
        let mut conn = pool.get().await?;
        match run_outside_transaction(&mut conn, statement.clone()).await {
            Ok(true) => return Ok(conn),
            Ok(false) => {
                tracing::warn!("closing a pooled connection returned inside an open transaction");
                conn.discard();
            }
            // The binding found the tenant gone from where the caller's
            // record places it: the connection is sound, the record is not.
            Err(sqlx::Error::Database(db))
                if crate::error::refuses_stale_record(db.code().as_deref()) =>
            {
                return Err(sqlx::Error::Database(db));
            }
            Err(e) if conn.is_fresh() => {
                conn.discard();
                return Err(e);
            }
            Err(e) => {
                tracing::debug!(error = %e, "closing a pooled connection that failed its checkout");
                conn.discard();
            }
        }
    }
}

/// Checks a connection out of `pool` bound to a tenant.
pub(crate) async fn acquire_bound(
    pool: &Pool,
    reach: &Reachability,
    scope: &TenantScope,
) -> Result<PoolConn> {
    checkout(pool, reach, &scope.checkout).await
}

/// Checks a connection out of `pool` with no tenant: the server's default
/// `search_path` (behind a transaction pooler, nothing is set at all).
pub(crate) async fn acquire_unscoped(pool: &Pool, reach: &Reachability) -> Result<PoolConn> {
    checkout(pool, reach, pool.unscoped()).await
}

/// Checks a connection out of `pool` for a transaction-local binding. The
/// session is reset too: should user code end the transaction early (a raw
/// `COMMIT`), the transaction-local binding goes with it and what remains
/// must be no tenant, not the tenant the connection last served.
pub(crate) async fn acquire_for_tx(pool: &Pool, reach: &Reachability) -> Result<PoolConn> {
    acquire_unscoped(pool, reach).await
}

/// Checks a connection out running `statement`, failing fast while the
/// server is unreachable (see [`Reachability`]).
async fn checkout(pool: &Pool, reach: &Reachability, statement: &SqlStr) -> Result<PoolConn> {
    if reach.is_down() {
        reach.check().await?;
    }
    let acquire = checked_out(pool, statement);
    let mut acquire = std::pin::pin!(acquire);
    let conn = match tokio::time::timeout(reachability::SLOW_CHECKOUT, &mut acquire).await {
        Ok(done) => done,
        // Slow: a busy pool, or a server that does not answer.
        Err(_) => {
            reach.check().await?;
            acquire.await
        }
    };
    match conn {
        Ok(conn) => {
            reach.mark_up();
            Ok(conn)
        }
        Err(e) => {
            if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
                reach.check().await?;
            }
            Err(Error::db("acquiring a connection")(e))
        }
    }
}

/// A connection of the shared pool bound to no tenant (the server's default
/// `search_path`), for shared tables: see
/// [`Hidra::acquire_shared`](crate::Hidra::acquire_shared). It derefs to
/// [`PgConnection`] (`query.execute(&mut *conn)`). Anything may run on it, so
/// it is pinged (its replies read) before it goes back to the pool.
pub struct SharedConn(PoolConn);

impl SharedConn {
    pub(crate) fn new(mut conn: PoolConn) -> Self {
        conn.settle(Settle::Ping);
        SharedConn(conn)
    }

    /// Closes the connection when it is dropped instead of giving it back,
    /// e.g. while it holds a session-level advisory lock that an interrupted
    /// future must not leave behind.
    pub fn close_on_drop(&mut self) {
        self.0.close_on_drop();
    }

    pub(crate) fn into_pool_conn(self) -> PoolConn {
        self.0
    }
}

impl std::ops::Deref for SharedConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl std::ops::DerefMut for SharedConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

impl fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedConn").finish_non_exhaustive()
    }
}

/// A connection to a tenant's own database, failing fast like a checkout of
/// the shared pool while the server does not answer (tenant databases live
/// on the same server, so they share its [`Reachability`]).
pub(crate) async fn acquire_database(
    databases: &TenantDatabases,
    reach: &Reachability,
    database: &str,
) -> Result<DbConn> {
    if reach.is_down() {
        reach.check().await?;
    }
    let acquire = databases.acquire(database);
    let mut acquire = std::pin::pin!(acquire);
    let conn = match tokio::time::timeout(reachability::SLOW_CHECKOUT, &mut acquire).await {
        Ok(done) => done,
        Err(_) => {
            reach.check().await?;
            acquire.await
        }
    };
    match conn {
        Ok(conn) => {
            reach.mark_up();
            Ok(conn)
        }
        Err(e) => {
            if e.is_retryable() {
                reach.check().await?;
            }
            Err(e)
        }
    }
}

/// A pooled connection bound to one tenant.
///
/// `&mut TenantConn` is a [`sqlx::Executor`]: sqlx queries run on it
/// unqualified against the tenant's tables, each as a prepared statement of
/// the tenant's own (so tenants at different migration versions never share a
/// plan), `query.fetch_one(&mut conn)`. Dropping it returns the connection to
/// the pool; its next checkout re-binds it.
///
/// Behind a transaction-pooling proxy, see
/// [`HidraBuilder::transaction_pooler`](crate::HidraBuilder::transaction_pooler).
pub struct TenantConn {
    conn: Pooled,
    tenant: TenantId,
    /// `None` for a tenant in its own database (its connections serve it alone).
    scope: Option<Arc<TenantScope>>,
    /// Behind a transaction pooler: every statement in a transaction of its own.
    pooled: bool,
    stale: AtomicBool,
    /// A statement (or a raw connection) was handed out and not finished:
    /// the connection is settled before it goes back.
    unfinished: AtomicBool,
    /// The tenant's share of the pool this connection takes (shared pool).
    share: Option<Share>,
}

/// A connection from the shared pool or from a tenant database's pool.
pub(crate) enum Pooled {
    Shared(PoolConn),
    Database(DbConn),
}

impl Pooled {
    /// Closes the connection when it is dropped instead of giving it back.
    pub(crate) fn close_on_drop(&mut self) {
        match self {
            Pooled::Shared(conn) => conn.close_on_drop(),
            Pooled::Database(conn) => conn.discard_on_drop(true),
        }
    }

    fn connection(&mut self) -> &mut PgConnection {
        self
    }
}

impl std::ops::Deref for Pooled {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Pooled::Shared(c) => c,
            Pooled::Database(c) => c,
        }
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Pooled::Shared(c) => c,
            Pooled::Database(c) => c,
        }
    }
}

impl TenantConn {
    pub(crate) fn new(conn: Pooled, tenant: &Tenant, scope: Option<Arc<TenantScope>>) -> Self {
        TenantConn {
            conn,
            tenant: tenant.id.clone(),
            scope,
            pooled: false,
            stale: AtomicBool::new(false),
            unfinished: AtomicBool::new(false),
            share: None,
        }
    }

    /// Holds `share` for as long as the connection is checked out.
    pub(crate) fn with_share(mut self, share: Share) -> Self {
        self.share = Some(share);
        self
    }

    /// A connection through a transaction pooler, which carries no binding:
    /// each statement binds the tenant in a transaction of its own.
    pub(crate) fn through_pooler(conn: PoolConn, tenant: &Tenant, scope: Arc<TenantScope>) -> Self {
        let mut conn = TenantConn::new(Pooled::Shared(conn), tenant, Some(scope));
        conn.pooled = true;
        conn
    }

    /// The tenant this connection is bound to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The underlying connection, bound to the tenant, for what the
    /// [`Executor`](sqlx::Executor) cannot do (`COPY`, `LISTEN`, APIs that
    /// want a [`PgConnection`]).
    ///
    /// Statements prepared here bypass per-tenant statements: sqlx caches
    /// them by SQL text alone, so another tenant's checkout of this pooled
    /// connection reuses them. PostgreSQL then re-plans them on every tenant
    /// switch, and a statement whose result shape differs between two tenants
    /// (one of them a migration ahead) fails with "cached plan must not change
    /// result type". Prefer `&mut conn`.
    ///
    /// What runs here is not tracked, so the connection is pinged (its
    /// replies read) before it goes back to the pool, as sqlx's pool does.
    pub fn raw_connection(&mut self) -> &mut PgConnection {
        *self.unfinished.get_mut() = true;
        self.conn.connection()
    }

    fn scoped(&mut self) -> Scoped<'_> {
        let pooler = match (self.pooled, self.scope.as_deref()) {
            (true, Some(scope)) => Pooler::OwnTransaction(&scope.begin),
            _ => Pooler::No,
        };
        Scoped {
            conn: self.conn.connection(),
            statements: self.scope.as_deref().map(|s| &s.statements),
            in_transaction: false,
            pooler,
            stale: &self.stale,
            unfinished: Some(&self.unfinished),
            load: self.share.as_ref().map(|s| &*s.load),
        }
    }
}

crate::__impl_scoped_executor!(TenantConn, this => this.scoped());

impl Drop for TenantConn {
    fn drop(&mut self) {
        // Stale statements found by a stream are not dropped yet: take them
        // out of the pool with the connection.
        let stale = *self.stale.get_mut();
        match &mut self.conn {
            Pooled::Shared(c) if stale => c.settle(Settle::Discard),
            Pooled::Shared(c) if *self.unfinished.get_mut() => c.settle(if self.pooled {
                // Cut off inside the statement's own transaction.
                Settle::Rollback
            } else {
                Settle::Ping
            }),
            Pooled::Shared(_) => {}
            Pooled::Database(c) => {
                if stale {
                    c.discard_on_drop(true);
                }
            }
        }
    }
}

impl fmt::Debug for TenantConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantConn")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// A transaction bound to one tenant with transaction-local settings.
///
/// `&mut TenantTx` is a [`sqlx::Executor`] running per-tenant statements,
/// like [`TenantConn`]. Call [`commit`](TenantTx::commit) to keep the work;
/// dropping it without committing rolls back (also on panic). Behind a
/// transaction-pooling proxy such as PgBouncer, see
/// [`HidraBuilder::transaction_pooler`](crate::HidraBuilder::transaction_pooler).
///
/// The transaction is opened with a plain `BEGIN` (plus the binding): nest
/// with explicit `SAVEPOINT`s, not `Connection::begin` on
/// [`raw_connection`](TenantTx::raw_connection). A dropped, unfinished
/// transaction is rolled back before its connection is reused (a tenant
/// database's connection is closed instead, which ends it at once).
pub struct TenantTx {
    /// Dropped after the transaction's connection (fields drop in order).
    tx: Tx,
    share: Option<Share>,
    tenant: TenantId,
    scope: Option<Arc<TenantScope>>,
    /// Behind a transaction pooler: unnamed statements only.
    pooled: bool,
    stale: AtomicBool,
}

/// The connection of a transaction begun with a plain `BEGIN`: until it is
/// committed or rolled back, a dropped `TenantTx` rolls it back before the
/// connection is reused (shared pool) or closes the connection (a tenant
/// database's).
enum Tx {
    Shared(PoolConn),
    Database(DbConn),
}

impl Tx {
    fn connection(&mut self) -> &mut PgConnection {
        match self {
            Tx::Shared(c) => c,
            Tx::Database(c) => c,
        }
    }

    /// Runs `COMMIT` or `ROLLBACK`; the connection goes back as it is only
    /// if that worked.
    async fn finish(&mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(statement).execute(self.connection()).await?;
        match self {
            Tx::Shared(c) => c.settled(),
            Tx::Database(c) => c.discard_on_drop(false),
        }
        Ok(())
    }
}

impl TenantTx {
    pub(crate) async fn begin(
        mut conn: PoolConn,
        tenant: &Tenant,
        scope: Arc<TenantScope>,
        pooled: bool,
    ) -> Result<Self> {
        // From here until the transaction ends, a drop rolls it back.
        conn.settle(Settle::Rollback);
        sqlx::raw_sql(scope.begin.clone())
            .execute(&mut *conn)
            .await
            .map_err(Error::db("beginning a tenant transaction"))?;
        Ok(TenantTx {
            share: None,
            tx: Tx::Shared(conn),
            tenant: tenant.id.clone(),
            scope: Some(scope),
            pooled,
            stale: AtomicBool::new(false),
        })
    }

    pub(crate) async fn begin_in_database(
        mut conn: DbConn,
        tenant: &Tenant,
        scope: &TenantScope,
    ) -> Result<Self> {
        // Until it is committed or rolled back, a dropped transaction closes
        // its connection (ending the transaction at once) rather than parking
        // it, open and holding its locks, in the pool.
        conn.discard_on_drop(true);
        sqlx::raw_sql(crate::sql::begin_in_database(scope.timeouts.values()))
            .execute(&mut *conn)
            .await
            .map_err(Error::db("beginning a tenant transaction"))?;
        Ok(TenantTx {
            share: None,
            tx: Tx::Database(conn),
            tenant: tenant.id.clone(),
            scope: None,
            pooled: false,
            stale: AtomicBool::new(false),
        })
    }

    /// Holds `share` until the transaction ends.
    pub(crate) fn with_share(mut self, share: Share) -> Self {
        self.share = Some(share);
        self
    }

    /// The tenant this transaction is bound to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The underlying connection, inside the transaction; see
    /// [`TenantConn::raw_connection`] for what it bypasses.
    pub fn raw_connection(&mut self) -> &mut PgConnection {
        self.tx.connection()
    }

    fn scoped(&mut self) -> Scoped<'_> {
        Scoped {
            conn: self.tx.connection(),
            statements: self.scope.as_deref().map(|s| &s.statements),
            in_transaction: true,
            pooler: if self.pooled {
                Pooler::InTransaction
            } else {
                Pooler::No
            },
            stale: &self.stale,
            // Until it ends, the transaction is rolled back on drop anyway.
            unfinished: None,
            load: self.share.as_ref().map(|s| &*s.load),
        }
    }

    /// Drops statements a stream found stale before the connection goes back.
    async fn clear_stale(&mut self) {
        if self.stale.swap(false, Ordering::AcqRel) {
            let _ = sqlx::Connection::clear_cached_statements(self.tx.connection()).await;
        }
    }

    /// Commits the transaction.
    pub async fn commit(mut self) -> Result<()> {
        self.clear_stale().await;
        self.tx
            .finish("COMMIT")
            .await
            .map_err(Error::db("committing a tenant transaction"))
    }

    /// Rolls the transaction back.
    pub async fn rollback(mut self) -> Result<()> {
        self.clear_stale().await;
        self.tx
            .finish("ROLLBACK")
            .await
            .map_err(Error::db("rolling back a tenant transaction"))
    }
}

crate::__impl_scoped_executor!(TenantTx, this => this.scoped());

impl fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}
