//! What a job function is handed about its tenant: [`TenantJobContext`].

use std::fmt;
use std::sync::Arc;

use apalis::prelude::{FromRequest, Task};
use hidra::{Hidra, Tenant, TenantConn, TenantId, TenantTx};

use crate::error::Error;

/// The tenant a job runs for, and its database access.
///
/// Put in every task by [`TenantJobLayer`](crate::TenantJobLayer) once the
/// job's tenant was found active, and extracted by naming it as an argument
/// of the job function. Its connections are bound to the job's tenant and no
/// other: the job reaches its tenant's tables unqualified, as a request
/// handler does.
///
/// ```
/// use hidra_apalis::{TenantJob, TenantJobContext};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Report;
///
/// async fn nightly_report(
///     _job: TenantJob<Report>,
///     ctx: TenantJobContext,
/// ) -> Result<i64, hidra::BoxError> {
///     let mut tx = ctx.begin().await?;
///     let (orders,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders")
///         .fetch_one(&mut tx)
///         .await?;
///     tx.commit().await?;
///     Ok(orders)
/// }
/// ```
#[derive(Clone)]
pub struct TenantJobContext {
    hidra: Hidra,
    tenant: Arc<Tenant>,
}

impl TenantJobContext {
    pub(crate) fn new(hidra: Hidra, tenant: Arc<Tenant>) -> Self {
        TenantJobContext { hidra, tenant }
    }

    /// The job's tenant, as the registry had it when the job started.
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }

    /// The job's tenant's id.
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant.id
    }

    /// A connection bound to the job's tenant ([`Hidra::acquire`]).
    pub async fn acquire(&self) -> hidra::Result<TenantConn> {
        self.hidra.acquire(&self.tenant).await
    }

    /// A transaction bound to the job's tenant ([`Hidra::begin`]).
    pub async fn begin(&self) -> hidra::Result<TenantTx> {
        self.hidra.begin(&self.tenant).await
    }

    /// The Hidra handle, for what is not the job's tenant's own (shared
    /// tables).
    pub fn hidra(&self) -> &Hidra {
        &self.hidra
    }
}

impl fmt::Debug for TenantJobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantJobContext")
            .field("tenant", &self.tenant.id)
            .finish_non_exhaustive()
    }
}

impl<Args: Sync> FromRequest<Task<Args>> for TenantJobContext {
    type Error = Error;

    async fn from_request(task: &Task<Args>) -> Result<Self, Error> {
        task.data()
            .get::<TenantJobContext>()
            .cloned()
            .ok_or(Error::MissingLayer)
    }
}
