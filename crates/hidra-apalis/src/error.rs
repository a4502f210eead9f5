//! The one error type of this crate.

use hidra::{TenantId, TenantStatus};

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong enqueuing or running a tenant's job.
///
/// The refusals ([`TenantUnavailable`](Error::TenantUnavailable),
/// [`TenantGone`](Error::TenantGone)) are also what a refused job's result
/// records in apalis's job table, so their messages say why it did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`TenantQueue::push`](crate::TenantQueue::push) ran with no current
    /// tenant.
    #[error(
        "no current tenant to enqueue the job for: call `push` inside \
         `hidra::context::scope` (a request under `TenantLayer` is), or name the tenant \
         with `push_for`"
    )]
    NoCurrentTenant,

    /// A job was enqueued in the transaction of a tenant that lives in its
    /// own database or on a registered server, where apalis's job table (in
    /// the control server's shared database) is not.
    #[error(
        "tenant `{0}` lives in its own database or on another server than the job table: \
         enqueue its job with `push_for` (after the transaction commits, or before it with a \
         job that waits for the data it needs)"
    )]
    OwnDatabase(TenantId),

    /// A job was enqueued in the transaction of a tenant the registry does
    /// not know (deleted meanwhile).
    #[error("tenant `{0}` is not registered: its job was not enqueued")]
    UnknownTenant(TenantId),

    /// The job's tenant exists but is not active (suspended, or still being
    /// provisioned): the job was not run.
    #[error("tenant `{tenant}` is {status}: its job was not run while the tenant is not active")]
    TenantUnavailable {
        /// The job's tenant.
        tenant: TenantId,
        /// Its status when the job was refused.
        status: TenantStatus,
    },

    /// The job's tenant no longer exists (deleted, being deleted, or deleted
    /// and registered again under the same id since the job was enqueued):
    /// the job was not run, and never will be as that tenant.
    #[error("tenant `{tenant}` {reason}: its job was not run and will not be")]
    TenantGone {
        /// The job's tenant.
        tenant: TenantId,
        /// What became of it.
        reason: &'static str,
    },

    /// A job function asked for a [`TenantJobContext`](crate::TenantJobContext)
    /// that no [`TenantJobLayer`](crate::TenantJobLayer) provided.
    #[error(
        "no tenant job context for this task: add `.layer(jobs.layer())` (a `TenantJobLayer`) \
         to the worker"
    )]
    MissingLayer,

    /// The job could not be encoded as JSON.
    #[error("cannot encode the job as JSON; check its `Serialize` implementation")]
    Encode(#[source] serde_json::Error),

    /// Hidra failed: reading the registry, or checking out the tenant's
    /// connection.
    #[error(transparent)]
    Hidra(#[from] hidra::Error),

    /// A statement on apalis's tables failed.
    #[error("{context} failed; check that `TenantJobs::install` ran on this database")]
    Database {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// apalis-postgres failed (installing its tables, pushing a job).
    #[error("{context} failed")]
    Storage {
        /// What was being done.
        context: &'static str,
        /// apalis-postgres's error.
        #[source]
        source: apalis_postgres::Error,
    },
}

impl Error {
    /// Whether this is a worker's refusal to run a job of a tenant that is
    /// not active or no longer exists.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::TenantUnavailable { .. } | Error::TenantGone { .. }
        )
    }

    /// A closure wrapping a sqlx error with `context`.
    pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Database { context, source }
    }

    /// A closure wrapping an apalis-postgres error with `context`.
    pub(crate) fn storage(context: &'static str) -> impl FnOnce(apalis_postgres::Error) -> Error {
        move |source| Error::Storage { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classified_and_say_what_happened() {
        let tenant = TenantId::new("acme").unwrap();
        let suspended = Error::TenantUnavailable {
            tenant: tenant.clone(),
            status: TenantStatus::Suspended,
        };
        assert!(suspended.is_refusal());
        assert!(
            suspended
                .to_string()
                .starts_with("tenant `acme` is suspended")
        );
        let gone = Error::TenantGone {
            tenant,
            reason: "was deleted",
        };
        assert!(gone.is_refusal());
        assert!(!Error::NoCurrentTenant.is_refusal());
        assert!(Error::NoCurrentTenant.to_string().contains("push_for"));
    }
}
