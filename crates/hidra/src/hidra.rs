//! The [`Hidra`] handle and its builder: configuration, the one shared pool,
//! registry access and tenant-scoped connections.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::error::{BoxError, Error, Result};
use crate::lifecycle::Provisioning;
use crate::migrate::{MigrationConfig, Migrations};
use crate::scope::{
    self, DatabasePoolConfig, Pool, PoolConfig, SharedConn, TenantConn, TenantDatabases,
    TenantLoads, TenantScope, TenantTx,
};
use crate::sql::{self, Ident};
use crate::store::{
    AnyTenantStore, ListTenants, Page, PgTenantStore, Registry, RegistryTable, TenantStore,
};
use crate::strategy::database::DatabaseConfig;
use crate::strategy::row_level::RowLevelConfig;
use crate::strategy::schema::SchemaConfig;
use crate::tenant::{SchemaNaming, Strategy, Tenant, TenantId};

/// Reference data or other setup run inside a new tenant's schema while it is
/// provisioned, in the same transaction: if it fails, the tenant is rolled back.
///
/// The connection's `search_path` is the new tenant's schema.
///
/// ```
/// use hidra::sqlx::{self, PgConnection};
/// use hidra::{BoxError, Seed, Tenant};
///
/// /// Every new tenant starts with the free plan.
/// struct Plans;
///
/// impl Seed for Plans {
///     async fn seed(&self, conn: &mut PgConnection, _tenant: &Tenant) -> Result<(), BoxError> {
///         sqlx::query("INSERT INTO plans (name) VALUES ('free')")
///             .execute(conn)
///             .await?;
///         Ok(())
///     }
/// }
///
/// let builder = hidra::Hidra::builder().seed(Plans);
/// # let _ = builder;
/// ```
pub trait Seed: Send + Sync + 'static {
    /// Seeds `tenant`; implement it as a plain `async fn`.
    fn seed(
        &self,
        conn: &mut PgConnection,
        tenant: &Tenant,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// [`Seed`] as an object: the handle and [`NewTenant`](crate::NewTenant)
/// keep hooks as `Arc<dyn DynSeed>`, boxing each run's future.
pub(crate) trait DynSeed: Send + Sync + 'static {
    fn seed_boxed<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: &'a Tenant,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

impl<S: Seed> DynSeed for S {
    fn seed_boxed<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: &'a Tenant,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.seed(conn, tenant))
    }
}

struct SeedFn<F>(F);

impl<F> Seed for SeedFn<F>
where
    F: for<'a> Fn(&'a mut PgConnection, &'a Tenant) -> BoxFuture<'a, Result<(), BoxError>>
        + Send
        + Sync
        + 'static,
{
    async fn seed(&self, conn: &mut PgConnection, tenant: &Tenant) -> Result<(), BoxError> {
        (self.0)(conn, tenant).await
    }
}

/// Configures and connects a [`Hidra`].
///
/// ```no_run
/// # async fn run() -> hidra::Result<()> {
/// let hidra = hidra::Hidra::builder()
///     .schema_prefix("tenant_")
///     .schema_sql("customers", "CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL)")
///     .max_connections(20)
///     .connect("postgres://postgres@127.0.0.1/app")
///     .await?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct HidraBuilder {
    schema_prefix: String,
    shared_schemas: Vec<String>,
    registry: Option<RegistryTable>,
    store: Option<AnyTenantStore>,
    tenant_migrations: Migrations,
    shared_migrations: Migrations,
    warm_pool: usize,
    seed: Option<Arc<dyn DynSeed>>,
    pool: PoolConfig,
    timeouts: scope::Timeouts,
    tenant_cap: TenantCap,
    tenant_wait: Option<Duration>,
    default_strategy: Strategy,
    row_level: (String, String),
    databases: DatabasePoolConfig,
    database_prefix: String,
    audit_row_level: bool,
    statement_cache_capacity: usize,
    /// Where tenant traffic goes in transaction-pooler mode.
    pooler: Option<std::result::Result<PgConnectOptions, String>>,
    /// Where reads may go.
    replica: Option<std::result::Result<PgConnectOptions, String>>,
    /// How long a read-your-writes read waits for the replica.
    replica_wait: Duration,
    /// The server registry's table.
    servers_table: crate::ServersTable,
    /// The pools of the registered servers.
    server_pools: crate::ServerPoolConfig,
    /// Where new tenants go.
    placement: Arc<dyn crate::PlacementPolicy>,
}

impl fmt::Debug for HidraBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HidraBuilder")
            .field("schema_prefix", &self.schema_prefix)
            .field("shared_schemas", &self.shared_schemas)
            .field("registry", &self.registry)
            .field("tenant_migrations", &self.tenant_migrations.len())
            .field("shared_migrations", &self.shared_migrations.len())
            .field("warm_pool", &self.warm_pool)
            .field("seed", &self.seed.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for HidraBuilder {
    fn default() -> Self {
        HidraBuilder {
            schema_prefix: "tenant_".into(),
            shared_schemas: vec!["public".into()],
            registry: None,
            store: None,
            tenant_migrations: Migrations::new(),
            shared_migrations: Migrations::new(),
            warm_pool: 0,
            seed: None,
            default_strategy: Strategy::Schema,
            row_level: (
                "public".into(),
                crate::strategy::row_level::DEFAULT_TENANT_COLUMN.into(),
            ),
            databases: DatabasePoolConfig::default(),
            database_prefix: "tenant_".into(),
            audit_row_level: false,
            statement_cache_capacity: DEFAULT_STATEMENT_CACHE_CAPACITY,
            pooler: None,
            replica: None,
            replica_wait: crate::replica::DEFAULT_REPLICA_WAIT,
            pool: PoolConfig::default(),
            timeouts: scope::Timeouts::default(),
            tenant_cap: TenantCap::Fraction(0.5),
            tenant_wait: None,
            servers_table: crate::ServersTable::default(),
            server_pools: crate::ServerPoolConfig::default(),
            placement: Arc::new(crate::FewestTenants::default()),
        }
    }
}

impl HidraBuilder {
    /// The prefix of tenant schema names (default `tenant_`): at most 13 bytes of
    /// lowercase ASCII letters, digits and `_`.
    pub fn schema_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.schema_prefix = prefix.into();
        self
    }

    /// Schemas searched after the tenant's own (default `["public"]`), for
    /// shared tables and extensions.
    pub fn shared_schemas<I, S>(mut self, schemas: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.shared_schemas = schemas.into_iter().map(Into::into).collect();
        self
    }

    /// The registry table (default `public.tenants`), used through [`PgTenantStore`].
    pub fn registry(mut self, registry: RegistryTable) -> Self {
        self.registry = Some(registry);
        self
    }

    /// A custom tenant store instead of [`PgTenantStore`].
    pub fn store(mut self, store: impl TenantStore) -> Self {
        self.store = Some(AnyTenantStore::new(store));
        self
    }

    /// The migrations of every tenant schema (see [`crate::migrate`]).
    /// Replaces any set before, including [`schema_sql`](Self::schema_sql) steps.
    pub fn tenant_migrations(mut self, migrations: Migrations) -> Self {
        self.tenant_migrations = migrations;
        self
    }

    /// Appends a tenant migration numbered after the last one: SQL run in
    /// every tenant schema, unqualified (the tenant's schema is first in
    /// `search_path`).
    pub fn schema_sql(mut self, description: impl Into<String>, sql: impl Into<String>) -> Self {
        self.tenant_migrations = self.tenant_migrations.push(description, sql);
        self
    }

    /// The migrations of the shared schema, applied by
    /// [`Hidra::migrate_shared`] (the registry table, lookups).
    pub fn shared_migrations(mut self, migrations: Migrations) -> Self {
        self.shared_migrations = migrations;
        self
    }

    /// Keep this many spare tenant schemas ready so that provisioning is a
    /// rename (see [`crate::migrate`]'s warm pool). Default 0: off. Start
    /// [`Hidra::spawn_warm_pool`] to keep it topped up.
    pub fn warm_pool(mut self, spares: usize) -> Self {
        self.warm_pool = spares;
        self
    }

    /// A seed hook run in every new tenant's schema after the schema SQL.
    pub fn seed(mut self, seed: impl Seed) -> Self {
        self.seed = Some(Arc::new(seed));
        self
    }

    /// A seed hook from a closure returning a boxed future:
    /// `|conn, tenant| Box::pin(async move { … })`.
    pub fn seed_fn<F>(self, f: F) -> Self
    where
        F: for<'a> Fn(&'a mut PgConnection, &'a Tenant) -> BoxFuture<'a, Result<(), BoxError>>
            + Send
            + Sync
            + 'static,
    {
        self.seed(SeedFn(f))
    }

    /// The strategy of tenants provisioned without one (default
    /// [`Strategy::Schema`]).
    pub fn default_strategy(mut self, strategy: Strategy) -> Self {
        self.default_strategy = strategy;
        self
    }

    /// Where row-level tenants' tables live (default schema `public`) and
    /// their tenant column (default `tenant_id`); see [`crate::rls`].
    pub fn row_level(mut self, schema: impl Into<String>, column: impl Into<String>) -> Self {
        self.row_level = (schema.into(), column.into());
        self
    }

    /// Connections to database-per-tenant tenants: a small pool per tenant
    /// database under one global budget; see [`DatabasePoolConfig`].
    pub fn database_per_tenant(mut self, config: DatabasePoolConfig) -> Self {
        self.databases = config;
        self
    }

    /// The prefix of tenant database names (default `tenant_`), at most 13
    /// bytes. Databases are server-wide: give each deployment sharing a server
    /// its own prefix. The template database is `<prefix>_tpl`.
    pub fn database_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.database_prefix = prefix.into();
        self
    }

    /// Run [`Hidra::audit_row_level`] when connecting and fail with
    /// [`Error::RowLevelInsecure`] on any finding (default off; provisioning a
    /// row-level tenant runs it regardless).
    pub fn audit_row_level_on_connect(mut self, yes: bool) -> Self {
        self.audit_row_level = yes;
        self
    }

    /// How many prepared statements each connection keeps (default 512; sqlx's
    /// own default is 100). Hidra prepares one statement per tenant and SQL
    /// text, so a connection that serves many tenants needs more than a
    /// single-tenant application: about (tenants a connection serves in a
    /// while) × (statements each runs). The least recently used statement is
    /// closed on the server when the cache is full. Each cached statement
    /// costs server memory in the connection's backend; see the README's
    /// sizing notes for measured figures. At least 1.
    pub fn statement_cache_capacity(mut self, capacity: usize) -> Self {
        self.statement_cache_capacity = capacity.max(1);
        self
    }

    /// How long a checkout of the shared pool may wait for a connection
    /// before failing (default 5 s). While PostgreSQL does not answer at all,
    /// checkouts fail much sooner, with [`Error::Unavailable`]: after about
    /// 0.3 s for the first, at once for the next (see [`Error::is_retryable`]).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.pool.acquire_timeout = timeout;
        self
    }

    /// Maximum connections of the shared pool (default 10; at least 1). In
    /// transaction-pooler mode, the pool of connections to the pooler has
    /// the same maximum.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.pool.max_connections = max.max(1);
        self
    }

    /// How many connections of the shared pool one tenant may hold at once
    /// (default: half the pool, rounded up, at least 2). A tenant at its cap waits for one
    /// of its own connections to come back, outside the pool's queue, so the
    /// other tenants' checkouts are served first; past
    /// [`tenant_wait`](Self::tenant_wait) it gets [`Error::TenantBusy`]
    /// (retryable; `503` with `Retry-After` in the web layer). Applies to
    /// schema-per-tenant and row-level tenants, through a transaction pooler
    /// too. A database-per-tenant tenant's cap is the same fraction (or
    /// number) of the global budget, and at most its database's own limit
    /// ([`DatabasePoolConfig`]).
    pub fn tenant_cap(mut self, cap: TenantCap) -> Self {
        self.tenant_cap = cap;
        self
    }

    /// How long a checkout of a tenant at its cap waits for one of its
    /// connections to come back (default: the acquire timeout).
    pub fn tenant_wait(mut self, wait: Duration) -> Self {
        self.tenant_wait = Some(wait);
        self
    }

    /// A `statement_timeout` every tenant checkout applies (default: none,
    /// the server's setting stands), so one tenant's slow query is cut off
    /// without touching the others. A tenant's registry metadata may set its
    /// own, `{"statement_timeout_ms": 30000}`: a changed record takes effect
    /// at the tenant's next checkout with that record (the web layer's cache
    /// reloads it on the registry's change notification), no restart. Session
    /// level on a [`TenantConn`], transaction-local in a [`TenantTx`];
    /// unscoped checkouts reset it. Schema-per-tenant and row-level tenants.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.statement_ms =
            Some((timeout.as_millis() as u64).min(scope::Timeouts::MAX_MS));
        self
    }

    /// An `idle_in_transaction_session_timeout` every tenant checkout
    /// applies, like [`statement_timeout`](Self::statement_timeout) (metadata
    /// key `idle_in_transaction_timeout_ms`): a transaction left idle by one
    /// tenant is ended without holding its locks and connection for long.
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.idle_in_transaction_ms =
            Some((timeout.as_millis() as u64).min(scope::Timeouts::MAX_MS));
        self
    }

    /// How long a connection of the shared pool may stay unused before it is
    /// closed (default 10 minutes, as sqlx's pool; `None`: never).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pool.idle_timeout = timeout;
        self
    }

    /// How long a connection of the shared pool is used before it is closed
    /// and replaced (default 30 minutes, as sqlx's pool; `None`: forever).
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.pool.max_lifetime = lifetime;
        self
    }

    /// **Transaction-pooler mode**: tenant traffic ([`acquire`](Hidra::acquire),
    /// [`begin`](Hidra::begin) and everything running on them) goes through
    /// the transaction-pooling proxy at `url` (PgBouncer in `pool_mode =
    /// transaction`), while the URL given to [`connect`](Self::connect) stays
    /// the direct connection of the control plane: the registry, provisioning,
    /// migrations, advisory locks, `LISTEN` for cache invalidation, and
    /// [`acquire_shared`](Hidra::acquire_shared). Those need a session and
    /// cannot work through transaction pooling.
    ///
    /// Through the proxy Hidra never relies on session state or server-side
    /// named statements:
    ///
    /// - every statement is an unnamed prepared statement (parsed and planned
    ///   each time: no per-tenant statement cache, and no statement of one
    ///   client can ever run for another);
    /// - a [`TenantTx`](crate::TenantTx) binds the tenant with `SET LOCAL`
    ///   after `BEGIN`;
    /// - a [`TenantConn`](crate::TenantConn) runs **each statement in a
    ///   transaction of its own** (`BEGIN; SET LOCAL …`, the statement,
    ///   `COMMIT`): three round trips instead of one, and a stream of rows is
    ///   read whole before it is handed out. Use a `TenantTx` for several
    ///   statements and for large results.
    ///
    /// Not available here: `prepare`/`describe` on a scoped connection, and
    /// anything run on `raw_connection()` (sqlx names those statements). Tenants
    /// in their own database connect directly, as without this mode. Checked
    /// against PgBouncer 1.18 in CI.
    pub fn transaction_pooler(mut self, url: &str) -> Self {
        self.pooler = Some(
            url.parse::<PgConnectOptions>()
                .map_err(|e| format!("invalid transaction pooler URL: {e}")),
        );
        self
    }

    /// [`transaction_pooler`](Self::transaction_pooler) with connect options.
    pub fn transaction_pooler_with(mut self, options: PgConnectOptions) -> Self {
        self.pooler = Some(Ok(options));
        self
    }

    /// A read replica (a streaming standby of this database) for
    /// [`Hidra::acquire_read`]: reads of schema and row-level tenants go
    /// there, bound exactly as on the primary, and back to the primary while
    /// it does not answer. Its pool has the primary pool's size and timeouts
    /// and connects lazily: a replica that is down at startup is no error.
    pub fn read_replica(mut self, url: &str) -> Self {
        self.replica = Some(
            url.parse::<PgConnectOptions>()
                .map_err(|e| format!("invalid read replica URL: {e}")),
        );
        self
    }

    /// [`read_replica`](Self::read_replica) with connect options.
    pub fn read_replica_with(mut self, options: PgConnectOptions) -> Self {
        self.replica = Some(Ok(options));
        self
    }

    /// How long [`Hidra::acquire_read_after`] waits for the replica to replay
    /// a write before reading from the primary instead (default 1 s).
    pub fn replica_wait(mut self, wait: Duration) -> Self {
        self.replica_wait = wait;
        self
    }

    /// The table of the [server registry](crate::Servers) (default
    /// `public.hidra_servers`); [`Hidra::install`] creates the one given.
    pub fn servers_table(mut self, table: crate::ServersTable) -> Self {
        self.servers_table = table;
        self
    }

    /// How many connections the pools of the registered servers may open,
    /// per server and in all (default 10 and 40); see [`ServerPoolConfig`](crate::ServerPoolConfig).
    pub fn server_pools(mut self, config: crate::ServerPoolConfig) -> Self {
        self.server_pools = config;
        self
    }

    /// Where new tenants go when their [`NewTenant`](crate::NewTenant) names
    /// no server (default: [`FewestTenants`](crate::FewestTenants)).
    pub fn placement(mut self, policy: impl crate::PlacementPolicy) -> Self {
        self.placement = Arc::new(policy);
        self
    }

    /// Connects to `url` and builds the handle.
    pub async fn connect(self, url: &str) -> Result<Hidra> {
        let options: PgConnectOptions = url.parse().map_err(Error::InvalidUrl)?;
        self.connect_with(options).await
    }

    /// Connects with `options` and builds the handle.
    pub async fn connect_with(self, options: PgConnectOptions) -> Result<Hidra> {
        let options = options.statement_cache_capacity(self.statement_cache_capacity);
        let naming = SchemaNaming::new(self.schema_prefix)?;
        let shared = self
            .shared_schemas
            .into_iter()
            .map(|s| Ident::new(s, "shared schema name"))
            .collect::<Result<Vec<_>>>()?;
        let row_level = RowLevelConfig {
            schema: Ident::new(self.row_level.0, "row-level schema name")?,
            column: Ident::new(self.row_level.1, "tenant column name")?,
            audited: tokio::sync::OnceCell::new(),
        };
        let (store, registry_store) = match (self.store, self.registry) {
            (Some(store), _) => (store, None),
            (None, registry) => {
                let store = Arc::new(PgTenantStore::new(registry.unwrap_or_default()));
                (AnyTenantStore::from_arc(Arc::clone(&store)), Some(store))
            }
        };
        let database_naming = SchemaNaming::new(self.database_prefix)?;
        let tenant_db_options = options.clone();
        let reach_options = options.clone();
        let pooled = match self.pooler {
            None => None,
            Some(Err(e)) => return Err(Error::InvalidConfig(e.into())),
            // Nothing is ever set on a pooler's connections: a checkout only
            // proves the connection alive and outside a transaction.
            Some(Ok(pooler)) => Some(Pool::new(
                pooler,
                &self.pool,
                sqlx::SqlSafeStr::into_sql_str("SELECT 1"),
            )),
        };
        let replica = match self.replica {
            None => None,
            Some(Err(e)) => return Err(Error::InvalidConfig(e.into())),
            Some(Ok(replica)) => {
                let replica = replica.statement_cache_capacity(self.statement_cache_capacity);
                Some(crate::replica::Replica::new(
                    Pool::new(
                        replica.clone(),
                        &self.pool,
                        sql::reset_statement(self.timeouts.values()),
                    ),
                    scope::Reachability::new(replica),
                    self.replica_wait,
                ))
            }
        };
        let pool = Pool::new(
            options,
            &self.pool,
            sql::reset_statement(self.timeouts.values()),
        );
        // As sqlx's `connect` does: fail now if the server does not answer.
        drop(
            pool.get()
                .await
                .map_err(Error::db("connecting to PostgreSQL"))?,
        );
        if let Some(pooled) = &pooled {
            let first = pooled.get().await;
            drop(first.map_err(Error::db("connecting to the transaction pooler"))?);
        }
        // Database-per-tenant: the cap is taken of the global budget, and a
        // database's own limit caps it further.
        let database_cap = self
            .tenant_cap
            .of(self.databases.budget())
            .min(self.databases.per_database().max(1));
        let servers = crate::servers::ServerPools::new(
            self.placement,
            self.servers_table,
            self.server_pools,
            self.pool.clone(),
            self.databases.clone(),
            self.statement_cache_capacity,
            sql::reset_statement(self.timeouts.values()),
        );
        let databases = TenantDatabases::new(tenant_db_options, self.databases)?;
        let hidra = Hidra {
            inner: Arc::new(Inner {
                conns: Connections {
                    pool,
                    pooled,
                    replica,
                    reach: scope::Reachability::new(reach_options),
                    scopes: RwLock::new(HashMap::new()),
                    servers,
                    statement_cache_capacity: self.statement_cache_capacity,
                    tenant_cap: self.tenant_cap.of(self.pool.max_connections),
                    loads: TenantLoads::default(),
                    timeouts: self.timeouts,
                    tenant_wait: self.tenant_wait.unwrap_or(self.pool.acquire_timeout),
                },
                registry: Registry {
                    store,
                    own: registry_store,
                    internal_ready: tokio::sync::OnceCell::new(),
                    row_level_guard: tokio::sync::OnceCell::new(),
                },
                migrations: MigrationConfig {
                    tenant: self.tenant_migrations,
                    shared: self.shared_migrations,
                    warm_pool: self.warm_pool,
                },
                provisioning: Provisioning {
                    default_strategy: self.default_strategy,
                    seed: self.seed,
                },
                schema: SchemaConfig { naming, shared },
                row_level,
                database: DatabaseConfig {
                    pools: databases,
                    naming: database_naming,
                    template_ready: tokio::sync::OnceCell::new(),
                    cap: database_cap,
                },
            }),
        };
        if self.audit_row_level {
            hidra.require_row_level_audit().await?;
        }
        Ok(hidra)
    }
}

/// The entry point: one per application, cheap to clone.
///
/// It owns the one connection pool shared by every schema-per-tenant tenant,
/// the registry and the provisioning configuration. See the [crate docs](crate).
#[derive(Clone)]
pub struct Hidra {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The pools and what tenant checkouts apply.
    pub(crate) conns: Connections,
    /// The tenant registry and Hidra's internal schema.
    pub(crate) registry: Registry,
    /// Tenant and shared migrations, the warm pool.
    pub(crate) migrations: MigrationConfig,
    /// How tenants are made.
    pub(crate) provisioning: Provisioning,
    /// Schema per tenant (and the shared schemas every tenant searches).
    pub(crate) schema: SchemaConfig,
    /// Row level.
    pub(crate) row_level: RowLevelConfig,
    /// Database per tenant.
    pub(crate) database: DatabaseConfig,
}

/// The connections of the handle: the shared pool (and the pooler's and
/// the replica's), and what a tenant checkout applies.
pub(crate) struct Connections {
    pub(crate) pool: Pool,
    /// Tenant traffic's pool in transaction-pooler mode.
    pub(crate) pooled: Option<Pool>,
    /// Where reads may go.
    pub(crate) replica: Option<crate::replica::Replica>,
    pub(crate) statement_cache_capacity: usize,
    /// Connections of the shared pool one tenant may hold at once.
    pub(crate) tenant_cap: u32,
    /// Per-tenant load counters.
    pub(crate) loads: TenantLoads,
    /// The timeouts tenant checkouts apply by default.
    pub(crate) timeouts: scope::Timeouts,
    /// How long a tenant at its cap waits.
    pub(crate) tenant_wait: Duration,
    /// Whether the server answers; checkouts fail fast while it does not.
    pub(crate) reach: scope::Reachability,
    /// Per-tenant bindings and statement texts, by tenant id.
    pub(crate) scopes: RwLock<HashMap<String, Arc<TenantScope>>>,
    /// The pools of the registered servers.
    pub(crate) servers: crate::servers::ServerPools,
}

/// The default of [`HidraBuilder::statement_cache_capacity`].
pub(crate) const DEFAULT_STATEMENT_CACHE_CAPACITY: usize = 512;

/// How many tenants' scopes are kept before starting over (each holds its
/// binding statements and up to a thousand statement texts).
const MAX_CACHED_SCOPES: usize = 100_000;

impl fmt::Debug for Hidra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hidra")
            .field("schema_prefix", &self.inner.schema.naming.prefix())
            .field("shared_schemas", &self.inner.schema.shared)
            .field("store", &self.inner.registry.store)
            .field("pool", &self.pool_status())
            .finish_non_exhaustive()
    }
}

/// How many connections of the shared pool one tenant may hold at once; see
/// [`HidraBuilder::tenant_cap`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum TenantCap {
    /// At most this many (at least 1).
    Connections(u32),
    /// At most this fraction of the pool's maximum, rounded up, and at
    /// least 2 where the pool has 2: a request often holds a connection and
    /// a transaction of its tenant at once (`1.0`: no cap beyond the pool's
    /// own).
    Fraction(f64),
}

impl TenantCap {
    /// The cap for a pool of `max` connections.
    fn of(self, max: u32) -> u32 {
        let max = max.max(1);
        match self {
            TenantCap::Connections(n) => n.clamp(1, max),
            TenantCap::Fraction(f) => {
                let share = (f64::from(max) * f.clamp(0.0, 1.0)).ceil() as u32;
                share.max(2).min(max)
            }
        }
    }
}

/// A snapshot of the shared pool, for health checks and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// Open connections.
    pub size: u32,
    /// Open connections not checked out.
    pub idle: u32,
    /// The configured maximum.
    pub max: u32,
}

impl Hidra {
    /// Starts configuring a handle.
    pub fn builder() -> HidraBuilder {
        HidraBuilder::default()
    }

    /// The schema name `id` maps to: the prefix plus the id with `-` replaced by `_`.
    pub fn schema_name(&self, id: &TenantId) -> String {
        self.inner.schema.naming.schema_for(id).as_str().to_owned()
    }

    /// The tenant store.
    pub fn store(&self) -> &AnyTenantStore {
        &self.inner.registry.store
    }

    /// A connection bound to `tenant` (its schema first in `search_path`, then
    /// the shared schemas). Behind a transaction-pooling proxy, use
    /// [`HidraBuilder::transaction_pooler`]: each statement then binds the
    /// tenant in a transaction of its own.
    ///
    /// The record is trusted as given: check its status first if that matters
    /// (the web layer does).
    pub async fn acquire(&self, tenant: &Tenant) -> Result<TenantConn> {
        match self.acquire_as(tenant).await {
            Err(Error::StaleRecord(id)) => self.acquire_as(&self.reread(tenant, id).await?).await,
            done => done,
        }
    }

    async fn acquire_as(&self, tenant: &Tenant) -> Result<TenantConn> {
        let scope = self.scope(tenant)?;
        let share = self.admit(tenant, &scope).await?;
        self.connect_bound(tenant, scope, share).await
    }

    /// `stale`'s record as registered now, after a checkout refused it
    /// ([`Error::NotFound`] once deprovisioned). A record that did not
    /// change was not stale: its data is missing ([`Error::DataMissing`]).
    async fn reread(&self, stale: &Tenant, id: TenantId) -> Result<Tenant> {
        let now = (self.tenant(&id).await?)
            .filter(|now| now.status != crate::TenantStatus::Deleting)
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        if now.placement == stale.placement {
            return Err(Error::DataMissing {
                id,
                place: match &now.placement.database {
                    Some(database) => format!("database {database}"),
                    None => format!("schema {}", now.placement.schema),
                },
            });
        }
        Ok(now)
    }

    /// A transaction bound to `tenant` with a transaction-local `search_path`.
    /// Behind a transaction-pooling proxy, use
    /// [`HidraBuilder::transaction_pooler`] (unnamed statements only).
    pub async fn begin(&self, tenant: &Tenant) -> Result<TenantTx> {
        match self.begin_as(tenant).await {
            Err(Error::StaleRecord(id)) => self.begin_as(&self.reread(tenant, id).await?).await,
            done => done,
        }
    }

    async fn begin_as(&self, tenant: &Tenant) -> Result<TenantTx> {
        let scope = self.scope(tenant)?;
        let share = self.admit(tenant, &scope).await?;
        self.begin_bound(tenant, scope, share).await
    }

    /// Creates what Hidra needs in the database, where it is missing: the
    /// tenant registry table (the application's own: `public.tenants`, or
    /// the one given to [`HidraBuilder::registry`]; a custom
    /// [`store`](HidraBuilder::store)'s [`TenantStore::install_ddl`]), the
    /// server registry table (`public.hidra_servers`, see
    /// [`Hidra::servers`]) and Hidra's internal schema `hidra` (migration
    /// bookkeeping, warm-pool spares).
    ///
    /// Hidra never creates tables behind your back: this is the one call
    /// that does, on purpose, at startup or in a deploy step (`hidra init`
    /// runs it). It is idempotent, runs in one transaction, and is safe to
    /// run from several processes at once. With the `auth` feature,
    /// `Accounts::install` and `ApiKeys::install` create their tables the
    /// same way.
    ///
    /// ```no_run
    /// # async fn run() -> hidra::Result<()> {
    /// let hidra = hidra::Hidra::builder()
    ///     .connect("postgres://postgres@127.0.0.1/app")
    ///     .await?;
    /// hidra.install().await?;
    /// # Ok(()) }
    /// ```
    pub async fn install(&self) -> Result<()> {
        let mut ddl = self.inner.registry.store.install_ddl().unwrap_or_default();
        ddl.push_str(&crate::migrate::internal_ddl());
        ddl.push_str(&self.inner.conns.servers.table.ddl());
        self.install_ddl(
            "installing the tenant registry and hidra's internal schema",
            &ddl,
        )
        .await
    }

    /// Runs idempotent `ddl` in one transaction, serialized with every other
    /// installation, without PostgreSQL's "already exists, skipping" notices.
    pub(crate) async fn install_ddl(&self, context: &'static str, ddl: &str) -> Result<()> {
        let mut conn = self.acquire_shared().await?;
        let script = sql::install_script(crate::migrate::INTERNAL_LOCK, ddl);
        if let Err(source) = sqlx::raw_sql(script).execute(&mut *conn).await {
            // Left inside the failed transaction: closing it rolls back.
            conn.close_on_drop();
            return Err(Error::Database { context, source });
        }
        Ok(())
    }

    /// A connection with the server's default `search_path`, for shared tables.
    pub async fn acquire_shared(&self) -> Result<SharedConn> {
        scope::acquire_unscoped(&self.inner.conns.pool, &self.inner.conns.reach)
            .await
            .map(SharedConn::new)
    }

    /// `tenant`'s share of the pool for one more connection.
    async fn admit(&self, tenant: &Tenant, scope: &TenantScope) -> Result<scope::Share> {
        scope.admit(&tenant.id, self.inner.conns.tenant_wait).await
    }

    /// The binding, checkout statements and statement texts of `tenant`,
    /// built once per tenant and placement.
    pub(crate) fn scope(&self, tenant: &Tenant) -> Result<Arc<TenantScope>> {
        let scopes = &self.inner.conns.scopes;
        let timeouts = self.inner.conns.timeouts.for_tenant(tenant);
        if let Some(scope) = scopes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant.id.as_str())
            .filter(|s| s.fits(tenant, timeouts))
        {
            return Ok(scope.clone());
        }
        let cap = self.cap_of(tenant.placement.strategy);
        let scope = Arc::new(TenantScope::new(
            tenant,
            &tenant.placement.schema_ident()?,
            self.binding(tenant)?,
            cap,
            self.inner.conns.loads.counters(&tenant.id),
        ));
        let mut scopes = scopes.write().unwrap_or_else(PoisonError::into_inner);
        if scopes.len() >= MAX_CACHED_SCOPES {
            scopes.clear();
        }
        scopes.insert(tenant.id.as_str().to_owned(), scope.clone());
        Ok(scope)
    }

    /// The tenant with this id, if registered (any status).
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        let mut conn = self.acquire_shared().await?;
        self.inner.registry.store.get(&mut conn, id).await
    }

    /// Whether a tenant with this id is registered (any status).
    pub async fn exists(&self, id: &TenantId) -> Result<bool> {
        Ok(self.tenant(id).await?.is_some())
    }

    /// A page of registered tenants, ordered by id.
    pub async fn list(&self, page: &ListTenants) -> Result<Page<Tenant>> {
        let mut conn = self.acquire_shared().await?;
        self.inner.registry.store.list(&mut conn, page).await
    }

    /// A listener subscribed to [`CHANGES_CHANNEL`](crate::CHANGES_CHANNEL), on
    /// which the registry's trigger announces the id of every changed tenant.
    /// Caches use it to drop stale entries at once.
    ///
    /// It uses its own connection, not one of the shared pool, and reconnects
    /// by itself (a reconnect may miss notifications: treat it as "everything
    /// changed").
    pub async fn changes_listener(&self) -> Result<sqlx::postgres::PgListener> {
        self.listener(crate::store::CHANGES_CHANNEL).await
    }

    /// A listener on `channel`, on its own connection to the shared database.
    pub(crate) async fn listener(&self, channel: &str) -> Result<sqlx::postgres::PgListener> {
        let options = self.inner.conns.pool.connect_options().clone();
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options);
        let mut listener = sqlx::postgres::PgListener::connect_with(&own)
            .await
            .map_err(Error::db("connecting a change listener"))?;
        listener
            .listen(channel)
            .await
            .map_err(Error::db("listening for changes"))?;
        Ok(listener)
    }

    /// The options the shared pool opens its connections with: the shared
    /// database, reached directly (never through a
    /// [transaction pooler](HidraBuilder::transaction_pooler)).
    ///
    /// For integrations that need a pool of their own on the same database
    /// (a job queue whose rows must be written in a tenant's transaction, a
    /// `LISTEN`er), so that they cannot be pointed at another one by mistake.
    ///
    /// ```no_run
    /// # async fn run(hidra: hidra::Hidra) -> Result<(), sqlx::Error> {
    /// let own = sqlx::postgres::PgPoolOptions::new()
    ///     .max_connections(4)
    ///     .connect_with(hidra.connect_options().clone())
    ///     .await?;
    /// # drop(own); Ok(()) }
    /// ```
    pub fn connect_options(&self) -> &PgConnectOptions {
        self.inner.conns.pool.connect_options()
    }

    /// How many prepared statements each connection keeps; see
    /// [`HidraBuilder::statement_cache_capacity`].
    pub fn statement_cache_capacity(&self) -> usize {
        self.inner.conns.statement_cache_capacity
    }

    /// Whether tenant traffic goes through a transaction pooler; see
    /// [`HidraBuilder::transaction_pooler`].
    pub fn is_pooled(&self) -> bool {
        self.inner.conns.pooled.is_some()
    }

    /// The per-tenant load counters: connections held, connection time,
    /// waits and refusals at the cap, cancelled statements (and, through the
    /// web layer, requests and rate-limit refusals). See [`TenantLoads::top`]
    /// for a bounded report and
    /// [`LoadReport::to_prometheus`](crate::LoadReport::to_prometheus) for metrics.
    ///
    /// ```no_run
    /// # fn run(hidra: hidra::Hidra) {
    /// for (tenant, load) in hidra.load().busiest(5).top {
    ///     println!("{tenant}: {} connections now", load.connections);
    /// }
    /// # }
    /// ```
    pub fn load(&self) -> &TenantLoads {
        &self.inner.conns.loads
    }

    /// The state of the shared pool.
    pub fn pool_status(&self) -> PoolStatus {
        let (size, idle, max) = self.inner.conns.pool.status();
        PoolStatus { size, idle, max }
    }

    /// The connections to tenant databases (database per tenant).
    pub fn tenant_databases(&self) -> &TenantDatabases {
        &self.inner.database.pools
    }

    /// Closes the pools, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.inner.conns.servers.close().await;
        self.inner.database.pools.close().await;
        if let Some(pooled) = &self.inner.conns.pooled {
            pooled.close().await;
        }
        if let Some(replica) = &self.inner.conns.replica {
            replica.pool.close().await;
        }
        self.inner.conns.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::TenantCap;

    #[test]
    fn caps_stay_within_the_pool_and_leave_a_request_two_connections() {
        let half = TenantCap::Fraction(0.5);
        assert_eq!(
            [1, 2, 3, 4, 10, 16].map(|max| half.of(max)),
            [1, 2, 2, 2, 5, 8]
        );
        assert_eq!(TenantCap::Fraction(1.0).of(10), 10);
        assert_eq!(TenantCap::Fraction(7.0).of(10), 10);
        assert_eq!(TenantCap::Connections(0).of(10), 1);
        assert_eq!(TenantCap::Connections(3).of(10), 3);
        assert_eq!(TenantCap::Connections(30).of(10), 10);
    }
}
