//! The server registry: the PostgreSQL servers tenants may live on.
//!
//! Hidra starts on one server, the *control server*: the database
//! [`Hidra`] connects to, which holds the tenant registry and every tenant
//! whose [`Placement::server`](crate::Placement::server) is `None`. To grow
//! past it, the application registers more servers in a table it owns
//! ([`ServersTable`], created by [`Hidra::install`]), through
//! [`Hidra::servers`]: a name, a connection URL, a state (`active`,
//! `draining`, `read_only`) and a capacity hint. A tenant's registry row
//! names its server in its `server` column.
//!
//! This module keeps that registry: it checks that a server answers before
//! registering it, counts the tenants each one holds, changes states and
//! refuses to forget a server that still holds tenants. On it build:
//!
//! - *placement* (`placement`): which server a new tenant goes to, chosen by
//!   a [`PlacementPolicy`] ([`FewestTenants`] by default) or named by the
//!   [`NewTenant`](crate::NewTenant);
//! - *connections* (`pools`): one pool per server, opened on first use,
//!   under one budget ([`ServerPoolConfig`]); a tenant's checkouts go to its
//!   server;
//! - *provisioning across two servers* (`provision`): the registry row on the
//!   control server, the data on the tenant's server, all or nothing, with
//!   [`Hidra::repair_provisioning`] for what a killed process left.
//!
//! - *moves between servers* (`moves`): [`Hidra::move_to_server`] copies a
//!   tenant to another server while it stays readable.
//!
//! Connection URLs carry passwords: they are stored as given, and shown only
//! through [`redact_url`] (in `Debug`, errors and the CLI).

mod moves;
mod name;
mod placement;
mod pools;
mod provision;
mod table;
mod url;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};

pub use moves::{MoveProgress, ServerMove};
pub use name::{MAX_SERVER_NAME_LEN, ServerName};
pub(crate) use placement::ServerChoice;
pub use placement::{Candidate, FewestTenants, LOADS_TTL, PlacementPolicy};
pub(crate) use pools::{Home, ServerPools};
pub use pools::{ServerBudget, ServerHealth, ServerPoolConfig};
pub use table::ServersTable;
pub use url::redact_url;

use crate::error::{Error, Result, db_code, sqlstate};
use crate::hidra::Hidra;
use crate::sql;

/// The oldest PostgreSQL a server may run: 15 (`FOR TABLES IN SCHEMA`
/// publications, which moves between servers rely on).
pub const MIN_SERVER_VERSION_NUM: u32 = 150_000;

/// How long [`Servers::add`] and [`Servers::check`] wait for a server to
/// answer.
pub const SERVER_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a server takes tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerState {
    /// Takes new tenants and serves its own.
    Active,
    /// Serves its tenants but takes no new ones; its tenants are to be
    /// moved elsewhere before it is removed.
    Draining,
    /// Serves its tenants' reads; takes no new tenants (for maintenance,
    /// or a server on its way out).
    ReadOnly,
}

impl ServerState {
    /// The text stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Draining => "draining",
            ServerState::ReadOnly => "read_only",
        }
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServerState {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "active" => ServerState::Active,
            "draining" => ServerState::Draining,
            "read_only" => ServerState::ReadOnly,
            other => return Err(format!("unknown server state {other:?}")),
        })
    }
}

/// A registered server, with how many tenants the registry places on it.
///
/// Its `Debug` shows the URL [redacted](redact_url); [`url`](Server::url)
/// gives it whole, to connect with.
#[derive(Clone)]
#[non_exhaustive]
pub struct Server {
    /// Its name.
    pub name: ServerName,
    /// Whether it takes tenants.
    pub state: ServerState,
    /// How many tenants it should hold at most (a hint for placement).
    pub capacity: Option<u32>,
    /// How many tenant rows name it now.
    pub tenants: u64,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    url: String,
}

impl Server {
    /// The connection URL, password included: for connecting, never for
    /// showing (see [`redacted_url`](Server::redacted_url)).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("url", &self.redacted_url())
            .field("state", &self.state)
            .field("capacity", &self.capacity)
            .field("tenants", &self.tenants)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// What [`Servers::add`] registers.
///
/// ```
/// use hidra::{NewServer, ServerName};
///
/// let eu = NewServer::new(ServerName::new("eu-1")?, "postgres://app:s3cret@eu-1.internal/app")
///     .capacity(2_000);
/// assert!(!format!("{eu:?}").contains("s3cret"));
/// # Ok::<(), hidra::Error>(())
/// ```
#[derive(Clone)]
pub struct NewServer {
    name: ServerName,
    url: String,
    capacity: Option<u32>,
}

impl NewServer {
    /// A server called `name`, reached at `url`
    /// (`postgres://user:password@host:port/database`), with no capacity hint.
    pub fn new(name: ServerName, url: impl Into<String>) -> Self {
        NewServer {
            name,
            url: url.into(),
            capacity: None,
        }
    }

    /// How many tenants it should hold at most (a hint for placement; at
    /// most `i32::MAX`).
    pub fn capacity(mut self, tenants: u32) -> Self {
        self.capacity = Some(tenants);
        self
    }
}

impl fmt::Debug for NewServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewServer")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// What [`Servers::check`] found: the server answers and runs a supported
/// PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerCheck {
    /// Its `server_version` (`15.4`).
    pub version: String,
    /// How long connecting and asking took.
    pub latency: Duration,
}

/// The server registry of a [`Hidra`]; see [`Hidra::servers`]. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct Servers {
    hidra: Hidra,
    table: ServersTable,
}

impl Hidra {
    /// The server registry, in the default [`ServersTable`]
    /// (`public.hidra_servers`, created by [`install`](Hidra::install)).
    ///
    /// ```no_run
    /// use hidra::{NewServer, ServerName, ServerState};
    ///
    /// # async fn run(hidra: hidra::Hidra) -> hidra::Result<()> {
    /// let eu = ServerName::new("eu-1")?;
    /// hidra
    ///     .servers()
    ///     .add(NewServer::new(eu.clone(), "postgres://app@eu-1.internal/app").capacity(2_000))
    ///     .await?;
    /// for server in hidra.servers().list().await? {
    ///     println!("{}: {} tenants, {}", server.name, server.tenants, server.state);
    /// }
    /// hidra.servers().set_state(&eu, ServerState::Draining).await?;
    /// # Ok(()) }
    /// ```
    pub fn servers(&self) -> Servers {
        Servers {
            hidra: self.clone(),
            table: self.inner.conns.servers.table.clone(),
        }
    }
}

impl Servers {
    /// `text` with `{t}` the servers table and `{cols}` (if there) the
    /// columns a [`Server`] is read from.
    fn statement(&self, text: &'static str) -> sqlx::SqlStr {
        let statement = sql::template(text).table("t", self.table.table());
        match text.contains("{cols}") {
            true => statement.sql("cols", COLUMNS).finish(),
            false => statement.finish(),
        }
    }

    /// The table of this registry.
    pub fn table(&self) -> &ServersTable {
        &self.table
    }

    /// Registers a server, after connecting to it once: it must answer
    /// within [`SERVER_CHECK_TIMEOUT`] and run PostgreSQL 15 or later.
    ///
    /// Fails with [`Error::ServerExists`] if the name is taken,
    /// [`Error::InvalidUrl`], [`Error::ServerUnreachable`] or
    /// [`Error::ServerUnsupported`] if the server cannot be used (nothing is
    /// registered then), and [`Error::TableMissing`] before
    /// [`Hidra::install`].
    pub async fn add(&self, new: NewServer) -> Result<Server> {
        let capacity = new
            .capacity
            .map(|c| {
                i32::try_from(c).map_err(|_| {
                    Error::InvalidConfig(
                        format!(
                            "server capacity {c} is too large; the limit is {}",
                            i32::MAX
                        )
                        .into(),
                    )
                })
            })
            .transpose()?;
        // A taken name is said before waiting for a server to answer.
        if self.get(&new.name).await?.is_some() {
            return Err(Error::ServerExists(new.name));
        }
        probe(&new.name, &new.url).await?;
        let mut conn = self.hidra.acquire_shared().await?;
        let row = sqlx::query(self.statement(
            "INSERT INTO {t} (name, url, state, capacity) VALUES ($1, $2, 'active', $3) \
             RETURNING {cols}",
        ))
        .bind(new.name.as_str())
        .bind(&new.url)
        .bind(capacity)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| match db_code(&err) {
            Some((code, constraint))
                if code == sqlstate::UNIQUE_VIOLATION
                    && constraint.as_deref() == Some(self.table.pkey().as_str()) =>
            {
                Error::ServerExists(new.name.clone())
            }
            _ => self.map_err("registering a server")(err),
        })?;
        self.decode(&row, 0)
    }

    /// Every registered server, by name, with its tenant count.
    pub async fn list(&self) -> Result<Vec<Server>> {
        Ok(self.list_with_control_count().await?.0)
    }

    /// The server called `name`, if registered.
    pub async fn get(&self, name: &ServerName) -> Result<Option<Server>> {
        let mut conn = self.hidra.acquire_shared().await?;
        let row = sqlx::query(
            self.statement("SELECT {cols} FROM {t} WHERE name = $1 AND removed_at IS NULL"),
        )
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(self.map_err("reading the server registry"))?;
        let Some(row) = row else { return Ok(None) };
        let count = self.tenant_count(&mut conn, name).await?;
        self.decode(&row, count).map(Some)
    }

    /// Sets the state of the server called `name`: drain it
    /// ([`ServerState::Draining`]), make it read-only or active again.
    /// Fails with [`Error::ServerNotFound`] if it is not registered.
    pub async fn set_state(&self, name: &ServerName, state: ServerState) -> Result<Server> {
        let mut conn = self.hidra.acquire_shared().await?;
        let row = sqlx::query(self.statement(
            "UPDATE {t} SET state = $2 WHERE name = $1 AND removed_at IS NULL RETURNING {cols}",
        ))
        .bind(name.as_str())
        .bind(state.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(self.map_err("changing a server's state"))?
        .ok_or_else(|| Error::ServerNotFound(name.clone()))?;
        self.hidra.inner.conns.servers.loads.clear();
        let count = self.tenant_count(&mut conn, name).await?;
        self.decode(&row, count)
    }

    /// Forgets the server called `name`. Its databases are left as they are.
    ///
    /// Its name is never registered again ([`Error::ServerExists`]): running
    /// processes keep a server's connections by its name, so a name reused
    /// for another server would send them to the old one. The row stays,
    /// marked `removed_at`, and is no longer listed.
    ///
    /// Fails with [`Error::ServerInUse`] while any tenant row names it (move
    /// or deprovision those tenants first), and [`Error::ServerNotFound`] if
    /// it is not registered. The control server is not in the registry and
    /// cannot be removed.
    pub async fn remove(&self, name: &ServerName) -> Result<()> {
        let mut conn = self.hidra.acquire_shared().await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning to remove a server"))?;
        // Locked, so that its row cannot change while its tenants are counted.
        let found = sqlx::query(
            self.statement("SELECT 1 FROM {t} WHERE name = $1 AND removed_at IS NULL FOR UPDATE"),
        )
        .bind(name.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.map_err("reading a server to remove"))?;
        if found.is_none() {
            return Err(Error::ServerNotFound(name.clone()));
        }
        let tenants = self.tenant_count(&mut tx, name).await?;
        if tenants > 0 {
            return Err(Error::ServerInUse {
                name: name.clone(),
                tenants,
            });
        }
        sqlx::query(self.statement("UPDATE {t} SET removed_at = now() WHERE name = $1"))
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(self.map_err("removing a server"))?;
        tx.commit()
            .await
            .map_err(Error::db("committing a server's removal"))?;
        let pools = &self.hidra.inner.conns.servers;
        pools.loads.clear();
        if let Some(conns) = pools.forget(name.as_str()) {
            conns.close().await;
        }
        tracing::info!(server = %name, "server removed from the registry");
        Ok(())
    }

    /// Connects to `server` once: it must answer within [`SERVER_CHECK_TIMEOUT`]
    /// and run PostgreSQL 15 or later. Fails with
    /// [`Error::ServerUnreachable`] or [`Error::ServerUnsupported`].
    pub async fn check(&self, server: &Server) -> Result<ServerCheck> {
        probe(&server.name, &server.url).await
    }

    /// Every registered server, and how many tenants the control server
    /// holds: what placement chooses from.
    pub(crate) async fn list_with_control_count(&self) -> Result<(Vec<Server>, u64)> {
        let mut conn = self.hidra.acquire_shared().await?;
        let rows = sqlx::query(
            self.statement("SELECT {cols} FROM {t} WHERE removed_at IS NULL ORDER BY name"),
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(self.map_err("listing servers"))?;
        if rows.is_empty() {
            // Nothing to count for (placement asks often).
            return Ok((Vec::new(), 0));
        }
        let counts = self.tenant_counts(&mut conn, None).await?;
        let servers = rows
            .iter()
            .map(|row| {
                let name: String = row.try_get(0).unwrap_or_default();
                self.decode(row, counts.get(&name).copied().unwrap_or(0))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((servers, counts.get("").copied().unwrap_or(0)))
    }

    /// How many tenant rows name each server, by name (`only`: that one;
    /// else the control server's tenants too, under `""`).
    async fn tenant_counts(
        &self,
        conn: &mut PgConnection,
        only: Option<&ServerName>,
    ) -> Result<HashMap<String, u64>> {
        let inner = &self.hidra.inner;
        let Some(store) = &inner.registry.own else {
            // A custom store: walk its records.
            let mut counts = HashMap::new();
            for tenant in crate::store::list_all(&inner.registry.store, conn).await? {
                let server = tenant.placement.server.unwrap_or_default();
                if only.is_none_or(|o| o.as_str() == server) {
                    *counts.entry(server).or_default() += 1;
                }
            }
            return Ok(counts);
        };
        let registry = store.registry();
        let counts = sql::template(
            "SELECT coalesce({server}, ''), count(*) FROM {t} \
             WHERE ($1::text IS NULL OR {server} = $1) GROUP BY 1",
        )
        .ident("server", registry.server_column())
        .table("t", registry.table())
        .finish();
        let rows: Vec<(String, i64)> = sqlx::query_as(counts)
            .bind(only.map(ServerName::as_str))
            .fetch_all(conn)
            .await
            .map_err(|err| match db_code(&err) {
                Some((code, _)) if code == sqlstate::UNDEFINED_TABLE => {
                    Error::RegistryMissing(registry.table().to_string())
                }
                _ => Error::Database {
                    context: "counting the tenants of each server",
                    source: err,
                },
            })?;
        Ok(rows
            .into_iter()
            .map(|(name, n)| (name, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn tenant_count(&self, conn: &mut PgConnection, name: &ServerName) -> Result<u64> {
        let counts = self.tenant_counts(conn, Some(name)).await?;
        Ok(counts.get(name.as_str()).copied().unwrap_or(0))
    }

    /// A row of [`COLUMNS`] as a server holding `tenants` tenants.
    fn decode(&self, row: &PgRow, tenants: u64) -> Result<Server> {
        let corrupt = |reason: String| {
            let name: String = row.try_get(0).unwrap_or_default();
            Error::InvalidConfig(
                format!(
                    "the row of server {name:?} in {} is not valid: {reason}; fix or delete it",
                    self.table.table()
                )
                .into(),
            )
        };
        let name: String = row.try_get(0).map_err(|e| corrupt(e.to_string()))?;
        let state: String = row.try_get(2).map_err(|e| corrupt(e.to_string()))?;
        let capacity: Option<i32> = row.try_get(3).map_err(|e| corrupt(e.to_string()))?;
        Ok(Server {
            name: ServerName::new(&name).map_err(|e| corrupt(e.to_string()))?,
            url: row.try_get(1).map_err(|e| corrupt(e.to_string()))?,
            state: state.parse().map_err(corrupt)?,
            capacity: capacity.map(|c| u32::try_from(c).unwrap_or(0)),
            tenants,
            created_at: row.try_get(4).map_err(|e| corrupt(e.to_string()))?,
        })
    }

    fn map_err(&self, context: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |err| match db_code(&err) {
            Some((code, _)) if code == sqlstate::UNDEFINED_TABLE => {
                let table = self.table.table().to_string();
                let create = "Hidra::install() (or ServersTable::ddl() in your own migrations)";
                Error::TableMissing { table, create }
            }
            _ => Error::Database {
                context,
                source: err,
            },
        }
    }
}

/// The columns every statement returns, in [`Servers::decode`]'s order.
const COLUMNS: &str = "name, url, state, capacity, created_at";

/// Connects to `url` once and asks its version.
async fn probe(name: &ServerName, url: &str) -> Result<ServerCheck> {
    let options: PgConnectOptions = url.parse().map_err(Error::InvalidUrl)?;
    let options = options.application_name("hidra");
    let unreachable = |source: sqlx::Error| Error::ServerUnreachable {
        name: name.clone(),
        url: redact_url(url),
        source,
    };
    let started = Instant::now();
    let asked = async {
        let mut conn = PgConnection::connect_with(&options).await?;
        let version: (String, i32) = sqlx::query_as(
            "SELECT current_setting('server_version'), \
             current_setting('server_version_num')::int4",
        )
        .fetch_one(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(version)
    };
    let (version, num) = match tokio::time::timeout(SERVER_CHECK_TIMEOUT, asked).await {
        Ok(answer) => answer.map_err(unreachable)?,
        Err(_) => {
            return Err(unreachable(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", SERVER_CHECK_TIMEOUT.as_secs()),
            ))));
        }
    };
    if u32::try_from(num).unwrap_or(0) < MIN_SERVER_VERSION_NUM {
        return Err(Error::ServerUnsupported {
            name: name.clone(),
            url: redact_url(url),
            version,
        });
    }
    Ok(ServerCheck {
        version,
        latency: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [
            ServerState::Active,
            ServerState::Draining,
            ServerState::ReadOnly,
        ] {
            assert_eq!(state.as_str().parse::<ServerState>(), Ok(state));
        }
        assert!("paused".parse::<ServerState>().is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let new = NewServer::new(
            ServerName::new("eu-1").unwrap(),
            "postgres://app:s3cret@db/app",
        );
        let shown = format!("{new:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://app:***@db/app"), "{shown}");
    }
}
