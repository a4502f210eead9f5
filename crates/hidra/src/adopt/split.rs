//! [`Hidra::adopt_split`]: shared tables with a tenant column become one
//! schema per tenant, one transaction per tenant, resumable.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Connection;

use super::some_of;
use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::moves::{advance_sequences, columns, lock};
use crate::sql::{self, Ident, Statement, TableName};
use crate::tenant::{NewTenant, Tenant, TenantId};

/// The metadata key recording where an adopted tenant came from, so that a
/// rerun recognizes the tenants it registered before.
const ADOPTED_FROM: &str = "adopted_from";

type ProgressFn = Arc<dyn Fn(&SplitProgress) + Send + Sync>;

/// What [`Hidra::adopt_split`] should do: the tenant column, the tables to
/// split by it, how to name tenants and where their users' emails are.
///
/// ```no_run
/// use hidra::adopt::AdoptSplit;
///
/// # async fn run(hidra: hidra::Hidra) -> hidra::Result<()> {
/// let report = hidra
///     .adopt_split(
///         AdoptSplit::new("company_id", ["customers", "orders", "order_items", "users"])
///             .id_prefix("company-") // company_id 7 becomes tenant `company-7`
///             .logins("users", "email"),
///     )
///     .await?;
/// print!("{report}");
/// assert!(report.is_verified());
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct AdoptSplit {
    column: String,
    tables: Vec<String>,
    from: String,
    id_prefix: String,
    logins: Option<(String, String)>,
    login_table: String,
    progress: Option<ProgressFn>,
}

impl fmt::Debug for AdoptSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdoptSplit")
            .field("column", &self.column)
            .field("tables", &self.tables)
            .field("from", &self.from)
            .field("id_prefix", &self.id_prefix)
            .field("logins", &self.logins)
            .field("login_table", &self.login_table)
            .finish_non_exhaustive()
    }
}

impl AdoptSplit {
    /// Split `tables` (of schema `public`, each with the tenant `column`)
    /// into one tenant per distinct value of `column`.
    pub fn new<I, S>(column: impl Into<String>, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AdoptSplit {
            column: column.into(),
            tables: tables.into_iter().map(Into::into).collect(),
            from: "public".into(),
            id_prefix: String::new(),
            logins: None,
            login_table: "public.hidra_logins".into(),
            progress: None,
        }
    }

    /// The schema of the shared tables (default `public`).
    pub fn from_schema(mut self, schema: impl Into<String>) -> Self {
        self.from = schema.into();
        self
    }

    /// What goes before each value to make its tenant id (default none: the
    /// values must be tenant ids themselves). `company-` turns `7` into
    /// `company-7`.
    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = prefix.into();
        self
    }

    /// Fill the login lookup (email → tenant) from `users_table` (one of the
    /// split tables) and its `email_column`, so that its users log in with
    /// their email alone (see `auth::Accounts`). Emails are stored trimmed
    /// and lowercased; the users' `id`, when an integer, becomes the login
    /// row's user id.
    pub fn logins(
        mut self,
        users_table: impl Into<String>,
        email_column: impl Into<String>,
    ) -> Self {
        self.logins = Some((users_table.into(), email_column.into()));
        self
    }

    /// The login lookup table (default `public.hidra_logins`, as
    /// `auth::LoginTable::default()`).
    pub fn login_table(mut self, table: impl Into<String>) -> Self {
        self.login_table = table.into();
        self
    }

    /// Called after each tenant is committed.
    pub fn on_progress(mut self, f: impl Fn(&SplitProgress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }
}

/// Progress of a split, passed to [`AdoptSplit::on_progress`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SplitProgress {
    /// Tenants to create in this run.
    pub total: usize,
    /// Tenants created so far.
    pub done: usize,
    /// The tenant just created.
    pub tenant: TenantId,
}

/// One table's rows for one tenant, before (in the shared table) and after
/// (in the tenant's schema).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableRows {
    /// The table.
    pub table: String,
    /// The tenant's rows in the shared table.
    pub before: i64,
    /// The rows in the tenant's table.
    pub after: i64,
}

/// One tenant of a split.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SplitTenant {
    /// The tenant.
    pub id: TenantId,
    /// Its value of the tenant column.
    pub value: String,
    /// Its rows, table by table.
    pub tables: Vec<TableRows>,
    /// Login rows it has.
    pub logins: i64,
    /// Created by an earlier (interrupted) run; verified again by this one.
    pub earlier: bool,
}

impl SplitTenant {
    /// Whether every table holds as many rows as the shared tables have of it.
    pub fn is_verified(&self) -> bool {
        self.tables.iter().all(|t| t.before == t.after)
    }
}

/// What [`Hidra::adopt_split`] did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SplitReport {
    /// The schema of the shared tables.
    pub from: String,
    /// The tenant column.
    pub column: String,
    /// Every tenant of the split (by value), created now or earlier.
    pub tenants: Vec<SplitTenant>,
    /// How long the run took.
    pub elapsed: Duration,
}

impl SplitReport {
    /// Whether every tenant holds exactly its rows of the shared tables.
    pub fn is_verified(&self) -> bool {
        self.tenants.iter().all(SplitTenant::is_verified)
    }

    /// Tenants created by this run.
    pub fn created(&self) -> usize {
        self.tenants.iter().filter(|t| !t.earlier).count()
    }
}

impl fmt::Display for SplitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = |pick: fn(&TableRows) -> i64| -> i64 {
            self.tenants
                .iter()
                .flat_map(|t| t.tables.iter().map(pick))
                .sum()
        };
        writeln!(
            f,
            "split {}.* by {}: {} tenants ({} created now, {} earlier), {} rows before, {} after ({:.2?})",
            self.from,
            self.column,
            self.tenants.len(),
            self.created(),
            self.tenants.len() - self.created(),
            rows(|t| t.before),
            rows(|t| t.after),
            self.elapsed,
        )?;
        for t in &self.tenants {
            let check = if t.is_verified() { "ok" } else { "MISMATCH" };
            let tables: Vec<String> = t
                .tables
                .iter()
                .map(|r| format!("{} {}→{}", r.table, r.before, r.after))
                .collect();
            writeln!(
                f,
                "  {} ({} = {}): {check}; {}; logins {}{}",
                t.id,
                self.column,
                t.value,
                tables.join(", "),
                t.logins,
                if t.earlier { " (earlier run)" } else { "" }
            )?;
        }
        Ok(())
    }
}

/// One shared table to split.
#[derive(Debug)]
struct Source {
    name: Ident,
    /// Quoted, qualified.
    qualified: String,
    columns: Vec<String>,
}

/// What the inspection found.
#[derive(Debug)]
struct SplitPlan {
    column: Ident,
    sources: Vec<Source>,
    /// `CAST($1::text AS <type of the tenant column>)`, per source.
    value_casts: Vec<Statement>,
    /// Values with their tenant ids, in order; `Some` for tenants created earlier.
    values: Vec<(String, TenantId, Option<Tenant>)>,
    /// The users table (index into `sources`), email column, whether its
    /// `id` is an integer.
    logins: Option<(usize, Ident, bool)>,
    login_table: TableName,
}

impl Hidra {
    /// Splits shared tables with a tenant column into one tenant per
    /// distinct value, each in its own schema built by the tenant
    /// migrations; see [`crate::adopt`]. One transaction per tenant; run it
    /// again after an interruption to finish. The shared tables are left as
    /// they were.
    ///
    /// Refuses with [`Error::AdoptRefused`] (listing every problem) before
    /// anything changes.
    pub async fn adopt_split(&self, split: AdoptSplit) -> Result<SplitReport> {
        let started = Instant::now();
        let from = Ident::new(split.from.clone(), "schema to split")?;
        let column = Ident::new(split.column.clone(), "tenant column")?;
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        let plan = self.plan_split(&mut conn, &from, &column, &split).await?;
        let pending = plan.values.iter().filter(|v| v.2.is_none()).count();
        let mut done = 0;
        let mut tenants = Vec::with_capacity(plan.values.len());
        for (value, id, earlier) in &plan.values {
            let (tenant, created) = match earlier {
                Some(t) => (t.clone(), false),
                None => (
                    self.split_one(&mut conn, &plan, &from, &column, value, id)
                        .await?,
                    true,
                ),
            };
            let schema = tenant.placement.schema_ident()?;
            let (tables, logins) = counts(&mut conn, &plan, &schema, value, id).await?;
            tenants.push(SplitTenant {
                id: id.clone(),
                value: value.clone(),
                tables,
                logins,
                earlier: !created,
            });
            if created {
                done += 1;
                if let Some(progress) = &split.progress {
                    progress(&SplitProgress {
                        total: pending,
                        done,
                        tenant: id.clone(),
                    });
                }
            }
        }
        let report = SplitReport {
            from: from.to_string(),
            column: column.to_string(),
            tenants,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            from = %from,
            column = %column,
            tenants = report.tenants.len(),
            created = report.created(),
            verified = report.is_verified(),
            elapsed_ms = report.elapsed.as_millis() as u64,
            "split shared tables into tenants"
        );
        Ok(report)
    }

    /// Inspects the shared tables, values, tenants and emails, and the
    /// tenant migrations' tables; lists every problem.
    async fn plan_split(
        &self,
        conn: &mut sqlx::PgConnection,
        from: &Ident,
        column: &Ident,
        split: &AdoptSplit,
    ) -> Result<SplitPlan> {
        let mut problems = Vec::new();
        let mut sources = Vec::new();
        let mut value_casts = Vec::new();
        if split.tables.is_empty() {
            problems.push("no tables named: name the tables that carry the tenant column".into());
        }
        for table in &split.tables {
            let name = Ident::new(table.clone(), "table name")?;
            let columns = columns(conn, from.as_str(), name.as_str()).await?;
            if columns.is_empty() {
                problems.push(format!("there is no table `{from}.{name}`: check the name"));
                continue;
            }
            let qualified = sql::qualified(from, name.as_str());
            let column_type: Option<String> = sqlx::query_scalar(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped",
            )
            .bind(&qualified)
            .bind(column.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db("reading the tenant column's type"))?;
            let Some(column_type) = column_type else {
                problems.push(format!(
                    "table `{from}.{name}` has no column `{column}`: split only tables that carry it"
                ));
                continue;
            };
            let nulls: i64 = sqlx::query_scalar(
                sql::template("SELECT count(*) FROM {t} WHERE {column} IS NULL")
                    .trusted("t", &qualified)
                    .ident("column", column)
                    .finish(),
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("counting rows without a tenant"))?;
            if nulls > 0 {
                problems.push(format!(
                    "{nulls} rows of `{from}.{name}` have no `{column}`: assign them to a tenant or delete them first"
                ));
            }
            value_casts.push(sql::text_param_as(1, &column_type));
            sources.push(Source {
                name,
                qualified,
                columns,
            });
        }
        let login_table = TableName::parse(&split.login_table)?;
        let mut logins = None;
        if let Some((users, email)) = &split.logins {
            let email = Ident::new(email.clone(), "email column")?;
            match sources.iter().position(|s| s.name.as_str() == users) {
                None => problems.push(format!(
                    "the users table `{users}` is not one of the tables split: add it to the tables"
                )),
                Some(i) if !sources[i].columns.iter().any(|c| c == email.as_str()) => {
                    problems.push(format!("table `{users}` has no column `{email}`"))
                }
                Some(i) => {
                    let integer_id: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) \
                         AND attname = 'id' AND atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype))",
                    )
                    .bind(&sources[i].qualified)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(Error::db("reading the users table"))?;
                    logins = Some((i, email, integer_id));
                }
            }
        }

        // The values, tenant ids and earlier runs.
        let mut values = Vec::new();
        if problems.is_empty() {
            let mut union = Statement::new();
            for (i, s) in sources.iter().enumerate() {
                if i > 0 {
                    union.sql(" UNION ");
                }
                union
                    .sql("SELECT ")
                    .ident(column)
                    .sql("::text AS v FROM ")
                    .trusted(&s.qualified);
            }
            let mut raw: Vec<String> = sqlx::query_scalar(union.into_sql())
                .fetch_all(&mut *conn)
                .await
                .map_err(Error::db("reading the tenant column's values"))?;
            raw.sort_by(|a, b| (a.parse::<i64>().ok(), a).cmp(&(b.parse::<i64>().ok(), b)));
            let mut invalid = Vec::new();
            let mut taken = Vec::new();
            for value in raw {
                let Ok(id) = TenantId::new(format!("{}{value}", split.id_prefix)) else {
                    invalid.push(format!("{value:?}"));
                    continue;
                };
                let earlier = match self.inner.registry.store.get(conn, &id).await? {
                    None => None,
                    Some(t) if adopted_from(&t, from, column, &value) => Some(t),
                    Some(_) => {
                        taken.push(id.to_string());
                        continue;
                    }
                };
                values.push((value, id, earlier));
            }
            if !invalid.is_empty() {
                problems.push(format!(
                    "values of `{column}` that do not make valid tenant ids ({}): give an id prefix that does (`company-`), ids are lowercase letters, digits, `-` and `_`, starting with a letter",
                    some_of(&invalid, 5)
                ));
            }
            if !taken.is_empty() {
                problems.push(format!(
                    "tenants already registered, not by a split of `{from}` by `{column}`: {}; give another id prefix",
                    some_of(&taken, 5)
                ));
            }
            if values.is_empty() && invalid.is_empty() && taken.is_empty() {
                problems.push(format!(
                    "the tables hold no rows: nothing to split by `{column}`"
                ));
            }
        }
        if let (Some((i, email, _)), true) = (&logins, problems.is_empty()) {
            self.check_emails(
                conn,
                &sources[*i],
                column,
                email,
                &login_table,
                &split.id_prefix,
                &mut problems,
            )
            .await?;
        }
        let plan = SplitPlan {
            column: column.clone(),
            sources,
            value_casts,
            values,
            logins,
            login_table,
        };
        if problems.is_empty() {
            self.check_tenant_tables(conn, &plan, column, &mut problems)
                .await?;
        }
        if problems.is_empty() {
            check_cross_references(conn, &plan, from, column, &mut problems).await?;
        }
        if !problems.is_empty() {
            return Err(Error::AdoptRefused {
                what: format!("`{from}` split by `{column}`"),
                problems,
            });
        }
        Ok(plan)
    }

    /// Every email must be unique across the users, well formed, and not
    /// taken by another tenant in the login table.
    #[allow(clippy::too_many_arguments)]
    async fn check_emails(
        &self,
        conn: &mut sqlx::PgConnection,
        users: &Source,
        column: &Ident,
        email: &Ident,
        login_table: &TableName,
        prefix: &str,
        problems: &mut Vec<String>,
    ) -> Result<()> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(login_table.quoted())
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("looking for the login table"))?;
        if !exists {
            return Err(Error::TableMissing {
                table: login_table.to_string(),
                create: "Accounts::install",
            });
        }
        let mut normalized = Statement::new();
        normalized.sql("lower(btrim(u.").ident(email).sql("))");
        let users_and_emails = |text| {
            sql::template(text)
                .append("normalized", &normalized)
                .trusted("t", &users.qualified)
                .ident("e", email)
                .finish()
        };
        // Each check binds the id prefix as `$1`, used or not.
        let checks = [
            (
                users_and_emails(
                    "SELECT {normalized} FROM {t} u WHERE u.{e} IS NOT NULL AND $1::text IS NOT NULL \
                     GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 6",
                ),
                "looking for duplicate emails",
                "emails used by more than one user",
                "an email logs in to one tenant, so make them unique first",
            ),
            (
                users_and_emails(
                    "SELECT {normalized} FROM {t} u WHERE u.{e} IS NOT NULL AND $1::text IS NOT NULL \
                     AND {normalized} NOT LIKE '%_@_%' ORDER BY 1 LIMIT 6",
                ),
                "looking for malformed emails",
                "emails that are not addresses",
                "correct them first",
            ),
            (
                sql::template(
                    "SELECT l.email FROM {t} u JOIN {l} l ON l.email = {normalized} \
                     WHERE l.tenant_id <> ($1 || u.{c}::text) ORDER BY 1 LIMIT 6",
                )
                .trusted("t", &users.qualified)
                .table("l", login_table)
                .append("normalized", &normalized)
                .ident("c", column)
                .finish(),
                "looking for emails taken by other tenants",
                "emails already registered to other tenants",
                "rename those users first",
            ),
        ];
        for (query, context, what, fix) in checks {
            let found: Vec<String> = sqlx::query_scalar(query)
                .bind(prefix)
                .fetch_all(&mut *conn)
                .await
                .map_err(Error::db(context))?;
            if !found.is_empty() {
                problems.push(format!("{what} ({}): {fix}", some_of(&found, 5)));
            }
        }
        Ok(())
    }

    /// Builds the first new tenant's schema in a transaction that is rolled
    /// back, to check that the tenant migrations make every split table with
    /// every column (but the tenant column) the shared tables have.
    async fn check_tenant_tables(
        &self,
        conn: &mut sqlx::PgConnection,
        plan: &SplitPlan,
        column: &Ident,
        problems: &mut Vec<String>,
    ) -> Result<()> {
        let Some((_, id, _)) = plan.values.iter().find(|v| v.2.is_none()) else {
            return Ok(());
        };
        let schema = self.inner.schema.naming.schema_for(id);
        let path = sql::search_path_value(&schema, &self.inner.schema.shared);
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the tenant tables check"))?;
        let probe = self.draft(
            NewTenant::new(id.clone()),
            crate::strategy::schema::placement(&schema),
        );
        self.build_schema_for_move(&mut tx, &probe, &schema, &path)
            .await?;
        for source in &plan.sources {
            let target = columns(&mut tx, schema.as_str(), source.name.as_str()).await?;
            if target.is_empty() {
                problems.push(format!(
                    "the tenant migrations do not create table `{}`: add it to them (without `{column}`)",
                    source.name
                ));
                continue;
            }
            let lost: Vec<String> = source
                .columns
                .iter()
                .filter(|c| *c != column.as_str() && !target.contains(c))
                .cloned()
                .collect();
            if !lost.is_empty() {
                problems.push(format!(
                    "the tenant migrations' table `{}` lacks column(s) {}: their values would be lost; add them to the migrations",
                    source.name,
                    lost.join(", ")
                ));
            }
        }
        tx.rollback()
            .await
            .map_err(Error::db("rolling the tenant tables check back"))?;
        Ok(())
    }

    /// Registers and fills one tenant, in one transaction.
    async fn split_one(
        &self,
        conn: &mut sqlx::PgConnection,
        plan: &SplitPlan,
        from: &Ident,
        column: &Ident,
        value: &str,
        id: &TenantId,
    ) -> Result<Tenant> {
        let schema = self.inner.schema.naming.schema_for(id);
        let path = sql::search_path_value(&schema, &self.inner.schema.shared);
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning a tenant's split"))?;
        lock(&mut tx, plan.sources.iter().map(|s| s.qualified.clone())).await?;
        let placement = crate::strategy::schema::placement(&schema);
        let metadata = serde_json::json!({
            ADOPTED_FROM: { "schema": from.as_str(), "column": column.as_str(), "value": value }
        });
        let draft = self.draft(NewTenant::new(id.clone()).metadata(metadata), placement);
        let tenant = self.inner.registry.store.insert(&mut tx, &draft).await?;
        self.build_schema_for_move(&mut tx, &tenant, &schema, &path)
            .await?;
        // Parents first, by the tenant schema's foreign keys; rows that the
        // migrations inserted go first, children first.
        let order =
            crate::strategy::row_level::tables_in_order(&mut tx, schema.as_str(), None).await?;
        let ordered: Vec<(usize, String, Vec<String>)> = order
            .into_iter()
            .filter_map(|(name, qualified, cols)| {
                let i = plan.sources.iter().position(|s| s.name.as_str() == name)?;
                Some((i, qualified, cols))
            })
            .collect();
        for (_, target, _) in ordered.iter().rev() {
            let mut delete = Statement::new();
            delete.sql("DELETE FROM ").trusted(target);
            sqlx::query(delete.into_sql())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("emptying the tenant's new tables"))?;
        }
        for (i, target, _) in &ordered {
            let source = &plan.sources[*i];
            // The columns both tables have; a column whose type is the
            // tenant's own (an enum of the migrations) goes through text.
            let common: Vec<(String, bool, String)> = sqlx::query_as(
                "SELECT a.attname::text, a.atttypid = s.atttypid, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a JOIN pg_attribute s ON s.attrelid = to_regclass($2) \
                      AND s.attname = a.attname AND NOT s.attisdropped \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                   AND a.attname <> $3 ORDER BY a.attnum",
            )
            .bind(target)
            .bind(&source.qualified)
            .bind(column.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db("matching a table's columns"))?;
            let mut list = Statement::new();
            list.names(common.iter().map(|(c, ..)| c));
            let mut values = Statement::new();
            for (n, (c, same, ty)) in common.iter().enumerate() {
                if n > 0 {
                    values.sql(", ");
                }
                match same {
                    true => values.name(c),
                    // A type as PostgreSQL's `format_type` spells it.
                    false => values
                        .sql("CAST(CAST(")
                        .name(c)
                        .sql(" AS text) AS ")
                        .trusted(ty)
                        .sql(")"),
                };
            }
            sqlx::query(
                sql::template(
                    "INSERT INTO {target} ({list}) OVERRIDING SYSTEM VALUE \
                     SELECT {values} FROM {source} WHERE {column} = {cast}",
                )
                .trusted("target", target)
                .append("list", &list)
                .append("values", &values)
                .trusted("source", &source.qualified)
                .ident("column", column)
                .append("cast", &plan.value_casts[*i])
                .finish(),
            )
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("copying a tenant's rows into its schema"))?;
            advance_sequences(&mut tx, target, schema.as_str(), source.name.as_str()).await?;
            advance_default_sequences(&mut tx, target).await?;
        }
        let (tables, _) = counts(&mut tx, plan, &schema, value, id).await?;
        let wrong: Vec<String> = tables
            .iter()
            .filter(|t| t.before != t.after)
            .map(|t| format!("{} {}→{}", t.table, t.before, t.after))
            .collect();
        if !wrong.is_empty() {
            return Err(Error::AdoptRefused {
                what: format!("tenant `{id}`"),
                problems: vec![format!(
                    "its tables would not hold exactly its rows ({}): check the tenant migrations' seeds and triggers",
                    wrong.join(", ")
                )],
            });
        }
        if let Some((i, email, integer_id)) = &plan.logins {
            let user_id = if *integer_id {
                "\"id\"::int8"
            } else {
                "NULL::int8"
            };
            sqlx::query(
                sql::template(
                    "INSERT INTO {logins} (email, tenant_id, user_id) \
                     SELECT lower(btrim({e})), $1, {user_id} FROM {schema}.{users} WHERE {e} IS NOT NULL",
                )
                .table("logins", &plan.login_table)
                .ident("e", email)
                .sql("user_id", user_id)
                .ident("schema", &schema)
                .ident("users", &plan.sources[*i].name)
                .finish(),
            )
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("filling the login lookup"))?;
        }
        let tenant = self.activate_adopted(&mut tx, id).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing a tenant's split"))?;
        tracing::info!(tenant = %id, value, "split a tenant out of the shared tables");
        Ok(tenant)
    }
}

/// Whether `tenant` was registered by a split of `from` by `column` for `value`.
fn adopted_from(tenant: &Tenant, from: &Ident, column: &Ident, value: &str) -> bool {
    let a = &tenant.metadata[ADOPTED_FROM];
    a["schema"] == from.as_str() && a["column"] == column.as_str() && a["value"] == value
}

/// Each table's rows of `value` in the shared tables and in the tenant's
/// `schema`, and the tenant's login rows.
async fn counts(
    conn: &mut sqlx::PgConnection,
    plan: &SplitPlan,
    schema: &Ident,
    value: &str,
    id: &TenantId,
) -> Result<(Vec<TableRows>, i64)> {
    let mut out = Vec::with_capacity(plan.sources.len());
    for (source, cast) in plan.sources.iter().zip(&plan.value_casts) {
        let (before, after): (i64, i64) = sqlx::query_as(
            sql::template(
                "SELECT (SELECT count(*) FROM {source} WHERE {column} = {cast}), \
                 (SELECT count(*) FROM {schema}.{table})",
            )
            .trusted("source", &source.qualified)
            .ident("column", &plan.column)
            .append("cast", cast)
            .ident("schema", schema)
            .ident("table", &source.name)
            .finish(),
        )
        .bind(value)
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("counting a tenant's rows"))?;
        out.push(TableRows {
            table: source.name.to_string(),
            before,
            after,
        });
    }
    let logins = match &plan.logins {
        None => 0,
        Some(_) => sqlx::query_scalar(
            sql::template("SELECT count(*) FROM {logins} WHERE tenant_id = $1")
                .table("logins", &plan.login_table)
                .finish(),
        )
        .bind(id.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("counting a tenant's logins"))?,
    };
    Ok((out, logins))
}

/// Rows of one split table referencing, by a foreign key, a row of another
/// split table with another tenant value: they cannot be split.
async fn check_cross_references(
    conn: &mut sqlx::PgConnection,
    plan: &SplitPlan,
    from: &Ident,
    column: &Ident,
    problems: &mut Vec<String>,
) -> Result<()> {
    let names: Vec<&str> = plan.sources.iter().map(|s| s.name.as_str()).collect();
    let keys: Vec<(String, String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT ch.relname::text, pa.relname::text, \
                ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY x(n, i) \
                      JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.n ORDER BY x.i), \
                ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY x(n, i) \
                      JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = x.n ORDER BY x.i) \
         FROM pg_constraint k \
         JOIN pg_class ch ON ch.oid = k.conrelid JOIN pg_class pa ON pa.oid = k.confrelid \
         JOIN pg_namespace n ON n.oid = ch.relnamespace AND n.oid = pa.relnamespace \
         WHERE k.contype = 'f' AND n.nspname = $1 AND ch.relname = ANY($2) AND pa.relname = ANY($2) \
         ORDER BY 1, 2",
    )
    .bind(from.as_str())
    .bind(&names)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::db("reading the split tables' foreign keys"))?;
    for (child, parent, child_cols, parent_cols) in keys {
        let mut on = Statement::new();
        for (n, (c, p)) in child_cols.iter().zip(&parent_cols).enumerate() {
            if n > 0 {
                on.sql(" AND ");
            }
            on.sql("c.").name(c).sql(" = p.").name(p);
        }
        let crossing: i64 = sqlx::query_scalar(
            sql::template(
                "SELECT count(*) FROM {f}.{child} c JOIN {f}.{parent} p ON {on} \
                 WHERE c.{col} <> p.{col}",
            )
            .ident("f", from)
            .name("child", &child)
            .name("parent", &parent)
            .append("on", &on)
            .ident("col", column)
            .finish(),
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db(
            "looking for rows referencing another tenant's rows",
        ))?;
        if crossing > 0 {
            problems.push(format!(
                "{crossing} rows of `{child}` reference rows of `{parent}` with another `{column}`: correct them first, as no tenant could hold both"
            ));
        }
    }
    Ok(())
}

/// Moves every sequence an integer column of `target` takes its default from
/// (`DEFAULT nextval('invoice_numbers')`, not only its own serial) past the
/// largest value copied in, unless it is already past it.
async fn advance_default_sequences(tx: &mut sqlx::PgConnection, target: &str) -> Result<()> {
    let defaults: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, d.refobjid::regclass::text FROM pg_attrdef ad \
         JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid \
              AND d.refclassid = 'pg_class'::regclass \
         JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S' \
         JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum \
         WHERE ad.adrelid = to_regclass($1) \
           AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)",
    )
    .bind(target)
    .fetch_all(&mut *tx)
    .await
    .map_err(Error::db("reading the sequences of column defaults"))?;
    for (column, sequence) in defaults {
        sqlx::query(
            sql::template(
                "SELECT setval(x.s, x.m) FROM (SELECT $1::regclass AS s, \
                 (SELECT max({column})::int8 FROM {target}) AS m) x \
                 WHERE x.m >= coalesce(pg_sequence_last_value(x.s), \
                                       (SELECT seqstart FROM pg_sequence WHERE seqrelid = x.s))",
            )
            .name("column", &column)
            .trusted("target", target)
            .finish(),
        )
        .bind(&sequence)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("advancing a sequence"))?;
    }
    Ok(())
}
