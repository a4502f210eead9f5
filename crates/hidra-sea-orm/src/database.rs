//! [`TenantDatabase`]: SeaORM's database handle for one tenant.

use std::sync::Arc;

use hidra::{Hidra, Tenant};
use sea_orm::{
    AccessMode, ConnectionTrait, DbBackend, DbErr, ExecResult, IsolationLevel, QueryResult,
    Statement,
};

use crate::TenantTransaction;
use crate::error::checkout_err;
use crate::run::{self, Target};

/// One tenant's database for SeaORM, as a `DatabaseConnection` is the whole
/// database's: each statement checks a connection bound to the tenant out of
/// Hidra's pool ([`Hidra::acquire`]) and gives it back, and
/// [`begin`](sea_orm::TransactionTrait::begin) starts a tenant transaction
/// ([`Hidra::begin`]).
///
/// Cheap to clone. Every strategy works: schema per tenant, row level and
/// database per tenant. A checkout refused at the tenant's pool cap is
/// [`DbErr::ConnectionAcquire`] (see [`is_tenant_busy`](crate::is_tenant_busy)).
///
/// ```no_run
/// use hidra_sea_orm::TenantDatabase;
/// use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
///
/// # async fn run(hidra: hidra::Hidra, tenant: hidra::Tenant) -> Result<(), sea_orm::DbErr> {
/// let db = TenantDatabase::new(hidra, tenant);
/// let row = db
///     .query_one_raw(Statement::from_string(db.get_database_backend(), "SELECT count(*) AS n FROM customers"))
///     .await?;
/// db.transaction::<_, _, sea_orm::DbErr>(|tx| {
///     Box::pin(async move {
///         tx.execute_unprepared("DELETE FROM carts").await?;
///         Ok(())
///     })
/// })
/// .await
/// .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantDatabase {
    hidra: Hidra,
    tenant: Arc<Tenant>,
}

impl TenantDatabase {
    /// `tenant`'s database, served by `hidra`.
    pub fn new(hidra: Hidra, tenant: impl Into<Arc<Tenant>>) -> Self {
        TenantDatabase {
            hidra,
            tenant: tenant.into(),
        }
    }

    /// The tenant this handle serves.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The Hidra handle behind it.
    pub fn hidra(&self) -> &Hidra {
        &self.hidra
    }

    async fn acquire(&self) -> Result<hidra::TenantConn, DbErr> {
        self.hidra.acquire(&self.tenant).await.map_err(checkout_err)
    }

    /// A tenant transaction, configured as asked.
    async fn open(
        &self,
        isolation: Option<IsolationLevel>,
        access: Option<AccessMode>,
    ) -> Result<TenantTransaction, DbErr> {
        let tx = self.hidra.begin(&self.tenant).await.map_err(checkout_err)?;
        let tx = TenantTransaction::new(tx);
        tx.configure(isolation, access).await?;
        Ok(tx)
    }
}

impl std::fmt::Debug for TenantDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TenantDatabase")
            .field(&self.tenant.id)
            .finish()
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for TenantDatabase {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        run::execute(Target::Conn(&mut self.acquire().await?), stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        run::execute_unprepared(Target::Conn(&mut self.acquire().await?), sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        run::query_one(Target::Conn(&mut self.acquire().await?), stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        run::query_all(Target::Conn(&mut self.acquire().await?), stmt).await
    }
}

crate::transaction::impl_transaction_trait!(TenantDatabase);
