//! Authentication and authorization for multi-tenant services (feature `auth`).
//!
//! Everything here is framework-free; the web crate builds its resolvers and
//! guards on top of it.
//!
//! - **Tokens** ([`Jwt`], [`Claims`]): JWTs that carry the user (`sub`), the
//!   tenant, the user's roles, `iat` and `exp` (and optionally `iss`/`aud`).
//!   The accepted algorithm is pinned by configuration (HS256, RS256 or
//!   EdDSA); `alg: none`, any other algorithm, a key of another type, a bad
//!   signature, an expired or not-yet-valid token, a missing or invalid tenant
//!   claim are all refused. [`Jwt::verify_for`] also refuses a token of another
//!   tenant than the one a request was resolved to.
//! - **Passwords** ([`Passwords`]): argon2id hashes in PHC format, and a dummy
//!   verification for unknown users so that a missing account and a wrong
//!   password take comparable time.
//! - **Accounts** ([`Accounts`]): registration and login through a shared
//!   lookup table ([`LoginTable`]) that maps a login email to its tenant. A
//!   user's row in the tenant's `users` table and its lookup row are written in
//!   one transaction; login finds the tenant from the email, checks the
//!   password against that tenant's `users`, and returns a token with the
//!   user's roles.
//! - **Sessions** ([`Revocations`]): every token carries its user's token
//!   version, which [`Accounts`] bumps when the user is deactivated, re-roled,
//!   given a new password or logged out everywhere; every process refuses the
//!   old tokens within about a second (`NOTIFY`).
//! - **Brute-force limits** ([`LoginLimits`], [`AttemptTable`]): failed
//!   logins per account and per client, and sign-ups per client, counted in
//!   PostgreSQL by every process, answered with
//!   [`AuthError::TooManyAttempts`] (429).
//! - **Roles and permissions** ([`RolePermissions`], [`Claims::has_role`],
//!   [`Claims::can`]): permissions per role from the tenant's
//!   `roles.permissions`.
//! - **API keys** ([`ApiKeys`]): per-tenant keys `hk_<key id>_<secret>` with
//!   256 random bits, stored only as a keyed hash, with scopes, expiry,
//!   revocation, rotation with a grace period and a throttled `last_used_at`.
//!
//! Every refusal is an [`Error::Auth`] carrying an
//! [`AuthError`] that names its kind, so that the web layer can map it to a
//! status (the variant docs say which) without parsing messages.
//!
//! # Why this is a module of the core, not a crate of its own
//!
//! It is a feature of `hidra` (`auth`, which alone pulls in `jsonwebtoken`,
//! `argon2`, `hmac`, `governor` and `moka`), not a `hidra-auth` crate,
//! for two reasons. Its SQL text against application-named tables (logins,
//! attempts, API keys, each a configurable [`TableName`]) is assembled by
//! the core's crate-private statement builder and quoting, the one audited
//! place where SQL text is built; a separate crate would have to publish
//! that builder or build SQL text of its own. And its refusals are variants
//! of the core's one [`Error`] enum ([`Error::Auth`], `TableMissing`,
//! `Hashing`), which `hidra-axum` maps to HTTP statuses in one place; a
//! second error enum would split that mapping. What it needs of the rest
//! (the registry record and its incarnation, the provisioning's `setup`
//! hook, connections) is public API, so nothing else ties it to the core.
//! Applications that do not want it build without the feature (CI checks
//! that build).
//!
//! # Tenant tables
//!
//! [`Accounts`] and [`RolePermissions`] use three tables in every tenant's
//! schema, as in the reference tenant schema:
//!
//! ```sql
//! CREATE TABLE roles (
//!     id          BIGSERIAL PRIMARY KEY,
//!     name        TEXT NOT NULL UNIQUE,
//!     permissions TEXT[] NOT NULL DEFAULT '{}'
//! );
//! CREATE TABLE users (
//!     id            BIGSERIAL PRIMARY KEY,
//!     email         TEXT NOT NULL UNIQUE,
//!     full_name     TEXT NOT NULL,
//!     password_hash TEXT NOT NULL,
//!     is_active     BOOLEAN NOT NULL DEFAULT TRUE,
//!     created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
//! );
//! CREATE TABLE user_roles (
//!     user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
//!     role_id BIGINT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
//!     PRIMARY KEY (user_id, role_id)
//! );
//! ```
//!
//! The shared tables ([`LoginTable`], [`ApiKeyTable`]) are owned by the
//! application like the registry: create them on purpose with their `ddl()`.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use hidra::auth::{Accounts, ApiKeyTable, ApiKeys, AttemptTable, Jwt, LoginTable, NewApiKey, NewUser};
//! use hidra::{Hidra, NewTenant, TenantId};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # const TENANT_SQL: &str = "";
//! let hidra = Hidra::builder()
//!     .schema_sql("users and roles", TENANT_SQL) // the tenant tables above
//!     .connect("postgres://postgres@127.0.0.1/app")
//!     .await?;
//!
//! // Once, on purpose: the shared tables (after the registry).
//! let mut conn = hidra.acquire_shared().await?;
//! let shared = [LoginTable::default().ddl(), AttemptTable::default().ddl(), ApiKeyTable::default().ddl()];
//! for ddl in shared {
//!     sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&mut *conn).await?;
//! }
//! drop(conn);
//!
//! let jwt = Jwt::hs256(std::env::var("JWT_SECRET")?)?.with_ttl(Duration::from_secs(3600));
//! let accounts = Accounts::new(hidra.clone(), jwt.clone());
//!
//! let acme = hidra.provision(NewTenant::new(TenantId::new("acme")?)).await?;
//! accounts
//!     .register(&acme, NewUser::new("ada@acme.test", "Ada", "correct horse battery").role("admin"))
//!     .await?;
//!
//! // Login finds the tenant from the email.
//! let login = accounts.login("ada@acme.test", "correct horse battery").await?;
//! let claims = jwt.verify_for(login.token(), &acme)?;
//! assert!(claims.has_role("admin"));
//!
//! // An API key for machine clients: the secret is shown once, here.
//! let keys = ApiKeys::new(hidra.clone(), std::env::var("API_KEY_PEPPER")?)?;
//! let created = keys.create(&acme.id, NewApiKey::new("ci").scope("customers:read")).await?;
//! println!("your key (shown once): {}", created.secret());
//! let verified = keys.verify(created.secret()).await?;
//! assert_eq!(verified.tenant(), &acme.id);
//! # Ok(()) }
//! ```

mod accounts;
mod api_keys;
mod jwt;
mod limits;
mod password;
mod revocation;
mod roles;

pub use accounts::{
    Accounts, HalfRegistered, Login, LoginTable, NewUser, PENDING_REGISTRATION_GRACE, PreparedUser,
    Settled, User, UserUpdate,
};
pub use api_keys::{ApiKeyInfo, ApiKeyTable, ApiKeys, CreatedApiKey, NewApiKey, VerifiedKey};
pub use jwt::{Claims, Jwt, JwtAlgorithm};
pub use limits::{AttemptTable, Limit, LoginLimits};
pub use password::Passwords;
pub use revocation::{LOGIN_CHANGES_CHANNEL, Revocations};
pub use roles::{RolePermissions, grants};

use crate::error::Error;
use crate::sql::{Ident, Statement, TableName};

/// Why an authentication or authorization check refused, carried by
/// [`Error::Auth`].
///
/// Messages never say whether an email, a tenant or a key exists beyond what
/// the kind itself says. The web layer answers the kinds documented "401" with
/// one identical unauthenticated response, so that clients cannot tell them
/// apart either.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is malformed, its signature does not verify, it names another
    /// algorithm than the configured one (or `none`), or a required claim is
    /// missing or mistyped. (401)
    #[error("invalid token; sign in again to get a new one")]
    InvalidToken,

    /// The token's `exp` has passed (beyond the configured leeway). (401)
    #[error("the token has expired; sign in again to get a new one")]
    Expired,

    /// The token's `nbf` lies in the future (beyond the configured leeway). (401)
    #[error("the token is not valid yet; check the clock of the issuer")]
    NotYetValid,

    /// The token is valid but carries no tenant claim. (401)
    #[error("the token carries no tenant claim; tokens must be issued for a tenant")]
    MissingTenantClaim,

    /// The token's tenant claim is not a valid tenant id. (401)
    #[error("the token's tenant claim is not a valid tenant id")]
    InvalidTenantClaim,

    /// The token (or key) is valid but was issued for another tenant than the
    /// one the request is for. (403)
    #[error("the credentials were issued for another tenant")]
    WrongTenant,

    /// Unknown email, wrong password or inactive user: deliberately one kind. (401)
    #[error("invalid email or password")]
    InvalidCredentials,

    /// The token's user was logged out everywhere, deactivated, re-roled,
    /// deleted or given a new password since the token was issued
    /// ([`Revocations`]). (401)
    #[error("the session has ended; sign in again")]
    TokenRevoked,

    /// Too many failed logins for this account or from this client, or too
    /// many sign-ups from this client ([`LoginLimits`]); the same for an
    /// account that does not exist. (429 with `Retry-After`)
    #[error("too many attempts; try again in {retry_after_secs} s")]
    TooManyAttempts {
        /// Seconds until an attempt may succeed again.
        retry_after_secs: u64,
    },

    /// The API key is malformed or its secret is wrong. (401)
    #[error("invalid API key; expected the full `hk_<id>_<secret>` key shown at creation")]
    InvalidKey,

    /// No API key has this key id. (401)
    #[error("unknown API key; create a new one")]
    UnknownKey,

    /// The API key was revoked. (401)
    #[error("the API key was revoked; create a new one")]
    KeyRevoked,

    /// The API key has expired. (401)
    #[error("the API key has expired; rotate it or create a new one")]
    KeyExpired,

    /// The API key was replaced by a rotation and its grace period is over, or
    /// it is rotated a second time. (401 when verifying)
    #[error("the API key was replaced by a rotation; use its replacement")]
    KeyRotated,

    /// The caller lacks a role. (403)
    #[error("this needs the role `{0}`")]
    MissingRole(String),

    /// None of the caller's roles grants a permission. (403)
    #[error("this needs the permission `{0}`")]
    MissingPermission(String),

    /// The API key lacks a scope. (403)
    #[error("this needs an API key with the scope `{0}`")]
    MissingScope(String),

    /// Registration: the email is already registered, in this tenant or
    /// another (emails are unique across tenants). (409)
    #[error("this email address is already registered; sign in instead")]
    EmailTaken,

    /// Registration: the email is not of the form `name@domain`. (422)
    #[error("invalid email address: expected `name@domain`, at most 254 characters")]
    InvalidEmail,

    /// Registration: the password is too short or too long. (422)
    #[error("the password must be {min} to {max} bytes long")]
    InvalidPassword {
        /// The configured minimum length, in bytes.
        min: usize,
        /// The maximum length, in bytes.
        max: usize,
    },

    /// Registration: a requested role does not exist in the tenant's `roles`
    /// table. (422)
    #[error("role `{0}` does not exist in this tenant; create it in its `roles` table first")]
    UnknownRole(String),
}

impl AuthError {
    /// Whether this kind means "who are you?" (no or bad credentials), as
    /// opposed to "you may not" ([`WrongTenant`](Self::WrongTenant),
    /// [`MissingRole`](Self::MissingRole), …) or a bad registration request.
    /// The web layer answers the first with 401.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::InvalidToken
                | AuthError::Expired
                | AuthError::NotYetValid
                | AuthError::MissingTenantClaim
                | AuthError::InvalidTenantClaim
                | AuthError::InvalidCredentials
                | AuthError::TokenRevoked
                | AuthError::InvalidKey
                | AuthError::UnknownKey
                | AuthError::KeyRevoked
                | AuthError::KeyExpired
                | AuthError::KeyRotated
        )
    }

    /// Whether this kind means "authenticated, but not allowed": a wrong
    /// tenant, or a missing role, permission or scope. The web layer answers
    /// it with 403.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            AuthError::WrongTenant
                | AuthError::MissingRole(_)
                | AuthError::MissingPermission(_)
                | AuthError::MissingScope(_)
        )
    }
}

/// Shorthand for `Err(Error::Auth(kind))`.
pub(crate) fn refuse<T>(kind: AuthError) -> crate::Result<T> {
    Err(Error::Auth(kind))
}

/// The configuration every shared auth table has: its schema-qualified name
/// and its optional foreign key to the registry. `$default` is the default
/// table, `$what` names it in errors, `$unreferenced` says what to do without
/// the foreign key.
macro_rules! shared_table_config {
    ($(#[$doc:meta])* $ty:ident, $default:literal, $what:literal, $unreferenced:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $ty {
            table: TableName,
            tenants: Option<TenantsRef>,
        }

        impl Default for $ty {
            fn default() -> Self {
                $ty {
                    table: TableName::parse($default).expect("valid default table name"),
                    tenants: Some(TenantsRef::default()),
                }
            }
        }

        impl $ty {
            #[doc = concat!("The ", $what, " `table`, which must be schema-qualified (`schema.name`).")]
            pub fn new(table: &str) -> Result<Self> {
                Ok($ty {
                    table: shared_table(table, $what)?,
                    tenants: Some(TenantsRef::default()),
                })
            }

            /// References the registry `table` and its id `column` instead of
            /// `public.tenants (id)`.
            pub fn referencing(mut self, table: &str, column: &str) -> Result<Self> {
                self.tenants = Some(TenantsRef::new(table, column)?);
                Ok(self)
            }

            /// No foreign key to the registry (for a custom
            /// [`TenantStore`](crate::TenantStore) that is not a table):
            #[doc = concat!("then ", $unreferenced, " yourself when deprovisioning a tenant.")]
            pub fn without_tenant_reference(mut self) -> Self {
                self.tenants = None;
                self
            }

            /// The table name.
            pub fn table(&self) -> &TableName {
                &self.table
            }
        }
    };
}
pub(crate) use shared_table_config;

/// Which registry table a shared auth table references, so that removing a
/// tenant removes its logins and keys (`ON DELETE CASCADE`).
#[derive(Clone, Debug)]
pub(crate) struct TenantsRef {
    pub(crate) table: TableName,
    pub(crate) column: Ident,
}

impl Default for TenantsRef {
    fn default() -> Self {
        TenantsRef {
            table: TableName::parse("public.tenants").expect("valid default table name"),
            column: Ident::new("id", "column name").expect("valid default column name"),
        }
    }
}

impl TenantsRef {
    pub(crate) fn new(table: &str, column: &str) -> crate::Result<Self> {
        Ok(TenantsRef {
            table: TableName::parse(table)?,
            column: Ident::new(column, "registry id column name")?,
        })
    }

    /// ` REFERENCES "public"."tenants" ("id") ON DELETE CASCADE`, or nothing.
    pub(crate) fn clause(this: &Option<TenantsRef>) -> Statement {
        let mut sql = Statement::new();
        if let Some(r) = this {
            sql.sql(" REFERENCES ")
                .table(&r.table)
                .sql(" (")
                .ident(&r.column)
                .sql(") ON DELETE CASCADE");
        }
        sql
    }
}

/// Parses a shared table name, which must be schema-qualified: shared tables
/// are used from tenant-bound transactions, whose `search_path` starts with
/// the tenant's schema.
pub(crate) fn shared_table(name: &str, what: &'static str) -> crate::Result<TableName> {
    let table = TableName::parse(name)?;
    if table.schema().is_none() {
        return Err(Error::InvalidConfig(
            format!(
                "{what} {name:?} must be schema-qualified (e.g. `public.{name}`): \
                 it is used from tenant-bound transactions"
            )
            .into(),
        ));
    }
    Ok(table)
}

/// Fills `buf` from the operating system's random source.
///
/// # Panics
///
/// If the operating system's random source fails, as `rand::rng()` does.
pub(crate) fn os_random(buf: &mut [u8]) {
    use rand::TryRngCore;
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .expect("the operating system's random source failed");
}

/// Lowercase hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }

    #[test]
    fn shared_tables_must_be_qualified() {
        assert!(shared_table("public.hidra_logins", "t").is_ok());
        assert!(shared_table("hidra_logins", "t").is_err());
    }

    #[test]
    fn kinds_are_classified() {
        assert!(AuthError::Expired.is_unauthenticated());
        assert!(!AuthError::Expired.is_forbidden());
        assert!(AuthError::WrongTenant.is_forbidden());
        assert!(AuthError::MissingRole("admin".into()).is_forbidden());
        assert!(!AuthError::EmailTaken.is_unauthenticated());
        assert!(!AuthError::EmailTaken.is_forbidden());
    }

    #[test]
    fn os_random_fills() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        os_random(&mut a);
        os_random(&mut b);
        assert_ne!(a, b);
    }
}
