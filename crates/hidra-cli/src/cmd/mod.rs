//! One module per subcommand.

pub(crate) mod adopt;
pub(crate) mod api_key;
pub(crate) mod archive;
pub(crate) mod doctor;
pub(crate) mod init;
pub(crate) mod migrate;
pub(crate) mod server;
pub(crate) mod sql;
pub(crate) mod tenant;
pub(crate) mod top;
pub(crate) mod view;

use anyhow::Result;
use hidra::TenantId;

/// Validates a tenant id from the command line before anything connects.
pub(crate) fn tenant_id(raw: &str) -> Result<TenantId> {
    Ok(TenantId::new(raw)?)
}

/// Says how to configure tenant migrations.
pub(crate) const NO_TENANT_MIGRATIONS: &str = "no tenant migrations configured: pass --tenant-migrations DIR, set HIDRA_TENANT_MIGRATIONS or `tenant_migrations` in hidra.toml";
