//! `hidra init`

use anyhow::{Context, Result};
use hidra::auth::{ApiKeyTable, AttemptTable, LoginTable};
use hidra::sqlx::{self, AssertSqlSafe};

use crate::config::Settings;
use crate::db::{self, Needs};
use crate::output::outln;

/// Creates the registry table, the auth tables and hidra's internal schema,
/// then applies the shared migrations. Every step is idempotent.
pub(crate) async fn run(settings: &Settings) -> Result<()> {
    let registry = db::registry(settings)?;
    let (table, id_column) = (settings.registry_table.as_str(), "id");
    let logins = LoginTable::default().referencing(table, id_column)?;
    let keys = ApiKeyTable::default().referencing(table, id_column)?;

    let db = db::connect(
        settings,
        Needs {
            shared_migrations: true,
            ..Needs::default()
        },
    )
    .await?;
    let hidra = &db.hidra;

    // The registry (and hidra's internal schema), then the tables that
    // reference it, in one implicit transaction (one simple-protocol query).
    hidra
        .install()
        .await
        .context("creating the registry table")?;
    let mut ddl = String::new();
    ddl.push_str(&logins.ddl());
    ddl.push_str(&AttemptTable::default().ddl());
    ddl.push_str(&keys.ddl());
    let mut conn = hidra.acquire_shared().await?;
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&mut *conn)
        .await
        .context("creating the registry and auth tables")?;
    drop(conn);
    outln!("registry table  {}: ready", registry.table())?;
    outln!("login table     {}: ready", logins.table())?;
    outln!("API key table   {}: ready", keys.table())?;

    match &db.shared_migrations {
        Some(migrations) => {
            // Also creates hidra's internal schema.
            let report = hidra.migrate_shared().await?;
            outln!("internal schema hidra: ready")?;
            if report.applied.is_empty() {
                outln!(
                    "shared migrations: up to date (version {}, {} known)",
                    report.version,
                    migrations.len()
                )?;
            } else {
                outln!(
                    "shared migrations: applied {} (now at version {})",
                    join(&report.applied),
                    report.version
                )?;
            }
        }
        None => {
            hidra.init_internal_schema().await?;
            outln!("internal schema hidra: ready")?;
            outln!(
                "shared migrations: none configured (--shared-migrations DIR or HIDRA_SHARED_MIGRATIONS)"
            )?;
        }
    }
    Ok(())
}

pub(crate) fn join(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
