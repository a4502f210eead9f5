//! Views over one table of every tenant: `SELECT … FROM hidra_reports.all_orders`
//! reads every schema tenant's `orders`, with a `tenant_id` column.
//!
//! The views live in their own schema, [`UNION_VIEW_SCHEMA`], which is on no
//! tenant's `search_path`: in a shared schema (such as `public`) an
//! unqualified `all_orders` would reach every tenant's rows from any
//! tenant's connection.
//!
//! For reporting tools that want one relation (a BI tool, an ad-hoc SQL
//! session) rather than [`Hidra::fan_out`]. The view is a `UNION ALL` of one
//! branch per tenant schema that has the table, over the columns every one of
//! them has with the same type (tenants at different migration versions
//! differ: the others are left out and reported). Database-per-tenant and
//! row-level tenants are not in it (another database; a table of their own).
//!
//! Its cost grows with the tenants: one branch each, planned on every query
//! (PostgreSQL plans all branches even when a `WHERE tenant_id = …` prunes
//! all but one). The guide's "Across tenants" chapter has the measured
//! figures; at thousands of tenants prefer [`Hidra::fan_out`].
//!
//! The view depends on every tenant's table, so deprovisioning a tenant
//! (`DROP SCHEMA … CASCADE`) drops it; [`Hidra::refresh_union_views`]
//! rebuilds every view Hidra maintains, and [`Hidra::spawn_union_view_refresh`]
//! does so whenever the registry announces a change.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Connection;

use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::sql::{self, Ident, Statement};
use crate::tenant::{Strategy, TenantId, TenantStatus};

/// One view over a table of every schema tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnionView {
    /// The view's schema ([`UNION_VIEW_SCHEMA`]).
    pub schema: String,
    /// The view's name (`all_<table>` by default).
    pub name: String,
    /// The tenant table it reads.
    pub table: String,
    /// Its columns after `tenant_id`.
    pub columns: Vec<String>,
    /// The tenants it reads.
    pub tenants: usize,
    /// Columns some tenant lacks (or has with another type): left out.
    pub left_out_columns: Vec<String>,
    /// Active or suspended tenants it does not read, with why.
    pub left_out_tenants: Vec<(TenantId, String)>,
}

/// The schema of the union views: on no tenant's `search_path`.
pub const UNION_VIEW_SCHEMA: &str = "hidra_reports";

/// Their schema and the bookkeeping of the views Hidra maintains.
const DDL: &str = "CREATE SCHEMA IF NOT EXISTS hidra_reports;
CREATE TABLE IF NOT EXISTS hidra.union_views (
    view_schema TEXT NOT NULL,
    view_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    PRIMARY KEY (view_schema, view_name)
);\n";

impl Hidra {
    /// Creates (or rebuilds) the view `all_<table>` in
    /// [`UNION_VIEW_SCHEMA`] over `table` of every active or suspended schema tenant, and
    /// keeps it in the list [`refresh_union_views`](Self::refresh_union_views)
    /// rebuilds. Fails with [`Error::InvalidConfig`] when no tenant has the
    /// table.
    pub async fn create_union_view(&self, table: &str) -> Result<UnionView> {
        let (schema, name, table) = self.view_names(table)?;
        let mut conn = self.views_connection().await?;
        let view = self
            .build_union_view(&mut conn, &schema, &name, &table)
            .await?;
        sqlx::query(
            "INSERT INTO hidra.union_views (view_schema, view_name, table_name) VALUES ($1, $2, $3) \
             ON CONFLICT (view_schema, view_name) DO UPDATE SET table_name = EXCLUDED.table_name",
        )
        .bind(schema.as_str())
        .bind(name.as_str())
        .bind(table.as_str())
        .execute(&mut *conn)
        .await
        .map_err(Error::db("recording a union view"))?;
        Ok(view)
    }

    /// Rebuilds every view made by [`create_union_view`](Self::create_union_view)
    /// over the tenants registered now. A view whose table no tenant has any
    /// more is dropped (and stays listed, to come back with its tenants).
    pub async fn refresh_union_views(&self) -> Result<Vec<UnionView>> {
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        let listed: Vec<(String, String, String)> = match sqlx::query_as(
            "SELECT view_schema, view_name, table_name FROM hidra.union_views ORDER BY 1, 2",
        )
        .fetch_all(&mut *conn)
        .await
        {
            Ok(rows) => rows,
            // Never created one: nothing to refresh.
            Err(e)
                if crate::error::db_code(&e)
                    .is_some_and(|(c, _)| c == crate::error::sqlstate::UNDEFINED_TABLE) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(Error::db("listing union views")(e)),
        };
        let mut views = Vec::new();
        for (schema, name, table) in listed {
            let schema = Ident::new(schema, "view schema")?;
            let name = Ident::new(name, "view name")?;
            let table = Ident::new(table, "table name")?;
            match self
                .build_union_view(&mut conn, &schema, &name, &table)
                .await
            {
                Ok(view) => views.push(view),
                Err(Error::InvalidConfig(_)) => {
                    sqlx::raw_sql(sql::drop_view(&schema, &name))
                        .execute(&mut *conn)
                        .await
                        .map_err(Error::db("dropping a union view no tenant feeds"))?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(views)
    }

    /// Drops the view over `table` and stops maintaining it; returns whether
    /// it was maintained.
    pub async fn drop_union_view(&self, table: &str) -> Result<bool> {
        let (schema, name, _) = self.view_names(table)?;
        let mut conn = self.views_connection().await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning to drop a union view"))?;
        sqlx::raw_sql(sql::drop_view(&schema, &name))
            .execute(&mut *tx)
            .await
            .map_err(Error::db("dropping a union view"))?;
        let done =
            sqlx::query("DELETE FROM hidra.union_views WHERE view_schema = $1 AND view_name = $2")
                .bind(schema.as_str())
                .bind(name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("forgetting a union view"))?;
        tx.commit()
            .await
            .map_err(Error::db("committing the drop of a union view"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Rebuilds the union views whenever the registry announces a change (a
    /// tenant provisioned, deprovisioned, suspended…), at most once per
    /// `quiet` of calm, until the handle is aborted. Errors are logged and
    /// the task goes on.
    pub fn spawn_union_view_refresh(&self, quiet: Duration) -> tokio::task::JoinHandle<()> {
        let hidra = self.clone();
        tokio::spawn(async move {
            loop {
                let mut listener = match hidra.changes_listener().await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "union views: cannot listen for tenant changes");
                        tokio::time::sleep(quiet.max(Duration::from_secs(1))).await;
                        continue;
                    }
                };
                // Changes while not listening were missed: rebuild once.
                if let Err(e) = hidra.refresh_union_views().await {
                    tracing::warn!(error = %e, "union views: refresh failed");
                }
                loop {
                    if listener.recv().await.is_err() {
                        break;
                    }
                    // Let a burst of changes (a batch of sign-ups) settle.
                    while let Ok(Ok(_)) = tokio::time::timeout(quiet, listener.recv()).await {}
                    if let Err(e) = hidra.refresh_union_views().await {
                        tracing::warn!(error = %e, "union views: refresh failed");
                    }
                }
            }
        })
    }

    /// The view's schema and name for `table`, checked as identifiers.
    fn view_names(&self, table: &str) -> Result<(Ident, Ident, Ident)> {
        let table = Ident::new(table.to_owned(), "table name")?;
        let name = Ident::new(format!("all_{}", table.as_str()), "view name")?;
        Ok((self.view_schema()?, name, table))
    }

    /// A shared connection with the views' bookkeeping table in place.
    async fn views_connection(&self) -> Result<crate::SharedConn> {
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        sqlx::raw_sql(sql::install_script(crate::migrate::INTERNAL_LOCK, DDL))
            .execute(&mut *conn)
            .await
            .map_err(Error::db("creating hidra.union_views"))?;
        Ok(conn)
    }

    fn view_schema(&self) -> Result<Ident> {
        if self
            .inner
            .schema
            .shared
            .iter()
            .any(|s| s.as_str() == UNION_VIEW_SCHEMA)
        {
            // On every tenant's search path, the views would hand any
            // tenant every tenant's rows.
            return Err(Error::InvalidConfig(
                format!(
                    "`{UNION_VIEW_SCHEMA}` is configured as a shared schema, so union views in it \
                     would be readable from every tenant's connection; remove it from \
                     shared_schemas"
                )
                .into(),
            ));
        }
        Ident::new(UNION_VIEW_SCHEMA.to_owned(), "union view schema")
    }

    /// Replaces the view `schema.name` over `table` of the schema tenants
    /// registered now, in one transaction.
    async fn build_union_view(
        &self,
        conn: &mut sqlx::PgConnection,
        schema: &Ident,
        name: &Ident,
        table: &Ident,
    ) -> Result<UnionView> {
        let (tenants, mut left_out_tenants) = self.union_tenants(conn).await?;
        let schemas: Vec<&str> = tenants.iter().map(|(_, s)| s.as_str()).collect();
        let columns: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = ANY($1) AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
               AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY n.nspname, a.attnum",
        )
        .bind(&schemas)
        .bind(table.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("reading the tenants' columns"))?;
        let mut by_schema: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
        for (s, c, t) in &columns {
            by_schema.entry(s).or_default().push((c, t));
        }
        let mut feeding = Vec::new();
        for (id, s) in &tenants {
            if by_schema.contains_key(s.as_str()) {
                feeding.push((id, s));
            } else {
                left_out_tenants.push((
                    id.clone(),
                    format!("its schema has no table `{}`", table.as_str()),
                ));
            }
        }
        let Some((_, first)) = feeding.first() else {
            return Err(Error::InvalidConfig(
                format!(
                    "no schema tenant has a table `{}`: nothing to make a view of",
                    table.as_str()
                )
                .into(),
            ));
        };
        // The first feeding tenant's columns, in its order, kept when every
        // other tenant has them with the same type.
        let mut kept = Vec::new();
        let mut left_out_columns = Vec::new();
        for (column, ty) in &by_schema[first.as_str()] {
            let everywhere = feeding.iter().all(|(_, s)| {
                by_schema[s.as_str()]
                    .iter()
                    .any(|(c, t)| c == column && t == ty)
            });
            if everywhere && *column != "tenant_id" {
                kept.push(Ident::new((*column).to_owned(), "column name")?);
            } else {
                left_out_columns.push((*column).to_owned());
            }
        }
        let mut ddl = Statement::new();
        ddl.sql("BEGIN; SET LOCAL client_min_messages TO warning; DROP VIEW IF EXISTS ")
            .ident(schema)
            .sql(".")
            .ident(name)
            .sql("; CREATE VIEW ")
            .ident(schema)
            .sql(".")
            .ident(name)
            .sql(" AS ");
        for (i, (id, s)) in feeding.iter().enumerate() {
            if i > 0 {
                ddl.sql("\nUNION ALL ");
            }
            ddl.sql("SELECT ")
                .literal(id.as_str())
                .sql("::text AS tenant_id");
            for column in &kept {
                ddl.sql(", ").ident(column);
            }
            ddl.sql(" FROM ")
                .ident(&Ident::new((*s).clone(), "tenant schema name")?)
                .sql(".")
                .ident(table);
        }
        ddl.sql("; COMMIT;");
        if let Err(e) = sqlx::raw_sql(ddl.into_sql()).execute(&mut *conn).await {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            return Err(Error::db("creating a union view")(e));
        }
        tracing::info!(
            view = %format_args!("{}.{}", schema.as_str(), name.as_str()),
            tenants = feeding.len(),
            "union view rebuilt"
        );
        Ok(UnionView {
            schema: schema.as_str().to_owned(),
            name: name.as_str().to_owned(),
            table: table.as_str().to_owned(),
            columns: kept.iter().map(|c| c.as_str().to_owned()).collect(),
            tenants: feeding.len(),
            left_out_columns,
            left_out_tenants,
        })
    }

    /// Active and suspended schema tenants, with their schemas; and the
    /// other active or suspended tenants, with why they are not in a view.
    async fn union_tenants(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<(Vec<(TenantId, String)>, Vec<(TenantId, String)>)> {
        let mut out = Vec::new();
        let mut others = Vec::new();
        for t in crate::store::list_all(&self.inner.registry.store, conn).await? {
            if !matches!(t.status, TenantStatus::Active | TenantStatus::Suspended) {
                continue;
            }
            match t.placement.strategy {
                // A view on the control server reads its schemas only.
                Strategy::Schema if t.placement.server.is_some() => others.push((
                    t.id,
                    "a tenant on a registered server: a view cannot read another server".to_owned(),
                )),
                Strategy::Schema => out.push((t.id, t.placement.schema)),
                Strategy::RowLevel => others.push((
                    t.id,
                    "a row-level tenant: its rows are in the row-level tables".to_owned(),
                )),
                Strategy::Database => others.push((
                    t.id,
                    "a database-per-tenant tenant: a view cannot read another database".to_owned(),
                )),
            }
        }
        Ok((out, others))
    }
}
