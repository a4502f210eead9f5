//! [`TenantLayer`] and [`TenantService`]: resolve, validate, look up and check
//! the tenant of every request before the inner service runs.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::OriginalUri;
use axum::response::{IntoResponse, Response};
use hidra::{Hidra, TenantId};
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use tower::{Layer, Service};

use crate::cache::TenantCache;
use crate::error::{BoxError, Error};
use crate::extract::{CurrentTenant, Scope};
use crate::future::ResponseFuture;
use crate::rate::{RateLimits, TenantRate};
use crate::resolve::{DynResolver, HeaderResolver, Resolution, ResolveContext, TenantResolver};

/// The header whose value is recorded as `request_id` in the request span and
/// in refusal logs, when present.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Makes a service multi-tenant: every request is resolved to an active tenant
/// or refused before the inner service sees it.
///
/// For each request that is not [excluded](TenantLayer::with_excluded):
///
/// 1. **Resolve.** Every resolver of the chain runs, in order (with none
///    configured, [`HeaderResolver`] reads `X-Tenant-ID`). The first candidate
///    decides the tenant — unless a *verified* source (a token, an API key)
///    gave one: then every candidate must equal it. A request whose sources
///    disagree with a verified one is refused with **403** (`tenant_conflict`):
///    a client-controlled header must never override a credential, and the
///    request is ambiguous anyway. (Two unverified sources that disagree do not
///    conflict: the first in the chain wins.)
/// 2. **Validate** the candidate with [`TenantId::new`]; nothing reaches the
///    registry otherwise.
/// 3. **Look up** the tenant through the [`TenantCache`] (a hit costs no
///    database round trip).
/// 4. **Check** that it is `active`.
/// 5. **Run** the inner service with the tenant in the request extensions
///    (for the extractors, or [`CurrentTenant::from_extensions`] in plain tower code),
///    inside a `tracing` span `tenant` with the field `tenant = <id>` (and
///    `request_id` from `X-Request-ID` when present), and inside
///    [`hidra::context::scope`]. A [`RequestTx`](crate::RequestTx) extracted by
///    the handler is committed when the response is a success (`2xx`, `3xx`)
///    and rolled back otherwise, or when the handler panics.
///
/// A missing id, a malformed id, an unknown tenant and a tenant that is not
/// active all get **the same response**, byte for byte (default `404` with
/// `{"error":"tenant_not_found"}`, see [`with_not_found`](Self::with_not_found)),
/// so that no client can learn which tenants exist. The real reason is logged
/// at `debug` level with the request id.
///
/// One exception, which names no tenant: when the chain has a resolver that
/// [reads credentials](TenantResolver::reads_credentials) (a token, an API
/// key) and the request carries nothing any resolver finds, it presented no
/// credential and gets `401 {"error":"unauthorized"}` with
/// `WWW-Authenticate: Bearer`, the answer to a bad token too.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use hidra_axum::{RequestConn, TenantLayer};
///
/// async fn count(mut conn: RequestConn) -> String {
///     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
///         .fetch_one(&mut conn)
///         .await
///         .unwrap_or(0);
///     n.to_string()
/// }
///
/// # async fn run(hidra: hidra::Hidra) -> Result<(), Box<dyn std::error::Error>> {
/// let tenants = TenantLayer::new(hidra.clone());
/// let app = Router::new()
///     .route("/customers/count", get(count))
///     .layer(tenants)
///     // Public routes beside the layered ones, outside the layer.
///     .merge(hidra_axum::health::router(hidra.clone()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
///
/// With [`PathPrefixResolver`](crate::PathPrefixResolver), which rewrites the
/// path, wrap the whole router instead (`Router::layer` runs after routing):
///
/// ```no_run
/// use axum::{Router, ServiceExt, extract::Request};
/// use hidra_axum::{PathPrefixResolver, TenantLayer};
/// use tower::Layer as _;
///
/// # async fn run(hidra: hidra::Hidra, router: Router) -> Result<(), Box<dyn std::error::Error>> {
/// let app = TenantLayer::new(hidra)
///     .with_resolver(PathPrefixResolver::new())
///     .layer(router);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, ServiceExt::<Request>::into_make_service(app)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
pub(crate) struct Shared {
    /// The registry cache; its `Hidra` handle is also the one connections
    /// come from, so records and connections always share one database.
    cache: TenantCache,
    resolvers: Vec<Arc<dyn DynResolver>>,
    /// Used while `resolvers` is empty.
    fallback: Arc<dyn DynResolver>,
    excluded: Vec<String>,
    not_found: (StatusCode, Bytes),
    /// Refuse, with 401, requests without a verified source.
    credentials_required: bool,
    /// Per-tenant request limits, when configured.
    rate: Option<RateLimits>,
    /// The status of a request whose tenant is at its pool cap.
    busy: StatusCode,
}

impl fmt::Debug for TenantLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        f.debug_struct("TenantLayer")
            .field("resolvers", &s.resolvers)
            .field("excluded", &s.excluded)
            .field("not_found_status", &s.not_found.0)
            .field("cache", &s.cache)
            .finish_non_exhaustive()
    }
}

impl TenantLayer {
    /// A layer over `hidra`'s tenants, with a default [`TenantCache`] and no
    /// resolver yet (until one is added, `X-Tenant-ID` is read).
    pub fn new(hidra: Hidra) -> Self {
        let cache = TenantCache::new(hidra);
        TenantLayer {
            shared: Arc::new(Shared {
                cache,
                resolvers: Vec::new(),
                fallback: Arc::new(HeaderResolver::default()),
                excluded: Vec::new(),
                not_found: (
                    StatusCode::NOT_FOUND,
                    Bytes::from_static(br#"{"error":"tenant_not_found"}"#),
                ),
                credentials_required: false,
                rate: None,
                busy: StatusCode::SERVICE_UNAVAILABLE,
            }),
        }
    }

    /// Appends a resolver to the chain.
    pub fn with_resolver(mut self, resolver: impl TenantResolver) -> Self {
        Arc::make_mut(&mut self.shared)
            .resolvers
            .push(Arc::new(resolver));
        self
    }

    /// Every request must carry a credential that a verified resolver
    /// accepts (the `JwtResolver` and `ApiKeyResolver` of the feature `auth`,
    /// or your own returning [`Resolution::verified`]): one without gets `401
    /// {"error":"unauthorized"}` with `WWW-Authenticate: Bearer`, *before*
    /// any registry lookup, whatever tenant its header, host or path names.
    /// Without this, a logged-out request naming an existing tenant passes the
    /// layer (and a guard answers 401) while one naming an unknown tenant gets
    /// the layer's 404, so anyone could probe which tenants exist. Use it on
    /// routers whose every route needs a credential, and merge public routes
    /// (sign-up, login, health) outside the layer.
    pub fn with_credentials_required(mut self) -> Self {
        Arc::make_mut(&mut self.shared).credentials_required = true;
        self
    }

    /// Limits each tenant's requests to `rate` (a token bucket per tenant,
    /// in this process): a request past it gets `429 Too Many Requests` with
    /// `Retry-After` and `{"error":"rate_limited"}` before the inner service
    /// runs, while the other tenants are served as usual. A tenant's
    /// registry metadata may set its own rate,
    /// `{"requests_per_second": 50, "request_burst": 100}`; a changed record
    /// takes effect when the cache reloads it (on the registry's change
    /// notification).
    ///
    /// ```
    /// # fn layer(hidra: hidra::Hidra) -> hidra_axum::TenantLayer {
    /// use hidra_axum::{TenantLayer, TenantRate};
    ///
    /// TenantLayer::new(hidra).with_rate_limit(TenantRate::per_second(100).with_burst(200))
    /// # }
    /// ```
    pub fn with_rate_limit(mut self, rate: TenantRate) -> Self {
        Arc::make_mut(&mut self.shared).rate = Some(RateLimits::new(rate));
        self
    }

    /// The status a request gets when its tenant holds its whole share of
    /// the connection pool and none of its connections came free in time
    /// ([`hidra::Error::TenantBusy`], see
    /// [`HidraBuilder::tenant_cap`](hidra::HidraBuilder::tenant_cap)):
    /// `503 Service Unavailable` by default, or `429 Too Many Requests` to
    /// tell clients the limit is theirs. Either comes with `Retry-After` and
    /// `{"error":"tenant_busy"}`.
    ///
    /// # Panics
    ///
    /// If `status` is neither `429` nor `503`.
    pub fn with_busy_status(mut self, status: StatusCode) -> Self {
        assert!(
            status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE,
            "a busy tenant is answered with 429 or 503, not {status}"
        );
        Arc::make_mut(&mut self.shared).busy = status;
        self
    }

    /// Serves paths under `prefix` without a tenant: `"/health"` covers
    /// `/health` and `/health/...` (not `/healthz`). Call once per prefix.
    pub fn with_excluded(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let prefix = prefix.trim_end_matches('/');
        Arc::make_mut(&mut self.shared)
            .excluded
            .push(if prefix.is_empty() {
                "/".into()
            } else {
                prefix.into()
            });
        self
    }

    /// The one response for a missing, malformed, unknown or inactive tenant
    /// (default `404` `{"error":"tenant_not_found"}`), sent as JSON.
    pub fn with_not_found(mut self, status: StatusCode, body: &serde_json::Value) -> Self {
        Arc::make_mut(&mut self.shared).not_found = (status, Bytes::from(body.to_string()));
        self
    }

    /// Uses `cache` (configured, or shared with the health routes or another
    /// layer) instead of the default one. The cache's [`Hidra`] handle is
    /// then also the one the request's connections come from.
    pub fn with_cache(mut self, cache: TenantCache) -> Self {
        Arc::make_mut(&mut self.shared).cache = cache;
        self
    }

    /// The registry cache, e.g. for [`health::Health::with_cache`](crate::health::Health::with_cache).
    pub fn cache(&self) -> &TenantCache {
        &self.shared.cache
    }
}

impl<S> Layer<S> for TenantLayer {
    type Service = TenantService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of [`TenantLayer`].
#[derive(Clone)]
pub struct TenantService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for TenantService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> TenantService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TenantService<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        if shared.is_excluded(req.uri().path()) {
            return ResponseFuture::plain(self.inner.call(req));
        }
        let (mut parts, body) = req.into_parts();
        // The hit path, with nothing to wait for: every resolver answers at
        // once and this thread has the record. The inner service, which
        // `poll_ready` readied, is called right here; nothing is boxed.
        let Some(found) = shared.resolutions_now(&parts) else {
            let inner = take_ready(&mut self.inner);
            return ResponseFuture::boxed(handle(shared.clone(), inner, parts, body, None));
        };
        let decided = found.and_then(|mut found| {
            let id = shared.decide(&mut parts, &mut found)?;
            Ok((id, found))
        });
        let (id, found) = match decided {
            Ok(decided) => decided,
            Err(refusal) => return ResponseFuture::ready(shared.refuse(refusal, &parts)),
        };
        let Some(tenant) = shared.cache.get_now(&id) else {
            let (inner, decided) = (take_ready(&mut self.inner), Some((id, found)));
            return ResponseFuture::boxed(handle(shared.clone(), inner, parts, body, decided));
        };
        match shared.admit(Some(tenant), id, &found) {
            Ok(tenant) => shared.start(&mut self.inner, parts, body, tenant),
            Err(refusal) => ResponseFuture::ready(shared.refuse(refusal, &parts)),
        }
    }
}

/// The inner service that `poll_ready` readied, for a future that owns it;
/// a clone stays behind for the next request, which polls it ready.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// The request's `X-Request-ID`, for logs and the span.
fn request_id(parts: &http::request::Parts) -> Option<&str> {
    parts.headers.get(REQUEST_ID).and_then(|v| v.to_str().ok())
}

/// Why a request gets the uniform not-found answer; logged, never sent.
#[derive(Debug)]
enum Missing {
    NoCandidate,
    Malformed(hidra::Error),
    Unknown(TenantId),
    Inactive(TenantId, hidra::TenantStatus),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::NoCandidate => f.write_str("no resolver found a tenant id"),
            Missing::Malformed(e) => write!(f, "{e}"),
            Missing::Unknown(id) => write!(f, "tenant `{id}` is not registered"),
            Missing::Inactive(id, status) => write!(f, "tenant `{id}` is {status}"),
        }
    }
}

enum Refusal {
    Missing(Missing),
    Error(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Error(e)
    }
}

/// The path that waits: a resolver that looks something up, or a record
/// this thread does not hold. It ends like the hit path, in
/// [`Shared::start`].
async fn handle<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    mut parts: http::request::Parts,
    body: ReqBody,
    decided: Option<(TenantId, Vec<Resolution>)>,
) -> Result<Response, S::Error>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let admitted = async {
        let (id, found) = match decided {
            Some(decided) => decided,
            None => {
                let mut found = shared.resolutions(&parts).await?;
                let id = shared.decide(&mut parts, &mut found)?;
                (id, found)
            }
        };
        let tenant = shared.cache.get(&id).await?;
        shared.admit(tenant, id, &found)
    }
    .await;
    match admitted {
        Ok(tenant) => shared.start(&mut inner, parts, body, tenant).await,
        Err(refusal) => Ok(shared.refuse(refusal, &parts)),
    }
}

/// Commits the request's transaction if the response is a success, rolls it
/// back otherwise.
pub(crate) async fn settle(tx: hidra::TenantTx, response: Response) -> Response {
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        match tx.commit().await {
            Ok(()) => response,
            Err(source) => Error::Commit(source).into_response(),
        }
    } else {
        if let Err(error) = tx.rollback().await {
            // The connection is closed by sqlx if it cannot roll back; the
            // response stands.
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "rolling back the request's transaction failed"
            );
        }
        response
    }
}

impl Shared {
    fn is_excluded(&self, path: &str) -> bool {
        self.excluded.iter().any(|prefix| {
            prefix == "/"
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    fn not_found(&self) -> Response {
        let (status, body) = &self.not_found;
        let mut res = Response::new(Body::from(body.clone()));
        *res.status_mut() = *status;
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        res
    }

    /// The chain's answers, when every resolver gives its own at once.
    fn resolutions_now(
        &self,
        parts: &http::request::Parts,
    ) -> Option<Result<Vec<Resolution>, Refusal>> {
        let chain = self.chain();
        let mut found = self.outer(parts, chain.len());
        for resolver in chain {
            match resolver.resolve_now(parts)? {
                Ok(Some(resolution)) => found.push(resolution),
                Ok(None) => {}
                Err(error) => return Some(Err(error.into())),
            }
        }
        Some(Ok(found))
    }

    /// The chain's answers, in order.
    async fn resolutions(&self, parts: &http::request::Parts) -> Result<Vec<Resolution>, Refusal> {
        let chain = self.chain();
        let cx = ResolveContext::new(&self.cache);
        let mut found = self.outer(parts, chain.len());
        for resolver in chain {
            if let Some(resolution) = resolver.resolve_boxed(parts, cx).await? {
                found.push(resolution);
            }
        }
        Ok(found)
    }

    fn chain(&self) -> &[Arc<dyn DynResolver>] {
        if self.resolvers.is_empty() {
            std::slice::from_ref(&self.fallback)
        } else {
            &self.resolvers[..]
        }
    }

    /// The answers list, starting with the tenant of an outer layer: it
    /// binds this one too, so an inner chain (say, a header alone) cannot
    /// replace it.
    fn outer(&self, parts: &http::request::Parts, chain: usize) -> Vec<Resolution> {
        let mut found = Vec::with_capacity(chain + 1);
        if let Some(outer) = parts.extensions.get::<Scope>() {
            found.push(Resolution::verified(outer.tenant().id.as_str()));
        }
        found
    }

    /// Combines the answers into the tenant id the request names, applying
    /// their extensions and rewritten URI to `parts`.
    fn decide(
        &self,
        parts: &mut http::request::Parts,
        found: &mut [Resolution],
    ) -> Result<TenantId, Refusal> {
        if let Some(verified) = found.iter().find(|r| r.is_verified())
            && found.iter().any(|r| r.candidate() != verified.candidate())
        {
            return Err(Error::Conflict.into());
        }
        if self.credentials_required && !found.iter().any(Resolution::is_verified) {
            return Err(Error::Unauthorized("no credential".into()).into());
        }
        let mut new_uri = None;
        for resolution in found.iter_mut() {
            if let Some(uri) = resolution.take_uri() {
                new_uri = Some(uri);
            }
            parts.extensions.extend(resolution.take_extensions());
        }
        if let Some(uri) = new_uri {
            if parts.extensions.get::<OriginalUri>().is_none() {
                parts.extensions.insert(OriginalUri(parts.uri.clone()));
            }
            parts.uri = uri;
        }
        let Some(first) = found.first() else {
            // Nothing to name a tenant with, where a credential could have:
            // the client must log in, which a 404 would not tell it. This
            // reveals nothing about tenants, since no tenant was named.
            if self.chain().iter().any(|r| r.reads_credentials()) {
                return Err(Error::Unauthorized("no credential".into()).into());
            }
            return Err(Refusal::Missing(Missing::NoCandidate));
        };
        TenantId::new(first.candidate()).map_err(|e| Refusal::Missing(Missing::Malformed(e)))
    }

    /// Accepts the registry's record of `id` (`None`: not registered) for a
    /// request whose answers were `found`.
    fn admit(
        &self,
        tenant: Option<Arc<hidra::Tenant>>,
        id: TenantId,
        found: &[Resolution],
    ) -> Result<Arc<hidra::Tenant>, Refusal> {
        let Some(tenant) = tenant else {
            return Err(Refusal::Missing(Missing::Unknown(id)));
        };
        if !tenant.is_active() {
            return Err(Refusal::Missing(Missing::Inactive(id, tenant.status)));
        }
        // A credential of an earlier tenant under the same id does not hold.
        if found
            .iter()
            .filter_map(Resolution::incarnation)
            .any(|i| i != tenant.incarnation())
        {
            return Err(Error::Unauthorized(
                "a credential of an earlier incarnation of the tenant".into(),
            )
            .into());
        }
        Ok(tenant)
    }

    /// The answer to a refused request, its reason logged with the request id.
    fn refuse(&self, refusal: Refusal, parts: &http::request::Parts) -> Response {
        let request_id = request_id(parts);
        match refusal {
            Refusal::Missing(reason) => {
                tracing::debug!(request_id, %reason, "refusing request: tenant not found");
                self.not_found()
            }
            Refusal::Error(error) => {
                tracing::debug!(request_id, %error, "refusing request");
                error.into_response()
            }
        }
    }

    /// Runs the inner service for an admitted request: the rate limit, the
    /// span, the request's [`Scope`] in its extensions, and the tenant as the
    /// task's current one (for `call` too: a service may work before its
    /// future).
    fn start<S, ReqBody>(
        &self,
        inner: &mut S,
        mut parts: http::request::Parts,
        body: ReqBody,
        tenant: Arc<hidra::Tenant>,
    ) -> ResponseFuture<S::Future, S::Error>
    where
        S: Service<Request<ReqBody>>,
    {
        let hidra = self.cache.hidra();
        if let Some(rate) = &self.rate
            && let Err(retry_after) = rate.check(&tenant)
        {
            hidra.load().record_rate_limited(&tenant.id);
            tracing::debug!(
                request_id = request_id(&parts),
                tenant = %tenant.id,
                "refusing request: the tenant's request rate is used up"
            );
            return ResponseFuture::ready(Error::RateLimited { retry_after }.into_response());
        }
        let span = tracing::info_span!(
            "tenant",
            tenant = %tenant.id,
            request_id = tracing::field::Empty
        );
        // Without a subscriber that wants the span, entering it on every
        // poll would only cost.
        let span = (!span.is_disabled()).then(|| {
            if let Some(id) = request_id(&parts) {
                span.record("request_id", id);
            }
            span
        });
        hidra.load().record_request(&tenant.id);
        let scope = Scope::new(CurrentTenant(Arc::clone(&tenant)), hidra.clone(), self.busy);
        parts.extensions.insert(scope.clone());
        let req = Request::from_parts(parts, body);
        let future = {
            let _entered = span.as_ref().map(tracing::Span::enter);
            hidra::context::sync_scope(Arc::clone(&tenant), || inner.call(req))
        };
        ResponseFuture::scoped(hidra::context::scope(tenant, future), scope, span)
    }
}
