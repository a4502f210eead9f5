//! Shared setup: a throw-away database and a scratch directory per test, and
//! the real `hidra` binary pointed at them.

use std::path::PathBuf;
use std::process::Output;

use assert_cmd::Command;
use hidra::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use hidra::testing::TestDatabase;
use tempfile::TempDir;

/// The first tenant migration of every test.
pub const ITEMS: &str = "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, n INT NOT NULL);";

/// A pepper long enough for `ApiKeys`.
pub const PEPPER: &str = "test-pepper-0123456789abcdef-0123456789";

/// An unreachable database, with a password that must never be printed.
pub const UNREACHABLE: &str = "postgres://someone:s3cret@127.0.0.1:1/app";

pub struct Ctx {
    pub db: TestDatabase,
    pub dir: TempDir,
}

impl Ctx {
    /// A fresh database and a directory with `tenant/1_items.sql`.
    pub async fn new() -> Ctx {
        let db = TestDatabase::create()
            .await
            .expect("create a test database");
        let dir = tempfile::tempdir().expect("create a scratch directory");
        std::fs::create_dir(dir.path().join("tenant")).unwrap();
        let ctx = Ctx { db, dir };
        ctx.migration("1_items.sql", ITEMS);
        ctx
    }

    /// [`Ctx::new`], then `hidra init`.
    pub async fn initialized() -> Ctx {
        let ctx = Ctx::new().await;
        ctx.ok(&["init"]);
        ctx
    }

    pub fn tenant_dir(&self) -> PathBuf {
        self.dir.path().join("tenant")
    }

    /// Adds a tenant migration file.
    pub fn migration(&self, file: &str, sql: &str) {
        std::fs::write(self.tenant_dir().join(file), sql).unwrap();
    }

    /// The binary, run in the scratch directory against the test database,
    /// with the tenant migrations configured and no other `HIDRA_*` setting
    /// from the outside.
    pub fn cmd(&self) -> Command {
        let mut cmd = bare();
        cmd.current_dir(self.dir.path())
            .env("DATABASE_URL", self.db.url())
            .env("HIDRA_TENANT_MIGRATIONS", self.tenant_dir());
        cmd
    }

    /// Runs `args`, expects success, returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        success(self.cmd().args(args).output().unwrap())
    }

    /// Runs `args`, expects exit code 1 with one error line; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        error_line(&self.cmd().args(args).output().unwrap())
    }

    /// Runs `args` with the pepper set; expects success.
    pub fn ok_with_pepper(&self, args: &[&str]) -> String {
        success(
            self.cmd()
                .env("HIDRA_API_KEY_PEPPER", PEPPER)
                .args(args)
                .output()
                .unwrap(),
        )
    }

    pub async fn conn(&self) -> PgConnection {
        PgConnection::connect_with(&self.db.connect_options())
            .await
            .unwrap()
    }

    /// One value from the test database.
    pub async fn scalar<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        let mut conn = self.conn().await;
        let value = sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        value
    }

    /// Runs statements in the test database.
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.conn().await;
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }

    /// Whether `name` (`schema.table` or `schema`) exists.
    pub async fn exists(&self, name: &str) -> bool {
        if name.contains('.') {
            self.scalar(&format!("SELECT to_regclass('{name}') IS NOT NULL"))
                .await
        } else {
            self.scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{name}')"
            ))
            .await
        }
    }
}

/// The binary with no `DATABASE_URL` or `HIDRA_*` from the test's environment.
pub fn bare() -> Command {
    without_settings(Command::new(env!("CARGO_BIN_EXE_hidra")))
}

/// `cmd` without `DATABASE_URL` or `HIDRA_*` from the test's environment.
pub fn without_settings(mut cmd: Command) -> Command {
    cmd.env_remove("DATABASE_URL");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HIDRA_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Expects exit code 0 and no error; returns standard output.
pub fn success(out: Output) -> String {
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        out.status.success(),
        "expected success, got {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    assert!(!stderr.contains("error:"), "stderr:\n{stderr}");
    stdout
}

/// Expects exit code 1, exactly one `error: …` line on standard error and
/// no panic; returns that line.
pub fn error_line(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit code 1\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "a panic:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    assert!(
        stderr.trim_end().ends_with(errors[0]),
        "the error line should come last:\n{stderr}"
    );
    errors[0].to_owned()
}

/// Parses JSON output.
pub fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{stdout}"))
}
