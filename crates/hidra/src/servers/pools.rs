//! Connections to the registered servers: one pool per server, opened on
//! first use, under one budget of open connections.
//!
//! A tenant whose [`Placement::server`](crate::Placement::server) names a
//! registered server is served by that server's pool (schema per tenant and
//! row level) or by that server's tenant-database pools (database per
//! tenant); a tenant without one by the control server's, as before. The
//! pools of a server are built the first time one of its tenants is checked
//! out, from its row in the [`ServersTable`], and kept until the handle is
//! dropped or the server is removed through this handle.
//!
//! Each server's pool holds at most [`ServerPoolConfig::per_server`]
//! connections, and all of them together at most
//! [`ServerPoolConfig::budget`]: a server that needs a connection while the
//! budget is spent closes an idle connection of another server first, else
//! waits (up to the acquire timeout) for one to be closed. The control
//! server's pool is sized by [`HidraBuilder::max_connections`](crate::HidraBuilder::max_connections)
//! and is not part of this budget. Tenant databases on a registered server
//! get a budget of their own per server
//! ([`HidraBuilder::database_per_tenant`](crate::HidraBuilder::database_per_tenant)'s).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use sqlx::postgres::PgConnectOptions;

use super::{ServerName, ServerState, ServersTable};
use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::scope::{Budget, DatabasePoolConfig, Pool, PoolConfig, Reachability, TenantDatabases};

/// How many connections the pools of the registered servers may open.
///
/// ```
/// use hidra::ServerPoolConfig;
///
/// let config = ServerPoolConfig::default().with_per_server(8).with_budget(40);
/// assert_eq!((config.per_server(), config.budget()), (8, 40));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPoolConfig {
    per_server: u32,
    budget: u32,
}

impl Default for ServerPoolConfig {
    fn default() -> Self {
        ServerPoolConfig {
            per_server: 10,
            budget: 40,
        }
    }
}

impl ServerPoolConfig {
    /// The defaults: 10 connections per server, 40 in all.
    pub fn new() -> Self {
        ServerPoolConfig::default()
    }

    /// The most connections open at once to one server (default 10, at
    /// least 1).
    pub fn with_per_server(mut self, per_server: u32) -> Self {
        self.per_server = per_server.max(1);
        self
    }

    /// The most connections open at once to all registered servers together
    /// (default 40, at least 1). Size it as [`DatabasePoolConfig`]'s budget:
    /// summed over the application's instances, each server's share must fit
    /// its `max_connections`.
    pub fn with_budget(mut self, budget: u32) -> Self {
        self.budget = budget.max(1);
        self
    }

    /// Connections per server.
    pub fn per_server(&self) -> u32 {
        self.per_server
    }

    /// Connections over all registered servers.
    pub fn budget(&self) -> u32 {
        self.budget
    }
}

/// The connections of one registered server.
pub(crate) struct ServerConns {
    pub(crate) name: ServerName,
    pub(crate) pool: Pool,
    pub(crate) reach: Reachability,
    pub(crate) databases: TenantDatabases,
    /// Set once Hidra's internal schema is known to exist there.
    pub(crate) internal_ready: tokio::sync::OnceCell<()>,
    /// Set once its template database is known to be current.
    pub(crate) template_ready: tokio::sync::OnceCell<()>,
    /// Set once its row-level tables passed the audit.
    pub(crate) row_level_audited: tokio::sync::OnceCell<()>,
}

impl ServerConns {
    /// Closes its pools, waiting for checked-out connections to come back.
    pub(crate) async fn close(&self) {
        self.databases.close().await;
        self.pool.close().await;
    }
}

impl fmt::Debug for ServerConns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConns")
            .field("name", &self.name)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The pools of the registered servers, by name, and how to build them.
pub(crate) struct ServerPools {
    /// Where new tenants go.
    pub(crate) placement: Arc<dyn super::PlacementPolicy>,
    /// What placement knows of the servers, for a moment.
    pub(crate) loads: super::placement::LoadCache,
    pub(crate) table: ServersTable,
    pub(crate) config: ServerPoolConfig,
    /// The control pool's timeouts, applied to every server's pool.
    pool: PoolConfig,
    databases: DatabasePoolConfig,
    statement_cache_capacity: usize,
    /// The checkout statement of a connection with no tenant.
    unscoped: sqlx::SqlStr,
    budget: Arc<Budget>,
    servers: RwLock<HashMap<String, Arc<ServerConns>>>,
    /// Serialises building a server's pools, so that two first checkouts
    /// do not both build them.
    building: tokio::sync::Mutex<()>,
}

impl fmt::Debug for ServerPools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerPools")
            .field("config", &self.config)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl ServerPools {
    pub(crate) fn new(
        placement: Arc<dyn super::PlacementPolicy>,
        table: ServersTable,
        config: ServerPoolConfig,
        pool: PoolConfig,
        databases: DatabasePoolConfig,
        statement_cache_capacity: usize,
        unscoped: sqlx::SqlStr,
    ) -> Self {
        ServerPools {
            placement,
            loads: super::placement::LoadCache::default(),
            table,
            budget: Budget::new(config.budget),
            config,
            pool,
            databases,
            statement_cache_capacity,
            unscoped,
            servers: RwLock::new(HashMap::new()),
            building: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, name: &str) -> Option<Arc<ServerConns>> {
        let servers = self.servers.read().unwrap_or_else(PoisonError::into_inner);
        servers.get(name).cloned()
    }

    /// Forgets the pools of `name` (closing them once their connections
    /// come back): its row changed or went away.
    pub(crate) fn forget(&self, name: &str) -> Option<Arc<ServerConns>> {
        let mut servers = self.servers.write().unwrap_or_else(PoisonError::into_inner);
        servers.remove(name)
    }

    /// The budget, and the connections open to registered servers.
    pub(crate) fn usage(&self) -> (u32, u32) {
        self.budget.usage()
    }

    /// Closes every server's pools.
    pub(crate) async fn close(&self) {
        let all: Vec<_> = {
            let mut servers = self.servers.write().unwrap_or_else(PoisonError::into_inner);
            servers.drain().map(|(_, c)| c).collect()
        };
        futures_util::future::join_all(all.iter().map(|c| c.close())).await;
    }
}

/// How a registered server is doing, for health checks and metrics; see
/// [`Hidra::server_health`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerHealth {
    /// The server.
    pub name: ServerName,
    /// Its state in the registry.
    pub state: ServerState,
    /// How many tenants live on it.
    pub tenants: u64,
    /// How long a `SELECT 1` through its pool took, or `None` if it did not
    /// answer within the timeout.
    pub latency: Option<std::time::Duration>,
    /// Its pool: open connections, idle ones, the maximum.
    pub pool: crate::PoolStatus,
}

impl ServerHealth {
    /// Whether it answered.
    pub fn is_reachable(&self) -> bool {
        self.latency.is_some()
    }
}

/// Connections open to the registered servers together, and their budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerBudget {
    /// Open connections over all registered servers.
    pub open: u32,
    /// The most allowed ([`ServerPoolConfig::budget`]).
    pub budget: u32,
}

impl Hidra {
    /// The connections of the server called `name`, built from its registry
    /// row on first use. Fails with [`Error::ServerNotFound`] if no such
    /// server is registered.
    pub(crate) async fn server_conns(&self, name: &str) -> Result<Arc<ServerConns>> {
        let pools = &self.inner.conns.servers;
        if let Some(conns) = pools.cached(name) {
            return Ok(conns);
        }
        let server_name = ServerName::new(name)?;
        let _building = pools.building.lock().await;
        if let Some(conns) = pools.cached(name) {
            return Ok(conns);
        }
        let server = self
            .servers()
            .get(&server_name)
            .await?
            .ok_or_else(|| Error::ServerNotFound(server_name.clone()))?;
        let options: PgConnectOptions = server.url().parse().map_err(Error::InvalidUrl)?;
        let options = options.statement_cache_capacity(pools.statement_cache_capacity);
        let pool_config = PoolConfig {
            max_connections: pools.config.per_server,
            ..pools.pool.clone()
        };
        let conns = Arc::new(ServerConns {
            name: server.name.clone(),
            pool: Pool::with_budget(
                options.clone(),
                &pool_config,
                pools.unscoped.clone(),
                Some(Arc::clone(&pools.budget)),
            ),
            reach: Reachability::new(options.clone()),
            databases: TenantDatabases::new(options, pools.databases.clone())?,
            internal_ready: tokio::sync::OnceCell::new(),
            template_ready: tokio::sync::OnceCell::new(),
            row_level_audited: tokio::sync::OnceCell::new(),
        });
        let mut servers = pools
            .servers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        servers.insert(name.to_owned(), Arc::clone(&conns));
        Ok(conns)
    }
}

/// Where a tenant's connections come from: the control server, or the
/// registered server its placement names.
pub(crate) enum Home {
    Control,
    Server(Arc<ServerConns>),
}

impl Hidra {
    /// Every registered server: its state and tenant count, whether it
    /// answers a `SELECT 1` through its pool within `timeout` and how fast,
    /// and its pool. The servers are checked at once; the control server is
    /// not among them (see [`Hidra::pool_status`]).
    pub async fn server_health(&self, timeout: std::time::Duration) -> Result<Vec<ServerHealth>> {
        let servers = self.servers().list().await?;
        let checks = servers.into_iter().map(|server| async move {
            let started = std::time::Instant::now();
            let ping = async {
                let home = self.home_of(Some(server.name.as_str())).await?;
                let mut conn = self.acquire_shared_at(&home).await?;
                sqlx::query("SELECT 1")
                    .execute(&mut *conn)
                    .await
                    .map_err(Error::db("checking a server"))?;
                Ok::<_, Error>(())
            };
            let latency = match tokio::time::timeout(timeout, ping).await {
                Ok(Ok(())) => Some(started.elapsed()),
                _ => None,
            };
            let pool = match self.inner.conns.servers.cached(server.name.as_str()) {
                Some(conns) => {
                    let (size, idle, max) = conns.pool.status();
                    crate::PoolStatus { size, idle, max }
                }
                None => crate::PoolStatus {
                    size: 0,
                    idle: 0,
                    max: self.inner.conns.servers.config.per_server,
                },
            };
            ServerHealth {
                name: server.name,
                state: server.state,
                tenants: server.tenants,
                latency,
                pool,
            }
        });
        Ok(futures_util::future::join_all(checks).await)
    }

    /// Connections open to the registered servers, and their budget.
    pub fn server_budget(&self) -> ServerBudget {
        let (budget, open) = self.inner.conns.servers.usage();
        ServerBudget { open, budget }
    }
}

impl Home {
    /// The registered server's name (`None`: the control server).
    pub(crate) fn server_name(&self) -> Option<String> {
        match self {
            Home::Control => None,
            Home::Server(s) => Some(s.name.to_string()),
        }
    }
}

impl Hidra {
    /// The home of a tenant placed on `server` (`None`: the control server).
    pub(crate) async fn home_of(&self, server: Option<&str>) -> Result<Home> {
        Ok(match server {
            None => Home::Control,
            Some(name) => Home::Server(self.server_conns(name).await?),
        })
    }

    /// The home of `tenant`.
    pub(crate) async fn home(&self, tenant: &crate::Tenant) -> Result<Home> {
        self.home_of(tenant.placement.server.as_deref()).await
    }

    /// The pool (and its breaker) of schema-per-tenant and row-level
    /// tenants at `home`.
    pub(crate) fn pool_at<'a>(&'a self, home: &'a Home) -> (&'a Pool, &'a Reachability) {
        match home {
            Home::Control => (&self.inner.conns.pool, &self.inner.conns.reach),
            Home::Server(s) => (&s.pool, &s.reach),
        }
    }

    /// The tenant-database pools (and the breaker) at `home`.
    pub(crate) fn databases_at<'a>(
        &'a self,
        home: &'a Home,
    ) -> (&'a TenantDatabases, &'a Reachability) {
        match home {
            Home::Control => (&self.inner.database.pools, &self.inner.conns.reach),
            Home::Server(s) => (&s.databases, &s.reach),
        }
    }

    /// A connection with no tenant bound, on `home`'s server.
    pub(crate) async fn acquire_shared_at(&self, home: &Home) -> Result<crate::SharedConn> {
        let (pool, reach) = self.pool_at(home);
        crate::scope::acquire_unscoped(pool, reach)
            .await
            .map(crate::SharedConn::new)
    }
}
