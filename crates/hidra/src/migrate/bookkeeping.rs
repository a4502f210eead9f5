//! Hidra's own bookkeeping tables, in its internal schema `hidra`.

use sqlx::PgConnection;

use crate::error::{Error, Result};

/// Advisory lock key serializing the creation of the internal schema.
pub(crate) const INTERNAL_LOCK: i64 = 0x6869_6472_615f_0001;

/// DDL of the internal schema. Idempotent.
pub(crate) const INTERNAL_DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS hidra;
CREATE TABLE IF NOT EXISTS hidra.shared_migrations (
    version     BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    checksum    BYTEA NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    duration_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS hidra.schema_versions (
    schema_name TEXT PRIMARY KEY,
    version     BIGINT NOT NULL,
    digest      BYTEA NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS hidra.spare_schemas (
    schema_name TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#;

/// Creates the internal schema if it is missing, under a lock so that two
/// processes starting at once do not collide.
pub(crate) async fn ensure_internal(conn: &mut PgConnection) -> Result<()> {
    let exists: bool = sqlx::query_scalar(
        "SELECT to_regclass('hidra.schema_versions') IS NOT NULL \
         AND to_regclass('hidra.spare_schemas') IS NOT NULL \
         AND to_regclass('hidra.shared_migrations') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::db("checking hidra's internal schema"))?;
    if exists {
        return Ok(());
    }
    let sql =
        format!("BEGIN; SELECT pg_advisory_xact_lock({INTERNAL_LOCK}); {INTERNAL_DDL} COMMIT;");
    if let Err(err) = sqlx::raw_sql(crate::sql::owned(sql))
        .execute(&mut *conn)
        .await
    {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        return Err(Error::Database {
            context: "creating hidra's internal schema",
            source: err,
        });
    }
    Ok(())
}
