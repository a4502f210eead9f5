//! Brute-force limits on login and sign-up: [`LoginLimits`] and the shared
//! [`AttemptTable`] every process counts in.
//!
//! Two layers:
//!
//! - **In process**, a [`governor`] rate limiter per client key sheds floods
//!   (by default 10 attempts a second, bursts of 20) before they cost a
//!   query or a password hash.
//! - **In PostgreSQL**, failed logins are counted per account (the email,
//!   whether or not it exists) and per client key in fixed windows, shared by
//!   every process serving the database: once an account has had 10 failures
//!   in 15 minutes, or a client 100, further attempts are refused with
//!   [`AuthError::TooManyAttempts`] until the window ends, even with the right
//!   password, without verifying it, and in the same way for an email that
//!   is not registered. A successful login clears its account's count (not
//!   its client's). Sign-ups are counted per client key (10 an hour).
//!
//! Keys are stored as SHA-256 digests, so the table holds no emails or
//! addresses, and any bytes make a key.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use sqlx::SqlStr;

use super::{AuthError, hex, refuse, shared_table};
use crate::error::{Error, Result, db_code, sqlstate};
use crate::sql::{self, TableName};

/// At most so many failures (or sign-ups) in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// How many are allowed in one window.
    pub max: u32,
    /// The window's length.
    pub window: Duration,
}

impl Limit {
    /// `max` per `window`.
    pub const fn new(max: u32, window: Duration) -> Self {
        Limit { max, window }
    }
}

/// The shared table in which every process counts login failures and
/// sign-ups (default `public.hidra_login_attempts`). The application owns
/// it, like the registry: create it on purpose with [`AttemptTable::ddl`].
///
/// ```
/// use hidra::auth::AttemptTable;
///
/// let ddl = AttemptTable::default().ddl();
/// assert!(ddl.contains("CREATE TABLE IF NOT EXISTS \"public\".\"hidra_login_attempts\""));
/// ```
#[derive(Clone, Debug)]
pub struct AttemptTable {
    table: TableName,
}

impl Default for AttemptTable {
    fn default() -> Self {
        AttemptTable {
            table: TableName::parse("public.hidra_login_attempts").expect("valid default name"),
        }
    }
}

impl AttemptTable {
    /// The attempt table `table`, which must be schema-qualified.
    pub fn new(table: &str) -> Result<Self> {
        Ok(AttemptTable {
            table: shared_table(table, "attempt table")?,
        })
    }

    /// The table name.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The recommended DDL. Idempotent.
    pub fn ddl(&self) -> String {
        let bare = self.table.name().as_str();
        sql::template(
            r#"-- Hidra brute-force limits: failed logins and sign-ups per account and client,
-- counted in fixed windows by every process. Keys are SHA-256 digests. The
-- application owns this table: run this on purpose. Safe to run twice.
CREATE TABLE IF NOT EXISTS {t} (
    key          TEXT NOT NULL PRIMARY KEY,
    attempts     INTEGER NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    window_end   TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS {idx} ON {t} (window_end);
"#,
        )
        .table("t", &self.table)
        .name("idx", &format!("{bare}_window_end_idx"))
        .statement()
        .into_string()
    }
}

/// Brute-force limits for [`Accounts`](super::Accounts). On by default; tune
/// with the builder methods or turn off with
/// [`Accounts::without_limits`](super::Accounts::without_limits).
///
/// Failed logins are counted per account (the email, whether or not it
/// exists) and per client key in fixed windows, in the shared
/// [`AttemptTable`], so every process serving the database sees the same
/// counts. Once a limit is reached, attempts are refused with
/// [`AuthError::TooManyAttempts`] until the window ends, even with the right
/// password (which is not checked), and in the same way for an email that is
/// not registered. A successful login clears its account's count, not its
/// client's. Sign-ups are counted per client key. In front of that, a
/// [`governor`] rate limiter per client key and process sheds floods before
/// they cost a query or a password hash.
///
/// ```
/// use std::time::Duration;
/// use hidra::auth::{Limit, LoginLimits};
///
/// let limits = LoginLimits::new()
///     .per_account(Limit::new(5, Duration::from_secs(600)))
///     .per_client(Limit::new(50, Duration::from_secs(600)))
///     .sign_ups(Limit::new(3, Duration::from_secs(3600)));
/// # let _ = limits;
/// ```
#[derive(Clone)]
pub struct LoginLimits {
    account: Limit,
    client: Limit,
    sign_ups: Limit,
    burst: Quota,
    table: AttemptTable,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            account: Limit::new(10, Duration::from_secs(15 * 60)),
            client: Limit::new(100, Duration::from_secs(15 * 60)),
            sign_ups: Limit::new(10, Duration::from_secs(3600)),
            burst: Quota::per_second(NonZeroU32::new(10).expect("non-zero"))
                .allow_burst(NonZeroU32::new(20).expect("non-zero")),
            table: AttemptTable::default(),
        }
    }
}

impl fmt::Debug for LoginLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginLimits")
            .field("account", &self.account)
            .field("client", &self.client)
            .field("sign_ups", &self.sign_ups)
            .field("burst", &self.burst)
            .field("table", &self.table)
            .finish()
    }
}

impl LoginLimits {
    /// The defaults: 10 failures per account and 100 per client in 15
    /// minutes, 10 sign-ups per client an hour, at most 10 attempts a second
    /// (bursts of 20) per client and process.
    pub fn new() -> Self {
        Self::default()
    }

    /// Failed logins allowed per account (email) in a window.
    pub fn per_account(mut self, limit: Limit) -> Self {
        self.account = limit;
        self
    }

    /// Failed logins allowed per client key in a window.
    pub fn per_client(mut self, limit: Limit) -> Self {
        self.client = limit;
        self
    }

    /// Sign-ups allowed per client key in a window.
    pub fn sign_ups(mut self, limit: Limit) -> Self {
        self.sign_ups = limit;
        self
    }

    /// The in-process rate of attempts per client key (login and sign-up
    /// together): `per_second`, in bursts of up to `burst`.
    pub fn rate(mut self, per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        self.burst = Quota::per_second(per_second).allow_burst(burst);
        self
    }

    /// Counts in another table.
    pub fn with_table(mut self, table: AttemptTable) -> Self {
        self.table = table;
        self
    }

    /// The table counted in.
    pub fn table(&self) -> &AttemptTable {
        &self.table
    }
}

/// What one key is counted under.
#[derive(Clone, Copy)]
enum Kind {
    Account,
    Client,
    SignUp,
}

/// The limits at work: the configuration, the in-process limiter and the
/// statements.
#[derive(Clone)]
pub(crate) struct Limiter {
    config: LoginLimits,
    burst: Arc<DefaultKeyedRateLimiter<String>>,
    calls: Arc<AtomicU64>,
    blocked: SqlStr,
    count: SqlStr,
    clear: SqlStr,
    prune: SqlStr,
}

/// How often (in counted attempts) expired rows are removed.
const PRUNE_EVERY: u64 = 1000;

impl Limiter {
    /// The table the attempts are counted in.
    pub(crate) fn table(&self) -> &AttemptTable {
        &self.config.table
    }

    pub(crate) fn new(config: LoginLimits) -> Self {
        let on = |text| sql::template(text).table("t", &config.table.table).finish();
        Limiter {
            burst: Arc::new(RateLimiter::keyed(config.burst)),
            calls: Arc::new(AtomicU64::new(0)),
            // The longest remaining lock among `keys` whose count reached its
            // limit, in whole seconds.
            blocked: on(
                "SELECT max(ceil(extract(epoch FROM a.window_end - now())))::bigint \
                 FROM unnest($1::text[], $2::int[]) AS k(key, max) \
                 JOIN {t} a ON a.key = k.key \
                 WHERE a.attempts >= k.max AND a.window_end > now()",
            ),
            // One more attempt for `key`, in a new window if the last ended;
            // returns the count and the seconds until the window ends.
            count: on(
                "INSERT INTO {t} AS a (key, attempts, window_start, window_end) \
                 SELECT key, 1, now(), now() + make_interval(secs => secs) \
                 FROM unnest($1::text[], $2::float8[]) AS k(key, secs) \
                 ON CONFLICT (key) DO UPDATE SET \
                   attempts = CASE WHEN a.window_end <= now() THEN 1 ELSE a.attempts + 1 END, \
                   window_start = CASE WHEN a.window_end <= now() THEN now() ELSE a.window_start END, \
                   window_end = CASE WHEN a.window_end <= now() THEN EXCLUDED.window_end \
                                ELSE a.window_end END \
                 RETURNING attempts, ceil(extract(epoch FROM window_end - now()))::bigint",
            ),
            clear: on("DELETE FROM {t} WHERE key = $1"),
            prune: on("DELETE FROM {t} WHERE window_end < now()"),
            config,
        }
    }

    fn key(kind: Kind, value: &str) -> String {
        let prefix = match kind {
            Kind::Account => "account:",
            Kind::Client => "client:",
            Kind::SignUp => "signup:",
        };
        let mut digest = Sha256::new();
        digest.update(prefix.as_bytes());
        digest.update(value.as_bytes());
        hex(&digest.finalize())
    }

    /// The in-process gate for `client`.
    fn gate(&self, client: Option<&str>) -> Result<()> {
        let Some(client) = client else {
            return Ok(());
        };
        if self
            .calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            self.burst.retain_recent();
        }
        match self.burst.check_key(&client.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                tracing::debug!("refused a login attempt: client over its rate");
                refuse(AuthError::TooManyAttempts {
                    retry_after_secs: wait.as_secs().max(1),
                })
            }
        }
    }

    /// Refuses a login for `email` from `client` while either is locked.
    pub(crate) async fn before_login(
        &self,
        conn: &mut sqlx::PgConnection,
        email: &str,
        client: Option<&str>,
    ) -> Result<()> {
        self.gate(client)?;
        let mut keys = vec![Self::key(Kind::Account, email)];
        let mut maxes = vec![limit_i32(self.config.account.max)];
        if let Some(client) = client {
            keys.push(Self::key(Kind::Client, client));
            maxes.push(limit_i32(self.config.client.max));
        }
        let blocked: Option<i64> = sqlx::query_scalar(self.blocked.clone())
            .bind(&keys)
            .bind(&maxes)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.db_error(e, "reading login attempts"))?;
        match blocked {
            Some(secs) => {
                tracing::debug!("refused a login attempt: too many failures");
                refuse(AuthError::TooManyAttempts {
                    retry_after_secs: secs.max(1) as u64,
                })
            }
            None => Ok(()),
        }
    }

    /// Counts a failed login for `email` and `client`.
    pub(crate) async fn failed_login(
        &self,
        conn: &mut sqlx::PgConnection,
        email: &str,
        client: Option<&str>,
    ) -> Result<()> {
        let mut keys = vec![Self::key(Kind::Account, email)];
        let mut secs = vec![self.config.account.window.as_secs_f64()];
        if let Some(client) = client {
            keys.push(Self::key(Kind::Client, client));
            secs.push(self.config.client.window.as_secs_f64());
        }
        self.count(conn, &keys, &secs).await.map(|_| ())
    }

    /// Clears the failures of `email` after a successful login.
    pub(crate) async fn succeeded_login(
        &self,
        conn: &mut sqlx::PgConnection,
        email: &str,
    ) -> Result<()> {
        sqlx::query(self.clear.clone())
            .bind(Self::key(Kind::Account, email))
            .execute(&mut *conn)
            .await
            .map_err(|e| self.db_error(e, "clearing login attempts"))?;
        Ok(())
    }

    /// Counts a sign-up from `client`, refusing it beyond the limit.
    pub(crate) async fn sign_up(&self, conn: &mut sqlx::PgConnection, client: &str) -> Result<()> {
        self.gate(Some(client))?;
        let keys = [Self::key(Kind::SignUp, client)];
        let secs = [self.config.sign_ups.window.as_secs_f64()];
        let (attempts, remaining) = self.count(conn, &keys, &secs).await?;
        if attempts > i64::from(self.config.sign_ups.max) {
            tracing::debug!("refused a sign-up: client over its limit");
            return refuse(AuthError::TooManyAttempts {
                retry_after_secs: remaining.max(1) as u64,
            });
        }
        Ok(())
    }

    /// Adds one attempt to each key; the first key's count and seconds left.
    async fn count(
        &self,
        conn: &mut sqlx::PgConnection,
        keys: &[String],
        secs: &[f64],
    ) -> Result<(i64, i64)> {
        if self
            .calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            sqlx::query(self.prune.clone())
                .execute(&mut *conn)
                .await
                .map_err(|e| self.db_error(e, "removing expired login attempts"))?;
        }
        let rows: Vec<(i32, i64)> = sqlx::query_as(self.count.clone())
            .bind(keys)
            .bind(secs)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.db_error(e, "counting a login attempt"))?;
        Ok(rows
            .first()
            .map(|(n, s)| (i64::from(*n), *s))
            .unwrap_or((0, 0)))
    }

    fn db_error(&self, err: sqlx::Error, context: &'static str) -> Error {
        match db_code(&err) {
            Some((code, _)) if code == sqlstate::UNDEFINED_TABLE => Error::TableMissing {
                table: self.config.table.table.to_string(),
                create: "Accounts::install() (or turn the limits off with Accounts::without_limits)",
            },
            _ => Error::Database {
                context,
                source: err,
            },
        }
    }
}

fn limit_i32(max: u32) -> i32 {
    i32::try_from(max).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_digests_per_kind() {
        let a = Limiter::key(Kind::Account, "ada@acme.test");
        assert_eq!(a.len(), 64);
        assert_ne!(a, Limiter::key(Kind::Client, "ada@acme.test"));
        assert_ne!(a, Limiter::key(Kind::SignUp, "ada@acme.test"));
        assert!(!a.contains("ada"));
    }

    #[test]
    fn the_gate_sheds_a_burst_per_client() {
        let limiter = Limiter::new(
            LoginLimits::new().rate(NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap()),
        );
        for _ in 0..3 {
            limiter.gate(Some("10.0.0.1")).unwrap();
        }
        assert!(matches!(
            limiter.gate(Some("10.0.0.1")),
            Err(Error::Auth(AuthError::TooManyAttempts { retry_after_secs })) if retry_after_secs >= 1
        ));
        // Another client is not affected, nor are calls without a client.
        limiter.gate(Some("10.0.0.2")).unwrap();
        limiter.gate(None).unwrap();
    }
}
