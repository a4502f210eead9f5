//! Throw-away PostgreSQL for tests and demos (feature `testing`).
//!
//! Hidra's own tests, the tests of applications built on it, and the demo's
//! zero-setup default all need a PostgreSQL server to talk to and a database no
//! one else uses. This module finds or starts the server and hands out databases
//! that disappear afterwards:
//!
//! - [`PgServer::get`] resolves a server once per process: `DATABASE_URL` if it is
//!   set, else a server on `127.0.0.1:5432` (user `postgres`, no password;
//!   `HIDRA_LOCAL_PG_URL` names another local address) if one answers, else a
//!   private [`TempCluster`] started from the installed server binaries
//!   (`apt-get install -y postgresql`), removed when the process exits.
//! - [`TestDatabase::create`] creates a uniquely named database on that server for
//!   one test and drops it at the end, even when the test panics.
//!
//! Needs PostgreSQL 13 or newer (`DROP DATABASE ... WITH (FORCE)`) and a Unix host.
//!
//! ```no_run
//! use hidra::testing::TestDatabase;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = TestDatabase::create().await?;
//! let pool = sqlx::PgPool::connect_with(db.connect_options()).await?;
//! sqlx::query("CREATE TABLE t (id INT)").execute(&pool).await?;
//! pool.close().await;
//! db.drop_now().await?; // or let it drop
//! # Ok(()) }
//! ```

mod cluster;
mod pgbouncer;

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::servers::redact_url as redact;
use crate::sql::Ident;

pub use self::cluster::TempCluster;
pub use self::pgbouncer::TempPgBouncer;

/// The server tried when `DATABASE_URL` is not set.
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Overrides [`DEFAULT_URL`]: a local server elsewhere, or (pointing at a
/// closed port) always a throw-away cluster.
const LOCAL_URL_VAR: &str = "HIDRA_LOCAL_PG_URL";

/// How long a server may take to answer a probe or an administrative connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long dropping a database from `Drop` may take to connect.
const DROP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLSTATE `object_in_use`: the template database is busy (concurrent `CREATE DATABASE`).
const OBJECT_IN_USE: &str = "55006";

/// The process-wide server.
static SERVER: OnceCell<PgServer> = OnceCell::const_new();

/// Where a PostgreSQL server answers, resolved once per process.
///
/// See [`PgServer::get`] for the order in which servers are tried.
pub struct PgServer {
    /// The administrative URL.
    url: String,
    /// The cluster started for this process, if no server was found.
    cluster: Option<TempCluster>,
}

// By hand: the URLs may carry a password.
impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("url", &redact(&self.url))
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("url", &redact(&self.url))
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl PgServer {
    /// The server of this process, resolved on first use:
    ///
    /// 1. `DATABASE_URL`, if set, used as is; it must answer within two seconds,
    ///    else this fails with [`Error::Harness`] naming the URL (password hidden).
    /// 2. `postgres://postgres@127.0.0.1:5432/postgres` (or `HIDRA_LOCAL_PG_URL`
    ///    if set), if something answers there within two seconds.
    /// 3. A [`TempCluster`] started from the installed server binaries; it is
    ///    stopped and removed when the process exits.
    ///
    /// Later calls return the same server, from any tokio runtime. A failed
    /// resolution is retried by the next call.
    ///
    /// ```no_run
    /// # async fn run() -> hidra::Result<()> {
    /// let server = hidra::testing::PgServer::get().await?;
    /// println!("tests use {} (temporary: {})", server.url(), server.is_temporary());
    /// # Ok(()) }
    /// ```
    pub async fn get() -> Result<&'static PgServer> {
        SERVER.get_or_try_init(PgServer::resolve).await
    }

    /// Finds or starts a server (see [`get`](PgServer::get)).
    async fn resolve() -> Result<PgServer> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => {
                probe(&url).await.map_err(|e| {
                    Error::Harness(format!(
                        "DATABASE_URL {} does not answer: {e}; start that server or unset DATABASE_URL",
                        redact(&url)
                    ))
                })?;
                tracing::debug!(url = %redact(&url), "using the PostgreSQL server of DATABASE_URL");
                return Ok(PgServer { url, cluster: None });
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::Harness(
                    "DATABASE_URL is not valid UTF-8; fix or unset it".to_owned(),
                ));
            }
            _ => {}
        }
        let local = std::env::var(LOCAL_URL_VAR)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        match probe(&local).await {
            Ok(()) => {
                tracing::debug!(url = %redact(&local), "using the local PostgreSQL server");
                return Ok(PgServer {
                    url: local,
                    cluster: None,
                });
            }
            Err(reason) => tracing::debug!(
                url = %redact(&local),
                %reason,
                "no usable local PostgreSQL server; starting a throw-away cluster"
            ),
        }
        let cluster = TempCluster::start().await?;
        Ok(PgServer {
            url: cluster.url().to_owned(),
            cluster: Some(cluster),
        })
    }

    /// The administrative URL: `DATABASE_URL` as given, or the `postgres`
    /// database of the local or temporary server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this process started the server (a [`TempCluster`]).
    pub fn is_temporary(&self) -> bool {
        self.cluster.is_some()
    }

    /// The URL of another database on the same server, with the same user,
    /// password and parameters.
    ///
    /// ```
    /// # use hidra::testing::PgServer;
    /// # fn check(server: &PgServer) {
    /// // postgres://postgres@127.0.0.1:5432/postgres -> postgres://postgres@127.0.0.1:5432/app
    /// let url = server.url_for_database("app");
    /// # let _ = url; }
    /// ```
    pub fn url_for_database(&self, db: &str) -> String {
        replace_database(&self.url, db)
    }
}

/// A tenant record that was never registered, for tests of code that takes
/// one (issuing tokens, say): schema per tenant, active, created at a fixed
/// instant, so its [`incarnation`](crate::Tenant::incarnation) is stable.
pub fn tenant_record(id: &str) -> crate::Tenant {
    let at =
        chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).expect("a valid instant");
    crate::Tenant {
        id: crate::TenantId::new(id).expect("a valid tenant id"),
        name: id.to_owned(),
        status: crate::TenantStatus::Active,
        placement: crate::Placement {
            strategy: crate::Strategy::Schema,
            schema: format!("tenant_{}", id.replace('-', "_")),
            database: None,
            server: None,
        },
        metadata: serde_json::json!({}),
        created_at: at,
        updated_at: at,
    }
}

/// A uniquely named database created on the [`PgServer`] for one test and
/// dropped at the end.
///
/// Its name is `hidra_test_<pid>_<random hex>` (another prefix:
/// [`create_with_prefix`](TestDatabase::create_with_prefix)). [`drop_now`](TestDatabase::drop_now)
/// drops it and reports errors; if it is simply dropped (the test returned early
/// or panicked) the database is dropped anyway, on a short-lived thread, and
/// errors are only logged. Open connections to it are terminated either way.
///
/// ```no_run
/// use hidra::testing::TestDatabase;
///
/// #[tokio::test]
/// async fn works() {
///     let db = TestDatabase::create().await.unwrap();
///     let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
///     // ...
/// } // `db` is dropped here, even if an assertion above panicked.
/// ```
pub struct TestDatabase {
    /// The database name.
    name: String,
    /// Its URL.
    url: String,
    /// Its connect options.
    options: PgConnectOptions,
    /// The server it lives on.
    server: &'static PgServer,
    /// Whether it was dropped already.
    dropped: bool,
}

impl TestDatabase {
    /// Creates a new database on [`PgServer::get`]'s server.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let db = hidra::testing::TestDatabase::create().await?;
    /// let pool = sqlx::PgPool::connect_with(db.connect_options()).await?;
    /// # drop(pool); Ok(()) }
    /// ```
    pub async fn create() -> Result<TestDatabase> {
        TestDatabase::create_with_prefix("hidra_test").await
    }

    /// Like [`create`](TestDatabase::create), with the name
    /// `<prefix>_<pid>_<random hex>`; the prefix must be a valid identifier
    /// of at most 30 bytes.
    ///
    /// ```no_run
    /// # async fn run() -> hidra::Result<()> {
    /// let db = hidra::testing::TestDatabase::create_with_prefix("myapp_demo").await?;
    /// assert!(db.name().starts_with("myapp_demo_"));
    /// # Ok(()) }
    /// ```
    pub async fn create_with_prefix(prefix: &str) -> Result<TestDatabase> {
        if prefix.is_empty()
            || prefix.len() > 30
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::Harness(format!(
                "invalid test database prefix {prefix:?}: use 1 to 30 lowercase letters, digits or `_`"
            )));
        }
        let server = PgServer::get().await?;
        let name = format!(
            "{prefix}_{}_{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let ident = Ident::new(name.clone(), "test database name")?;
        let options: PgConnectOptions = server
            .url
            .parse::<PgConnectOptions>()
            .map_err(|e| {
                Error::Harness(format!("invalid server URL {}: {e}", redact(server.url())))
            })?
            .database(&name);
        let mut conn = admin_connect(server.url(), CONNECT_TIMEOUT).await?;
        let sql = crate::sql::create_database(&ident, None);
        let mut attempt = 0u64;
        let created = loop {
            attempt += 1;
            match sqlx::raw_sql(sql.clone()).execute(&mut conn).await {
                // Someone is connected to the template (or another CREATE DATABASE
                // holds it on old servers): wait a little and try again.
                Err(sqlx::Error::Database(e))
                    if attempt < 10 && e.code().as_deref() == Some(OBJECT_IN_USE) =>
                {
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                other => break other,
            }
        };
        let _ = conn.close().await;
        created.map_err(Error::db("creating a test database"))?;
        tracing::debug!(database = %name, "created a test database");
        Ok(TestDatabase {
            url: server.url_for_database(&name),
            name,
            options,
            server,
            dropped: false,
        })
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connect options for the database, for `PgPoolOptions::connect_with`.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// Drops the database now (`DROP DATABASE ... WITH (FORCE)`, which ends open
    /// connections to it) and reports failure.
    pub async fn drop_now(mut self) -> Result<()> {
        drop_database(self.server.url(), &self.name, CONNECT_TIMEOUT).await?;
        self.dropped = true;
        Ok(())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        self.dropped = true;
        // Drop usually runs inside a tokio runtime (the test's), where blocking on
        // a future is not allowed: use a fresh thread with its own runtime.
        let admin_url = self.server.url().to_owned();
        let name = self.name.clone();
        let spawned = std::thread::Builder::new()
            .name("hidra-drop-test-db".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Harness(format!("could not start a tokio runtime: {e}")))?;
                runtime.block_on(drop_database(&admin_url, &name, DROP_CONNECT_TIMEOUT))
            });
        let outcome = match spawned {
            Ok(handle) => match handle.join() {
                Ok(result) => result,
                Err(_) => Err(Error::Harness("the drop thread panicked".to_owned())),
            },
            Err(e) => Err(Error::Harness(format!("could not spawn a thread: {e}"))),
        };
        if let Err(error) = outcome {
            tracing::warn!(database = %self.name, %error, "could not drop the test database");
        }
    }
}

/// Connects to `url` within `timeout`, or explains why not.
async fn probe(url: &str) -> std::result::Result<(), String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// An administrative connection to the server.
async fn admin_connect(url: &str, timeout: Duration) -> Result<PgConnection> {
    match tokio::time::timeout(timeout, PgConnection::connect(url)).await {
        Ok(result) => result.map_err(Error::db("connecting to the test PostgreSQL server")),
        Err(_) => Err(Error::Harness(format!(
            "the test PostgreSQL server {} did not answer within {} s",
            redact(url),
            timeout.as_secs()
        ))),
    }
}

/// `DROP DATABASE IF EXISTS "name" WITH (FORCE)` on the server of `admin_url`.
async fn drop_database(admin_url: &str, name: &str, timeout: Duration) -> Result<()> {
    let ident = Ident::new(name.to_owned(), "test database name")?;
    let mut conn = admin_connect(admin_url, timeout).await?;
    let dropped = sqlx::raw_sql(crate::sql::drop_database(&ident))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    dropped.map_err(Error::db("dropping a test database"))?;
    tracing::debug!(database = %name, "dropped a test database");
    Ok(())
}

/// `url` with its database (the path) replaced by `db`, keeping the query string.
fn replace_database(url: &str, db: &str) -> String {
    let (head, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority..].find('/') {
        Some(slash) => &head[..authority + slash],
        None => head,
    };
    format!("{base}/{}{query}", percent_encode(db))
}

/// Percent-encodes everything but unreserved URL characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        let server = PgServer {
            url: "postgres://app:s3cret@db.internal:5432/postgres".to_owned(),
            cluster: None,
        };
        let shown = format!("{server:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
    }

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            replace_database(
                "postgres://postgres@127.0.0.1:5432/postgres",
                "hidra_test_1_ab"
            ),
            "postgres://postgres@127.0.0.1:5432/hidra_test_1_ab"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/app?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://h:5433", "x"),
            "postgres://h:5433/x"
        );
        assert_eq!(
            replace_database("postgres://h?host=/run/postgresql", "x"),
            "postgres://h/x?host=/run/postgresql"
        );
        assert_eq!(replace_database("postgres:///app", "x"), "postgres:///x");
        assert_eq!(
            replace_database("postgres://h/a", "my db"),
            "postgres://h/my%20db"
        );
    }
}
