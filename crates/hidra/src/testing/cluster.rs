//! [`TempCluster`]: a private PostgreSQL server started from the installed binaries.
//!
//! Everything here shells out to `initdb` and `pg_ctl`. `initdb` refuses to run as
//! root, so when the tests run as root (containers, CI images) the server commands
//! run as the `postgres` system user through `runuser` (or `su`).

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::error::{Error, Result};

/// The system user that owns the cluster when the tests run as root.
const SERVER_USER: &str = "postgres";

/// Where the cluster directories go: short and reachable by every user, which
/// keeps the Unix socket path below its length limit.
const TEMP_ROOT: &str = "/tmp";

/// How many ports to try when the chosen one is taken before the server binds it.
const START_ATTEMPTS: usize = 3;

/// How long to wait for the started server to accept a connection.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The message when no server binaries are installed.
const NO_BINARIES: &str = "no PostgreSQL server binaries found (initdb, pg_ctl); install them with `apt-get install -y postgresql` or set DATABASE_URL";

/// A throw-away PostgreSQL cluster (`initdb` + `pg_ctl`) in a fresh directory
/// under `/tmp`, listening on a free port of 127.0.0.1 with `trust`
/// authentication for the user `postgres`.
///
/// The server runs with `fsync=off` and friends: it is fast and loses data on a
/// crash, which is what tests want. [`stop`](TempCluster::stop) shuts it down and
/// removes the directory; dropping it does the same synchronously (immediate
/// shutdown). A detached watchdog process also removes it once this process has
/// exited, so a cluster that is never dropped (held in a `static`, or a process
/// that was killed) does not outlive the tests.
///
/// Binaries: `initdb` and `pg_ctl` from `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin`. When running as root the server runs as
/// the `postgres` system user.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use hidra::testing::TempCluster;
///
/// let cluster = TempCluster::start().await?;
/// let pool = sqlx::PgPool::connect(cluster.url()).await?;
/// # drop(pool);
/// cluster.stop().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TempCluster {
    /// The directory holding everything: `data/`, `log` and the Unix socket.
    root: PathBuf,
    /// The data directory (`<root>/data`).
    data_dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    url: String,
    /// The directory of `initdb` and `pg_ctl`.
    bins: PgBinaries,
    /// Who runs the server commands.
    run_as: RunAs,
    /// The detached process that cleans up after this process exits.
    watchdog: Option<Child>,
    /// Whether a server may be running in `data_dir`.
    running: bool,
    /// Whether the directory has been removed (nothing left for `Drop`).
    removed: bool,
}

impl TempCluster {
    /// Creates a cluster in a new directory, starts it on a free port and waits
    /// until it accepts connections.
    ///
    /// Fails with [`Error::Harness`] when no server binaries are installed, when
    /// running as root without a `postgres` system user, or when `initdb` or the
    /// server fails (the message includes their output or the server log).
    pub async fn start() -> Result<TempCluster> {
        let bins = PgBinaries::find()?;
        let run_as = RunAs::detect()?;
        let root = create_root_dir()?;
        let mut cluster = TempCluster {
            data_dir: root.join("data"),
            root,
            url: String::new(),
            bins,
            run_as,
            watchdog: None,
            running: false,
            removed: false,
        };
        // On any error below, dropping `cluster` stops what was started and
        // removes the directory.
        if let RunAs::Root(_) = cluster.run_as {
            let mut chown = Command::new("chown");
            chown.arg("-R").arg(SERVER_USER).arg(&cluster.root);
            run("chown", chown).await?;
        }
        cluster.initdb().await?;
        cluster.start_server().await?;
        cluster.spawn_watchdog();
        cluster.wait_until_ready().await?;
        tracing::info!(
            data_dir = %cluster.data_dir.display(),
            url = %cluster.url,
            bin_dir = %cluster.bins.dir.display(),
            "started a throw-away PostgreSQL cluster"
        );
        Ok(cluster)
    }

    /// A streaming replica of this cluster: `pg_basebackup -R` into a new
    /// directory, started on a free port, read-only, replaying this cluster's
    /// WAL as it is written. Removed like any [`TempCluster`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use hidra::testing::TempCluster;
    ///
    /// let primary = TempCluster::start().await?;
    /// let replica = primary.start_replica().await?;
    /// let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
    ///     .fetch_one(&sqlx::PgPool::connect(replica.url()).await?)
    ///     .await?;
    /// assert!(standby);
    /// # Ok(()) }
    /// ```
    pub async fn start_replica(&self) -> Result<TempCluster> {
        let root = create_root_dir()?;
        let mut replica = TempCluster {
            data_dir: root.join("data"),
            root,
            url: String::new(),
            bins: PgBinaries {
                dir: self.bins.dir.clone(),
            },
            run_as: RunAs::detect()?,
            watchdog: None,
            running: false,
            removed: false,
        };
        if let RunAs::Root(_) = replica.run_as {
            let mut chown = Command::new("chown");
            chown.arg("-R").arg(SERVER_USER).arg(&replica.root);
            run("chown", chown).await?;
        }
        let args: Vec<OsString> = vec![
            "-D".into(),
            replica.data_dir.clone().into(),
            "-d".into(),
            self.url.clone().into(),
            "-R".into(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "--no-sync".into(),
        ];
        let backup = replica
            .run_as
            .command(&self.bins.tool("pg_basebackup"), &args);
        run("pg_basebackup", backup).await?;
        replica.start_server().await?;
        replica.spawn_watchdog();
        replica.wait_until_ready().await?;
        tracing::info!(
            data_dir = %replica.data_dir.display(),
            url = %replica.url,
            primary = %self.url,
            "started a throw-away streaming replica"
        );
        Ok(replica)
    }

    /// The URL of its `postgres` database, as the superuser `postgres` (no password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The data directory of the cluster (its `log` and Unix socket are in the
    /// parent directory, which is removed with it).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Shuts the server down (`pg_ctl stop -m fast`, waiting for it) and removes
    /// the directory.
    pub async fn stop(mut self) -> Result<()> {
        if self.running {
            let stop = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
            run("pg_ctl stop", stop).await?;
            self.running = false;
        }
        self.kill_watchdog();
        tokio::fs::remove_dir_all(&self.root).await.map_err(|e| {
            Error::Harness(format!(
                "could not remove the cluster directory {}: {e}",
                self.root.display()
            ))
        })?;
        self.removed = true;
        Ok(())
    }

    /// Runs `initdb` into `data_dir`.
    async fn initdb(&self) -> Result<()> {
        let mut args: Vec<OsString> = vec!["-D".into(), self.data_dir.clone().into()];
        args.extend(
            [
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
            .map(OsString::from),
        );
        let cmd = self.run_as.command(&self.bins.initdb(), &args);
        run("initdb", cmd).await
    }

    /// Stops the server (`pg_ctl stop -m fast`) and keeps its data, for tests
    /// of what clients see while the database is away; [`resume`](Self::resume)
    /// starts it again on the same port.
    pub async fn pause(&mut self) -> Result<()> {
        if self.running {
            let stop = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
            run("pg_ctl stop", stop).await?;
            self.running = false;
        }
        Ok(())
    }

    /// Starts a [paused](Self::pause) server again on its port and waits
    /// until it accepts connections.
    pub async fn resume(&mut self) -> Result<()> {
        if !self.running {
            let port: u16 = self
                .url
                .rsplit_once(':')
                .and_then(|(_, rest)| rest.split('/').next())
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::Harness(format!("no port in {}", self.url)))?;
            self.start_on(port).await?;
            self.wait_until_ready().await?;
        }
        Ok(())
    }

    /// Starts the server on a free port, trying another port if that one was
    /// taken in the meantime; sets `url` and `running`.
    async fn start_server(&mut self) -> Result<()> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match self.start_on(port).await {
                Ok(()) => return Ok(()),
                Err(Error::Harness(message)) => last_error = Some(message),
                Err(other) => return Err(other),
            }
        }
        Err(Error::Harness(last_error.unwrap_or_default()))
    }

    /// Starts the server on `port`; sets `url` and `running`.
    async fn start_on(&mut self, port: u16) -> Result<()> {
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.root.display()
        );
        let log = self.root.join("log");
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-l".into(),
            log.into(),
            "-w".into(),
            "-t".into(),
            "60".into(),
            "-o".into(),
            options.into(),
            "start".into(),
        ];
        // Set before starting: if pg_ctl gives up waiting, a server may still
        // be coming up, and `Drop` must stop it.
        self.running = true;
        let cmd = self.run_as.command(&self.bins.pg_ctl(), &args);
        match run("pg_ctl start", cmd).await {
            Ok(()) => {
                self.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                Ok(())
            }
            Err(Error::Harness(message)) => Err(Error::Harness(format!(
                "{message}\nserver log:\n{}",
                self.log_tail()
            ))),
            Err(other) => Err(other),
        }
    }

    /// Waits until the server accepts a connection on `url`.
    async fn wait_until_ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(&self.url))
                    .await;
            match attempt {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Harness(format!(
                        "the throw-away cluster at {} does not accept connections: {e}\nserver log:\n{}",
                        self.url,
                        self.log_tail()
                    )));
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Harness(format!(
                        "the throw-away cluster at {} does not accept connections (timed out)\nserver log:\n{}",
                        self.url,
                        self.log_tail()
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Spawns a detached shell that waits for this process to exit, then stops
    /// the server and removes the directory. Without it a cluster held in a
    /// `static` would never be cleaned up.
    fn spawn_watchdog(&mut self) {
        let stop = self.run_as.argv(
            &self.bins.pg_ctl(),
            &[
                "-D".into(),
                self.data_dir.clone().into(),
                "stop".into(),
                "-m".into(),
                "immediate".into(),
            ],
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {root}",
            pid = std::process::id(),
            stop = shell_join(&stop),
            root = sh_quote(self.root.as_os_str()),
        );
        // `setsid` keeps a Ctrl-C to the test run's process group from killing it.
        let mut cmd = match find_executable("setsid") {
            Some(setsid) => {
                let mut cmd = Command::new(setsid);
                cmd.arg("sh");
                cmd
            }
            None => Command::new("sh"),
        };
        cmd.arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(child) => self.watchdog = Some(child),
            Err(e) => tracing::warn!(
                error = %e,
                data_dir = %self.data_dir.display(),
                "could not spawn the cleanup watchdog; the cluster will outlive this process unless it is dropped"
            ),
        }
    }

    /// Ends the watchdog once the cluster is cleaned up here.
    fn kill_watchdog(&mut self) {
        if let Some(mut child) = self.watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A `pg_ctl -D <data_dir> <args>` command, as the right user.
    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut all: Vec<OsString> = vec!["-D".into(), self.data_dir.clone().into()];
        all.extend(args.iter().map(OsString::from));
        self.run_as.command(&self.bins.pg_ctl(), &all)
    }

    /// The last lines of the server log, for error messages.
    fn log_tail(&self) -> String {
        match std::fs::read_to_string(self.root.join("log")) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
            Err(e) => format!("(no server log: {e})"),
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if self.running {
            let mut stop = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
            match stop.output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => tracing::warn!(
                    data_dir = %self.data_dir.display(),
                    output = %String::from_utf8_lossy(&out.stderr).trim(),
                    "could not stop the throw-away PostgreSQL cluster"
                ),
                Err(e) => tracing::warn!(
                    data_dir = %self.data_dir.display(),
                    error = %e,
                    "could not run pg_ctl to stop the throw-away PostgreSQL cluster"
                ),
            }
        }
        self.kill_watchdog();
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(
                dir = %self.root.display(),
                error = %e,
                "could not remove the throw-away PostgreSQL cluster directory"
            );
        }
    }
}

/// Where `initdb` and `pg_ctl` are.
#[derive(Debug)]
struct PgBinaries {
    /// The directory holding both.
    dir: PathBuf,
}

impl PgBinaries {
    /// `initdb` and `pg_ctl` from `PATH` (both in the same directory), else the
    /// highest version under `/usr/lib/postgresql/*/bin`.
    fn find() -> Result<PgBinaries> {
        // Through symlinks (`/usr/local/bin/initdb` → the version's `bin`),
        // where the other server tools are too.
        let real = |path: PathBuf| std::fs::canonicalize(&path).unwrap_or(path);
        if let (Some(initdb), Some(pg_ctl)) = (
            find_executable("initdb").map(real),
            find_executable("pg_ctl").map(real),
        ) && let (Some(dir), Some(ctl_dir)) = (initdb.parent(), pg_ctl.parent())
            && dir == ctl_dir
        {
            return Ok(PgBinaries {
                dir: dir.to_path_buf(),
            });
        }
        let mut best: Option<(Vec<u32>, PathBuf)> = None;
        if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
            for entry in entries.flatten() {
                let Some(version) = entry.file_name().to_str().and_then(parse_version) else {
                    continue;
                };
                let bin = entry.path().join("bin");
                if !(is_executable(&bin.join("initdb")) && is_executable(&bin.join("pg_ctl"))) {
                    continue;
                }
                if best.as_ref().is_none_or(|(v, _)| version > *v) {
                    best = Some((version, bin));
                }
            }
        }
        best.map(|(_, dir)| PgBinaries { dir })
            .ok_or_else(|| Error::Harness(NO_BINARIES.to_owned()))
    }

    /// The `initdb` binary.
    fn initdb(&self) -> PathBuf {
        self.dir.join("initdb")
    }

    /// The `pg_ctl` binary.
    fn pg_ctl(&self) -> PathBuf {
        self.dir.join("pg_ctl")
    }

    /// Another tool of the same installation (`pg_basebackup`), else the one
    /// on `PATH`.
    fn tool(&self, name: &str) -> PathBuf {
        let beside = self.dir.join(name);
        if is_executable(&beside) {
            return beside;
        }
        find_executable(name).unwrap_or(beside)
    }
}

/// Who runs the server commands.
#[derive(Debug)]
enum RunAs {
    /// The current (non-root) user.
    CurrentUser,
    /// Root: switch to the `postgres` system user with this method.
    Root(SwitchUser),
}

/// How root switches to the `postgres` user.
#[derive(Debug)]
enum SwitchUser {
    /// `runuser -u postgres -- <argv>`.
    Runuser(PathBuf),
    /// `su postgres -s /bin/sh -c '<argv>'`.
    Su(PathBuf),
}

impl RunAs {
    /// Checks whether this process runs as root and, if so, that the `postgres`
    /// user exists and that `runuser` or `su` can switch to it.
    fn detect() -> Result<RunAs> {
        if !running_as_root() {
            return Ok(RunAs::CurrentUser);
        }
        let user_exists = Command::new("id")
            .args(["-u", SERVER_USER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !user_exists {
            return Err(Error::Harness(format!(
                "running as root, where initdb refuses to run, and there is no `{SERVER_USER}` system user to run it as; \
                 create one (`useradd --system {SERVER_USER}`), run the tests as a regular user, or set DATABASE_URL"
            )));
        }
        if let Some(runuser) = find_executable("runuser") {
            Ok(RunAs::Root(SwitchUser::Runuser(runuser)))
        } else if let Some(su) = find_executable("su") {
            Ok(RunAs::Root(SwitchUser::Su(su)))
        } else {
            Err(Error::Harness(format!(
                "running as root, where initdb refuses to run, and neither `runuser` nor `su` is available \
                 to run it as `{SERVER_USER}`; run the tests as a regular user or set DATABASE_URL"
            )))
        }
    }

    /// The full argument vector that runs `program args` as the right user.
    fn argv(&self, program: &Path, args: &[OsString]) -> Vec<OsString> {
        let mut inner: Vec<OsString> = Vec::with_capacity(args.len() + 1);
        inner.push(program.into());
        inner.extend(args.iter().cloned());
        match self {
            RunAs::CurrentUser => inner,
            RunAs::Root(SwitchUser::Runuser(runuser)) => {
                let mut argv: Vec<OsString> =
                    vec![runuser.into(), "-u".into(), SERVER_USER.into(), "--".into()];
                argv.extend(inner);
                argv
            }
            RunAs::Root(SwitchUser::Su(su)) => vec![
                su.into(),
                SERVER_USER.into(),
                "-s".into(),
                "/bin/sh".into(),
                "-c".into(),
                shell_join(&inner).into(),
            ],
        }
    }

    /// A command that runs `program args` as the right user, from `/` (a
    /// directory every user may enter), with no input.
    fn command(&self, program: &Path, args: &[OsString]) -> Command {
        let argv = self.argv(program, args);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).current_dir("/").stdin(Stdio::null());
        cmd
    }
}

/// Runs a command to completion, turning a failure into [`Error::Harness`]
/// with its output.
async fn run(what: &str, cmd: Command) -> Result<()> {
    let mut cmd = tokio::process::Command::from(cmd);
    let out = cmd
        .output()
        .await
        .map_err(|e| Error::Harness(format!("could not run {what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut message = format!("{what} failed ({})", out.status);
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        let text = text.trim();
        if !text.is_empty() {
            let _ = write!(message, "\n{text}");
        }
    }
    Err(Error::Harness(message))
}

/// Whether this process runs as root (`id -u` prints 0).
pub(super) fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"0")
}

/// Creates `/tmp/hidra-pg-<pid>-<random hex>` with mode 0700.
fn create_root_dir() -> Result<PathBuf> {
    let mut last_error = None;
    for _ in 0..8 {
        let dir = Path::new(TEMP_ROOT).join(format!(
            "hidra-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // The umask may have narrowed it, never widened it; make it exact.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(
                    |e| {
                        Error::Harness(format!(
                            "could not set permissions of {}: {e}",
                            dir.display()
                        ))
                    },
                )?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => {
                return Err(Error::Harness(format!(
                    "could not create a cluster directory under {TEMP_ROOT}: {e}"
                )));
            }
        }
    }
    Err(Error::Harness(format!(
        "could not create a cluster directory under {TEMP_ROOT}: {}",
        last_error.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// A port of 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub(super) fn free_port() -> Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| Error::Harness(format!("could not find a free port on 127.0.0.1: {e}")))
}

/// The first executable file called `name` in a directory of `PATH`.
pub(super) fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file with an execute bit set (following symlinks).
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Parses a directory name such as `15` or `9.6` into comparable numbers.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Quotes one word for `sh`: `'it'\''s'`.
fn sh_quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Quotes and joins an argument vector into one `sh` command line.
fn shell_join(argv: &[OsString]) -> String {
    argv.iter()
        .map(|word| sh_quote(word))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("15").unwrap() > parse_version("9.6").unwrap());
        assert!(parse_version("16").unwrap() > parse_version("15").unwrap());
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        assert_eq!(sh_quote(OsStr::new("a b")), "'a b'");
        assert_eq!(sh_quote(OsStr::new("it's")), "'it'\\''s'");
        assert_eq!(
            shell_join(&["pg_ctl".into(), "-D".into(), "/tmp/x y".into()]),
            "'pg_ctl' '-D' '/tmp/x y'"
        );
    }

    #[test]
    fn root_switches_user_before_the_program() {
        let runuser = RunAs::Root(SwitchUser::Runuser("/usr/sbin/runuser".into()));
        let argv = runuser.argv(Path::new("/bin/initdb"), &["-D".into(), "/tmp/d".into()]);
        assert_eq!(
            argv,
            [
                "/usr/sbin/runuser",
                "-u",
                "postgres",
                "--",
                "/bin/initdb",
                "-D",
                "/tmp/d"
            ]
            .map(OsString::from)
        );
        let su = RunAs::Root(SwitchUser::Su("/bin/su".into()));
        let argv = su.argv(Path::new("/bin/initdb"), &["-D".into(), "/tmp/d".into()]);
        assert_eq!(argv.last().unwrap(), "'/bin/initdb' '-D' '/tmp/d'");
    }

    #[test]
    fn free_ports_are_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
