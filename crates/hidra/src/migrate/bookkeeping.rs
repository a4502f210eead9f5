//! Hidra's own bookkeeping tables, in its internal schema `hidra`.

use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::hidra::Hidra;

/// Advisory lock key serializing the creation of the internal schema.
pub(crate) const INTERNAL_LOCK: i64 = 0x6869_6472_615f_0001;

/// The tables of the internal schema (see [`internal_ddl`]).
const INTERNAL_TABLES: &str = r#"
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
-- The row-level tenants of this server, on a registered server (where the
-- registry is not at hand): what its row-level binding checks.
CREATE TABLE IF NOT EXISTS hidra.row_level_tenants (
    tenant_id TEXT PRIMARY KEY,
    placed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#;

/// The lock and version claim that open every migration batch of an existing
/// schema (see `batch::migration_batch`): `$1` the schema's migration lock
/// key, `$2` the schema, `$3` the version the plan read (`NULL`: no row),
/// `$4` and `$5` the version and digest to record. It fails with
/// `serialization_failure` when another runner moved the version since the
/// plan, or `unique_violation` when one recorded it first, and starts the
/// clock of the first migration's duration (`hidra.t0`). A function, not
/// the statements themselves, because PL/pgSQL plans them once per
/// connection: sent as SQL, the claim's planning cost a fan-out about 2 %
/// of each tenant's time (`pgbench`, 2026-12-07).
const CLAIM_VERSION: &str = r#"
CREATE OR REPLACE FUNCTION hidra.claim_version(BIGINT, TEXT, BIGINT, BIGINT, BYTEA) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock($1);
    IF $3 IS NULL THEN
        INSERT INTO hidra.schema_versions (schema_name, version, digest) VALUES ($2, $4, $5);
    ELSE
        UPDATE hidra.schema_versions SET version = $4, digest = $5, updated_at = now()
            WHERE schema_name = $2 AND version = $3;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'schema % is no longer at version % (another migration runner moved it)', $2, $3
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    PERFORM set_config('hidra.t0', clock_timestamp()::text, true);
    RETURN true;
END
$$;
"#;

/// The row-level binding function of a registered server's internal schema.
pub(crate) const SERVER_BIND_ROW_LEVEL: &str = "\"hidra\".\"bind_row_level\"";

/// DDL of the internal schema: its tables, and the row-level binding of a
/// registered server, which checks `hidra.row_level_tenants`. Idempotent.
pub(crate) fn internal_ddl() -> String {
    INTERNAL_TABLES.to_owned()
        + CLAIM_VERSION
        + &crate::strategy::row_level::binding_function_ddl(
            SERVER_BIND_ROW_LEVEL,
            "SELECT FROM hidra.row_level_tenants WHERE tenant_id = $1",
        )
}

/// Which parts of Hidra's internal schema `hidra` exist, as
/// [`Hidra::internal_schema_status`] found them.
///
/// Deployment checks (`hidra doctor`) read this instead of querying the
/// catalog themselves, so that they follow the schema when Hidra adds a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InternalSchemaStatus {
    /// The schema `hidra` itself.
    pub schema: bool,
    /// `hidra.shared_migrations`: the history of the shared migrations.
    pub shared_migrations: bool,
    /// `hidra.schema_versions` and `hidra.claim_version`: the version and
    /// digest of every tenant schema, and the claim that moves them.
    pub schema_versions: bool,
    /// `hidra.spare_schemas`: the warm pool's spare schemas.
    pub spare_schemas: bool,
    /// `hidra.row_level_tenants` and `hidra.bind_row_level`: the row-level
    /// tenants of a registered server, and their binding.
    pub row_level_tenants: bool,
}

impl InternalSchemaStatus {
    /// Whether the schema and all its tables exist: Hidra can migrate,
    /// provision and keep a warm pool without creating anything first.
    pub fn is_complete(&self) -> bool {
        self.missing().is_empty()
    }

    /// The qualified names of the missing parts (`hidra`,
    /// `hidra.spare_schemas`, …), in the order they are created.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (self.schema, "hidra"),
            (self.shared_migrations, "hidra.shared_migrations"),
            (self.schema_versions, "hidra.schema_versions"),
            (self.spare_schemas, "hidra.spare_schemas"),
            (self.row_level_tenants, "hidra.row_level_tenants"),
        ]
        .into_iter()
        .filter(|(exists, _)| !exists)
        .map(|(_, name)| name)
        .collect()
    }
}

/// Looks the internal schema up in the catalog, in one query, changing nothing.
pub(crate) async fn internal_status(conn: &mut PgConnection) -> Result<InternalSchemaStatus> {
    let (schema, shared_migrations, schema_versions, spare_schemas, row_level_tenants): (
        bool,
        bool,
        bool,
        bool,
        bool,
    ) = sqlx::query_as(
        "SELECT to_regnamespace('hidra') IS NOT NULL, \
         to_regclass('hidra.shared_migrations') IS NOT NULL, \
         to_regclass('hidra.schema_versions') IS NOT NULL \
           AND to_regprocedure('hidra.claim_version(bigint,text,bigint,bigint,bytea)') IS NOT NULL, \
         to_regclass('hidra.spare_schemas') IS NOT NULL, \
         to_regclass('hidra.row_level_tenants') IS NOT NULL \
           AND to_regprocedure('hidra.bind_row_level(text,boolean)') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::db("checking hidra's internal schema"))?;
    Ok(InternalSchemaStatus {
        schema,
        shared_migrations,
        schema_versions,
        spare_schemas,
        row_level_tenants,
    })
}

impl Hidra {
    /// Which parts of Hidra's internal schema `hidra` exist, changing
    /// nothing (unlike [`init_internal_schema`](Hidra::init_internal_schema),
    /// which creates what is missing). For deployment checks: a database
    /// where [`Hidra::install`] never ran has none of it.
    ///
    /// ```no_run
    /// # async fn run(hidra: hidra::Hidra) -> hidra::Result<()> {
    /// let status = hidra.internal_schema_status().await?;
    /// if !status.is_complete() {
    ///     eprintln!(
    ///         "missing {}: run `Hidra::install` (or `hidra init`)",
    ///         status.missing().join(", ")
    ///     );
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn internal_schema_status(&self) -> Result<InternalSchemaStatus> {
        let mut conn = self.acquire_shared().await?;
        internal_status(&mut conn).await
    }
}

/// Creates the internal schema if it is missing, under a lock so that two
/// processes starting at once do not collide.
pub(crate) async fn ensure_internal(conn: &mut PgConnection) -> Result<()> {
    if internal_status(conn).await?.is_complete() {
        return Ok(());
    }
    let mut sql = crate::sql::Statement::new();
    sql.sql("BEGIN; SELECT pg_advisory_xact_lock(")
        .int(INTERNAL_LOCK)
        .sql("); ")
        .trusted(&internal_ddl())
        .sql(" COMMIT;");
    if let Err(err) = sqlx::raw_sql(sql.into_sql()).execute(&mut *conn).await {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        return Err(Error::Database {
            context: "creating hidra's internal schema",
            source: err,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_server_binding_checks_its_own_list_and_always_takes_the_lock() {
        let ddl = super::internal_ddl();
        assert!(ddl.contains("FUNCTION \"hidra\".\"bind_row_level\"(TEXT, BOOLEAN)"));
        assert!(ddl.contains("FROM hidra.row_level_tenants WHERE tenant_id = $1"));
        assert!(ddl.contains("    PERFORM pg_advisory_xact_lock_shared("));
        assert!(!ddl.contains("IF $2 THEN"));
    }
}
