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
use crate::migrate;
use crate::scope::PoolConn;
use crate::sql;
use crate::tenant::{NewTenant, Strategy, Tenant, TenantId, TenantStatus};

/// First key of the advisory locks provisionings on registered servers
/// hold (`pg_advisory_lock(int4, int4)`, the second key the hash of the
/// tenant id).
const PROVISION_LOCK: i32 = 0x6869_6470; // "hidp"

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
    async fn undo_claimed(&self, id: &TenantId, undo: Undo) -> Result<bool> {
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
enum Undo {
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
    id: TenantId,
}

impl ProvisioningLock {
    /// Waits for the lock of `id` on a connection of the shared pool, with
    /// Hidra's internal schema there; do the row's work on [`conn`](Self::conn).
    pub(crate) async fn take(hidra: &Hidra, id: &TenantId) -> Result<Self> {
        let mut conn = hidra.acquire_shared().await?.into_pool_conn();
        // Until the lock is given back, the connection must not be reused.
        conn.close_on_drop();
        hidra.ensure_internal_for(&mut conn, id).await?;
        lock_provisioning(&mut conn, id, Lock::Take).await?;
        Ok(Self {
            conn,
            id: id.clone(),
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
        if lock_provisioning(&mut self.conn, &self.id, Lock::Release)
            .await
            .is_ok()
        {
            self.conn.settled();
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
