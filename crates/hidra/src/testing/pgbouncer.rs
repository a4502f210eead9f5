//! [`TempPgBouncer`]: a private PgBouncer in transaction mode, in front of a
//! PostgreSQL server, for tests of Hidra's
//! [transaction-pooler mode](crate::HidraBuilder::transaction_pooler).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::cluster::{find_executable, free_port, running_as_root};
use crate::error::{Error, Result};

/// How long to wait for PgBouncer to accept a connection.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A throw-away PgBouncer (`pool_mode = transaction`, `trust` authentication)
/// on a free port of 127.0.0.1, forwarding every database name to one
/// PostgreSQL server. Stopped, and its directory removed, when dropped.
///
/// `server_pool_size` is the number of server connections per database and
/// user: with 1, every client shares one server connection, so anything a
/// client leaves on it (session settings, named prepared statements) meets
/// the next client at once.
///
/// Needs the `pgbouncer` binary (`apt-get install -y pgbouncer`); when
/// running as root it runs as the `postgres` system user.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use hidra::testing::{TempPgBouncer, TestDatabase};
///
/// let db = TestDatabase::create().await?;
/// let bouncer = TempPgBouncer::start(db.url(), 2).await?;
/// let hidra = hidra::Hidra::builder()
///     .transaction_pooler(&bouncer.url_for(db.name()))
///     .connect(db.url())
///     .await?;
/// # drop(hidra);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TempPgBouncer {
    dir: PathBuf,
    port: u16,
    user: String,
    child: Child,
}

impl TempPgBouncer {
    /// Starts PgBouncer in front of the server of `upstream` (a PostgreSQL
    /// URL; its host, port and user are used, the database comes from each
    /// client), with `server_pool_size` server connections per database.
    pub async fn start(upstream: &str, server_pool_size: u32) -> Result<TempPgBouncer> {
        let options: PgConnectOptions = upstream
            .parse()
            .map_err(|e| Error::Harness(format!("invalid upstream URL {upstream:?}: {e}")))?;
        let binary = find_executable("pgbouncer")
            .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.exists()))
            .ok_or_else(|| {
                Error::Harness(
                    "no `pgbouncer` binary found; install it with `apt-get install -y pgbouncer`"
                        .into(),
                )
            })?;
        let dir = std::env::temp_dir().join(format!(
            "hidra-pgbouncer-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let harness = |what: &str, e: std::io::Error| Error::Harness(format!("{what}: {e}"));
        std::fs::create_dir(&dir).map_err(|e| harness("creating the PgBouncer directory", e))?;
        let port = free_port()?;
        let user = options.get_username().to_owned();
        let host = options.get_host().to_owned();
        let ini = format!(
            "[databases]\n\
             * = host={host} port={upstream_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {server_pool_size}\n\
             min_pool_size = 0\n\
             reserve_pool_size = 0\n\
             max_client_conn = 2000\n\
             max_db_connections = {server_pool_size}\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             server_reset_query =\n\
             pidfile = {dir}/pgbouncer.pid\n",
            upstream_port = options.get_port(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini)
            .map_err(|e| harness("writing pgbouncer.ini", e))?;
        std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n"))
            .map_err(|e| harness("writing userlist.txt", e))?;
        let log = File::create(dir.join("log")).map_err(|e| harness("creating the log", e))?;
        let mut cmd = Command::new(binary);
        if running_as_root() {
            // PgBouncer refuses to run as root; the `postgres` user reads
            // the files (world-readable) and writes its pidfile here.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| harness("opening the PgBouncer directory", e))?;
            cmd.args(["-u", "postgres"]);
        }
        cmd.arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().map_err(|e| harness("starting pgbouncer", e))?;
        let bouncer = TempPgBouncer {
            dir,
            port,
            user,
            child,
        };
        bouncer.wait_until_ready().await?;
        Ok(bouncer)
    }

    /// The URL of database `name` through PgBouncer.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            self.user, self.port
        )
    }

    /// The port PgBouncer listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn wait_until_ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let options: PgConnectOptions = self
            .url_for("postgres")
            .parse()
            .map_err(|e| Error::Harness(format!("{e}")))?;
        loop {
            match options.connect().await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Harness(format!(
                        "PgBouncer on port {} does not accept connections: {e}\nlog:\n{}",
                        self.port,
                        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for TempPgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
