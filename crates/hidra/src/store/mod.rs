//! The tenant registry: the [`TenantStore`] trait and its PostgreSQL
//! implementation over a table the application owns ([`PgTenantStore`]).
//!
//! Store methods take the connection to run on, so that the lifecycle can make
//! a registry change and a schema change in one transaction.

mod postgres;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use crate::error::Result;
use crate::tenant::{Placement, Tenant, TenantId, TenantStatus};

pub use postgres::{CHANGES_CHANNEL, PgTenantStore, RegistryColumns, RegistryTable};

/// Largest page [`TenantStore::list`] returns.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The registry as the handle holds it: the store, the same one when it is
/// Hidra's own (its statements can join a provisioning's batch), and whether
/// Hidra's internal schema is known to exist.
pub(crate) struct Registry {
    pub(crate) store: AnyTenantStore,
    pub(crate) own: Option<std::sync::Arc<PgTenantStore>>,
    /// Set once hidra's internal schema is known to exist.
    pub(crate) internal_ready: tokio::sync::OnceCell<()>,
    /// Set once the registry's row-level binding function is known to exist.
    pub(crate) row_level_guard: tokio::sync::OnceCell<()>,
}

/// One page request for [`TenantStore::list`]: keyset pagination ordered by id.
#[derive(Clone, Debug)]
pub struct ListTenants {
    /// Return tenants whose id sorts after this one (the previous page's `next`).
    pub after: Option<TenantId>,
    /// Page size, at most [`MAX_PAGE_SIZE`].
    pub limit: u32,
    /// Only tenants in this status.
    pub status: Option<TenantStatus>,
    /// Only tenants whose id or name contains this text, ignoring case.
    pub search: Option<String>,
}

impl Default for ListTenants {
    fn default() -> Self {
        ListTenants {
            after: None,
            limit: 100,
            status: None,
            search: None,
        }
    }
}

impl ListTenants {
    /// The first page of `limit` tenants.
    pub fn first(limit: u32) -> Self {
        ListTenants {
            limit,
            ..Default::default()
        }
    }

    /// Only tenants in `status`.
    pub fn status(mut self, status: TenantStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only tenants whose id or name contains `text`, ignoring case (`%` and
    /// `_` are matched literally).
    pub fn search(mut self, text: impl Into<String>) -> Self {
        self.search = Some(text.into());
        self
    }

    /// Tenants after `id` (the previous page's [`Page::next`]).
    pub fn after(mut self, id: TenantId) -> Self {
        self.after = Some(id);
        self
    }
}

/// A change to a tenant's display name and metadata, for
/// [`Hidra::update_tenant`](crate::Hidra::update_tenant): fields left `None`
/// stay as they are.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct TenantUpdate {
    /// The new display name.
    pub name: Option<String>,
    /// The new metadata, replacing the old (a JSON object).
    pub metadata: Option<serde_json::Value>,
}

impl TenantUpdate {
    /// A change that renames the tenant.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A change that replaces the tenant's metadata.
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.metadata.is_none()
    }
}

/// Every registered tenant, read on `conn` a page of [`MAX_PAGE_SIZE`] at a
/// time.
pub(crate) async fn list_all(
    store: &AnyTenantStore,
    conn: &mut PgConnection,
) -> Result<Vec<Tenant>> {
    list_all_in(store, conn, None).await
}

/// [`list_all`], only the tenants in `status` when given.
pub(crate) async fn list_all_in(
    store: &AnyTenantStore,
    conn: &mut PgConnection,
    status: Option<TenantStatus>,
) -> Result<Vec<Tenant>> {
    let first = || {
        let page = ListTenants::first(MAX_PAGE_SIZE);
        match status {
            Some(status) => page.status(status),
            None => page,
        }
    };
    let mut all = Vec::new();
    let mut page = first();
    loop {
        let p = store.list(conn, &page).await?;
        all.extend(p.items);
        match p.next {
            Some(next) => page = first().after(next),
            None => return Ok(all),
        }
    }
}

/// One page of tenants.
#[derive(Clone, Debug)]
pub struct Page<T> {
    /// The tenants of this page, in id order.
    pub items: Vec<T>,
    /// Pass as [`ListTenants::after`] to get the next page; `None` on the last page.
    pub next: Option<TenantId>,
}

/// Where tenant records live.
///
/// The default, [`PgTenantStore`], keeps them in a PostgreSQL table the
/// application owns. Implement this trait to keep them elsewhere or in another
/// shape, with plain `async fn`s; every method runs on the connection it is
/// given so that it can take part in the caller's transaction.
///
/// ```
/// use hidra::{ListTenants, Page, PgTenantStore, Placement, Result, Tenant, TenantId, TenantStatus, TenantStore};
/// use sqlx::PgConnection;
///
/// /// The registry table, with every read logged.
/// #[derive(Debug, Default)]
/// struct LoggedStore(PgTenantStore);
///
/// impl TenantStore for LoggedStore {
///     fn install_ddl(&self) -> Option<String> {
///         self.0.install_ddl()
///     }
///     async fn get(&self, conn: &mut PgConnection, id: &TenantId) -> Result<Option<Tenant>> {
///         println!("registry read: {id}");
///         self.0.get(conn, id).await
///     }
///     async fn list(&self, conn: &mut PgConnection, page: &ListTenants) -> Result<Page<Tenant>> {
///         self.0.list(conn, page).await
///     }
///     async fn insert(&self, conn: &mut PgConnection, tenant: &Tenant) -> Result<Tenant> {
///         self.0.insert(conn, tenant).await
///     }
///     async fn update_status(
///         &self,
///         conn: &mut PgConnection,
///         id: &TenantId,
///         from: &[TenantStatus],
///         to: TenantStatus,
///     ) -> Result<Option<Tenant>> {
///         self.0.update_status(conn, id, from, to).await
///     }
///     async fn update_placement(
///         &self,
///         conn: &mut PgConnection,
///         id: &TenantId,
///         placement: &Placement,
///     ) -> Result<Option<Tenant>> {
///         self.0.update_placement(conn, id, placement).await
///     }
///     async fn delete(&self, conn: &mut PgConnection, id: &TenantId) -> Result<bool> {
///         self.0.delete(conn, id).await
///     }
/// }
///
/// let builder = hidra::Hidra::builder().store(LoggedStore::default());
/// # let _ = builder;
/// ```
pub trait TenantStore: Send + Sync + std::fmt::Debug + 'static {
    /// The idempotent DDL that creates the store's tables, run by
    /// [`Hidra::install`](crate::Hidra::install); `None` (the default) when
    /// the store's tables are created some other way.
    fn install_ddl(&self) -> Option<String> {
        None
    }

    /// The tenant with this id, if registered.
    fn get(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
    ) -> impl Future<Output = Result<Option<Tenant>>> + Send;

    /// A page of tenants ordered by id.
    fn list(
        &self,
        conn: &mut PgConnection,
        page: &ListTenants,
    ) -> impl Future<Output = Result<Page<Tenant>>> + Send;

    /// Registers a new tenant. Fails with [`Error::AlreadyExists`](crate::Error::AlreadyExists)
    /// or [`Error::SchemaTaken`](crate::Error::SchemaTaken) on a conflict.
    fn insert(
        &self,
        conn: &mut PgConnection,
        tenant: &Tenant,
    ) -> impl Future<Output = Result<Tenant>> + Send;

    /// Moves a tenant to `to` if its status is one of `from`; returns the
    /// updated record, or `None` when no tenant with this id is in one of those
    /// statuses.
    fn update_status(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        from: &[TenantStatus],
        to: TenantStatus,
    ) -> impl Future<Output = Result<Option<Tenant>>> + Send;

    /// Records a new placement (strategy, schema, database, server) for a
    /// tenant, when it moves between strategies; returns the updated record.
    fn update_placement(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        placement: &Placement,
    ) -> impl Future<Output = Result<Option<Tenant>>> + Send;

    /// Changes a tenant's display name and/or metadata (`None`: unchanged);
    /// returns the updated record, or `None` when no tenant has this id.
    ///
    /// The default implementation refuses with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig): a store that
    /// keeps records elsewhere implements it to support
    /// [`Hidra::update_tenant`](crate::Hidra::update_tenant).
    fn update_details(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        update: &TenantUpdate,
    ) -> impl Future<Output = Result<Option<Tenant>>> + Send {
        let _ = (conn, id, update);
        std::future::ready(Err(crate::Error::InvalidConfig(
            "this tenant store cannot change a tenant's name or metadata: implement \
             TenantStore::update_details"
                .into(),
        )))
    }

    /// Removes a tenant's record; returns whether one was removed.
    fn delete(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The tenant serving the custom domain `host` (lowercase, no port), for
    /// the web layer's custom-domain resolution.
    ///
    /// [`PgTenantStore`] looks for `host` in the JSON array `domains` of each
    /// tenant's metadata (`{"domains": ["shop.acme.com"]}`); a domain listed by
    /// two tenants is an [`Error::InvalidConfig`](crate::Error::InvalidConfig).
    /// With many tenants, index it:
    /// `CREATE INDEX ON tenants USING gin ((metadata->'domains'))`.
    /// The default implementation knows no custom domains.
    fn find_by_domain(
        &self,
        conn: &mut PgConnection,
        host: &str,
    ) -> impl Future<Output = Result<Option<Tenant>>> + Send {
        let _ = (conn, host);
        std::future::ready(Ok(None))
    }
}

/// The object-safe form of [`TenantStore`], boxing each call's future.
trait DynTenantStore: Send + Sync + std::fmt::Debug + 'static {
    fn install_ddl(&self) -> Option<String>;
    fn get<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
    ) -> BoxFuture<'a, Result<Option<Tenant>>>;
    fn list<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        page: &'a ListTenants,
    ) -> BoxFuture<'a, Result<Page<Tenant>>>;
    fn insert<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: &'a Tenant,
    ) -> BoxFuture<'a, Result<Tenant>>;
    fn update_status<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
        from: &'a [TenantStatus],
        to: TenantStatus,
    ) -> BoxFuture<'a, Result<Option<Tenant>>>;
    fn update_placement<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
        placement: &'a Placement,
    ) -> BoxFuture<'a, Result<Option<Tenant>>>;
    fn update_details<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
        update: &'a TenantUpdate,
    ) -> BoxFuture<'a, Result<Option<Tenant>>>;
    fn delete<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
    ) -> BoxFuture<'a, Result<bool>>;
    fn find_by_domain<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Option<Tenant>>>;
}

impl<S: TenantStore> DynTenantStore for S {
    fn install_ddl(&self) -> Option<String> {
        TenantStore::install_ddl(self)
    }
    fn get<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
    ) -> BoxFuture<'a, Result<Option<Tenant>>> {
        Box::pin(TenantStore::get(self, conn, id))
    }
    fn list<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        page: &'a ListTenants,
    ) -> BoxFuture<'a, Result<Page<Tenant>>> {
        Box::pin(TenantStore::list(self, conn, page))
    }
    fn insert<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: &'a Tenant,
    ) -> BoxFuture<'a, Result<Tenant>> {
        Box::pin(TenantStore::insert(self, conn, tenant))
    }
    fn update_status<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
        from: &'a [TenantStatus],
        to: TenantStatus,
    ) -> BoxFuture<'a, Result<Option<Tenant>>> {
        Box::pin(TenantStore::update_status(self, conn, id, from, to))
    }
    fn update_placement<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
        placement: &'a Placement,
    ) -> BoxFuture<'a, Result<Option<Tenant>>> {
        Box::pin(TenantStore::update_placement(self, conn, id, placement))
    }
    fn update_details<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
        update: &'a TenantUpdate,
    ) -> BoxFuture<'a, Result<Option<Tenant>>> {
        Box::pin(TenantStore::update_details(self, conn, id, update))
    }
    fn delete<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        id: &'a TenantId,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(TenantStore::delete(self, conn, id))
    }
    fn find_by_domain<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Option<Tenant>>> {
        Box::pin(TenantStore::find_by_domain(self, conn, host))
    }
}

/// The [`TenantStore`] a [`Hidra`](crate::Hidra) uses, whichever it is
/// ([`Hidra::store`](crate::Hidra::store)); cheap to clone. Its methods are
/// the trait's.
#[derive(Clone, Debug)]
pub struct AnyTenantStore(Arc<dyn DynTenantStore>);

impl AnyTenantStore {
    /// `store` behind dynamic dispatch.
    pub fn new(store: impl TenantStore) -> Self {
        AnyTenantStore(Arc::new(store))
    }

    pub(crate) fn from_arc<S: TenantStore>(store: Arc<S>) -> Self {
        AnyTenantStore(store)
    }

    /// See [`TenantStore::install_ddl`].
    pub fn install_ddl(&self) -> Option<String> {
        self.0.install_ddl()
    }

    /// See [`TenantStore::get`].
    pub async fn get(&self, conn: &mut PgConnection, id: &TenantId) -> Result<Option<Tenant>> {
        self.0.get(conn, id).await
    }

    /// See [`TenantStore::list`].
    pub async fn list(&self, conn: &mut PgConnection, page: &ListTenants) -> Result<Page<Tenant>> {
        self.0.list(conn, page).await
    }

    /// See [`TenantStore::insert`].
    pub async fn insert(&self, conn: &mut PgConnection, tenant: &Tenant) -> Result<Tenant> {
        self.0.insert(conn, tenant).await
    }

    /// See [`TenantStore::update_status`].
    pub async fn update_status(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        from: &[TenantStatus],
        to: TenantStatus,
    ) -> Result<Option<Tenant>> {
        self.0.update_status(conn, id, from, to).await
    }

    /// See [`TenantStore::update_placement`].
    pub async fn update_placement(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        placement: &Placement,
    ) -> Result<Option<Tenant>> {
        self.0.update_placement(conn, id, placement).await
    }

    /// See [`TenantStore::update_details`].
    pub async fn update_details(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        update: &TenantUpdate,
    ) -> Result<Option<Tenant>> {
        self.0.update_details(conn, id, update).await
    }

    /// See [`TenantStore::delete`].
    pub async fn delete(&self, conn: &mut PgConnection, id: &TenantId) -> Result<bool> {
        self.0.delete(conn, id).await
    }

    /// See [`TenantStore::find_by_domain`].
    pub async fn find_by_domain(
        &self,
        conn: &mut PgConnection,
        host: &str,
    ) -> Result<Option<Tenant>> {
        self.0.find_by_domain(conn, host).await
    }
}
