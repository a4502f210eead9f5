//! Users, registration and login through a shared lookup table:
//! [`LoginTable`], [`Accounts`].

use std::fmt;

use sqlx::{Executor, Postgres, SqlStr};

use super::limits::Limiter;
use super::{
    AuthError, Claims, Jwt, LoginLimits, Passwords, Revocations, TenantsRef, refuse, shared_table,
};
use crate::error::{Error, Result, db_code, sqlstate};
use crate::hidra::Hidra;
use crate::sql::{self, Statement, TableName};
use crate::tenant::{Tenant, TenantId};

/// The longest email address accepted (RFC 5321's path limit).
const MAX_EMAIL_BYTES: usize = 254;

/// SQLSTATE `foreign_key_violation`.
const FOREIGN_KEY_VIOLATION: &str = "23503";

/// The unique constraint PostgreSQL names for `users.email TEXT UNIQUE`.
const USERS_EMAIL_KEY: &str = "users_email_key";

super::shared_table_config! {
    /// The shared table that maps a login email to its tenant (default
    /// `public.hidra_logins`), so that login needs only an email and a password.
    ///
    /// # One email, one tenant
    ///
    /// The email is the table's primary key: **an email address is unique across
    /// all tenants**. A person who works for two customers signs up twice with two
    /// addresses (or plus-addresses). The alternative, asking for the tenant at
    /// login, would leak which tenants exist and complicate every client; a
    /// global unique email keeps login a single lookup and lets a registration
    /// fail early and clearly with [`AuthError::EmailTaken`]. Emails are stored
    /// trimmed and lowercased.
    ///
    /// The row references the registry (`ON DELETE CASCADE`, default
    /// `public.tenants (id)`), so deprovisioning a tenant frees its users' emails.
    ///
    /// The application owns this table: create it on purpose with
    /// [`LoginTable::ddl`] after the registry table.
    ///
    /// ```
    /// use hidra::auth::LoginTable;
    ///
    /// let ddl = LoginTable::default().ddl();
    /// assert!(ddl.contains("CREATE TABLE IF NOT EXISTS \"public\".\"hidra_logins\""));
    /// assert!(ddl.contains("REFERENCES \"public\".\"tenants\" (\"id\") ON DELETE CASCADE"));
    /// ```
    LoginTable, "public.hidra_logins", "login table", "remove the tenant's rows"
}

impl LoginTable {
    fn pkey(&self) -> String {
        format!("{}_pkey", self.table.name())
    }

    /// The recommended DDL: the table, keyed by email, with the user's id and
    /// token version (see [`Revocations`](super::Revocations)), an index on
    /// the tenant, and a trigger that announces every change of a row on
    /// [`LOGIN_CHANGES_CHANNEL`](super::LOGIN_CHANGES_CHANNEL). Idempotent,
    /// and it upgrades a table made by an earlier version (adding the two
    /// columns).
    pub fn ddl(&self) -> String {
        let bare = self.table.name().as_str();
        let mut notify = Statement::new();
        if let Some(schema) = self.table.schema() {
            notify.ident(schema);
        }
        notify.sql(".").name(&format!("{bare}_notify_change"));
        sql::template(
            r#"-- Hidra login lookup: the tenant of every login email. Emails are unique across
-- tenants (the primary key), stored trimmed and lowercased. The application owns
-- this table: run this on purpose, after the tenant registry. Safe to run twice.
CREATE TABLE IF NOT EXISTS {t} (
    email      TEXT NOT NULL,
    tenant_id  TEXT NOT NULL{fk},
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT {pkey} PRIMARY KEY (email),
    CONSTRAINT {check} CHECK (email LIKE '%_@_%')
);
-- The user's id in its tenant, and the version its tokens must carry: bumped
-- on every change that must end the user's sessions.
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS user_id BIGINT;
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS token_version BIGINT NOT NULL DEFAULT 1;
CREATE INDEX IF NOT EXISTS {idx} ON {t} (tenant_id);
CREATE UNIQUE INDEX IF NOT EXISTS {user_idx} ON {t} (tenant_id, user_id);

-- Every change is announced, so that every process drops its cached token
-- version at once.
CREATE OR REPLACE FUNCTION {notify}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.user_id IS NOT NULL THEN
        PERFORM pg_notify({channel}, OLD.tenant_id || ' ' || OLD.user_id);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.user_id IS NOT NULL AND (TG_OP = 'INSERT'
        OR (NEW.tenant_id, NEW.user_id) IS DISTINCT FROM (OLD.tenant_id, OLD.user_id)) THEN
        PERFORM pg_notify({channel}, NEW.tenant_id || ' ' || NEW.user_id);
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS {trigger} ON {t};
CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {t}
    FOR EACH ROW EXECUTE FUNCTION {notify}();
"#,
        )
        .table("t", &self.table)
        .append("fk", &TenantsRef::clause(&self.tenants))
        .name("pkey", &self.pkey())
        .name("check", &format!("{bare}_email_check"))
        .name("idx", &format!("{bare}_tenant_id_idx"))
        .name("user_idx", &format!("{bare}_tenant_user_idx"))
        .name("trigger", &format!("{bare}_notify_change"))
        .append("notify", &notify)
        .literal("channel", super::LOGIN_CHANGES_CHANNEL)
        .statement()
        .into_string()
    }
}

/// How long a database-per-tenant registration may stay half-made (its
/// login row written, its user not yet) before it counts as abandoned by a
/// crash: far longer than registering takes.
pub const PENDING_REGISTRATION_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// A database-per-tenant registration a crash may have left half-made: a
/// login row without a user id, older than the grace period.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HalfRegistered {
    /// The login email.
    pub email: String,
    /// Its tenant.
    pub tenant: TenantId,
    /// Whether the user exists in the tenant's database (then the
    /// registration only needs its login row completed; else it is undone).
    pub user_exists: bool,
}

/// What [`LoginTable::settle_registrations`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settled {
    /// Login rows given the id of their existing user.
    pub completed: usize,
    /// Login rows of users that were never written, removed (the email is
    /// free again).
    pub undone: usize,
}

impl LoginTable {
    /// The database-per-tenant registrations half-made for longer than
    /// `older_than`; see [`settle_registrations`](Self::settle_registrations).
    /// Reads only.
    pub async fn half_registered(
        &self,
        hidra: &Hidra,
        older_than: std::time::Duration,
    ) -> Result<Vec<HalfRegistered>> {
        let mut conn = hidra.acquire_shared().await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            sql::template(
                "SELECT email, tenant_id FROM {t} WHERE user_id IS NULL \
                 AND created_at < now() - make_interval(secs => $1) ORDER BY created_at",
            )
            .table("t", &self.table)
            .finish(),
        )
        .bind(older_than.as_secs_f64())
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("reading half-made registrations"))?;
        drop(conn);
        let mut found = Vec::new();
        for (email, tenant) in rows {
            let Ok(id) = TenantId::new(&tenant) else {
                continue;
            };
            // Rows of other strategies without a user id predate user ids
            // (their user is written in the same transaction): login links them.
            let Some(record) = hidra.tenant(&id).await? else {
                continue;
            };
            if !users_apart(&record) {
                continue;
            }
            let user_exists = user_id_of(hidra, &record, &email).await?.is_some();
            found.push(HalfRegistered {
                email,
                tenant: id,
                user_exists,
            });
        }
        Ok(found)
    }

    /// Completes or undoes every database-per-tenant registration half-made
    /// for longer than `older_than` (use [`PENDING_REGISTRATION_GRACE`]): the
    /// second step of the two-phase registration, for a process that died
    /// between writing the login row (phase one, in the shared database) and
    /// the user (phase two, in the tenant's database). A login row whose user
    /// exists gets its user id; one whose user was never written is removed.
    /// `hidra doctor` reports them; the next registration of the same email
    /// settles its own row.
    pub async fn settle_registrations(
        &self,
        hidra: &Hidra,
        older_than: std::time::Duration,
    ) -> Result<Settled> {
        let mut settled = Settled::default();
        for half in self.half_registered(hidra, older_than).await? {
            let Some(record) = hidra.tenant(&half.tenant).await? else {
                continue;
            };
            if self.settle(hidra, &record, &half.email).await? {
                settled.undone += 1;
            } else {
                settled.completed += 1;
            }
        }
        Ok(settled)
    }

    /// Settles the half-made registration of `email` in `tenant`: links the
    /// user if it exists (returns `false`), else removes the login row
    /// (returns `true`, the email is free).
    async fn settle(&self, hidra: &Hidra, tenant: &Tenant, email: &str) -> Result<bool> {
        let user = user_id_of(hidra, tenant, email).await?;
        let mut conn = hidra.acquire_shared().await?;
        // `$3` is NULL to undo: the row goes, else it gets its user id.
        let statement = sql::template(
            "WITH linked AS (UPDATE {t} SET user_id = $3 \
               WHERE email = $1 AND tenant_id = $2 AND user_id IS NULL AND $3::bigint IS NOT NULL) \
             DELETE FROM {t} WHERE email = $1 AND tenant_id = $2 AND user_id IS NULL \
               AND $3::bigint IS NULL",
        )
        .table("t", &self.table)
        .finish();
        sqlx::query(statement)
            .bind(email)
            .bind(tenant.id.as_str())
            .bind(user)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("settling a half-made registration"))?;
        tracing::info!(tenant = %tenant.id, completed = user.is_some(), "settled a half-made registration");
        Ok(user.is_none())
    }
}

/// Writes `user`'s row and roles in `tenant` on `conn` (bound to it);
/// returns its id.
async fn insert_with_roles<C>(conn: &mut C, tenant: &Tenant, user: &PreparedUser) -> Result<i64>
where
    for<'c> &'c mut C: Executor<'c, Database = Postgres>,
{
    let id = insert_user(
        &mut *conn,
        &tenant.id,
        &user.email,
        &user.full_name,
        &user.hash,
    )
    .await?;
    grant_roles(conn, id, &user.roles).await?;
    Ok(id)
}

/// Whether `tenant`'s users live apart from the login table, which is in the
/// shared database of the control server: in a database of the tenant's own,
/// or on a registered server. Their registration takes two phases.
fn users_apart(tenant: &Tenant) -> bool {
    !tenant.placement.shares_control_database()
}

/// The id of the user `email` in `tenant`'s `users`, if any.
async fn user_id_of(hidra: &Hidra, tenant: &Tenant, email: &str) -> Result<Option<i64>> {
    let mut conn = hidra.acquire(tenant).await?;
    sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(&mut conn)
        .await
        .map_err(Error::db("reading a user"))
}

/// A user checked and with its password hashed, ready to be registered
/// inside a transaction; see [`Accounts::prepare`].
#[derive(Clone)]
pub struct PreparedUser {
    email: String,
    full_name: String,
    hash: String,
    roles: Vec<String>,
}

impl fmt::Debug for PreparedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedUser")
            .field("email", &self.email)
            .field("full_name", &self.full_name)
            .field("hash", &"[redacted]")
            .field("roles", &self.roles)
            .finish()
    }
}

impl PreparedUser {
    /// The normalized email.
    pub fn email(&self) -> &str {
        &self.email
    }
}

/// A user to register; see [`Accounts::register`].
#[derive(Clone)]
pub struct NewUser {
    email: String,
    full_name: String,
    password: String,
    roles: Vec<String>,
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("email", &self.email)
            .field("full_name", &self.full_name)
            .field("password", &"[redacted]")
            .field("roles", &self.roles)
            .finish()
    }
}

impl NewUser {
    /// A user with this email, name and password, and no roles yet.
    pub fn new(
        email: impl Into<String>,
        full_name: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        NewUser {
            email: email.into(),
            full_name: full_name.into(),
            password: password.into(),
            roles: Vec::new(),
        }
    }

    /// Adds a role, by name; it must exist in the tenant's `roles` table.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// Adds roles, by name.
    pub fn roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles.extend(roles.into_iter().map(Into::into));
        self
    }
}

/// A change to a user; see [`Accounts::update_user`]. Deactivating a user or
/// changing its roles ends its sessions (its tokens are
/// [revoked](super::Revocations)); renaming does not.
#[derive(Clone, Debug, Default)]
pub struct UserUpdate {
    full_name: Option<String>,
    active: Option<bool>,
    roles: Option<Vec<String>>,
}

impl UserUpdate {
    /// No change yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new display name.
    pub fn full_name(mut self, full_name: impl Into<String>) -> Self {
        self.full_name = Some(full_name.into());
        self
    }

    /// Activates or deactivates the user (an inactive user cannot log in).
    pub fn active(mut self, active: bool) -> Self {
        self.active = Some(active);
        self
    }

    /// Replaces the user's roles, by name; each must exist in the tenant's
    /// `roles` table.
    pub fn roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut roles: Vec<String> = roles.into_iter().map(Into::into).collect();
        roles.sort();
        roles.dedup();
        self.roles = Some(roles);
        self
    }

    /// Whether the change must end the user's sessions.
    fn revokes(&self) -> bool {
        self.active.is_some() || self.roles.is_some()
    }
}

/// A registered user, as stored in its tenant's `users` table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct User {
    /// `users.id`, also the `sub` of the user's tokens.
    pub id: i64,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its login email, trimmed and lowercased.
    pub email: String,
    /// Its display name.
    pub full_name: String,
    /// Its role names, sorted.
    pub roles: Vec<String>,
}

/// A successful login: the token to hand to the client, its claims and the user.
#[derive(Clone)]
pub struct Login {
    token: String,
    claims: Claims,
    user: User,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("token", &"[redacted]")
            .field("claims", &self.claims)
            .field("user", &self.user)
            .finish()
    }
}

impl Login {
    /// The signed token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// What the token says.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The user who logged in.
    pub fn user(&self) -> &User {
        &self.user
    }

    /// The signed token, by value.
    pub fn into_token(self) -> String {
        self.token
    }
}

/// Registration and login over the tenants' `users` tables and the shared
/// [`LoginTable`].
///
/// Cheap to clone. Each tenant's schema needs the `users`, `roles` and
/// `user_roles` tables described in the [module docs](super#tenant-tables).
///
/// ```no_run
/// use hidra::auth::{Accounts, Jwt, NewUser};
/// use hidra::{Hidra, TenantId};
///
/// # async fn run(hidra: Hidra) -> hidra::Result<()> {
/// let accounts = Accounts::new(hidra.clone(), Jwt::hs256([7u8; 32])?);
/// let acme = hidra.tenant(&TenantId::new("acme")?).await?.expect("provisioned");
/// let user = accounts
///     .register(&acme, NewUser::new("Ada@Acme.test", "Ada", "correct horse").role("admin"))
///     .await?;
/// assert_eq!(user.email, "ada@acme.test");
///
/// let login = accounts.login("ada@acme.test", "correct horse").await?;
/// assert_eq!(login.claims().tenant, acme.id);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Accounts {
    hidra: Hidra,
    jwt: Jwt,
    passwords: Passwords,
    logins: LoginTable,
    q: Statements,
    revocations: Revocations,
    limits: Option<Limiter>,
}

#[derive(Clone)]
struct Statements {
    lookup: SqlStr,
    insert: SqlStr,
    delete: SqlStr,
    /// Records the user id of a login row (and ends the sessions of another
    /// user the row named before); returns the token version.
    link: SqlStr,
    bump: SqlStr,
    count: SqlStr,
}

impl Statements {
    fn new(logins: &LoginTable) -> Self {
        let t = &logins.table;
        let on = |text| sql::template(text).table("t", t).finish();
        Statements {
            lookup: on("SELECT tenant_id, user_id, token_version FROM {t} WHERE email = $1"),
            insert: on("INSERT INTO {t} (email, tenant_id, user_id) VALUES ($1, $2, $3)"),
            count: on("SELECT count(*) FROM {t} WHERE tenant_id = $1"),
            delete: on("DELETE FROM {t} WHERE email = $1 AND tenant_id = $2"),
            link: on("UPDATE {t} SET user_id = $3, token_version = CASE \
                 WHEN user_id IS NULL OR user_id = $3 THEN token_version ELSE token_version + 1 END \
                 WHERE email = $1 AND tenant_id = $2 RETURNING token_version"),
            bump: on("UPDATE {t} SET token_version = token_version + 1 \
                 WHERE tenant_id = $1 AND user_id = $2"),
        }
    }
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts")
            .field("jwt", &self.jwt)
            .field("passwords", &self.passwords)
            .field("logins", &self.logins)
            .finish_non_exhaustive()
    }
}

/// Trims and lowercases an email and checks its shape.
fn normalize_email(email: &str) -> Result<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= MAX_EMAIL_BYTES
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.rsplit_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty());
    if valid {
        Ok(email)
    } else {
        refuse(AuthError::InvalidEmail)
    }
}

/// Runs CPU-heavy password work off the async executor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("a password hashing task was cancelled (is the runtime shutting down?)"),
    }
}

/// A user row found for login.
struct Found {
    tenant: Tenant,
    /// The login row's user id and token version.
    login: (Option<i64>, i64),
    id: i64,
    full_name: String,
    hash: String,
    roles: Vec<String>,
}

impl Accounts {
    /// Accounts over `hidra`'s tenants, issuing tokens with `jwt`, hashing with
    /// [`Passwords::new`] and looking emails up in [`LoginTable::default`].
    pub fn new(hidra: Hidra, jwt: Jwt) -> Self {
        let logins = LoginTable::default();
        Accounts {
            q: Statements::new(&logins),
            revocations: Revocations::new(hidra.clone(), &logins),
            limits: Some(Limiter::new(LoginLimits::default())),
            hidra,
            jwt,
            passwords: Passwords::new(),
            logins,
        }
    }

    /// Counts failed logins and sign-ups under `limits` instead of the
    /// [defaults](LoginLimits::new).
    pub fn with_limits(mut self, limits: LoginLimits) -> Self {
        self.limits = Some(Limiter::new(limits));
        self
    }

    /// No brute-force limits (for tests, or when a gateway in front limits).
    pub fn without_limits(mut self) -> Self {
        self.limits = None;
        self
    }

    /// The token versions of the users, for checking tokens (the web layer's
    /// `JwtResolver::with_revocations`). Clones share one cache.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Uses `passwords` to hash and verify.
    pub fn with_passwords(mut self, passwords: Passwords) -> Self {
        self.passwords = passwords;
        self
    }

    /// Uses another lookup table.
    pub fn with_login_table(mut self, logins: LoginTable) -> Self {
        self.q = Statements::new(&logins);
        self.revocations = Revocations::new(self.hidra.clone(), &logins);
        self.logins = logins;
        self
    }

    /// The token issuer.
    pub fn jwt(&self) -> &Jwt {
        &self.jwt
    }

    /// The password hasher.
    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }

    /// The lookup table.
    pub fn login_table(&self) -> &LoginTable {
        &self.logins
    }

    /// Creates the tables accounts need, where missing: the login lookup
    /// table and, unless limits are off, the attempt table of the
    /// brute-force limits. Like [`Hidra::install`] (run that first: the
    /// lookup table refers to the registry): idempotent, one transaction,
    /// safe from several processes at once.
    pub async fn install(&self) -> Result<()> {
        let mut ddl = self.logins.ddl();
        if let Some(limits) = &self.limits {
            ddl.push_str(&limits.table().ddl());
        }
        self.hidra
            .install_ddl("installing the login and attempt tables", &ddl)
            .await
    }

    /// Registers a user in `tenant`: its `users` row, its `user_roles` and its
    /// lookup row, in **one transaction** (bound to the tenant), so that
    /// neither row exists without the other.
    ///
    /// Fails with [`AuthError::InvalidEmail`], [`AuthError::InvalidPassword`],
    /// [`AuthError::UnknownRole`], or [`AuthError::EmailTaken`] when the email
    /// is registered already, in this tenant or any other. The tenant's
    /// status is not checked: that is the caller's business (sign-up creates
    /// the first user right after provisioning).
    pub async fn register(&self, tenant: &Tenant, user: NewUser) -> Result<User> {
        let user = self.prepare(user).await?;
        if users_apart(tenant) {
            // The lookup lives in the shared database, the user in the
            // tenant's own database or on its server: claim the email
            // first, give it back if the user cannot be written.
            // Two phases, recorded: the login row without a user id first
            // (the email is claimed), then the user in the tenant's
            // database, then the user id. A crash in between leaves a row
            // that `LoginTable::settle_registrations`, `hidra doctor
            // --repair` or the next registration of the email settles.
            let mut shared = self.hidra.acquire_shared().await?;
            self.claim_email(&mut shared, &user.email, tenant).await?;
            let written = async {
                let mut tx = self.hidra.begin(tenant).await?;
                let id = insert_with_roles(&mut tx, tenant, &user).await?;
                tx.commit().await?;
                Ok::<_, Error>(id)
            }
            .await;
            let linked = match written {
                Ok(id) => sqlx::query_scalar::<_, i64>(self.q.link.clone())
                    .bind(&user.email)
                    .bind(tenant.id.as_str())
                    .bind(id)
                    .fetch_optional(&mut *shared)
                    .await
                    .map(|_| id)
                    .map_err(Error::db("recording a login's user id")),
                Err(e) => Err(e),
            };
            let id = match linked {
                Ok(id) => id,
                Err(e) => {
                    sqlx::query(self.q.delete.clone())
                        .bind(&user.email)
                        .bind(tenant.id.as_str())
                        .execute(&mut *shared)
                        .await
                        .map_err(Error::db("giving back a login lookup row"))?;
                    return Err(e);
                }
            };
            return Ok(self.registered(id, tenant, &user));
        }
        let mut tx = self.hidra.begin(tenant).await?;
        let id = self.write_user(&mut tx, tenant, &user).await?;
        tx.commit().await?;
        Ok(self.registered(id, tenant, &user))
    }

    /// Checks and hashes a user ahead of [`register_in`](Self::register_in),
    /// so that the transaction it joins does not wait for the (deliberately
    /// slow) password hash. Fails like [`register`](Self::register) on a bad
    /// email, password or role list.
    pub async fn prepare(&self, user: NewUser) -> Result<PreparedUser> {
        let email = normalize_email(&user.email)?;
        self.passwords.check_policy(&user.password)?;
        let mut roles = user.roles;
        roles.sort();
        roles.dedup();
        let passwords = self.passwords.clone();
        let password = user.password;
        let hash = blocking(move || passwords.hash(&password)).await?;
        Ok(PreparedUser {
            email,
            full_name: user.full_name,
            hash,
            roles,
        })
    }

    /// Registers a [prepared](Self::prepare) user of `tenant` on `conn`, a
    /// connection inside the caller's transaction and bound to the tenant,
    /// for example the one a provisioning [`setup`](crate::NewTenant::setup)
    /// hook receives: the tenant and its first user are then created or not
    /// at all, even if the process dies in between. Writes the same rows as
    /// [`register`](Self::register).
    ///
    /// A tenant whose users live apart from the login table (database per
    /// tenant, or a tenant on a registered server) cannot have both rows in
    /// one transaction: the email is claimed first, in a login row of its
    /// own without a user id, and the user is written on `conn`. If the
    /// provisioning fails or its process dies, the tenant's registry row
    /// goes and the login row with it; once it commits,
    /// [`issue_token`](Self::issue_token) or the first login records the
    /// user id.
    pub async fn register_in(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: &Tenant,
        user: &PreparedUser,
    ) -> Result<User> {
        if users_apart(tenant) {
            let mut shared = self.hidra.acquire_shared().await?;
            self.claim_email(&mut shared, &user.email, tenant).await?;
            drop(shared);
            let id = insert_with_roles(conn, tenant, user).await?;
            return Ok(self.registered(id, tenant, user));
        }
        let id = self.write_user(conn, tenant, user).await?;
        Ok(self.registered(id, tenant, user))
    }

    /// Claims `email` for `tenant` with a login row without a user id (the
    /// first phase of a registration whose user lives apart), settling a
    /// half-made registration of the same email first if one is in the way.
    async fn claim_email(
        &self,
        shared: &mut sqlx::PgConnection,
        email: &str,
        tenant: &Tenant,
    ) -> Result<()> {
        match self.insert_lookup(&mut *shared, email, tenant, None).await {
            Err(Error::Auth(AuthError::EmailTaken)) => {
                self.settle_own(email).await?;
                self.insert_lookup(&mut *shared, email, tenant, None).await
            }
            other => other,
        }
    }

    /// Writes the user's row, roles and lookup row on `conn`, inside a
    /// transaction bound to the tenant.
    async fn write_user<C>(&self, conn: &mut C, tenant: &Tenant, user: &PreparedUser) -> Result<i64>
    where
        for<'c> &'c mut C: Executor<'c, Database = Postgres>,
    {
        let id = insert_with_roles(conn, tenant, user).await?;
        self.insert_lookup(&mut *conn, &user.email, tenant, Some(id))
            .await?;
        Ok(id)
    }

    /// Settles a half-made registration of `email` older than the grace
    /// period, if there is one (the email is then free, or its user linked).
    async fn settle_own(&self, email: &str) -> Result<()> {
        let Some((tenant_id, (None, _))) = self.lookup(email).await? else {
            return Ok(());
        };
        let mut conn = self.hidra.acquire_shared().await?;
        let old: bool = sqlx::query_scalar(
            sql::template(
                "SELECT created_at < now() - make_interval(secs => $2) FROM {t} WHERE email = $1",
            )
            .table("t", &self.logins.table)
            .finish(),
        )
        .bind(email)
        .bind(PENDING_REGISTRATION_GRACE.as_secs_f64())
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::db("reading a login row"))?
        .unwrap_or(false);
        drop(conn);
        match self.hidra.tenant(&tenant_id).await? {
            Some(record) if old && users_apart(&record) => {
                self.logins.settle(&self.hidra, &record, email).await?;
            }
            _ => {}
        }
        Ok(())
    }

    fn registered(&self, id: i64, tenant: &Tenant, user: &PreparedUser) -> User {
        // "No such user" may be cached for this id.
        self.revocations.forget(&tenant.id, id);
        tracing::debug!(tenant = %tenant.id, user = id, "registered a user");
        User {
            id,
            tenant: tenant.id.clone(),
            email: user.email.clone(),
            full_name: user.full_name.clone(),
            roles: user.roles.clone(),
        }
    }

    /// Writes the login lookup row of `email`, on a connection to the shared
    /// database.
    async fn insert_lookup<'c>(
        &self,
        conn: impl Executor<'c, Database = Postgres>,
        email: &str,
        tenant: &Tenant,
        user: Option<i64>,
    ) -> Result<()> {
        sqlx::query(self.q.insert.clone())
            .bind(email)
            .bind(tenant.id.as_str())
            .bind(user)
            .execute(conn)
            .await
            .map_err(|err| match db_code(&err) {
                Some((code, constraint))
                    if code == sqlstate::UNIQUE_VIOLATION
                        && constraint.as_deref() == Some(self.logins.pkey().as_str()) =>
                {
                    Error::Auth(AuthError::EmailTaken)
                }
                Some((code, _)) if code == FOREIGN_KEY_VIOLATION => {
                    Error::NotFound(tenant.id.clone())
                }
                Some((code, _)) if code == sqlstate::UNDEFINED_TABLE => Error::TableMissing {
                    table: self.logins.table.to_string(),
                    create: "Accounts::install()",
                },
                _ => Error::Database {
                    context: "writing the login lookup row",
                    source: err,
                },
            })?;
        Ok(())
    }

    /// Logs in: finds the tenant of `email` in the lookup table, checks
    /// `password` against that tenant's `users` (active users only, and only
    /// in an active tenant) and issues a token with the user's roles and
    /// [token version](super::Revocations).
    ///
    /// An unknown email, a wrong password, an inactive user and a tenant
    /// that is not active all fail with the same
    /// [`AuthError::InvalidCredentials`], and take comparable time: when
    /// there is no user to check, the password is verified against a dummy
    /// hash. Failures count against the account's [limit](LoginLimits)
    /// (known or not); use [`login_from`](Self::login_from) to count them
    /// against the client too.
    pub async fn login(&self, email: &str, password: &str) -> Result<Login> {
        self.log_in(None, email, password).await
    }

    /// [`login`](Self::login) from `client`, a key for whoever is asking
    /// (the client's IP address, or what the application trusts more):
    /// failures also count against the client's [limit](LoginLimits), and
    /// the client's rate is limited in process. Refused with
    /// [`AuthError::TooManyAttempts`] while the account or the client is
    /// locked, before the password is checked.
    pub async fn login_from(&self, client: &str, email: &str, password: &str) -> Result<Login> {
        self.log_in(Some(client), email, password).await
    }

    /// A token for `user` of `tenant` without a password, carrying its
    /// current token version: for a user just registered (sign-up), or
    /// after a step the application verified itself. `None` when the user
    /// has no login row.
    pub async fn issue_token(&self, tenant: &Tenant, user: &User) -> Result<Option<Login>> {
        let version = match self.revocations.current(&tenant.id, user.id).await? {
            Some(version) => version,
            // Registered in a provisioning transaction apart from its login
            // row (see `register_in`): record its id now.
            None if users_apart(tenant) => {
                let mut shared = self.hidra.acquire_shared().await?;
                let linked: Option<i64> = sqlx::query_scalar(self.q.link.clone())
                    .bind(&user.email)
                    .bind(tenant.id.as_str())
                    .bind(user.id)
                    .fetch_optional(&mut *shared)
                    .await
                    .map_err(Error::db("recording a login's user id"))?;
                match linked {
                    Some(version) => version,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        let mut claims = self
            .jwt
            .claims(user.id.to_string(), tenant, user.roles.clone());
        claims.token_version = Some(version);
        Ok(Some(Login {
            token: self.jwt.sign(&claims)?,
            claims,
            user: user.clone(),
        }))
    }

    /// Counts a sign-up from `client` against its [limit](LoginLimits), and
    /// refuses it with [`AuthError::TooManyAttempts`] beyond. Call it before
    /// provisioning a tenant for an anonymous client.
    pub async fn check_sign_up(&self, client: &str) -> Result<()> {
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        let mut conn = self.hidra.acquire_shared().await?;
        limits.sign_up(&mut conn, client).await
    }

    async fn log_in(&self, client: Option<&str>, email: &str, password: &str) -> Result<Login> {
        let normalized = normalize_email(email);
        // The key of an address that cannot be registered is counted too:
        // the answer must not depend on whether the account exists.
        let account = normalized
            .as_deref()
            .map_or_else(|_| email.trim().to_lowercase(), str::to_owned);
        if let Some(limits) = &self.limits {
            let mut conn = self.hidra.acquire_shared().await?;
            limits.before_login(&mut conn, &account, client).await?;
        }
        let found = match normalized {
            Ok(email) => self.find(&email).await?.map(|f| (email, f)),
            Err(_) => None,
        };
        let passwords = self.passwords.clone();
        let password = password.to_owned();
        let hash = found.as_ref().map(|(_, f)| f.hash.clone());
        let ok = blocking(move || passwords.verify_or_dummy(&password, hash.as_deref())).await;
        let Some((email, found)) = found.filter(|_| ok) else {
            tracing::debug!("refused a login");
            if let Some(limits) = &self.limits {
                let mut conn = self.hidra.acquire_shared().await?;
                limits.failed_login(&mut conn, &account, client).await?;
            }
            return refuse(AuthError::InvalidCredentials);
        };
        let mut conn = self.hidra.acquire_shared().await?;
        if let Some(limits) = &self.limits {
            limits.succeeded_login(&mut conn, &account).await?;
        }
        let version = match found.login {
            (Some(user), version) if user == found.id => version,
            // A row written before user ids were recorded, or naming a user
            // since replaced: record this one.
            _ => sqlx::query_scalar(self.q.link.clone())
                .bind(&email)
                .bind(found.tenant.id.as_str())
                .bind(found.id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(Error::db("recording a login's user id"))?
                .ok_or(Error::Auth(AuthError::InvalidCredentials))?,
        };
        drop(conn);
        let mut claims = self
            .jwt
            .claims(found.id.to_string(), &found.tenant, found.roles.clone());
        claims.token_version = Some(version);
        let token = self.jwt.sign(&claims)?;
        tracing::debug!(tenant = %found.tenant.id, user = found.id, "logged in");
        Ok(Login {
            token,
            claims,
            user: User {
                id: found.id,
                tenant: found.tenant.id,
                email,
                full_name: found.full_name,
                roles: found.roles,
            },
        })
    }

    /// The tenant and active user row of `email`, if any.
    async fn find(&self, email: &str) -> Result<Option<Found>> {
        let Some((tenant_id, login)) = self.lookup(email).await? else {
            return Ok(None);
        };
        let tenant = match self.hidra.tenant(&tenant_id).await? {
            Some(t) if t.is_active() => t,
            _ => return Ok(None),
        };
        let mut tx = self.hidra.begin(&tenant).await?;
        let row: Option<(i64, String, String)> = sqlx::query_as(
            "SELECT id, full_name, password_hash FROM users WHERE email = $1 AND is_active",
        )
        .bind(email)
        .fetch_optional(&mut tx)
        .await
        .map_err(Error::db("reading the user for login"))?;
        let Some((id, full_name, hash)) = row else {
            return Ok(None);
        };
        let roles = roles_of(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(Found {
            tenant,
            login,
            id,
            full_name,
            hash,
            roles,
        }))
    }

    /// The tenant of `email`'s login row, its user id and token version.
    async fn lookup(&self, email: &str) -> Result<Option<(TenantId, (Option<i64>, i64))>> {
        let mut conn = self.hidra.acquire_shared().await?;
        let row: Option<(String, Option<i64>, i64)> = sqlx::query_as(self.q.lookup.clone())
            .bind(email)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db("looking up the tenant of a login email"))?;
        Ok(
            row.and_then(|(raw, user, version)| match TenantId::new(&raw) {
                Ok(id) => Some((id, (user, version))),
                Err(e) => {
                    tracing::warn!(error = %e, "the login table holds an invalid tenant id");
                    None
                }
            }),
        )
    }

    /// The tenant `email` is registered in, if any. For administration (the
    /// answer says whether an email exists: never show it to anonymous clients).
    pub async fn tenant_of(&self, email: &str) -> Result<Option<TenantId>> {
        match normalize_email(email) {
            Ok(email) => Ok(self.lookup(&email).await?.map(|(tenant, _)| tenant)),
            Err(_) => Ok(None),
        }
    }

    /// How many users can log in to `tenant` (its rows in the login lookup).
    pub async fn user_count(&self, tenant: &TenantId) -> Result<u64> {
        let mut conn = self.hidra.acquire_shared().await?;
        let n: i64 = sqlx::query_scalar(self.q.count.clone())
            .bind(tenant.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("counting a tenant's users"))?;
        Ok(n.max(0) as u64)
    }

    /// Removes the user `email` from `tenant`: its `users` row (and, by the
    /// reference schema's cascade, its `user_roles`) and its lookup row, in one
    /// transaction. Returns whether a user was removed.
    pub async fn delete_user(&self, tenant: &Tenant, email: &str) -> Result<bool> {
        let Ok(email) = normalize_email(email) else {
            return Ok(false);
        };
        let mut tx = self.hidra.begin(tenant).await?;
        let deleted: Vec<i64> =
            sqlx::query_scalar("DELETE FROM users WHERE email = $1 RETURNING id")
                .bind(&email)
                .fetch_all(&mut tx)
                .await
                .map_err(Error::db("deleting a user"))?;
        let users = deleted.len() as u64;
        let delete_lookup = sqlx::query(self.q.delete.clone())
            .bind(&email)
            .bind(tenant.id.as_str());
        let lookups = if users_apart(tenant) {
            // The lookup is in the shared database: after the user is gone.
            tx.commit().await?;
            let mut shared = self.hidra.acquire_shared().await?;
            delete_lookup.execute(&mut *shared).await
        } else {
            let deleted = delete_lookup.execute(&mut tx).await;
            tx.commit().await?;
            deleted
        }
        .map_err(Error::db("deleting a login lookup row"))?
        .rows_affected();
        // The lookup row is gone, and with it the user's token version.
        for id in deleted {
            self.revocations.forget(&tenant.id, id);
        }
        Ok(users + lookups > 0)
    }

    /// Sets a new password for the user `email` of `tenant` (after
    /// [`Passwords::check_policy`]) and ends its sessions. Returns whether
    /// the user exists.
    pub async fn set_password(&self, tenant: &Tenant, email: &str, password: &str) -> Result<bool> {
        let Ok(email) = normalize_email(email) else {
            return Ok(false);
        };
        let passwords = self.passwords.clone();
        let password = password.to_owned();
        let hash = blocking(move || passwords.hash(&password)).await?;
        self.change_user(tenant, |tx| {
            Box::pin(async move {
                let id: Option<i64> = sqlx::query_scalar(
                    "UPDATE users SET password_hash = $2 WHERE email = $1 RETURNING id",
                )
                .bind(&email)
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::db("setting a user's password"))?;
                Ok(id.map(|id| (id, true)))
            })
        })
        .await
        .map(|changed| changed.is_some())
    }

    /// Ends every session of user `id` of `tenant` ("log out everywhere"):
    /// the tokens issued to it so far are refused by
    /// [`Revocations::check`](super::Revocations::check) in every process
    /// within about a second. Returns whether the user has a login row.
    pub async fn log_out_everywhere(&self, tenant: &Tenant, id: i64) -> Result<bool> {
        let mut conn = self.hidra.acquire_shared().await?;
        let bumped = self.bump(&mut *conn, &tenant.id, id).await?;
        self.revocations.forget(&tenant.id, id);
        Ok(bumped)
    }

    /// Renames, activates or deactivates user `id` of `tenant`, or replaces
    /// its roles, in one transaction; deactivating and re-roling end its
    /// sessions. Returns the user as it is now, `None` if there is no such
    /// user. Fails with [`AuthError::UnknownRole`] (and changes nothing) if a
    /// role does not exist.
    pub async fn update_user(
        &self,
        tenant: &Tenant,
        id: i64,
        update: UserUpdate,
    ) -> Result<Option<User>> {
        let tenant_id = tenant.id.clone();
        self.change_user(tenant, move |tx| {
            Box::pin(async move {
                let row: Option<(String, String)> = sqlx::query_as(
                    "UPDATE users SET full_name = coalesce($2, full_name), \
                     is_active = coalesce($3, is_active) WHERE id = $1 RETURNING email, full_name",
                )
                .bind(id)
                .bind(update.full_name.as_deref())
                .bind(update.active)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::db("updating a user"))?;
                let Some((email, full_name)) = row else {
                    return Ok(None);
                };
                if let Some(roles) = &update.roles {
                    sqlx::query("DELETE FROM user_roles WHERE user_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(Error::db("replacing a user's roles"))?;
                    grant_roles(&mut *tx, id, roles).await?;
                }
                let roles = roles_of(&mut *tx, id).await?;
                let user = User {
                    id,
                    tenant: tenant_id,
                    email,
                    full_name,
                    roles,
                };
                Ok(Some((user, update.revokes())))
            })
        })
        .await
        .map(|changed| changed.map(|(user, _)| user))
    }

    /// Runs `change` in a transaction of `tenant`; when it returns a user
    /// whose sessions must end, bumps its token version: in the same
    /// transaction where the login table is in the tenant's database, else
    /// on the shared database right after the commit.
    async fn change_user<T, F>(&self, tenant: &Tenant, change: F) -> Result<Option<(T, bool)>>
    where
        T: UserKey,
        F: for<'t> FnOnce(
            &'t mut crate::TenantTx,
        )
            -> futures_util::future::BoxFuture<'t, Result<Option<(T, bool)>>>,
    {
        let mut tx = self.hidra.begin(tenant).await?;
        let changed = change(&mut tx).await?;
        let Some((value, revoke)) = changed else {
            tx.rollback().await?;
            return Ok(None);
        };
        let separate = users_apart(tenant);
        if revoke && !separate {
            self.bump(&mut tx, &tenant.id, value.user_id()).await?;
        }
        tx.commit().await?;
        if revoke && separate {
            let mut shared = self.hidra.acquire_shared().await?;
            self.bump(&mut *shared, &tenant.id, value.user_id()).await?;
        }
        if revoke {
            // Other processes hear of it by notification; this one at once.
            self.revocations.forget(&tenant.id, value.user_id());
        }
        Ok(Some((value, revoke)))
    }

    /// Bumps the token version of `user`; whether it has a login row.
    async fn bump<'c>(
        &self,
        conn: impl Executor<'c, Database = Postgres>,
        tenant: &TenantId,
        user: i64,
    ) -> Result<bool> {
        let bumped = sqlx::query(self.q.bump.clone())
            .bind(tenant.as_str())
            .bind(user)
            .execute(conn)
            .await
            .map_err(Error::db("ending a user's sessions"))?
            .rows_affected();
        tracing::debug!(%tenant, user, "ended a user's sessions");
        Ok(bumped > 0)
    }
}

/// What [`Accounts::change_user`] needs of what a change returns.
trait UserKey {
    fn user_id(&self) -> i64;
}

impl UserKey for i64 {
    fn user_id(&self) -> i64 {
        *self
    }
}

impl UserKey for User {
    fn user_id(&self) -> i64 {
        self.id
    }
}

async fn insert_user<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    tenant: &TenantId,
    email: &str,
    full_name: &str,
    hash: &str,
) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO users (email, full_name, password_hash) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(email)
    .bind(full_name)
    .bind(hash)
    .fetch_one(conn)
    .await
    .map_err(|err| match db_code(&err) {
        Some((code, constraint))
            if code == sqlstate::UNIQUE_VIOLATION
                && constraint.as_deref() == Some(USERS_EMAIL_KEY) =>
        {
            Error::Auth(AuthError::EmailTaken)
        }
        Some((code, _)) if code == sqlstate::UNDEFINED_TABLE => Error::InvalidConfig(
            format!(
                "tenant `{tenant}` has no `users` table; its schema needs `users`, `roles` and \
                 `user_roles` (see `hidra::auth`)"
            )
            .into(),
        ),
        _ => Error::Database {
            context: "inserting a user",
            source: err,
        },
    })
}

async fn grant_roles<C>(conn: &mut C, user: i64, roles: &[String]) -> Result<()>
where
    for<'c> &'c mut C: Executor<'c, Database = Postgres>,
{
    if roles.is_empty() {
        return Ok(());
    }
    let found: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, name FROM roles WHERE name = ANY($1)")
            .bind(roles)
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::db("reading the tenant's roles"))?;
    if let Some(missing) = roles.iter().find(|r| !found.iter().any(|(_, n)| n == *r)) {
        return refuse(AuthError::UnknownRole(missing.clone()));
    }
    let ids: Vec<i64> = found.iter().map(|(id, _)| *id).collect();
    sqlx::query("INSERT INTO user_roles (user_id, role_id) SELECT $1, unnest($2::bigint[])")
        .bind(user)
        .bind(&ids)
        .execute(&mut *conn)
        .await
        .map_err(Error::db("granting roles to a user"))?;
    Ok(())
}

async fn roles_of<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    user: i64,
) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT r.name FROM user_roles ur JOIN roles r ON r.id = ur.role_id \
         WHERE ur.user_id = $1 ORDER BY r.name",
    )
    .bind(user)
    .fetch_all(conn)
    .await
    .map_err(Error::db("reading a user's roles"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "a da@x.y",
            "a\n@b.c",
            &format!("{}@x.y", "a".repeat(260)),
        ] {
            assert!(
                matches!(
                    normalize_email(bad),
                    Err(Error::Auth(AuthError::InvalidEmail))
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn login_table_must_be_qualified_and_ddl_quotes() {
        assert!(LoginTable::new("hidra_logins").is_err());
        let t = LoginTable::new("auth.logins")
            .unwrap()
            .referencing("app.registry", "tenant_key")
            .unwrap();
        let ddl = t.ddl();
        assert!(
            ddl.contains("CREATE TABLE IF NOT EXISTS \"auth\".\"logins\""),
            "{ddl}"
        );
        assert!(ddl.contains("REFERENCES \"app\".\"registry\" (\"tenant_key\") ON DELETE CASCADE"));
        assert!(ddl.contains("CONSTRAINT \"logins_pkey\" PRIMARY KEY (email)"));
        let ddl = t.without_tenant_reference().ddl();
        assert!(!ddl.contains("REFERENCES"));
        assert!(LoginTable::new("a.b;drop").is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let user = NewUser::new("a@b.c", "A", "hunter2hunter2");
        assert!(!format!("{user:?}").contains("hunter2"));
    }
}
