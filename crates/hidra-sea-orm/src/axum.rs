//! The axum extractor (feature `axum`): a [`TenantDatabase`] for the
//! request's tenant, as resolved by `hidra-axum`'s `TenantLayer`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use hidra_axum::TenantHandle;

use crate::TenantDatabase;

impl<S: Send + Sync> FromRequestParts<S> for TenantDatabase {
    type Rejection = hidra_axum::Error;

    /// Acquires nothing: each statement checks a connection out. Without
    /// `TenantLayer` in front, rejects with `500` (`MissingTenant`).
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let handle = TenantHandle::from_extensions(&parts.extensions)
            .ok_or(hidra_axum::Error::MissingTenant)?;
        Ok(TenantDatabase::new(
            handle.hidra().clone(),
            handle.tenant().clone().into_inner(),
        ))
    }
}
