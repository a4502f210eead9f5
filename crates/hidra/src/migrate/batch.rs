//! The statements of tenant migrations: the one simple-query batch that
//! applies a tenant's pending migrations with their history and bookkeeping
//! ([`migration_batch`]), where each migration starts in it ([`Spans`], so an
//! error points at the migration's own line), the history table, and the
//! locks of a schema's migrations. Assembled with `sql::Statement`.

use sqlx::SqlStr;

use super::Migration;
use crate::sql::{Ident, Statement};

/// Writes the advisory lock key of a schema's migrations (stable across
/// processes).
fn migration_lock_key(sql: &mut Statement, schema: &Ident) {
    sql.sql("hashtextextended(")
        .literal(&format!("hidra.migrate.{schema}"))
        .sql(", 0)");
}

/// The history table every tenant schema keeps, created in `schema` (named,
/// not found through `search_path`: a migration may change that).
///
/// One relation, not four: no primary key (the version claim in
/// `hidra.schema_versions`, under the schema's advisory lock, is what keeps
/// a migration from being recorded twice) and no TOAST table. PostgreSQL 15
/// gives a table with a `text` or `bytea` column a TOAST table and its index
/// unless every such column is stored `PLAIN`, which `CREATE TABLE` cannot
/// say; so the two columns are added by an `ALTER TABLE` that also sets
/// their storage, in the same command (its TOAST check runs after both).
/// A history row therefore has to fit in a page uncompressed: descriptions
/// are limited to [`MAX_DESCRIPTION_BYTES`](super::MAX_DESCRIPTION_BYTES).
/// The bench's provisioning measured the four relations at about 8 % of a
/// new tenant's batch. Schemas created before keep their table (with its key
/// and TOAST table); Hidra reads and writes both alike.
pub(crate) fn tenant_history_ddl(schema: &Ident) -> Statement {
    let mut sql = Statement::new();
    sql.sql("CREATE TABLE IF NOT EXISTS ").ident(schema).sql(
        "._hidra_migrations (
    version     BIGINT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    duration_ms BIGINT NOT NULL
);
ALTER TABLE ",
    );
    sql.ident(schema).sql(
        "._hidra_migrations
    ADD COLUMN IF NOT EXISTS description TEXT NOT NULL,
    ALTER COLUMN description SET STORAGE PLAIN,
    ADD COLUMN IF NOT EXISTS checksum BYTEA NOT NULL,
    ALTER COLUMN checksum SET STORAGE PLAIN",
    );
    sql
}

/// The statement recording one applied migration in `schema`'s history
/// (`$1` version, `$2` description, `$3` checksum, `$4` duration in ms).
pub(crate) fn record_history(schema: &Ident) -> SqlStr {
    let mut sql = Statement::new();
    sql.sql("INSERT INTO ").ident(schema).sql(
        "._hidra_migrations (version, description, checksum, duration_ms) \
             VALUES ($1, $2, $3, $4)",
    );
    sql.into_sql()
}

/// What a migration batch should do besides running the migrations.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    pub(crate) schema: &'a Ident,
    /// The schema's `search_path`, as `sql::search_path_value` writes it
    /// (quoted identifiers): it goes into the batch as it is.
    pub(crate) search_path: &'a str,
    /// Wrap in `BEGIN … COMMIT` with the schema's advisory lock, claiming
    /// the new version in `hidra.schema_versions` only from this one (`None`:
    /// no row).
    pub(crate) own_transaction: Option<Option<i64>>,
    /// Create the schema first.
    pub(crate) create_schema: bool,
    /// Create the history table (new schema, or one that never had it).
    pub(crate) create_history: bool,
}

/// The internal schema's function that takes a schema's migration lock and
/// claims its next version (see [`bookkeeping::CLAIM_VERSION`](super::bookkeeping)).
pub(crate) const CLAIM_FUNCTION: &str = "hidra.claim_version";

/// Column name of the row a batch's claim returns (see [`migration_batch`]).
pub(crate) const CLAIMED_COLUMN: &str = "hidra_claimed";

/// Column name of the row each applied migration returns, so the caller can
/// tell how far a failed batch got.
pub(crate) const APPLIED_COLUMN: &str = "hidra_applied";

/// Builds one simple-query batch that applies `migrations` (in order) to a
/// schema and records them in its history and in `hidra.schema_versions`.
///
/// Each migration's SQL is the application's own, trusted text. It must not
/// contain transaction control (`BEGIN`, `COMMIT`).
pub(crate) fn migration_batch(
    b: &Batch<'_>,
    migrations: &[Migration],
    final_version: i64,
    final_digest: &[u8],
) -> (SqlStr, Spans) {
    let mut spans = Spans::default();
    let mut sql = Statement::new();
    if let Some(expected) = b.own_transaction {
        // The lock and the claim, in one call of the internal schema's
        // function (its statements are planned once per connection): the
        // recorded version moves only from the one planned. A runner that
        // got there first leaves no row to update or a row to conflict with,
        // and the call fails before any migration runs; the row it returns
        // tells the caller that the claim passed.
        sql.sql("BEGIN;\nSELECT ").sql(CLAIM_FUNCTION).sql("(");
        migration_lock_key(&mut sql, b.schema);
        sql.sql(", ").literal(b.schema.as_str()).sql(", ");
        match expected {
            Some(v) => sql.int(v),
            None => sql.sql("NULL"),
        };
        sql.sql(", ")
            .int(final_version)
            .sql(", ")
            .bytea(final_digest)
            .sql(") AS ")
            .sql(CLAIMED_COLUMN)
            .sql(";\n");
    }
    if b.create_schema {
        sql.sql("CREATE SCHEMA ").ident(b.schema).sql(";\n");
    }
    // A utility `SET` skips the planner `SELECT set_config(…)` goes through.
    sql.sql("SET LOCAL search_path TO ")
        .trusted(b.search_path)
        .sql(";\n");
    if b.create_history {
        sql.trusted(tenant_history_ddl(b.schema).as_str())
            .sql(";\n");
    }
    for (i, m) in migrations.iter().enumerate() {
        // The claim function starts the first migration's clock.
        if i > 0 || b.own_transaction.is_none() {
            sql.sql("SELECT set_config('hidra.t0', clock_timestamp()::text, true);\n");
        }
        spans.push(sql.as_str());
        // The application's own migration.
        sql.trusted(&m.sql).sql("\n;\n");
        sql.sql("INSERT INTO ")
            .ident(b.schema)
            .sql("._hidra_migrations (version, description, checksum, duration_ms) VALUES (")
            .int(m.version)
            .sql(", ")
            .literal(&m.description)
            .sql(", ")
            .bytea(&m.checksum)
            .sql(
                ", (extract(epoch FROM clock_timestamp() - current_setting('hidra.t0')::timestamptz) * 1000)::bigint) \
                 RETURNING version AS ",
            )
            .sql(APPLIED_COLUMN)
            .sql(";\n");
    }
    if b.own_transaction.is_some() {
        sql.sql("COMMIT;\n");
    } else {
        // A new schema (or a renamed spare): its row is written here.
        sql.sql("INSERT INTO hidra.schema_versions (schema_name, version, digest) VALUES (")
            .literal(b.schema.as_str())
            .sql(", ")
            .int(final_version)
            .sql(", ")
            .bytea(final_digest)
            .sql(
                ") ON CONFLICT (schema_name) DO UPDATE SET version = EXCLUDED.version, \
                 digest = EXCLUDED.digest, updated_at = now();\nSET LOCAL search_path TO DEFAULT;\n",
            );
    }
    (sql.into_sql(), spans)
}

/// Where each migration's own SQL starts in a batch, in characters (the
/// unit of PostgreSQL's error positions), so that an error is reported at
/// the migration's line, not the batch's. Offsets only: the migrations'
/// text is the caller's, looked at when an error needs it.
#[derive(Debug, Default)]
pub(crate) struct Spans(Vec<usize>);

impl Spans {
    /// One migration sent on its own.
    pub(crate) fn alone() -> Spans {
        Spans(vec![0])
    }

    fn push(&mut self, batch_so_far: &str) {
        self.0.push(batch_so_far.chars().count());
    }

    /// The migration of `batch` (its index) and the line in it that `error`
    /// points at, for a batch sent after `prefix` more characters.
    pub(crate) fn locate(
        &self,
        batch: &[Migration],
        error: &sqlx::Error,
        prefix: usize,
    ) -> Option<(usize, u32)> {
        use sqlx::postgres::{PgDatabaseError, PgErrorPosition};
        let db = error.as_database_error()?;
        let PgErrorPosition::Original(position) =
            db.try_downcast_ref::<PgDatabaseError>()?.position()?
        else {
            return None;
        };
        // 1-based, in the whole query string.
        let at = position.checked_sub(1)?.checked_sub(prefix)?;
        self.0
            .iter()
            .zip(batch)
            .enumerate()
            .find_map(|(i, (start, m))| {
                let offset = at.checked_sub(*start)?;
                (offset < m.sql.chars().count()).then(|| {
                    let line = m.sql.chars().take(offset).filter(|c| *c == '\n').count() + 1;
                    (i, u32::try_from(line).unwrap_or(u32::MAX))
                })
            })
    }
}

/// Session-level advisory lock / unlock of a schema's migrations, for
/// migrations that cannot run in a transaction.
pub(crate) fn migration_session_lock(schema: &Ident, lock: bool) -> SqlStr {
    let mut sql = Statement::new();
    sql.sql(if lock {
        "SELECT pg_advisory_lock("
    } else {
        "SELECT pg_advisory_unlock("
    });
    migration_lock_key(&mut sql, schema);
    sql.sql(")");
    sql.into_sql()
}

/// `SET search_path TO …` for the session (no-transaction migrations only).
pub(crate) fn set_session_search_path(search_path: &str) -> SqlStr {
    let mut sql = Statement::new();
    sql.sql("SELECT set_config('search_path', ")
        .literal(search_path)
        .sql(", false)");
    sql.into_sql()
}
