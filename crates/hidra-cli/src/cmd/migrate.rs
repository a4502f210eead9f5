//! `hidra migrate` and `hidra migrate status`

use anyhow::{Result, bail};
use hidra::migrate::{Failure, MigrationStatus, Target};
use hidra::{Hidra, RunSummary};
use serde::Serialize;

use super::init::join;
use super::{NO_TENANT_MIGRATIONS, tenant_id};
use crate::config::Settings;
use crate::db::{self, Needs};
use crate::opt::{MigrateArgs, MigrateCommand, MigrateRun};
use crate::output::{self, Table, note, outln, plural};
use crate::progress::Reporter;

pub(crate) async fn run(settings: &Settings, args: MigrateArgs) -> Result<()> {
    match args.command {
        Some(MigrateCommand::Status { json }) => status(settings, json).await,
        Some(MigrateCommand::Template {
            schema,
            recreate,
            json,
        }) => template(settings, &schema, recreate, json).await,
        None => migrate(settings, args.run).await,
    }
}

#[derive(Debug, Serialize)]
struct TemplateJson {
    schema: String,
    from: i64,
    to: i64,
    recreated: bool,
    database_url: String,
}

/// `hidra migrate template`: the schema sqlx's macros check queries against.
async fn template(settings: &Settings, schema: &str, recreate: bool, json: bool) -> Result<()> {
    if settings.tenant_migrations.is_none() {
        bail!(NO_TENANT_MIGRATIONS);
    }
    let db = db::connect(settings, Needs::TENANT_MIGRATIONS).await?;
    let recreated = recreate && db.hidra.drop_template_schema(schema).await?;
    let done = db.hidra.migrate_template_schema(schema).await?;
    let url = done.database_url(settings.database_url()?);
    if json {
        return output::json(&TemplateJson {
            schema: done.schema,
            from: done.from,
            to: done.to,
            recreated,
            database_url: url,
        });
    }
    if done.from == done.to {
        outln!(
            "template schema `{}` is at version {}",
            done.schema,
            done.to
        )?;
    } else {
        outln!(
            "template schema `{}` migrated from version {} to {}",
            done.schema,
            done.from,
            done.to
        )?;
    }
    note!(
        "build with this DATABASE_URL for sqlx's query! macros (then `cargo sqlx prepare` for offline builds):"
    );
    outln!("{url}")
}

/// Where the shared schema stands.
#[derive(Debug, Serialize)]
pub(crate) struct SharedState {
    /// The last applied version (0: none).
    pub(crate) version: i64,
    /// Versions still to apply.
    pub(crate) pending: Vec<i64>,
    /// Why it cannot be migrated (an applied migration edited or missing).
    pub(crate) problem: Option<String>,
}

/// Reads the shared migration history without changing anything.
pub(crate) async fn shared_state(hidra: &Hidra) -> Result<SharedState> {
    let status = hidra.shared_migration_status().await?;
    Ok(SharedState {
        version: status.version,
        pending: status.pending,
        problem: status.problem,
    })
}

#[derive(Debug, Serialize)]
struct RunJson {
    dry_run: bool,
    /// The shared step, when shared migrations are configured.
    shared: Option<SharedJson>,
    /// The tenant step, when tenant migrations are configured.
    tenants: Option<TenantsJson>,
}

#[derive(Debug, Serialize)]
struct SharedJson {
    version: i64,
    applied: Vec<i64>,
    pending: Vec<i64>,
}

#[derive(Debug, Serialize)]
struct TenantsJson {
    latest: i64,
    migrated: Vec<MigratedJson>,
    current: usize,
    failed: Vec<FailedJson>,
    elapsed_ms: u128,
}

#[derive(Debug, Serialize)]
struct MigratedJson {
    tenant: Option<String>,
    schema: String,
    from: i64,
    to: i64,
}

#[derive(Debug, Serialize)]
struct FailedJson {
    tenant: Option<String>,
    schema: String,
    error: String,
}

fn tenant_of(target: &Target) -> Option<String> {
    target.tenant.as_ref().map(ToString::to_string)
}

async fn migrate(settings: &Settings, run: MigrateRun) -> Result<()> {
    let ids = run
        .tenants
        .iter()
        .map(|raw| tenant_id(raw))
        .collect::<Result<Vec<_>>>()?;
    if settings.tenant_migrations.is_none() {
        if settings.shared_migrations.is_none() {
            bail!("nothing to migrate: {NO_TENANT_MIGRATIONS}, and no shared migrations either");
        }
        if !ids.is_empty() {
            bail!("cannot migrate tenants: {NO_TENANT_MIGRATIONS}");
        }
    }
    let concurrency = run.concurrency.unwrap_or(settings.concurrency);
    let db = db::connect(
        settings,
        Needs {
            tenant_migrations: true,
            shared_migrations: true,
            pool_size: concurrency + 1,
        },
    )
    .await?;
    let hidra = &db.hidra;

    let shared = match &db.shared_migrations {
        None => None,
        Some(migrations) if run.dry_run => {
            let state = shared_state(hidra).await?;
            if let Some(problem) = state.problem {
                bail!("shared migrations: {problem}; restore it and add a new migration instead");
            }
            Some(SharedJson {
                version: state.version,
                applied: Vec::new(),
                pending: state.pending,
            })
        }
        Some(_) => {
            let report = hidra.migrate_shared().await?;
            Some(SharedJson {
                version: report.version,
                applied: report.applied,
                pending: Vec::new(),
            })
        }
    };
    if let Some(s) = &shared
        && !run.json
    {
        if !s.applied.is_empty() {
            outln!(
                "shared: applied {} (now at version {})",
                join(&s.applied),
                s.version
            )?;
        } else if !s.pending.is_empty() {
            outln!(
                "shared: would apply {} (now at version {})",
                join(&s.pending),
                s.version
            )?;
        } else {
            outln!("shared: up to date (version {})", s.version)?;
        }
    }

    let Some(tenant_migrations) = &db.tenant_migrations else {
        if run.json {
            output::json(&RunJson {
                dry_run: run.dry_run,
                shared,
                tenants: None,
            })?;
        } else {
            note!("note: {NO_TENANT_MIGRATIONS}; tenants were not migrated");
        }
        return Ok(());
    };

    let mut runner = hidra
        .migrator()
        .concurrency(concurrency as usize)
        .dry_run(run.dry_run);
    if !ids.is_empty() {
        runner = runner.tenants(ids);
    }
    let reporter = Reporter::new();
    if !run.dry_run {
        runner = runner.on_progress(reporter.callback());
    }
    let summary = runner.run().await;
    reporter.finish();
    let summary: RunSummary = summary?;

    if run.json {
        output::json(&RunJson {
            dry_run: run.dry_run,
            shared,
            tenants: Some(TenantsJson {
                latest: tenant_migrations.latest(),
                migrated: summary
                    .migrated
                    .iter()
                    .map(|m| MigratedJson {
                        tenant: tenant_of(&m.target),
                        schema: m.target.schema.clone(),
                        from: m.from,
                        to: m.to,
                    })
                    .collect(),
                current: summary.current,
                failed: summary
                    .failed
                    .iter()
                    .map(|Failure { target, error, .. }| FailedJson {
                        tenant: tenant_of(target),
                        schema: target.schema.clone(),
                        error: output::one_line(error),
                    })
                    .collect(),
                elapsed_ms: summary.elapsed.as_millis(),
            }),
        })?;
    } else {
        outln!("tenants: {summary}")?;
        if summary.dry_run {
            for m in &summary.migrated {
                outln!("  {}: {} -> {}", m.target, m.from, m.to)?;
            }
        }
    }
    if !summary.is_success() {
        let total = summary.failed.len() + summary.migrated.len() + summary.current;
        bail!(
            "{} of {total} schemas failed to migrate (listed above); the others are unaffected",
            summary.failed.len()
        );
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct StatusJson {
    shared: Option<SharedState>,
    tenants: Option<TenantStatusJson>,
}

#[derive(Debug, Serialize)]
struct TenantStatusJson {
    latest: i64,
    schemas: Vec<SchemaStatusJson>,
}

#[derive(Debug, Serialize)]
struct SchemaStatusJson {
    tenant: Option<String>,
    schema: String,
    /// The registered server holding it; `null`: the control server.
    server: Option<String>,
    /// `None` when the schema's history cannot be matched to the migrations.
    version: Option<i64>,
    pending: usize,
    problem: Option<String>,
}

impl From<&MigrationStatus> for SchemaStatusJson {
    fn from(s: &MigrationStatus) -> Self {
        SchemaStatusJson {
            tenant: tenant_of(&s.target),
            schema: s.target.schema.clone(),
            server: s.target.server.clone(),
            version: s.problem.is_none().then_some(s.version),
            pending: s.pending,
            problem: s.problem.clone(),
        }
    }
}

async fn status(settings: &Settings, json: bool) -> Result<()> {
    if settings.tenant_migrations.is_none() && settings.shared_migrations.is_none() {
        bail!("{NO_TENANT_MIGRATIONS}, and no shared migrations either");
    }
    let db = db::connect(
        settings,
        Needs {
            tenant_migrations: true,
            shared_migrations: true,
            ..Needs::default()
        },
    )
    .await?;
    let hidra = &db.hidra;
    let shared = match &db.shared_migrations {
        Some(_) => Some(shared_state(hidra).await?),
        None => None,
    };
    let tenants = match &db.tenant_migrations {
        Some(m) => {
            let statuses = hidra.migration_status().await?;
            Some(TenantStatusJson {
                latest: m.latest(),
                schemas: statuses.iter().map(SchemaStatusJson::from).collect(),
            })
        }
        None => None,
    };
    // The same exit rule as `doctor`: a schema with a problem (an edited or
    // missing migration) fails the command, after the report.
    let problems = shared
        .as_ref()
        .map_or(0, |s| usize::from(s.problem.is_some()))
        + tenants.as_ref().map_or(0, |t| {
            t.schemas.iter().filter(|s| s.problem.is_some()).count()
        });
    let fail = || match problems {
        0 => Ok(()),
        1 => bail!("migration status found 1 schema with a problem"),
        n => bail!("migration status found {n} schemas with problems"),
    };
    if json {
        output::json(&StatusJson { shared, tenants })?;
        return fail();
    }
    if let Some(s) = &shared {
        match &s.problem {
            Some(problem) => outln!("shared: version {}; problem: {problem}", s.version)?,
            None if s.pending.is_empty() => outln!("shared: version {}, up to date", s.version)?,
            None => outln!(
                "shared: version {}, pending {}",
                s.version,
                join(&s.pending)
            )?,
        }
    }
    let Some(t) = tenants else {
        note!("note: {NO_TENANT_MIGRATIONS}");
        return fail();
    };
    let behind = t.schemas.iter().filter(|s| s.pending > 0).count();
    let broken = t.schemas.iter().filter(|s| s.problem.is_some()).count();
    outln!(
        "tenants: latest version {}; {}, {behind} behind, {broken} with problems",
        t.latest,
        plural(t.schemas.len(), "schema", "schemas")
    )?;
    if t.schemas.is_empty() {
        return fail();
    }
    let mut table = Table::new([
        "TENANT", "SCHEMA", "SERVER", "VERSION", "PENDING", "PROBLEM",
    ]);
    for s in &t.schemas {
        table.row(vec![
            s.tenant.clone().unwrap_or_else(|| "(spare)".to_owned()),
            s.schema.clone(),
            s.server.clone().unwrap_or_else(|| "control".to_owned()),
            s.version.map_or_else(|| "?".to_owned(), |v| v.to_string()),
            s.pending.to_string(),
            s.problem.clone().unwrap_or_default(),
        ]);
    }
    table.print()?;
    fail()
}

/// Used by `doctor`: the schemas behind on or refusing the tenant migrations.
pub(crate) async fn behind(hidra: &Hidra) -> Result<Vec<MigrationStatus>> {
    Ok(hidra
        .migration_status()
        .await?
        .into_iter()
        .filter(|s| s.pending > 0 || s.problem.is_some())
        .collect())
}
