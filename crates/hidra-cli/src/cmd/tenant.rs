//! `hidra tenant …`

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result, anyhow, bail};
use hidra::{Confirmation, ListTenants, MAX_PAGE_SIZE, NewTenant, Strategy, Tenant, TenantStatus};

use super::{NO_TENANT_MIGRATIONS, tenant_id};
use crate::config::Settings;
use crate::db::{self, Needs};
use crate::opt::TenantCommand;
use crate::output::{self, Table, note, outln};

pub(crate) async fn run(settings: &Settings, command: TenantCommand) -> Result<()> {
    match command {
        TenantCommand::Create {
            id,
            name,
            strategy,
            metadata,
            server,
            json,
        } => {
            let strategy = strategy
                .map(|s| s.parse::<Strategy>().map_err(|e: String| anyhow!(e)))
                .transpose()?;
            let new = NewTenant::new(tenant_id(&id)?);
            let new = match server.as_deref() {
                None => new,
                Some("control") => new.on_control_server(),
                Some(name) => new.on_server(hidra::ServerName::new(name)?),
            };
            create(settings, new, name, strategy, metadata.as_deref(), json).await
        }
        TenantCommand::List {
            status,
            search,
            limit,
            json,
        } => list(settings, status.as_deref(), search, limit, json).await,
        TenantCommand::Show { id, json } => show(settings, &id, json).await,
        TenantCommand::Suspend { id } => {
            let id = tenant_id(&id)?;
            let db = db::connect(settings, Needs::default()).await?;
            let tenant = db.hidra.suspend(&id).await?;
            outln!("tenant `{}` is {}", tenant.id, tenant.status)
        }
        TenantCommand::Activate { id } => {
            let id = tenant_id(&id)?;
            let db = db::connect(settings, Needs::default()).await?;
            let tenant = db.hidra.activate(&id).await?;
            outln!("tenant `{}` is {}", tenant.id, tenant.status)
        }
        TenantCommand::Delete { id, yes } => delete(settings, &id, yes).await,
        TenantCommand::Move {
            id,
            to_server,
            json,
        } => move_to_server(settings, &id, &to_server, json).await,
        TenantCommand::Export {
            id,
            output,
            skip_credentials,
            json,
        } => super::archive::export(settings, &id, &output, skip_credentials, json).await,
        TenantCommand::Import {
            file,
            as_id,
            strategy,
            name,
            skip_credentials,
            server,
            json,
        } => {
            let args = super::archive::Import {
                file: &file,
                as_id: as_id.as_deref(),
                strategy: strategy.as_deref(),
                name,
                skip_credentials,
                server: server.as_deref(),
                json,
            };
            super::archive::import(settings, args).await
        }
    }
}

async fn create(
    settings: &Settings,
    mut new: NewTenant,
    name: Option<String>,
    strategy: Option<Strategy>,
    metadata: Option<&str>,
    json: bool,
) -> Result<()> {
    if let Some(name) = name {
        new = new.name(name);
    }
    if let Some(strategy) = strategy {
        new = new.strategy(strategy);
    }
    if let Some(raw) = metadata {
        let value: serde_json::Value =
            serde_json::from_str(raw).context("invalid --metadata: expected a JSON object")?;
        if !value.is_object() {
            bail!("invalid --metadata: expected a JSON object such as '{{\"plan\":\"pro\"}}'");
        }
        new = new.metadata(value);
    }
    let db = db::connect(settings, Needs::TENANT_MIGRATIONS).await?;
    let own_schema = strategy.is_none_or(|s| s != Strategy::RowLevel);
    let version = match &db.tenant_migrations {
        Some(migrations) => migrations.latest(),
        None => {
            if own_schema {
                note!("note: {NO_TENANT_MIGRATIONS}; the tenant's schema is created empty");
            }
            0
        }
    };
    let tenant = db.hidra.provision(new).await?;
    if json {
        return output::json(&tenant);
    }
    match tenant.placement.strategy {
        Strategy::Schema => outln!(
            "created tenant `{}` (schema {}, migrations at version {version}, {})",
            tenant.id,
            tenant.placement.schema,
            tenant.status
        ),
        other => outln!(
            "created tenant `{}` ({other}, schema {}, {})",
            tenant.id,
            tenant.placement.schema,
            tenant.status
        ),
    }
}

async fn list(
    settings: &Settings,
    status: Option<&str>,
    search: Option<String>,
    limit: Option<u32>,
    json: bool,
) -> Result<()> {
    let status: Option<TenantStatus> = status
        .map(|s| s.parse().map_err(|e: String| anyhow!(e)))
        .transpose()?;
    let db = db::connect(settings, Needs::default()).await?;
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut after = None;
    loop {
        let want = limit.map_or(MAX_PAGE_SIZE, |l| {
            (l as usize - tenants.len()).min(MAX_PAGE_SIZE as usize) as u32
        });
        let page = db
            .hidra
            .list(&ListTenants {
                after: after.take(),
                limit: want,
                status,
                search: search.clone(),
            })
            .await?;
        tenants.extend(page.items);
        match page.next {
            Some(next) if limit.is_none_or(|l| tenants.len() < l as usize) => after = Some(next),
            _ => break,
        }
    }
    if json {
        return output::json(&tenants);
    }
    if tenants.is_empty() {
        note!("no tenants");
        return Ok(());
    }
    let mut table = Table::new(["ID", "NAME", "STATUS", "STRATEGY", "SCHEMA", "CREATED"]);
    for t in &tenants {
        table.row(vec![
            t.id.to_string(),
            t.name.clone(),
            t.status.to_string(),
            t.placement.strategy.to_string(),
            t.placement.schema.clone(),
            output::time(&t.created_at),
        ]);
    }
    table.print()
}

async fn show(settings: &Settings, id: &str, json: bool) -> Result<()> {
    let id = tenant_id(id)?;
    let db = db::connect(settings, Needs::default()).await?;
    let tenant = db
        .hidra
        .tenant(&id)
        .await?
        .ok_or(hidra::Error::NotFound(id))?;
    if json {
        return output::json(&tenant);
    }
    outln!("id:        {}", tenant.id)?;
    outln!("name:      {}", tenant.name)?;
    outln!("status:    {}", tenant.status)?;
    outln!("strategy:  {}", tenant.placement.strategy)?;
    outln!("schema:    {}", tenant.placement.schema)?;
    if let Some(database) = &tenant.placement.database {
        outln!("database:  {database}")?;
    }
    if let Some(server) = &tenant.placement.server {
        outln!("server:    {server}")?;
    }
    outln!("metadata:  {}", tenant.metadata)?;
    outln!("created:   {}", output::time(&tenant.created_at))?;
    outln!("updated:   {}", output::time(&tenant.updated_at))
}

async fn delete(settings: &Settings, id: &str, yes: bool) -> Result<()> {
    let id = tenant_id(id)?;
    let interactive = std::io::stdin().is_terminal();
    if !yes && !interactive {
        bail!(
            "refusing to delete tenant `{id}` without confirmation: standard input is not a terminal; pass --yes"
        );
    }
    let db = db::connect(settings, Needs::default()).await?;
    let tenant = db
        .hidra
        .tenant(&id)
        .await?
        .ok_or_else(|| hidra::Error::NotFound(id.clone()))?;
    let what = match (tenant.placement.strategy, &tenant.placement.database) {
        (Strategy::Schema, _) => format!("its schema {}", tenant.placement.schema),
        (Strategy::Database, Some(database)) => format!("its database {database}"),
        (Strategy::Database, None) => "its database".to_owned(),
        _ => "its rows in the row-level tables".to_owned(),
    };
    if !yes {
        let mut err = std::io::stderr().lock();
        write!(
            err,
            "This deletes tenant `{id}` ({}) and {what} with all its data.\n\
             Type the tenant id to confirm: ",
            tenant.name
        )?;
        err.flush()?;
        drop(err);
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != id.as_str() {
            bail!("confirmation did not match; tenant `{id}` was not deleted");
        }
    }
    db.hidra.deprovision(&id, Confirmation::of(&id)).await?;
    outln!("deleted tenant `{id}` and {what}")
}

/// `hidra tenant move ID --to-server NAME`: copies the tenant to the server,
/// with a bar of the tables copied.
async fn move_to_server(settings: &Settings, id: &str, to: &str, json: bool) -> Result<()> {
    let id = tenant_id(id)?;
    let to = match to {
        "control" => None,
        name => Some(hidra::ServerName::new(name)?),
    };
    let db = db::connect(settings, Needs::TENANT_MIGRATIONS).await?;
    let progress = crate::progress::Reporter::labeled("moving", "tables");
    let moved = db
        .hidra
        .move_to_server_with(&id, to.as_ref(), |p| progress.step(p.done, p.total, 0))
        .await;
    progress.finish();
    let moved = moved?;
    if json {
        return output::json(&serde_json::json!({
            "tenant": moved.tenant,
            "from": moved.from,
            "to": moved.to,
            "rows": moved.rows,
            "tables": moved.tables,
            "write_freeze_ms": moved.write_freeze.as_millis() as u64,
            "elapsed_ms": moved.elapsed.as_millis() as u64,
        }));
    }
    let server = |s: &Option<String>| s.clone().unwrap_or_else(|| "control".to_owned());
    outln!(
        "moved tenant `{}` from server {} to {}: {} rows in {} tables, writes held {:.1} s, {:.1} s in all",
        moved.tenant.id,
        server(&moved.from),
        server(&moved.to),
        moved.rows,
        moved.tables,
        moved.write_freeze.as_secs_f64(),
        moved.elapsed.as_secs_f64()
    )
}
