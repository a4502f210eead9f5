//! Moving a tenant between isolation strategies ([`Hidra::move_tenant`]).
//!
//! Between schema per tenant and row level, both copies live in the same
//! database, so a move is **one transaction**: the tenant's tables are locked
//! against writes (readers go on), its rows are copied, the registry's
//! placement is switched and the old copy is removed. Every reader sees the
//! tenant either entirely before or entirely after the move; a failure changes
//! nothing.
//!
//! To or from its own database, the rows stream through `COPY … (FORMAT
//! binary)` between two connections. The source's tables stay locked against
//! writes in a transaction of the shared database until the placement is
//! switched there; the copy is committed in the target database first, so a
//! failure before the switch leaves the tenant where it was (a half-made
//! target database is dropped). A move between row level and its own database
//! goes through its own schema: two moves, each consistent.

use std::collections::HashSet;

use sqlx::Connection;

use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::lifecycle::drop_tenant_schema;
use crate::migrate;
use crate::sql::{self, Ident};
use crate::tenant::{Placement, Strategy, Tenant, TenantId};

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
        tenant.require_settled("moving")?;
        if to == Strategy::RowLevel {
            self.require_row_level_audit().await?;
        }
        let from = tenant.placement.strategy;
        match (from, to) {
            _ if from == to => return Ok(tenant),
            (Strategy::Schema, Strategy::Database) => {
                drop(conn);
                return self.schema_to_database(&tenant).await;
            }
            (Strategy::Database, Strategy::Schema) => {
                drop(conn);
                return self.database_to_schema(&tenant).await;
            }
            (Strategy::RowLevel, Strategy::Database) | (Strategy::Database, Strategy::RowLevel) => {
                // Through a schema of its own.
                drop(conn);
                Box::pin(self.move_tenant(id, Strategy::Schema)).await?;
                return Box::pin(self.move_tenant(id, to)).await;
            }
            _ => {}
        }
        // Between a schema and the row-level tables: one transaction.
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the move"))?;
        let moved = match (from, to) {
            (Strategy::RowLevel, Strategy::Schema) => {
                self.row_level_to_schema(&mut tx, &tenant).await?
            }
            (Strategy::Schema, Strategy::RowLevel) => {
                self.schema_to_row_level(&mut tx, &tenant).await?
            }
            (from, to) => {
                return Err(Error::MoveUnsupported { from, to });
            }
        };
        tx.commit()
            .await
            .map_err(Error::db("committing the move"))?;
        tracing::info!(tenant = %id, from = %from, to = %to, "moved tenant");
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
            timeouts: Default::default(),
        };
        self.build_schema_for_move(tx, tenant, &schema, &binding.search_path)
            .await?;
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
        drop_tenant_schema(tx, &schema).await?;
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

impl Hidra {
    async fn schema_to_database(&self, tenant: &Tenant) -> Result<Tenant> {
        let database = self.inner.database_naming.schema_for(&tenant.id);
        let schema = tenant.placement.schema_ident()?;
        self.create_tenant_database(tenant, &database).await?;
        let result = async {
            let mut conn = self.acquire_shared().await?;
            let mut tx = conn
                .begin()
                .await
                .map_err(Error::db("beginning the move"))?;
            let tables = crate::rls::tables_in_order(&mut tx, schema.as_str(), None).await?;
            lock(&mut tx, tables.iter().map(|t| t.1.clone())).await?;
            {
                let mut target = self.inner.databases.acquire(database.as_str()).await?;
                sqlx::raw_sql("BEGIN")
                    .execute(&mut *target)
                    .await
                    .map_err(Error::db("beginning the copy"))?;
                let copied = async {
                    let target_tables = crate::rls::tables_in_order(
                        &mut target,
                        crate::per_database::TENANT_DB_SCHEMA,
                        None,
                    )
                    .await?;
                    truncate(&mut target, &target_tables).await?;
                    for (name, source, cols) in &tables {
                        let Some((_, dest, dest_cols)) =
                            target_tables.iter().find(|t| &t.0 == name)
                        else {
                            ensure_empty(&mut tx, source, &tenant.id, "").await?;
                            continue;
                        };
                        copy_rows(&mut tx, source, &mut target, dest, cols, dest_cols).await?;
                        advance_sequences(
                            &mut target,
                            dest,
                            crate::per_database::TENANT_DB_SCHEMA,
                            name,
                        )
                        .await?;
                    }
                    sqlx::raw_sql("COMMIT")
                        .execute(&mut *target)
                        .await
                        .map_err(Error::db("committing the copy"))?;
                    Ok::<_, Error>(())
                }
                .await;
                if copied.is_err() {
                    // Not left open on the pooled connection until its reuse.
                    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *target).await;
                }
                copied?;
            }
            let placement = Placement {
                strategy: Strategy::Database,
                schema: crate::per_database::TENANT_DB_SCHEMA.into(),
                database: Some(database.to_string()),
                server: None,
            };
            let moved = self
                .inner
                .store
                .update_placement(&mut tx, &tenant.id, &placement)
                .await?
                .ok_or_else(|| Error::NotFound(tenant.id.clone()))?;
            drop_tenant_schema(&mut tx, &schema).await?;
            tx.commit()
                .await
                .map_err(Error::db("committing the move"))?;
            Ok(moved)
        }
        .await;
        if result.is_err() {
            let half_made = Tenant {
                placement: Placement {
                    strategy: Strategy::Database,
                    schema: crate::per_database::TENANT_DB_SCHEMA.into(),
                    database: Some(database.to_string()),
                    server: None,
                },
                ..tenant.clone()
            };
            if let Err(e) = self.drop_tenant_database(&half_made).await {
                tracing::error!(tenant = %tenant.id, error = %e, "could not drop the half-made database of a failed move");
            }
        } else {
            tracing::info!(tenant = %tenant.id, from = "schema", to = "database", "moved tenant");
        }
        result
    }

    async fn database_to_schema(&self, tenant: &Tenant) -> Result<Tenant> {
        let inner = &self.inner;
        let database = crate::hidra::tenant_database(tenant)?.to_owned();
        let schema = inner.naming.schema_for(&tenant.id);
        let mut source = inner.databases.acquire(&database).await?;
        sqlx::raw_sql("BEGIN")
            .execute(&mut *source)
            .await
            .map_err(Error::db("beginning the move"))?;
        let moved = async {
            let tables = crate::rls::tables_in_order(
                &mut source,
                crate::per_database::TENANT_DB_SCHEMA,
                None,
            )
            .await?;
            lock(&mut source, tables.iter().map(|t| t.1.clone())).await?;

            let mut conn = self.acquire_shared().await?;
            let mut tx = conn
                .begin()
                .await
                .map_err(Error::db("beginning the move"))?;
            let path = sql::search_path_value(&schema, &inner.shared);
            self.build_schema_for_move(&mut tx, tenant, &schema, &path)
                .await?;
            let target_tables = crate::rls::tables_in_order(&mut tx, schema.as_str(), None).await?;
            truncate(&mut tx, &target_tables).await?;
            for (name, from, cols) in &tables {
                let Some((_, dest, dest_cols)) = target_tables.iter().find(|t| &t.0 == name) else {
                    ensure_empty(&mut source, from, &tenant.id, "").await?;
                    continue;
                };
                copy_rows(&mut source, from, &mut tx, dest, cols, dest_cols).await?;
                advance_sequences(&mut tx, dest, schema.as_str(), name).await?;
            }
            let placement = Placement {
                strategy: Strategy::Schema,
                schema: schema.to_string(),
                database: None,
                server: None,
            };
            let moved = inner
                .store
                .update_placement(&mut tx, &tenant.id, &placement)
                .await?
                .ok_or_else(|| Error::NotFound(tenant.id.clone()))?;
            tx.commit()
                .await
                .map_err(Error::db("committing the move"))?;
            Ok::<_, Error>(moved)
        }
        .await;
        // The source only read (and locked): end its transaction now, whether
        // the move committed or failed, so that it does not hold the locks
        // while parked in the pool.
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *source).await;
        drop(source);
        let moved = moved?;

        if let Err(e) = self.drop_tenant_database(tenant).await {
            tracing::error!(tenant = %tenant.id, error = %e, "moved, but could not drop the old database; drop it by hand");
        }
        tracing::info!(tenant = %tenant.id, from = "database", to = "schema", "moved tenant");
        Ok(moved)
    }
}

impl Hidra {
    /// Builds a tenant's schema with every tenant migration inside the move's
    /// transaction.
    pub(crate) async fn build_schema_for_move(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
        schema: &Ident,
        search_path: &str,
    ) -> Result<()> {
        let migrations = &self.inner.tenant_migrations;
        let reached = migrate::create_schema(tx, schema, search_path, migrations)
            .await
            .map_err(|(source, failed)| match failed {
                None => Error::SchemaTaken {
                    id: tenant.id.clone(),
                    schema: schema.to_string(),
                },
                Some(m) => m.error(schema.as_str(), source),
            })?;
        if reached < migrations.latest() {
            return Err(Error::InvalidConfig(
                "a move builds the new schema in one transaction: `-- no-transaction` migrations cannot be part of it".into(),
            ));
        }
        Ok(())
    }
}

/// Empties freshly built tables (rows that migrations inserted) before the
/// tenant's own rows are copied in.
pub(crate) async fn truncate(
    conn: &mut sqlx::PgConnection,
    tables: &[(String, String, Vec<String>)],
) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let list: Vec<&str> = tables.iter().map(|t| t.1.as_str()).collect();
    sqlx::raw_sql(sql::owned(format!("TRUNCATE {}", list.join(", "))))
        .execute(conn)
        .await
        .map_err(Error::db("emptying the new tables"))?;
    Ok(())
}

/// Streams the rows of `from` into `to` with binary `COPY`, over the columns
/// both tables have.
async fn copy_rows(
    source: &mut sqlx::PgConnection,
    from: &str,
    target: &mut sqlx::PgConnection,
    to: &str,
    cols: &[String],
    target_cols: &[String],
) -> Result<()> {
    let common: Vec<String> = cols
        .iter()
        .filter(|c| target_cols.contains(c))
        .map(|c| sql::quote_ident(c))
        .collect();
    let list = common.join(", ");
    let mut copy_in = target
        .copy_in_raw(&format!("COPY {to} ({list}) FROM STDIN (FORMAT binary)"))
        .await
        .map_err(Error::db("starting to copy rows in"))?;
    let mut stream = source
        .copy_out_raw(&format!("COPY {from} ({list}) TO STDOUT (FORMAT binary)"))
        .await
        .map_err(Error::db("starting to copy rows out"))?;
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Error::db("copying rows out"))?;
        copy_in
            .send(chunk)
            .await
            .map_err(Error::db("copying rows in"))?;
    }
    drop(stream);
    copy_in
        .finish()
        .await
        .map_err(Error::db("finishing the row copy"))?;
    Ok(())
}

/// Blocks writers of `tables` until the move commits; readers go on.
pub(crate) async fn lock(
    tx: &mut sqlx::PgConnection,
    tables: impl Iterator<Item = String>,
) -> Result<()> {
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
    sqlx::query(crate::sql::BIND_TENANT_LOCAL)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("binding the row-level tenant"))?;
    Ok(())
}

async fn unbind_row_level(tx: &mut sqlx::PgConnection) -> Result<()> {
    bind_row_level(tx, "").await
}

pub(crate) async fn columns(
    tx: &mut sqlx::PgConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<String>> {
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
        return Err(Error::MoveRefused {
            id: id.clone(),
            reason: format!(
                "table {table} has rows of it but no counterpart under the new strategy; add it to the migrations first"
            )
            .into(),
        });
    }
    Ok(())
}

/// After rows with explicit ids were copied in, moves each serial/identity
/// sequence of the table past the largest id so new rows do not collide.
pub(crate) async fn advance_sequences(
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
