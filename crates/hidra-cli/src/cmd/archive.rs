//! `hidra tenant export` and `hidra tenant import`.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use hidra::Strategy;
use hidra::archive::{ExportOptions, ImportOptions};

use super::{NO_TENANT_MIGRATIONS, tenant_id};
use crate::config::Settings;
use crate::db::{self, Needs};
use crate::output::{self, note, outln};
use crate::progress::ArchiveReporter;

/// What `hidra tenant import` was asked to do.
#[derive(Debug)]
pub(crate) struct Import<'a> {
    pub(crate) file: &'a Path,
    pub(crate) as_id: Option<&'a str>,
    pub(crate) strategy: Option<&'a str>,
    pub(crate) name: Option<String>,
    pub(crate) skip_credentials: bool,
    /// A registered server's name; `control` or none: the control server.
    pub(crate) server: Option<&'a str>,
    pub(crate) json: bool,
}

/// Connects with the tenant migrations, which an archive's DDL comes from.
async fn connect(settings: &Settings) -> Result<db::Connected> {
    let db = db::connect(settings, Needs::TENANT_MIGRATIONS).await?;
    if db.tenant_migrations.is_none() {
        note!("note: {NO_TENANT_MIGRATIONS}");
    }
    Ok(db)
}

pub(crate) async fn export(
    settings: &Settings,
    id: &str,
    output: &Path,
    skip_credentials: bool,
    json: bool,
) -> Result<()> {
    let id = tenant_id(id)?;
    let db = connect(settings).await?;
    // Written beside the target and renamed once complete, so that a failed
    // export never leaves a partial archive under the name asked for.
    let partial = output.with_file_name(format!(
        ".{}.partial",
        output
            .file_name()
            .ok_or_else(|| anyhow!("--output must name a file"))?
            .to_string_lossy()
    ));
    let file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let reporter = ArchiveReporter::new("exporting");
    let mut options = ExportOptions::new().on_progress(reporter.callback());
    if skip_credentials {
        options = options.skip_credentials();
    }
    let exported = db.hidra.export_tenant(&id, file, options).await;
    reporter.finish();
    let summary = match exported {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    std::fs::rename(&partial, output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    if json {
        return output::json(&serde_json::json!({
            "tenant": summary.tenant,
            "file": output,
            "migration_version": summary.migration_version,
            "tables": summary.tables,
            "rows": summary.rows,
            "logins": summary.logins,
            "api_keys": summary.api_keys,
            "bytes": summary.bytes,
        }));
    }
    outln!(
        "exported tenant `{}` to {}: {} tables, {} rows, {} logins, {} API keys, migration version {}, {} bytes",
        summary.tenant,
        output.display(),
        summary.tables,
        summary.rows,
        summary.logins,
        summary.api_keys,
        summary.migration_version,
        summary.bytes
    )
}

pub(crate) async fn import(settings: &Settings, args: Import<'_>) -> Result<()> {
    let mut options = ImportOptions::new();
    if let Some(id) = args.as_id {
        options = options.as_id(tenant_id(id)?);
    }
    if let Some(strategy) = args.strategy {
        options = options.strategy(
            strategy
                .parse::<Strategy>()
                .map_err(|e: String| anyhow!(e))?,
        );
    }
    if let Some(name) = args.name {
        options = options.name(name);
    }
    if args.skip_credentials {
        options = options.skip_credentials();
    }
    if let Some(server) = args.server.filter(|s| *s != "control") {
        options = options.on_server(hidra::ServerName::new(server)?);
    }
    let db = connect(settings).await?;
    let reporter = ArchiveReporter::new("importing");
    let imported = db
        .hidra
        .import_tenant(args.file, options.on_progress(reporter.callback()))
        .await;
    reporter.finish();
    let summary = imported?;
    let tenant = &summary.tenant;
    if args.json {
        return output::json(&serde_json::json!({
            "tenant": tenant,
            "archived_version": summary.archived_version,
            "tables": summary.tables,
            "rows": summary.rows,
            "logins": summary.logins,
            "api_keys": summary.api_keys,
            "api_keys_left_out": summary.api_keys_left_out,
        }));
    }
    outln!(
        "imported tenant `{}` ({}, schema {}, server {}, {}): {} tables, {} rows, {} logins, {} API keys",
        tenant.id,
        tenant.placement.strategy,
        tenant.placement.schema,
        tenant.placement.server.as_deref().unwrap_or("control"),
        tenant.status,
        summary.tables,
        summary.rows,
        summary.logins,
        summary.api_keys
    )?;
    if summary.api_keys_left_out > 0 {
        note!(
            "note: {} API keys of the archive were not imported (they belong to the archived id); create new ones with `hidra api-key create`",
            summary.api_keys_left_out
        );
    }
    Ok(())
}
