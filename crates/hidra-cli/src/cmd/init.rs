//! `hidra init`

use anyhow::{Context, Result};
use hidra::auth::{Accounts, ApiKeyTable, ApiKeys, Jwt, LoginTable};

use super::api_key::NO_PEPPER;
use crate::config::Settings;
use crate::db::{self, Needs};
use crate::output::outln;

/// [`Accounts`] is only built with a token issuer; installing its tables
/// never issues a token, so this stand-in secret signs nothing.
const NO_JWT_SECRET: &str = "hidra-cli: installing tables never issues a token";

/// Creates the registry table, the auth tables, the server registry table
/// and hidra's internal schema, then applies the shared migrations. Every
/// step is idempotent.
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

    // The library's own install calls, in order: the registry (and hidra's
    // internal schema) first, then the tables that reference it.
    hidra
        .install()
        .await
        .context("creating the registry table")?;
    let accounts =
        Accounts::new(hidra.clone(), Jwt::hs256(NO_JWT_SECRET)?).with_login_table(logins);
    accounts
        .install()
        .await
        .context("creating the login and attempt tables")?;
    let keys = ApiKeys::new(hidra.clone(), NO_PEPPER)?.with_table(keys);
    keys.install().await.context("creating the API key table")?;
    outln!("registry table  {}: ready", registry.table())?;
    outln!("login table     {}: ready", accounts.login_table().table())?;
    outln!("API key table   {}: ready", keys.table().table())?;
    outln!("server table    {}: ready", hidra.servers().table().table())?;

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
