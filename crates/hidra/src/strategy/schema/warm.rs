//! The warm pool: spare schemas created ahead of time at the latest version,
//! so that signing up a tenant is a rename instead of a schema build.
//!
//! Spares are named `hidra_spare_<random>` (a prefix no tenant id can map to),
//! listed in `hidra.spare_schemas`, and migrated by the runner like tenants.
//! [`Hidra::provision`](crate::Hidra::provision) claims the oldest spare that is
//! at the latest version (`FOR UPDATE SKIP LOCKED`, so concurrent sign-ups never
//! claim the same one) and renames it, in its one transaction; with no spare
//! available it builds the schema as usual.

use std::time::Duration;

use sqlx::Connection;

use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::migrate::{self, Migrations};
use crate::sql::{self, Ident};

/// How full the warm pool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmPoolStatus {
    /// Spare schemas ready to be claimed (at the latest version).
    pub ready: usize,
    /// Spare schemas in all.
    pub spares: usize,
    /// The configured size.
    pub target: usize,
}

impl Hidra {
    /// How many spare schemas exist and are ready.
    pub async fn warm_pool_status(&self) -> Result<WarmPoolStatus> {
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        let migrations = &self.inner.migrations.tenant;
        let (spares, ready): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE v.version = $1 AND v.digest = $2) \
             FROM hidra.spare_schemas s LEFT JOIN hidra.schema_versions v USING (schema_name)",
        )
        .bind(migrations.latest())
        .bind(migrations.latest_digest())
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("counting spare schemas"))?;
        Ok(WarmPoolStatus {
            ready: ready as usize,
            spares: spares as usize,
            target: self.inner.migrations.warm_pool,
        })
    }

    /// Creates spare schemas until the warm pool holds its configured size;
    /// returns how many were created.
    pub async fn top_up_spares(&self) -> Result<usize> {
        let status = self.warm_pool_status().await?;
        let missing = status.target.saturating_sub(status.spares);
        for _ in 0..missing {
            self.create_spare().await?;
        }
        Ok(missing)
    }

    /// Keeps the warm pool topped up in the background, checking every `every`.
    /// Errors are logged and retried; abort the handle to stop.
    pub fn spawn_warm_pool(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let hidra = self.clone();
        tokio::spawn(async move {
            loop {
                match hidra.top_up_spares().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(created = n, "warm pool topped up"),
                    Err(e) => tracing::warn!(error = %e, "warm pool top-up failed"),
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    async fn create_spare(&self) -> Result<()> {
        let mut conn = self.acquire_shared().await?;
        let name: String = sqlx::query_scalar(
            "SELECT 'hidra_spare_' || replace(gen_random_uuid()::text, '-', '')",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("naming a spare schema"))?;
        let schema = Ident::new(name, "spare schema name")?;
        let migrations: &Migrations = &self.inner.migrations.tenant;
        let path = sql::search_path_value(&schema, &self.inner.schema.shared);
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning a spare schema"))?;
        let version = migrate::create_schema(&mut tx, &schema, &path, migrations)
            .await
            .map_err(|(source, failed)| match failed {
                Some(m) => m.error(schema.as_str(), source),
                None => Error::Database {
                    context: "creating a spare schema",
                    source,
                },
            })?;
        sqlx::query("INSERT INTO hidra.spare_schemas (schema_name) VALUES ($1)")
            .bind(schema.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("registering a spare schema"))?;
        tx.commit()
            .await
            .map_err(Error::db("committing a spare schema"))?;
        if version < migrations.latest() {
            // `-- no-transaction` migrations: the runner finishes the spare.
            self.migrator()
                .finish(schema.as_str(), None, None, version)
                .await?;
        }
        Ok(())
    }
}

/// Claims a ready spare inside the provisioning transaction and renames it to
/// `schema`; `false` when none is ready.
pub(crate) async fn claim_spare(
    conn: &mut sqlx::PgConnection,
    migrations: &Migrations,
    schema: &Ident,
) -> Result<Option<String>> {
    let spare: Option<String> = sqlx::query_scalar(
        "DELETE FROM hidra.spare_schemas WHERE schema_name = ( \
           SELECT s.schema_name FROM hidra.spare_schemas s \
           JOIN hidra.schema_versions v USING (schema_name) \
           WHERE v.version = $1 AND v.digest = $2 \
           ORDER BY s.created_at LIMIT 1 FOR UPDATE OF s SKIP LOCKED) \
         RETURNING schema_name",
    )
    .bind(migrations.latest())
    .bind(migrations.latest_digest())
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::db("claiming a spare schema"))?;
    let Some(spare) = spare else {
        return Ok(None);
    };
    let from = Ident::new(spare.clone(), "spare schema name")?;
    sqlx::raw_sql(sql::rename_schema(&from, schema))
        .execute(&mut *conn)
        .await
        .map_err(Error::db("renaming a spare schema"))?;
    Ok(Some(spare))
}
