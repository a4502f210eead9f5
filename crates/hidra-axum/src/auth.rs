//! Authentication and authorization on the web side (feature `auth`):
//! resolvers that find the tenant in a verified credential ([`JwtResolver`],
//! [`ApiKeyResolver`]), the [`Auth`] extractor, and guards
//! ([`RequireRole`], [`RequirePermission`], [`RequireScope`]).
//!
//! The resolvers verify a credential with the core
//! ([`hidra::auth::Jwt`], [`hidra::auth::ApiKeys`]) and yield its tenant as a
//! [verified](Resolution::verified) candidate, so that
//! [`TenantLayer`](crate::TenantLayer)'s 403 rule applies: a header or host
//! naming another tenant than the credential is refused. They hand the
//! verified [`Claims`] or [`VerifiedKey`] to the handler through the request
//! extensions, where [`Auth`] and the guards find them.
//!
//! A request without a credential is not refused by the resolvers (another
//! resolver may name the tenant, and public routes need none); routes that
//! need one say so with a guard. A request in which no resolver of the layer
//! finds anything at all presented no credential, and the layer answers it
//! with `401` (not the `404` of an unknown tenant; see
//! [`TenantResolver::reads_credentials`]). Every refusal is one of two bodies:
//! `401 {"error":"unauthorized"}` (no or bad credential, whatever the reason,
//! which is logged at `debug` level) and `403 {"error":"forbidden"}` (a
//! missing role, permission or scope).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts};
use hidra::auth::{ApiKeys, AuthError, Claims, Jwt, Revocations, RolePermissions, VerifiedKey};
use hidra::{Hidra, TenantId};
use http::request::Parts;
use http::{Extensions, HeaderName, header};

use crate::error::{Error, Result};
use crate::extract::{CurrentTenant, scope};
use crate::resolve::{Resolution, ResolveContext, TenantResolver, cookie, single};

/// The prefix of every Hidra API key: how a bearer token is told apart from a
/// JWT.
const API_KEY_PREFIX: &str = "hk_";

/// The one refusal of a missing or bad credential: `401 {"error":"unauthorized"}`.
fn unauthorized(reason: &'static str) -> Error {
    Error::Unauthorized(reason.into())
}

/// The bearer token of the `Authorization` header, if there is one.
///
/// Other schemes (`Basic`, …) are not ours: they yield nothing. Two different
/// bearer tokens are refused.
fn bearer(parts: &Parts) -> Result<Option<&str>> {
    let tokens = parts
        .headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| Ok(token.trim()))
        });
    single(tokens, || unauthorized("several different bearer tokens"))
}

/// Resolves the tenant from a JWT verified with [`Jwt`]: the token's tenant
/// claim becomes a [verified](Resolution::verified) candidate, and its
/// [`Claims`] go into the request extensions for [`Auth`] and the guards.
///
/// The token is read from `Authorization: Bearer <token>` (bearer tokens that
/// start with `hk_` are API keys and left to [`ApiKeyResolver`]), or, with
/// [`with_cookie`](JwtResolver::with_cookie), from a cookie when there is no
/// bearer token.
///
/// - No token: no candidate; other resolvers may name the tenant, and guards
///   answer 401.
/// - A token that does not verify — malformed, `alg: none` or another
///   algorithm, wrong key, tampered, expired, not yet valid, no tenant claim —
///   is refused with `401 {"error":"unauthorized"}`, the same bytes for every
///   reason; the reason is logged at `debug` level.
/// - A token for tenant A on a request whose other sources name tenant B is
///   refused with `403 {"error":"tenant_conflict"}` by the layer.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use hidra::auth::Jwt;
/// use hidra_axum::{Auth, HeaderResolver, JwtResolver, TenantLayer};
///
/// async fn me(auth: Auth) -> String {
///     format!("{:?} in {}", auth.subject(), auth.tenant())
/// }
///
/// # async fn run(hidra: hidra::Hidra) -> Result<(), Box<dyn std::error::Error>> {
/// let jwt = Jwt::hs256(std::env::var("JWT_SECRET")?)?;
/// let tenants = TenantLayer::new(hidra)
///     .with_resolver(JwtResolver::new(jwt).with_cookie("session"))
///     .with_resolver(HeaderResolver::new()); // must agree with the token
/// let app: Router = Router::new().route("/me", get(me)).layer(tenants);
/// # let _ = app; Ok(()) }
/// ```
///
/// A token read from a cookie is sent by the browser on cross-site requests
/// too: protect state-changing routes against CSRF (`SameSite` cookies, a
/// CSRF token) when you use [`with_cookie`](JwtResolver::with_cookie).
#[derive(Clone, Debug)]
pub struct JwtResolver {
    jwt: Jwt,
    cookie: Option<String>,
    revocations: Option<Revocations>,
}

impl JwtResolver {
    /// Verifies bearer tokens with `jwt`.
    pub fn new(jwt: Jwt) -> Self {
        JwtResolver {
            jwt,
            cookie: None,
            revocations: None,
        }
    }

    /// Also refuses (401) a token whose user's sessions were ended since it
    /// was issued: logged out everywhere, deactivated, re-roled, deleted or
    /// given a new password ([`Revocations`], from
    /// [`Accounts::revocations`](hidra::auth::Accounts::revocations)). A
    /// token without a token version is refused too. A cached version costs
    /// no query; a change reaches every process within about a second.
    pub fn with_revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Also reads the token from the cookie `name` when the request has no
    /// bearer token.
    pub fn with_cookie(mut self, name: impl Into<String>) -> Self {
        self.cookie = Some(name.into());
        self
    }

    fn token<'a>(&self, parts: &'a Parts) -> Result<Option<&'a str>> {
        if let Some(token) = bearer(parts)?.filter(|t| !t.starts_with(API_KEY_PREFIX)) {
            return Ok(Some(token));
        }
        match &self.cookie {
            Some(name) => cookie(parts, name).map_err(|_| unauthorized("several session cookies")),
            None => Ok(None),
        }
    }
}

impl TenantResolver for JwtResolver {
    async fn resolve(&self, parts: &Parts, _cx: ResolveContext<'_>) -> Result<Option<Resolution>> {
        let claims = match self.token(parts) {
            Ok(Some(token)) => match self.jwt.verify(token) {
                Ok(claims) => claims,
                Err(error) => {
                    tracing::debug!(%error, "refusing a request: its token does not verify");
                    return Err(unauthorized("invalid token"));
                }
            },
            Ok(None) => return Ok(None),
            Err(error) => return Err(error),
        };
        let resolution = |claims: Claims| {
            Some(
                Resolution::verified(claims.tenant.as_str())
                    .with_incarnation(claims.tenant_incarnation)
                    .with_extension(claims),
            )
        };
        let Some(revocations) = &self.revocations else {
            return Ok(resolution(claims));
        };
        match revocations.check(&claims).await {
            Ok(()) => Ok(resolution(claims)),
            Err(hidra::Error::Auth(kind)) => {
                tracing::debug!(refusal = ?kind, "refusing a request: its session has ended");
                Err(unauthorized("the session has ended"))
            }
            Err(error) => Err(Error::from(error)),
        }
    }

    fn reads_credentials(&self) -> bool {
        true
    }
}

/// Resolves the tenant from an API key verified with [`ApiKeys`]: the key's
/// tenant becomes a [verified](Resolution::verified) candidate, and the
/// [`VerifiedKey`] goes into the request extensions for [`Auth`] and
/// [`RequireScope`].
///
/// The key is read from the `X-API-Key` header (see
/// [`with_header`](ApiKeyResolver::with_header)) and from
/// `Authorization: Bearer hk_…` — the `hk_` prefix tells a key from a JWT, so
/// this resolver and [`JwtResolver`] can share the `Authorization` header.
/// No key: no candidate. A malformed, unknown, wrong, revoked, expired or
/// rotated-out key: `401 {"error":"unauthorized"}`, the same bytes for every
/// reason. A database failure while verifying: `503`.
///
/// ```no_run
/// use hidra::auth::ApiKeys;
/// use hidra_axum::{ApiKeyResolver, TenantLayer};
///
/// # fn run(hidra: hidra::Hidra) -> Result<(), Box<dyn std::error::Error>> {
/// let keys = ApiKeys::new(hidra.clone(), std::env::var("API_KEY_PEPPER")?)?;
/// let tenants = TenantLayer::new(hidra).with_resolver(ApiKeyResolver::new(keys));
/// # let _ = tenants; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ApiKeyResolver {
    keys: ApiKeys,
    header: HeaderName,
}

impl ApiKeyResolver {
    /// Verifies keys with `keys`, read from `X-API-Key` and bearer tokens.
    pub fn new(keys: ApiKeys) -> Self {
        ApiKeyResolver {
            keys,
            header: HeaderName::from_static("x-api-key"),
        }
    }

    /// Reads the key from `header` instead of `X-API-Key` (bearer tokens
    /// starting with `hk_` are still read).
    pub fn with_header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    fn key<'a>(&self, parts: &'a Parts) -> Result<Option<&'a str>> {
        let from_bearer = bearer(parts)?.filter(|t| t.starts_with(API_KEY_PREFIX));
        // Non-UTF-8 bytes cannot be a key: refuse like a wrong key.
        let from_header = parts.headers.get_all(&self.header).iter().map(|value| {
            value
                .to_str()
                .map(str::trim)
                .map_err(|_| unauthorized("malformed API key header"))
        });
        single(from_bearer.map(Ok).into_iter().chain(from_header), || {
            unauthorized("several different API keys")
        })
    }
}

impl TenantResolver for ApiKeyResolver {
    async fn resolve(&self, parts: &Parts, _cx: ResolveContext<'_>) -> Result<Option<Resolution>> {
        let presented = match self.key(parts) {
            Ok(Some(key)) => key,
            other => return other.map(|_| None),
        };
        match self.keys.verify(presented).await {
            Ok(key) => Ok(Some(
                Resolution::verified(key.tenant().as_str()).with_extension(key),
            )),
            Err(hidra::Error::Auth(kind)) => {
                tracing::debug!(
                    key_id = ApiKeys::key_id_of(presented),
                    refusal = %kind,
                    "refusing a request: its API key does not verify"
                );
                Err(unauthorized("invalid API key"))
            }
            Err(source) => Err(Error::db("verifying an API key")(source)),
        }
    }

    fn reads_credentials(&self) -> bool {
        true
    }
}

/// The verified principal of a request: a user (the [`Claims`] of a JWT
/// accepted by [`JwtResolver`]) or a machine client (a key accepted by
/// [`ApiKeyResolver`]).
///
/// As an extractor it rejects a request without one with
/// `401 {"error":"unauthorized"}`; use `Option<Auth>` on routes open to
/// anonymous clients. When a request carries both a token and a key, the
/// token is the principal.
///
/// ```
/// use hidra_axum::Auth;
///
/// async fn whoami(auth: Auth) -> String {
///     match &auth {
///         Auth::User(claims) => format!("user {} with roles {:?}", claims.sub, claims.roles),
///         Auth::ApiKey(key) => format!("API key {}", key.name()),
///         _ => "someone else".to_owned(),
///     }
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(whoami);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Auth {
    /// A user, by a verified JWT.
    User(Claims),
    /// A machine client, by a verified API key.
    ApiKey(VerifiedKey),
}

impl Auth {
    /// The principal the resolvers left in a request's extensions (for plain
    /// tower code).
    pub fn from_extensions(extensions: &Extensions) -> Option<Auth> {
        if let Some(claims) = extensions.get::<Claims>() {
            return Some(Auth::User(claims.clone()));
        }
        extensions.get::<VerifiedKey>().cloned().map(Auth::ApiKey)
    }

    /// The tenant the credential was issued for (the request's tenant).
    pub fn tenant(&self) -> &TenantId {
        match self {
            Auth::User(claims) => &claims.tenant,
            Auth::ApiKey(key) => key.tenant(),
        }
    }

    /// Who: the token's `sub`, or the key's id.
    pub fn subject(&self) -> &str {
        match self {
            Auth::User(claims) => &claims.sub,
            Auth::ApiKey(key) => key.key_id(),
        }
    }

    /// The token's claims, for a user.
    pub fn claims(&self) -> Option<&Claims> {
        match self {
            Auth::User(claims) => Some(claims),
            Auth::ApiKey(_) => None,
        }
    }

    /// The verified key, for a machine client.
    pub fn key(&self) -> Option<&VerifiedKey> {
        match self {
            Auth::ApiKey(key) => Some(key),
            Auth::User(_) => None,
        }
    }

    /// The principal of `parts`, checked against the request's tenant:
    /// 401 without one, 403 if it belongs to another tenant (which the
    /// layer's conflict rule already prevents; checked again here).
    fn require(parts: &Parts) -> Result<Auth> {
        let auth = Auth::from_extensions(&parts.extensions)
            .ok_or_else(|| unauthorized("no verified credentials"))?;
        if let Some(tenant) = CurrentTenant::from_extensions(&parts.extensions)
            && &tenant.id != auth.tenant()
        {
            return Err(AuthError::WrongTenant.into());
        }
        Ok(auth)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        Auth::require(parts)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>> {
        match Auth::from_extensions(&parts.extensions) {
            Some(_) => Auth::require(parts).map(Some),
            None => Ok(None),
        }
    }
}

/// A role name, for [`RequireRole`].
///
/// ```
/// struct Admin;
///
/// impl hidra_axum::Role for Admin {
///     const NAME: &'static str = "admin";
/// }
/// ```
pub trait Role: Send + Sync + 'static {
    /// The role's name, as in the tenant's `roles` table and the token's
    /// `roles` claim.
    const NAME: &'static str;
}

/// A permission (or API key scope) name, for [`RequirePermission`] and
/// [`RequireScope`].
///
/// ```
/// struct CustomersWrite;
///
/// impl hidra_axum::Permission for CustomersWrite {
///     const NAME: &'static str = "customers:write";
/// }
/// ```
pub trait Permission: Send + Sync + 'static {
    /// The permission, conventionally `resource:action`; granted by the
    /// wildcards of [`hidra::auth::grants`].
    const NAME: &'static str;
}

/// A guard: the request's user has the role `R` in its token.
///
/// Rejects with `401 {"error":"unauthorized"}` without verified claims and
/// `403 {"error":"forbidden"}` when the role is missing (an API key has no
/// roles: 403 too). Dereferences to the [`Claims`].
///
/// Per route, as an argument; per router, with
/// [`from_extractor`](axum::middleware::from_extractor):
///
/// ```
/// use axum::{Router, middleware, routing::get};
/// use hidra_axum::{RequireRole, Role};
///
/// struct Admin;
/// impl Role for Admin {
///     const NAME: &'static str = "admin";
/// }
///
/// async fn audit_log(admin: RequireRole<Admin>) -> String {
///     format!("hello, admin {}", admin.sub)
/// }
///
/// async fn settings() -> &'static str { "…" }
///
/// let admin_routes: Router = Router::new()
///     .route("/admin/settings", get(settings))
///     .route_layer(middleware::from_extractor::<RequireRole<Admin>>());
/// let app: Router = Router::new().route("/audit", get(audit_log)).merge(admin_routes);
/// ```
pub struct RequireRole<R> {
    claims: Claims,
    role: PhantomData<fn() -> R>,
}

impl<R> RequireRole<R> {
    /// The verified claims.
    pub fn into_claims(self) -> Claims {
        self.claims
    }
}

impl<R> Deref for RequireRole<R> {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.claims
    }
}

impl<R: Role> fmt::Debug for RequireRole<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireRole")
            .field("role", &R::NAME)
            .field("claims", &self.claims)
            .finish()
    }
}

impl<R: Role, S: Send + Sync> FromRequestParts<S> for RequireRole<R> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        let Auth::User(claims) = Auth::require(parts)? else {
            return Err(AuthError::MissingRole(R::NAME.to_owned()).into());
        };
        claims.require_role(R::NAME)?;
        Ok(RequireRole {
            claims,
            role: PhantomData,
        })
    }
}

/// A guard: the request's principal has the permission `P` — a user through
/// one of its roles, by the permissions of the tenant's `roles` table
/// (loaded through a [`PermissionCache`]); an API key through its scopes.
///
/// Rejects with `401 {"error":"unauthorized"}` without a principal and
/// `403 {"error":"forbidden"}` without the permission; `503` if the roles
/// cannot be read. Needs a [`PermissionCache`] in the router state
/// (`PermissionCache: FromRef<S>`).
///
/// ```
/// use axum::{Router, routing::post};
/// use hidra_axum::{Permission, PermissionCache, RequirePermission};
///
/// struct CustomersWrite;
/// impl Permission for CustomersWrite {
///     const NAME: &'static str = "customers:write";
/// }
///
/// async fn create(_: RequirePermission<CustomersWrite>) -> &'static str {
///     "created"
/// }
///
/// let app: Router = Router::new()
///     .route("/customers", post(create))
///     .with_state(PermissionCache::new());
/// ```
pub struct RequirePermission<P> {
    auth: Auth,
    permission: PhantomData<fn() -> P>,
}

impl<P> RequirePermission<P> {
    /// The principal that was granted the permission.
    pub fn into_auth(self) -> Auth {
        self.auth
    }
}

impl<P> Deref for RequirePermission<P> {
    type Target = Auth;

    fn deref(&self) -> &Auth {
        &self.auth
    }
}

impl<P: Permission> fmt::Debug for RequirePermission<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequirePermission")
            .field("permission", &P::NAME)
            .field("auth", &self.auth)
            .finish()
    }
}

impl<P, S> FromRequestParts<S> for RequirePermission<P>
where
    P: Permission,
    PermissionCache: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let auth = Auth::require(parts)?;
        match &auth {
            Auth::User(claims) => {
                let scope = scope(&parts.extensions)?;
                let permissions = PermissionCache::from_ref(state)
                    .get(scope.hidra(), scope.tenant())
                    .await?;
                claims.require_permission(&permissions, P::NAME)?;
            }
            Auth::ApiKey(key) => key
                .require_scope(P::NAME)
                .map_err(|_| AuthError::MissingPermission(P::NAME.to_owned()))?,
        }
        Ok(RequirePermission {
            auth,
            permission: PhantomData,
        })
    }
}

/// A guard: the request comes with an API key that has the scope `P`.
///
/// Rejects with `401 {"error":"unauthorized"}` without a principal and
/// `403 {"error":"forbidden"}` when the key lacks the scope or the principal
/// is a user (use [`RequirePermission`] for routes open to both).
/// Dereferences to the [`VerifiedKey`].
///
/// ```
/// use hidra_axum::{Permission, RequireScope};
///
/// struct ExportCsv;
/// impl Permission for ExportCsv {
///     const NAME: &'static str = "customers:export";
/// }
///
/// async fn export(key: RequireScope<ExportCsv>) -> String {
///     format!("exporting for key {}", key.name())
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(export);
/// ```
pub struct RequireScope<P> {
    key: VerifiedKey,
    scope: PhantomData<fn() -> P>,
}

impl<P> RequireScope<P> {
    /// The verified key.
    pub fn into_key(self) -> VerifiedKey {
        self.key
    }
}

impl<P> Deref for RequireScope<P> {
    type Target = VerifiedKey;

    fn deref(&self) -> &VerifiedKey {
        &self.key
    }
}

impl<P: Permission> fmt::Debug for RequireScope<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScope")
            .field("scope", &P::NAME)
            .field("key", &self.key)
            .finish()
    }
}

impl<P: Permission, S: Send + Sync> FromRequestParts<S> for RequireScope<P> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        let Auth::ApiKey(key) = Auth::require(parts)? else {
            return Err(AuthError::MissingScope(P::NAME.to_owned()).into());
        };
        key.require_scope(P::NAME)?;
        Ok(RequireScope {
            key,
            scope: PhantomData,
        })
    }
}

/// The permissions of each tenant's roles ([`RolePermissions`]), kept in
/// process for a short time (default 30 s) so that [`RequirePermission`] does
/// not read the `roles` table on every request.
///
/// Cheap to clone; clones share the cache. A change to a tenant's roles is
/// seen after the TTL, or at once after [`invalidate`](PermissionCache::invalidate).
#[derive(Clone)]
pub struct PermissionCache {
    /// Keyed by id; the value remembers which incarnation of the tenant
    /// (its `created_at`) it was read from, so that a tenant deleted and
    /// provisioned again under the same id never inherits the old roles.
    cache: moka::future::Cache<TenantId, (DateTime<Utc>, Arc<RolePermissions>)>,
    ttl: Duration,
    capacity: u64,
}

impl Default for PermissionCache {
    fn default() -> Self {
        PermissionCache::build(Duration::from_secs(30), 10_000)
    }
}

impl fmt::Debug for PermissionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermissionCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl PermissionCache {
    /// A cache of up to 10,000 tenants, each kept for 30 s.
    pub fn new() -> Self {
        Self::default()
    }

    fn build(ttl: Duration, capacity: u64) -> Self {
        PermissionCache {
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            ttl,
            capacity,
        }
    }

    /// How long a tenant's permissions are kept (a new, empty cache).
    pub fn with_ttl(self, ttl: Duration) -> Self {
        Self::build(ttl, self.capacity)
    }

    /// How many tenants are kept at most (a new, empty cache).
    pub fn with_capacity(self, tenants: u64) -> Self {
        Self::build(self.ttl, tenants)
    }

    /// The role permissions of `tenant`, from the cache or read from its
    /// `roles` table through `hidra`.
    pub async fn get(&self, hidra: &Hidra, tenant: &hidra::Tenant) -> Result<Arc<RolePermissions>> {
        if let Some((created_at, found)) = self.cache.get(&tenant.id).await
            && created_at == tenant.created_at
        {
            return Ok(found);
        }
        let mut conn = hidra
            .acquire(tenant)
            .await
            .map_err(Error::db("acquiring a connection to read roles"))?;
        let loaded = Arc::new(
            RolePermissions::load(&mut conn)
                .await
                .map_err(Error::db("reading the tenant's roles"))?,
        );
        self.cache
            .insert(tenant.id.clone(), (tenant.created_at, Arc::clone(&loaded)))
            .await;
        Ok(loaded)
    }

    /// Forgets `tenant`'s permissions: the next request reads them again.
    pub async fn invalidate(&self, tenant: &TenantId) {
        self.cache.invalidate(tenant).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri("/");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_tokens_are_read() {
        assert_eq!(bearer(&parts(&[])).unwrap(), None);
        assert_eq!(
            bearer(&parts(&[("authorization", "Bearer abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            bearer(&parts(&[("authorization", "bearer  abc ")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            bearer(&parts(&[("authorization", "Basic dXNlcjpwdw==")])).unwrap(),
            None
        );
        assert!(
            bearer(&parts(&[
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ]))
            .is_err()
        );
    }

    #[test]
    fn api_keys_and_jwts_share_the_bearer_header() {
        let jwt = JwtResolver::new(Jwt::hs256([7u8; 32]).unwrap());
        let key = parts(&[("authorization", "Bearer hk_abc_def")]);
        assert_eq!(jwt.token(&key).unwrap(), None);
        let token = parts(&[("authorization", "Bearer eyJ.x.y")]);
        assert_eq!(jwt.token(&token).unwrap(), Some("eyJ.x.y"));
        let cookie = parts(&[("cookie", "a=1; session=eyJ.c.d")]);
        assert_eq!(jwt.token(&cookie).unwrap(), None);
        assert_eq!(
            jwt.clone().with_cookie("session").token(&cookie).unwrap(),
            Some("eyJ.c.d")
        );
    }
}
