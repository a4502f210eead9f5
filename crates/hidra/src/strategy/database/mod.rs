//! Database per tenant: provisioning from a template database kept at the
//! latest migration (`CREATE DATABASE … TEMPLATE`), checkouts of a tenant's
//! own database, moves between a schema and a database of its own, and
//! dropping.
//!
//! Every tenant database holds its tables in `public`, with its own history
//! (`public._hidra_migrations`) and bookkeeping (`hidra.schema_versions`),
//! copied from the template. The template is `<database prefix>_tpl`; it is
//! created and migrated on the first database provisioning of a process,
//! under an exclusive advisory lock, while creating databases from it takes the
//! same lock shared, so a template is never migrated while it is copied.
//!
//! The connections themselves come from `strategy::database::pools` (a small pool per
//! tenant database under one global budget): they are what a
//! [`TenantConn`](crate::TenantConn) or [`TenantTx`](crate::TenantTx) of such
//! a tenant holds, as `scope::pool` is for the shared database.

pub(crate) mod pools;

use std::time::Duration;

use sqlx::Connection;

use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::lifecycle::ProvisioningLock;
use crate::migrate::{self, Target};
use crate::moves::{copy_tables, drop_and_commit, lock};
use crate::scope::{self, DbConn};
use crate::servers::Home;
use crate::sql::{self, Ident};
use crate::strategy::row_level::tables_in_order;
use crate::strategy::schema::drop_tenant_schema;
use crate::tenant::{NewTenant, Placement, Strategy, Tenant, TenantId, TenantStatus};

/// Advisory lock key guarding the template database.
const TEMPLATE_LOCK: i64 = 0x6869_6472_615f_0003;

/// The schema of a tenant database that holds its tables.
pub(crate) const TENANT_DB_SCHEMA: &str = "public";

/// What database per tenant is configured with, and its state: the pools of
/// tenant databases, how a tenant id maps to a database name, whether the
/// template is known to be current, and a tenant's share of the budget.
#[derive(Debug)]
pub(crate) struct DatabaseConfig {
    pub(crate) pools: crate::TenantDatabases,
    pub(crate) naming: crate::tenant::SchemaNaming,
    /// Set once the template database is known to be at the latest version.
    pub(crate) template_ready: tokio::sync::OnceCell<()>,
    /// Connections of the tenant-database budget one tenant may hold at once.
    pub(crate) cap: u32,
}

/// The placement of a tenant in its own `database`.
pub(crate) fn placement(database: &Ident) -> Placement {
    Placement {
        strategy: Strategy::Database,
        schema: TENANT_DB_SCHEMA.into(),
        database: Some(database.to_string()),
        server: None,
    }
}

/// The database of a database-per-tenant tenant, validated.
pub(crate) fn tenant_database(tenant: &Tenant) -> Result<&str> {
    let name = tenant
        .placement
        .database
        .as_deref()
        .ok_or_else(|| Error::CorruptRecord {
            id: tenant.id.to_string(),
            reason: "a database-per-tenant tenant without a database name".into(),
        })?;
    Ident::new(name, "tenant database name")?;
    Ok(name)
}

impl Hidra {
    fn template_database(&self) -> Ident {
        Ident::trusted(format!("{}_tpl", self.inner.database.naming.prefix()))
    }

    /// Creates the template database on `home`'s server if missing and
    /// brings it to the latest tenant migration, once per process and server.
    pub(crate) async fn ensure_template_at(&self, home: &Home) -> Result<Ident> {
        let tpl = self.template_database();
        let ready = match home {
            Home::Control => &self.inner.database.template_ready,
            Home::Server(server) => &server.template_ready,
        };
        let (pools, _) = self.databases_at(home);
        ready
            .get_or_try_init(|| async {
                let mut conn = self.acquire_shared_at(home).await?;
                // A session lock: if this is interrupted the connection is
                // closed, which releases it.
                conn.close_on_drop();
                lock_template(&mut conn, "pg_advisory_lock").await?;
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                )
                .bind(tpl.as_str())
                .fetch_one(&mut *conn)
                .await
                .map_err(Error::db("looking for the template database"))?;
                if !exists {
                    sqlx::raw_sql(sql::create_database(&tpl, None))
                        .execute(&mut *conn)
                        .await
                        .map_err(Error::db("creating the template database"))?;
                }
                let (version, recorded, no_history) = {
                    let mut t = pools.acquire(tpl.as_str()).await?;
                    migrate::ensure_internal(&mut t).await?;
                    match migrate::recorded_state(&mut t, TENANT_DB_SCHEMA).await? {
                        Some((v, _)) => (v, Some(v), false),
                        None => {
                            let (v, _, has) =
                                migrate::read_history(&mut t, TENANT_DB_SCHEMA).await?;
                            (v, None, !has)
                        }
                    }
                };
                let target = Target {
                    schema: TENANT_DB_SCHEMA.into(),
                    tenant: None,
                    database: Some(tpl.to_string()),
                    server: home.server_name(),
                };
                self.migrator()
                    .finish_target(target, version, recorded, no_history)
                    .await?;
                // No connection to the template may stay open: it could not be copied.
                pools.evict(tpl.as_str()).await;
                lock_template(&mut conn, "pg_advisory_unlock").await?;
                Ok::<(), Error>(())
            })
            .await?;
        Ok(tpl)
    }

    /// Creates a database-per-tenant tenant: registry row (`provisioning`),
    /// database copied from the template, seed, `active`. On failure the
    /// database and the row are removed.
    pub(crate) async fn provision_database(&self, mut new: NewTenant) -> Result<Tenant> {
        let setup = new.setup.take();
        let database = self.inner.database.naming.schema_for(&new.id);
        let draft = self.draft(new, placement(&database));
        let started = std::time::Instant::now();
        // Held until the row is settled: a killed process leaves a row
        // `hidra doctor --repair` recognises as abandoned.
        let (mut lock, tenant) = ProvisioningLock::register(self, &draft).await?;
        let built = self
            .build_database(lock.conn(), &tenant, &database, setup.as_deref())
            .await;
        match built {
            Ok(active) => {
                lock.release().await;
                tracing::info!(
                    tenant = %active.id,
                    database = %database,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "provisioned tenant database"
                );
                Ok(active)
            }
            Err(e) => {
                // A database of that name that was there before is not ours.
                let created = !matches!(e, Error::SchemaTaken { .. });
                self.undo_database_tenant(lock, &tenant, created).await;
                Err(e)
            }
        }
    }

    /// Undoes a database tenant whose provisioning or import failed after
    /// its record was registered, under its provisioning `lock`: its
    /// database (only if this attempt `created` it: one that was there
    /// before is not ours), then its record. If that fails too, the row
    /// stays `provisioning` with its lock free, for `hidra doctor --repair`.
    pub(crate) async fn undo_database_tenant(
        &self,
        mut lock: ProvisioningLock,
        tenant: &Tenant,
        created: bool,
    ) {
        match self.drop_new_database(lock.conn(), tenant, created).await {
            Ok(()) => lock.release().await,
            Err(undo) => {
                tracing::error!(tenant = %tenant.id, error = %undo, "could not undo a failed provisioning or import; `hidra doctor --repair` will")
            }
        }
    }

    async fn drop_new_database(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: &Tenant,
        created: bool,
    ) -> Result<()> {
        if created {
            return self.drop_tenant(conn, tenant).await;
        }
        self.inner
            .registry
            .store
            .delete(conn, &tenant.id)
            .await
            .map(drop)
    }

    /// Creates the database of `tenant` (registered `provisioning`), seeds
    /// it and activates the row; `conn` is the control server's connection
    /// that holds the tenant's provisioning lock.
    async fn build_database(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: &Tenant,
        database: &Ident,
        setup: Option<&dyn crate::hidra::DynSeed>,
    ) -> Result<Tenant> {
        self.create_tenant_database_on(conn, &Home::Control, tenant, database)
            .await?;
        let hooks: Vec<&dyn crate::hidra::DynSeed> = self
            .inner
            .provisioning
            .seed
            .as_deref()
            .into_iter()
            .chain(setup)
            .collect();
        if !hooks.is_empty() {
            let mut tx = self.begin(tenant).await?;
            for hook in hooks {
                hook.seed_boxed(tx.raw_connection(), tenant)
                    .await
                    .map_err(|source| Error::Seed {
                        id: tenant.id.clone(),
                        source,
                    })?;
            }
            tx.commit().await?;
        }
        self.inner
            .registry
            .store
            .update_status(
                conn,
                &tenant.id,
                &[TenantStatus::Provisioning],
                TenantStatus::Active,
            )
            .await?
            .ok_or_else(|| Error::NotFound(tenant.id.clone()))
    }

    /// Creates `database` from the template (brought up to date first).
    pub(crate) async fn create_tenant_database(
        &self,
        tenant: &Tenant,
        database: &Ident,
    ) -> Result<()> {
        self.create_tenant_database_at(&Home::Control, tenant, database)
            .await
    }

    /// [`create_tenant_database`](Self::create_tenant_database) on `home`'s server.
    pub(crate) async fn create_tenant_database_at(
        &self,
        home: &Home,
        tenant: &Tenant,
        database: &Ident,
    ) -> Result<()> {
        let mut conn = self.acquire_shared_at(home).await?;
        // Cancelled while it holds the template's lock, it must not be reused.
        conn.close_on_drop();
        self.create_tenant_database_on(&mut conn, home, tenant, database)
            .await
    }

    /// [`create_tenant_database_at`](Self::create_tenant_database_at) on
    /// `conn`, a connection to `home`'s shared database that is closed, not
    /// reused, if this is cancelled (it holds the template's lock meanwhile).
    async fn create_tenant_database_on(
        &self,
        conn: &mut sqlx::PgConnection,
        home: &Home,
        tenant: &Tenant,
        database: &Ident,
    ) -> Result<()> {
        let tpl = self.ensure_template_at(home).await?;
        lock_template(conn, "pg_advisory_lock_shared").await?;
        let created = create_from_template(conn, database, &tpl).await;
        lock_template(conn, "pg_advisory_unlock_shared").await?;
        created.map_err(creation_error(&tenant.id, database))
    }

    /// Closes the tenant's pooled connections and drops its database
    /// (terminating any other connection to it).
    pub(crate) async fn drop_tenant_database(&self, tenant: &Tenant) -> Result<()> {
        let database = Ident::new(tenant_database(tenant)?.to_owned(), "tenant database name")?;
        let home = self.home(tenant).await?;
        self.databases_at(&home).0.evict(database.as_str()).await;
        let mut conn = self.acquire_shared_at(&home).await?;
        sqlx::raw_sql(sql::drop_database(&database))
            .execute(&mut *conn)
            .await
            .map_err(Error::db("dropping the tenant database"))?;
        Ok(())
    }
}

/// Checkouts of a tenant database, and moves between a schema and a
/// database of its own (rows streamed through binary `COPY`).
impl Hidra {
    /// A connection to `tenant`'s own database on its `home` server, from its
    /// per-database pool (see `strategy::database::pools`), failing fast while the
    /// server does not answer.
    pub(crate) async fn database_conn_at(
        &self,
        home: &crate::servers::Home,
        tenant: &Tenant,
    ) -> Result<DbConn> {
        let (databases, reach) = self.databases_at(home);
        scope::acquire_database(databases, reach, tenant_database(tenant)?).await
    }

    /// Creates a database tenant's database on `home`'s server from the
    /// template there and runs its seeds in it.
    pub(crate) async fn build_database_at(
        &self,
        home: &Home,
        tenant: &Tenant,
        binding: &super::Binding,
        setup: Option<&dyn crate::hidra::DynSeed>,
    ) -> Result<()> {
        let database = Ident::new(tenant_database(tenant)?.to_owned(), "tenant database name")?;
        self.create_tenant_database_at(home, tenant, &database)
            .await?;
        let mut conn = scope::Pooled::Database(self.database_conn_at(home, tenant).await?);
        let tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the tenant database's seed"))?;
        self.commit_seeded(tx, tenant, binding, setup).await
    }

    /// Creates a database tenant's database on `home` and copies `tables`
    /// into it from `source`, in one transaction there; returns the rows
    /// copied.
    pub(crate) async fn copy_database_to(
        &self,
        home: &Home,
        tenant: &Tenant,
        source: &mut sqlx::PgConnection,
        tables: &[crate::moves::Table],
        progress: &crate::moves::Progress<'_>,
    ) -> Result<u64> {
        let database = Ident::new(tenant_database(tenant)?.to_owned(), "tenant database name")?;
        self.create_tenant_database_at(home, tenant, &database)
            .await?;
        let record = Tenant {
            placement: Placement {
                server: home.server_name(),
                ..tenant.placement.clone()
            },
            ..tenant.clone()
        };
        let mut conn = scope::Pooled::Database(self.database_conn_at(home, &record).await?);
        crate::moves::begin_copy(&mut conn).await?;
        crate::moves::copy_and_commit(
            source,
            tables,
            &mut conn,
            TENANT_DB_SCHEMA,
            &tenant.id,
            progress,
        )
        .await
    }

    /// Moves a schema-per-tenant tenant into a database of its own; see
    /// the `moves` module docs.
    pub(crate) async fn schema_to_database(&self, tenant: &Tenant) -> Result<Tenant> {
        let database = self.inner.database.naming.schema_for(&tenant.id);
        let schema = tenant.placement.schema_ident()?;
        self.create_tenant_database(tenant, &database).await?;
        let result = async {
            let mut conn = self.acquire_shared().await?;
            let mut tx = conn
                .begin()
                .await
                .map_err(Error::db("beginning the move"))?;
            let tables = tables_in_order(&mut tx, schema.as_str(), None).await?;
            lock(&mut tx, tables.iter().map(|t| t.1.clone())).await?;
            {
                let mut target = self.inner.database.pools.acquire(database.as_str()).await?;
                sqlx::raw_sql("BEGIN")
                    .execute(&mut *target)
                    .await
                    .map_err(Error::db("beginning the copy"))?;
                let copied = async {
                    let (to, id) = (TENANT_DB_SCHEMA, &tenant.id);
                    copy_tables(&mut tx, &tables, &mut target, to, id, |_, _, _| {}).await?;
                    sqlx::raw_sql("COMMIT")
                        .execute(&mut *target)
                        .await
                        .map_err(Error::db("committing the copy"))?;
                    Ok::<_, Error>(())
                }
                .await;
                if copied.is_err() {
                    // Not left open on the pooled connection until its reuse.
                    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *target).await;
                }
                copied?;
            }
            let placement = placement(&database);
            let moved = self
                .inner
                .registry
                .store
                .update_placement(&mut tx, &tenant.id, &placement)
                .await?
                .ok_or_else(|| Error::NotFound(tenant.id.clone()))?;
            drop_tenant_schema(&mut tx, &schema).await?;
            tx.commit()
                .await
                .map_err(Error::db("committing the move"))?;
            Ok(moved)
        }
        .await;
        if result.is_err() {
            let half_made = Tenant {
                placement: placement(&database),
                ..tenant.clone()
            };
            if let Err(e) = self.drop_tenant_database(&half_made).await {
                tracing::error!(tenant = %tenant.id, error = %e, "could not drop the half-made database of a failed move");
            }
        } else {
            tracing::info!(tenant = %tenant.id, from = "schema", to = "database", "moved tenant");
        }
        result
    }

    /// Moves a database-per-tenant tenant into a schema of the shared
    /// database; see the `moves` module docs.
    pub(crate) async fn database_to_schema(&self, tenant: &Tenant) -> Result<Tenant> {
        let inner = &self.inner;
        let database = tenant_database(tenant)?.to_owned();
        let schema = inner.schema.naming.schema_for(&tenant.id);
        let mut source = inner.database.pools.acquire(&database).await?;
        sqlx::raw_sql("BEGIN")
            .execute(&mut *source)
            .await
            .map_err(Error::db("beginning the move"))?;
        let mut tables = Vec::new();
        let moved = async {
            tables = tables_in_order(&mut source, TENANT_DB_SCHEMA, None).await?;
            lock(&mut source, tables.iter().map(|t| t.1.clone())).await?;

            let mut conn = self.acquire_shared().await?;
            let mut tx = conn
                .begin()
                .await
                .map_err(Error::db("beginning the move"))?;
            let path = sql::search_path_value(&schema, &inner.schema.shared);
            self.build_schema_for_move(&mut tx, tenant, &schema, &path)
                .await?;
            let (to, id) = (schema.as_str(), &tenant.id);
            copy_tables(&mut source, &tables, &mut tx, to, id, |_, _, _| {}).await?;
            let placement = super::schema::placement(&schema);
            let moved = inner
                .registry
                .store
                .update_placement(&mut tx, &tenant.id, &placement)
                .await?
                .ok_or_else(|| Error::NotFound(tenant.id.clone()))?;
            tx.commit()
                .await
                .map_err(Error::db("committing the move"))?;
            Ok::<_, Error>(moved)
        }
        .await;
        // Moved: the old tables go while the locks hold, so the writers that
        // waited fail rather than land in the old database. Failed: the
        // locks go, the tenant stays. Either way the transaction ends here,
        // not left open on a pooled connection.
        if moved.is_ok() {
            if let Err(e) = drop_and_commit(&mut source, TENANT_DB_SCHEMA, &tables).await {
                tracing::error!(tenant = %tenant.id, error = %e, "moved, but could not drop the old database's tables");
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *source).await;
            }
        } else {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *source).await;
        }
        drop(source);
        let moved = moved?;

        if let Err(e) = self.drop_tenant_database(tenant).await {
            tracing::error!(tenant = %tenant.id, error = %e, "moved, but could not drop the old database; drop it by hand");
        }
        tracing::info!(tenant = %tenant.id, from = "database", to = "schema", "moved tenant");
        Ok(moved)
    }
}

/// The error of creating `database` for `id`: [`Error::SchemaTaken`] when
/// it exists already.
pub(crate) fn creation_error(id: &TenantId, database: &Ident) -> impl FnOnce(sqlx::Error) -> Error {
    let (id, database) = (id.clone(), database.to_string());
    move |source| match crate::error::db_code(&source) {
        Some((code, _)) if code == "42P04" => Error::SchemaTaken {
            id,
            schema: database,
        },
        _ => Error::Database {
            context: "creating the tenant database",
            source,
        },
    }
}

async fn lock_template(conn: &mut sqlx::PgConnection, function: &'static str) -> Result<()> {
    let mut statement = sql::Statement::new();
    statement.sql("SELECT ").sql(function).sql("($1)");
    sqlx::query(statement.into_sql())
        .bind(TEMPLATE_LOCK)
        .execute(conn)
        .await
        .map_err(Error::db("locking the template database"))?;
    Ok(())
}

/// `CREATE DATABASE … TEMPLATE …`, retried while another session briefly
/// holds a connection to the template (SQLSTATE 55006).
async fn create_from_template(
    conn: &mut sqlx::PgConnection,
    database: &Ident,
    template: &Ident,
) -> std::result::Result<(), sqlx::Error> {
    let statement = sql::create_database(database, Some(template));
    let mut attempt = 0;
    loop {
        match sqlx::raw_sql(statement.clone()).execute(&mut *conn).await {
            Ok(_) => return Ok(()),
            Err(e)
                if attempt < 20
                    && crate::error::db_code(&e).is_some_and(|(code, _)| code == "55006") =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
