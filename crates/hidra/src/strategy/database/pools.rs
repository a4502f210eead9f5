//! Connections to many tenant databases under one budget of server connections.
//!
//! A database-per-tenant deployment cannot share one pool between tenants: a
//! PostgreSQL connection belongs to the database it was opened on. Giving every
//! tenant database its own pool of a few connections does not scale either,
//! since 500 tenants with 4 connections each would ask the server for 2,000
//! backends. [`DatabasePools`] (public as [`TenantDatabases`]) keeps one set of
//! connections per tenant database, created on demand, under a **global budget**
//! of open server connections that is never exceeded, however many tenant
//! databases are active:
//!
//! 1. An idle connection of the wanted database is reused, most recently used
//!    first.
//! 2. Else, if the budget and the database's own limit allow, a connection is
//!    opened. The budget is reserved *before* the connect starts and given back
//!    if it fails.
//! 3. Else the least recently used idle connection of another database is
//!    closed and its share of the budget goes to the new connection, which is
//!    opened only once the close has completed.
//! 4. Else the request waits, in line, until a connection is returned or closed,
//!    up to [`DatabasePoolConfig::with_acquire_timeout`].
//!
//! Every unit of the budget is held by a guard from the moment it is reserved
//! until the connection it stands for is closed, so a dropped (cancelled)
//! `acquire` never leaks budget. A returned connection goes back to the idle set
//! of its database; its next checkout first resets its `search_path` and
//! row-level tenant (one round trip, which would fail inside a failed
//! transaction), and the transaction status PostgreSQL reports with the reply
//! proves it alive and outside any transaction an earlier user left open.
//! A connection that fails the check is closed (the server rolls the leftover
//! transaction back) and replaced. A background task closes connections idle
//! longer than [`DatabasePoolConfig::with_idle_timeout`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::{Notify, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// The error context of an acquire that timed out waiting for budget.
const WAIT_CONTEXT: &str = "waiting for a tenant database connection (budget exhausted)";

/// The error context of an acquire that timed out while connecting.
const CONNECT_CONTEXT: &str = "connecting to a tenant database";

/// The error context of an acquire refused because the pools are closed.
const CLOSED_CONTEXT: &str = "acquiring a tenant database connection";

/// How long closing one connection may take before its socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the connections to tenant databases are limited and recycled.
///
/// Every knob has a default suited to a small deployment; set them with the
/// `with_*` methods:
///
/// ```
/// use std::time::Duration;
/// use hidra::DatabasePoolConfig;
///
/// let config = DatabasePoolConfig::default()
///     .with_budget(90)
///     .with_per_database(5)
///     .with_idle_timeout(Duration::from_secs(60))
///     .with_acquire_timeout(Duration::from_secs(5));
/// assert_eq!(config.budget(), 90);
/// ```
///
/// # Sizing the budget
///
/// PostgreSQL refuses connections beyond its `max_connections` setting (100 by
/// default), of which `superuser_reserved_connections` (3 by default) are kept
/// for superusers. The budget counts this process's connections to *tenant
/// databases* only; the shared pool, migrations, administrative tools,
/// replication and every other instance of the application connect to the same
/// server. Choose it so that, summed over all application instances,
/// `budget + shared pool size ≤ max_connections − superuser_reserved_connections
/// − other clients`.
///
/// A connection serves one database only. When more tenant databases are busy
/// than the budget can hold, connections are recycled: an idle connection of a
/// quiet tenant is closed and one to the busy tenant is opened, which costs a
/// new server backend (a few milliseconds). Size the budget for the set of
/// tenants active at the same time, not for the number of tenants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabasePoolConfig {
    /// Open connections allowed across all tenant databases.
    budget: u32,
    /// Open connections allowed to one tenant database.
    per_database: u32,
    /// How long a connection may stay idle before it is closed.
    idle_timeout: Duration,
    /// How long an acquire may take in all.
    acquire_timeout: Duration,
}

impl Default for DatabasePoolConfig {
    fn default() -> Self {
        DatabasePoolConfig {
            budget: 40,
            per_database: 4,
            idle_timeout: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl DatabasePoolConfig {
    /// The defaults: a budget of 40 connections, 4 per database, idle
    /// connections closed after 30 s, acquires given up after 10 s.
    pub fn new() -> Self {
        DatabasePoolConfig::default()
    }

    /// The most server connections open at once across all tenant databases
    /// (default 40, at least 1), counting connections being opened or closed.
    /// Never exceeded; see [Sizing the budget](DatabasePoolConfig#sizing-the-budget)
    /// for how it relates to PostgreSQL's `max_connections`.
    pub fn with_budget(mut self, budget: u32) -> Self {
        self.budget = budget;
        self
    }

    /// The most connections open at once to one tenant database (default 4,
    /// at least 1). It keeps one busy tenant from taking the whole budget;
    /// further requests for that tenant wait for one of its connections. A value
    /// above the budget acts as the budget.
    pub fn with_per_database(mut self, per_database: u32) -> Self {
        self.per_database = per_database;
        self
    }

    /// How long a returned connection may stay idle before it is closed
    /// (default 30 s, more than zero), freeing the server backend of a tenant
    /// that went quiet. Connections in use are never closed by it. Too short a
    /// timeout makes tenants with sparse traffic reconnect often.
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// How long an acquire may take in all (default 10 s, more than zero):
    /// waiting for a share of the budget, closing another database's idle
    /// connection, connecting and checking. Past it, the acquire fails with
    /// [`Error::Database`] whose source is [`sqlx::Error::PoolTimedOut`].
    pub fn with_acquire_timeout(mut self, acquire_timeout: Duration) -> Self {
        self.acquire_timeout = acquire_timeout;
        self
    }

    /// The budget of open connections across all tenant databases.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    /// The limit of open connections to one tenant database.
    pub fn per_database(&self) -> u32 {
        self.per_database
    }

    /// How long a connection may stay idle before it is closed.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How long an acquire may take in all.
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// Refuses values that would make every acquire fail.
    fn validate(&self) -> Result<()> {
        let problem = if self.budget == 0 {
            "the tenant database connection budget must be at least 1"
        } else if self.per_database == 0 {
            "the per-database connection limit must be at least 1"
        } else if self.idle_timeout.is_zero() {
            "the tenant database idle timeout must be more than zero"
        } else if self.acquire_timeout.is_zero() {
            "the tenant database acquire timeout must be more than zero"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig(problem.into()))
    }
}

/// A snapshot of the connections to tenant databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatabasePoolStats {
    /// Server connections counted against the budget: in use, idle, being
    /// opened or being closed. Never more than `budget`.
    pub open: u32,
    /// Connections idle, ready for reuse by their database.
    pub idle: u32,
    /// Tenant databases with at least one counted connection.
    pub databases: usize,
    /// The configured budget.
    pub budget: u32,
}

/// Connections to many tenant databases on one server under a global budget
/// (see the [module docs](self)). Cheap to clone; clones share the connections.
#[derive(Clone)]
pub(crate) struct DatabasePools {
    /// The shared state.
    inner: Arc<Inner>,
}

/// What the clones of one [`DatabasePools`] share.
struct Inner {
    /// The server; the database is set per connection.
    base: PgConnectOptions,
    /// The limits.
    config: DatabasePoolConfig,
    /// Accounting, idle connections and the waiting line. Never held across `.await`.
    state: Mutex<State>,
    /// Woken whenever the count of open connections drops to zero.
    drained: Notify,
    /// Waits until the server has ended a closed connection's backend, so that
    /// the budget holds on the server too (sqlx's close does not wait).
    exit_check: Option<ExitCheck>,
}

/// An exit check through one monitoring connection to the base database
/// (outside the budget, opened on the first close): it polls
/// `pg_stat_activity` until the closed backend is gone.
fn monitor(base: PgConnectOptions) -> ExitCheck {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(base);
    Arc::new(move |pid| {
        let pool = pool.clone();
        Box::pin(async move {
            loop {
                let alive: Result<bool, _> = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                )
                .bind(pid)
                .fetch_one(&pool)
                .await;
                if !matches!(alive, Ok(true)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    })
}

/// Given a backend pid, resolves once the server no longer lists it.
pub(crate) type ExitCheck =
    Arc<dyn Fn(i32) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// The mutable part of [`Inner`].
struct State {
    /// Set by [`DatabasePools::close`]: acquires are refused, returns are closed.
    closed: bool,
    /// Budget units in use: connections open, being opened or being closed.
    open: u32,
    /// Idle connections, over all databases.
    idle: u32,
    /// The databases with at least one budget unit, by name.
    databases: HashMap<Arc<str>, Db>,
    /// Acquires waiting for budget, oldest first.
    waiters: VecDeque<Waiter>,
    /// The source of entry and waiter ids.
    next_id: u64,
    /// The idle-connection reaper, once started.
    reaper: Option<AbortHandle>,
}

/// The connections of one tenant database.
struct Db {
    /// Tells this entry from an earlier one of the same name (before an evict).
    id: u64,
    /// Budget units counted for this database: in use, idle, being opened.
    open: u32,
    /// Idle connections, least recently used at the front.
    idle: VecDeque<Idle>,
}

/// An idle connection.
struct Idle {
    /// The connection.
    conn: PgConnection,
    /// When it was returned.
    since: Instant,
}

/// An acquire waiting in line.
struct Waiter {
    /// Its id, for removal when it gives up.
    id: u64,
    /// The database it wants.
    database: Arc<str>,
    /// Where its grant goes.
    tx: oneshot::Sender<Grant>,
}

/// What an acquire was given, to turn into a connection outside the lock.
///
/// Every variant holds its budget through a [`Slot`] (or a [`DbConn`]), so a
/// grant dropped unused gives everything back.
enum Grant {
    /// An idle connection of the wanted database, to be checked.
    Idle(DbConn),
    /// A reserved budget unit: connect.
    Open(Slot),
    /// Another database's idle connection to close, then connect.
    Replace {
        /// The connection to close first.
        victim: PgConnection,
        /// The budget unit it held, now counted for the wanted database.
        slot: Slot,
    },
}

/// Grants to deliver once the lock is released.
type Handoffs = Vec<(oneshot::Sender<Grant>, Grant)>;

/// One unit of the budget: a connection open, being opened or being closed.
///
/// Dropping an armed slot gives the unit back and serves the waiting line. A
/// slot is disarmed when its connection joins the idle set, which then counts
/// the unit.
struct Slot {
    /// The pools the unit belongs to.
    inner: Arc<Inner>,
    /// The database the connection is (or will be) open to.
    database: Arc<str>,
    /// The id of the [`Db`] entry that counts this unit, if one does.
    entry: Option<u64>,
    /// Whether dropping the slot gives the unit back.
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (handoffs, drained) = {
            let mut state = self.inner.lock();
            state.open -= 1;
            if let Some(id) = self.entry {
                state.release_entry(&self.database, id);
            }
            (self.inner.dispatch(&mut state), state.open == 0)
        };
        deliver(handoffs);
        if drained {
            self.inner.drained.notify_waiters();
        }
    }
}

/// A connection to one tenant database, checked out of [`TenantDatabases`].
///
/// Dereferences to [`PgConnection`]: `query.fetch_one(&mut *conn)`. Dropping it
/// returns the connection to the idle set of its database, where its next
/// checkout checks it first (a transaction left open is rolled back by closing
/// the connection). If the database was evicted or the pools closed meanwhile,
/// the connection is closed instead.
pub struct DbConn {
    /// The connection; taken on drop.
    conn: Option<PgConnection>,
    /// Its budget unit; taken on drop.
    slot: Option<Slot>,
    /// Close it on drop instead of parking it (it may be inside a transaction).
    discard: bool,
}

impl DbConn {
    /// Pairs a connection with its budget unit.
    fn new(conn: PgConnection, slot: Slot) -> Self {
        DbConn {
            conn: Some(conn),
            slot: Some(slot),
            discard: false,
        }
    }

    /// Whether dropping it closes the connection (which ends any transaction
    /// on it at once) rather than parking it for reuse.
    pub(crate) fn discard_on_drop(&mut self, yes: bool) {
        self.discard = yes;
    }

    /// The tenant database this connection is open to.
    pub fn database(&self) -> &str {
        self.slot.as_ref().map_or("", |slot| &slot.database)
    }

    /// Takes the connection and its unit apart, so neither goes back on drop.
    fn into_parts(mut self) -> Option<(Slot, PgConnection)> {
        Some((self.slot.take()?, self.conn.take()?))
    }
}

impl Drop for DbConn {
    fn drop(&mut self) {
        if let (Some(conn), Some(slot)) = (self.conn.take(), self.slot.take()) {
            if self.discard {
                spawn_close(conn, slot);
            } else {
                give_back(slot, conn);
            }
        }
    }
}

impl fmt::Debug for DbConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConn")
            .field("database", &self.database())
            .finish_non_exhaustive()
    }
}

impl Deref for DbConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("a DbConn holds its connection until dropped")
    }
}

impl DerefMut for DbConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a DbConn holds its connection until dropped")
    }
}

impl AsMut<PgConnection> for DbConn {
    fn as_mut(&mut self) -> &mut PgConnection {
        self
    }
}

/// The first step of an acquire.
enum Checkout {
    /// Served at once.
    Ready(Grant),
    /// In the waiting line.
    Queued(Waiting),
}

/// An acquire's place in the waiting line; leaving it (timeout, cancellation)
/// removes the entry. A grant already sent is dropped with `rx`, which gives
/// it back.
struct Waiting {
    /// The pools.
    inner: Arc<Inner>,
    /// The waiter's id.
    id: u64,
    /// Where the grant arrives.
    rx: oneshot::Receiver<Grant>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let removed = {
            let mut state = self.inner.lock();
            let at = state.waiters.iter().position(|w| w.id == self.id);
            at.and_then(|at| state.waiters.remove(at))
        };
        drop(removed);
    }
}

impl DatabasePools {
    /// Pools for the databases of the server `base` points at (its database
    /// name is ignored). Nothing connects until the first acquire.
    pub(crate) fn new(
        base: PgConnectOptions,
        config: DatabasePoolConfig,
        exit_check: Option<ExitCheck>,
    ) -> Result<Self> {
        config.validate()?;
        Ok(DatabasePools {
            inner: Arc::new(Inner {
                base,
                config,
                state: Mutex::new(State {
                    closed: false,
                    open: 0,
                    idle: 0,
                    databases: HashMap::new(),
                    waiters: VecDeque::new(),
                    next_id: 1,
                    reaper: None,
                }),
                drained: Notify::new(),
                exit_check,
            }),
        })
    }

    /// A checked connection to `database`, within the budget; see the module
    /// docs for the order in which connections are reused, opened, recycled or
    /// waited for.
    pub(crate) async fn acquire(&self, database: &str) -> Result<DbConn> {
        let deadline = Instant::now() + self.inner.config.acquire_timeout;
        let database: Arc<str> = Arc::from(database);
        let grant = match self.inner.take_or_queue(&database)? {
            Checkout::Ready(grant) => grant,
            Checkout::Queued(mut waiting) => {
                match tokio::time::timeout_at(deadline, &mut waiting.rx).await {
                    Ok(Ok(grant)) => grant,
                    Ok(Err(_)) => return Err(closed_error()),
                    Err(_) => {
                        tracing::debug!(database = %database, "tenant database connection budget exhausted");
                        return Err(Error::Database {
                            context: WAIT_CONTEXT,
                            source: sqlx::Error::PoolTimedOut,
                        });
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline, self.inner.fulfil(grant)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Database {
                context: CONNECT_CONTEXT,
                source: sqlx::Error::PoolTimedOut,
            }),
        }
    }

    /// Closes every idle connection of `database` and forgets it, so that
    /// [`stats`](Self::stats) no longer counts it. Connections of it in use (or
    /// being opened) at the time are closed when returned.
    ///
    /// Stop sending requests to the tenant first (for example by marking it
    /// deprovisioning); an acquire made after `evict` opens a new connection.
    pub(crate) async fn evict(&self, database: &str) {
        let closing = {
            let mut state = self.inner.lock();
            match state.databases.remove(database) {
                Some(db) => {
                    state.idle -= len_u32(db.idle.len());
                    db.idle
                        .into_iter()
                        .map(|idle| (idle.conn, self.inner.slot(Arc::from(database), None)))
                        .collect()
                }
                None => Vec::new(),
            }
        };
        if !closing.is_empty() {
            tracing::debug!(database, idle = closing.len(), "evicting a tenant database");
        }
        close_all(closing).await;
    }

    /// Counts of open and idle connections.
    pub(crate) fn stats(&self) -> DatabasePoolStats {
        let state = self.inner.lock();
        DatabasePoolStats {
            open: state.open,
            idle: state.idle,
            databases: state.databases.len(),
            budget: self.inner.config.budget,
        }
    }

    /// Refuses further acquires, fails those waiting, closes the idle
    /// connections, and waits until every connection in use has been returned
    /// (and closed).
    pub(crate) async fn close(&self) {
        let (closing, waiters) = {
            let mut state = self.inner.lock();
            state.closed = true;
            if let Some(reaper) = state.reaper.take() {
                reaper.abort();
            }
            state.idle = 0;
            let closing: Vec<_> = state
                .databases
                .drain()
                .flat_map(|(name, db)| db.idle.into_iter().map(move |idle| (name.clone(), idle)))
                .map(|(name, idle)| (idle.conn, self.inner.slot(name, None)))
                .collect();
            (closing, std::mem::take(&mut state.waiters))
        };
        drop(waiters);
        close_all(closing).await;
        loop {
            let drained = self.inner.drained.notified();
            if self.inner.lock().open == 0 {
                return;
            }
            drained.await;
        }
    }
}

impl fmt::Debug for DatabasePools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("DatabasePools")
            .field("open", &stats.open)
            .field("idle", &stats.idle)
            .field("databases", &stats.databases)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The state, also after a panic elsewhere (it is kept consistent under the lock).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new armed budget unit (the caller has counted it).
    fn slot(self: &Arc<Self>, database: Arc<str>, entry: Option<u64>) -> Slot {
        Slot {
            inner: Arc::clone(self),
            database,
            entry,
            armed: true,
        }
    }

    /// A grant for `database` now, or a place in the waiting line.
    fn take_or_queue(self: &Arc<Self>, database: &Arc<str>) -> Result<Checkout> {
        let mut state = self.lock();
        if state.closed {
            return Err(closed_error());
        }
        self.ensure_reaper(&mut state);
        if let Some(grant) = self.take(&mut state, database) {
            return Ok(Checkout::Ready(grant));
        }
        let (tx, rx) = oneshot::channel();
        let id = state.next_id();
        state.waiters.push_back(Waiter {
            id,
            database: Arc::clone(database),
            tx,
        });
        Ok(Checkout::Queued(Waiting {
            inner: Arc::clone(self),
            id,
            rx,
        }))
    }

    /// The best grant for `database` the state allows, if any.
    fn take(self: &Arc<Self>, state: &mut State, database: &Arc<str>) -> Option<Grant> {
        if let Some(grant) = self.take_idle(state, database) {
            return Some(grant);
        }
        let db_open = state.databases.get(database).map_or(0, |db| db.open);
        if db_open >= self.config.per_database {
            return None;
        }
        if state.open < self.config.budget {
            state.open += 1;
            let id = state.count_for(database);
            return Some(Grant::Open(self.slot(Arc::clone(database), Some(id))));
        }
        if state.idle == 0 {
            return None;
        }
        // The least recently used idle connection of another database.
        let (victim_db, victim_id) = state
            .databases
            .iter()
            .filter(|(name, db)| *name != database && !db.idle.is_empty())
            .min_by_key(|(_, db)| db.idle.front().map(|idle| idle.since))
            .map(|(name, db)| (Arc::clone(name), db.id))?;
        let victim = state.databases.get_mut(&victim_db)?.idle.pop_front()?;
        state.idle -= 1;
        state.release_entry(&victim_db, victim_id);
        let id = state.count_for(database);
        tracing::trace!(database = %database, closing = %victim_db, "recycling an idle tenant database connection");
        Some(Grant::Replace {
            victim: victim.conn,
            slot: self.slot(Arc::clone(database), Some(id)),
        })
    }

    /// The most recently used idle connection of `database`, if any.
    fn take_idle(self: &Arc<Self>, state: &mut State, database: &Arc<str>) -> Option<Grant> {
        let db = state.databases.get_mut(database)?;
        let idle = db.idle.pop_back()?;
        let id = db.id;
        state.idle -= 1;
        Some(Grant::Idle(DbConn::new(
            idle.conn,
            self.slot(Arc::clone(database), Some(id)),
        )))
    }

    /// Serves the waiting line from what the state allows: idle connections to
    /// waiters of their own database first, then new or recycled connections,
    /// oldest waiter first. The grants are delivered by the caller, after it
    /// has released the lock.
    fn dispatch(self: &Arc<Self>, state: &mut State) -> Handoffs {
        let mut handoffs = Vec::new();
        if state.closed || state.waiters.is_empty() {
            return handoffs;
        }
        state.waiters.retain(|w| !w.tx.is_closed());
        for reuse_only in [true, false] {
            let mut at = 0;
            while at < state.waiters.len() {
                let stuck = if reuse_only {
                    state.idle == 0
                } else {
                    state.open >= self.config.budget && state.idle == 0
                };
                if stuck {
                    break;
                }
                let database = Arc::clone(&state.waiters[at].database);
                let grant = if reuse_only {
                    self.take_idle(state, &database)
                } else {
                    self.take(state, &database)
                };
                match grant {
                    Some(grant) => {
                        if let Some(waiter) = state.waiters.remove(at) {
                            handoffs.push((waiter.tx, grant));
                        }
                    }
                    None => at += 1,
                }
            }
        }
        handoffs
    }

    /// Starts the idle-connection reaper, or restarts it if its runtime ended.
    fn ensure_reaper(self: &Arc<Self>, state: &mut State) {
        if state
            .reaper
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let task = tokio::spawn(reap(Arc::downgrade(self), self.config.idle_timeout));
        state.reaper = Some(task.abort_handle());
    }

    /// Turns a grant into a checked connection.
    async fn fulfil(self: &Arc<Self>, grant: Grant) -> Result<DbConn> {
        let (slot, old) = match grant {
            Grant::Idle(conn) => {
                let Some((slot, mut conn)) = conn.into_parts() else {
                    unreachable!("a granted DbConn holds its parts");
                };
                match is_clean(&mut conn).await {
                    Ok(true) => return Ok(DbConn::new(conn, slot)),
                    Ok(false) => tracing::warn!(
                        database = %slot.database,
                        "closing a tenant database connection returned inside an open transaction"
                    ),
                    Err(error) => tracing::debug!(
                        database = %slot.database,
                        %error,
                        "closing a broken tenant database connection"
                    ),
                }
                (slot, Some(conn))
            }
            Grant::Open(slot) => (slot, None),
            Grant::Replace { victim, slot } => (slot, Some(victim)),
        };
        if let Some(old) = old {
            close_quietly(old, self.exit_check.clone()).await;
        }
        let options = self.base.clone().database(&slot.database);
        let conn = PgConnection::connect_with(&options)
            .await
            .map_err(Error::db(CONNECT_CONTEXT))?;
        tracing::trace!(database = %slot.database, "opened a tenant database connection");
        Ok(DbConn::new(conn, slot))
    }

    /// Takes the connections idle too long out of the idle sets; returns them
    /// with their units, and when the next one expires.
    fn take_expired(self: &Arc<Self>) -> (Vec<(PgConnection, Slot)>, Instant) {
        let timeout = self.config.idle_timeout;
        let now = Instant::now();
        let mut state = self.lock();
        let mut expired = Vec::new();
        let mut next = now + timeout;
        for (name, db) in &mut state.databases {
            while let Some(idle) = db.idle.front() {
                let expires = idle.since + timeout;
                if expires > now {
                    next = next.min(expires);
                    break;
                }
                if let Some(idle) = db.idle.pop_front() {
                    expired.push((idle.conn, self.slot(Arc::clone(name), Some(db.id))));
                }
            }
        }
        state.idle -= len_u32(expired.len());
        (expired, next)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(reaper) = state.reaper.take() {
            reaper.abort();
        }
        let idle: Vec<PgConnection> = state
            .databases
            .drain()
            .flat_map(|(_, db)| db.idle.into_iter().map(|idle| idle.conn))
            .collect();
        if let (false, Ok(runtime)) = (idle.is_empty(), tokio::runtime::Handle::try_current()) {
            let check = self.exit_check.clone();
            runtime.spawn(join_all(
                idle.into_iter()
                    .map(move |c| close_quietly(c, check.clone())),
            ));
        }
    }
}

impl State {
    /// A fresh id.
    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Counts one more unit for `database`, creating its entry; returns the entry id.
    fn count_for(&mut self, database: &Arc<str>) -> u64 {
        if let Some(db) = self.databases.get_mut(database) {
            db.open += 1;
            return db.id;
        }
        let id = self.next_id();
        self.databases.insert(
            Arc::clone(database),
            Db {
                id,
                open: 1,
                idle: VecDeque::new(),
            },
        );
        id
    }

    /// Uncounts one unit of entry `id` of `database`; forgets the entry at zero.
    /// Does nothing if that entry was evicted.
    fn release_entry(&mut self, database: &str, id: u64) {
        if let Some(db) = self.databases.get_mut(database)
            && db.id == id
        {
            db.open -= 1;
            if db.open == 0 {
                self.databases.remove(database);
            }
        }
    }
}

/// Returns a connection to the idle set of its database, or closes it if the
/// database was evicted or the pools closed.
fn give_back(mut slot: Slot, conn: PgConnection) {
    let inner = Arc::clone(&slot.inner);
    let outcome = {
        let mut guard = inner.lock();
        let state = &mut *guard;
        let entry = slot.entry;
        let current = !state.closed
            && entry.is_some_and(|id| {
                state
                    .databases
                    .get(&*slot.database)
                    .is_some_and(|db| db.id == id)
            });
        match state.databases.get_mut(&*slot.database) {
            Some(db) if current => {
                db.idle.push_back(Idle {
                    conn,
                    since: Instant::now(),
                });
                state.idle += 1;
                slot.armed = false;
                Ok(inner.dispatch(state))
            }
            _ => Err(conn),
        }
    };
    match outcome {
        Ok(handoffs) => {
            drop(slot);
            deliver(handoffs);
        }
        Err(conn) => {
            tracing::trace!(database = %slot.database, "closing a returned connection of an evicted tenant database or closed pools");
            spawn_close(conn, slot);
        }
    }
}

/// Sends grants to their waiters; a grant whose waiter has gone is dropped,
/// which gives it back.
fn deliver(handoffs: Handoffs) {
    for (tx, grant) in handoffs {
        if let Err(grant) = tx.send(grant) {
            drop(grant);
        }
    }
}

/// Closes a connection in the background, then gives its unit back.
fn spawn_close(conn: PgConnection, slot: Slot) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let check = slot.inner.exit_check.clone();
            runtime.spawn(async move {
                close_quietly(conn, check).await;
                drop(slot);
            });
        }
        // No runtime to close it politely: dropping the socket closes it too.
        Err(_) => drop(conn),
    }
}

/// Closes connections concurrently, giving each unit back once its close completed.
async fn close_all(closing: Vec<(PgConnection, Slot)>) {
    join_all(closing.into_iter().map(|(conn, slot)| async move {
        let check = slot.inner.exit_check.clone();
        close_quietly(conn, check).await;
        drop(slot);
    }))
    .await;
}

/// Closes a connection (`Terminate`, then shutdown), ignoring failures: on
/// error or timeout the socket is dropped, which closes it too. With an exit
/// check, also waits (bounded) until the server has ended its backend, so the
/// budget unit is given back only once the server slot is free.
async fn close_quietly(mut conn: PgConnection, check: Option<ExitCheck>) {
    let pid = match &check {
        Some(_) => tokio::time::timeout(
            CLOSE_TIMEOUT,
            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&mut conn),
        )
        .await
        .ok()
        .and_then(Result::ok),
        None => None,
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
    if let (Some(check), Some(pid)) = (check, pid) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, check(pid)).await;
    }
}

/// Whether an idle connection is alive and outside any transaction; see the
/// leftover-transaction rule in the parent module.
async fn is_clean(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    // A statement, not an empty query: inside a failed transaction it fails.
    // The timeouts too: a tenant checkout sets its own on the session, and
    // the next user may be the migration runner or a move.
    crate::scope::run_outside_transaction(
        conn,
        crate::sql::reset_statement(crate::scope::Timeouts::ALL.values()),
    )
    .await
}

/// The error of an acquire on closed pools.
fn closed_error() -> Error {
    Error::Database {
        context: CLOSED_CONTEXT,
        source: sqlx::Error::PoolClosed,
    }
}

/// A count as `u32` (the counts here never come near `u32::MAX`).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Closes connections idle longer than `idle_timeout` until the pools are dropped.
async fn reap(pools: Weak<Inner>, idle_timeout: Duration) {
    let mut next = Instant::now() + idle_timeout;
    loop {
        tokio::time::sleep_until(next).await;
        let Some(inner) = pools.upgrade() else {
            return;
        };
        let (expired, wake) = inner.take_expired();
        drop(inner);
        if !expired.is_empty() {
            tracing::debug!(
                count = expired.len(),
                "closing idle tenant database connections"
            );
        }
        close_all(expired).await;
        // A little slack so that a connection is past its timeout when looked at again.
        next = wake.max(Instant::now()) + Duration::from_millis(1);
    }
}

/// Connections to many tenant databases on one server under a global budget
/// of open server connections.
///
/// Hidra uses these for database-per-tenant tenants; they are public for
/// applications that route to tenant databases themselves. See
/// [`DatabasePoolConfig`] for the knobs and how to size the budget.
///
/// ```no_run
/// use hidra::{DatabasePoolConfig, TenantDatabases};
/// use hidra::sqlx::postgres::PgConnectOptions;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server: PgConnectOptions = "postgres://app@db.internal".parse()?;
/// let databases = TenantDatabases::new(server, DatabasePoolConfig::default().with_budget(40))?;
///
/// let mut conn = databases.acquire("tenant_acme").await?;
/// let (n,): (i64,) = hidra::sqlx::query_as("SELECT count(*) FROM customers")
///     .fetch_one(&mut *conn)
///     .await?;
/// drop(conn); // back to the idle set of `tenant_acme`
///
/// // Before `DROP DATABASE tenant_acme`:
/// databases.evict("tenant_acme").await;
/// # let _ = n; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TenantDatabases {
    /// The pools.
    pools: DatabasePools,
}

impl TenantDatabases {
    /// Connections to the databases of the server `base` points at (its
    /// database name is replaced by the one given to
    /// [`acquire`](Self::acquire)). Nothing connects until the first acquire.
    ///
    /// Besides the budget, one monitoring connection to `base`'s own database
    /// is opened on the first close: a closed connection's budget unit is
    /// reused only once the server no longer lists its backend, so the budget
    /// holds on the server's side too.
    ///
    /// Fails with [`Error::InvalidConfig`] if a limit or timeout is zero.
    pub fn new(base: PgConnectOptions, config: DatabasePoolConfig) -> Result<Self> {
        let check = monitor(base.clone());
        Ok(TenantDatabases {
            pools: DatabasePools::new(base, config, Some(check))?,
        })
    }

    /// A connection to `database`, checked alive and outside any transaction,
    /// within the budget. Waits up to the acquire timeout for budget; past it,
    /// fails with [`Error::Database`] whose source is
    /// [`sqlx::Error::PoolTimedOut`]. Cancelling the returned future gives
    /// back everything it held.
    pub async fn acquire(&self, database: &str) -> Result<DbConn> {
        self.pools.acquire(database).await
    }

    /// Closes every idle connection to `database` and forgets it; connections
    /// to it in use are closed when returned. Call it before `DROP DATABASE`
    /// and when a tenant is removed, after new requests for it have stopped.
    pub async fn evict(&self, database: &str) {
        self.pools.evict(database).await;
    }

    /// Counts of open and idle connections.
    pub fn stats(&self) -> DatabasePoolStats {
        self.pools.stats()
    }

    /// Refuses further acquires, closes idle connections and waits until every
    /// connection in use has been returned and closed.
    pub async fn close(&self) {
        self.pools.close().await;
    }
}
