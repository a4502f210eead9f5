//! Creating and removing tenants, all or nothing: [`Hidra::provision`],
//! [`Hidra::suspend`], [`Hidra::activate`], [`Hidra::deprovision`].
//!
//! Provisioning a schema-per-tenant tenant is **one transaction**: the registry
//! row is claimed (status `provisioning`), the schema is created, the schema SQL
//! and the seed hook run inside it, and the row becomes `active` just before
//! commit. PostgreSQL's DDL is transactional, so any failure, a cancelled
//! future or a crashed process leaves neither a schema nor a row behind. A
//! concurrent provision of the same id waits on the row's unique key and then
//! fails with [`Error::AlreadyExists`]. With Hidra's own registry store, no
//! seed, no warm pool and only transactional migrations, that transaction is
//! sent as one batch, the row registered `active` at once (nobody sees it
//! before the commit anyway), then `COMMIT` on its own: a future cut off
//! before the commit leaves nothing, as the server would otherwise run a
//! `COMMIT` queued in the same batch.

use sqlx::Connection;

use crate::error::{Error, Result, sqlstate};
use crate::hidra::Hidra;
use crate::migrate;
use crate::scope;
use crate::sql::{self, Ident};
use crate::store::TenantUpdate;
use crate::tenant::{NewTenant, Placement, Strategy, Tenant, TenantId, TenantStatus};

/// Drops a tenant schema with everything in it and forgets its version, in the
/// caller's transaction.
pub(crate) async fn drop_tenant_schema(tx: &mut sqlx::PgConnection, schema: &Ident) -> Result<()> {
    sqlx::raw_sql(sql::drop_schema(schema))
        .execute(&mut *tx)
        .await
        .map_err(Error::db("dropping the tenant schema"))?;
    sqlx::query("DELETE FROM hidra.schema_versions WHERE schema_name = $1")
        .bind(schema.as_str())
        .execute(&mut *tx)
        .await
        .map_err(Error::db("forgetting the tenant's schema version"))?;
    Ok(())
}

/// Proof that the caller means to delete a tenant and everything in it; see
/// [`Hidra::deprovision`].
#[derive(Clone, Debug)]
pub struct Confirmation(TenantId);

impl Confirmation {
    /// Confirms the deletion of `id`. It only confirms that id.
    pub fn of(id: &TenantId) -> Self {
        Confirmation(id.clone())
    }
}

impl Hidra {
    /// Creates hidra's internal schema once per process, if missing.
    pub(crate) async fn ensure_internal(&self, conn: &mut sqlx::PgConnection) -> Result<()> {
        self.inner
            .internal_ready
            .get_or_try_init(|| migrate::ensure_internal(conn))
            .await
            .map(|_| ())
    }

    /// [`ensure_internal`](Self::ensure_internal) for a provisioning of `id`,
    /// once the registry is known to exist: a provisioning that is bound to
    /// fail for want of a registry leaves no internal schema behind.
    pub(crate) async fn ensure_internal_for(
        &self,
        conn: &mut sqlx::PgConnection,
        id: &TenantId,
    ) -> Result<()> {
        if self.inner.internal_ready.get().is_none() {
            self.inner.store.get(conn, id).await?;
        }
        self.ensure_internal(conn).await
    }

    /// Creates a tenant: registry row, schema with every tenant migration (or a
    /// spare schema from the warm pool, renamed), seed, then `active`.
    ///
    /// All or nothing: on any error nothing of the tenant remains. Fails with
    /// [`Error::AlreadyExists`] if the id is taken and [`Error::SchemaTaken`] if
    /// another id maps to the same schema name.
    pub async fn provision(&self, new: NewTenant) -> Result<Tenant> {
        match new.strategy.unwrap_or(self.inner.default_strategy) {
            Strategy::Schema => self.provision_schema(new).await,
            Strategy::RowLevel => self.provision_row_level(new).await,
            Strategy::Database => self.provision_database(new).await,
        }
    }

    /// A row-level tenant is a registry row (and its seed rows), in one
    /// transaction, once the row-level audit has passed.
    async fn provision_row_level(&self, mut new: NewTenant) -> Result<Tenant> {
        self.require_row_level_audit().await?;
        let setup = new.setup.take();
        let draft = self.draft(
            new,
            Placement {
                strategy: Strategy::RowLevel,
                schema: self.inner.row_level.schema.to_string(),
                database: None,
                server: None,
            },
        );
        let mut conn = self.acquire_shared().await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the provisioning transaction"))?;
        let tenant = self.inner.store.insert(&mut tx, &draft).await?;
        let binding = self.binding(&tenant)?;
        let tenant = self
            .activate_new(&mut tx, &tenant, &binding, setup.as_deref())
            .await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the provisioning transaction"))?;
        tracing::info!(tenant = %tenant.id, strategy = "row_level", "provisioned tenant");
        Ok(tenant)
    }

    pub(crate) fn draft(&self, new: NewTenant, placement: Placement) -> Tenant {
        Tenant {
            name: new.name.unwrap_or_else(|| new.id.to_string()),
            status: TenantStatus::Provisioning,
            placement,
            metadata: new.metadata,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            id: new.id,
        }
    }

    async fn provision_schema(&self, mut new: NewTenant) -> Result<Tenant> {
        let inner = &self.inner;
        let setup = new.setup.take();
        let schema = inner.naming.schema_for(&new.id);
        let draft = self.draft(
            new,
            Placement {
                strategy: Strategy::Schema,
                schema: schema.as_str().to_owned(),
                database: None,
                server: None,
            },
        );
        let id = draft.id.clone();
        let started = std::time::Instant::now();
        let taken = || Error::SchemaTaken {
            id: id.clone(),
            schema: schema.to_string(),
        };

        let mut conn = self.acquire_shared().await?;
        self.ensure_internal_for(&mut conn, &id).await?;
        if let Some(store) = inner.registry_store.as_deref().filter(|_| {
            setup.is_none()
                && inner.seed.is_none()
                && inner.warm_pool == 0
                && inner.tenant_migrations.iter().all(|m| !m.no_tx)
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
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the provisioning transaction"))?;

        let tenant = inner.store.insert(&mut tx, &draft).await?;

        let migrations = &inner.tenant_migrations;
        let binding = self.binding(&tenant)?;
        let path = binding.search_path.clone();
        let claimed = if inner.warm_pool > 0 {
            migrate::claim_spare(&mut tx, migrations, &schema)
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
                let mut tx = conn
                    .begin()
                    .await
                    .map_err(Error::db("beginning the provisioning transaction"))?;
                let tenant = self
                    .activate_new(&mut tx, &tenant, &binding, setup.as_deref())
                    .await?;
                tx.commit()
                    .await
                    .map_err(Error::db("committing the provisioning transaction"))?;
                Ok(tenant)
            }
            .await;
            if finished.is_err()
                && let Err(undo) = self.undo_provisioning(&tenant).await
            {
                tracing::error!(tenant = %id, error = %undo, "could not undo a failed provisioning; deprovision it");
            }
            return finished;
        }

        let tenant = self
            .activate_new(&mut tx, &tenant, &binding, setup.as_deref())
            .await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the provisioning transaction"))?;

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
        let new = migrate::NewSchema::new(schema, &path, &self.inner.tenant_migrations);
        let prefix = format!(
            "BEGIN; SET LOCAL {} TO on;\n{};\n",
            sql::DEFER_ANNOUNCEMENT,
            store.insert_literal(&draft),
        );
        let batch = sql::owned(format!("{prefix}{}", new.sql.as_str()));
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
                        applied += usize::from(r.try_get::<i64, _>(sql::APPLIED_COLUMN).is_ok());
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
            let mut replies =
                sqlx::raw_sql(sql::commit_and_announce(&tenant.id)).fetch_many(&mut *conn);
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
            Some(_) => match migrate::failed_migration(
                &new.batch,
                &new.spans,
                &error,
                prefix.chars().count(),
                applied,
            ) {
                Some(failed) => failed.error(schema.as_str(), error),
                None => Error::db("provisioning a tenant schema")(error),
            },
        })
    }

    /// Seeds a new tenant (the handle's seed, then its own `setup`) and marks
    /// it active, in the caller's transaction.
    async fn activate_new(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
        binding: &scope::Binding,
        setup: Option<&dyn crate::hidra::DynSeed>,
    ) -> Result<Tenant> {
        let inner = &self.inner;
        let id = &tenant.id;
        let hooks = inner.seed.as_deref().into_iter().chain(setup);
        let mut bound = false;
        for hook in hooks {
            if !bound {
                sqlx::query(sql::BIND_LOCAL)
                    .bind(&binding.search_path)
                    .bind(&binding.tenant_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("binding the new tenant's search_path"))?;
                bound = true;
            }
            hook.seed_boxed(tx, tenant)
                .await
                .map_err(|source| Error::Seed {
                    id: id.clone(),
                    source,
                })?;
        }
        // Back to the session default so an unqualified registry table name
        // cannot resolve to a table of the new tenant.
        sqlx::raw_sql(sql::UNBIND_LOCAL)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("restoring the search_path"))?;
        inner
            .store
            .update_status(tx, id, &[TenantStatus::Provisioning], TenantStatus::Active)
            .await?
            .ok_or_else(|| Error::NotFound(id.clone()))
    }

    /// Deletes every row of a row-level tenant, children first, with the tenant
    /// bound so that the policies let exactly its rows through.
    pub(crate) async fn delete_row_level_rows(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
    ) -> Result<()> {
        sqlx::query(sql::BIND_TENANT_LOCAL)
            .bind(tenant.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("binding the row-level tenant"))?;
        let tables = self.row_level_tables(tx).await?;
        let column = self.inner.row_level.column.quoted();
        for (_, table, _) in tables.iter().rev() {
            sqlx::query(sql::owned(format!(
                "DELETE FROM {table} WHERE {column} = $1"
            )))
            .bind(tenant.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("deleting a row-level tenant's rows"))?;
        }
        sqlx::query(sql::BIND_TENANT_LOCAL)
            .bind("")
            .execute(&mut *tx)
            .await
            .map_err(Error::db("unbinding the row-level tenant"))?;
        Ok(())
    }

    /// Removes what a failed two-phase provisioning left: schema, bookkeeping, row.
    async fn undo_provisioning(&self, tenant: &Tenant) -> Result<()> {
        let mut conn = self.acquire_shared().await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the provisioning rollback"))?;
        let schema = tenant.placement.schema_ident()?;
        drop_tenant_schema(&mut tx, &schema).await?;
        self.inner.store.delete(&mut tx, &tenant.id).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the provisioning rollback"))
    }

    /// Suspends a tenant: its data stays, the web layer refuses its requests.
    /// Suspending a suspended tenant is a no-op.
    pub async fn suspend(&self, id: &TenantId) -> Result<Tenant> {
        self.transition(
            id,
            &[TenantStatus::Active, TenantStatus::Suspended],
            TenantStatus::Suspended,
            "active or suspended",
            "suspend",
        )
        .await
    }

    /// Renames a tenant and/or replaces its metadata; its status, placement
    /// and data are untouched. The change is announced like any registry
    /// change, so every process's cache drops its copy.
    ///
    /// Refuses an empty name and metadata that is not a JSON object with
    /// [`Error::InvalidConfig`], and an unknown id with [`Error::NotFound`].
    pub async fn update_tenant(&self, id: &TenantId, update: TenantUpdate) -> Result<Tenant> {
        if update.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(Error::InvalidConfig(
                "a tenant's name cannot be empty: give a display name, or leave it unchanged"
                    .into(),
            ));
        }
        if update.metadata.as_ref().is_some_and(|m| !m.is_object()) {
            return Err(Error::InvalidConfig(
                "a tenant's metadata must be a JSON object, such as {\"plan\": \"pro\"}".into(),
            ));
        }
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        let store = &self.inner.store;
        let updated = if update.is_empty() {
            store.get(&mut conn, id).await?
        } else {
            store.update_details(&mut conn, id, &update).await?
        };
        let tenant = updated.ok_or_else(|| Error::NotFound(id.clone()))?;
        tracing::info!(tenant = %id, "tenant details changed");
        Ok(tenant)
    }

    /// Re-activates a suspended tenant. Activating an active tenant is a no-op.
    pub async fn activate(&self, id: &TenantId) -> Result<Tenant> {
        self.transition(
            id,
            &[TenantStatus::Suspended, TenantStatus::Active],
            TenantStatus::Active,
            "suspended or active",
            "activate",
        )
        .await
    }

    async fn transition(
        &self,
        id: &TenantId,
        from: &[TenantStatus],
        to: TenantStatus,
        expected: &'static str,
        action: &'static str,
    ) -> Result<Tenant> {
        let mut conn = self.acquire_shared().await?;
        let store = &self.inner.store;
        match store.update_status(&mut conn, id, from, to).await? {
            Some(tenant) => {
                tracing::info!(tenant = %id, status = %to, "tenant status changed");
                Ok(tenant)
            }
            None => match store.get(&mut conn, id).await? {
                None => Err(Error::NotFound(id.clone())),
                Some(t) => Err(Error::InvalidStatus {
                    id: id.clone(),
                    status: t.status,
                    expected,
                    action,
                }),
            },
        }
    }

    /// Deletes a tenant and all its data: drops its schema with everything in
    /// it and removes its registry row.
    ///
    /// `confirm` must be [`Confirmation::of`] the same id. The tenant is first
    /// marked `deleting` (so it stops being served), then the schema and the row
    /// go in one transaction; if that fails the tenant stays `deleting` and
    /// calling this again finishes the job.
    pub async fn deprovision(&self, id: &TenantId, confirm: Confirmation) -> Result<()> {
        if &confirm.0 != id {
            return Err(Error::ConfirmationRequired(id.clone()));
        }
        let store = &self.inner.store;
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        let tenant = store
            .update_status(
                &mut conn,
                id,
                &[
                    TenantStatus::Provisioning,
                    TenantStatus::Active,
                    TenantStatus::Suspended,
                    TenantStatus::Deleting,
                ],
                TenantStatus::Deleting,
            )
            .await?
            .ok_or_else(|| Error::NotFound(id.clone()))?;

        if tenant.placement.strategy == Strategy::Database {
            // Outside any transaction: PostgreSQL cannot drop a database in one.
            self.drop_tenant_database(&tenant).await?;
        }
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the deprovisioning transaction"))?;
        match tenant.placement.strategy {
            Strategy::Schema => {
                drop_tenant_schema(&mut tx, &tenant.placement.schema_ident()?).await?;
            }
            Strategy::RowLevel => self.delete_row_level_rows(&mut tx, &tenant).await?,
            Strategy::Database => {}
        }
        store.delete(&mut tx, id).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the deprovisioning transaction"))?;
        tracing::info!(tenant = %id, "deprovisioned tenant");
        Ok(())
    }
}
