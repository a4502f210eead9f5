//! Setup shared by the integration tests of the workspace's crates (each
//! crate's `tests/common` keeps what is its own): a throw-away database with
//! Hidra installed, tenant ids, tenants with a marker row saying whose schema
//! it is, waiting on a condition, PostgreSQL's notices, and base64url for
//! hand-made tokens.
//!
//! Unpublished, and a dev-dependency only: no library depends on it.

use std::future::Future;
use std::time::{Duration, Instant};

use hidra::testing::TestDatabase;
use hidra::{Hidra, HidraBuilder, NewTenant, Tenant, TenantId};

/// A throw-away database and a [`Hidra`] connected to it, with Hidra's
/// tables installed.
#[derive(Debug)]
pub struct Ctx {
    /// The database; dropped when the test ends, or by [`Ctx::teardown`].
    pub db: TestDatabase,
    /// The handle.
    pub hidra: Hidra,
}

impl Ctx {
    /// Provisions the tenant `name`.
    pub async fn tenant(&self, name: &str) -> Tenant {
        self.hidra
            .provision(NewTenant::new(id(name)))
            .await
            .expect("provision")
    }

    /// Closes the handle and drops the database now.
    pub async fn teardown(self) {
        self.hidra.close().await;
        self.db.drop_now().await.unwrap();
    }
}

/// A fresh database with Hidra's tables (`Hidra::install`), and a [`Hidra`]
/// built from `builder`.
pub async fn setup_with(builder: HidraBuilder) -> Ctx {
    let db = TestDatabase::create().await.expect("create test database");
    let hidra = builder
        .connect_with(db.connect_options())
        .await
        .expect("connect hidra");
    hidra.install().await.expect("install hidra");
    Ctx { db, hidra }
}

/// The tenant id `s`, which must be valid.
pub fn id(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

/// Writes `marker` into `tenant`'s `marker (tenant TEXT)` table.
pub async fn write_marker(hidra: &Hidra, tenant: &Tenant, marker: &str) {
    let mut conn = hidra.acquire(tenant).await.unwrap();
    sqlx::query("INSERT INTO marker (tenant) VALUES ($1)")
        .bind(marker)
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Provisions `name` and writes its name as its marker row (see
/// [`write_marker`]).
pub async fn tenant_with_marker(hidra: &Hidra, name: &str) -> Tenant {
    let tenant = hidra.provision(NewTenant::new(id(name))).await.unwrap();
    write_marker(hidra, &tenant, name).await;
    tenant
}

/// How long [`wait_for`] waits: a guard against a hang, not a measure of
/// speed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `check` every 10 ms until it returns `Some`; panics after
/// [`PATIENCE`], naming what it waited for.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `w0`, `w1`, … into `tenant` with `insert` (one `$1` parameter),
/// a transaction each (as the web layer's requests do), until `stop`, as an
/// application would: through a record it re-reads only after a failure.
/// Returns the values whose commit was acknowledged, and how many failed.
pub async fn keep_writing(
    hidra: Hidra,
    tenant: TenantId,
    insert: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<String>, usize) {
    let (mut acked, mut failures) = (Vec::new(), 0);
    let mut record = hidra.tenant(&tenant).await.unwrap().unwrap();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let value = format!("w{}", acked.len());
        let written = async {
            let mut tx = hidra.begin(&record).await?;
            sqlx::query(insert).bind(&value).execute(&mut tx).await?;
            tx.commit().await?;
            Ok::<_, hidra::BoxError>(())
        };
        match written.await {
            Ok(()) => acked.push(value),
            Err(_) => {
                failures += 1;
                record = hidra.tenant(&tenant).await.unwrap().unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    (acked, failures)
}

/// Runs `work` while `writers` tasks [`keep_writing`] into `tenant` (from
/// 100 ms before it to 200 ms after); returns its output and each writer's
/// acknowledged values.
pub async fn while_writing<T>(
    hidra: &Hidra,
    tenant: &TenantId,
    insert: &'static str,
    writers: usize,
    work: impl Future<Output = T>,
) -> (T, Vec<Vec<String>>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            tokio::spawn(keep_writing(
                hidra.clone(),
                tenant.clone(),
                insert,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = work.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for task in tasks {
        acked.push(task.await.unwrap().0);
    }
    (out, acked)
}

/// PostgreSQL's notices as sqlx logs them (target `sqlx::postgres::notice`),
/// captured while `f` runs on this thread.
pub async fn notices_during<F: Future<Output = ()>>(f: F) -> String {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "sqlx::postgres::notice=trace",
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test's runtime is single-threaded: everything `f` does, spawned
    // tasks included, runs on this thread and logs to `subscriber`.
    let guard = tracing::subscriber::set_default(subscriber);
    f.await;
    drop(guard);
    let bytes = capture.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

/// Unpadded base64url, for hand-made tokens.
pub fn b64url_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Decodes base64url (or base64), with or without padding.
pub fn b64url_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => panic!("not base64url: {text:?}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

/// The ordinary role [`app_server`] creates: row-level security does not
/// restrict a superuser, so servers are used as this role.
pub const APP_ROLE: &str = "hidra_app";

/// A throw-away PostgreSQL cluster to register as a server: [`APP_ROLE`]
/// (no superuser, no `BYPASSRLS`, `CREATEDB`, allowed to create schemas in
/// `postgres`) has run `setup` (the row-level tables, say) there. Returns the
/// cluster and the URL to register, which logs in as that role.
pub async fn app_server(setup: &str) -> (hidra::testing::TempCluster, String) {
    use sqlx::Connection;
    let cluster = hidra::testing::TempCluster::start().await.unwrap();
    let mut su = sqlx::PgConnection::connect(cluster.url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS CREATEDB;
         GRANT CREATE ON DATABASE postgres TO {APP_ROLE};
         GRANT ALL ON SCHEMA public TO {APP_ROLE};
         SET ROLE {APP_ROLE};
         {setup}"
    )))
    .execute(&mut su)
    .await
    .unwrap();
    let url = cluster
        .url()
        .replacen("postgres@", &format!("{APP_ROLE}@"), 1);
    (cluster, url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips() {
        for len in 0..10 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            let text = b64url_encode(&bytes);
            assert!(!text.contains('='), "{text}");
            assert_eq!(b64url_decode(&text), bytes, "{text}");
        }
        assert_eq!(b64url_encode(b"\xfb\xff"), "-_8");
        assert_eq!(b64url_decode("+/8="), b"\xfb\xff");
    }
}

/// Another run of the current test binary: one `#[ignore]`d test, started
/// as a child process to be killed (SIGKILL) at a point it announces. It is
/// killed when dropped too, so no child outlives a failed assertion.
#[derive(Debug)]
pub struct ChildTest(std::process::Child);

impl ChildTest {
    /// Starts the ignored test `name` with the environment `env`, and waits
    /// until it prints a line containing `READY` (panics if it ends first,
    /// or after 60 s).
    pub async fn until_ready(name: &str, env: &[(&str, &str)]) -> ChildTest {
        use std::io::BufRead;
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                name,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped());
        let mut child = ChildTest(command.spawn().expect("start the child test"));
        let stdout = child.0.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.contains("READY"))
        });
        let ready = tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .unwrap_or_else(|_| panic!("{name} did not get READY within 60 s"))
            .unwrap();
        assert!(ready, "{name} ended before it was READY ({env:?})");
        child
    }

    /// Kills it with SIGKILL and waits for it to end.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildTest {
    fn drop(&mut self) {
        self.kill();
    }
}
