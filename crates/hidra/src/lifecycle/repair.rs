//! Provisionings a killed process left half done.
//!
//! Provisioning is one transaction where it can be. Where it cannot (a
//! tenant on a registered server, a tenant database, a schema waiting for
//! its `-- no-transaction` migrations, an imported database), the tenant's
//! row is committed `provisioning` first, and the process holds the tenant's
//! provisioning lock ([`ProvisioningLock`], a session advisory lock) until
//! the row is settled. PostgreSQL releases it with the session, so a
//! `provisioning` row whose lock nobody holds is abandoned:
//! [`Hidra::abandoned_provisionings`] lists those and
//! [`Hidra::repair_provisioning`] undoes them.

use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::scope::PoolConn;
use crate::tenant::{Tenant, TenantId, TenantStatus};

/// First key of the provisioning locks (`pg_advisory_lock(int4, int4)`, the second key the hash of the
/// tenant id).
const PROVISION_LOCK: i32 = 0x6869_6470; // "hidp"

impl Hidra {
    /// Tenants whose provisioning was interrupted (a killed process) after
    /// their row was committed as `provisioning`: a tenant on a registered
    /// server, a tenant database, a schema waiting for its `--
    /// no-transaction` migrations, an imported database. These are the
    /// `provisioning` rows whose provisioning lock nobody holds (a
    /// provisioning in progress holds its lock).
    pub async fn abandoned_provisionings(&self) -> Result<Vec<Tenant>> {
        let mut conn = self.acquire_shared().await?.into_pool_conn();
        conn.close_on_drop();
        let mut abandoned = Vec::new();
        let store = &self.inner.registry.store;
        let provisioning = Some(TenantStatus::Provisioning);
        for tenant in crate::store::list_all_in(store, &mut conn, provisioning).await? {
            if lock_provisioning(&mut conn, &tenant.id, Lock::Try).await? {
                lock_provisioning(&mut conn, &tenant.id, Lock::Release).await?;
                abandoned.push(tenant);
            }
        }
        conn.settled();
        Ok(abandoned)
    }

    /// Undoes every [abandoned provisioning](Hidra::abandoned_provisionings):
    /// drops what was built of each tenant on its server, then its registry
    /// row. Returns the ids undone. A tenant whose server does not answer is
    /// left as it is (and named in the error); run it again once it does.
    pub async fn repair_provisioning(&self) -> Result<Vec<TenantId>> {
        let mut undone = Vec::new();
        for tenant in self.abandoned_provisionings().await? {
            if self.undo_claimed(&tenant.id, Undo::DataAndRow).await? {
                undone.push(tenant.id);
            }
        }
        Ok(undone)
    }

    /// Undoes the provisioning of `id` under its lock, if its row is still
    /// `provisioning`: its data on its server, then its row. Returns whether
    /// there was anything to undo.
    pub(crate) async fn undo_claimed(&self, id: &TenantId, undo: Undo) -> Result<bool> {
        let mut lock = ProvisioningLock::take(self, id).await?;
        let conn = lock.conn();
        let store = &self.inner.registry.store;
        let undone =
            match (store.get(conn, id).await?).filter(|t| t.status == TenantStatus::Provisioning) {
                Some(tenant) => {
                    if undo == Undo::DataAndRow && self.built_by_provisioning(&tenant).await? {
                        self.drop_tenant(conn, &tenant).await?;
                    } else {
                        store.delete(conn, id).await?;
                    }
                    tracing::info!(tenant = %id, "undid an interrupted provisioning");
                    true
                }
                None => false,
            };
        lock.release().await;
        Ok(undone)
    }
}

/// What undoing a provisioning removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Undo {
    /// What it built on the tenant's server, then the row.
    DataAndRow,
    /// The row only: the name was taken on the server by something else.
    RowOnly,
}

/// What to do with a tenant's provisioning lock.
#[derive(Clone, Copy, Debug)]
enum Lock {
    /// Wait for it.
    Take,
    /// Take it if free.
    Try,
    /// Give it back.
    Release,
}

/// Takes, tries or gives back the provisioning lock of `id`; returns
/// whether it is held (`Try`) or was held (`Release`), `true` for `Take`.
async fn lock_provisioning(
    conn: &mut sqlx::PgConnection,
    id: &TenantId,
    lock: Lock,
) -> Result<bool> {
    let statement = match lock {
        Lock::Take => "SELECT pg_advisory_lock($1, hashtext($2)) IS NULL",
        Lock::Try => "SELECT pg_try_advisory_lock($1, hashtext($2))",
        Lock::Release => "SELECT pg_advisory_unlock($1, hashtext($2))",
    };
    sqlx::query_scalar(statement)
        .bind(PROVISION_LOCK)
        .bind(id.as_str())
        .fetch_one(conn)
        .await
        .map_err(Error::db("taking the tenant's provisioning lock"))
}

/// The provisioning lock of one tenant, held on a control-server connection
/// of its own from before the tenant's registry row is committed as
/// `provisioning` until that row is settled. A provisioning in progress holds
/// it; a `provisioning` row whose lock nobody holds is abandoned (see
/// [`Hidra::abandoned_provisionings`]). Dropped without
/// [`release`](Self::release) (an error, a cancelled future), its connection
/// is closed, which gives the lock back.
pub(crate) struct ProvisioningLock {
    conn: PoolConn,
    /// `None`: no lock taken (see [`on`](Self::on)).
    id: Option<TenantId>,
}

impl ProvisioningLock {
    /// Waits for the lock of `id` on a connection of the shared pool, with
    /// Hidra's internal schema there; do the row's work on [`conn`](Self::conn).
    pub(crate) async fn take(hidra: &Hidra, id: &TenantId) -> Result<Self> {
        let mut conn = hidra.acquire_shared().await?.into_pool_conn();
        hidra.ensure_internal_for(&mut conn, id).await?;
        Self::on(conn, id, true).await
    }

    /// Waits for the lock of `id` on `conn`, the provisioning's own
    /// connection of the shared pool, if `needed` (a provisioning that
    /// commits its row before it is done); else it only keeps `conn`.
    pub(crate) async fn on(mut conn: PoolConn, id: &TenantId, needed: bool) -> Result<Self> {
        if !needed {
            return Ok(Self { conn, id: None });
        }
        // Until the lock is given back, the connection must not be reused.
        conn.close_on_drop();
        lock_provisioning(&mut conn, id, Lock::Take).await?;
        Ok(Self {
            conn,
            id: Some(id.clone()),
        })
    }

    /// Takes the lock of `draft`, then commits its row (`provisioning`) on
    /// the lock's connection; returns both.
    pub(crate) async fn register(hidra: &Hidra, draft: &Tenant) -> Result<(Self, Tenant)> {
        let mut lock = Self::take(hidra, &draft.id).await?;
        let tenant = hidra
            .inner
            .registry
            .store
            .insert(lock.conn(), draft)
            .await?;
        Ok((lock, tenant))
    }

    /// The connection holding the lock.
    pub(crate) fn conn(&mut self) -> &mut PoolConn {
        &mut self.conn
    }

    /// Gives the lock back, and the connection to the pool (closed instead
    /// if the unlock fails).
    pub(crate) async fn release(mut self) {
        let Some(id) = &self.id else { return };
        if lock_provisioning(&mut self.conn, id, Lock::Release)
            .await
            .is_ok()
        {
            self.conn.settled();
        }
    }
}
