//! What the fuzz targets share: one tokio runtime and one `Hidra` handle per
//! process, for the targets whose public entry points need one.
//!
//! The resolvers take a [`ResolveContext`](hidra_axum::ResolveContext) over a
//! [`TenantCache`], which needs a `Hidra`, which opens a connection when it is
//! built; [`ApiKeys`](hidra::auth::ApiKeys) needs one too. So these targets
//! connect once to the server [`hidra::testing::PgServer::get`] finds (or
//! starts), to its administrative database, and create nothing there: the
//! registry is [`FuzzStore`], in memory, which knows two custom domains.
//! Only custom-domain lookups and well-formed API keys reach the server.

use std::sync::OnceLock;

use hidra::sqlx::PgConnection;
use hidra::{Hidra, ListTenants, Page, Placement, Tenant, TenantId, TenantStatus, TenantStore};
use hidra_axum::TenantCache;
use tokio::runtime::Runtime;

/// The custom domains [`FuzzStore`] knows, and their tenants.
pub const CUSTOM_DOMAINS: [(&str, &str); 2] = [("shop.acme.test", "acme"), ("beta.test", "beta")];

/// A read-only registry in memory: no tenants by id, two custom domains.
#[derive(Debug, Default)]
pub struct FuzzStore;

fn read_only<T>() -> hidra::Result<T> {
    Err(hidra::Error::InvalidConfig(
        "the fuzz registry is read-only".into(),
    ))
}

impl TenantStore for FuzzStore {
    async fn get(&self, _conn: &mut PgConnection, _id: &TenantId) -> hidra::Result<Option<Tenant>> {
        Ok(None)
    }

    async fn list(
        &self,
        _conn: &mut PgConnection,
        _page: &ListTenants,
    ) -> hidra::Result<Page<Tenant>> {
        Ok(Page {
            items: Vec::new(),
            next: None,
        })
    }

    async fn insert(&self, _conn: &mut PgConnection, _tenant: &Tenant) -> hidra::Result<Tenant> {
        read_only()
    }

    async fn update_status(
        &self,
        _conn: &mut PgConnection,
        _id: &TenantId,
        _from: &[TenantStatus],
        _to: TenantStatus,
    ) -> hidra::Result<Option<Tenant>> {
        read_only()
    }

    async fn update_placement(
        &self,
        _conn: &mut PgConnection,
        _id: &TenantId,
        _placement: &Placement,
    ) -> hidra::Result<Option<Tenant>> {
        read_only()
    }

    async fn delete(&self, _conn: &mut PgConnection, _id: &TenantId) -> hidra::Result<bool> {
        read_only()
    }

    async fn find_by_domain(
        &self,
        _conn: &mut PgConnection,
        host: &str,
    ) -> hidra::Result<Option<Tenant>> {
        let found = CUSTOM_DOMAINS
            .iter()
            .find(|(domain, _)| *domain == host)
            .map(|(_, id)| hidra::testing::tenant_record(id));
        Ok(found)
    }
}

/// The process-wide runtime and handles.
#[derive(Debug)]
pub struct Env {
    /// Runs every future of the targets (current-thread: one core per target).
    pub rt: Runtime,
    /// Connected to the test server's administrative database, over [`FuzzStore`].
    pub hidra: Hidra,
    /// The cache the resolvers read custom domains through.
    pub cache: TenantCache,
}

/// The [`Env`] of this process, set up on first use.
///
/// Panics (ending the run at its first input, not as a finding) when no
/// PostgreSQL server can be found or started.
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let hidra = rt.block_on(async {
            let server = hidra::testing::PgServer::get()
                .await
                .expect("fuzz set-up: no PostgreSQL server (see hidra::testing::PgServer::get)");
            Hidra::builder()
                .store(FuzzStore)
                .max_connections(2)
                .connect(server.url())
                .await
                .expect("fuzz set-up: connecting to the test server")
        });
        let cache = TenantCache::new(hidra.clone());
        Env { rt, hidra, cache }
    })
}
