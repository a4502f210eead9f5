//! Moving a tenant between isolation strategies ([`Hidra::move_tenant`]).
//!
//! Between schema per tenant and row level, both copies live in the same
//! database, so a move is **one transaction**: the tenant's tables are locked
//! against writes (readers go on), its rows are copied, the registry's
//! placement is switched and the old copy is removed. Every reader sees the
//! tenant either entirely before or entirely after the move; a failure changes
//! nothing.

use std::collections::HashSet;

use sqlx::Connection;

use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::migrate;
use crate::sql::{self, Ident};
use crate::tenant::{Placement, Strategy, Tenant, TenantId, TenantStatus};

impl Hidra {
    /// Moves a tenant to another isolation strategy, keeping every row.
    ///
    /// Supported: [`Strategy::RowLevel`] to [`Strategy::Schema`] (a customer
    /// upgrading to its own schema) and back. The tenant's tables must have the
    /// same names and columns under both strategies (the row-level ones with
    /// the tenant column added); a table of the source without a counterpart
    /// fails the move rather than losing its rows.
    pub async fn move_tenant(&self, id: &TenantId, to: Strategy) -> Result<Tenant> {
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        let tenant = self
            .inner
            .store
            .get(&mut conn, id)
            .await?
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        if !matches!(
            tenant.status,
            TenantStatus::Active | TenantStatus::Suspended
        ) {
            return Err(Error::InvalidStatus {
                id: id.clone(),
                status: tenant.status,
                expected: "active or suspended",
                action: "moving",
            });
        }
        if to == Strategy::RowLevel {
            self.require_row_level_audit().await?;
        }
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the move"))?;
        let moved = match (tenant.placement.strategy, to) {
            (from, to) if from == to => return Ok(tenant),
            (Strategy::RowLevel, Strategy::Schema) => {
                self.row_level_to_schema(&mut tx, &tenant).await?
            }
            (Strategy::Schema, Strategy::RowLevel) => {
                self.schema_to_row_level(&mut tx, &tenant).await?
            }
            (from, to) => {
                return Err(Error::InvalidConfig(
                    format!("moving a tenant from {from} to {to} is not supported").into(),
                ));
            }
        };
        tx.commit()
            .await
            .map_err(Error::db("committing the move"))?;
        tracing::info!(tenant = %id, from = %tenant.placement.strategy, to = %to, "moved tenant");
        Ok(moved)
    }

    async fn row_level_to_schema(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
    ) -> Result<Tenant> {
        let inner = &self.inner;
        let tables = self.row_level_tables(tx).await?;
        lock(tx, tables.iter().map(|t| t.1.clone())).await?;
        let schema = inner.naming.schema_for(&tenant.id);
        let placement = Placement {
            strategy: Strategy::Schema,
            schema: schema.to_string(),
            database: None,
            server: None,
        };
        let binding = crate::scope::Binding {
            search_path: sql::search_path_value(&schema, &inner.shared),
            tenant_id: String::new(),
        };
        let migrations = &inner.tenant_migrations;
        let reached = migrate::create_schema(tx, &schema, &binding.search_path, migrations)
            .await
            .map_err(|(source, failed)| match failed {
                None => Error::SchemaTaken {
                    id: tenant.id.clone(),
                    schema: schema.to_string(),
                },
                Some(m) => Error::MigrationFailed {
                    schema: schema.to_string(),
                    migration: migrate::label(&m).into_owned(),
                    source,
                },
            })?;
        if reached < migrations.latest() {
            return Err(Error::InvalidConfig(
                "a move builds the new schema in one transaction: `-- no-transaction` migrations cannot be part of it".into(),
            ));
        }
        bind_row_level(tx, tenant.id.as_str()).await?;
        let column = inner.row_level.column.as_str();
        for (name, source, cols) in &tables {
            let target = format!("{}.{}", schema.quoted(), sql::quote_ident(name));
            let target_cols = columns(tx, schema.as_str(), name).await?;
            if target_cols.is_empty() {
                ensure_empty(tx, source, &tenant.id, column).await?;
                continue;
            }
            let common: Vec<String> = cols
                .iter()
                .filter(|c| c.as_str() != column && target_cols.contains(*c))
                .map(|c| sql::quote_ident(c))
                .collect();
            let list = common.join(", ");
            sqlx::query(sql::owned(format!(
                "INSERT INTO {target} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM {source} WHERE {} = $1",
                sql::quote_ident(column)
            )))
            .bind(tenant.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("copying a tenant's rows into its schema"))?;
            advance_sequences(tx, &target, schema.as_str(), name).await?;
        }
        self.delete_row_level_rows(tx, tenant).await?;
        unbind_row_level(tx).await?;
        self.inner
            .store
            .update_placement(tx, &tenant.id, &placement)
            .await?
            .ok_or_else(|| Error::NotFound(tenant.id.clone()))
    }

    async fn schema_to_row_level(
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
        lock(
            tx,
            own.iter()
                .map(|t| format!("{}.{}", schema.quoted(), sql::quote_ident(t))),
        )
        .await?;
        let covered: HashSet<&str> = tables.iter().map(|t| t.0.as_str()).collect();
        for table in own.iter().filter(|t| !covered.contains(t.as_str())) {
            ensure_empty(
                tx,
                &format!("{}.{}", schema.quoted(), sql::quote_ident(table)),
                &tenant.id,
                "",
            )
            .await?;
        }
        bind_row_level(tx, tenant.id.as_str()).await?;
        let column = inner.row_level.column.as_str();
        for (name, target, cols) in &tables {
            if !own.contains(name) {
                continue;
            }
            let source = format!("{}.{}", schema.quoted(), sql::quote_ident(name));
            let source_cols = columns(tx, schema.as_str(), name).await?;
            let common: Vec<String> = cols
                .iter()
                .filter(|c| c.as_str() != column && source_cols.contains(*c))
                .map(|c| sql::quote_ident(c))
                .collect();
            let list = common.join(", ");
            sqlx::query(sql::owned(format!(
                "INSERT INTO {target} ({list}, {col}) OVERRIDING SYSTEM VALUE SELECT {list}, $1 FROM {source}",
                col = sql::quote_ident(column)
            )))
            .bind(tenant.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("copying a tenant's rows into the row-level tables"))?;
            advance_sequences(tx, target, inner.row_level.schema.as_str(), name).await?;
        }
        unbind_row_level(tx).await?;
        sqlx::raw_sql(sql::drop_schema(&schema))
            .execute(&mut *tx)
            .await
            .map_err(Error::db("dropping the tenant schema"))?;
        sqlx::query("DELETE FROM hidra.schema_versions WHERE schema_name = $1")
            .bind(schema.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("forgetting the tenant's schema version"))?;
        let placement = Placement {
            strategy: Strategy::RowLevel,
            schema: inner.row_level.schema.to_string(),
            database: None,
            server: None,
        };
        self.inner
            .store
            .update_placement(tx, &tenant.id, &placement)
            .await?
            .ok_or_else(|| Error::NotFound(tenant.id.clone()))
    }
}

/// Blocks writers of `tables` until the move commits; readers go on.
async fn lock(tx: &mut sqlx::PgConnection, tables: impl Iterator<Item = String>) -> Result<()> {
    let tables: Vec<String> = tables.collect();
    if tables.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql(sql::owned(format!(
        "LOCK TABLE {} IN SHARE MODE",
        tables.join(", ")
    )))
    .execute(&mut *tx)
    .await
    .map_err(Error::db("locking the tenant's tables for the move"))?;
    Ok(())
}

async fn bind_row_level(tx: &mut sqlx::PgConnection, id: &str) -> Result<()> {
    sqlx::query("SELECT set_config('hidra.tenant_id', $1, true)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("binding the row-level tenant"))?;
    Ok(())
}

async fn unbind_row_level(tx: &mut sqlx::PgConnection) -> Result<()> {
    bind_row_level(tx, "").await
}

async fn columns(tx: &mut sqlx::PgConnection, schema: &str, table: &str) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *tx)
    .await
    .map_err(Error::db("reading table columns"))
}

/// Refuses the move when a table without a counterpart holds rows of the tenant.
async fn ensure_empty(
    tx: &mut sqlx::PgConnection,
    table: &str,
    id: &TenantId,
    column: &str,
) -> Result<()> {
    let filter = if column.is_empty() {
        String::new()
    } else {
        format!(" WHERE {} = $1", sql::quote_ident(column))
    };
    let any: bool = sqlx::query_scalar(sql::owned(format!(
        "SELECT EXISTS (SELECT 1 FROM {table}{filter})"
    )))
    .bind(id.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(Error::db("checking a table without counterpart"))?;
    if any {
        return Err(Error::InvalidConfig(
            format!("table {table} has rows of tenant `{id}` but no counterpart under the new strategy; add it to the migrations first").into(),
        ));
    }
    Ok(())
}

/// After rows with explicit ids were copied in, moves each serial/identity
/// sequence of the table past the largest id so new rows do not collide.
async fn advance_sequences(
    tx: &mut sqlx::PgConnection,
    table: &str,
    schema: &str,
    name: &str,
) -> Result<()> {
    let sequences: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, pg_get_serial_sequence(format('%I.%I', $1::text, $2::text), a.attname) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
           AND pg_get_serial_sequence(format('%I.%I', $1::text, $2::text), a.attname) IS NOT NULL",
    )
    .bind(schema)
    .bind(name)
    .fetch_all(&mut *tx)
    .await
    .map_err(Error::db("reading sequences"))?;
    for (column, sequence) in sequences {
        let column = Ident::new(column, "column name")
            .map(|c| c.quoted())
            .unwrap_or_else(|_| sql::quote_ident(name));
        sqlx::query(sql::owned(format!(
            "SELECT setval($1::regclass, GREATEST((SELECT max({column}) FROM {table}), \
             (SELECT last_value FROM {sequence}), 1))"
        )))
        .bind(&sequence)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("advancing a sequence"))?;
    }
    Ok(())
}
