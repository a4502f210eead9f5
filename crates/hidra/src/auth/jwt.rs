//! Tenant-bound JSON Web Tokens: [`Jwt`] issues and verifies them, [`Claims`]
//! is what a verified token says.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::{AuthError, RolePermissions, refuse};
use crate::error::{Error, Result};
use crate::tenant::{Tenant, TenantId};

/// The shortest HS256 secret accepted, in bytes (256 bits, the size of the
/// hash, as RFC 7518 §3.2 requires).
const MIN_HS256_SECRET_BYTES: usize = 32;

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Claim names hidra writes itself; the tenant claim may not be one of them.
const RESERVED_CLAIMS: [&str; 10] = [
    "sub",
    "roles",
    "iat",
    "exp",
    "nbf",
    "iss",
    "aud",
    "jti",
    INCARNATION_CLAIM,
    TOKEN_VERSION_CLAIM,
];

/// The claim naming the tenant's incarnation ([`Tenant::incarnation`]).
const INCARNATION_CLAIM: &str = "tinc";

/// The claim carrying the user's token version ([`Revocations`](super::Revocations)).
const TOKEN_VERSION_CLAIM: &str = "tver";

/// The signature algorithm a [`Jwt`] is pinned to: tokens naming any other are
/// refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret of at least 32 bytes. The default.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, from an RSA key pair in PEM.
    Rs256,
    /// Ed25519 signatures, from an Ed25519 key pair in PEM.
    EdDsa,
}

impl JwtAlgorithm {
    /// The name used in a token's `alg` header: `HS256`, `RS256`, `EdDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::EdDsa => "EdDSA",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verified token says: who (`sub`), for which tenant, with which roles,
/// and when it was issued and expires.
///
/// Build fresh claims with [`Jwt::claims`]; the fields are public so that
/// tests and special cases can adjust them before [`Jwt::sign`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claims {
    /// The subject: the user's id in its tenant's `users` table, as text.
    pub sub: String,
    /// The tenant the token was issued for.
    pub tenant: TenantId,
    /// Which incarnation of that tenant ([`Tenant::incarnation`]): a tenant
    /// deleted and created again under the same id is another incarnation,
    /// and refuses the old one's tokens.
    pub tenant_incarnation: i64,
    /// The user's role names.
    pub roles: Vec<String>,
    /// The user's token version when the token was issued, checked by
    /// [`Revocations`](super::Revocations); set by
    /// [`Accounts::login`](super::Accounts::login).
    pub token_version: Option<i64>,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, in seconds since the Unix epoch.
    pub exp: i64,
    /// Not valid before, in seconds since the Unix epoch, if set.
    pub nbf: Option<i64>,
    /// The issuer, if the [`Jwt`] is configured with one.
    pub iss: Option<String>,
    /// The audience, if the [`Jwt`] is configured with one.
    pub aud: Option<String>,
}

impl Claims {
    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the token carries at least one of `roles`.
    pub fn has_any_role(&self, roles: &[&str]) -> bool {
        roles.iter().any(|r| self.has_role(r))
    }

    /// `Ok` if the token carries `role`, else [`AuthError::MissingRole`].
    pub fn require_role(&self, role: &str) -> Result<()> {
        if self.has_role(role) {
            Ok(())
        } else {
            refuse(AuthError::MissingRole(role.to_owned()))
        }
    }

    /// Whether one of the token's roles grants `permission`, by the tenant's
    /// role permissions (see [`grants`](super::grants) for the wildcards).
    pub fn can(&self, permissions: &RolePermissions, permission: &str) -> bool {
        permissions.allows(&self.roles, permission)
    }

    /// `Ok` if one of the token's roles grants `permission`, else
    /// [`AuthError::MissingPermission`].
    pub fn require_permission(
        &self,
        permissions: &RolePermissions,
        permission: &str,
    ) -> Result<()> {
        if self.can(permissions, permission) {
            Ok(())
        } else {
            refuse(AuthError::MissingPermission(permission.to_owned()))
        }
    }

    /// `Ok` if the token was issued for this incarnation of `tenant`, else
    /// [`AuthError::WrongTenant`].
    pub fn require_tenant(&self, tenant: &Tenant) -> Result<()> {
        if self.tenant == tenant.id && self.tenant_incarnation == tenant.incarnation() {
            Ok(())
        } else {
            refuse(AuthError::WrongTenant)
        }
    }
}

/// Issues and verifies tenant-bound JWTs with one pinned algorithm.
///
/// Cheap to clone. Configure it once at start-up:
///
/// ```no_run
/// use std::time::Duration;
/// use hidra::auth::Jwt;
/// use hidra::TenantId;
///
/// # async fn run(hidra: hidra::Hidra) -> hidra::Result<()> {
/// let jwt = Jwt::hs256(b"an example secret of at least 32 bytes!")?
///     .with_ttl(Duration::from_secs(15 * 60))
///     .with_leeway(Duration::from_secs(30))
///     .with_issuer("https://auth.example.com")
///     .with_audience("example-api");
///
/// let acme = hidra.tenant(&TenantId::new("acme")?).await?.expect("registered");
/// let token = jwt.issue("42", &acme, ["admin"])?;
///
/// let claims = jwt.verify(&token)?;
/// assert_eq!(claims.tenant, acme.id);
/// assert!(claims.has_role("admin"));
///
/// // A request resolved to another tenant, or to a new tenant created
/// // under the same id after this one was deleted, refuses the token.
/// let globex = hidra.tenant(&TenantId::new("globex")?).await?.expect("registered");
/// assert!(jwt.verify_for(&token, &globex).is_err());
/// # Ok(()) }
/// ```
///
/// # What is refused
///
/// [`verify`](Jwt::verify) fails with [`Error::Auth`] when the token is
/// malformed, names another algorithm than the pinned one (including `none`
/// and an HS256 token signed with an RSA public key used as the HMAC secret),
/// its signature does not verify with the configured key, its header lists
/// `crit` extensions (none is understood), its `exp` has passed or its `nbf`
/// or `iat` lies ahead (beyond the leeway), `sub`, `iat`, `exp` or the tenant
/// incarnation (`tinc`) is missing, `iss`/`aud` do not match the configured
/// ones, or the tenant claim is missing or not a valid [`TenantId`].
/// [`verify_for`](Jwt::verify_for) also refuses a token of another tenant or
/// of another incarnation of the same tenant id.
#[derive(Clone)]
pub struct Jwt {
    algorithm: JwtAlgorithm,
    keys: Arc<Keys>,
    ttl: Duration,
    leeway: Duration,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: String,
    validation: Validation,
}

struct Keys {
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithm", &self.algorithm)
            .field("can_issue", &self.can_issue())
            .field("ttl", &self.ttl)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("tenant_claim", &self.tenant_claim)
            .finish_non_exhaustive()
    }
}

fn config_err(message: String) -> Error {
    Error::InvalidConfig(message.into())
}

impl Jwt {
    /// HS256 with a shared `secret` of at least 32 bytes (use 32 random bytes,
    /// e.g. `openssl rand -base64 32`, kept out of the source).
    pub fn hs256(secret: impl AsRef<[u8]>) -> Result<Jwt> {
        let secret = secret.as_ref();
        if secret.len() < MIN_HS256_SECRET_BYTES {
            return Err(config_err(format!(
                "the HS256 secret is {} bytes long; use at least {MIN_HS256_SECRET_BYTES} random bytes",
                secret.len()
            )));
        }
        Ok(Jwt::with_keys(
            JwtAlgorithm::Hs256,
            Some(EncodingKey::from_secret(secret)),
            DecodingKey::from_secret(secret),
        ))
    }

    /// RS256 or EdDSA from PEM-encoded keys: the private key (PKCS#8, or
    /// PKCS#1 for RSA) to issue tokens, and the public key to verify them.
    /// Without the private key the `Jwt` only verifies.
    ///
    /// A key of another type than `algorithm` is refused, and so is a private
    /// key that does not match the public key.
    pub fn from_pem(
        algorithm: JwtAlgorithm,
        private_pem: Option<&[u8]>,
        public_pem: &[u8],
    ) -> Result<Jwt> {
        let bad = |which: &str, e: jsonwebtoken::errors::Error| {
            config_err(format!(
                "the {which} key is not a valid {algorithm} key in PEM format ({e})"
            ))
        };
        let (encoding, decoding) = match algorithm {
            JwtAlgorithm::Hs256 => {
                return Err(config_err(
                    "HS256 uses a shared secret, not PEM keys: use `Jwt::hs256`".to_owned(),
                ));
            }
            JwtAlgorithm::Rs256 => (
                private_pem
                    .map(EncodingKey::from_rsa_pem)
                    .transpose()
                    .map_err(|e| bad("private", e))?,
                DecodingKey::from_rsa_pem(public_pem).map_err(|e| bad("public", e))?,
            ),
            JwtAlgorithm::EdDsa => (
                private_pem
                    .map(EncodingKey::from_ed_pem)
                    .transpose()
                    .map_err(|e| bad("private", e))?,
                DecodingKey::from_ed_pem(public_pem).map_err(|e| bad("public", e))?,
            ),
        };
        let jwt = Jwt::with_keys(algorithm, encoding, decoding);
        if jwt.can_issue() {
            jwt.check_key_pair()?;
        }
        Ok(jwt)
    }

    /// [`from_pem`](Jwt::from_pem) with the keys read from files.
    pub fn from_pem_files(
        algorithm: JwtAlgorithm,
        private_key: Option<&Path>,
        public_key: &Path,
    ) -> Result<Jwt> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| {
                config_err(format!("cannot read the key file {}: {e}", path.display()))
            })
        };
        let private = private_key.map(read).transpose()?;
        let public = read(public_key)?;
        Jwt::from_pem(algorithm, private.as_deref(), &public)
    }

    fn with_keys(
        algorithm: JwtAlgorithm,
        encoding: Option<EncodingKey>,
        decoding: DecodingKey,
    ) -> Jwt {
        let mut jwt = Jwt {
            algorithm,
            keys: Arc::new(Keys { encoding, decoding }),
            ttl: Duration::from_secs(60 * 60),
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            tenant_claim: "tenant".to_owned(),
            validation: Validation::new(algorithm.jwt()),
        };
        jwt.rebuild_validation();
        jwt
    }

    /// Signs and verifies a probe token, so that a private key that does not
    /// belong to the public key is found at start-up rather than at login.
    fn check_key_pair(&self) -> Result<()> {
        let probe = self.claims_of("probe", TenantId::new("probe")?, 0, [] as [&str; 0]);
        let token = self.sign(&probe)?;
        self.verify(&token).map(|_| ()).map_err(|_| {
            config_err(format!(
                "the {} private key does not match the public key",
                self.algorithm
            ))
        })
    }

    fn rebuild_validation(&mut self) {
        let mut v = Validation::new(self.algorithm.jwt());
        v.leeway = self.leeway.as_secs() + u64::from(self.leeway.subsec_nanos() > 0);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.required_spec_claims = ["exp", "sub"].iter().map(|s| (*s).to_owned()).collect();
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".to_owned());
        }
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            v.required_spec_claims.insert("aud".to_owned());
        }
        self.validation = v;
    }

    /// How long issued tokens are valid (default one hour).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (default 30 s; rounded up to
    /// whole seconds).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self.rebuild_validation();
        self
    }

    /// The `iss` written into issued tokens and required of verified ones.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self.rebuild_validation();
        self
    }

    /// The `aud` written into issued tokens and required of verified ones.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self.rebuild_validation();
        self
    }

    /// The name of the claim carrying the tenant id (default `tenant`), e.g.
    /// `company_id` to interoperate with an existing issuer. It may not be
    /// one of the registered claims hidra writes (`sub`, `roles`, `iat`,
    /// `exp`, `nbf`, `iss`, `aud`, `jti`).
    pub fn with_tenant_claim(mut self, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() || RESERVED_CLAIMS.contains(&name.as_str()) {
            return Err(config_err(format!(
                "{name:?} cannot be the tenant claim: it is empty or a registered claim"
            )));
        }
        self.tenant_claim = name;
        Ok(self)
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// How long issued tokens are valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this `Jwt` has a private key or secret to issue tokens with
    /// (a `Jwt` built from a public key alone only verifies).
    pub fn can_issue(&self) -> bool {
        self.keys.encoding.is_some()
    }

    /// Fresh claims for `sub` in this incarnation of `tenant` with `roles`:
    /// issued now, expiring after the TTL, with the configured issuer and
    /// audience.
    pub fn claims<I, S>(&self, sub: impl Into<String>, tenant: &Tenant, roles: I) -> Claims
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.claims_of(sub, tenant.id.clone(), tenant.incarnation(), roles)
    }

    fn claims_of<I, S>(
        &self,
        sub: impl Into<String>,
        tenant: TenantId,
        tenant_incarnation: i64,
        roles: I,
    ) -> Claims
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        Claims {
            sub: sub.into(),
            tenant,
            tenant_incarnation,
            roles: roles.into_iter().map(Into::into).collect(),
            token_version: None,
            iat: now,
            exp: now.saturating_add(ttl),
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        }
    }

    /// Issues a token for `sub` in `tenant` with `roles`: [`claims`](Jwt::claims)
    /// then [`sign`](Jwt::sign).
    pub fn issue<I, S>(&self, sub: impl Into<String>, tenant: &Tenant, roles: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.sign(&self.claims(sub, tenant, roles))
    }

    /// Signs `claims` as they are.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let Some(key) = &self.keys.encoding else {
            return Err(config_err(
                "this Jwt was built from a public key only: it verifies tokens but cannot \
                 issue them; pass the private key to issue"
                    .to_owned(),
            ));
        };
        let mut map = Map::new();
        map.insert("sub".into(), Value::from(claims.sub.clone()));
        map.insert(
            self.tenant_claim.clone(),
            Value::from(claims.tenant.as_str()),
        );
        map.insert(
            INCARNATION_CLAIM.into(),
            Value::from(claims.tenant_incarnation),
        );
        map.insert("roles".into(), Value::from(claims.roles.clone()));
        if let Some(version) = claims.token_version {
            map.insert(TOKEN_VERSION_CLAIM.into(), Value::from(version));
        }
        map.insert("iat".into(), Value::from(claims.iat));
        map.insert("exp".into(), Value::from(claims.exp));
        if let Some(nbf) = claims.nbf {
            map.insert("nbf".into(), Value::from(nbf));
        }
        if let Some(iss) = &claims.iss {
            map.insert("iss".into(), Value::from(iss.clone()));
        }
        if let Some(aud) = &claims.aud {
            map.insert("aud".into(), Value::from(aud.clone()));
        }
        jsonwebtoken::encode(&Header::new(self.algorithm.jwt()), &map, key)
            .map_err(|e| config_err(format!("cannot sign a token with this key: {e}")))
    }

    /// Verifies `token` and returns its claims; see [what is refused](Jwt#what-is-refused).
    pub fn verify(&self, token: &str) -> Result<Claims> {
        if token.len() > MAX_TOKEN_BYTES {
            tracing::debug!(len = token.len(), "refused an oversized token");
            return refuse(AuthError::InvalidToken);
        }
        // No `crit` extension is understood, so a token that lists one must
        // be refused (RFC 7515 §4.1.11).
        if jsonwebtoken::decode_header(token).is_ok_and(|h| h.crit.is_some()) {
            tracing::debug!("refused a token with a crit header");
            return refuse(AuthError::InvalidToken);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(
            token,
            &self.keys.decoding,
            &self.validation,
        )
        .map_err(|e| {
            let kind = classify(e.kind());
            tracing::debug!(error = %e, refusal = ?kind, "refused a token");
            Error::Auth(kind)
        })?;
        let claims = self.claims_from(data.claims).map_err(Error::Auth)?;
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        if claims.iat > chrono::Utc::now().timestamp().saturating_add(leeway) {
            tracing::debug!(iat = claims.iat, "refused a token issued in the future");
            return refuse(AuthError::NotYetValid);
        }
        Ok(claims)
    }

    /// [`verify`](Jwt::verify), and refuse with [`AuthError::WrongTenant`] a
    /// token issued for another tenant than `tenant` (the one the request was
    /// resolved to), or for an earlier incarnation of it.
    pub fn verify_for(&self, token: &str, tenant: &Tenant) -> Result<Claims> {
        let claims = self.verify(token)?;
        claims.require_tenant(tenant)?;
        Ok(claims)
    }

    fn claims_from(&self, mut map: Map<String, Value>) -> std::result::Result<Claims, AuthError> {
        let tenant = match map.remove(&self.tenant_claim) {
            None | Some(Value::Null) => return Err(AuthError::MissingTenantClaim),
            Some(Value::String(s)) => {
                TenantId::new(&s).map_err(|_| AuthError::InvalidTenantClaim)?
            }
            Some(_) => return Err(AuthError::InvalidTenantClaim),
        };
        let string = |v: Option<Value>| match v {
            Some(Value::String(s)) => Ok(Some(s)),
            None => Ok(None),
            Some(_) => Err(AuthError::InvalidToken),
        };
        let number = |v: Option<Value>| match v {
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or(AuthError::InvalidToken),
            None => Ok(None),
            Some(_) => Err(AuthError::InvalidToken),
        };
        let roles = match map.remove("roles") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(AuthError::InvalidToken),
                })
                .collect::<std::result::Result<_, _>>()?,
            Some(_) => return Err(AuthError::InvalidToken),
        };
        let aud = match (&self.audience, map.remove("aud")) {
            // Validation has checked that the token's audience contains it.
            (Some(configured), _) => Some(configured.clone()),
            (None, Some(Value::String(s))) => Some(s),
            (None, _) => None,
        };
        Ok(Claims {
            sub: string(map.remove("sub"))?.ok_or(AuthError::InvalidToken)?,
            tenant,
            tenant_incarnation: number(map.remove(INCARNATION_CLAIM))?
                .ok_or(AuthError::InvalidToken)?,
            roles,
            token_version: number(map.remove(TOKEN_VERSION_CLAIM))?,
            iat: number(map.remove("iat"))?.ok_or(AuthError::InvalidToken)?,
            exp: number(map.remove("exp"))?.ok_or(AuthError::InvalidToken)?,
            nbf: number(map.remove("nbf"))?,
            iss: string(map.remove("iss"))?,
            aud,
        })
    }
}

/// Maps a jsonwebtoken failure to the refusal kind; everything but the two
/// time checks is "invalid token".
fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        _ => AuthError::InvalidToken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn acme() -> Tenant {
        record("acme", 1_700_000_000_000_000)
    }

    fn record(id: &str, created_micros: i64) -> Tenant {
        let mut t = crate::testing::tenant_record(id);
        t.created_at = chrono::DateTime::from_timestamp_micros(created_micros).unwrap();
        t
    }

    #[test]
    fn tokens_are_bound_to_one_incarnation() {
        let jwt = Jwt::hs256(SECRET).unwrap();
        let token = jwt.issue("1", &acme(), ["admin"]).unwrap();
        assert_eq!(
            jwt.verify(&token).unwrap().tenant_incarnation,
            acme().incarnation()
        );
        assert!(jwt.verify_for(&token, &acme()).is_ok());
        // Deleted and created again under the same id: another incarnation.
        let reborn = record("acme", 1_700_000_000_000_001);
        assert_eq!(
            kind(jwt.verify_for(&token, &reborn).unwrap_err()),
            AuthError::WrongTenant
        );
        assert_eq!(
            kind(
                jwt.verify_for(&token, &record("globex", 1_700_000_000_000_000))
                    .unwrap_err()
            ),
            AuthError::WrongTenant
        );
    }

    #[test]
    fn a_token_without_an_incarnation_is_refused() {
        let jwt = Jwt::hs256(SECRET).unwrap();
        let claims =
            serde_json::json!({"sub": "1", "tenant": "acme", "iat": 1, "exp": i64::MAX / 2});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            kind(jwt.verify(&token).unwrap_err()),
            AuthError::InvalidToken
        );
    }

    #[test]
    fn crit_headers_and_future_iat_are_refused() {
        let jwt = Jwt::hs256(SECRET)
            .unwrap()
            .with_leeway(Duration::from_secs(30));
        let claims = jwt.claims("1", &acme(), ["admin"]);
        let mut map = serde_json::to_value(serde_json::json!({
            "sub": "1", "tenant": "acme", "tinc": claims.tenant_incarnation,
            "iat": claims.iat, "exp": claims.exp,
        }))
        .unwrap();
        let sign = |header: &Header, map: &serde_json::Value| {
            jsonwebtoken::encode(header, map, &EncodingKey::from_secret(SECRET)).unwrap()
        };
        let plain = Header::new(Algorithm::HS256);
        assert!(
            jwt.verify(&sign(&plain, &map)).is_ok(),
            "the control token verifies"
        );
        let mut crit = Header::new(Algorithm::HS256);
        crit.crit = Some(vec!["exp".into()]);
        assert_eq!(
            kind(jwt.verify(&sign(&crit, &map)).unwrap_err()),
            AuthError::InvalidToken
        );
        // Issued in the future beyond the leeway; within it is fine.
        map["iat"] = serde_json::json!(claims.iat + 3600);
        assert_eq!(
            kind(jwt.verify(&sign(&plain, &map)).unwrap_err()),
            AuthError::NotYetValid
        );
        map["iat"] = serde_json::json!(claims.iat + 10);
        assert!(jwt.verify(&sign(&plain, &map)).is_ok());
    }

    proptest::proptest! {
        /// Arbitrary text never verifies and never panics the verifier.
        #[test]
        fn garbage_never_verifies(input in proptest::prelude::any::<String>()) {
            let jwt = Jwt::hs256(SECRET).unwrap();
            proptest::prop_assert!(jwt.verify(&input).is_err());
        }

        /// A signed token with any byte of its header or claims changed does
        /// not verify (the signature covers their encoded text).
        #[test]
        fn a_changed_token_does_not_verify(pos in 0usize..1000, b in 0u8..128) {
            let jwt = Jwt::hs256(SECRET).unwrap();
            let token = jwt.issue("7", &acme(), ["admin"]).unwrap();
            let signed = token.rfind('.').unwrap();
            let pos = pos % signed;
            let mut bytes = token.clone().into_bytes();
            bytes[pos] = b;
            let changed = String::from_utf8(bytes).unwrap();
            if changed != token {
                proptest::prop_assert!(jwt.verify(&changed).is_err(), "{}", changed);
            }
        }
    }

    fn kind(err: Error) -> AuthError {
        match err {
            Error::Auth(kind) => kind,
            other => panic!("expected an auth error, got {other:?}"),
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Jwt::hs256(&SECRET[..31]).is_err());
        assert!(Jwt::hs256(SECRET).is_ok());
    }

    #[test]
    fn round_trip_keeps_every_claim() {
        let jwt = Jwt::hs256(SECRET)
            .unwrap()
            .with_issuer("iss")
            .with_audience("aud");
        let mut claims = jwt.claims("7", &acme(), ["admin", "viewer"]);
        claims.nbf = Some(claims.iat);
        let back = jwt.verify(&jwt.sign(&claims).unwrap()).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.exp - back.iat, 3600);
    }

    #[test]
    fn the_tenant_claim_name_is_configurable() {
        let jwt = Jwt::hs256(SECRET)
            .unwrap()
            .with_tenant_claim("company_id")
            .unwrap();
        let token = jwt.issue("7", &acme(), ["admin"]).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        assert!(!payload.is_empty());
        assert_eq!(jwt.verify(&token).unwrap().tenant, acme().id);
        // A verifier expecting the default name finds no tenant claim.
        let default = Jwt::hs256(SECRET).unwrap();
        assert_eq!(
            kind(default.verify(&token).unwrap_err()),
            AuthError::MissingTenantClaim
        );
        assert!(
            Jwt::hs256(SECRET)
                .unwrap()
                .with_tenant_claim("sub")
                .is_err()
        );
        assert!(Jwt::hs256(SECRET).unwrap().with_tenant_claim("").is_err());
    }

    #[test]
    fn leeway_is_honoured() {
        let strict = Jwt::hs256(SECRET)
            .unwrap()
            .with_leeway(Duration::from_secs(0));
        let lenient = Jwt::hs256(SECRET)
            .unwrap()
            .with_leeway(Duration::from_secs(600));
        let mut claims = strict.claims("7", &acme(), [] as [&str; 0]);
        claims.exp = claims.iat - 300;
        let token = strict.sign(&claims).unwrap();
        assert_eq!(kind(strict.verify(&token).unwrap_err()), AuthError::Expired);
        assert!(lenient.verify(&token).is_ok());
    }

    #[test]
    fn role_checks() {
        let jwt = Jwt::hs256(SECRET).unwrap();
        let claims = jwt.claims("7", &acme(), ["editor"]);
        assert!(claims.has_role("editor"));
        assert!(!claims.has_role("admin"));
        assert!(claims.has_any_role(&["admin", "editor"]));
        assert!(!claims.has_any_role(&[]));
        assert!(claims.require_role("editor").is_ok());
        assert_eq!(
            kind(claims.require_role("admin").unwrap_err()),
            AuthError::MissingRole("admin".into())
        );
        assert_eq!(
            kind(
                claims
                    .require_tenant(&record("globex", 1_700_000_000_000_000))
                    .unwrap_err()
            ),
            AuthError::WrongTenant
        );
    }

    #[test]
    fn oversized_and_garbage_tokens_are_invalid() {
        let jwt = Jwt::hs256(SECRET).unwrap();
        for token in ["", "a.b.c", "not a token", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
            assert_eq!(
                kind(jwt.verify(token).unwrap_err()),
                AuthError::InvalidToken
            );
        }
    }

    #[test]
    fn pem_config_errors_are_clear() {
        let err = Jwt::from_pem(JwtAlgorithm::Hs256, None, b"x").unwrap_err();
        assert!(err.to_string().contains("Jwt::hs256"), "{err}");
        let err = Jwt::from_pem(JwtAlgorithm::Rs256, None, b"not pem").unwrap_err();
        assert!(err.to_string().contains("public key"), "{err}");
    }
}
