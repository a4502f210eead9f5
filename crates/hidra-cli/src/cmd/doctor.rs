//! `hidra doctor`: read-only checks of a deployment.

use std::borrow::Cow;
use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use hidra::sqlx;
use hidra::{ListTenants, MAX_PAGE_SIZE, Strategy, Tenant, TenantId};
use serde::Serialize;

use super::NO_TENANT_MIGRATIONS;
use super::migrate::{behind, shared_state};
use crate::config::Settings;
use crate::db::{self, Needs, redact};
use crate::output::{self, outln, plural};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    Problem,
    Skipped,
}

#[derive(Debug, Serialize)]
struct Check {
    name: Cow<'static, str>,
    status: Status,
    detail: String,
    items: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    ok: bool,
    problems: usize,
    checks: Vec<Check>,
}

impl Report {
    fn add(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        status: Status,
        detail: String,
        items: Vec<String>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            status,
            detail,
            items,
        });
    }

    fn ok(&mut self, name: impl Into<Cow<'static, str>>, detail: String) {
        self.add(name, Status::Ok, detail, Vec::new());
    }

    fn problem(&mut self, name: impl Into<Cow<'static, str>>, detail: String, items: Vec<String>) {
        self.add(name, Status::Problem, detail, items);
    }

    fn skipped(&mut self, name: impl Into<Cow<'static, str>>, detail: impl Into<String>) {
        self.add(name, Status::Skipped, detail.into(), Vec::new());
    }

    /// Prints the report; fails when it holds a problem.
    fn finish(mut self, json: bool) -> Result<()> {
        self.problems = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Problem)
            .count();
        self.ok = self.problems == 0;
        if json {
            output::json(&self)?;
        } else {
            let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for c in &self.checks {
                let status = match c.status {
                    Status::Ok => "ok",
                    Status::Problem => "PROBLEM",
                    Status::Skipped => "skipped",
                };
                outln!("{status:<8} {:<width$}  {}", c.name, c.detail)?;
                for item in &c.items {
                    outln!("{:<8} {:<width$}    - {item}", "", "")?;
                }
            }
        }
        match self.problems {
            0 => Ok(()),
            1 => bail!("doctor found 1 problem"),
            n => bail!("doctor found {n} problems"),
        }
    }
}

pub(crate) async fn run(settings: &Settings, json: bool, repair: bool) -> Result<()> {
    // A broken configuration is an error, not a finding.
    let loaded = db::load(
        settings,
        Needs {
            tenant_migrations: true,
            shared_migrations: true,
            ..Needs::default()
        },
    )
    .await?;
    let registry = db::registry(settings)?;
    let mut report = Report::default();

    let db = match db::open(settings, loaded, 2).await {
        Ok(db) => db,
        Err(err) => {
            report.problem("database", output::one_line(err.as_ref()), Vec::new());
            return report.finish(json);
        }
    };
    report.ok(
        "database",
        format!(
            "PostgreSQL {} at {}",
            db.server_version,
            redact(settings.database_url()?)
        ),
    );
    let hidra = &db.hidra;

    let mut conn = hidra.acquire_shared().await?;
    let registry_exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(registry.table().quoted())
        .fetch_one(&mut *conn)
        .await
        .context("looking for the registry table")?;
    let schemas: HashSet<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace")
        .fetch_all(&mut *conn)
        .await
        .context("listing schemas")?
        .into_iter()
        .collect();
    drop(conn);
    let internal = hidra
        .internal_schema_status()
        .await
        .context("looking for hidra's internal schema")?;
    let internal_exists = internal.is_complete();

    let tenants = if registry_exists {
        let tenants = all_tenants(hidra).await?;
        report.ok(
            "registry",
            format!(
                "{}: {}",
                registry.table(),
                plural(tenants.len(), "tenant", "tenants")
            ),
        );
        Some(tenants)
    } else {
        report.problem(
            "registry",
            format!(
                "the registry table {} does not exist; run `hidra init`",
                registry.table()
            ),
            Vec::new(),
        );
        None
    };
    if internal_exists {
        report.ok("internal schema", "hidra".to_owned());
    } else {
        // A schema without some of its tables: name the missing ones.
        let (detail, items) = if internal.schema {
            (
                "hidra's internal schema is incomplete; run `hidra init`",
                internal.missing().into_iter().map(str::to_owned).collect(),
            )
        } else {
            (
                "hidra's internal schema is missing; run `hidra init`",
                Vec::new(),
            )
        };
        report.problem("internal schema", detail.to_owned(), items);
    }

    match &tenants {
        Some(tenants) => {
            // Provisionings whose lock nobody holds (see `schema_checks`).
            let abandoned: HashSet<hidra::TenantId> = match hidra.abandoned_provisionings().await {
                Ok(abandoned) => abandoned.into_iter().map(|t| t.id).collect(),
                Err(e) if e.is_table_missing() => HashSet::new(),
                Err(e) => return Err(e.into()),
            };
            schema_checks(&mut report, settings, tenants, &schemas, &abandoned);
        }
        None => {
            report.skipped("orphan schemas", "needs the registry table");
            report.skipped("missing schemas", "needs the registry table");
        }
    }

    match (&db.shared_migrations, internal_exists) {
        (None, _) => report.skipped(
            "shared migrations",
            "no shared migrations configured (--shared-migrations DIR or HIDRA_SHARED_MIGRATIONS)",
        ),
        (Some(_), false) => report.skipped("shared migrations", "needs hidra's internal schema"),
        (Some(_), true) => {
            let state = shared_state(hidra).await?;
            match (&state.problem, state.pending.is_empty()) {
                (Some(problem), _) => {
                    report.problem("shared migrations", problem.clone(), Vec::new())
                }
                (None, true) => report.ok(
                    "shared migrations",
                    format!("at version {}, up to date", state.version),
                ),
                (None, false) => report.problem(
                    "shared migrations",
                    format!(
                        "at version {}, {} pending; run `hidra migrate`",
                        state.version,
                        state.pending.len()
                    ),
                    Vec::new(),
                ),
            }
        }
    }

    match (&db.tenant_migrations, tenants.is_some() && internal_exists) {
        (None, _) => report.skipped("tenant migrations", NO_TENANT_MIGRATIONS),
        (Some(_), false) => report.skipped(
            "tenant migrations",
            "needs the registry table and hidra's internal schema",
        ),
        (Some(migrations), true) => {
            let late = behind(hidra).await?;
            if late.is_empty() {
                report.ok(
                    "tenant migrations",
                    format!("every schema at version {}", migrations.latest()),
                );
            } else {
                let items = late
                    .iter()
                    .map(|s| {
                        let who = match &s.target.tenant {
                            Some(id) => format!("{id} ({})", s.target.schema),
                            None => format!("spare schema {}", s.target.schema),
                        };
                        match &s.problem {
                            Some(problem) => format!("{who}: {problem}"),
                            None => format!("{who}: version {}, {} pending", s.version, s.pending),
                        }
                    })
                    .collect();
                report.problem(
                    "tenant migrations",
                    format!(
                        "{} behind version {} or refusing it; run `hidra migrate`",
                        plural(late.len(), "schema is", "schemas are"),
                        migrations.latest()
                    ),
                    items,
                );
            }
        }
    }

    // Row-level security protects row-level tenants only: audit it when
    // there are some (provisioning one already refuses a failing audit).
    let row_level = tenants.as_ref().map_or(0, |ts| {
        ts.iter()
            .filter(|t| t.placement.strategy == Strategy::RowLevel)
            .count()
    });
    if tenants.is_none() {
        report.skipped("row-level security", "needs the registry table");
    } else if row_level == 0 {
        report.skipped("row-level security", "no row-level tenants");
    } else {
        let audit = hidra.audit_row_level().await?;
        let scope = format!(
            "{}, {} as role `{}`",
            plural(row_level, "row-level tenant", "row-level tenants"),
            plural(
                audit.tables.len(),
                "tenant-scoped table",
                "tenant-scoped tables"
            ),
            audit.role
        );
        if audit.is_clean() {
            report.ok("row-level security", scope);
        } else {
            report.problem(
                "row-level security",
                format!(
                    "{} ({scope})",
                    plural(audit.findings.len(), "finding", "findings")
                ),
                audit.findings.iter().map(ToString::to_string).collect(),
            );
        }
    }

    server_checks(&mut report, hidra).await?;
    provisioning_checks(&mut report, hidra, repair).await?;
    registration_checks(&mut report, hidra, repair).await?;
    report.finish(json)
}

/// Every registered server: reachable, and running a supported PostgreSQL.
/// One check a server, named `server NAME`.
async fn server_checks(report: &mut Report, hidra: &hidra::Hidra) -> Result<()> {
    let servers = hidra.servers();
    let mut conn = hidra.acquire_shared().await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(servers.table().table().quoted())
        .fetch_one(&mut *conn)
        .await
        .context("looking for the server registry table")?;
    drop(conn);
    if !exists {
        report.skipped(
            "servers",
            format!(
                "no server registry table `{}` (`hidra init` creates it)",
                servers.table().table()
            ),
        );
        return Ok(());
    }
    let registered = servers.list().await?;
    if registered.is_empty() {
        report.skipped(
            "servers",
            "no servers registered besides the control server",
        );
    }
    for server in &registered {
        let name = format!("server {}", server.name);
        let about = format!(
            "{}, {}",
            server.state,
            plural(server.tenants as usize, "tenant", "tenants")
        );
        match servers.check(server).await {
            Ok(check) => report.ok(
                name,
                format!(
                    "PostgreSQL {} at {} ({about}), answered in {} ms",
                    check.version,
                    server.redacted_url(),
                    check.latency.as_millis()
                ),
            ),
            Err(err) => report.problem(
                name,
                format!("{} ({about})", output::one_line(&err)),
                Vec::new(),
            ),
        }
    }
    Ok(())
}

/// Provisionings on registered servers that a killed process left between
/// the registry row and the data on the tenant's server.
async fn provisioning_checks(
    report: &mut Report,
    hidra: &hidra::Hidra,
    repair: bool,
) -> Result<()> {
    const NAME: &str = "interrupted provisionings";
    let abandoned = match hidra.abandoned_provisionings().await {
        Ok(abandoned) => abandoned,
        Err(e) if e.is_table_missing() => {
            report.skipped(NAME, "no tenant registry");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if repair && !abandoned.is_empty() {
        let undone = hidra.repair_provisioning().await?;
        if !undone.is_empty() {
            report.ok(
                NAME,
                format!(
                    "repaired: {} undone on their servers and unregistered (their ids are free again)",
                    plural(undone.len(), "provisioning", "provisionings")
                ),
            );
            return Ok(());
        }
    }
    if abandoned.is_empty() {
        report.ok(NAME, "no provisioning was left half done".into());
    } else {
        report.problem(
            NAME,
            format!(
                "{} `provisioning` with nobody finishing them (a killed process?): \
                 `hidra doctor --repair` drops what was built of them and unregisters them",
                plural(abandoned.len(), "tenant", "tenants")
            ),
            abandoned
                .iter()
                .map(|t| {
                    format!(
                        "{} on {} ({}, since {})",
                        t.id,
                        t.placement
                            .server
                            .as_ref()
                            .map_or("the control server".to_owned(), |s| format!("server {s}")),
                        t.placement.strategy,
                        t.created_at.to_rfc3339()
                    )
                })
                .collect(),
        );
    }
    Ok(())
}

/// Database-per-tenant registrations a crash left between their two phases
/// (the login row in this database, the user in the tenant's).
async fn registration_checks(
    report: &mut Report,
    hidra: &hidra::Hidra,
    repair: bool,
) -> Result<()> {
    use hidra::auth::{LoginTable, PENDING_REGISTRATION_GRACE};
    const NAME: &str = "half-made registrations";
    let logins = LoginTable::default();
    let mut conn = hidra.acquire_shared().await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(logins.table().quoted())
        .fetch_one(&mut *conn)
        .await
        .context("looking for the login table")?;
    drop(conn);
    if !exists {
        report.skipped(NAME, format!("no login table `{}`", logins.table()));
        return Ok(());
    }
    if repair {
        let settled = logins
            .settle_registrations(hidra, PENDING_REGISTRATION_GRACE)
            .await?;
        if settled.completed + settled.undone > 0 {
            report.ok(
                NAME,
                format!(
                    "repaired: {} completed, {} undone (their emails are free again)",
                    settled.completed, settled.undone
                ),
            );
            return Ok(());
        }
    }
    let half = logins
        .half_registered(hidra, PENDING_REGISTRATION_GRACE)
        .await?;
    if half.is_empty() {
        report.ok(
            NAME,
            "no database-per-tenant registration is stuck between its two phases".into(),
        );
    } else {
        report.problem(
            NAME,
            format!(
                "{} stuck between writing the login row and the user (a crash?): \
                 `hidra doctor --repair` completes or undoes them",
                plural(half.len(), "registration", "registrations")
            ),
            half.iter()
                .map(|h| {
                    format!(
                        "{} in {} ({})",
                        h.email,
                        h.tenant,
                        if h.user_exists {
                            "user written"
                        } else {
                            "no user"
                        }
                    )
                })
                .collect(),
        );
    }
    Ok(())
}

/// Schemas named like tenants without a registry row, and registry rows
/// without their schema.
fn schema_checks(
    report: &mut Report,
    settings: &Settings,
    tenants: &[Tenant],
    schemas: &HashSet<String>,
    abandoned: &HashSet<hidra::TenantId>,
) {
    let prefix = settings.schema_prefix.as_str();
    let registered: HashSet<&str> = tenants
        .iter()
        .map(|t| t.placement.schema.as_str())
        .collect();
    let mut orphans: Vec<&String> = schemas
        .iter()
        .filter(|s| !registered.contains(s.as_str()))
        .filter(|s| !settings.shared_schemas.contains(s))
        .filter(|s| named_like_tenant(s, prefix))
        .collect();
    orphans.sort();
    if orphans.is_empty() {
        report.ok(
            "orphan schemas",
            format!("no schema named like a tenant (`{prefix}…`) lacks a registry row"),
        );
    } else {
        report.problem(
            "orphan schemas",
            format!(
                "{} named like a tenant (`{prefix}…`) but without a registry row",
                plural(orphans.len(), "schema", "schemas")
            ),
            orphans.into_iter().cloned().collect(),
        );
    }

    // Provisioning is one transaction, except around `-- no-transaction`
    // migrations, tenant databases and registered servers, where the process
    // holds the tenant's provisioning lock until the row is settled. Rows
    // whose lock nobody holds are interrupted provisionings (checked below,
    // repaired by `--repair`); a row still held long after it was written
    // is a provisioning that hangs.
    let stuck: Vec<String> = tenants
        .iter()
        .filter(|t| t.status == hidra::TenantStatus::Provisioning)
        .filter(|t| !abandoned.contains(&t.id))
        .filter(|t| {
            chrono::Utc::now() - t.created_at > chrono::Duration::minutes(STUCK_AFTER_MINUTES)
        })
        .map(|t| {
            format!(
                "{} (since {}, {})",
                t.id,
                t.created_at.to_rfc3339(),
                t.placement.strategy
            )
        })
        .collect();
    if stuck.is_empty() {
        report.ok(
            "stuck provisioning",
            format!("no tenant has been `provisioning` for over {STUCK_AFTER_MINUTES} minutes"),
        );
    } else {
        report.problem(
            "stuck provisioning",
            format!(
                "{} `provisioning` for over {STUCK_AFTER_MINUTES} minutes, a process still at it (a seed or \
                 migration that hangs?): stop that process, then `hidra doctor --repair` undoes them",
                plural(stuck.len(), "tenant", "tenants")
            ),
            stuck,
        );
    }

    // Only schema-per-tenant tenants of the control server own a schema in
    // this database.
    let missing: Vec<String> = tenants
        .iter()
        .filter(|t| t.placement.strategy == Strategy::Schema && t.placement.server.is_none())
        .filter(|t| !schemas.contains(&t.placement.schema))
        .map(|t| format!("{} (schema {}, {})", t.id, t.placement.schema, t.status))
        .collect();
    if missing.is_empty() {
        report.ok(
            "missing schemas",
            "every schema-per-tenant tenant has its schema".to_owned(),
        );
    } else {
        report.problem(
            "missing schemas",
            format!(
                "{} without a schema",
                plural(
                    missing.len(),
                    "schema-per-tenant tenant",
                    "schema-per-tenant tenants"
                )
            ),
            missing,
        );
    }
}

/// How long a tenant may stay `provisioning` before doctor calls it stuck.
const STUCK_AFTER_MINUTES: i64 = 10;

/// Whether `schema` is what some tenant id maps to with `prefix`.
fn named_like_tenant(schema: &str, prefix: &str) -> bool {
    let Some(suffix) = schema.strip_prefix(prefix) else {
        return false;
    };
    let reserved = schema == "public"
        || schema == "information_schema"
        || schema == "hidra"
        || schema.starts_with("pg_")
        || schema.starts_with("hidra_");
    // Schema names use `_` where ids may have `-`; `_` is valid in ids too.
    !reserved && TenantId::new(suffix).is_ok()
}

async fn all_tenants(hidra: &hidra::Hidra) -> Result<Vec<Tenant>> {
    let mut tenants = Vec::new();
    let mut page = ListTenants::first(MAX_PAGE_SIZE);
    loop {
        let p = hidra.list(&page).await?;
        tenants.extend(p.items);
        match p.next {
            Some(next) => page = ListTenants::first(MAX_PAGE_SIZE).after(next),
            None => return Ok(tenants),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_like_schema_names() {
        assert!(named_like_tenant("tenant_acme", "tenant_"));
        assert!(named_like_tenant("tenant_acme_corp", "tenant_"));
        assert!(!named_like_tenant("tenant_", "tenant_"));
        assert!(!named_like_tenant("tenant_1x", "tenant_"));
        assert!(!named_like_tenant("billing", "tenant_"));
        // With no prefix, only names that are valid ids and not reserved.
        assert!(named_like_tenant("acme", ""));
        assert!(!named_like_tenant("public", ""));
        assert!(!named_like_tenant("hidra", ""));
        assert!(!named_like_tenant("hidra_spare_0a1b", ""));
        assert!(!named_like_tenant("pg_toast", ""));
        assert!(!named_like_tenant("information_schema", ""));
    }
}
