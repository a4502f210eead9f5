//! Extractors: [`CurrentTenant`], [`RequestConn`], [`RequestReadConn`], [`RequestTx`]
//! and [`TenantHandle`].
//!
//! They read what [`TenantLayer`](crate::TenantLayer) put in the request
//! extensions, so they work with any router state. Behind an excluded route or
//! without the layer they reject with
//! [`Error::MissingTenant`] (`500`, with a message saying so); `Option<CurrentTenant>`
//! is `None` there instead.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use hidra::{Hidra, TenantId};
use http::Extensions;
use http::request::Parts;

use crate::error::{Error, Result};

/// What the layer leaves in the request extensions: the tenant, the handle
/// and the slot of the request's transaction, in one allocation.
#[derive(Clone)]
pub(crate) struct Scope(Arc<ScopeInner>);

struct ScopeInner {
    tenant: CurrentTenant,
    hidra: Hidra,
    tx: Mutex<TxState>,
    /// The status of a refusal at the tenant's pool cap.
    busy: http::StatusCode,
}

/// The request's transaction between the extractor and the layer.
#[derive(Default)]
struct TxState {
    /// The transaction, while no [`RequestTx`] holds it.
    tx: Option<hidra::TenantTx>,
    /// Whether a [`RequestTx`] holds it now.
    lent: bool,
}

impl Scope {
    pub(crate) fn new(tenant: CurrentTenant, hidra: Hidra, busy: http::StatusCode) -> Self {
        Scope(Arc::new(ScopeInner {
            tenant,
            hidra,
            tx: Mutex::new(TxState::default()),
            busy,
        }))
    }

    /// The rejection for a failed checkout `while` doing something.
    fn checkout_error(&self, context: &'static str) -> impl FnOnce(hidra::Error) -> Error {
        let busy = self.0.busy;
        move |source| match source {
            hidra::Error::TenantBusy { .. } => Error::TenantBusy {
                status: busy,
                source,
            },
            source => Error::Database { context, source },
        }
    }

    fn tx_state(&self) -> MutexGuard<'_, TxState> {
        // No code panics while holding the lock; a poisoned one is still sound.
        self.0.tx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request's tenant.
    pub(crate) fn tenant(&self) -> &CurrentTenant {
        &self.0.tenant
    }

    /// The Hidra handle.
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) fn hidra(&self) -> &Hidra {
        &self.0.hidra
    }

    /// The transaction, if the handler began one; fails if a [`RequestTx`]
    /// still holds it.
    pub(crate) fn take_tx(&self) -> Result<Option<hidra::TenantTx>> {
        let mut state = self.tx_state();
        if state.lent {
            return Err(Error::TxOutlivedRequest);
        }
        Ok(state.tx.take())
    }
}

pub(crate) fn scope(extensions: &Extensions) -> Result<&Scope> {
    extensions.get::<Scope>().ok_or(Error::MissingTenant)
}

/// The tenant of the request, as resolved by [`TenantLayer`](crate::TenantLayer):
/// registered and active.
///
/// Dereferences to [`hidra::Tenant`]. Use `Option<CurrentTenant>` on routes that may
/// run without one (excluded routes).
///
/// ```
/// use hidra_axum::CurrentTenant;
///
/// async fn whoami(tenant: CurrentTenant) -> String {
///     format!("{} ({})", tenant.name, tenant.id)
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(whoami);
/// ```
#[derive(Clone)]
pub struct CurrentTenant(pub Arc<hidra::Tenant>);

impl CurrentTenant {
    /// The tenant record.
    pub fn into_inner(self) -> Arc<hidra::Tenant> {
        self.0
    }

    /// The tenant [`TenantLayer`](crate::TenantLayer) resolved for a request,
    /// from its extensions (for plain tower services).
    pub fn from_extensions(extensions: &Extensions) -> Option<CurrentTenant> {
        extensions.get::<Scope>().map(|s| s.0.tenant.clone())
    }
}

impl fmt::Debug for CurrentTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CurrentTenant").field(&self.0.id).finish()
    }
}

impl Deref for CurrentTenant {
    type Target = hidra::Tenant;

    fn deref(&self) -> &hidra::Tenant {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentTenant {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        CurrentTenant::from_extensions(&parts.extensions).ok_or(Error::MissingTenant)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for CurrentTenant {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(CurrentTenant::from_extensions(&parts.extensions))
    }
}

/// The request's tenant and the [`Hidra`] handle serving it, for code that
/// checks connections out on its own: ORM integrations (`hidra-sea-orm`), job
/// queues, fan-out helpers. Nothing is acquired by extracting it.
///
/// ```
/// use hidra_axum::TenantHandle;
///
/// async fn busy(handle: TenantHandle) -> String {
///     let load = handle.hidra().load().get(&handle.tenant().id);
///     format!("{}: {:?}", handle.tenant().id, load.map(|l| l.connections))
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(busy);
/// ```
#[derive(Clone)]
pub struct TenantHandle {
    tenant: CurrentTenant,
    hidra: Hidra,
}

impl TenantHandle {
    /// The request's tenant: registered and active when it was resolved.
    pub fn tenant(&self) -> &CurrentTenant {
        &self.tenant
    }

    /// The handle the request's tenant is served by.
    pub fn hidra(&self) -> &Hidra {
        &self.hidra
    }

    /// What [`TenantLayer`](crate::TenantLayer) resolved for a request, from
    /// its extensions (for plain tower services).
    pub fn from_extensions(extensions: &Extensions) -> Option<TenantHandle> {
        extensions.get::<Scope>().map(|s| TenantHandle {
            tenant: s.0.tenant.clone(),
            hidra: s.0.hidra.clone(),
        })
    }
}

impl fmt::Debug for TenantHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantHandle")
            .field(&self.tenant.id)
            .finish()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TenantHandle {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        TenantHandle::from_extensions(&parts.extensions).ok_or(Error::MissingTenant)
    }
}

/// A pooled connection bound to the request's tenant
/// ([`Hidra::acquire`](hidra::Hidra::acquire)).
///
/// Dereferences to [`hidra::TenantConn`], whose `&mut` is a
/// [`sqlx::Executor`](hidra::sqlx::Executor) running per-tenant statements:
/// `query.fetch_one(&mut conn)` (or `&mut *conn`) reaches the tenant's tables
/// unqualified. Not safe behind a transaction-pooling proxy (PgBouncer); use
/// [`RequestTx`] there. Fails with `503` if no connection can be had.
///
/// ```
/// use hidra_axum::RequestConn;
///
/// async fn count(mut conn: RequestConn) -> Result<String, hidra_axum::Error> {
///     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
///         .fetch_one(&mut conn)
///         .await
///         .unwrap_or_default();
///     Ok(n.to_string())
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(count);
/// ```
pub struct RequestConn(hidra::TenantConn);

impl RequestConn {
    /// The tenant this connection is bound to.
    pub fn tenant(&self) -> &TenantId {
        self.0.tenant()
    }

    /// The core's connection.
    pub fn into_inner(self) -> hidra::TenantConn {
        self.0
    }
}

impl fmt::Debug for RequestConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestConn").field(self.0.tenant()).finish()
    }
}

impl Deref for RequestConn {
    type Target = hidra::TenantConn;

    fn deref(&self) -> &hidra::TenantConn {
        &self.0
    }
}

impl DerefMut for RequestConn {
    fn deref_mut(&mut self) -> &mut hidra::TenantConn {
        &mut self.0
    }
}

// `&mut conn` runs per-tenant statements through the core type, like `&mut *conn`.
hidra::__impl_scoped_executor!(RequestConn, this => &mut **this);
hidra::__impl_scoped_executor!(RequestTx, this => &mut **this);

impl<S: Send + Sync> FromRequestParts<S> for RequestConn {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        let scope = scope(&parts.extensions)?;
        let conn = scope
            .0
            .hidra
            .acquire(&scope.0.tenant)
            .await
            .map_err(scope.checkout_error("acquiring a tenant connection"))?;
        Ok(RequestConn(conn))
    }
}

/// A connection bound to the request's tenant for reading
/// ([`Hidra::acquire_read`](hidra::Hidra::acquire_read)): on the read
/// replica when one is configured and answers, else on the primary. Writes
/// through it fail on a replica; use [`RequestConn`] or [`RequestTx`] for them.
///
/// ```
/// use hidra_axum::RequestReadConn;
///
/// async fn report(mut conn: RequestReadConn) -> String {
///     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
///         .fetch_one(&mut conn)
///         .await
///         .unwrap_or_default();
///     n.to_string()
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(report);
/// ```
pub struct RequestReadConn(hidra::TenantConn);

impl RequestReadConn {
    /// The core's connection.
    pub fn into_inner(self) -> hidra::TenantConn {
        self.0
    }
}

impl fmt::Debug for RequestReadConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestReadConn")
            .field(self.0.tenant())
            .finish()
    }
}

impl Deref for RequestReadConn {
    type Target = hidra::TenantConn;

    fn deref(&self) -> &hidra::TenantConn {
        &self.0
    }
}

impl DerefMut for RequestReadConn {
    fn deref_mut(&mut self) -> &mut hidra::TenantConn {
        &mut self.0
    }
}

hidra::__impl_scoped_executor!(RequestReadConn, this => &mut **this);

impl<S: Send + Sync> FromRequestParts<S> for RequestReadConn {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        let scope = scope(&parts.extensions)?;
        let conn = scope
            .0
            .hidra
            .acquire_read(&scope.0.tenant)
            .await
            .map_err(scope.checkout_error("acquiring a tenant read connection"))?;
        Ok(RequestReadConn(conn))
    }
}

/// A transaction bound to the request's tenant
/// ([`Hidra::begin`](hidra::Hidra::begin)), settled by the layer: committed
/// when the handler's response is a success (`2xx` or `3xx`), rolled back on
/// any other response or if the handler panics. A failed commit turns the
/// response into a `500`.
///
/// Dereferences to [`hidra::TenantTx`], whose `&mut` is a
/// [`sqlx::Executor`](hidra::sqlx::Executor): `query.execute(&mut *tx)`.
/// Safe behind a transaction-pooling proxy.
/// [`commit`](RequestTx::commit) and [`rollback`](RequestTx::rollback) settle it
/// early. Extract it at most once per request (a second extraction while the
/// first is alive fails with `500`), and do not move it into spawned tasks.
///
/// ```
/// use axum::http::StatusCode;
/// use hidra_axum::RequestTx;
///
/// async fn create(mut tx: RequestTx) -> Result<StatusCode, StatusCode> {
///     sqlx::query("INSERT INTO customers (name) VALUES ('Wile E.')")
///         .execute(&mut tx)
///         .await
///         .map_err(|_| StatusCode::UNPROCESSABLE_ENTITY)?; // rolled back
///     Ok(StatusCode::CREATED) // committed
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::post(create);
/// ```
pub struct RequestTx {
    /// Always `Some` until consumed or dropped.
    tx: Option<hidra::TenantTx>,
    scope: Scope,
}

impl RequestTx {
    fn tx(&self) -> &hidra::TenantTx {
        self.tx
            .as_ref()
            .expect("a RequestTx holds its transaction until it is consumed")
    }

    fn tx_mut(&mut self) -> &mut hidra::TenantTx {
        self.tx
            .as_mut()
            .expect("a RequestTx holds its transaction until it is consumed")
    }

    /// Takes the transaction for good: the layer will find nothing to settle.
    fn consume(mut self) -> Option<hidra::TenantTx> {
        let tx = self.tx.take();
        self.scope.tx_state().lent = false;
        tx
    }

    /// The tenant this transaction is bound to.
    pub fn tenant(&self) -> &TenantId {
        self.tx().tenant()
    }

    /// Commits now instead of when the response is ready.
    pub async fn commit(self) -> Result<()> {
        match self.consume() {
            Some(tx) => tx.commit().await.map_err(Error::Commit),
            None => Ok(()),
        }
    }

    /// Rolls back now, whatever the response.
    pub async fn rollback(self) -> Result<()> {
        match self.consume() {
            Some(tx) => tx
                .rollback()
                .await
                .map_err(Error::db("rolling back the request's transaction")),
            None => Ok(()),
        }
    }
}

impl Drop for RequestTx {
    /// Hands the transaction back to the layer, which settles it.
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let mut state = self.scope.tx_state();
            state.tx = Some(tx);
            state.lent = false;
        }
    }
}

impl fmt::Debug for RequestTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestTx")
            .field(&self.tx.as_ref().map(|tx| tx.tenant()))
            .finish()
    }
}

impl Deref for RequestTx {
    type Target = hidra::TenantTx;

    fn deref(&self) -> &hidra::TenantTx {
        self.tx()
    }
}

impl DerefMut for RequestTx {
    fn deref_mut(&mut self) -> &mut hidra::TenantTx {
        self.tx_mut()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestTx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        let scope = scope(&parts.extensions)?.clone();
        let existing = {
            let mut state = scope.tx_state();
            if state.lent {
                return Err(Error::TxInUse);
            }
            state.lent = true;
            state.tx.take()
        };
        let tx = match existing {
            Some(tx) => tx,
            None => match scope.0.hidra.begin(&scope.0.tenant).await {
                Ok(tx) => tx,
                Err(source) => {
                    scope.tx_state().lent = false;
                    return Err(scope.checkout_error("beginning the request's transaction")(
                        source,
                    ));
                }
            },
        };
        Ok(RequestTx {
            tx: Some(tx),
            scope,
        })
    }
}
