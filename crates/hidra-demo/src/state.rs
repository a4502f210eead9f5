//! What every handler can reach.

use axum::extract::FromRef;
use hidra::Hidra;
use hidra::auth::{Accounts, ApiKeys};
use hidra_apalis::{TenantJobs, TenantQueue};
use hidra_axum::{PermissionCache, TenantCache};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::jobs::ConfirmOrder;

/// The application state, cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Tenancy: scoped connections, provisioning.
    pub hidra: Hidra,
    /// Registration and login.
    pub accounts: Accounts,
    /// The tenants' API keys.
    pub api_keys: ApiKeys,
    /// Each tenant's role permissions, for the guards.
    pub permissions: PermissionCache,
    /// The tenant layer's registry cache (for `/metrics`).
    pub tenants: TenantCache,
    /// Background jobs on apalis-postgres (their pool reads job statuses).
    pub jobs: TenantJobs,
    /// The order confirmation queue: `POST /orders` enqueues into it.
    pub confirmations: TenantQueue<ConfirmOrder>,
    /// Renders `/metrics`; `None` when another recorder was installed first.
    pub metrics: Option<PrometheusHandle>,
}

impl FromRef<AppState> for PermissionCache {
    fn from_ref(state: &AppState) -> Self {
        state.permissions.clone()
    }
}
