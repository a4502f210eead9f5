//! Connecting: a quick probe with a clear message, then the `Hidra` handle.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use hidra::sqlx::postgres::PgConnectOptions;
use hidra::sqlx::{self, Connection, PgConnection};
use hidra::{Hidra, Migrations, RegistryTable};

use crate::config::Settings;

/// Which migration sets a command needs loaded.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Needs {
    pub(crate) tenant_migrations: bool,
    pub(crate) shared_migrations: bool,
    /// Connections in the pool (default 2).
    pub(crate) pool_size: u32,
}

impl Needs {
    /// The tenant migrations only, in the default pool.
    pub(crate) const TENANT_MIGRATIONS: Needs = Needs {
        tenant_migrations: true,
        shared_migrations: false,
        pool_size: 0,
    };
}

/// A connected handle, with what the commands report about it.
#[derive(Debug)]
pub(crate) struct Connected {
    pub(crate) hidra: Hidra,
    /// `server_version` of the database.
    pub(crate) server_version: String,
    /// The tenant migrations, if configured and asked for.
    pub(crate) tenant_migrations: Option<Migrations>,
    /// The shared migrations, if configured and asked for.
    pub(crate) shared_migrations: Option<Migrations>,
}

/// Loads the migrations of `dir`, naming which set failed.
pub(crate) async fn load_migrations(dir: &Path, what: &str) -> Result<Migrations> {
    if !dir.is_dir() {
        return Err(anyhow!(
            "{what} migrations directory {} does not exist",
            dir.display()
        ));
    }
    Migrations::from_dir(dir)
        .await
        .with_context(|| format!("loading the {what} migrations"))
}

/// The registry table of the settings.
pub(crate) fn registry(settings: &Settings) -> Result<RegistryTable> {
    RegistryTable::new(&settings.registry_table).context("the registry table setting")
}

/// The configuration a connection is built from, loaded and checked before
/// anything connects.
#[derive(Debug)]
pub(crate) struct Loaded {
    tenant: Option<Migrations>,
    shared: Option<Migrations>,
    registry: RegistryTable,
}

/// Loads and checks what `needs` asks for.
pub(crate) async fn load(settings: &Settings, needs: Needs) -> Result<Loaded> {
    let tenant = match (&settings.tenant_migrations, needs.tenant_migrations) {
        (Some(dir), true) => Some(load_migrations(dir, "tenant").await?),
        _ => None,
    };
    let shared = match (&settings.shared_migrations, needs.shared_migrations) {
        (Some(dir), true) => Some(load_migrations(dir, "shared").await?),
        _ => None,
    };
    Ok(Loaded {
        tenant,
        shared,
        registry: registry(settings)?,
    })
}

/// Loads what `needs` asks for, probes the database and builds the handle.
pub(crate) async fn connect(settings: &Settings, needs: Needs) -> Result<Connected> {
    let loaded = load(settings, needs).await?;
    open(settings, loaded, needs.pool_size).await
}

/// Probes the database and builds the handle.
pub(crate) async fn open(settings: &Settings, loaded: Loaded, pool_size: u32) -> Result<Connected> {
    let Loaded {
        tenant,
        shared,
        registry,
    } = loaded;
    let url = settings.database_url()?;
    let (options, server_version) = probe(settings).await?;
    let hidra = Hidra::builder()
        .schema_prefix(settings.schema_prefix.clone())
        .shared_schemas(settings.shared_schemas.clone())
        .row_level(
            settings.row_level_schema.clone(),
            settings.tenant_column.clone(),
        )
        .registry(registry)
        .tenant_migrations(tenant.clone().unwrap_or_default())
        .shared_migrations(shared.clone().unwrap_or_default())
        .max_connections(pool_size.max(2))
        .acquire_timeout(settings.connect_timeout)
        .connect_with(options)
        .await
        .map_err(|e| match e {
            hidra::Error::InvalidConfig(_) => anyhow::Error::from(e),
            other => anyhow::Error::from(other)
                .context(format!("cannot connect to PostgreSQL at {}", redact(url))),
        })?;
    Ok(Connected {
        hidra,
        server_version,
        tenant_migrations: tenant,
        shared_migrations: shared,
    })
}

/// Parses the URL and connects once, within the timeout, so that an
/// unreachable or misconfigured database is one clear line and not a pool
/// timeout. Returns the options and the server's version.
pub(crate) async fn probe(settings: &Settings) -> Result<(PgConnectOptions, String)> {
    let url = settings.database_url()?;
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .map_err(|e| anyhow!("invalid database URL {}: {e}", redact(url)))?
        .application_name("hidra-cli");
    let timeout = settings.connect_timeout;
    let cannot = || format!("cannot connect to PostgreSQL at {}", redact(url));
    let mut conn = match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => conn,
        // The server's message alone: the driver's display adds the line of
        // the server's source that raised it.
        Ok(Err(sqlx::Error::Database(e))) => {
            return Err(anyhow!("{}: {}", cannot(), e.message()));
        }
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context(cannot())),
        Err(_) => {
            return Err(anyhow!(
                "{}: no answer within {} s",
                cannot(),
                timeout.as_secs()
            ));
        }
    };
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(&mut conn)
        .await
        .with_context(cannot)?;
    let _ = conn.close().await;
    Ok((options, version))
}

// `url` with its password replaced by `***`, for messages.
pub(crate) use hidra::redact_url as redact;
