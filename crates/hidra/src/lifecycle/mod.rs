//! Creating and removing tenants, all or nothing: [`Hidra::provision`],
//! [`Hidra::suspend`], [`Hidra::activate`], [`Hidra::deprovision`].
//!
//! The operations are the same for every isolation strategy; what differs
//! (creating a schema, a database or only a registry row; dropping it) is
//! the strategy's, in [`strategy`](crate::strategy), called through its one
//! dispatch point. What is common lives here: the registry row's draft and
//! status transitions, the seed hooks run before a new tenant becomes
//! `active`, and the confirmation a deletion requires. Every provisioning is
//! all or nothing; a concurrent provision of the same id waits on the row's
//! unique key and then fails with [`Error::AlreadyExists`].

mod repair;
pub(crate) use repair::{ProvisioningLock, Undo};

use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::migrate;
use crate::sql;
use crate::store::TenantUpdate;
use crate::tenant::{NewTenant, Placement, Tenant, TenantId, TenantStatus};

/// How the handle makes tenants: the strategy of those provisioned without
/// one, and the seed hook run in every new tenant.
pub(crate) struct Provisioning {
    pub(crate) default_strategy: crate::tenant::Strategy,
    pub(crate) seed: Option<std::sync::Arc<dyn crate::hidra::DynSeed>>,
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
            .registry
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
        if self.inner.registry.internal_ready.get().is_none() {
            self.inner.registry.store.get(conn, id).await?;
        }
        self.ensure_internal(conn).await
    }

    /// Creates a tenant: registry row, schema with every tenant migration (or a
    /// spare schema from the warm pool, renamed), seed, then `active`.
    ///
    /// All or nothing: on any error nothing of the tenant remains. Fails with
    /// [`Error::AlreadyExists`] if the id is taken and [`Error::SchemaTaken`] if
    /// another id maps to the same schema name.
    ///
    /// Where several servers are registered (see [`Hidra::servers`]), the
    /// tenant goes to the server its [`NewTenant`] names, else to the one the
    /// handle's [`PlacementPolicy`](crate::PlacementPolicy) chooses. On a
    /// registered server, the registry row is committed first (`provisioning`)
    /// on the control server, then the tenant's data is built on its server in
    /// one transaction there, then the row becomes `active`: a failure, a
    /// cancelled future or a killed process never leaves data without a row,
    /// and what such an interruption leaves is undone by
    /// [`Hidra::repair_provisioning`] (run by `hidra doctor --repair`).
    pub async fn provision(&self, new: NewTenant) -> Result<Tenant> {
        let strategy = new
            .strategy
            .unwrap_or(self.inner.provisioning.default_strategy);
        match self.place(&new).await? {
            None => self.provision_with(strategy, new).await,
            Some(server) => self.provision_on_server(strategy, new, server).await,
        }
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

    /// Seeds a new tenant (the handle's seed, then its own `setup`) and marks
    /// it active in `tx`, then commits `tx`: the provisioning's last step.
    pub(crate) async fn activate_and_commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        tenant: &Tenant,
        binding: &crate::strategy::Binding,
        setup: Option<&dyn crate::hidra::DynSeed>,
    ) -> Result<Tenant> {
        let tenant = self.activate_new(&mut tx, tenant, binding, setup).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the provisioning transaction"))?;
        Ok(tenant)
    }

    /// Seeds a new tenant and marks it active, in the caller's transaction.
    async fn activate_new(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
        binding: &crate::strategy::Binding,
        setup: Option<&dyn crate::hidra::DynSeed>,
    ) -> Result<Tenant> {
        let id = &tenant.id;
        self.run_seeds(tx, tenant, binding, setup).await?;
        self.inner
            .registry
            .store
            .update_status(tx, id, &[TenantStatus::Provisioning], TenantStatus::Active)
            .await?
            .ok_or_else(|| Error::NotFound(id.clone()))
    }

    /// [`run_seeds`](Self::run_seeds) in `tx`, then commits it: the end of
    /// a provisioning transaction.
    pub(crate) async fn commit_seeded(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        tenant: &Tenant,
        binding: &crate::strategy::Binding,
        setup: Option<&dyn crate::hidra::DynSeed>,
    ) -> Result<()> {
        self.run_seeds(&mut tx, tenant, binding, setup).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the provisioning transaction"))
    }

    /// Runs the handle's seed, then the tenant's own `setup`, in the
    /// caller's transaction bound to the new tenant; the binding is undone
    /// afterwards.
    pub(crate) async fn run_seeds(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
        binding: &crate::strategy::Binding,
        setup: Option<&dyn crate::hidra::DynSeed>,
    ) -> Result<()> {
        let hooks = self
            .inner
            .provisioning
            .seed
            .as_deref()
            .into_iter()
            .chain(setup);
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
                    id: tenant.id.clone(),
                    source,
                })?;
        }
        // Back to the session default so an unqualified registry table name
        // cannot resolve to a table of the new tenant.
        sqlx::raw_sql(sql::UNBIND_LOCAL)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("restoring the search_path"))?;
        Ok(())
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
        let store = &self.inner.registry.store;
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
        let store = &self.inner.registry.store;
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
        let store = &self.inner.registry.store;
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

        self.drop_tenant(&mut conn, &tenant).await?;
        tracing::info!(tenant = %id, "deprovisioned tenant");
        Ok(())
    }
}
