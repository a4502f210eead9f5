//! Migrations of the shared schema (`public`): the registry table, lookups.

use std::time::Instant;

use sqlx::Connection;

use super::Migrations;
use crate::error::{Error, Result};
use crate::hidra::Hidra;

/// Advisory lock key held while shared migrations run.
const SHARED_LOCK: i64 = 0x6869_6472_615f_0002;

/// What [`Hidra::migrate_shared`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedReport {
    /// Versions applied by this call.
    pub applied: Vec<i64>,
    /// The shared schema's version afterwards.
    pub version: i64,
}

/// Where the shared schema stands, from [`Hidra::shared_migration_status`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStatus {
    /// The last shared migration applied (0: none).
    pub version: i64,
    /// Versions configured but not applied yet, in order.
    pub pending: Vec<i64>,
    /// Why [`Hidra::migrate_shared`] would refuse to run: an applied migration
    /// that is missing from the configured ones or was edited.
    pub problem: Option<String>,
}

/// One applied shared migration, as recorded.
#[derive(sqlx::FromRow)]
struct Applied {
    version: i64,
    description: String,
    checksum: Vec<u8>,
}

async fn read_history(conn: &mut sqlx::PgConnection) -> Result<Vec<Applied>> {
    sqlx::query_as(
        "SELECT version, description, checksum FROM hidra.shared_migrations ORDER BY version",
    )
    .fetch_all(conn)
    .await
    .map_err(Error::db("reading the shared migration history"))
}

/// Why the configured `migrations` cannot continue the `applied` history: an
/// applied migration missing or edited, or a configured one numbered below
/// the last applied version that was never applied (it would be skipped).
fn history_problem(migrations: &Migrations, applied: &[Applied]) -> Option<String> {
    for a in applied {
        match migrations.iter().find(|m| m.version == a.version) {
            None => {
                return Some(format!(
                    "applied migration {} ({}) is missing from the configured migrations",
                    a.version, a.description
                ));
            }
            Some(m) if m.checksum != a.checksum => {
                return Some(format!(
                    "applied migration {} ({}) was edited (checksum mismatch)",
                    a.version, a.description
                ));
            }
            Some(_) => {}
        }
    }
    let last = applied.last().map_or(0, |a| a.version);
    migrations
        .iter()
        .find(|m| m.version < last && !applied.iter().any(|a| a.version == m.version))
        .map(|m| {
            format!(
                "migration {} ({}) is numbered below the last applied one ({last}) but was never \
                 applied; give it a version above {last}",
                m.version, m.description
            )
        })
}

impl Hidra {
    /// Reads the shared migration history against the configured shared
    /// migrations, changing nothing (not even creating hidra's internal
    /// schema: a database never migrated is at version 0).
    pub async fn shared_migration_status(&self) -> Result<SharedStatus> {
        let mut conn = self.acquire_shared().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('hidra.shared_migrations') IS NOT NULL")
                .fetch_one(&mut *conn)
                .await
                .map_err(Error::db("looking for the shared migration history"))?;
        let applied = if exists {
            read_history(&mut conn).await?
        } else {
            Vec::new()
        };
        let migrations = &self.inner.migrations.shared;
        let version = applied.last().map_or(0, |a| a.version);
        let problem = history_problem(migrations, &applied);
        Ok(SharedStatus {
            version,
            pending: migrations
                .after(version)
                .iter()
                .map(|m| m.version)
                .collect(),
            problem,
        })
    }

    /// Creates hidra's internal schema (`hidra`: migration bookkeeping, the
    /// warm pool) if it is missing. Idempotent and safe to run from several
    /// processes at once; [`migrate_shared`](Hidra::migrate_shared), the
    /// runner and provisioning call it themselves.
    pub async fn init_internal_schema(&self) -> Result<()> {
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await
    }

    /// Applies the pending shared migrations, in order, each in its own
    /// transaction (or none, for `-- no-transaction`), under one lock so that
    /// two processes never run them at once. Applied migrations are checked:
    /// an edited one is an [`Error::ChecksumMismatch`] and nothing runs.
    pub async fn migrate_shared(&self) -> Result<SharedReport> {
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        // Session-level lock: if this future is dropped the connection is
        // closed (below), which releases it.
        conn.close_on_drop();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(SHARED_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("locking the shared migrations"))?;
        let result = self.migrate_shared_locked(&mut conn).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(SHARED_LOCK)
            .execute(&mut *conn)
            .await;
        let report = result?;
        unlocked.map_err(Error::db("unlocking the shared migrations"))?;
        Ok(report)
    }

    async fn migrate_shared_locked(&self, conn: &mut sqlx::PgConnection) -> Result<SharedReport> {
        let migrations = &self.inner.migrations.shared;
        let applied = read_history(conn).await?;
        if let Some(detail) = history_problem(migrations, &applied) {
            return Err(Error::ChecksumMismatch {
                schema: "shared".into(),
                detail,
            });
        }
        let current = applied.last().map_or(0, |a| a.version);
        let mut report = SharedReport {
            applied: Vec::new(),
            version: current,
        };
        for m in migrations.after(current) {
            let started = Instant::now();
            let failed = |source| super::failed_alone(m, "shared", source);
            let record = sqlx::query(
                "INSERT INTO hidra.shared_migrations (version, description, checksum, duration_ms) \
                 VALUES ($1, $2, $3, $4)",
            );
            if m.no_tx {
                sqlx::raw_sql(crate::sql::trusted(&m.sql))
                    .execute(&mut *conn)
                    .await
                    .map_err(failed)?;
                record
                    .bind(m.version)
                    .bind(&m.description)
                    .bind(&m.checksum)
                    .bind(started.elapsed().as_millis() as i64)
                    .execute(&mut *conn)
                    .await
                    .map_err(Error::db("recording a shared migration"))?;
            } else {
                let mut tx = conn
                    .begin()
                    .await
                    .map_err(Error::db("beginning a shared migration"))?;
                sqlx::raw_sql(crate::sql::trusted(&m.sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
                record
                    .bind(m.version)
                    .bind(&m.description)
                    .bind(&m.checksum)
                    .bind(started.elapsed().as_millis() as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("recording a shared migration"))?;
                tx.commit()
                    .await
                    .map_err(Error::db("committing a shared migration"))?;
            }
            tracing::info!(version = m.version, description = %m.description, "applied shared migration");
            report.applied.push(m.version);
            report.version = m.version;
        }
        Ok(report)
    }
}
