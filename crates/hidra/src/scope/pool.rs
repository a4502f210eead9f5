//! The shared pool: Hidra's own, so that a connection whose user left it
//! settled goes straight back.
//!
//! sqlx's `PgPool` pings every connection it takes back before another task
//! may have it: a spawned task and a round trip per checkout, during which the
//! connection is unavailable. Hidra does not need that ping: every checkout of
//! this pool first runs a statement that binds (or resets) the connection and
//! proves it alive and outside any transaction an earlier user left open (see
//! the parent module), and that statement also reads whatever replies were
//! still pending. The ping only matters for a connection whose user did not
//! finish with it: a statement cut off mid-flight (its query may still run on
//! the server), a transaction dropped unfinished (whose locks must go now, not
//! at the next checkout), a raw connection handed out. Those are *settled* in
//! a task of their own (a ping, or a `ROLLBACK`) before they go back, as
//! sqlx's pool would; every other connection is returned at once, without I/O.
//!
//! Pooling itself (a fair wait for a free slot, creating connections up to the
//! maximum, idle and lifetime limits) is deadpool's generic pool.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, SqlStr};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How often idle connections past their idle timeout or lifetime are closed.
const REAP_EVERY: Duration = Duration::from_secs(30);

/// Opens connections, and retires them past their idle timeout or lifetime.
pub(crate) struct Connector {
    options: PgConnectOptions,
    /// How long opening a connection may take (the acquire timeout).
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    /// The budget shared with other pools, if any: each open connection
    /// holds one unit of it.
    budget: Option<Arc<Budget>>,
}

impl Connector {
    fn retired(&self, metrics: &Metrics) -> bool {
        self.max_lifetime.is_some_and(|l| metrics.age() >= l)
            || self.idle_timeout.is_some_and(|t| metrics.last_used() >= t)
    }
}

impl managed::Manager for Connector {
    type Type = Budgeted;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<Budgeted, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let unit = match &self.budget {
            Some(budget) => Some(budget.reserve(deadline).await?),
            None => None,
        };
        // A server that accepts but never answers must not hold a checkout
        // past its timeout.
        let conn = tokio::time::timeout_at(deadline, self.options.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(Budgeted { conn, _unit: unit })
    }

    async fn recycle(&self, _: &mut Budgeted, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        // Nothing to check here: the checkout statement proves the connection.
        if self.retired(metrics) {
            return Err(RecycleError::message("past its idle timeout or lifetime"));
        }
        Ok(())
    }
}

/// A pooled connection and the unit of a shared [`Budget`] it holds, if its
/// pool has one: given back when the connection is dropped or closed.
pub(crate) struct Budgeted {
    conn: PgConnection,
    _unit: Option<OwnedSemaphorePermit>,
}

impl Budgeted {
    async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// Open connections allowed across several pools (the pools of the
/// registered servers): a pool that needs a connection while the budget is
/// spent closes an idle connection of another pool, else waits for one to
/// be closed.
pub(crate) struct Budget {
    units: Arc<Semaphore>,
    size: u32,
    pools: Mutex<Vec<managed::WeakPool<Connector>>>,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("size", &self.size)
            .field("free", &self.units.available_permits())
            .finish_non_exhaustive()
    }
}

/// How often a pool waiting for budget looks again for an idle connection
/// of another pool to close.
const BUDGET_RETRY: Duration = Duration::from_millis(20);

impl Budget {
    /// A budget of `size` open connections (at least 1).
    pub(crate) fn new(size: u32) -> Arc<Budget> {
        let size = size.max(1);
        Arc::new(Budget {
            units: Arc::new(Semaphore::new(size as usize)),
            size,
            pools: Mutex::new(Vec::new()),
        })
    }

    /// How many connections it allows, and how many are open.
    pub(crate) fn usage(&self) -> (u32, u32) {
        let free = self.units.available_permits() as u32;
        (self.size, self.size.saturating_sub(free))
    }

    /// One unit, by `deadline`: a free one, else one freed by closing the
    /// idle connection of another pool, else the first one given back.
    async fn reserve(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, sqlx::Error> {
        loop {
            if let Ok(unit) = Arc::clone(&self.units).try_acquire_owned() {
                return Ok(unit);
            }
            self.close_one_idle().await;
            let wait = (tokio::time::Instant::now() + BUDGET_RETRY).min(deadline);
            match tokio::time::timeout_at(wait, Arc::clone(&self.units).acquire_owned()).await {
                Ok(Ok(unit)) => return Ok(unit),
                Ok(Err(_)) => return Err(sqlx::Error::PoolClosed),
                Err(_) if wait >= deadline => return Err(sqlx::Error::PoolTimedOut),
                Err(_) => {}
            }
        }
    }

    /// Closes one idle connection of some pool, if any is idle.
    async fn close_one_idle(&self) {
        let pools: Vec<_> = {
            let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
            pools.retain(|p| p.upgrade().is_some());
            pools
                .iter()
                .filter_map(managed::WeakPool::upgrade)
                .collect()
        };
        for pool in pools {
            let mut taken = false;
            let removed = pool
                .retain(|_, _| {
                    let keep = taken;
                    taken = true;
                    keep
                })
                .removed;
            if let Some(conn) = removed.into_iter().next() {
                conn.close().await;
                return;
            }
        }
    }
}

/// Sizes and limits of a [`Pool`].
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) max_connections: u32,
    pub(crate) acquire_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        // sqlx's pool defaults, but for the size.
        PoolConfig {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
        }
    }
}

/// A pool of connections to one server, cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    pool: managed::Pool<Connector>,
    options: PgConnectOptions,
    acquire_timeout: Duration,
    /// The checkout statement of a connection with no tenant.
    unscoped: SqlStr,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("status", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool that opens its connections lazily; a checkout with no tenant
    /// runs `unscoped`.
    pub(crate) fn new(options: PgConnectOptions, config: &PoolConfig, unscoped: SqlStr) -> Pool {
        Pool::with_budget(options, config, unscoped, None)
    }

    /// A pool whose open connections also count against `budget`, shared
    /// with other pools.
    pub(crate) fn with_budget(
        options: PgConnectOptions,
        config: &PoolConfig,
        unscoped: SqlStr,
        budget: Option<Arc<Budget>>,
    ) -> Pool {
        let connector = Connector {
            options: options.clone(),
            connect_timeout: config.acquire_timeout,
            idle_timeout: config.idle_timeout,
            max_lifetime: config.max_lifetime,
            budget: budget.clone(),
        };
        let pool = managed::Pool::builder(connector)
            .max_size(config.max_connections.max(1) as usize)
            .build()
            .expect("no timeouts are configured, so no runtime is needed");
        if let Some(budget) = budget {
            (budget.pools.lock().unwrap_or_else(PoisonError::into_inner)).push(pool.weak());
        }
        let pool = Pool {
            pool,
            options,
            acquire_timeout: config.acquire_timeout,
            unscoped,
        };
        if config.idle_timeout.is_some() || config.max_lifetime.is_some() {
            pool.spawn_reaper();
        }
        pool
    }

    /// Closes idle connections past their limits every [`REAP_EVERY`], for as
    /// long as the pool exists.
    fn spawn_reaper(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = self.pool.weak();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                let Some(pool) = weak.upgrade() else { return };
                let removed = pool
                    .retain(|_, metrics| !pool.manager().retired(&metrics))
                    .removed;
                drop(pool);
                for conn in removed {
                    conn.close().await;
                }
            }
        });
    }

    /// The checkout statement of a connection with no tenant.
    pub(crate) fn unscoped(&self) -> &SqlStr {
        &self.unscoped
    }

    /// The options connections are opened with.
    pub(crate) fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// A connection, as it was left: the caller binds and proves it.
    ///
    /// Waits at most the acquire timeout for a free slot; an error opening a
    /// new connection is returned as it is.
    pub(crate) async fn get(&self) -> Result<PoolConn, sqlx::Error> {
        // A free slot is taken without arming a timer; deadpool's semaphore
        // hands slots to waiters first, so this never jumps the queue.
        let now = managed::Timeouts {
            wait: Some(Duration::ZERO),
            create: None,
            recycle: None,
        };
        let got = match self.pool.timeout_get(&now).await {
            Err(managed::PoolError::Timeout(managed::TimeoutType::Wait)) => {
                let unbounded = managed::Timeouts::new();
                let wait = self.pool.timeout_get(&unbounded);
                tokio::time::timeout(self.acquire_timeout, wait)
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)?
            }
            got => got,
        };
        match got {
            Ok(conn) => Ok(PoolConn {
                conn: Some(conn),
                settle: Settle::Nothing,
            }),
            Err(managed::PoolError::Backend(e)) => Err(e),
            Err(managed::PoolError::Closed) => Err(sqlx::Error::PoolClosed),
            Err(e) => Err(sqlx::Error::Protocol(format!("connection pool: {e}"))),
        }
    }

    /// Open connections, idle ones, and the maximum.
    pub(crate) fn status(&self) -> (u32, u32, u32) {
        let s = self.pool.status();
        (s.size as u32, s.available as u32, s.max_size as u32)
    }

    /// Closes the idle connections, refuses new checkouts, and waits for the
    /// connections checked out to come back (they are closed then).
    pub(crate) async fn close(&self) {
        let idle = self.pool.retain(|_, _| false).removed;
        self.pool.close();
        for conn in idle {
            conn.close().await;
        }
        while self.pool.status().size > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What a connection needs before another task may have it, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Settle {
    /// Its user read every reply: it goes back at once.
    Nothing,
    /// Replies may be pending (a statement cut off, a raw connection handed
    /// out): read them (a ping) first, so that no query of the last user
    /// still runs on it when the next one gets it.
    Ping,
    /// A transaction was left unfinished: roll it back first.
    Rollback,
    /// It must not be reused (its statement cache is stale): close it.
    Discard,
}

/// A connection checked out of a [`Pool`]; dropping it gives it back (settled
/// first, if its user said so with [`PoolConn::settle`]).
pub(crate) struct PoolConn {
    conn: Option<Object<Connector>>,
    settle: Settle,
}

impl PoolConn {
    /// What the connection needs before it goes back: the strongest need
    /// said since the checkout, until [`settled`](Self::settled).
    pub(crate) fn settle(&mut self, need: Settle) {
        self.settle = self.settle.max(need);
    }

    /// Its user finished with it cleanly (every reply read, no transaction).
    pub(crate) fn settled(&mut self) {
        self.settle = Settle::Nothing;
    }

    /// Closes the connection instead of giving it back.
    pub(crate) fn discard(mut self) {
        self.close_on_drop();
    }

    /// Closes the connection when it is dropped instead of giving it back.
    pub(crate) fn close_on_drop(&mut self) {
        self.settle = Settle::Discard;
    }

    /// Whether the connection was opened for this checkout.
    pub(crate) fn is_fresh(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| Object::metrics(c).recycle_count == 0)
    }
}

/// Closes a connection that left the pool, politely if a runtime is at hand.
fn close_detached(conn: Budgeted) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
        });
    }
}

impl Drop for PoolConn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let settle = self.settle;
        match settle {
            Settle::Nothing => return, // `conn` goes back as it is.
            Settle::Discard => return close_detached(Object::take(conn)),
            Settle::Ping | Settle::Rollback => {}
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to settle it on: it must not be reused.
            drop(Object::take(conn));
            return;
        };
        runtime.spawn(async move {
            let settled = match settle {
                Settle::Rollback => rollback_if_open(&mut conn.conn).await,
                _ => conn.conn.ping().await,
            };
            if let Err(error) = settled {
                tracing::debug!(%error, "closing a connection that could not be settled");
                close_detached(Object::take(conn));
            }
        });
    }
}

/// Rolls back the transaction the connection is in, if any.
///
/// A transaction can end without its owner knowing (a `COMMIT` that reached
/// the server before its future was dropped, a `COMMIT` in user SQL), and a
/// `ROLLBACK` outside one draws a warning. `begin_with` tells the two apart in
/// the same round trip that reads any reply still pending: it reports a
/// statement that leaves the connection outside a transaction as
/// `BeginFailed`.
async fn rollback_if_open(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    match conn.begin_with("SELECT 1").await {
        Ok(open) => return open.rollback().await,
        Err(sqlx::Error::BeginFailed) => return Ok(()),
        // An aborted transaction refuses every statement but its end.
        Err(sqlx::Error::Database(_)) => {}
        Err(e) => return Err(e),
    }
    sqlx::raw_sql("ROLLBACK").execute(conn).await.map(drop)
}

impl std::ops::Deref for PoolConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn.as_ref().expect("present until dropped").conn
    }
}

impl std::ops::DerefMut for PoolConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn.as_mut().expect("present until dropped").conn
    }
}

impl fmt::Debug for PoolConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConn")
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}
