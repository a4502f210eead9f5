//! Schema per tenant: each tenant has a PostgreSQL schema of its own in the
//! shared database, first in its connections' `search_path`.
//!
//! Provisioning is **one transaction**: the registry row is claimed (status
//! `provisioning`), the schema is created (or a spare of the warm pool is
//! renamed), every tenant migration and the seed hook run inside it, and the
//! row becomes `active` just before commit. PostgreSQL's DDL is
//! transactional, so any failure, a cancelled future or a crashed process
//! leaves neither a schema nor a row behind. With Hidra's own registry store,
//! no seed, no warm pool and only transactional migrations, that transaction
//! is sent as one batch, the row registered `active` at once (nobody sees it
//! before the commit anyway), then `COMMIT` on its own: a future cut off
//! before the commit leaves nothing, as the server would otherwise run a
//! `COMMIT` queued in the same batch. Dropping the tenant drops its schema
//! and its bookkeeping row. Moves into a schema build it here
//! ([`Hidra::build_schema_for_move`]).

pub(crate) mod warm;

use sqlx::Connection;

use crate::error::{Error, Result, sqlstate};
use crate::hidra::Hidra;
use crate::lifecycle::ProvisioningLock;
use crate::migrate;
use crate::moves::{Progress, Table, copy_and_commit};
use crate::scope;
use crate::servers::Home;
use crate::sql::{self, Ident};
use crate::tenant::{NewTenant, Placement, SchemaNaming, Strategy, Tenant, TenantStatus};

/// What schema per tenant is configured with: how a tenant id maps to a
/// schema name, and the shared schemas searched after a tenant's own.
#[derive(Debug)]
pub(crate) struct SchemaConfig {
    pub(crate) naming: SchemaNaming,
    pub(crate) shared: Vec<Ident>,
}

/// The placement of a tenant in `schema` of the shared database.
pub(crate) fn placement(schema: &Ident) -> Placement {
    Placement {
        strategy: Strategy::Schema,
        schema: schema.to_string(),
        database: None,
        server: None,
    }
}

/// Drops a tenant schema with everything in it and forgets its version, in the
/// caller's transaction. The tenant's transactions still open on it are
/// cancelled rather than waited for (see `moves::drop_cancelling`).
pub(crate) async fn drop_tenant_schema(tx: &mut sqlx::PgConnection, schema: &Ident) -> Result<()> {
    crate::moves::drop_cancelling(tx, schema.as_str(), sql::drop_schema(schema))
        .await
        .map_err(Error::db("dropping the tenant schema"))?;
    sqlx::query("DELETE FROM hidra.schema_versions WHERE schema_name = $1")
        .bind(schema.as_str())
        .execute(&mut *tx)
        .await
        .map_err(Error::db("forgetting the tenant's schema version"))?;
    Ok(())
}

/// Whether `schema` has its row in `hidra.schema_versions` (written in
/// the transaction that creates a tenant schema).
pub(crate) async fn has_bookkeeping(conn: &mut sqlx::PgConnection, schema: &str) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT to_regclass('hidra.schema_versions') IS NOT NULL \
         AND EXISTS (SELECT 1 FROM hidra.schema_versions WHERE schema_name = $1)",
    )
    .bind(schema)
    .fetch_one(conn)
    .await
    .map_err(Error::db("checking whose schema it is"))
}

impl Hidra {
    /// Creates a schema-per-tenant tenant; see [`Hidra::provision`].
    pub(crate) async fn provision_schema(&self, mut new: NewTenant) -> Result<Tenant> {
        let inner = &self.inner;
        let setup = new.setup.take();
        let schema = inner.schema.naming.schema_for(&new.id);
        let draft = self.draft(new, placement(&schema));
        let id = draft.id.clone();
        let started = std::time::Instant::now();
        let taken = || Error::SchemaTaken {
            id: id.clone(),
            schema: schema.to_string(),
        };

        let mut conn = self.acquire_shared().await?;
        self.ensure_internal_for(&mut conn, &id).await?;
        if let Some(store) = inner.registry.own.as_deref().filter(|_| {
            setup.is_none()
                && inner.provisioning.seed.is_none()
                && inner.migrations.warm_pool == 0
                && inner.migrations.tenant.iter().all(|m| !m.no_tx)
        }) {
            let tenant = self
                .provision_in_one_batch(conn.into_pool_conn(), store, draft, &schema)
                .await?;
            tracing::info!(
                tenant = %id,
                schema = %schema,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "provisioned tenant"
            );
            return Ok(tenant);
        }
        // A tenant committed `provisioning` while its `-- no-transaction`
        // migrations run holds its provisioning lock until it is settled, so
        // that a killed process leaves a row `hidra doctor --repair`
        // recognises as abandoned.
        let no_tx = inner.migrations.tenant.iter().any(|m| m.no_tx);
        let mut lock = ProvisioningLock::on(conn.into_pool_conn(), &id, no_tx).await?;
        let conn = lock.conn();
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the provisioning transaction"))?;

        let tenant = inner.registry.store.insert(&mut tx, &draft).await?;

        let migrations = &inner.migrations.tenant;
        let binding = self.binding(&tenant)?;
        let path = binding.search_path.clone();
        let claimed = if inner.migrations.warm_pool > 0 {
            warm::claim_spare(&mut tx, migrations, &schema)
                .await
                .map_err(|e| match e.sqlstate().as_deref() {
                    Some(sqlstate::DUPLICATE_SCHEMA) => taken(),
                    _ => e,
                })?
        } else {
            None
        };
        let mut reached = migrations.latest();
        if claimed.is_none() {
            // The schema, every migration, the history and the bookkeeping in
            // one round trip.
            reached = migrate::create_schema(&mut tx, &schema, &path, migrations)
                .await
                .map_err(|(source, failed)| match failed {
                    None => taken(),
                    Some(m) => m.error(schema.as_str(), source),
                })?;
        }
        if reached < migrations.latest() {
            // `-- no-transaction` migrations cannot run in this transaction:
            // commit the tenant as `provisioning` (the web layer refuses it),
            // let the runner finish it, then activate; undo it all on failure.
            tx.commit()
                .await
                .map_err(Error::db("committing the provisioning transaction"))?;
            let finished = async {
                self.migrator()
                    .finish(schema.as_str(), Some(id.clone()), None, reached)
                    .await?;
                let tx = conn
                    .begin()
                    .await
                    .map_err(Error::db("beginning the provisioning transaction"))?;
                self.activate_and_commit(tx, &tenant, &binding, setup.as_deref())
                    .await
            }
            .await;
            let settled = match &finished {
                Ok(_) => Ok(()),
                Err(_) => self.undo_provisioning(&tenant).await,
            };
            match settled {
                Ok(()) => lock.release().await,
                Err(undo) => {
                    tracing::error!(tenant = %id, error = %undo, "could not undo a failed provisioning; `hidra doctor --repair` will")
                }
            }
            return finished;
        }

        let tenant = self
            .activate_and_commit(tx, &tenant, &binding, setup.as_deref())
            .await?;
        lock.release().await;

        tracing::info!(
            tenant = %id,
            schema = %schema,
            from_warm_pool = claimed.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provisioned tenant"
        );
        Ok(tenant)
    }

    /// The provisioning transaction of a tenant without seed in two round
    /// trips: one batch with the registry row (`active`: nobody sees it before
    /// the commit), the schema with every migration, its history and
    /// version; then the commit.
    async fn provision_in_one_batch(
        &self,
        mut conn: scope::PoolConn,
        store: &crate::PgTenantStore,
        mut draft: Tenant,
        schema: &Ident,
    ) -> Result<Tenant> {
        use futures_util::StreamExt;
        use sqlx::Row;

        draft.status = TenantStatus::Active;
        let path = self.binding(&draft)?.search_path;
        let new = migrate::NewSchema::new(schema, &path, &self.inner.migrations.tenant);
        let mut batch = sql::Statement::new();
        batch
            .sql("BEGIN; SET LOCAL ")
            .sql(sql::DEFER_ANNOUNCEMENT)
            .sql(" TO on;\n")
            // Quoted by the store.
            .append(&store.insert_literal(&draft))
            .sql(";\n");
        let prefix = batch.as_str().chars().count();
        let batch = batch.trusted(new.sql.as_str()).finish();
        // Cut off inside the transaction: rolled back before reuse.
        conn.settle(scope::Settle::Rollback);
        let (mut row, mut applied) = (None, 0usize);
        let failure = {
            let mut stream = sqlx::raw_sql(batch).fetch_many(&mut *conn);
            loop {
                match stream.next().await {
                    None => break None,
                    Some(Ok(sqlx::Either::Right(r))) if row.is_none() => row = Some(r),
                    Some(Ok(sqlx::Either::Right(r))) => {
                        applied +=
                            usize::from(r.try_get::<i64, _>(migrate::APPLIED_COLUMN).is_ok());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(e),
                }
            }
        };
        let Some(error) = failure else {
            let tenant = row
                .as_ref()
                .map(|row| store.decode(row))
                .unwrap_or_else(|| {
                    Err(Error::CorruptRecord {
                        id: draft.id.to_string(),
                        reason: "the registry returned no row for a new tenant".into(),
                    })
                })?;
            // The new row is announced after the commit: see
            // `sql::commit_and_announce`.
            let mut replies = sqlx::raw_sql(sql::commit_and_announce(
                crate::CHANGES_CHANNEL,
                tenant.id.as_str(),
            ))
            .fetch_many(&mut *conn);
            let mut committed = false;
            while let Some(reply) = replies.next().await {
                match reply {
                    Ok(sqlx::Either::Left(_)) => committed = true,
                    Ok(sqlx::Either::Right(_)) => {}
                    Err(source) if !committed => {
                        return Err(Error::Database {
                            context: "committing the provisioning transaction",
                            source,
                        });
                    }
                    // Caches elsewhere learn of it when their negative entry
                    // for the id expires.
                    Err(error) => tracing::warn!(
                        tenant = %tenant.id,
                        error = %error,
                        "a new tenant was committed but could not be announced"
                    ),
                }
            }
            drop(replies);
            conn.settled();
            return Ok(tenant);
        };
        // The pool's settle task rolls the failed transaction back.
        Err(match row {
            None => store.insert_error(&draft, error),
            Some(_)
                if applied == 0
                    && crate::error::db_code(&error)
                        .is_some_and(|(code, _)| code == sqlstate::DUPLICATE_SCHEMA) =>
            {
                Error::SchemaTaken {
                    id: draft.id.clone(),
                    schema: schema.to_string(),
                }
            }
            Some(_) => {
                match migrate::failed_migration(&new.batch, &new.spans, &error, prefix, applied) {
                    Some(failed) => failed.error(schema.as_str(), error),
                    None => Error::db("provisioning a tenant schema")(error),
                }
            }
        })
    }

    /// Removes what a failed two-phase provisioning left: the schema and the
    /// row, as a deprovisioning does.
    async fn undo_provisioning(&self, tenant: &Tenant) -> Result<()> {
        let mut conn = self.acquire_shared().await?;
        self.drop_tenant(&mut conn, tenant).await
    }

    /// Builds a tenant's schema with every tenant migration inside the move's
    /// transaction.
    pub(crate) async fn build_schema_for_move(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
        schema: &Ident,
        search_path: &str,
    ) -> Result<()> {
        self.build_schema_in(tx, tenant, schema, search_path, "a move")
            .await
    }

    /// Builds a tenant's schema with every tenant migration inside the
    /// caller's transaction (`what`: what it is for, in the error when a
    /// `-- no-transaction` migration cannot be part of it).
    pub(crate) async fn build_schema_in(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
        schema: &Ident,
        search_path: &str,
        what: &str,
    ) -> Result<()> {
        let migrations = &self.inner.migrations.tenant;
        let reached = migrate::create_schema(tx, schema, search_path, migrations)
            .await
            .map_err(|(source, failed)| match failed {
                None => Error::SchemaTaken {
                    id: tenant.id.clone(),
                    schema: schema.to_string(),
                },
                Some(m) => m.error(schema.as_str(), source),
            })?;
        if reached < migrations.latest() {
            return Err(Error::InvalidConfig(
                format!(
                    "tenant migration {} is `-- no-transaction`: {what} builds the tenant's schema in one transaction, so it cannot be part of it",
                    reached + 1
                )
                .into(),
            ));
        }
        Ok(())
    }

    /// Builds a schema tenant on `home` and copies `tables` into it from
    /// `source`, in one transaction there; returns the rows copied.
    pub(crate) async fn copy_schema_to(
        &self,
        home: &Home,
        tenant: &Tenant,
        source: &mut sqlx::PgConnection,
        tables: &[Table],
        progress: &Progress<'_>,
    ) -> Result<u64> {
        let mut conn = self.begin_shared_copy(home).await?;
        let schema = tenant.placement.schema_ident()?;
        let path = self.binding(tenant)?.search_path;
        if let Err(e) = self
            .build_schema_for_move(&mut conn, tenant, &schema, &path)
            .await
        {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            return Err(e);
        }
        copy_and_commit(
            source,
            tables,
            &mut conn,
            schema.as_str(),
            &tenant.id,
            progress,
        )
        .await
    }
}
