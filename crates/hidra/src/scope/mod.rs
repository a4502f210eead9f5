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
//!   ([`Hidra::acquire`](crate::Hidra::acquire)) gets the tenant's
//!   `search_path`; a shared connection
//!   ([`Hidra::acquire_shared`](crate::Hidra::acquire_shared)), a
//!   transaction checkout ([`Hidra::begin`](crate::Hidra::begin), whose
//!   binding is transaction-local) and anything else get `RESET search_path`
//!   and no row-level tenant, so no session binding of an earlier tenant is
//!   left under a transaction that user code might end early. The
//!   same statement checks that the connection is not inside a transaction an
//!   earlier user left open (such a connection is closed, which rolls that
//!   transaction back). It replaces the ping sqlx would otherwise send, so
//!   binding costs no extra round trip, and it also proves the connection alive.
//! - A new connection starts with the server default and is bound by
//!   `acquire` itself.
//! - [`Hidra::begin`](crate::Hidra::begin) sends `BEGIN` and a
//!   transaction-local `set_config('search_path', …, true)` as one simple query:
//!   one round trip, and the binding ends with the transaction.
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
pub use databases::{DatabasePoolConfig, DatabasePoolStats, DbConn, TenantDatabases};

use std::cell::Cell;
use std::fmt;
use std::ops::{Deref, DerefMut};

use futures_util::future::BoxFuture;
use sqlx::pool::{PoolConnection, PoolConnectionMetadata};
use sqlx::{PgConnection, Postgres, Row, Transaction};

use crate::error::{Error, Result};
use crate::tenant::{Tenant, TenantId};

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

#[derive(Clone, Debug)]
enum Intent {
    /// Bind this session `search_path` and row-level tenant.
    Session(Binding),
    /// Unscoped: clear whatever a tenant left behind.
    Reset,
}

tokio::task_local! {
    static CHECKOUT: Checkout;
}

/// The `before_acquire` hook Hidra installs on its pool, in place of sqlx's ping.
///
/// It runs one simple query that proves the connection alive, checks that it is
/// not inside a transaction some earlier user left open (`now()`, the start of
/// the transaction, equals `statement_timestamp()` only when this statement
/// started it), and binds or resets the `search_path`. A connection found inside
/// a leftover transaction is refused, so sqlx closes it (the server rolls that
/// transaction back) and hands out another.
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

/// Runs the checkout statement for `intent`; returns whether the connection was
/// outside any transaction.
async fn prepare(conn: &mut PgConnection, intent: &Intent) -> Result<bool, sqlx::Error> {
    let statement = match intent {
        Intent::Session(b) => crate::sql::bind_session(b),
        Intent::Reset => crate::sql::reset_statement(),
    };
    let row = sqlx::raw_sql(statement).fetch_optional(conn).await?;
    is_fresh(row.as_ref())
}

/// Reads the leftover-transaction check's answer (the first column of the
/// first row); no row counts as not fresh.
fn is_fresh(row: Option<&sqlx::postgres::PgRow>) -> Result<bool, sqlx::Error> {
    row.map_or(Ok(false), |row| row.try_get::<bool, _>(0))
}

/// Checks a connection out of `pool` bound to a tenant.
pub(crate) async fn acquire_bound(
    pool: &sqlx::PgPool,
    binding: Binding,
) -> Result<PoolConnection<Postgres>> {
    let intent = Intent::Session(binding);
    let (mut conn, bound) = checkout(pool, intent.clone()).await?;
    if !bound {
        // A freshly opened connection: the hook does not run for those.
        prepare(&mut conn, &intent)
            .await
            .map_err(Error::db("binding the tenant's search_path"))?;
    }
    Ok(conn)
}

/// Checks a connection out of `pool` with the server's default `search_path`.
pub(crate) async fn acquire_unscoped(pool: &sqlx::PgPool) -> Result<PoolConnection<Postgres>> {
    // A fresh connection already has the default; an idle one was reset by the hook.
    Ok(checkout(pool, Intent::Reset).await?.0)
}

/// Checks a connection out of `pool` for a transaction-local binding. The
/// session is reset too: should user code end the transaction early (a raw
/// `COMMIT`), the transaction-local binding goes with it and what remains
/// must be no tenant, not the tenant the connection last served.
pub(crate) async fn acquire_for_tx(pool: &sqlx::PgPool) -> Result<PoolConnection<Postgres>> {
    acquire_unscoped(pool).await
}

async fn checkout(pool: &sqlx::PgPool, intent: Intent) -> Result<(PoolConnection<Postgres>, bool)> {
    let checkout = Checkout {
        intent,
        bound: Cell::new(false),
    };
    let (conn, bound) = CHECKOUT
        .scope(checkout, async {
            let conn = pool.acquire().await;
            (conn, CHECKOUT.with(|c| c.bound.get()))
        })
        .await;
    Ok((conn.map_err(Error::db("acquiring a connection"))?, bound))
}

/// A pooled connection whose `search_path` is bound to one tenant.
///
/// Dereferences to [`PgConnection`], so sqlx queries run on it unqualified
/// against the tenant's tables: `query.fetch_one(&mut *conn)`. Dropping it
/// returns the connection to the pool; its next checkout re-binds it.
///
/// Not safe behind a transaction-pooling proxy; use [`Hidra::begin`](crate::Hidra::begin) there.
pub struct TenantConn {
    conn: Pooled,
    tenant: TenantId,
}

/// A connection from the shared pool or from a tenant database's pool.
pub(crate) enum Pooled {
    Shared(PoolConnection<Postgres>),
    Database(DbConn),
}

impl Deref for Pooled {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Pooled::Shared(c) => c,
            Pooled::Database(c) => c,
        }
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Pooled::Shared(c) => c,
            Pooled::Database(c) => c,
        }
    }
}

impl TenantConn {
    pub(crate) fn new(conn: Pooled, tenant: &Tenant) -> Self {
        TenantConn {
            conn,
            tenant: tenant.id.clone(),
        }
    }

    /// The tenant this connection is bound to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
}

impl fmt::Debug for TenantConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantConn")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl Deref for TenantConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for TenantConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl AsMut<PgConnection> for TenantConn {
    fn as_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// A transaction whose `search_path` is bound to one tenant with a
/// transaction-local setting.
///
/// Dereferences to [`PgConnection`]. Call [`commit`](TenantTx::commit) to keep
/// the work; dropping it without committing rolls back (also on panic).
/// Safe behind a transaction-pooling proxy such as PgBouncer.
///
/// For a database-per-tenant tenant the transaction is opened with a plain
/// `BEGIN` on the tenant's own connection: nest with explicit `SAVEPOINT`s
/// there, not `Connection::begin`. A dropped, unfinished transaction closes its
/// connection, which ends the transaction at once.
pub struct TenantTx {
    tx: Tx,
    tenant: TenantId,
}

enum Tx {
    Shared(Transaction<'static, Postgres>),
    Database(DbConn),
}

impl TenantTx {
    pub(crate) async fn begin(
        conn: PoolConnection<Postgres>,
        tenant: &Tenant,
        binding: &Binding,
    ) -> Result<Self> {
        let tx = Transaction::begin(conn, Some(crate::sql::begin_scoped(binding)))
            .await
            .map_err(Error::db("beginning a tenant transaction"))?;
        Ok(TenantTx {
            tx: Tx::Shared(tx),
            tenant: tenant.id.clone(),
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
        })
    }

    /// The tenant this transaction is bound to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Commits the transaction.
    pub async fn commit(self) -> Result<()> {
        let fail = Error::db("committing a tenant transaction");
        match self.tx {
            Tx::Shared(tx) => tx.commit().await.map_err(fail),
            Tx::Database(mut conn) => finish(&mut conn, "COMMIT").await.map_err(fail),
        }
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<()> {
        let fail = Error::db("rolling back a tenant transaction");
        match self.tx {
            Tx::Shared(tx) => tx.rollback().await.map_err(fail),
            Tx::Database(mut conn) => finish(&mut conn, "ROLLBACK").await.map_err(fail),
        }
    }
}

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

impl Deref for TenantTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match &self.tx {
            Tx::Shared(tx) => tx,
            Tx::Database(c) => c,
        }
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut self.tx {
            Tx::Shared(tx) => tx,
            Tx::Database(c) => c,
        }
    }
}

impl AsMut<PgConnection> for TenantTx {
    fn as_mut(&mut self) -> &mut PgConnection {
        self
    }
}
