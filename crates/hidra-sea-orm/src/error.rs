//! How Hidra's errors reach SeaORM code.
//!
//! SeaORM methods return [`DbErr`], so a failed checkout becomes one too:
//! the tenant's pool cap ([`hidra::Error::TenantBusy`]) is
//! [`DbErr::ConnectionAcquire`] with [`ConnAcquireErr::Timeout`] (what SeaORM
//! itself returns when its pool has no connection to give), database errors
//! stay sqlx errors, and the rest carry Hidra's message.

use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};

/// The [`DbErr`] of a failed tenant checkout or transaction start.
pub(crate) fn checkout_err(e: hidra::Error) -> DbErr {
    match e {
        hidra::Error::TenantBusy { .. } => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        hidra::Error::Database { source, .. } => DbErr::Conn(RuntimeErr::SqlxError(source.into())),
        other => DbErr::Conn(RuntimeErr::Internal(other.to_string())),
    }
}

/// Whether `e` is a refusal at the tenant's share of the pool (see
/// [`hidra::TenantCap`]): answer `503`/`429` with `Retry-After`, not `500`.
pub fn is_tenant_busy(e: &DbErr) -> bool {
    matches!(e, DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))
}

/// The error of a statement on a transaction that has already ended.
pub(crate) fn finished() -> DbErr {
    DbErr::Conn(RuntimeErr::Internal(
        "the tenant transaction has already been committed or rolled back; begin a new one"
            .to_owned(),
    ))
}
