//! Finding the tenant id of a request: the [`TenantResolver`] trait and the
//! built-in resolvers ([`HeaderResolver`], [`SubdomainResolver`],
//! [`PathPrefixResolver`], [`CookieResolver`]).
//!
//! A resolver reads the request head and returns a raw id *candidate*, not yet
//! validated, and whether its source is *verified* (a signed token, an API key
//! checked against the database) or merely claimed by the client (a header, a
//! host name, a path, a cookie). [`TenantLayer`](crate::TenantLayer) runs its
//! resolvers as a chain; see its docs for how candidates are combined.

use std::fmt;

use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{Extensions, HeaderName, Uri, header};

use crate::cache::TenantCache;
use crate::error::{Error, Result};

/// What a resolver found: a raw tenant id candidate and where it came from.
///
/// It may also carry [extensions](Resolution::with_extension) for the request
/// (e.g. the verified claims of a token), which the layer inserts into the
/// request once it accepts it. Equality compares the candidate, whether it is
/// verified and the URI, not the extensions.
#[derive(Clone, Debug)]
pub struct Resolution {
    candidate: String,
    verified: bool,
    incarnation: Option<i64>,
    uri: Option<Uri>,
    extensions: Extensions,
}

impl PartialEq for Resolution {
    fn eq(&self, other: &Self) -> bool {
        self.candidate == other.candidate
            && self.verified == other.verified
            && self.incarnation == other.incarnation
            && self.uri == other.uri
    }
}

impl Eq for Resolution {}

impl Resolution {
    /// A candidate the client merely claims (header, host, path, cookie).
    pub fn claimed(candidate: impl Into<String>) -> Self {
        Resolution {
            candidate: candidate.into(),
            verified: false,
            incarnation: None,
            uri: None,
            extensions: Extensions::new(),
        }
    }

    /// A candidate from a verified source (a signed token's claim, an API key
    /// found in the database). A request whose other sources disagree with it
    /// is refused with `403`.
    pub fn verified(candidate: impl Into<String>) -> Self {
        Resolution {
            candidate: candidate.into(),
            verified: true,
            incarnation: None,
            uri: None,
            extensions: Extensions::new(),
        }
    }

    /// Binds the candidate to one incarnation of its id
    /// ([`hidra::Tenant::incarnation`]): if the registered tenant of that id
    /// is another incarnation (deleted and created again since the credential
    /// was issued), the request is refused with `401 {"error":"unauthorized"}`,
    /// like any other credential that does not hold.
    pub fn with_incarnation(mut self, incarnation: i64) -> Self {
        self.incarnation = Some(incarnation);
        self
    }

    /// The incarnation the candidate is bound to, if any.
    pub fn incarnation(&self) -> Option<i64> {
        self.incarnation
    }

    /// Replaces the request's URI before the inner service sees it (the path
    /// resolver strips its prefix this way).
    pub fn with_uri(mut self, uri: Uri) -> Self {
        self.uri = Some(uri);
        self
    }

    /// Adds `value` to the request's extensions, for the handler's extractors
    /// (the `JwtResolver` of the feature `auth` hands over the verified
    /// claims this way). The layer inserts it only when the request is
    /// accepted: not when another source conflicts, nor when the tenant is
    /// unknown or inactive.
    pub fn with_extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// The extensions added with [`with_extension`](Resolution::with_extension).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The raw, unvalidated id.
    pub fn candidate(&self) -> &str {
        &self.candidate
    }

    /// Whether the source is verified.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    /// The URI the request continues with, if the resolver rewrote it.
    pub fn uri(&self) -> Option<&Uri> {
        self.uri.as_ref()
    }

    pub(crate) fn take_uri(&mut self) -> Option<Uri> {
        self.uri.take()
    }

    pub(crate) fn take_extensions(&mut self) -> Extensions {
        std::mem::take(&mut self.extensions)
    }
}

/// What a resolver may use besides the request: the registry, through the cache.
#[derive(Clone, Copy, Debug)]
pub struct ResolveContext<'a> {
    cache: &'a TenantCache,
}

impl<'a> ResolveContext<'a> {
    /// A context over `cache` (the layer builds one per request).
    pub fn new(cache: &'a TenantCache) -> Self {
        ResolveContext { cache }
    }

    /// The registry cache.
    pub fn cache(&self) -> &'a TenantCache {
        self.cache
    }

    /// The Hidra handle.
    pub fn hidra(&self) -> &'a hidra::Hidra {
        self.cache.hidra()
    }
}

/// Finds a tenant id candidate in a request.
///
/// Return `Ok(None)` when the request carries nothing for this resolver,
/// `Ok(Some(_))` with a raw candidate (the layer validates it, so do not
/// reject malformed ids yourself: a uniform answer is the layer's job), and
/// `Err` only when the request must be refused outright
/// ([`Error::Unauthorized`] for a bad credential, [`Error::Conflict`]).
///
/// ```
/// use hidra_axum::{Error, ResolveContext, Resolution, TenantResolver};
///
/// /// Tenant from a query parameter `?tenant=...`.
/// #[derive(Debug)]
/// struct QueryParam;
///
/// impl TenantResolver for QueryParam {
///     async fn resolve(
///         &self,
///         parts: &http::request::Parts,
///         _cx: ResolveContext<'_>,
///     ) -> Result<Option<Resolution>, Error> {
///         Ok(parts.uri.query().and_then(|q| {
///             q.split('&').find_map(|kv| kv.strip_prefix("tenant=")).map(Resolution::claimed)
///         }))
///     }
/// }
/// ```
pub trait TenantResolver: Send + Sync + fmt::Debug + 'static {
    /// Looks for a candidate in `parts`; implement it as a plain
    /// `async fn` (the layer boxes the future).
    fn resolve(
        &self,
        parts: &Parts,
        cx: ResolveContext<'_>,
    ) -> impl Future<Output = Result<Option<Resolution>>> + Send;

    /// The same answer as [`resolve`](Self::resolve), given at once, for a
    /// resolver that never waits (it reads only the request head, as
    /// [`HeaderResolver`] does). The layer then admits a request whose
    /// record is cached without boxing or awaiting anything. Default `None`:
    /// the layer awaits `resolve`.
    fn resolve_now(&self, parts: &Parts) -> Option<Result<Option<Resolution>>> {
        let _ = parts;
        None
    }

    /// Whether this resolver reads a credential (a token, an API key) that
    /// the client must present, rather than a claim anyone can make. Default
    /// `false`; the `JwtResolver` and `ApiKeyResolver` of the feature `auth`
    /// say `true`.
    ///
    /// When a layer has such a resolver and no resolver of its chain finds
    /// anything in a request, the request presented no credential: it gets
    /// `401 {"error":"unauthorized"}` with `WWW-Authenticate: Bearer`, which
    /// tells a client to log in, rather than the `404` of an unknown tenant.
    fn reads_credentials(&self) -> bool {
        false
    }
}

/// A resolver's answer that needed no waiting.
pub(crate) fn ready(
    value: Result<Option<Resolution>>,
) -> std::future::Ready<Result<Option<Resolution>>> {
    std::future::ready(value)
}

/// [`TenantResolver`] as an object: the layer keeps its chain as
/// `Arc<dyn DynResolver>`, boxing each answer's future.
pub(crate) trait DynResolver: Send + Sync + fmt::Debug + 'static {
    fn resolve_boxed<'a>(
        &'a self,
        parts: &'a Parts,
        cx: ResolveContext<'a>,
    ) -> BoxFuture<'a, Result<Option<Resolution>>>;

    fn resolve_now(&self, parts: &Parts) -> Option<Result<Option<Resolution>>>;

    fn reads_credentials(&self) -> bool;
}

impl<R: TenantResolver> DynResolver for R {
    fn resolve_boxed<'a>(
        &'a self,
        parts: &'a Parts,
        cx: ResolveContext<'a>,
    ) -> BoxFuture<'a, Result<Option<Resolution>>> {
        Box::pin(self.resolve(parts, cx))
    }

    fn resolve_now(&self, parts: &Parts) -> Option<Result<Option<Resolution>>> {
        TenantResolver::resolve_now(self, parts)
    }

    fn reads_credentials(&self) -> bool {
        TenantResolver::reads_credentials(self)
    }
}

/// The one value among `values`: `None` without any, `conflict()` when two
/// differ, the first error met otherwise.
pub(crate) fn single<'a>(
    values: impl IntoIterator<Item = Result<&'a str>>,
    conflict: impl FnOnce() -> Error,
) -> Result<Option<&'a str>> {
    let mut found = None;
    for value in values {
        let value = value?;
        match found {
            Some(previous) if previous != value => return Err(conflict()),
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// The tenant id from a request header (default `X-Tenant-ID`).
///
/// A header sent more than once with different values is a
/// [`Conflict`](Error::Conflict).
#[derive(Clone, Debug)]
pub struct HeaderResolver {
    name: HeaderName,
}

impl Default for HeaderResolver {
    fn default() -> Self {
        HeaderResolver {
            name: HeaderName::from_static("x-tenant-id"),
        }
    }
}

impl HeaderResolver {
    /// The default header, `X-Tenant-ID`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another header.
    pub fn named(name: HeaderName) -> Self {
        HeaderResolver { name }
    }

    fn answer(&self, parts: &Parts) -> Result<Option<Resolution>> {
        let mut values = parts.headers.get_all(&self.name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.any(|v| v != first) {
            return Err(Error::Conflict);
        }
        // Non-UTF-8 bytes cannot form a valid id: pass a candidate that
        // fails validation, so the answer stays uniform.
        Ok(Some(Resolution::claimed(
            first.to_str().unwrap_or("\u{fffd}").trim(),
        )))
    }
}

impl TenantResolver for HeaderResolver {
    fn resolve(
        &self,
        parts: &Parts,
        _cx: ResolveContext<'_>,
    ) -> impl Future<Output = Result<Option<Resolution>>> + Send {
        ready(self.answer(parts))
    }

    fn resolve_now(&self, parts: &Parts) -> Option<Result<Option<Resolution>>> {
        Some(self.answer(parts))
    }
}

/// The tenant id from the host name: the label before a base domain
/// (`acme.example.com` → `acme`), and optionally custom domains looked up in
/// the registry.
///
/// A custom domain is a host name listed in a tenant's
/// `metadata.domains` (a JSON array, e.g. `{"domains": ["shop.acme.com"]}`),
/// looked up with
/// [`TenantStore::find_by_domain`](hidra::TenantStore::find_by_domain) through
/// the [`TenantCache`]. Unknown hosts are cached too, for the negative TTL:
/// a client inventing host names costs one registry read per new name, as one
/// inventing tenant ids does; rate-limit in front if that matters.
///
/// The host comes from the URI's authority (HTTP/2) or the `Host` header, port
/// removed and lowercased. The base domain itself and ignored labels (e.g.
/// `www`, `api`) yield no candidate; several labels (`a.b.example.com`) yield
/// a candidate that fails validation.
///
/// ```
/// let resolver = hidra_axum::SubdomainResolver::new("example.com")
///     .ignore(["www", "api"])
///     .with_custom_domains();
/// # let _ = resolver;
/// ```
#[derive(Clone, Debug)]
pub struct SubdomainResolver {
    /// `.example.com`
    suffix: String,
    ignored: Vec<String>,
    custom_domains: bool,
}

impl SubdomainResolver {
    /// Subdomains of `base_domain` (e.g. `example.com`).
    pub fn new(base_domain: impl AsRef<str>) -> Self {
        let base = base_domain
            .as_ref()
            .trim()
            .trim_matches('.')
            .to_ascii_lowercase();
        SubdomainResolver {
            suffix: format!(".{base}"),
            ignored: Vec::new(),
            custom_domains: false,
        }
    }

    /// Labels that are not tenants (`www`, `api`, …).
    pub fn ignore<I, S>(mut self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.ignored
            .extend(labels.into_iter().map(|s| s.into().to_ascii_lowercase()));
        self
    }

    /// Also resolve hosts outside the base domain through the registry.
    pub fn with_custom_domains(mut self) -> Self {
        self.custom_domains = true;
        self
    }
}

/// The request's host, lowercased and without port.
fn request_host(parts: &Parts) -> Option<String> {
    let raw = match parts.uri.authority() {
        Some(authority) => authority.host().to_owned(),
        None => {
            let value = parts.headers.get(header::HOST)?.to_str().ok()?;
            let value = value.trim();
            // `[::1]:8080` or `host:8080`
            if let Some(rest) = value.strip_prefix('[') {
                format!("[{}]", rest.split(']').next()?)
            } else {
                value.split(':').next()?.to_owned()
            }
        }
    };
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

impl TenantResolver for SubdomainResolver {
    async fn resolve(&self, parts: &Parts, cx: ResolveContext<'_>) -> Result<Option<Resolution>> {
        let Some(host) = request_host(parts) else {
            return Ok(None);
        };
        if let Some(label) = host.strip_suffix(&self.suffix) {
            let found = if label.is_empty() || self.ignored.iter().any(|i| i == label) {
                None
            } else {
                Some(Resolution::claimed(label))
            };
            return Ok(found);
        }
        if !self.custom_domains || host == self.suffix[1..] {
            return Ok(None);
        }
        Ok(cx
            .cache()
            .tenant_for_domain(&host)
            .await?
            .map(|id| Resolution::claimed(id.as_str())))
    }
}

/// The tenant id from a path prefix (`/t/{tenant}/...`), which is stripped so
/// routes are written once: `/t/acme/customers/7` reaches the `/customers/7`
/// route, with [`OriginalUri`](axum::extract::OriginalUri) still holding the
/// full path.
///
/// Because it rewrites the URI, the layer must run **before routing**: wrap
/// the whole router (`TenantLayer::layer(router)` or
/// `ServiceBuilder::new().layer(tenant_layer).service(router)`), not
/// `Router::layer`, which runs after a route was chosen.
#[derive(Clone, Debug)]
pub struct PathPrefixResolver {
    /// `/t/`
    prefix: String,
}

impl Default for PathPrefixResolver {
    fn default() -> Self {
        PathPrefixResolver {
            prefix: "/t/".into(),
        }
    }
}

impl PathPrefixResolver {
    /// The default prefix, `/t/{tenant}`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another prefix: `"/tenants"` reads `/tenants/{tenant}/...`.
    pub fn prefix(prefix: impl AsRef<str>) -> Self {
        let p = prefix.as_ref().trim_matches('/');
        PathPrefixResolver {
            prefix: if p.is_empty() {
                "/".into()
            } else {
                format!("/{p}/")
            },
        }
    }
}

impl TenantResolver for PathPrefixResolver {
    fn resolve(
        &self,
        parts: &Parts,
        _cx: ResolveContext<'_>,
    ) -> impl Future<Output = Result<Option<Resolution>>> + Send {
        let Some(rest) = parts.uri.path().strip_prefix(self.prefix.as_str()) else {
            return ready(Ok(None));
        };
        let (candidate, tail) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{tail}?{q}"),
            None => tail.to_owned(),
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = parts.uri.scheme().cloned();
        uri.authority = parts.uri.authority().cloned();
        let resolution = Resolution::claimed(candidate);
        let found = match path_and_query.parse().ok().and_then(|pq| {
            uri.path_and_query = Some(pq);
            Uri::from_parts(uri).ok()
        }) {
            Some(uri) => resolution.with_uri(uri),
            // Cannot happen for a tail of a valid path; keep the URI then.
            None => resolution,
        };
        ready(Ok(Some(found)))
    }
}

/// The tenant id from a cookie (default name `tenant`).
#[derive(Clone, Debug)]
pub struct CookieResolver {
    name: String,
}

impl Default for CookieResolver {
    fn default() -> Self {
        CookieResolver {
            name: "tenant".into(),
        }
    }
}

impl CookieResolver {
    /// The cookie `name`.
    pub fn new(name: impl Into<String>) -> Self {
        CookieResolver { name: name.into() }
    }
}

impl TenantResolver for CookieResolver {
    fn resolve(
        &self,
        parts: &Parts,
        _cx: ResolveContext<'_>,
    ) -> impl Future<Output = Result<Option<Resolution>>> + Send {
        ready(cookie(parts, &self.name).map(|found| found.map(Resolution::claimed)))
    }
}

/// The value of the cookie `name`, unquoted; the same cookie sent with two
/// different values is a [`Conflict`](Error::Conflict).
pub(crate) fn cookie<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>> {
    let values = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| Ok(v.trim().trim_matches('"')))
        });
    single(values, || Error::Conflict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            request_host(&parts("/", &[("host", "Acme.Example.COM:8080")])).as_deref(),
            Some("acme.example.com")
        );
        assert_eq!(
            request_host(&parts("http://x.example.com./a", &[])).as_deref(),
            Some("x.example.com")
        );
        assert_eq!(
            request_host(&parts("/", &[("host", "[::1]:80")])).as_deref(),
            Some("[::1]")
        );
        assert_eq!(request_host(&parts("/", &[])), None);
    }

    #[test]
    fn path_prefixes_are_normalised() {
        assert_eq!(PathPrefixResolver::prefix("tenants").prefix, "/tenants/");
        assert_eq!(PathPrefixResolver::prefix("/org/").prefix, "/org/");
        assert_eq!(PathPrefixResolver::new().prefix, "/t/");
    }
}
