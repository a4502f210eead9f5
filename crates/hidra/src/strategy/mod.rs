//! The isolation strategies, one module each, and the one place that
//! dispatches on [`Strategy`].
//!
//! - `schema`: a schema of its own in the shared database, bound through
//!   `search_path`;
//! - `row_level` (public as [`rls`](crate::rls)): rows in shared tables, bound through the `hidra.tenant_id`
//!   setting that the row-level security policies read;
//! - `database`: a database of its own, reached through a small pool per
//!   database under one budget (`database::pools`, public as
//!   [`TenantDatabases`](crate::TenantDatabases)).
//!
//! Each module owns how its tenants are provisioned (on the control server
//! or a registered one), bound, moved in and out (between strategies and
//! between servers), and dropped. The operations (`lifecycle`, `moves`,
//! `servers`, `archive` import, the checkouts of [`Hidra`]) call the
//! functions below, the only `match` on a tenant's strategy of those
//! operations.

pub(crate) mod database;
pub mod row_level;
pub(crate) mod schema;

use sqlx::Connection;

use crate::error::{Error, Result};
use crate::hidra::{DynSeed, Hidra};
use crate::moves;
use crate::scope::{self, Pooled, Share, SharedConn, TenantConn, TenantScope, TenantTx};
use crate::servers::Home;
use crate::sql::{self, Ident};
use crate::tenant::{NewTenant, Placement, Strategy, Tenant, TenantId};

/// What a tenant checkout binds: the `search_path`, and the tenant id the
/// row-level security policies read (`hidra.tenant_id`, empty for tenants
/// isolated otherwise, so no row-level tenant survives on the connection).
///
/// Built by [`Hidra::binding`], turned into checkout statements by
/// `scope::TenantScope`.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    pub(crate) search_path: String,
    pub(crate) tenant_id: String,
    pub(crate) timeouts: scope::Timeouts,
    /// The registry's `_bind_row_level` function, for a row-level tenant
    /// whose registry is Hidra's own table on the same server.
    pub(crate) guard: Option<String>,
    /// For a schema tenant, the statement proving its schema is still
    /// there (`sql::prove_schema`): a record read before a move or a
    /// deprovisioning is refused ([`Error::StaleRecord`]), never bound to
    /// the shared schemas alone.
    pub(crate) proof: Option<String>,
}

impl Binding {
    /// The statement that binds a session to it (see `sql::bind_session`).
    pub(crate) fn session_statement(&self) -> sqlx::SqlStr {
        sql::bind_session(
            &self.search_path,
            &self.tenant_id,
            self.guard.as_deref(),
            self.proof.as_deref(),
            self.timeouts.values(),
        )
    }

    /// `BEGIN` with it bound for the transaction (see `sql::begin_scoped`).
    pub(crate) fn begin_statement(&self) -> sqlx::SqlStr {
        sql::begin_scoped(
            &self.search_path,
            &self.tenant_id,
            self.guard.as_deref(),
            self.proof.as_deref(),
            self.timeouts.values(),
        )
    }
}

impl Hidra {
    /// Creates a tenant with `strategy`; see [`Hidra::provision`].
    pub(crate) async fn provision_with(
        &self,
        strategy: Strategy,
        new: NewTenant,
    ) -> Result<Tenant> {
        match strategy {
            Strategy::Schema => self.provision_schema(new).await,
            Strategy::RowLevel => self.provision_row_level(new).await,
            Strategy::Database => self.provision_database(new).await,
        }
    }

    /// Drops everything that holds `tenant`'s data and its registry row
    /// (already `deleting`): its schema or its rows in one transaction with
    /// the row's removal; its own database first, outside any transaction
    /// (PostgreSQL cannot drop a database in one).
    pub(crate) async fn drop_tenant(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: &Tenant,
    ) -> Result<()> {
        let store = &self.inner.registry.store;
        if tenant.placement.server.is_some() {
            // Two servers: the data first, then the row, so that no data is
            // ever left without a row. Each step is idempotent: a failure in
            // between leaves the tenant `deleting` (or `provisioning`), and
            // doing it again finishes it.
            self.drop_data(tenant).await?;
            return store.delete(conn, &tenant.id).await.map(drop);
        }
        if tenant.placement.strategy == Strategy::Database {
            self.drop_tenant_database(tenant).await?;
        }
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the deprovisioning transaction"))?;
        self.drop_data_in(&mut tx, tenant).await?;
        store.delete(&mut tx, &tenant.id).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the deprovisioning transaction"))
    }

    /// Drops what holds `tenant`'s data on the server its placement names,
    /// leaving its registry row: its own database, or its schema or rows in
    /// one transaction there.
    pub(crate) async fn drop_data(&self, tenant: &Tenant) -> Result<()> {
        if tenant.placement.strategy == Strategy::Database {
            return self.drop_tenant_database(tenant).await;
        }
        let home = self.home(tenant).await?;
        let mut conn = self.acquire_internal_at(&home).await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the deprovisioning transaction"))?;
        self.drop_data_in(&mut tx, tenant).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the deprovisioning transaction"))
    }

    /// Drops `tenant`'s schema (and its bookkeeping) or deletes its rows in
    /// the caller's transaction; a tenant database is dropped apart.
    async fn drop_data_in(&self, tx: &mut sqlx::PgConnection, tenant: &Tenant) -> Result<()> {
        match tenant.placement.strategy {
            Strategy::Schema => {
                schema::drop_tenant_schema(tx, &tenant.placement.schema_ident()?).await
            }
            Strategy::RowLevel => self.delete_row_level_rows(tx, tenant).await,
            Strategy::Database => Ok(()),
        }
    }

    /// Fails unless tenants can be placed under `strategy` now: row level
    /// requires a clean audit (see [`Hidra::audit_row_level`]).
    pub(crate) async fn require_ready(&self, strategy: Strategy) -> Result<()> {
        self.require_ready_at(&Home::Control, strategy).await
    }

    /// [`require_ready`](Self::require_ready) on `home`'s server.
    pub(crate) async fn require_ready_at(&self, home: &Home, strategy: Strategy) -> Result<()> {
        match strategy {
            Strategy::RowLevel => self.require_row_level_audit_at(home).await,
            Strategy::Schema | Strategy::Database => Ok(()),
        }
    }

    /// Places `tenant`, just built in a schema of its own inside `tx` (an
    /// import), under `strategy`: row level moves its rows into the shared
    /// tables in the same transaction.
    pub(crate) async fn place_from_schema(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: Tenant,
        strategy: Strategy,
    ) -> Result<Tenant> {
        match strategy {
            Strategy::RowLevel => self.schema_to_row_level(tx, &tenant).await,
            Strategy::Schema => Ok(tenant),
            Strategy::Database => Err(Error::MoveUnsupported {
                from: Strategy::Schema,
                to: strategy,
            }),
        }
    }

    /// Moves `tenant` (settled) to `to`, keeping every row; see
    /// [`Hidra::move_tenant`]. `conn` is the shared connection it was read on.
    pub(crate) async fn move_to(
        &self,
        mut conn: SharedConn,
        tenant: Tenant,
        to: Strategy,
    ) -> Result<Tenant> {
        self.require_ready(to).await?;
        let (id, from) = (&tenant.id, tenant.placement.strategy);
        match (from, to) {
            _ if from == to => return Ok(tenant),
            (Strategy::Schema, Strategy::Database) => {
                drop(conn);
                return self.schema_to_database(&tenant).await;
            }
            (Strategy::Database, Strategy::Schema) => {
                drop(conn);
                return self.database_to_schema(&tenant).await;
            }
            (Strategy::RowLevel, Strategy::Database) | (Strategy::Database, Strategy::RowLevel) => {
                // Through a schema of its own.
                drop(conn);
                Box::pin(self.move_tenant(id, Strategy::Schema)).await?;
                return Box::pin(self.move_tenant(id, to)).await;
            }
            _ => {}
        }
        // Between a schema and the row-level tables: one transaction.
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the move"))?;
        let moved = match (from, to) {
            (Strategy::RowLevel, Strategy::Schema) => {
                self.row_level_to_schema(&mut tx, &tenant).await?
            }
            (Strategy::Schema, Strategy::RowLevel) => {
                self.schema_to_row_level(&mut tx, &tenant).await?
            }
            (from, to) => {
                return Err(Error::MoveUnsupported { from, to });
            }
        };
        tx.commit()
            .await
            .map_err(Error::db("committing the move"))?;
        tracing::info!(tenant = %id, from = %from, to = %to, "moved tenant");
        Ok(moved)
    }

    /// What a checkout for `tenant` binds: its schema first in `search_path`
    /// (a tenant database's own `public`, for database per tenant), and its
    /// id for the row-level policies where it is a row-level tenant.
    pub(crate) fn binding(&self, tenant: &Tenant) -> Result<Binding> {
        let schema = tenant.placement.schema_ident()?;
        let tenant_id = match tenant.placement.strategy {
            Strategy::Schema | Strategy::Database => String::new(),
            Strategy::RowLevel => tenant.id.to_string(),
        };
        let guard = match (tenant.placement.strategy, &tenant.placement.server) {
            (Strategy::RowLevel, None) => (self.inner.registry.own.as_ref())
                .map(|own| own.registry().bind_row_level_function()),
            // A registered server checks its own list of row-level tenants.
            (Strategy::RowLevel, Some(_)) => Some(crate::migrate::SERVER_BIND_ROW_LEVEL.to_owned()),
            _ => None,
        };
        let proof =
            (tenant.placement.strategy == Strategy::Schema).then(|| sql::prove_schema(&schema));
        Ok(Binding {
            search_path: self.search_path(&schema),
            tenant_id,
            timeouts: self.inner.conns.timeouts.for_tenant(tenant),
            guard,
            proof,
        })
    }

    /// The `search_path` value of `schema` followed by the shared schemas.
    pub(crate) fn search_path(&self, schema: &Ident) -> String {
        let shared: Vec<Ident> = (self.inner.schema.shared.iter())
            .filter(|s| *s != schema)
            .cloned()
            .collect();
        sql::search_path_value(schema, &shared)
    }

    /// How many connections one tenant of `strategy` may hold at once: of
    /// the shared pool, or of the tenant-database budget.
    pub(crate) fn cap_of(&self, strategy: Strategy) -> u32 {
        match strategy {
            Strategy::Database => self.inner.database.cap,
            Strategy::Schema | Strategy::RowLevel => self.inner.conns.tenant_cap,
        }
    }

    /// A connection bound to `tenant`, from the pool its strategy uses; see
    /// [`Hidra::acquire`].
    pub(crate) async fn connect_bound(
        &self,
        tenant: &Tenant,
        scope: std::sync::Arc<TenantScope>,
        share: Share,
    ) -> Result<TenantConn> {
        let inner = &self.inner;
        let home = self.home(tenant).await?;
        self.ensure_row_level_guard(&scope, &home).await?;
        let conn = match (tenant.placement.strategy, &home, &inner.conns.pooled) {
            (Strategy::Database, ..) => {
                let mut conn = (self.database_conn_at(&home, tenant).await)
                    .map_err(|e| e.for_checkout_of(&tenant.id))?;
                scope.bind_database_session(&mut conn).await?;
                TenantConn::new(Pooled::Database(conn), tenant, None)
            }
            // The transaction pooler stands in front of the control server.
            (_, Home::Control, Some(pooled)) => {
                let conn = scope::acquire_unscoped(pooled, &inner.conns.reach).await?;
                TenantConn::through_pooler(conn, tenant, scope)
            }
            _ => {
                let (pool, reach) = self.pool_at(&home);
                let conn = scope::acquire_bound(pool, reach, &scope)
                    .await
                    .map_err(|e| e.for_checkout_of(&tenant.id))?;
                TenantConn::new(Pooled::Shared(conn), tenant, Some(scope))
            }
        };
        Ok(conn.with_share(share))
    }

    /// Creates the registry's `_bind_row_level` function if a row-level
    /// scope needs it and it is missing (a registry created before Hidra
    /// had it); checked once per handle.
    async fn ensure_row_level_guard(&self, scope: &TenantScope, home: &Home) -> Result<()> {
        let Some(function) = scope.guard() else {
            return Ok(());
        };
        if let Home::Server(server) = home {
            // The server's internal schema has it (checked once per server).
            if server.internal_ready.initialized() {
                return Ok(());
            }
            return self.acquire_internal_at(home).await.map(drop);
        }
        let registry = &self.inner.registry;
        let Some(own) = registry.own.as_ref() else {
            return Ok(());
        };
        registry
            .row_level_guard
            .get_or_try_init(|| async {
                let mut conn = self.acquire_shared().await?;
                // One made before it checked the server column, or before
                // sessions took the lock too, is replaced.
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT FROM pg_proc \
                     WHERE oid = to_regprocedure($1 || '(text,boolean)') \
                       AND strpos(prosrc, $2) > 0 AND strpos(prosrc, 'IF $2 THEN') = 0)",
                )
                .bind(function)
                .bind(format!("{} IS NULL", own.registry().server_column().quoted()))
                .fetch_one(&mut *conn)
                .await
                .map_err(Error::db("looking for the row-level binding function"))?;
                if !exists {
                    let ddl = own.registry().bind_row_level_ddl();
                    sqlx::raw_sql(sql::owned(ddl))
                        .execute(&mut *conn)
                        .await
                        .map_err(Error::db(
                            "creating the registry's row-level binding function (run `hidra install`)",
                        ))?;
                }
                Ok::<_, Error>(())
            })
            .await
            .map(|_| ())
    }

    /// A transaction bound to `tenant`, on the pool its strategy uses; see
    /// [`Hidra::begin`].
    pub(crate) async fn begin_bound(
        &self,
        tenant: &Tenant,
        scope: std::sync::Arc<TenantScope>,
        share: Share,
    ) -> Result<TenantTx> {
        let inner = &self.inner;
        let home = self.home(tenant).await?;
        let tx = match tenant.placement.strategy {
            Strategy::Database => {
                let conn = (self.database_conn_at(&home, tenant).await)
                    .map_err(|e| e.for_checkout_of(&tenant.id))?;
                TenantTx::begin_in_database(conn, tenant, &scope).await?
            }
            Strategy::Schema | Strategy::RowLevel => {
                let pooled = inner
                    .conns
                    .pooled
                    .as_ref()
                    .filter(|_| matches!(home, Home::Control));
                let (pool, reach) = match pooled {
                    Some(pooled) => (pooled, &inner.conns.reach),
                    None => self.pool_at(&home),
                };
                self.ensure_row_level_guard(&scope, &home).await?;
                let conn = scope::acquire_for_tx(pool, reach).await?;
                TenantTx::begin(conn, tenant, scope, pooled.is_some())
                    .await
                    .map_err(|e| e.for_checkout_of(&tenant.id))?
            }
        };
        Ok(tx.with_share(share))
    }
}

/// Provisioning on a registered server and moves between servers
/// (`servers::provision`, `servers::moves`): what differs per strategy.
impl Hidra {
    /// Where a new tenant `id` goes under `strategy`, as the configured
    /// naming names it; the caller sets the server.
    pub(crate) fn placement_for(&self, strategy: Strategy, id: &TenantId) -> Placement {
        match strategy {
            Strategy::Schema => schema::placement(&self.inner.schema.naming.schema_for(id)),
            Strategy::Database => database::placement(&self.inner.database.naming.schema_for(id)),
            Strategy::RowLevel => self.row_level_placement(),
        }
    }

    /// Builds `tenant` (its placement naming the server of `home`) there and
    /// runs its seeds, committed in one transaction on that server.
    pub(crate) async fn build_at(
        &self,
        home: &Home,
        tenant: &Tenant,
        setup: Option<&dyn DynSeed>,
    ) -> Result<()> {
        let binding = self.binding(tenant)?;
        if tenant.placement.strategy == Strategy::Database {
            return self.build_database_at(home, tenant, &binding, setup).await;
        }
        let mut conn = self.acquire_internal_at(home).await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the provisioning transaction"))?;
        match tenant.placement.strategy {
            Strategy::Schema => {
                let what = format!(
                    "provisioning on a registered server (`{}`)",
                    home.server_name().unwrap_or_default()
                );
                let schema = tenant.placement.schema_ident()?;
                self.build_schema_in(&mut tx, tenant, &schema, &binding.search_path, &what)
                    .await?;
            }
            Strategy::RowLevel => row_level::record_on_server(&mut tx, &tenant.id).await?,
            Strategy::Database => unreachable!("built above"),
        }
        self.commit_seeded(tx, tenant, &binding, setup).await
    }

    /// Whether what is on `tenant`'s server under its name can be the work
    /// of its provisioning (a repair drops it): a schema is, only if its
    /// bookkeeping row exists (committed with it, in one transaction); a
    /// stray schema of that name is left alone.
    pub(crate) async fn built_by_provisioning(&self, tenant: &Tenant) -> Result<bool> {
        match tenant.placement.strategy {
            Strategy::Schema => {
                let home = self.home(tenant).await?;
                let mut conn = self.acquire_shared_at(&home).await?;
                schema::has_bookkeeping(&mut conn, &tenant.placement.schema).await
            }
            Strategy::RowLevel | Strategy::Database => Ok(true),
        }
    }

    /// A connection to where `tenant`'s tables are on `home`: its own
    /// database, or the server's database holding its schema or rows.
    pub(crate) async fn tables_conn_at(&self, home: &Home, tenant: &Tenant) -> Result<Pooled> {
        Ok(match tenant.placement.strategy {
            Strategy::Database => Pooled::Database(self.database_conn_at(home, tenant).await?),
            Strategy::Schema | Strategy::RowLevel => {
                Pooled::Shared(self.acquire_shared_at(home).await?.into_pool_conn())
            }
        })
    }

    /// Locks `tenant`'s tables on `source`, inside the transaction begun
    /// there, against writes (readers go on), and returns them in copy
    /// order. A row-level tenant's own transactions are waited for first,
    /// and `source` is left bound to it.
    pub(crate) async fn freeze_tables(
        &self,
        source: &mut sqlx::PgConnection,
        tenant: &Tenant,
    ) -> Result<Vec<moves::Table>> {
        match tenant.placement.strategy {
            Strategy::RowLevel => self.freeze_row_level(source, &tenant.id).await,
            Strategy::Schema | Strategy::Database => {
                let tables =
                    row_level::tables_in_order(source, &tenant.placement.schema, None).await?;
                moves::lock(source, tables.iter().map(|t| t.1.clone())).await?;
                Ok(tables)
            }
        }
    }

    /// Builds `tenant` on `home` and copies `tables` into it from `source`
    /// (frozen by [`freeze_tables`](Self::freeze_tables)), in one
    /// transaction there; returns the rows copied.
    pub(crate) async fn copy_to_home(
        &self,
        home: &Home,
        tenant: &Tenant,
        source: &mut sqlx::PgConnection,
        tables: &[moves::Table],
        progress: &moves::Progress<'_>,
    ) -> Result<u64> {
        match tenant.placement.strategy {
            Strategy::Database => {
                self.copy_database_to(home, tenant, source, tables, progress)
                    .await
            }
            Strategy::Schema => {
                self.copy_schema_to(home, tenant, source, tables, progress)
                    .await
            }
            Strategy::RowLevel => {
                self.copy_row_level_to(home, tenant, source, tables, progress)
                    .await
            }
        }
    }

    /// Drops the old copy of a moved `tenant` in `source`'s transaction,
    /// while its locks still hold, and commits it (the writers that waited
    /// then fail: their tables or rows are gone); then a tenant database's
    /// old database goes.
    pub(crate) async fn drop_moved_source(
        &self,
        tenant: &Tenant,
        tables: &[moves::Table],
        source: &mut Pooled,
    ) -> Result<()> {
        match tenant.placement.strategy {
            Strategy::Database => {
                moves::drop_and_commit(source, database::TENANT_DB_SCHEMA, tables).await?;
                source.close_on_drop();
                return self.drop_tenant_database(tenant).await;
            }
            // Deleted under the locks still held; forgotten by the source
            // server's binding in the same transaction.
            Strategy::RowLevel => self.delete_row_level_rows(source, tenant).await?,
            Strategy::Schema => {
                schema::drop_tenant_schema(source, &tenant.placement.schema_ident()?).await?
            }
        }
        sqlx::raw_sql("COMMIT")
            .execute(&mut **source)
            .await
            .map_err(Error::db("dropping the moved tenant's old copy"))?;
        Ok(())
    }
}
