//! Per-tenant API keys: [`ApiKeys`] over the shared [`ApiKeyTable`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, Row, SqlStr};

use super::{AuthError, TenantsRef, grants, hex, os_random, refuse, shared_table};
use crate::error::{Error, Result, db_code, sqlstate};
use crate::hidra::Hidra;
use crate::sql::{self, TableName};
use crate::tenant::TenantId;

/// The visible prefix of every key.
const PREFIX: &str = "hk_";
/// Random bytes in a key id (hex-encoded: 24 characters).
const KEY_ID_BYTES: usize = 12;
/// Random bytes in a secret (hex-encoded: 64 characters): 256 bits.
const SECRET_BYTES: usize = 32;
/// The shortest pepper accepted, in bytes.
const MIN_PEPPER_BYTES: usize = 32;
/// Domain separation for the keyed hash.
const HASH_CONTEXT: &[u8] = b"hidra-api-key-v1";
/// The longest rotation grace period accepted.
const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Keys whose last flush is remembered before stale entries are pruned.
const MAX_TRACKED_KEYS: usize = 10_000;
/// SQLSTATE `foreign_key_violation`.
const FOREIGN_KEY_VIOLATION: &str = "23503";

type HmacSha256 = Hmac<Sha256>;

super::shared_table_config! {
    /// The shared table of API keys (default `public.hidra_api_keys`).
    ///
    /// The application owns it: create it on purpose with
    /// [`ApiKeys::install`] (or run [`ApiKeyTable::ddl`] yourself), after the
    /// registry table. Rows reference the registry
    /// (`ON DELETE CASCADE`, default `public.tenants (id)`), so deprovisioning a
    /// tenant removes its keys.
    ///
    /// ```
    /// use hidra::auth::ApiKeyTable;
    ///
    /// let ddl = ApiKeyTable::default().ddl();
    /// assert!(ddl.contains("CREATE TABLE IF NOT EXISTS \"public\".\"hidra_api_keys\""));
    /// assert!(ddl.contains("hash         BYTEA NOT NULL"));
    /// ```
    ApiKeyTable, "public.hidra_api_keys", "API key table", "revoke the tenant's keys"
}

impl ApiKeyTable {
    /// The recommended DDL: the table, keyed by key id, and an index on the
    /// tenant. Idempotent.
    pub fn ddl(&self) -> String {
        let bare = self.table.name().as_str();
        sql::template(
            r#"-- Hidra API keys. Only a keyed hash (HMAC-SHA-256 with a server-side pepper) of
-- each secret is stored; the key id is not secret. The application owns this
-- table: run this on purpose, after the tenant registry. Safe to run twice.
CREATE TABLE IF NOT EXISTS {t} (
    key_id       TEXT NOT NULL,
    tenant_id    TEXT NOT NULL{fk},
    name         TEXT NOT NULL,
    hash         BYTEA NOT NULL,
    scopes       TEXT[] NOT NULL DEFAULT '{{}}',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    rotated_from TEXT REFERENCES {t} (key_id) ON DELETE SET NULL,
    grace_until  TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    CONSTRAINT {pkey} PRIMARY KEY (key_id),
    CONSTRAINT {id_check} CHECK (key_id ~ '^[0-9a-f]{{24}}$'),
    CONSTRAINT {hash_check} CHECK (octet_length(hash) = 32)
);
CREATE INDEX IF NOT EXISTS {idx} ON {t} (tenant_id, created_at);
"#,
        )
        .table("t", &self.table)
        .append("fk", &TenantsRef::clause(&self.tenants))
        .name("pkey", &format!("{bare}_pkey"))
        .name("id_check", &format!("{bare}_key_id_check"))
        .name("hash_check", &format!("{bare}_hash_check"))
        .name("idx", &format!("{bare}_tenant_id_idx"))
        .statement()
        .into_string()
    }
}

/// What [`ApiKeys::create`] needs: a name, optional scopes and an optional expiry.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    name: String,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
}

impl NewApiKey {
    /// A key called `name` (for people: "CI", "billing export"), without
    /// scopes and without expiry.
    pub fn new(name: impl Into<String>) -> Self {
        NewApiKey {
            name: name.into(),
            scopes: Vec::new(),
            expires_at: None,
        }
    }

    /// Adds a scope (`customers:read`; `*` and `prefix:*` as in
    /// [`grants`](super::grants)). A key without scopes passes no scope check.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Expires the key at `at`.
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Expires the key `ttl` from now.
    pub fn expires_in(self, ttl: Duration) -> Self {
        let at = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.expires_at(at)
    }
}

/// An API key as stored, without anything secret: for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiKeyInfo {
    /// The non-secret key id (the part after `hk_`).
    pub key_id: String,
    /// The tenant the key belongs to.
    pub tenant: TenantId,
    /// Its name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it expires, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key this one replaced by a rotation, if any.
    pub rotated_from: Option<String>,
    /// When a rotation replaced it: the end of its grace period.
    pub grace_until: Option<DateTime<Utc>>,
    /// When it was last used, to within the touch interval.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKeyInfo {
    /// `hk_<key id>`: the visible start of the key, to show in listings.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}", self.key_id)
    }

    /// Whether the key is accepted at `now`: not revoked, not expired, not
    /// past its rotation grace period.
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none()
            && self.expires_at.is_none_or(|t| t > now)
            && self.grace_until.is_none_or(|t| t > now)
    }
}

/// A newly created key: the full key, shown exactly once, and its record.
///
/// Hand [`secret`](CreatedApiKey::secret) to the client and drop it: it is not
/// stored anywhere and cannot be recovered. `Debug` does not print it.
#[derive(Clone)]
pub struct CreatedApiKey {
    key: String,
    info: ApiKeyInfo,
}

impl fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("key", &format_args!("{}_[redacted]", self.info.prefix()))
            .field("info", &self.info)
            .finish()
    }
}

impl CreatedApiKey {
    /// The full key, `hk_<key id>_<secret>`.
    pub fn secret(&self) -> &str {
        &self.key
    }

    /// The full key, by value.
    pub fn into_secret(self) -> String {
        self.key
    }

    /// The stored record.
    pub fn info(&self) -> &ApiKeyInfo {
        &self.info
    }

    /// The non-secret key id.
    pub fn key_id(&self) -> &str {
        &self.info.key_id
    }
}

/// A key that [`ApiKeys::verify`] accepted: which tenant it belongs to and
/// what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedKey {
    key_id: String,
    tenant: TenantId,
    name: String,
    scopes: Vec<String>,
}

impl VerifiedKey {
    /// The non-secret key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The tenant the key belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's scopes.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Whether one of the key's scopes grants `scope` (see [`grants`](super::grants)).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| grants(s, scope))
    }

    /// `Ok` if the key has `scope`, else [`AuthError::MissingScope`].
    pub fn require_scope(&self, scope: &str) -> Result<()> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            refuse(AuthError::MissingScope(scope.to_owned()))
        }
    }

    /// `Ok` if the key belongs to `tenant`, else [`AuthError::WrongTenant`].
    pub fn require_tenant(&self, tenant: &TenantId) -> Result<()> {
        if &self.tenant == tenant {
            Ok(())
        } else {
            refuse(AuthError::WrongTenant)
        }
    }
}

/// Creates, lists, rotates, revokes and verifies per-tenant API keys.
///
/// Cheap to clone; clones share the `last_used_at` throttle.
///
/// # Format and storage
///
/// A key reads `hk_<key id>_<secret>`: `hk_` marks it as a Hidra key (secret
/// scanners can look for it), the key id (96 random bits, 24 hex digits) is
/// not secret and finds the row, and the secret (256 bits from the operating
/// system's random source, 64 hex digits) is shown once, at creation, and
/// never stored. The table keeps `HMAC-SHA-256(pepper, context ‖ key id ‖ secret)`,
/// where the pepper is a server-side key that is not in the database, and the
/// check compares in constant time.
///
/// # Why HMAC and not argon2
///
/// Passwords are slow-hashed because people choose guessable ones: the cost
/// of each guess is the only defence once a hash leaks. An API key's secret is
/// 256 uniformly random bits: no amount of guessing finds it, fast hash or
/// not, so a slow hash would buy nothing. It would cost a great deal, though:
/// keys are verified on *every* request, and tens of milliseconds of argon2 per
/// request would be both a latency tax and a denial-of-service lever. A keyed
/// hash (HMAC with a pepper kept outside the database) costs a microsecond,
/// and a stolen table alone does not even allow checking a candidate key.
///
/// # Lifecycle
///
/// Keys can expire (`expires_at`), be revoked (at once), and be rotated: a
/// rotation creates a replacement with the same name, scopes and lifetime and
/// keeps the old key valid for a grace period (default 24 hours) so that
/// clients can switch without downtime. `last_used_at` is refreshed at most
/// once per interval (default 60 s) per key and process, not on every request.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use hidra::auth::{ApiKeys, NewApiKey};
/// use hidra::{Hidra, TenantId};
///
/// # async fn run(hidra: Hidra) -> hidra::Result<()> {
/// let pepper = std::env::var("API_KEY_PEPPER").expect("32+ random bytes");
/// let keys = ApiKeys::new(hidra, pepper)?
///     .with_rotation_grace(Duration::from_secs(3600))
///     .with_touch_interval(Duration::from_secs(60));
///
/// let acme = TenantId::new("acme")?;
/// let created = keys
///     .create(&acme, NewApiKey::new("ci").scope("customers:*").expires_in(Duration::from_secs(90 * 86400)))
///     .await?;
/// println!("{}", created.secret()); // shown once
///
/// let key = keys.verify(created.secret()).await?;
/// key.require_scope("customers:read")?;
///
/// let replacement = keys.rotate(&acme, created.key_id()).await?; // old key valid for an hour
/// keys.revoke(&acme, replacement.key_id()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ApiKeys {
    hidra: Hidra,
    pepper: Arc<[u8]>,
    table: ApiKeyTable,
    grace: Duration,
    touch: Arc<TouchThrottle>,
    q: Statements,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("table", &self.table)
            .field("pepper", &"[redacted]")
            .field("rotation_grace", &self.grace)
            .field("touch_interval", &self.touch.interval)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Statements {
    insert: SqlStr,
    list: SqlStr,
    get: SqlStr,
    lock: SqlStr,
    find: SqlStr,
    owner: SqlStr,
    end_grace: SqlStr,
    revoke: SqlStr,
    revoke_all: SqlStr,
    touch: SqlStr,
}

/// The columns of [`ApiKeyInfo`], in its field order.
const INFO_COLUMNS: &str = "key_id, tenant_id, name, scopes, created_at, expires_at, revoked_at, \
                            rotated_from, grace_until, last_used_at";

impl Statements {
    fn new(table: &ApiKeyTable) -> Self {
        let t = &table.table;
        let on = |text| {
            sql::template(text)
                .table("t", t)
                .sql("cols", INFO_COLUMNS)
                .finish()
        };
        let on_table = |text| sql::template(text).table("t", t).finish();
        Statements {
            insert: on(
                "INSERT INTO {t} (key_id, tenant_id, name, hash, scopes, expires_at, rotated_from) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {cols}",
            ),
            list: on("SELECT {cols} FROM {t} WHERE tenant_id = $1 ORDER BY created_at, key_id"),
            get: on("SELECT {cols} FROM {t} WHERE tenant_id = $1 AND key_id = $2"),
            lock: on("SELECT {cols} FROM {t} WHERE tenant_id = $1 AND key_id = $2 FOR UPDATE"),
            find: on_table(
                "SELECT tenant_id, name, hash, scopes, expires_at, revoked_at, grace_until, \
                 last_used_at FROM {t} WHERE key_id = $1",
            ),
            owner: on_table("SELECT tenant_id FROM {t} WHERE key_id = $1"),
            end_grace: on_table("UPDATE {t} SET grace_until = $2 WHERE key_id = $1"),
            revoke: on_table(
                "UPDATE {t} SET revoked_at = COALESCE(revoked_at, now()) \
                 WHERE tenant_id = $1 AND key_id = $2 RETURNING key_id",
            ),
            revoke_all: on_table(
                "UPDATE {t} SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL",
            ),
            touch: on_table(
                "UPDATE {t} SET last_used_at = GREATEST(last_used_at, $2) WHERE key_id = $1",
            ),
        }
    }
}

/// Splits `hk_<key id>_<secret>`, checking lengths and alphabet.
fn parse_key(presented: &str) -> Option<(&str, &str)> {
    let (key_id, secret) = presented.strip_prefix(PREFIX)?.split_once('_')?;
    let lower_hex = |s: &str, bytes: usize| {
        s.len() == bytes * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (lower_hex(key_id, KEY_ID_BYTES) && lower_hex(secret, SECRET_BYTES)).then_some((key_id, secret))
}

/// A fresh key id and secret, hex-encoded.
fn generate() -> (String, String) {
    let mut id = [0u8; KEY_ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    os_random(&mut id);
    os_random(&mut secret);
    (hex(&id), hex(&secret))
}

fn decode_info(row: &PgRow) -> Result<ApiKeyInfo> {
    let raw_tenant: String = row
        .try_get(1)
        .map_err(Error::db("decoding an API key row"))?;
    let tenant = TenantId::new(&raw_tenant).map_err(|e| Error::CorruptRecord {
        id: raw_tenant.clone(),
        reason: format!("API key row with an invalid tenant id: {e}"),
    })?;
    let get = Error::db("decoding an API key row");
    let info = (|| {
        Ok::<_, sqlx::Error>(ApiKeyInfo {
            key_id: row.try_get(0)?,
            tenant,
            name: row.try_get(2)?,
            scopes: row.try_get(3)?,
            created_at: row.try_get(4)?,
            expires_at: row.try_get(5)?,
            revoked_at: row.try_get(6)?,
            rotated_from: row.try_get(7)?,
            grace_until: row.try_get(8)?,
            last_used_at: row.try_get(9)?,
        })
    })();
    info.map_err(get)
}

impl ApiKeys {
    /// Keys of `hidra`'s tenants in [`ApiKeyTable::default`], hashed with
    /// `pepper`: at least 32 bytes, random, kept out of the database (an
    /// environment variable or a secret store). Changing the pepper
    /// invalidates every key.
    pub fn new(hidra: Hidra, pepper: impl AsRef<[u8]>) -> Result<Self> {
        let pepper = pepper.as_ref();
        if pepper.len() < MIN_PEPPER_BYTES {
            return Err(Error::InvalidConfig(
                format!(
                    "the API key pepper is {} bytes long; use at least {MIN_PEPPER_BYTES} random bytes",
                    pepper.len()
                )
                .into(),
            ));
        }
        let table = ApiKeyTable::default();
        Ok(ApiKeys {
            hidra,
            pepper: pepper.into(),
            q: Statements::new(&table),
            table,
            grace: Duration::from_secs(24 * 60 * 60),
            touch: Arc::new(TouchThrottle::new(Duration::from_secs(60))),
        })
    }

    /// Creates the API key table, where missing. Like [`Hidra::install`]
    /// (run that first: the table refers to the registry): idempotent, one
    /// transaction, safe from several processes at once.
    pub async fn install(&self) -> Result<()> {
        self.hidra
            .install_ddl("installing the API key table", &self.table.ddl())
            .await
    }

    /// Uses another table.
    pub fn with_table(mut self, table: ApiKeyTable) -> Self {
        self.q = Statements::new(&table);
        self.table = table;
        self
    }

    /// How long a rotated key stays valid after [`rotate`](Self::rotate)
    /// (default 24 hours, at most a year; zero ends it at once).
    pub fn with_rotation_grace(mut self, grace: Duration) -> Self {
        self.grace = grace.min(MAX_GRACE);
        self
    }

    /// At most one `last_used_at` write per key per `interval` from this
    /// process (default 60 s; zero writes on every verification).
    pub fn with_touch_interval(mut self, interval: Duration) -> Self {
        self.touch = Arc::new(TouchThrottle::new(interval));
        self
    }

    /// The table.
    pub fn table(&self) -> &ApiKeyTable {
        &self.table
    }

    /// The non-secret key id of a presented key, if it is well-formed: for logs.
    pub fn key_id_of(presented: &str) -> Option<&str> {
        parse_key(presented).map(|(id, _)| id)
    }

    fn mac(&self, key_id: &str, secret: &str) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.pepper).expect("HMAC accepts keys of any length");
        mac.update(HASH_CONTEXT);
        mac.update(b"\0");
        mac.update(key_id.as_bytes());
        mac.update(b"\0");
        mac.update(secret.as_bytes());
        mac
    }

    fn map_err(&self, context: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |err| match db_code(&err) {
            Some((code, _)) if code == sqlstate::UNDEFINED_TABLE => Error::TableMissing {
                table: self.table.table.to_string(),
                create: "ApiKeys::install()",
            },
            _ => Error::Database {
                context,
                source: err,
            },
        }
    }

    /// Creates a key for `tenant`. The returned [`CreatedApiKey::secret`] is
    /// the only time the full key is available.
    ///
    /// Fails with [`Error::NotFound`] if the tenant is not registered (through
    /// the table's foreign key).
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails.
    pub async fn create(&self, tenant: &TenantId, new: NewApiKey) -> Result<CreatedApiKey> {
        let mut conn = self.hidra.acquire_shared().await?;
        let mut scopes = new.scopes;
        scopes.sort();
        scopes.dedup();
        self.insert(&mut conn, tenant, &new.name, &scopes, new.expires_at, None)
            .await
    }

    async fn insert(
        &self,
        conn: &mut PgConnection,
        tenant: &TenantId,
        name: &str,
        scopes: &[String],
        expires_at: Option<DateTime<Utc>>,
        rotated_from: Option<&str>,
    ) -> Result<CreatedApiKey> {
        let (key_id, secret) = generate();
        let hash = self.mac(&key_id, &secret).finalize().into_bytes();
        let row = sqlx::query(self.q.insert.clone())
            .bind(&key_id)
            .bind(tenant.as_str())
            .bind(name)
            .bind(&hash[..])
            .bind(scopes)
            .bind(expires_at)
            .bind(rotated_from)
            .fetch_one(conn)
            .await
            .map_err(|err| match db_code(&err) {
                Some((code, _)) if code == FOREIGN_KEY_VIOLATION => Error::NotFound(tenant.clone()),
                _ => self.map_err("creating an API key")(err),
            })?;
        let info = decode_info(&row)?;
        tracing::debug!(tenant = %tenant, key_id = %key_id, "created an API key");
        Ok(CreatedApiKey {
            key: format!("{PREFIX}{key_id}_{secret}"),
            info,
        })
    }

    /// Every key of `tenant`, oldest first, revoked and expired ones included.
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<ApiKeyInfo>> {
        let mut conn = self.hidra.acquire_shared().await?;
        let rows = sqlx::query(self.q.list.clone())
            .bind(tenant.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(self.map_err("listing API keys"))?;
        rows.iter().map(decode_info).collect()
    }

    /// The key `key_id` of `tenant`, if it exists.
    pub async fn get(&self, tenant: &TenantId, key_id: &str) -> Result<Option<ApiKeyInfo>> {
        let mut conn = self.hidra.acquire_shared().await?;
        let row = sqlx::query(self.q.get.clone())
            .bind(tenant.as_str())
            .bind(key_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(self.map_err("reading an API key"))?;
        row.as_ref().map(decode_info).transpose()
    }

    /// The tenant that owns the key `key_id` (the 24 hex digits after `hk_`;
    /// [`key_id_of`](Self::key_id_of) takes them from a whole key), or `None`
    /// when no key has this id. Revoked, expired and rotated keys keep their
    /// owner.
    ///
    /// [`get`](Self::get), [`rotate`](Self::rotate) and
    /// [`revoke`](Self::revoke) take the tenant so that a request can only
    /// reach its own tenant's keys; this lookup is for operators' tools that
    /// start from a key id alone (`hidra api-key revoke`), not for request
    /// handlers. Fails with [`Error::TableMissing`] when the table does not
    /// exist.
    ///
    /// ```no_run
    /// # async fn run(keys: hidra::auth::ApiKeys) -> hidra::Result<()> {
    /// let key_id = "0123456789abcdef01234567";
    /// match keys.owner(key_id).await? {
    ///     Some(tenant) => keys.revoke(&tenant, key_id).await?,
    ///     None => eprintln!("no API key hk_{key_id}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn owner(&self, key_id: &str) -> Result<Option<TenantId>> {
        let mut conn = self.hidra.acquire_shared().await?;
        let owner: Option<String> = sqlx::query_scalar(self.q.owner.clone())
            .bind(key_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(self.map_err("looking up an API key's tenant"))?;
        owner
            .map(|raw| {
                TenantId::new(&raw).map_err(|e| Error::CorruptRecord {
                    reason: format!("API key row with an invalid tenant id: {e}"),
                    id: raw,
                })
            })
            .transpose()
    }

    /// Replaces the key `key_id` of `tenant` with a new one (same name and
    /// scopes; if it expires, the same lifetime counted from now). The old key
    /// stays valid for the rotation grace period.
    ///
    /// Fails with [`AuthError::UnknownKey`] if `tenant` has no such key,
    /// [`AuthError::KeyRevoked`] if it was revoked and
    /// [`AuthError::KeyRotated`] if it was rotated already (rotate its
    /// replacement instead).
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails.
    pub async fn rotate(&self, tenant: &TenantId, key_id: &str) -> Result<CreatedApiKey> {
        let mut conn = self.hidra.acquire_shared().await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning a key rotation"))?;
        let row = sqlx::query(self.q.lock.clone())
            .bind(tenant.as_str())
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.map_err("reading an API key to rotate"))?;
        let Some(old) = row.as_ref().map(decode_info).transpose()? else {
            return refuse(AuthError::UnknownKey);
        };
        if old.revoked_at.is_some() {
            return refuse(AuthError::KeyRevoked);
        }
        if old.grace_until.is_some() {
            return refuse(AuthError::KeyRotated);
        }
        let now = Utc::now();
        let expires_at = old
            .expires_at
            .and_then(|at| now.checked_add_signed(at - old.created_at));
        let new = self
            .insert(
                &mut tx,
                tenant,
                &old.name,
                &old.scopes,
                expires_at,
                Some(&old.key_id),
            )
            .await?;
        let grace = chrono::Duration::from_std(self.grace).expect("grace is at most a year");
        sqlx::query(self.q.end_grace.clone())
            .bind(&old.key_id)
            .bind(now + grace)
            .execute(&mut *tx)
            .await
            .map_err(self.map_err("ending a rotated key's life"))?;
        tx.commit()
            .await
            .map_err(Error::db("committing a key rotation"))?;
        tracing::debug!(tenant = %tenant, old = %old.key_id, new = %new.key_id(), "rotated an API key");
        Ok(new)
    }

    /// Revokes the key `key_id` of `tenant` at once. Revoking a revoked key
    /// does nothing; an unknown key fails with [`AuthError::UnknownKey`].
    pub async fn revoke(&self, tenant: &TenantId, key_id: &str) -> Result<()> {
        let mut conn = self.hidra.acquire_shared().await?;
        let revoked: Option<String> = sqlx::query_scalar(self.q.revoke.clone())
            .bind(tenant.as_str())
            .bind(key_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(self.map_err("revoking an API key"))?;
        match revoked {
            Some(_) => {
                tracing::debug!(tenant = %tenant, key_id = %key_id, "revoked an API key");
                Ok(())
            }
            None => refuse(AuthError::UnknownKey),
        }
    }

    /// Revokes every key of `tenant` at once, those in a rotation's grace
    /// period included (for an operator answering a leak); returns how many
    /// were revoked.
    pub async fn revoke_all(&self, tenant: &TenantId) -> Result<u64> {
        let mut conn = self.hidra.acquire_shared().await?;
        let done = sqlx::query(self.q.revoke_all.clone())
            .bind(tenant.as_str())
            .execute(&mut *conn)
            .await
            .map_err(self.map_err("revoking a tenant's API keys"))?;
        tracing::info!(tenant = %tenant, revoked = done.rows_affected(), "revoked every API key of a tenant");
        Ok(done.rows_affected())
    }

    /// Verifies a presented key and returns its tenant and scopes.
    ///
    /// Fails with [`AuthError::InvalidKey`] when it is malformed or its secret
    /// is wrong, [`AuthError::UnknownKey`] when no key has its id, and — only
    /// once the secret is proven — [`AuthError::KeyRevoked`],
    /// [`AuthError::KeyExpired`] or [`AuthError::KeyRotated`]. The tenant's
    /// status is not checked here: the web layer does that for every request.
    pub async fn verify(&self, presented: &str) -> Result<VerifiedKey> {
        let Some((key_id, secret)) = parse_key(presented) else {
            tracing::debug!("refused a malformed API key");
            return refuse(AuthError::InvalidKey);
        };
        let mut conn = self.hidra.acquire_shared().await?;
        let row = sqlx::query(self.q.find.clone())
            .bind(key_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(self.map_err("reading an API key"))?;
        let Some(row) = row else {
            tracing::debug!(key_id, "refused an unknown API key");
            return refuse(AuthError::UnknownKey);
        };
        type Found = (
            String,
            String,
            Vec<u8>,
            Vec<String>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        );
        let (raw_tenant, name, hash, scopes, expires_at, revoked_at, grace_until, last_used_at): Found =
            sqlx::FromRow::from_row(&row).map_err(Error::db("decoding an API key row"))?;
        if self.mac(key_id, secret).verify_slice(&hash).is_err() {
            tracing::debug!(key_id, "refused an API key with a wrong secret");
            return refuse(AuthError::InvalidKey);
        }
        let now = Utc::now();
        let refusal = if revoked_at.is_some() {
            Some(AuthError::KeyRevoked)
        } else if expires_at.is_some_and(|t| t <= now) {
            Some(AuthError::KeyExpired)
        } else if grace_until.is_some_and(|t| t <= now) {
            Some(AuthError::KeyRotated)
        } else {
            None
        };
        if let Some(kind) = refusal {
            tracing::debug!(key_id, refusal = ?kind, "refused an API key");
            return refuse(kind);
        }
        let tenant = TenantId::new(&raw_tenant).map_err(|e| Error::CorruptRecord {
            id: raw_tenant.clone(),
            reason: format!("API key row with an invalid tenant id: {e}"),
        })?;
        let since = last_used_at.map(|t| (now - t).to_std().unwrap_or(Duration::ZERO));
        if self.touch.due(key_id, Instant::now(), since)
            && let Err(error) = sqlx::query(self.q.touch.clone())
                .bind(key_id)
                .bind(now)
                .execute(&mut *conn)
                .await
        {
            tracing::warn!(key_id, %error, "could not record an API key's last use");
        }
        Ok(VerifiedKey {
            key_id: key_id.to_owned(),
            tenant,
            name,
            scopes,
        })
    }
}

/// Remembers, per key, when this process last wrote `last_used_at`.
#[derive(Debug)]
struct TouchThrottle {
    interval: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl TouchThrottle {
    fn new(interval: Duration) -> Self {
        TouchThrottle {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key_id`, used at `now`, should have its `last_used_at`
    /// written; `since_stored` is how long ago the stored value says it was
    /// last used (another process may have written it).
    fn due(&self, key_id: &str, now: Instant, since_stored: Option<Duration>) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last
            .get(key_id)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.interval)
        {
            return false;
        }
        if last.len() >= MAX_TRACKED_KEYS {
            let interval = self.interval;
            last.retain(|_, at| now.saturating_duration_since(*at) < interval);
        }
        if let Some(ago) = since_stored.filter(|ago| *ago < self.interval) {
            last.insert(key_id.to_owned(), now.checked_sub(ago).unwrap_or(now));
            return false;
        }
        last.insert(key_id.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary presented keys never panic the parser, and what it
        /// accepts has exactly the generated shape.
        #[test]
        fn any_presented_key_parses_safely(input in any::<String>()) {
            if let Some((id, secret)) = parse_key(&input) {
                prop_assert_eq!(id.len(), KEY_ID_BYTES * 2);
                prop_assert_eq!(secret.len(), SECRET_BYTES * 2);
                let rebuilt = format!("{PREFIX}{id}_{secret}");
                prop_assert_eq!(input.as_str(), rebuilt.as_str());
            }
        }

        /// A generated key with any one character changed is refused or
        /// names another key id or secret.
        #[test]
        fn a_changed_key_is_not_the_key(pos in 0usize..200, c in any::<char>()) {
            let (id, secret) = generate();
            let key = format!("{PREFIX}{id}_{secret}");
            let pos = pos % key.len();
            let mut changed: String = key.chars().take(pos).collect();
            changed.push(c);
            changed.extend(key.chars().skip(pos + 1));
            if changed != key {
                prop_assert_ne!(parse_key(&changed), Some((id.as_str(), secret.as_str())));
            }
        }
    }

    #[test]
    fn generated_keys_parse() {
        let (id, secret) = generate();
        assert_eq!(id.len(), 24);
        assert_eq!(secret.len(), 64);
        let key = format!("hk_{id}_{secret}");
        assert_eq!(parse_key(&key), Some((id.as_str(), secret.as_str())));
        assert_eq!(ApiKeys::key_id_of(&key), Some(id.as_str()));
        let (id2, secret2) = generate();
        assert_ne!(id, id2);
        assert_ne!(secret, secret2);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let id = "0".repeat(24);
        let secret = "a".repeat(64);
        for bad in [
            String::new(),
            format!("hk_{id}"),
            format!("hk_{id}_"),
            format!("xx_{id}_{secret}"),
            format!("hk_{id}_{secret}0"),
            format!("hk_{}_{secret}", "0".repeat(23)),
            format!("hk_{id}_{}", "A".repeat(64)),
            format!("hk_{id}_{}", "g".repeat(64)),
            format!(" hk_{id}_{secret}"),
        ] {
            assert_eq!(parse_key(&bad), None, "{bad:?} parsed");
        }
    }

    #[test]
    fn the_hash_binds_pepper_id_and_secret() {
        let keys = |pepper: &[u8]| {
            let mac = |id: &str, s: &str| {
                let mut m = HmacSha256::new_from_slice(pepper).unwrap();
                m.update(HASH_CONTEXT);
                m.update(b"\0");
                m.update(id.as_bytes());
                m.update(b"\0");
                m.update(s.as_bytes());
                m.finalize().into_bytes().to_vec()
            };
            (mac("aa", "bb"), mac("aab", "b"))
        };
        let (one, shifted) = keys(&[1; 32]);
        let (other_pepper, _) = keys(&[2; 32]);
        assert_eq!(one.len(), 32);
        assert_ne!(one, shifted);
        assert_ne!(one, other_pepper);
    }

    #[test]
    fn throttle_writes_once_per_interval() {
        let t = TouchThrottle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert!(t.due("k", start, None));
        assert!(!t.due("k", start + Duration::from_secs(59), None));
        assert!(t.due("other", start + Duration::from_secs(1), None));
        assert!(t.due("k", start + Duration::from_secs(60), None));
        assert!(!t.due("k", start + Duration::from_secs(61), None));
    }

    #[test]
    fn throttle_trusts_a_recent_stored_value() {
        let t = TouchThrottle::new(Duration::from_secs(60));
        let now = Instant::now() + Duration::from_secs(3600);
        // Another process wrote it 10 s ago: no write now, nor 49 s later.
        assert!(!t.due("k", now, Some(Duration::from_secs(10))));
        assert!(!t.due("k", now + Duration::from_secs(49), None));
        assert!(t.due("k", now + Duration::from_secs(50), None));
        // Written long ago: write.
        assert!(t.due("old", now, Some(Duration::from_secs(600))));
    }

    #[test]
    fn a_zero_interval_always_writes() {
        let t = TouchThrottle::new(Duration::ZERO);
        let now = Instant::now();
        assert!(t.due("k", now, Some(Duration::ZERO)));
        assert!(t.due("k", now, None));
    }

    #[test]
    fn the_throttle_map_stays_bounded() {
        let t = TouchThrottle::new(Duration::from_secs(1));
        let start = Instant::now();
        for i in 0..MAX_TRACKED_KEYS {
            assert!(t.due(&i.to_string(), start, None));
        }
        assert!(t.due("late", start + Duration::from_secs(2), None));
        assert_eq!(t.last.lock().unwrap().len(), 1);
    }

    #[test]
    fn usability() {
        let now = Utc::now();
        let mut info = ApiKeyInfo {
            key_id: "0".repeat(24),
            tenant: TenantId::new("acme").unwrap(),
            name: "k".into(),
            scopes: vec![],
            created_at: now,
            expires_at: None,
            revoked_at: None,
            rotated_from: None,
            grace_until: None,
            last_used_at: None,
        };
        assert!(info.is_usable_at(now));
        assert_eq!(info.prefix(), format!("hk_{}", "0".repeat(24)));
        info.grace_until = Some(now);
        assert!(!info.is_usable_at(now));
        info.grace_until = None;
        info.expires_at = Some(now + chrono::Duration::seconds(1));
        assert!(info.is_usable_at(now));
        info.revoked_at = Some(now);
        assert!(!info.is_usable_at(now));
    }

    #[test]
    fn scopes() {
        let key = VerifiedKey {
            key_id: "x".into(),
            tenant: TenantId::new("acme").unwrap(),
            name: "n".into(),
            scopes: vec!["customers:*".into(), "products:read".into()],
        };
        assert!(key.has_scope("customers:write"));
        assert!(key.has_scope("products:read"));
        assert!(!key.has_scope("products:write"));
        assert!(matches!(
            key.require_scope("products:write"),
            Err(Error::Auth(AuthError::MissingScope(s))) if s == "products:write"
        ));
        assert!(key.require_tenant(&TenantId::new("acme").unwrap()).is_ok());
        assert!(matches!(
            key.require_tenant(&TenantId::new("globex").unwrap()),
            Err(Error::Auth(AuthError::WrongTenant))
        ));
    }
}
