//! Schema migrations for the shared schema and for every tenant schema.
//!
//! Migrations use sqlx's file format (`<version>_<description>.sql`, a first
//! line `-- no-transaction` for statements such as `CREATE INDEX CONCURRENTLY`
//! that cannot run in a transaction), embedded at compile time with
//! [`sqlx::migrate!`] or loaded from a directory at run time:
//!
//! ```no_run
//! # async fn run() -> hidra::Result<()> {
//! use hidra::{Hidra, Migrations};
//!
//! let hidra = Hidra::builder()
//!     .shared_migrations(Migrations::from_dir("migrations/shared").await?)
//!     // or, embedded at compile time: Migrations::from_sqlx(&sqlx::migrate!("migrations/tenant"))
//!     .tenant_migrations(Migrations::from_dir("migrations/tenant").await?)
//!     .connect("postgres://postgres@127.0.0.1/app")
//!     .await?;
//! hidra.migrate_shared().await?;
//! let summary = hidra.migrator().concurrency(8).run().await?;
//! println!("{summary}");
//! # Ok(()) }
//! ```
//!
//! # How tenant migrations are kept
//!
//! Each tenant schema keeps its own history in `_hidra_migrations` (version,
//! description, checksum, applied_at, duration). Hidra also keeps one row per
//! schema in `hidra.schema_versions`: the version and a digest of the checksums
//! applied so far, written in the same transaction. Planning a run over every
//! tenant therefore takes a handful of queries, whatever the number of
//! tenants, and an edited migration is detected as a digest mismatch without
//! reading every history.
//!
//! All pending transactional migrations of a tenant are applied in **one
//! transaction and one round trip**, under a per-tenant advisory lock and a
//! check that nobody else migrated the tenant since the plan was made: two
//! runners (two deploys, two pods) never apply a migration twice. A
//! `-- no-transaction` migration is applied on its own, under a session-level
//! lock of that tenant.
//!
//! New tenants get every migration in one round trip inside their
//! provisioning transaction, up to the first `-- no-transaction` one: from
//! there, the tenant is committed as `provisioning` (refused by the web
//! layer), the runner applies the rest (each `-- no-transaction` migration on
//! its own, outside any transaction), and the tenant is then activated, or
//! removed again if that fails. Or they come from the warm pool of spare
//! schemas already at the latest version.

mod batch;
mod bookkeeping;
mod runner;
mod shared;
mod template;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub use crate::strategy::schema::warm::WarmPoolStatus;
pub(crate) use batch::{
    APPLIED_COLUMN, Batch, Spans, migration_batch, record_history, tenant_history_ddl,
};
pub use bookkeeping::InternalSchemaStatus;
pub(crate) use bookkeeping::{
    INTERNAL_LOCK, SERVER_BIND_ROW_LEVEL, ensure_internal, internal_ddl, internal_status,
};
pub use runner::{
    Failure, Migrated, MigrationRunner, MigrationStatus, Plan, PlannedTarget, Progress, RunSummary,
    Target,
};
pub(crate) use runner::{read_history, recorded_state};
pub use shared::{SharedReport, SharedStatus};
pub use template::{DEFAULT_TEMPLATE_SCHEMA, TemplateSchema};

/// The longest migration description, in bytes: a tenant's history row is
/// stored uncompressed in one page (see `batch::tenant_history_ddl`). sqlx's
/// file names give far shorter ones.
pub(crate) const MAX_DESCRIPTION_BYTES: usize = 1000;

/// One migration: a version, a description and the SQL to run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Migration {
    /// Version; migrations apply in increasing order.
    pub version: i64,
    /// What it does (from the file name).
    pub description: String,
    /// The SQL, run with the target schema first in `search_path`.
    pub sql: String,
    /// SHA-384 of the SQL, as sqlx computes it.
    pub checksum: Vec<u8>,
    /// Must run outside a transaction (`-- no-transaction` on its first line).
    pub no_tx: bool,
}

/// The migrations the handle runs: every tenant's, the shared schema's,
/// and how many spare tenant schemas the warm pool keeps ready.
#[derive(Debug)]
pub(crate) struct MigrationConfig {
    pub(crate) tenant: Migrations,
    pub(crate) shared: Migrations,
    pub(crate) warm_pool: usize,
}

/// An ordered set of migrations, for the shared schema or for tenant schemas.
#[derive(Clone, Debug)]
pub struct Migrations {
    list: Arc<[Migration]>,
    /// `digests[i]` is the digest after applying `list[..i]`; `digests[0]` is empty.
    digests: Arc<[Vec<u8>]>,
}

impl Default for Migrations {
    fn default() -> Self {
        Migrations::new()
    }
}

impl Migrations {
    /// No migrations.
    pub fn new() -> Self {
        Self::from_list(Vec::new()).expect("an empty set is valid")
    }

    /// The up-migrations of a sqlx [`Migrator`](sqlx::migrate::Migrator), such
    /// as the one [`sqlx::migrate!`] embeds at compile time.
    ///
    /// # Panics
    ///
    /// If a version is not positive or two migrations share one (sqlx's
    /// loader checks neither); [`try_from_sqlx`](Self::try_from_sqlx) returns
    /// the error instead.
    pub fn from_sqlx(migrator: &sqlx::migrate::Migrator) -> Self {
        Self::try_from_sqlx(migrator).unwrap_or_else(|e| panic!("invalid sqlx migrations: {e}"))
    }

    /// [`from_sqlx`](Self::from_sqlx), failing with [`Error::InvalidConfig`]
    /// on a version that is not positive or on two migrations of one version.
    pub fn try_from_sqlx(migrator: &sqlx::migrate::Migrator) -> Result<Self> {
        let list = migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| Migration {
                version: m.version,
                description: m.description.to_string(),
                sql: m.sql.as_str().to_owned(),
                checksum: m.checksum.to_vec(),
                no_tx: m.no_tx,
            })
            .collect();
        // sqlx has sorted them; `from_list` checks the rest.
        Self::from_list(list)
    }

    /// Loads the migrations of a directory at run time (sqlx's file format).
    /// Fails with [`Error::MigrationSource`] when the directory cannot be
    /// read, and [`Error::InvalidConfig`] when a version is not positive or
    /// two files share a version.
    pub async fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let migrator =
            sqlx::migrate::Migrator::new(dir)
                .await
                .map_err(|source| Error::MigrationSource {
                    dir: dir.to_owned(),
                    source,
                })?;
        Self::try_from_sqlx(&migrator).map_err(|e| {
            Error::InvalidConfig(format!("invalid migrations in {}: {e}", dir.display()).into())
        })
    }

    /// Appends a migration numbered after the last one.
    ///
    /// # Panics
    ///
    /// If the last version is `i64::MAX` or the description is over 1,000
    /// bytes; [`try_push`](Self::try_push) returns the error instead.
    pub fn push(self, description: impl Into<String>, sql: impl Into<String>) -> Self {
        self.try_push(description, sql)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`push`](Self::push), failing with [`Error::InvalidConfig`] when no
    /// version follows the last one or the description is over 1,000 bytes.
    pub fn try_push(self, description: impl Into<String>, sql: impl Into<String>) -> Result<Self> {
        let mut list = self.list.to_vec();
        let version = match list.last() {
            None => 1,
            Some(m) => m.version.checked_add(1).ok_or_else(|| {
                Error::InvalidConfig(
                    format!(
                        "no migration version follows {}; number it yourself",
                        m.version
                    )
                    .into(),
                )
            })?,
        };
        let sql = sql.into();
        list.push(Migration {
            version,
            description: description.into(),
            checksum: checksum(&sql),
            no_tx: sql.starts_with("-- no-transaction"),
            sql,
        });
        Self::from_list(list)
    }

    /// Builds a set from migrations in increasing version order. Fails with
    /// [`Error::InvalidConfig`] when a version is not positive or does not
    /// increase, or when a description is over 1,000 bytes (each tenant's
    /// history stores it uncompressed).
    pub fn from_list(list: Vec<Migration>) -> Result<Self> {
        if let Some(w) = list.windows(2).find(|w| w[0].version >= w[1].version) {
            return Err(Error::InvalidConfig(
                format!(
                    "migration versions must increase: {} is followed by {}",
                    w[0].version, w[1].version
                )
                .into(),
            ));
        }
        if let Some(m) = list.iter().find(|m| m.version <= 0) {
            return Err(Error::InvalidConfig(
                format!("migration versions must be positive, found {}", m.version).into(),
            ));
        }
        if let Some(m) = list
            .iter()
            .find(|m| m.description.len() > MAX_DESCRIPTION_BYTES)
        {
            return Err(Error::InvalidConfig(
                format!(
                    "the description of migration {} is {} bytes long; a tenant's history \
                     keeps it uncompressed, in at most {MAX_DESCRIPTION_BYTES} bytes: shorten it",
                    m.version,
                    m.description.len()
                )
                .into(),
            ));
        }
        let mut digests = Vec::with_capacity(list.len() + 1);
        digests.push(Vec::new());
        for m in &list {
            let prev = digests.last().expect("non-empty");
            digests.push(chain(prev, m.version, &m.checksum));
        }
        Ok(Migrations {
            list: list.into(),
            digests: digests.into(),
        })
    }

    /// The migrations, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Migration> {
        self.list.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The version of the last migration, 0 when there are none.
    pub fn latest(&self) -> i64 {
        self.list.last().map_or(0, |m| m.version)
    }

    /// The digest of every migration (the state of an up-to-date schema).
    pub(crate) fn latest_digest(&self) -> &[u8] {
        self.digests.last().expect("digests has len + 1 entries")
    }

    /// The expected digest of a schema at `version`, if `version` is one of
    /// ours (or 0).
    pub(crate) fn digest_at(&self, version: i64) -> Option<&[u8]> {
        if version == 0 {
            return Some(&self.digests[0]);
        }
        let i = self.list.iter().position(|m| m.version == version)?;
        Some(&self.digests[i + 1])
    }

    /// The migrations after `version`.
    pub(crate) fn after(&self, version: i64) -> &[Migration] {
        let i = self.list.partition_point(|m| m.version <= version);
        &self.list[i..]
    }

    /// The digest after applying `m` on top of `prev`.
    pub(crate) fn next_digest(prev: &[u8], m: &Migration) -> Vec<u8> {
        chain(prev, m.version, &m.checksum)
    }
}

/// Creates `schema` (inside the caller's transaction, in one round trip) with
/// every migration that can run in a transaction: all of them, or those before
/// the first `-- no-transaction` one, which the runner applies after commit.
/// Returns the version reached, or the error and the migration that failed
/// (`None`: creating the schema itself failed).
pub(crate) async fn create_schema(
    conn: &mut sqlx::PgConnection,
    schema: &crate::sql::Ident,
    search_path: &str,
    migrations: &Migrations,
) -> std::result::Result<i64, (sqlx::Error, Option<FailedMigration>)> {
    let NewSchema {
        sql,
        spans,
        version,
        batch,
    } = NewSchema::new(schema, search_path, migrations);
    match execute_batch(conn, sql).await {
        Ok(()) => Ok(version),
        Err(BatchFailure {
            error, applied: 0, ..
        }) if crate::error::db_code(&error)
            .is_some_and(|(code, _)| code == crate::error::sqlstate::DUPLICATE_SCHEMA) =>
        {
            Err((error, None))
        }
        Err(BatchFailure { error, applied, .. }) => {
            let failed = failed_migration(&batch, &spans, &error, 0, applied);
            Err((error, failed))
        }
    }
}

/// The migration of `batch` that `error` stopped, with the line in it: where
/// PostgreSQL's error position points (`prefix`: characters sent before the
/// batch), else the one after the `applied` ones.
pub(crate) fn failed_migration(
    batch: &[Migration],
    spans: &Spans,
    error: &sqlx::Error,
    prefix: usize,
    applied: usize,
) -> Option<FailedMigration> {
    match spans.locate(batch, error, prefix) {
        Some((i, line)) => batch.get(i).map(|m| FailedMigration {
            label: label(m).into_owned(),
            line: Some(line),
        }),
        None => batch
            .get(applied)
            .or(batch.last())
            .map(|m| FailedMigration {
                label: label(m).into_owned(),
                line: None,
            }),
    }
}

/// `m`, sent on its own, failed with `error`: the error, at its line.
pub(crate) fn failed_alone(m: &Migration, schema: &str, error: sqlx::Error) -> Error {
    let spans = Spans::alone();
    failed_migration(std::slice::from_ref(m), &spans, &error, 0, 0)
        .expect("one migration")
        .error(schema, error)
}

/// Which migration failed, and at which of its lines.
#[derive(Clone, Debug)]
pub(crate) struct FailedMigration {
    pub(crate) label: String,
    pub(crate) line: Option<u32>,
}

impl FailedMigration {
    /// The error of this migration failing on `schema`.
    pub(crate) fn error(self, schema: &str, source: sqlx::Error) -> Error {
        Error::MigrationFailed {
            schema: schema.to_owned(),
            migration: self.label,
            line: self.line,
            source,
        }
    }
}

/// The batch that creates a schema with every migration that can run in a
/// transaction (see [`create_schema`]), to run inside the caller's.
pub(crate) struct NewSchema {
    pub(crate) sql: sqlx::SqlStr,
    /// Where each migration sits in `sql`.
    pub(crate) spans: Spans,
    /// The version it reaches.
    pub(crate) version: i64,
    /// The migrations it applies.
    pub(crate) batch: Vec<Migration>,
}

impl NewSchema {
    pub(crate) fn new(
        schema: &crate::sql::Ident,
        search_path: &str,
        migrations: &Migrations,
    ) -> NewSchema {
        let upto = migrations
            .iter()
            .position(|m| m.no_tx)
            .unwrap_or(migrations.len());
        let batch: Vec<Migration> = migrations.iter().take(upto).cloned().collect();
        let version = batch.last().map_or(0, |m| m.version);
        let digest = migrations.digest_at(version).expect("our own version");
        let (sql, spans) = migration_batch(
            &Batch {
                schema,
                search_path,
                own_transaction: None,
                create_schema: true,
                create_history: true,
            },
            &batch,
            version,
            digest,
        );
        NewSchema {
            sql,
            spans,
            version,
            batch,
        }
    }
}

/// How a batch from [`migration_batch`]
/// failed.
#[derive(Debug)]
pub(crate) struct BatchFailure {
    pub(crate) error: sqlx::Error,
    /// Migrations applied before the failure (the next one failed).
    pub(crate) applied: usize,
    /// Whether the batch had claimed the schema's version.
    pub(crate) claimed: bool,
}

/// Runs a batch from [`migration_batch`],
/// following its progress by the rows it returns.
pub(crate) async fn execute_batch(
    conn: &mut sqlx::PgConnection,
    batch: sqlx::SqlStr,
) -> std::result::Result<(), BatchFailure> {
    use futures_util::StreamExt;
    use sqlx::Row;

    let (mut applied, mut claimed) = (0usize, false);
    let mut stream = sqlx::raw_sql(batch).fetch_many(conn);
    while let Some(item) = stream.next().await {
        match item {
            Ok(sqlx::Either::Right(row)) => {
                if row.try_get::<i64, _>(batch::APPLIED_COLUMN).is_ok() {
                    applied += 1;
                } else if row.try_get::<bool, _>(batch::CLAIMED_COLUMN).is_ok() {
                    claimed = true;
                }
            }
            Ok(_) => {}
            Err(error) => {
                return Err(BatchFailure {
                    error,
                    applied,
                    claimed,
                });
            }
        }
    }
    Ok(())
}

fn chain(prev: &[u8], version: i64, checksum: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(version.to_be_bytes());
    h.update(checksum);
    h.finalize().to_vec()
}

/// SHA-384 of a migration's SQL, the checksum sqlx stores.
pub(crate) fn checksum(sql: &str) -> Vec<u8> {
    sha2::Sha384::digest(sql.as_bytes()).to_vec()
}

/// Describes a migration for messages: `3 (add loyalty points)`.
pub(crate) fn label(m: &Migration) -> Cow<'_, str> {
    format!("{} ({})", m.version, m.description).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_is_empty_and_usable() {
        let m = Migrations::default();
        assert_eq!(m.latest(), 0);
        assert!(m.latest_digest().is_empty());
    }

    #[test]
    fn push_numbers_and_digests_chain() {
        let m = Migrations::new()
            .push("one", "CREATE TABLE a (x int)")
            .push("two", "SELECT 1");
        assert_eq!(m.latest(), 2);
        assert_eq!(m.after(0).len(), 2);
        assert_eq!(m.after(1)[0].description, "two");
        assert!(m.after(2).is_empty());
        assert_eq!(m.digest_at(2), Some(m.latest_digest()));
        assert_ne!(m.digest_at(1), m.digest_at(2));
        assert_eq!(m.digest_at(7), None);
        // Editing an applied migration changes every later digest.
        let edited = Migrations::new()
            .push("one", "CREATE TABLE a (y int)")
            .push("two", "SELECT 1");
        assert_ne!(edited.latest_digest(), m.latest_digest());
        // sqlx's checksum is SHA-384 of the text.
        assert_eq!(m.iter().next().unwrap().checksum.len(), 48);
    }

    #[test]
    fn a_description_must_fit_the_history_row() {
        let fits = "d".repeat(MAX_DESCRIPTION_BYTES);
        assert!(Migrations::new().try_push(fits, "SELECT 1").is_ok());
        let err = Migrations::new()
            .try_push("é".repeat(MAX_DESCRIPTION_BYTES / 2 + 1), "SELECT 1")
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains("1002 bytes"), "{err}");
    }

    #[test]
    fn order_is_enforced() {
        let mk = |v| Migration {
            version: v,
            description: String::new(),
            sql: String::new(),
            checksum: vec![],
            no_tx: false,
        };
        assert!(Migrations::from_list(vec![mk(2), mk(1)]).is_err());
        assert!(Migrations::from_list(vec![mk(1), mk(1)]).is_err());
        assert!(Migrations::from_list(vec![mk(0)]).is_err());
        assert!(Migrations::from_list(vec![mk(1), mk(5)]).is_ok());
    }

    #[test]
    fn no_transaction_marker_is_detected() {
        let m = Migrations::new().push(
            "idx",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x)",
        );
        assert!(m.iter().next().unwrap().no_tx);
    }
}
