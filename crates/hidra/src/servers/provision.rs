//! Provisioning on a registered server, all or nothing across two servers.
//!
//! A tenant on a registered server has its registry row on the control
//! server and its data on its own server; no transaction spans both. The
//! order keeps the one invariant that matters, *no data without a row*:
//!
//! 1. **Claim**: on the control server, a session advisory lock on the
//!    tenant id is taken (held until the end), then one transaction checks
//!    that the server is still active (its row share-locked, so it cannot be
//!    drained or removed meanwhile) and commits the row as `provisioning`.
//!    The web layer refuses a `provisioning` tenant.
//! 2. **Build**: on the tenant's server, one transaction creates its schema
//!    (every migration, its bookkeeping) or its database, and runs the seed.
//! 3. **Activate**: the row becomes `active`, and the lock is released.
//!
//! A failure in 2 or 3 undoes 2 (drops what was built) and then deletes the
//! row. A cancelled future does the same from a task it leaves behind. A
//! killed process leaves a `provisioning` row whose lock nobody holds (the
//! server released it with the session): [`Hidra::repair_provisioning`]
//! finds those rows, takes their lock, drops whatever of the tenant exists
//! on its server, and deletes the row. A provisioning still in progress
//! holds its lock, so repair never touches it.

use sqlx::Connection;

use super::{Home, ServerName, ServerState};
use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::lifecycle::{ProvisioningLock, Undo};
use crate::migrate;
use crate::sql;
use crate::tenant::{NewTenant, Strategy, Tenant, TenantStatus};

impl Hidra {
    /// Creates a tenant on the registered server `server`; see
    /// [`Hidra::provision`].
    pub(crate) async fn provision_on_server(
        &self,
        strategy: Strategy,
        mut new: NewTenant,
        server: ServerName,
    ) -> Result<Tenant> {
        let setup = new.setup.take();
        let home = self.home_of(Some(server.as_str())).await?;
        self.require_ready_at(&home, strategy).await?;
        let mut placement = self.placement_for(strategy, &new.id);
        placement.server = Some(server.to_string());
        let draft = self.draft(new, placement);
        let started = std::time::Instant::now();

        let claim = self.claim_provisioning(&draft, &server).await?;
        let built = self.build_at(&home, &claim.tenant, setup.as_deref()).await;
        if built.is_ok() {
            tracing::debug!(tenant = %claim.tenant.id, server = %server, "tenant data committed on its server; activating");
        }
        let tenant = match built {
            Ok(()) => claim.activate().await,
            // A schema or database of that name was there before: not ours
            // to drop.
            Err(e @ Error::SchemaTaken { .. }) => {
                claim.undo(Undo::RowOnly).await;
                return Err(e);
            }
            Err(e) => {
                claim.undo(Undo::DataAndRow).await;
                return Err(e);
            }
        }?;
        tracing::info!(
            tenant = %tenant.id,
            server = %server,
            strategy = %strategy,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provisioned tenant on a registered server"
        );
        Ok(tenant)
    }

    /// Step 1: the lock, then the row (`provisioning`) committed on the
    /// control server, if `server` is active.
    async fn claim_provisioning(&self, draft: &Tenant, server: &ServerName) -> Result<Claim> {
        let mut lock = ProvisioningLock::take(self, &draft.id).await?;
        let mut tx = lock
            .conn()
            .begin()
            .await
            .map_err(Error::db("beginning the provisioning transaction"))?;
        self.lock_active_server(&mut tx, server).await?;
        let tenant = self.inner.registry.store.insert(&mut tx, draft).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the new tenant's registry row"))?;
        tracing::debug!(tenant = %tenant.id, server = %server, "tenant claimed; building it on its server");
        Ok(Claim {
            hidra: self.clone(),
            lock: Some(lock),
            tenant,
        })
    }

    /// Whether `server` is registered and `active`, checked before work that
    /// checks it again, locked, when it commits.
    pub(crate) async fn check_active_server(&self, server: &ServerName) -> Result<()> {
        let mut conn = self.acquire_shared().await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("checking the target server"))?;
        self.lock_active_server(&mut tx, server).await
    }

    /// Share-locks the registry row of `server` in the caller's transaction
    /// (so that it cannot be drained or removed before that commits) and
    /// checks that it is active.
    pub(crate) async fn lock_active_server(
        &self,
        tx: &mut sqlx::PgConnection,
        server: &ServerName,
    ) -> Result<()> {
        let servers = &self.inner.conns.servers;
        let mut lock = sql::Statement::new();
        lock.sql("SELECT state FROM ")
            // Quoted by `TableName`.
            .trusted(&servers.table.table().quoted())
            .sql(" WHERE name = $1 AND removed_at IS NULL FOR SHARE");
        let state: Option<String> = sqlx::query_scalar(lock.into_sql())
            .bind(server.as_str())
            .fetch_optional(tx)
            .await
            .map_err(Error::db("locking the tenant's server"))?;
        match state.as_deref().map(str::parse::<ServerState>) {
            None => Err(Error::ServerNotFound(server.clone())),
            Some(Ok(ServerState::Active)) => Ok(()),
            Some(Ok(state)) => {
                servers.loads.clear();
                Err(Error::ServerNotActive {
                    name: server.clone(),
                    state,
                })
            }
            Some(Err(reason)) => Err(Error::InvalidConfig(
                format!("the row of server {server:?} is not valid: {reason}").into(),
            )),
        }
    }

    /// A connection to `home`'s shared database, with Hidra's internal
    /// schema there.
    pub(crate) async fn acquire_internal_at(&self, home: &Home) -> Result<crate::SharedConn> {
        let mut conn = self.acquire_shared_at(home).await?;
        self.ensure_internal_at(home, &mut conn).await?;
        Ok(conn)
    }

    /// Creates Hidra's internal schema on `home`'s server once per process.
    pub(crate) async fn ensure_internal_at(
        &self,
        home: &Home,
        conn: &mut sqlx::PgConnection,
    ) -> Result<()> {
        match home {
            Home::Control => self.ensure_internal(conn).await,
            Home::Server(server) => server
                .internal_ready
                .get_or_try_init(|| async {
                    let before = migrate::internal_status(conn).await?;
                    migrate::ensure_internal(conn).await?;
                    if !before.row_level_tenants {
                        self.record_row_level_tenants(&server.name, conn).await?;
                    }
                    Ok::<_, Error>(())
                })
                .await
                .map(|_| ()),
        }
    }
}

/// A tenant claimed on the control server (step 1 done): activate it, or
/// undo it. Dropped without either (a cancelled future), it undoes the
/// provisioning from a task of its own.
struct Claim {
    hidra: Hidra,
    lock: Option<ProvisioningLock>,
    tenant: Tenant,
}

impl Claim {
    /// Step 3: the row becomes `active`; the lock is given back. If that
    /// fails, the provisioning is undone.
    async fn activate(mut self) -> Result<Tenant> {
        let mut lock = self.lock.take().expect("present until used");
        let activated = self
            .hidra
            .inner
            .registry
            .store
            .update_status(
                lock.conn(),
                &self.tenant.id,
                &[TenantStatus::Provisioning],
                TenantStatus::Active,
            )
            .await
            .and_then(|t| t.ok_or_else(|| Error::NotFound(self.tenant.id.clone())));
        match activated {
            Ok(tenant) => {
                lock.release().await;
                Ok(tenant)
            }
            Err(e) => {
                self.lock = Some(lock);
                self.undo(Undo::DataAndRow).await;
                Err(e)
            }
        }
    }

    /// Undoes a failed step 2 or 3: the data on the server (unless
    /// `RowOnly`), then the row.
    async fn undo(mut self, undo: Undo) {
        // The lock goes with the connection; `undo_claimed` takes it again.
        drop(self.lock.take());
        let id = self.tenant.id.clone();
        if let Err(e) = self.hidra.undo_claimed(&id, undo).await {
            tracing::error!(tenant = %id, error = %e, "could not undo a failed provisioning; `hidra doctor --repair` will");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Activated or undone: nothing left to do.
        let Some(lock) = self.lock.take() else { return };
        drop(lock);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (hidra, id) = (self.hidra.clone(), self.tenant.id.clone());
        runtime.spawn(async move {
            if let Err(e) = hidra.undo_claimed(&id, Undo::DataAndRow).await {
                tracing::error!(tenant = %id, error = %e, "could not undo a cancelled provisioning; `hidra doctor --repair` will");
            }
        });
    }
}
