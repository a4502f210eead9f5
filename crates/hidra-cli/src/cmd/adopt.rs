//! `hidra adopt`: a schema becomes the first tenant (`--tenant`), or shared
//! tables are split by a tenant column (`--split-by`).

use std::time::Instant;

use anyhow::{Result, bail};
use hidra::adopt::{AdoptSchema, AdoptSplit, SplitReport};
use serde::Serialize;

use super::{NO_TENANT_MIGRATIONS, tenant_id};
use crate::config::Settings;
use crate::db::{self, Needs};
use crate::opt::AdoptArgs;
use crate::output::{self, outln};
use crate::progress::Reporter;

pub(crate) async fn run(settings: &Settings, args: AdoptArgs) -> Result<()> {
    let id = args.tenant.as_deref().map(tenant_id).transpose()?;
    if settings.tenant_migrations.is_none() {
        bail!("{NO_TENANT_MIGRATIONS}: adopting needs them to record a baseline or build schemas");
    }
    let db = db::connect(settings, Needs::TENANT_MIGRATIONS).await?;
    match (id, &args.split_by) {
        (Some(id), _) => {
            let mut adopt = AdoptSchema::new(id)
                .from_schema(args.from_schema.clone())
                .keep(args.keep.clone());
            if let Some(v) = args.baseline {
                adopt = adopt.baseline(v);
            }
            if let Some(name) = &args.name {
                adopt = adopt.name(name.clone());
            }
            schema(&db.hidra, adopt, &args).await
        }
        (None, Some(column)) => split(&db.hidra, column, &args).await,
        (None, None) => bail!("pass --tenant ID or --split-by COLUMN"),
    }
}

#[derive(Debug, Serialize)]
struct SchemaJson {
    tenant: String,
    schema: String,
    baseline: i64,
    moved: Vec<String>,
    kept: Vec<String>,
    extension_objects: usize,
    elapsed_ms: u128,
}

async fn schema(hidra: &hidra::Hidra, adopt: AdoptSchema, args: &AdoptArgs) -> Result<()> {
    let started = Instant::now();
    let done = hidra.adopt_schema(adopt).await?;
    let elapsed = started.elapsed();
    if args.json {
        return output::json(&SchemaJson {
            tenant: done.tenant.id.to_string(),
            schema: done.tenant.placement.schema.clone(),
            baseline: done.baseline,
            moved: done.moved,
            kept: done.kept,
            extension_objects: done.extension_objects,
            elapsed_ms: elapsed.as_millis(),
        });
    }
    outln!(
        "adopted schema {} as tenant {} (schema {}) in {elapsed:.2?}: {} objects moved, {} kept shared, baseline version {}",
        args.from_schema,
        done.tenant.id,
        done.tenant.placement.schema,
        done.moved.len(),
        done.kept.len(),
        done.baseline
    )?;
    for m in &done.moved {
        outln!("  moved {m}")?;
    }
    for k in &done.kept {
        outln!("  kept  {k}")?;
    }
    if done.extension_objects > 0 {
        outln!(
            "  left {} objects of extensions in {}",
            done.extension_objects,
            args.from_schema
        )?;
    }
    outln!("later tenant migrations apply with `hidra migrate`")?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct SplitJson {
    from: String,
    column: String,
    verified: bool,
    created: usize,
    tenants: Vec<SplitTenantJson>,
    elapsed_ms: u128,
}

#[derive(Debug, Serialize)]
struct SplitTenantJson {
    tenant: String,
    value: String,
    earlier: bool,
    logins: i64,
    tables: Vec<TableJson>,
}

#[derive(Debug, Serialize)]
struct TableJson {
    table: String,
    before: i64,
    after: i64,
}

impl From<&SplitReport> for SplitJson {
    fn from(r: &SplitReport) -> Self {
        SplitJson {
            from: r.from.clone(),
            column: r.column.clone(),
            verified: r.is_verified(),
            created: r.created(),
            tenants: r
                .tenants
                .iter()
                .map(|t| SplitTenantJson {
                    tenant: t.id.to_string(),
                    value: t.value.clone(),
                    earlier: t.earlier,
                    logins: t.logins,
                    tables: t
                        .tables
                        .iter()
                        .map(|r| TableJson {
                            table: r.table.clone(),
                            before: r.before,
                            after: r.after,
                        })
                        .collect(),
                })
                .collect(),
            elapsed_ms: r.elapsed.as_millis(),
        }
    }
}

async fn split(hidra: &hidra::Hidra, column: &str, args: &AdoptArgs) -> Result<()> {
    let reporter = Reporter::labeled("splitting", "tenants");
    let progress = reporter.clone();
    let mut split = AdoptSplit::new(column, args.tables.clone())
        .from_schema(args.from_schema.clone())
        .on_progress(move |p| progress.step(p.done, p.total, 0));
    if let Some(prefix) = &args.id_prefix {
        split = split.id_prefix(prefix.clone());
    }
    if let Some(users) = &args.users {
        let email = args.email_column.as_deref().unwrap_or("email");
        split = split.logins(users.clone(), email);
    }
    let report = hidra.adopt_split(split).await;
    reporter.finish();
    let report = report?;
    if args.json {
        output::json(&SplitJson::from(&report))?;
    } else {
        for line in report.to_string().lines() {
            outln!("{line}")?;
        }
        outln!(
            "the shared tables are left as they were: compare, then drop them (and the `{column}` values' other uses)"
        )?;
    }
    let wrong = report.tenants.iter().filter(|t| !t.is_verified()).count();
    if wrong > 0 {
        bail!(
            "{wrong} tenants' row counts differ from the shared tables' (listed above): rows were written after their split, or the tenant migrations add rows"
        );
    }
    Ok(())
}
