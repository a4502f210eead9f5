//! Row-level isolation with PostgreSQL row-level security (RLS).
//!
//! Tenants with [`Strategy::RowLevel`](crate::Strategy::RowLevel) keep their
//! rows in shared tables that carry a tenant column (default `tenant_id`).
//! Every Hidra checkout sets the `hidra.tenant_id` setting: to the tenant's id
//! for a row-level tenant (transaction-local in [`Hidra::begin`]), to the empty
//! string for everything else, so the policies below see a tenant only while
//! that tenant's work runs. With Hidra's own registry table, a row-level
//! tenant is bound through the registry's `_bind_row_level` function, which
//! refuses a record read before the tenant moved out or was deprovisioned
//! (no write then lands in the shared tables for a tenant no longer there).
//!
//! [`tenant_table_sql`] gives the migration that makes a table tenant-scoped:
//! the column, a default taken from the setting, `ENABLE` and `FORCE ROW LEVEL
//! SECURITY`, and one policy for reads (`USING`) and writes (`WITH CHECK`). The
//! policy fails closed: with no tenant bound no row is visible and every insert
//! is refused.
//!
//! RLS does not apply to superusers nor to roles with `BYPASSRLS`, and applies
//! to a table's owner only when `FORCE` is set. [`Hidra::audit_row_level`]
//! checks all of it; provisioning a row-level tenant refuses to proceed while
//! the audit has findings.
//!
//! Keys of tenant-scoped tables should include the tenant column (or be UUIDs):
//! rows of every tenant share the table, and a tenant moved in from its own
//! schema brings its own ids.
//!
//! This module is also the row-level strategy inside Hidra: a row-level
//! tenant is provisioned as a registry row (and its seed rows) in one
//! transaction once the audit has passed, dropped by deleting its rows
//! (children first, with the tenant bound), and moved between the row-level
//! tables and a schema of its own in one transaction.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;

use sqlx::Connection;

use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::moves::{
    Progress, Table, advance_sequences, check_copied, columns, end_copy, ensure_empty, lock,
};
use crate::servers::{Home, MoveProgress};
use crate::sql::{self, Ident, TableName};
use crate::strategy::schema::drop_tenant_schema;
use crate::tenant::{NewTenant, Placement, Strategy, Tenant, TenantId};

/// Advisory lock namespace of a row-level tenant (`"hidr"`, with
/// `hashtext(id)`): its transactions hold it shared from their `BEGIN`, a
/// move out of the shared tables or its deprovisioning exclusively.
pub(crate) const TENANT_LOCK: i32 = 0x6869_6472;

/// SQLSTATE the registry's `_bind_row_level` function raises for a tenant
/// that is no longer a row-level tenant.
pub(crate) const STALE_RECORD: &str = "HD001";

/// Waits for the row-level transactions of `id` under way, and holds back
/// those that begin, until `tx` ends (see `RegistryTable::bind_row_level_ddl`).
/// Taken before any table lock: a waiting transaction may hold its shared
/// lock and wait for a table.
pub(crate) async fn lock_tenant(tx: &mut sqlx::PgConnection, id: &TenantId) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(TENANT_LOCK)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(Error::db("waiting for the row-level tenant's transactions"))?;
    Ok(())
}

/// A row-level binding function, `function(tenant, local)`: binds
/// `hidra.tenant_id` for the session (or, `local`, the transaction) only if
/// `exists` (`SELECT FROM …` naming the tenant `$1`) finds it, else raises
/// [`STALE_RECORD`]. It first takes the tenant's shared advisory lock (to
/// the end of a transaction; for the binding statement alone in a
/// session), which a move or deprovisioning takes exclusively
/// ([`lock_tenant`]): it waits for the transactions under way, and
/// transactions begun and sessions bound meanwhile look after it commits.
/// Positional parameters, so that no column name can shadow them.
pub(crate) fn binding_function_ddl(function: &str, exists: &str) -> String {
    format!(
        r#"CREATE OR REPLACE FUNCTION {function}(TEXT, BOOLEAN) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({TENANT_LOCK}, hashtext($1));
    IF NOT EXISTS ({exists}) THEN
        RAISE EXCEPTION 'tenant % is not a row-level tenant here (moved or deprovisioned since its record was read)', $1
            USING ERRCODE = '{STALE_RECORD}';
    END IF;
    PERFORM set_config('{setting}', $1, $2);
END
$$;
"#,
        setting = sql::TENANT_SETTING,
    )
}

/// Records `id` as a row-level tenant of the registered server `tx` is on
/// (`hidra.row_level_tenants`, which its binding checks), in the
/// transaction that places its rows there.
pub(crate) async fn record_on_server(tx: &mut sqlx::PgConnection, id: &TenantId) -> Result<()> {
    sqlx::query(
        "INSERT INTO hidra.row_level_tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(id.as_str())
    .execute(&mut *tx)
    .await
    .map_err(Error::db("recording a row-level tenant on its server"))?;
    Ok(())
}

/// The default tenant column of row-level tables.
pub const DEFAULT_TENANT_COLUMN: &str = "tenant_id";

/// The name of the policy [`tenant_table_sql`] creates.
pub const POLICY_NAME: &str = "hidra_tenant_isolation";

/// The SQL (for a migration) that makes `table` tenant-scoped with the default
/// tenant column. The table must be empty or already have the column filled.
///
/// ```
/// let sql = hidra::rls::tenant_table_sql("public.customers")?;
/// assert!(sql.contains("FORCE ROW LEVEL SECURITY"));
/// # Ok::<(), hidra::Error>(())
/// ```
pub fn tenant_table_sql(table: &str) -> Result<String> {
    tenant_table_sql_with(table, DEFAULT_TENANT_COLUMN)
}

/// [`tenant_table_sql`] with another tenant column name.
pub fn tenant_table_sql_with(table: &str, column: &str) -> Result<String> {
    let t = TableName::parse(table)?.quoted();
    let c = Ident::new(column, "tenant column name")?.quoted();
    let bound = format!(
        "NULLIF(current_setting('{}', true), '')",
        sql::TENANT_SETTING
    );
    Ok(format!(
        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} TEXT;\n\
         ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT {bound};\n\
         ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL;\n\
         ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;\n\
         ALTER TABLE {t} FORCE ROW LEVEL SECURITY;\n\
         DROP POLICY IF EXISTS {POLICY_NAME} ON {t};\n\
         CREATE POLICY {POLICY_NAME} ON {t} USING ({c} = {bound}) WITH CHECK ({c} = {bound});\n"
    ))
}

/// One problem found by [`Hidra::audit_row_level`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Finding {
    /// The application connects as a superuser: RLS never applies to it.
    Superuser {
        /// The role.
        role: String,
    },
    /// The application's role has `BYPASSRLS`.
    BypassRls {
        /// The role.
        role: String,
    },
    /// A table with the tenant column does not enable row-level security.
    NotEnabled {
        /// The table.
        table: String,
    },
    /// A table with the tenant column does not force row-level security.
    NotForced {
        /// The table.
        table: String,
    },
    /// A table with the tenant column lacks Hidra's policy
    /// ([`POLICY_NAME`]).
    NoPolicy {
        /// The table.
        table: String,
    },
    /// A table has another permissive policy beside Hidra's. Permissive
    /// policies are OR-ed: any of them can let another tenant's rows through.
    ExtraPermissivePolicy {
        /// The table.
        table: String,
        /// The policy.
        policy: String,
    },
    /// The application's role owns a table without `FORCE`: as owner it
    /// bypasses the policies.
    OwnerWithoutForce {
        /// The table.
        table: String,
        /// The role.
        role: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Superuser { role } => write!(
                f,
                "role `{role}` is a superuser, which row-level security never restricts; connect as an ordinary role"
            ),
            Finding::BypassRls { role } => write!(
                f,
                "role `{role}` has BYPASSRLS; run `ALTER ROLE {role} NOBYPASSRLS`"
            ),
            Finding::NotEnabled { table } => write!(
                f,
                "table {table} has the tenant column but row-level security is not enabled; run `ALTER TABLE {table} ENABLE ROW LEVEL SECURITY`"
            ),
            Finding::NotForced { table } => write!(
                f,
                "table {table} does not force row-level security; run `ALTER TABLE {table} FORCE ROW LEVEL SECURITY`"
            ),
            Finding::NoPolicy { table } => write!(
                f,
                "table {table} has the tenant column but not the policy `{POLICY_NAME}`; apply `hidra::rls::tenant_table_sql` to it"
            ),
            Finding::ExtraPermissivePolicy { table, policy } => write!(
                f,
                "table {table} has the permissive policy `{policy}` beside `{POLICY_NAME}`; permissive policies are OR-ed, so it can widen what a tenant sees: drop it or recreate it `AS RESTRICTIVE`"
            ),
            Finding::OwnerWithoutForce { table, role } => write!(
                f,
                "role `{role}` owns table {table}, which does not force row-level security, so the owner bypasses it"
            ),
        }
    }
}

/// What [`Hidra::audit_row_level`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    /// The role the application connects as.
    pub role: String,
    /// Tables with the tenant column that were checked.
    pub tables: Vec<String>,
    /// Every problem found; empty when row-level isolation holds.
    pub findings: Vec<Finding>,
}

impl AuditReport {
    /// No findings.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(
                f,
                "row-level security: ok ({} tables, role `{}`)",
                self.tables.len(),
                self.role
            );
        }
        write!(f, "row-level security: {} findings", self.findings.len())?;
        for finding in &self.findings {
            write!(f, "\n  - {finding}")?;
        }
        Ok(())
    }
}

impl Hidra {
    /// Checks that row-level isolation holds for the role Hidra connects as and
    /// for every table with the tenant column in the row-level schema and the
    /// shared schemas. Lists every finding.
    pub async fn audit_row_level(&self) -> Result<AuditReport> {
        let mut conn = self.acquire_shared().await?;
        self.audit_row_level_on(&mut conn).await
    }

    /// [`audit_row_level`](Self::audit_row_level) on `conn`'s server.
    pub(crate) async fn audit_row_level_on(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<AuditReport> {
        let conn = &mut *conn;
        let (role, superuser, bypass): (String, bool, bool) = sqlx::query_as(
            "SELECT rolname::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("reading the application role"))?;
        let mut report = AuditReport {
            role: role.clone(),
            ..AuditReport::default()
        };
        if superuser {
            report
                .findings
                .push(Finding::Superuser { role: role.clone() });
        }
        if bypass {
            report
                .findings
                .push(Finding::BypassRls { role: role.clone() });
        }
        let mut schemas: Vec<String> = vec![self.inner.row_level.schema.to_string()];
        schemas.extend(self.inner.schema.shared.iter().map(|s| s.to_string()));
        let tables: Vec<(String, bool, bool, String, bool, Vec<String>)> = sqlx::query_as(
            "SELECT c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity, \
                    pg_get_userbyid(c.relowner)::text, \
                    EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = $3), \
                    ARRAY(SELECT p.polname::text FROM pg_policy p \
                          WHERE p.polrelid = c.oid AND p.polpermissive AND p.polname <> $3 \
                          ORDER BY 1) \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped \
             WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1) \
               AND NOT starts_with(c.relname, 'hidra_') \
             ORDER BY 1",
        )
        .bind(&schemas)
        .bind(self.inner.row_level.column.as_str())
        .bind(POLICY_NAME)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("reading row-level tables"))?;
        for (table, enabled, forced, owner, has_policy, extra) in tables {
            if !enabled {
                report.findings.push(Finding::NotEnabled {
                    table: table.clone(),
                });
            }
            if !forced {
                report.findings.push(Finding::NotForced {
                    table: table.clone(),
                });
                if owner == role {
                    report.findings.push(Finding::OwnerWithoutForce {
                        table: table.clone(),
                        role: role.clone(),
                    });
                }
            }
            if !has_policy {
                report.findings.push(Finding::NoPolicy {
                    table: table.clone(),
                });
            }
            for policy in extra {
                report.findings.push(Finding::ExtraPermissivePolicy {
                    table: table.clone(),
                    policy,
                });
            }
            report.tables.push(table);
        }
        Ok(report)
    }

    /// Fails closed, once per process, when row-level isolation does not hold.
    /// [`require_row_level_audit`](Self::require_row_level_audit) on
    /// `home`'s server: each server's tables and role are audited (once per
    /// process) before a row-level tenant goes there.
    pub(crate) async fn require_row_level_audit_at(
        &self,
        home: &crate::servers::Home,
    ) -> Result<()> {
        let audited = match home {
            crate::servers::Home::Control => &self.inner.row_level.audited,
            crate::servers::Home::Server(server) => &server.row_level_audited,
        };
        audited
            .get_or_try_init(|| async {
                let mut conn = self.acquire_shared_at(home).await?;
                let report = self.audit_row_level_on(&mut conn).await?;
                if report.is_clean() {
                    Ok(())
                } else {
                    Err(Error::RowLevelInsecure(report.findings))
                }
            })
            .await
            .map(|_| ())
    }

    /// Fails with [`Error::RowLevelInsecure`] unless the control server's
    /// audit is clean (audited once per process).
    pub(crate) async fn require_row_level_audit(&self) -> Result<()> {
        self.require_row_level_audit_at(&crate::servers::Home::Control)
            .await
    }

    /// The tables holding row-level tenants' rows, parents before children
    /// (the order to insert in; delete in reverse): bare name, quoted
    /// qualified name, columns.
    pub(crate) async fn row_level_tables(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<Vec<(String, String, Vec<String>)>> {
        let rl = &self.inner.row_level;
        tables_in_order(conn, rl.schema.as_str(), Some(rl.column.as_str())).await
    }
}

/// Where row-level tenants' rows live, and whether the audit passed.
#[derive(Debug)]
pub(crate) struct RowLevelConfig {
    pub(crate) schema: Ident,
    pub(crate) column: Ident,
    /// Set once the row-level audit passed in this process.
    pub(crate) audited: tokio::sync::OnceCell<()>,
}

/// The row-level strategy: provisioning (a registry row and its seed rows),
/// dropping (deleting its rows), and moves between a schema and the
/// row-level tables (one transaction each).
impl Hidra {
    /// Where row-level tenants' rows live.
    pub(crate) fn row_level_placement(&self) -> Placement {
        Placement {
            strategy: Strategy::RowLevel,
            schema: self.inner.row_level.schema.to_string(),
            database: None,
            server: None,
        }
    }

    /// A row-level tenant is a registry row (and its seed rows), in one
    /// transaction, once the row-level audit has passed.
    pub(crate) async fn provision_row_level(&self, mut new: NewTenant) -> Result<Tenant> {
        self.require_row_level_audit().await?;
        let setup = new.setup.take();
        let draft = self.draft(new, self.row_level_placement());
        let mut conn = self.acquire_shared().await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the provisioning transaction"))?;
        let tenant = self.inner.registry.store.insert(&mut tx, &draft).await?;
        let binding = self.binding(&tenant)?;
        let tenant = self
            .activate_and_commit(tx, &tenant, &binding, setup.as_deref())
            .await?;
        tracing::info!(tenant = %tenant.id, strategy = "row_level", "provisioned tenant");
        Ok(tenant)
    }

    /// Deletes every row of a row-level tenant, children first, with the tenant
    /// bound so that the policies let exactly its rows through.
    pub(crate) async fn delete_row_level_rows(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
    ) -> Result<()> {
        lock_tenant(tx, &tenant.id).await?;
        if tenant.placement.server.is_some() {
            // Its binding on that server is refused from now on.
            sqlx::query("DELETE FROM hidra.row_level_tenants WHERE tenant_id = $1")
                .bind(tenant.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("forgetting a row-level tenant of its server"))?;
        }
        bind_row_level(tx, tenant.id.as_str()).await?;
        let tables = self.row_level_tables(tx).await?;
        for (_, table, _) in tables.iter().rev() {
            let mut delete = sql::Statement::new();
            delete
                .sql("DELETE FROM ")
                .trusted(table)
                .sql(" WHERE ")
                .ident(&self.inner.row_level.column)
                .sql(" = $1");
            sqlx::query(delete.into_sql())
                .bind(tenant.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("deleting a row-level tenant's rows"))?;
        }
        sqlx::query(sql::BIND_TENANT_LOCAL)
            .bind("")
            .execute(&mut *tx)
            .await
            .map_err(Error::db("unbinding the row-level tenant"))?;
        Ok(())
    }

    /// Moves a row-level tenant into a schema of its own, in `tx`: its rows
    /// are copied into the new schema and deleted from the shared tables.
    pub(crate) async fn row_level_to_schema(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
    ) -> Result<Tenant> {
        let inner = &self.inner;
        lock_tenant(tx, &tenant.id).await?;
        let tables = self.row_level_tables(tx).await?;
        lock(tx, tables.iter().map(|t| t.1.clone())).await?;
        let schema = inner.schema.naming.schema_for(&tenant.id);
        let placement = super::schema::placement(&schema);
        let search_path = sql::search_path_value(&schema, &inner.schema.shared);
        self.build_schema_for_move(tx, tenant, &schema, &search_path)
            .await?;
        bind_row_level(tx, tenant.id.as_str()).await?;
        let column = inner.row_level.column.as_str();
        for (name, source, cols) in &tables {
            let target = sql::qualified(&schema, name);
            let target_cols = columns(tx, schema.as_str(), name).await?;
            if target_cols.is_empty() {
                ensure_empty(tx, source, &tenant.id, column).await?;
                continue;
            }
            let common: Vec<&String> = cols
                .iter()
                .filter(|c| c.as_str() != column && target_cols.contains(*c))
                .collect();
            let mut insert = sql::Statement::new();
            insert
                .sql("INSERT INTO ")
                .trusted(&target)
                .sql(" (")
                .names(&common)
                .sql(") OVERRIDING SYSTEM VALUE SELECT ")
                .names(&common)
                .sql(" FROM ")
                .trusted(source)
                .sql(" WHERE ")
                .name(column)
                .sql(" = $1");
            sqlx::query(insert.into_sql())
                .bind(tenant.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("copying a tenant's rows into its schema"))?;
            advance_sequences(tx, &target, schema.as_str(), name).await?;
        }
        self.delete_row_level_rows(tx, tenant).await?;
        unbind_row_level(tx).await?;
        self.inner
            .registry
            .store
            .update_placement(tx, &tenant.id, &placement)
            .await?
            .ok_or_else(|| Error::NotFound(tenant.id.clone()))
    }

    /// Moves a schema-per-tenant tenant into the row-level tables, in `tx`:
    /// its rows are copied in with its id and its schema is dropped.
    pub(crate) async fn schema_to_row_level(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
    ) -> Result<Tenant> {
        let inner = &self.inner;
        let schema = tenant.placement.schema_ident()?;
        let tables = self.row_level_tables(tx).await?;
        let own: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> '_hidra_migrations'",
        )
        .bind(schema.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::db("listing the tenant's tables"))?;
        lock(tx, own.iter().map(|t| sql::qualified(&schema, t))).await?;
        let covered: HashSet<&str> = tables.iter().map(|t| t.0.as_str()).collect();
        for table in own.iter().filter(|t| !covered.contains(t.as_str())) {
            ensure_empty(tx, &sql::qualified(&schema, table), &tenant.id, "").await?;
        }
        bind_row_level(tx, tenant.id.as_str()).await?;
        let column = inner.row_level.column.as_str();
        for (name, target, cols) in &tables {
            if !own.contains(name) {
                continue;
            }
            let source = sql::qualified(&schema, name);
            let source_cols = columns(tx, schema.as_str(), name).await?;
            let common: Vec<&String> = cols
                .iter()
                .filter(|c| c.as_str() != column && source_cols.contains(*c))
                .collect();
            let mut insert = sql::Statement::new();
            insert
                .sql("INSERT INTO ")
                .trusted(target)
                .sql(" (")
                .names(&common)
                .sql(", ")
                .name(column)
                .sql(") OVERRIDING SYSTEM VALUE SELECT ")
                .names(&common)
                .sql(", $1 FROM ")
                .trusted(&source);
            sqlx::query(insert.into_sql())
                .bind(tenant.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(Error::db(
                    "copying a tenant's rows into the row-level tables",
                ))?;
            advance_sequences(tx, target, inner.row_level.schema.as_str(), name).await?;
        }
        unbind_row_level(tx).await?;
        drop_tenant_schema(tx, &schema).await?;
        let placement = self.row_level_placement();
        self.inner
            .registry
            .store
            .update_placement(tx, &tenant.id, &placement)
            .await?
            .ok_or_else(|| Error::NotFound(tenant.id.clone()))
    }
}

/// A row-level tenant on a registered server and its moves between
/// servers (dispatched by `strategy`).
impl Hidra {
    /// Records the row-level tenants the registry places on `server` in its
    /// `hidra.row_level_tenants`, just created there: tenants provisioned
    /// before their server's binding checked that table.
    pub(crate) async fn record_row_level_tenants(
        &self,
        server: &crate::ServerName,
        conn: &mut sqlx::PgConnection,
    ) -> Result<()> {
        let mut control = self.acquire_shared().await?;
        let ids: Vec<String> = crate::store::list_all(&self.inner.registry.store, &mut control)
            .await?
            .into_iter()
            .filter(|t| {
                t.placement.strategy == Strategy::RowLevel
                    && t.placement.server.as_deref() == Some(server.as_str())
                    && t.status != crate::TenantStatus::Deleting
            })
            .map(|t| t.id.to_string())
            .collect();
        drop(control);
        if !ids.is_empty() {
            sqlx::query(
                "INSERT INTO hidra.row_level_tenants (tenant_id) SELECT unnest($1::text[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&ids)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("recording a server's row-level tenants"))?;
        }
        Ok(())
    }

    /// Freezes a row-level tenant on `source` for a move between servers:
    /// its transactions first (they hold its shared lock and may wait for a
    /// table), then the row-level tables in share mode; leaves `source`
    /// bound to it, so only its rows are read.
    pub(crate) async fn freeze_row_level(
        &self,
        source: &mut sqlx::PgConnection,
        id: &TenantId,
    ) -> Result<Vec<Table>> {
        lock_tenant(source, id).await?;
        let tables = self.row_level_tables(source).await?;
        lock(source, tables.iter().map(|t| t.1.clone())).await?;
        bind_in_tx(source, id.as_str()).await?;
        Ok(tables)
    }

    /// Copies a row-level tenant's rows (`tables`, read on `source` with
    /// the tenant bound) into the same row-level tables on `home`, in one
    /// transaction there that also records it as a row-level tenant of that
    /// server; returns the rows copied. The tables must exist there (the
    /// application creates its row-level tables on every server); a row
    /// whose key is taken there (a key without the tenant column, from
    /// another server's sequence) fails the copy, and the move with it.
    pub(crate) async fn copy_row_level_to(
        &self,
        home: &Home,
        tenant: &Tenant,
        source: &mut sqlx::PgConnection,
        tables: &[Table],
        progress: &Progress<'_>,
    ) -> Result<u64> {
        let mut target = self.begin_shared_copy(home).await?;
        let copied = async {
            bind_in_tx(&mut target, tenant.id.as_str()).await?;
            let there = self.row_level_tables(&mut target).await?;
            let column = self.inner.row_level.column.as_str();
            let schema = self.inner.row_level.schema.as_str();
            let mut rows = 0;
            for (done, (name, from, cols)) in tables.iter().enumerate() {
                let Some((_, to, to_cols)) = there.iter().find(|t| &t.0 == name) else {
                    ensure_empty(source, from, &tenant.id, column).await?;
                    continue;
                };
                // Row-level security refuses `COPY FROM`: through a
                // temporary table, then an insert the policies check.
                let n = copy_rows_in(source, from, &mut target, to, cols, to_cols).await?;
                check_copied(source, from, n).await?;
                advance_sequences(&mut target, to, schema, name).await?;
                rows += n;
                progress(&MoveProgress {
                    table: name.clone(),
                    rows: n,
                    done: done + 1,
                    total: tables.len(),
                });
            }
            if matches!(home, Home::Server(_)) {
                record_on_server(&mut target, &tenant.id).await?;
            }
            Ok::<_, Error>(rows)
        }
        .await;
        end_copy(&mut target, copied).await
    }
}

/// Binds the row-level tenant `id` for the rest of the transaction `tx`,
/// without a check: for Hidra's own work on its rows (a move's copy).
pub(crate) async fn bind_in_tx(tx: &mut sqlx::PgConnection, id: &str) -> Result<()> {
    bind_row_level(tx, id).await
}

/// Copies the rows `source` sees of `from` into the row-level table `to` on
/// `target` (both in transactions with the tenant bound), over the columns
/// both have, keeping their ids: binary `COPY` into a temporary table
/// (row-level security refuses `COPY FROM` into `to`), then an insert that
/// the policies check. Returns the rows inserted.
pub(crate) async fn copy_rows_in(
    source: &mut sqlx::PgConnection,
    from: &str,
    target: &mut sqlx::PgConnection,
    to: &str,
    cols: &[String],
    to_cols: &[String],
) -> Result<u64> {
    let common: Vec<&String> = cols.iter().filter(|c| to_cols.contains(c)).collect();
    let mut stage = sql::Statement::new();
    stage
        .sql("CREATE TEMPORARY TABLE hidra_moving_rows (LIKE ")
        .trusted(to)
        .sql(") ON COMMIT DROP");
    sqlx::raw_sql(stage.into_sql())
        .execute(&mut *target)
        .await
        .map_err(Error::db("staging the moved rows"))?;
    crate::moves::copy_rows(source, from, target, "hidra_moving_rows", cols, to_cols).await?;
    let mut insert = sql::Statement::new();
    insert
        .sql("INSERT INTO ")
        .trusted(to)
        .sql(" (")
        .names(&common)
        .sql(") OVERRIDING SYSTEM VALUE SELECT ")
        .names(&common)
        .sql(" FROM hidra_moving_rows");
    let inserted = sqlx::query(insert.into_sql())
        .execute(&mut *target)
        .await
        .map_err(Error::db("inserting the moved rows"))?
        .rows_affected();
    sqlx::raw_sql("DROP TABLE hidra_moving_rows")
        .execute(&mut *target)
        .await
        .map_err(Error::db("staging the moved rows"))?;
    Ok(inserted)
}

/// Binds the row-level tenant `id` for the rest of the transaction (`""`:
/// none).
async fn bind_row_level(tx: &mut sqlx::PgConnection, id: &str) -> Result<()> {
    sqlx::query(sql::BIND_TENANT_LOCAL)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("binding the row-level tenant"))?;
    Ok(())
}

async fn unbind_row_level(tx: &mut sqlx::PgConnection) -> Result<()> {
    bind_row_level(tx, "").await
}

/// The tables of `schema` (only the row-level ones — RLS on and the tenant
/// column `tenant_column` — when that is given), parents before children by
/// their foreign keys: bare name, quoted qualified name, columns in order.
/// Hidra's own `hidra_*` tables and migration history are left out.
pub(crate) async fn tables_in_order(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    tenant_column: Option<&str>,
) -> Result<Vec<(String, String, Vec<String>)>> {
    let rows: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, format('%I.%I', n.nspname, c.relname), \
                array_agg(a2.attname::text ORDER BY a2.attnum) \
         FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a2 ON a2.attrelid = c.oid AND a2.attnum > 0 AND NOT a2.attisdropped \
         WHERE c.relkind IN ('r', 'p') AND n.nspname = $1 \
           AND NOT starts_with(c.relname, 'hidra_') AND c.relname <> '_hidra_migrations' \
           AND ($2::text IS NULL OR (c.relrowsecurity AND EXISTS ( \
                SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped))) \
         GROUP BY c.relname, c.oid, n.nspname",
    )
    .bind(schema)
    .bind(tenant_column)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::db("reading a schema's tables"))?;
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT ch.relname::text, pa.relname::text FROM pg_constraint k \
         JOIN pg_class ch ON ch.oid = k.conrelid JOIN pg_class pa ON pa.oid = k.confrelid \
         JOIN pg_namespace n ON n.oid = ch.relnamespace \
         WHERE k.contype = 'f' AND n.nspname = $1 AND ch.oid <> pa.oid",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::db("reading foreign keys"))?;
    // Parents first: repeatedly place the tables whose parents (within the
    // set) are all placed.
    let names: HashSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    let mut placed = HashSet::new();
    let mut ordered = Vec::new();
    let mut remaining = rows;
    while !remaining.is_empty() {
        let (ready, rest): (Vec<_>, Vec<_>) = remaining.into_iter().partition(|(name, ..)| {
            edges
                .iter()
                .filter(|(child, _)| child == name)
                .all(|(_, parent)| placed.contains(parent) || !names.contains(parent))
        });
        if ready.is_empty() {
            // A cycle of foreign keys: no order satisfies it; keep the rest.
            ordered.extend(rest);
            break;
        }
        for (name, qualified, cols) in ready {
            placed.insert(name.clone());
            ordered.push((name, qualified, cols));
        }
        remaining = rest;
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sql_is_quoted_and_fails_closed() {
        let sql = tenant_table_sql("public.customers").unwrap();
        assert!(sql.contains("ALTER TABLE \"public\".\"customers\" ENABLE ROW LEVEL SECURITY"));
        assert!(sql.contains("FORCE ROW LEVEL SECURITY"));
        assert!(sql.contains(
            "USING (\"tenant_id\" = NULLIF(current_setting('hidra.tenant_id', true), ''))"
        ));
        assert!(sql.contains("WITH CHECK"));
        assert!(tenant_table_sql("public.cust;omers").is_err());
        assert!(tenant_table_sql_with("t", "Tenant").is_err());
    }
}
