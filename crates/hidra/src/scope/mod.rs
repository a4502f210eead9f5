//! Tenant-scoped database access: [`TenantConn`] and [`TenantTx`].
//!
//! One shared [`PgPool`](sqlx::PgPool) serves every schema-per-tenant tenant. A
//! connection is bound to a tenant by its `search_path`, and the binding is
//! made *as part of checking the connection out*, never left to chance:
//!
//! - Hidra owns its pool and never hands it out, so no checkout can bypass it
//!   (sqlx's `Pool::try_acquire` skips the pool's hooks). It builds the pool
//!   with sqlx's `test_before_acquire` ping turned off and a `before_acquire`
//!   hook in its place. That hook is told, through a private task-local, what
//!   the checkout is for: a tenant connection
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
//!   rolls the transaction back). The statement replaces the ping sqlx would
//!   otherwise send, so binding costs no extra round trip, and it also proves
//!   the connection alive. Utility `SET`s cost about half of an equivalent
//!   `SELECT set_config(…)`, which goes through the planner (measured with
//!   `bench-checkout`).
//! - A new connection starts with the server default and is bound by
//!   `acquire` itself.
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

mod databases;
mod reachability;
mod statements;
pub use databases::{DatabasePoolConfig, DatabasePoolStats, DbConn, TenantDatabases};
pub(crate) use reachability::Reachability;
pub use statements::StaleStatement;

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use sqlx::pool::{PoolConnection, PoolConnectionMetadata};
use sqlx::{PgConnection, Postgres, SqlStr, Transaction};

use crate::error::{Error, Result};
use crate::sql::Ident;
use crate::tenant::{Strategy, Tenant, TenantId};
use statements::{Pooler, Scoped, Statements};

/// What the checkout in progress on this task is for.
#[derive(Debug)]
struct Checkout {
    intent: Intent,
    /// Set by the hook once it has bound the connection.
    bound: Cell<bool>,
}

/// What a tenant checkout binds: the `search_path`, and the tenant id the
/// row-level security policies read (`hidra.tenant_id`, empty for tenants
/// isolated otherwise, so no row-level tenant survives on the connection).
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    pub(crate) search_path: String,
    pub(crate) tenant_id: String,
}

/// Everything a tenant's connections need, computed once per tenant record
/// (see `Hidra::scope`): the statements that bind it, and its statement texts.
#[derive(Debug)]
pub(crate) struct TenantScope {
    /// The placement it was built for; a moved tenant gets a new one.
    schema: String,
    strategy: Strategy,
    /// The session binding of a checkout.
    checkout: SqlStr,
    /// `BEGIN` plus the transaction-local binding.
    begin: SqlStr,
    statements: Statements,
}

impl TenantScope {
    pub(crate) fn new(tenant: &Tenant, schema: &Ident, binding: Binding) -> Self {
        TenantScope {
            schema: tenant.placement.schema.clone(),
            strategy: tenant.placement.strategy,
            checkout: crate::sql::bind_session(&binding),
            begin: crate::sql::begin_scoped(&binding),
            statements: Statements::new(schema),
        }
    }

    /// Whether this scope was built for `tenant`'s current placement.
    pub(crate) fn fits(&self, tenant: &Tenant) -> bool {
        self.strategy == tenant.placement.strategy && self.schema == tenant.placement.schema
    }
}

#[derive(Clone, Debug)]
enum Intent {
    /// Bind this tenant's session `search_path` and row-level tenant.
    Session(Arc<TenantScope>),
    /// Unscoped: clear whatever a tenant left behind.
    Reset,
}

tokio::task_local! {
    static CHECKOUT: Checkout;
}

/// The `before_acquire` hook Hidra installs on its pool, in place of sqlx's ping.
///
/// It runs one simple query that binds or resets the `search_path` and proves
/// the connection alive and outside any transaction some earlier user left
/// open. A connection found inside one is refused, so sqlx closes it (the
/// server rolls that transaction back) and hands out another.
pub(crate) fn before_acquire(
    conn: &mut PgConnection,
    _meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        let intent = CHECKOUT
            .try_with(|c| c.intent.clone())
            .unwrap_or(Intent::Reset);
        let clean = prepare(conn, &intent).await?;
        if clean {
            let _ = CHECKOUT.try_with(|c| c.bound.set(true));
        } else {
            tracing::warn!("closing a pooled connection returned inside an open transaction");
        }
        Ok(clean)
    })
}

/// The `before_acquire` hook of the transaction pooler's pool: no session
/// state is ever set there, so a checkout only proves the connection alive and
/// outside a transaction (one left open pins a server connection of the
/// proxy to it: such a connection is closed).
pub(crate) fn before_acquire_pooled(
    conn: &mut PgConnection,
    _meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        let probe = sqlx::SqlSafeStr::into_sql_str("SELECT 1");
        let clean = run_outside_transaction(conn, probe).await?;
        if !clean {
            tracing::warn!("closing a pooled connection returned inside an open transaction");
        }
        Ok(clean)
    })
}

/// Runs the checkout statement for `intent`; returns whether the connection was
/// outside any transaction.
async fn prepare(conn: &mut PgConnection, intent: &Intent) -> Result<bool, sqlx::Error> {
    let statement = match intent {
        Intent::Session(scope) => scope.checkout.clone(),
        Intent::Reset => crate::sql::reset_statement(),
    };
    run_outside_transaction(conn, statement).await
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

/// Checks a connection out of `pool` bound to a tenant.
pub(crate) async fn acquire_bound(
    pool: &sqlx::PgPool,
    reach: &Reachability,
    scope: Arc<TenantScope>,
) -> Result<PoolConnection<Postgres>> {
    let intent = Intent::Session(scope);
    let (mut conn, bound) = checkout(pool, reach, intent.clone()).await?;
    if !bound {
        // A freshly opened connection: the hook does not run for those.
        prepare(&mut conn, &intent)
            .await
            .map_err(Error::db("binding the tenant's search_path"))?;
    }
    Ok(conn)
}

/// Checks a connection out of `pool` with the server's default `search_path`.
pub(crate) async fn acquire_unscoped(
    pool: &sqlx::PgPool,
    reach: &Reachability,
) -> Result<PoolConnection<Postgres>> {
    // A fresh connection already has the default; an idle one was reset by the hook.
    Ok(checkout(pool, reach, Intent::Reset).await?.0)
}

/// Checks a connection out of `pool` for a transaction-local binding. The
/// session is reset too: should user code end the transaction early (a raw
/// `COMMIT`), the transaction-local binding goes with it and what remains
/// must be no tenant, not the tenant the connection last served.
pub(crate) async fn acquire_for_tx(
    pool: &sqlx::PgPool,
    reach: &Reachability,
) -> Result<PoolConnection<Postgres>> {
    acquire_unscoped(pool, reach).await
}

/// Checks a connection out for `intent`, failing fast while the server is
/// unreachable (see [`Reachability`]).
async fn checkout(
    pool: &sqlx::PgPool,
    reach: &Reachability,
    intent: Intent,
) -> Result<(PoolConnection<Postgres>, bool)> {
    if reach.is_down() {
        reach.check().await?;
    }
    let checkout = Checkout {
        intent,
        bound: Cell::new(false),
    };
    let acquire = CHECKOUT.scope(checkout, async {
        let conn = pool.acquire().await;
        (conn, CHECKOUT.with(|c| c.bound.get()))
    });
    let mut acquire = std::pin::pin!(acquire);
    let (conn, bound) = match tokio::time::timeout(reachability::SLOW_CHECKOUT, &mut acquire).await
    {
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
            Ok((conn, bound))
        }
        Err(e) => {
            if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
                reach.check().await?;
            }
            Err(Error::db("acquiring a connection")(e))
        }
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
}

/// A connection from the shared pool or from a tenant database's pool.
pub(crate) enum Pooled {
    Shared(PoolConnection<Postgres>),
    Database(DbConn),
}

impl Pooled {
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
        }
    }

    /// A connection through a transaction pooler, which carries no binding:
    /// each statement binds the tenant in a transaction of its own.
    pub(crate) fn through_pooler(
        conn: PoolConnection<Postgres>,
        tenant: &Tenant,
        scope: Arc<TenantScope>,
    ) -> Self {
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
    pub fn raw_connection(&mut self) -> &mut PgConnection {
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
        }
    }
}

crate::__impl_scoped_executor!(TenantConn, this => this.scoped());

impl Drop for TenantConn {
    fn drop(&mut self) {
        // Stale statements found by a stream are not dropped yet: take them
        // out of the pool with the connection.
        if self.stale.load(Ordering::Acquire) {
            match &mut self.conn {
                Pooled::Shared(c) => c.close_on_drop(),
                Pooled::Database(c) => c.discard_on_drop(true),
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
/// For a database-per-tenant tenant the transaction is opened with a plain
/// `BEGIN` on the tenant's own connection: nest with explicit `SAVEPOINT`s
/// there, not `Connection::begin`. A dropped, unfinished transaction closes its
/// connection, which ends the transaction at once.
pub struct TenantTx {
    tx: Tx,
    tenant: TenantId,
    scope: Option<Arc<TenantScope>>,
    /// Behind a transaction pooler: unnamed statements only.
    pooled: bool,
    stale: AtomicBool,
}

enum Tx {
    Shared(Transaction<'static, Postgres>),
    Database(DbConn),
}

impl Tx {
    fn connection(&mut self) -> &mut PgConnection {
        match self {
            Tx::Shared(tx) => tx,
            Tx::Database(c) => c,
        }
    }
}

impl TenantTx {
    pub(crate) async fn begin(
        conn: PoolConnection<Postgres>,
        tenant: &Tenant,
        scope: Arc<TenantScope>,
        pooled: bool,
    ) -> Result<Self> {
        let tx = Transaction::begin(conn, Some(scope.begin.clone()))
            .await
            .map_err(Error::db("beginning a tenant transaction"))?;
        Ok(TenantTx {
            tx: Tx::Shared(tx),
            tenant: tenant.id.clone(),
            scope: Some(scope),
            pooled,
            stale: AtomicBool::new(false),
        })
    }

    pub(crate) async fn begin_in_database(mut conn: DbConn, tenant: &Tenant) -> Result<Self> {
        // Until it is committed or rolled back, a dropped transaction closes
        // its connection (ending the transaction at once) rather than parking
        // it, open and holding its locks, in the pool.
        conn.discard_on_drop(true);
        sqlx::raw_sql("BEGIN")
            .execute(&mut *conn)
            .await
            .map_err(Error::db("beginning a tenant transaction"))?;
        Ok(TenantTx {
            tx: Tx::Database(conn),
            tenant: tenant.id.clone(),
            scope: None,
            pooled: false,
            stale: AtomicBool::new(false),
        })
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
        let fail = Error::db("committing a tenant transaction");
        match self.tx {
            Tx::Shared(tx) => tx.commit().await.map_err(fail),
            Tx::Database(mut conn) => finish(&mut conn, "COMMIT").await.map_err(fail),
        }
    }

    /// Rolls the transaction back.
    pub async fn rollback(mut self) -> Result<()> {
        self.clear_stale().await;
        let fail = Error::db("rolling back a tenant transaction");
        match self.tx {
            Tx::Shared(tx) => tx.rollback().await.map_err(fail),
            Tx::Database(mut conn) => finish(&mut conn, "ROLLBACK").await.map_err(fail),
        }
    }
}

crate::__impl_scoped_executor!(TenantTx, this => this.scoped());

/// Ends a tenant database's transaction; the connection goes back to the
/// pool only if that worked.
async fn finish(conn: &mut DbConn, statement: &'static str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(statement).execute(&mut **conn).await?;
    conn.discard_on_drop(false);
    Ok(())
}

impl fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}
