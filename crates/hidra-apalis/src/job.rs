//! The envelope a tenant's job is stored in: [`TenantJob`].

use std::ops::Deref;

use hidra::{Tenant, TenantId};
use serde::{Deserialize, Serialize};

/// A job together with the tenant it belongs to.
///
/// A [`TenantQueue<T>`](crate::TenantQueue) stores `TenantJob<T>` values, so
/// a job without a tenant cannot be enqueued there, and the worker's
/// [`TenantJobLayer`](crate::TenantJobLayer) reads the tenant from the job
/// itself. The envelope also records which *incarnation* of the tenant's id it
/// was made for ([`Tenant::incarnation`]): a tenant deleted and registered
/// again under the same id is a different tenant, and never runs the jobs of
/// the first.
///
/// Stored as JSON: `{"tenant": "acme", "incarnation": 1717…, "job": {…}}`.
/// Job functions take it as their first argument, and reach the job through
/// [`Deref`] or [`into_job`](TenantJob::into_job):
///
/// ```
/// use hidra_apalis::{TenantJob, TenantJobContext};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct SendReceipt {
///     order_id: i64,
/// }
///
/// async fn send_receipt(
///     job: TenantJob<SendReceipt>,
///     ctx: TenantJobContext,
/// ) -> Result<(), hidra::BoxError> {
///     assert_eq!(job.tenant(), ctx.tenant_id());
///     let order_id = job.order_id;
///     // ...
///     # let _ = order_id;
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantJob<T> {
    tenant: TenantId,
    /// `None` in envelopes written by hand or by an older version: such a job
    /// runs for whichever tenant holds the id when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    incarnation: Option<i64>,
    job: T,
}

impl<T> TenantJob<T> {
    /// `job` for `tenant` (this incarnation of it).
    pub fn new(tenant: &Tenant, job: T) -> Self {
        TenantJob {
            tenant: tenant.id.clone(),
            incarnation: Some(tenant.incarnation()),
            job,
        }
    }

    /// The tenant the job belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The incarnation of the tenant it was enqueued for, if recorded.
    pub fn incarnation(&self) -> Option<i64> {
        self.incarnation
    }

    /// The job.
    pub fn job(&self) -> &T {
        &self.job
    }

    /// The job, without its envelope.
    pub fn into_job(self) -> T {
        self.job
    }
}

impl<T> Deref for TenantJob<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.job
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_with_its_tenant() {
        let tenant = hidra_tenant("acme");
        let job = TenantJob::new(&tenant, vec![1, 2]);
        let text = serde_json::to_string(&job).unwrap();
        assert!(
            text.starts_with(r#"{"tenant":"acme","incarnation":"#),
            "{text}"
        );
        let back: TenantJob<Vec<i32>> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, job);
        assert_eq!(back.incarnation(), Some(tenant.incarnation()));
        assert_eq!(*back, [1, 2]);
    }

    #[test]
    fn refuses_an_invalid_tenant_id_and_reads_a_missing_incarnation() {
        let bad = r#"{"tenant":"../public","job":1}"#;
        assert!(serde_json::from_str::<TenantJob<i32>>(bad).is_err());
        let plain: TenantJob<i32> = serde_json::from_str(r#"{"tenant":"acme","job":1}"#).unwrap();
        assert_eq!(plain.incarnation(), None);
        assert_eq!(plain.tenant().as_str(), "acme");
    }

    fn hidra_tenant(id: &str) -> Tenant {
        hidra::testing::tenant_record(id)
    }
}
