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
//!
//! Each strategy owns its side of a move (`strategy::row_level`,
//! `strategy::database`, dispatched by `Hidra::move_to`); this module holds
//! the entry point and the table helpers they share (locking, copying rows,
//! checking tables without counterpart, advancing sequences), which archive
//! import and adoption use too.

use crate::error::{Error, Result, sqlstate};
use crate::hidra::Hidra;
use crate::sql;
use crate::tenant::{Strategy, Tenant, TenantId};

impl Hidra {
    /// Moves a tenant to another isolation strategy, keeping every row.
    ///
    /// Supported: [`Strategy::RowLevel`] to [`Strategy::Schema`] (a customer
    /// upgrading to its own schema) and back. The tenant's tables must have the
    /// same names and columns under both strategies (the row-level ones with
    /// the tenant column added); a table of the source without a counterpart
    /// fails the move rather than losing its rows. A tenant on a registered
    /// server is refused ([`Error::MoveRefused`]): move it to the control
    /// server first ([`Hidra::move_to_server`]).
    pub async fn move_tenant(&self, id: &TenantId, to: Strategy) -> Result<Tenant> {
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        let tenant = self
            .inner
            .registry
            .store
            .get(&mut conn, id)
            .await?
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        tenant.require_settled("moving")?;
        if let Some(server) = &tenant.placement.server
            && tenant.placement.strategy != to
        {
            // The strategy moves work inside one server's databases.
            return Err(Error::MoveRefused {
                id: id.clone(),
                reason: format!(
                    "it is on server `{server}`, and a move between strategies runs on the \
                     control server only; move it there first (`Hidra::move_to_server(id, None)`, \
                     `hidra tenant move {id} --to-server control`), change its strategy, then \
                     move it back"
                )
                .into(),
            });
        }
        self.move_to(conn, tenant, to).await
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
    let mut truncate = sql::Statement::new();
    // Names quoted by the catalog query that listed them.
    truncate.sql("TRUNCATE ").trusted(&list.join(", "));
    sqlx::raw_sql(truncate.into_sql())
        .execute(conn)
        .await
        .map_err(Error::db("emptying the new tables"))?;
    Ok(())
}

/// Copies a tenant's `tables` (as `tables_in_order` lists them, on
/// `source`) into the tables of the same names in `target_schema` on
/// `target`, which are emptied first (rows migrations inserted). Each
/// table's copy is checked against the source's row count (the source must
/// be locked against writes) and the target's sequences are set past the
/// copied ids; a source table without counterpart must be empty. Calls
/// `on_table(name, rows, tables done)` after each; returns the rows copied.
pub(crate) async fn copy_tables(
    source: &mut sqlx::PgConnection,
    tables: &[(String, String, Vec<String>)],
    target: &mut sqlx::PgConnection,
    target_schema: &str,
    tenant: &crate::TenantId,
    mut on_table: impl FnMut(&str, u64, usize),
) -> Result<u64> {
    let target_tables =
        crate::strategy::row_level::tables_in_order(target, target_schema, None).await?;
    truncate(target, &target_tables).await?;
    let mut rows = 0;
    for (done, (name, from, cols)) in tables.iter().enumerate() {
        let Some((_, dest, dest_cols)) = target_tables.iter().find(|t| &t.0 == name) else {
            ensure_empty(source, from, tenant, "").await?;
            continue;
        };
        let copied = copy_rows(source, from, target, dest, cols, dest_cols).await?;
        check_copied(source, from, copied).await?;
        advance_sequences(target, dest, target_schema, name).await?;
        rows += copied;
        on_table(name, copied, done + 1);
    }
    Ok(rows)
}

/// A table of a tenant as [`tables_in_order`](crate::strategy::row_level::tables_in_order)
/// lists it: its name, its quoted qualified name, its columns.
pub(crate) type Table = (String, String, Vec<String>);

/// The progress callback of a move between servers.
pub(crate) type Progress<'a> = dyn Fn(&crate::servers::MoveProgress) + Send + Sync + 'a;

impl Hidra {
    /// A connection to `home`'s shared database, with Hidra's internal
    /// schema there, inside a transaction begun for a copy.
    pub(crate) async fn begin_shared_copy(
        &self,
        home: &crate::servers::Home,
    ) -> Result<crate::scope::PoolConn> {
        let mut conn = self.acquire_internal_at(home).await?.into_pool_conn();
        begin_copy(&mut conn).await?;
        Ok(conn)
    }
}

/// Begins the target's transaction of a copy.
pub(crate) async fn begin_copy(target: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::raw_sql("BEGIN")
        .execute(&mut *target)
        .await
        .map_err(Error::db("beginning the copy"))?;
    Ok(())
}

/// Ends the target's transaction of a copy: commits it after `copied`, or
/// rolls it back.
pub(crate) async fn end_copy(target: &mut sqlx::PgConnection, copied: Result<u64>) -> Result<u64> {
    match copied {
        Ok(rows) => {
            sqlx::raw_sql("COMMIT")
                .execute(&mut *target)
                .await
                .map_err(Error::db("committing the copy"))?;
            Ok(rows)
        }
        Err(e) => {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *target).await;
            Err(e)
        }
    }
}

/// [`copy_tables`] into `target_schema` on `target`, inside the copy's
/// transaction begun there, reporting each table to `progress`; then
/// [`end_copy`].
pub(crate) async fn copy_and_commit(
    source: &mut sqlx::PgConnection,
    tables: &[Table],
    target: &mut sqlx::PgConnection,
    target_schema: &str,
    tenant: &TenantId,
    progress: &Progress<'_>,
) -> Result<u64> {
    let copied = copy_tables(
        source,
        tables,
        target,
        target_schema,
        tenant,
        |t, n, done| {
            progress(&crate::servers::MoveProgress {
                table: t.to_owned(),
                rows: n,
                done,
                total: tables.len(),
            });
        },
    )
    .await;
    end_copy(target, copied).await
}

/// Fails unless `copied`, the rows of `from` that reached the target, are
/// all the rows `source` has there (locked against writes for the move).
pub(crate) async fn check_copied(
    source: &mut sqlx::PgConnection,
    from: &str,
    copied: u64,
) -> Result<()> {
    let counted = count_rows(source, from).await?;
    if copied != counted {
        return Err(Error::Database {
            context: "verifying the copy",
            source: sqlx::Error::Protocol(format!(
                "{copied} rows of {from} reached the target, the source has {counted}"
            )),
        });
    }
    Ok(())
}

/// The rows of `table` (quoted by the catalog query that listed it).
pub(crate) async fn count_rows(conn: &mut sqlx::PgConnection, table: &str) -> Result<u64> {
    let mut count = sql::Statement::new();
    count.sql("SELECT count(*) FROM ").trusted(table);
    let n: i64 = sqlx::query_scalar(count.into_sql())
        .fetch_one(conn)
        .await
        .map_err(Error::db("counting the source's rows"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Streams the rows of `from` into `to` with binary `COPY`, over the columns
/// both tables have; returns how many rows the target took.
pub(crate) async fn copy_rows(
    source: &mut sqlx::PgConnection,
    from: &str,
    target: &mut sqlx::PgConnection,
    to: &str,
    cols: &[String],
    target_cols: &[String],
) -> Result<u64> {
    let common: Vec<&String> = cols.iter().filter(|c| target_cols.contains(c)).collect();
    let mut copy_in = sql::Statement::new();
    copy_in
        .sql("COPY ")
        .trusted(to)
        .sql(" (")
        .names(&common)
        .sql(") FROM STDIN (FORMAT binary)");
    let mut copy_out = sql::Statement::new();
    copy_out
        .sql("COPY ")
        .trusted(from)
        .sql(" (")
        .names(&common)
        .sql(") TO STDOUT (FORMAT binary)");
    let mut copy_in = target
        .copy_in_raw(copy_in.as_str())
        .await
        .map_err(Error::db("starting to copy rows in"))?;
    let mut stream = source
        .copy_out_raw(copy_out.as_str())
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
        .map_err(Error::db("finishing the row copy"))
}

/// Blocks writers of `tables` until the move commits; readers go on.
pub(crate) async fn lock(
    tx: &mut sqlx::PgConnection,
    tables: impl Iterator<Item = String>,
) -> Result<()> {
    let tables: Vec<String> = tables.collect();
    on_tables(tx, "LOCK TABLE ", &tables, " IN SHARE MODE")
        .await
        .map_err(Error::db("locking the tenant's tables for the move"))
}

/// Ends a move on its source: drops the moved tenant's old `tables` (as
/// [`tables_in_order`](crate::strategy::row_level::tables_in_order) lists
/// them, all in `schema`) in the source's transaction, which holds [`lock`]'s
/// locks, and commits. The writers waiting on them then fail instead of
/// landing in the old copy after the move (a database dropped `WITH (FORCE)`
/// alone is not enough: a writer signalled after the source's session ended
/// can get the lock and commit before the database goes).
pub(crate) async fn drop_and_commit(
    tx: &mut sqlx::PgConnection,
    schema: &str,
    tables: &[(String, String, Vec<String>)],
) -> Result<()> {
    if !tables.is_empty() {
        let names: Vec<String> = tables.iter().map(|t| t.1.clone()).collect();
        let mut drop = sql::Statement::new();
        drop.sql("DROP TABLE ")
            .trusted(&names.join(", "))
            .sql(" CASCADE");
        drop_cancelling(tx, schema, drop)
            .await
            .map_err(Error::db("dropping the moved tenant's old tables"))?;
    }
    sqlx::raw_sql("COMMIT")
        .execute(&mut *tx)
        .await
        .map_err(Error::db("dropping the moved tenant's old tables"))?;
    Ok(())
}

/// How long one attempt of [`drop_cancelling`] waits for its locks, in ms.
const DROP_PATIENCE_MS: u32 = 200;

/// Attempts of [`drop_cancelling`] before it gives up (about 10 s).
const DROP_ATTEMPTS: u32 = 50;

/// Runs `drop` (of `schema` or of tables in it) in the caller's transaction,
/// cancelling the tenant's transactions that keep it waiting.
///
/// A transaction of the tenant holds locks on its tables until it ends: a
/// schema tenant's binding holds one on its history table
/// (`sql::prove_schema`), and a writer waiting on a move's `SHARE` locks
/// holds what it read before. Waiting for them could take as long as the
/// application keeps them open, and a waiting writer deadlocks with the
/// drop. So each attempt waits at most [`DROP_PATIENCE_MS`] under a savepoint;
/// when it times out, the statements of those transactions are cancelled
/// (transactions idle in between are ended) and the drop is tried again.
/// They fail, and retried they read the tenant's record again.
pub(crate) async fn drop_cancelling(
    tx: &mut sqlx::PgConnection,
    schema: &str,
    drop: sql::Statement,
) -> std::result::Result<(), sqlx::Error> {
    let mut attempt = sql::Statement::new();
    attempt
        .sql("SAVEPOINT hidra_drop; SET LOCAL lock_timeout TO ")
        .int(DROP_PATIENCE_MS)
        .sql("; ")
        .append(&drop)
        .sql("; RELEASE SAVEPOINT hidra_drop; SET LOCAL lock_timeout TO DEFAULT");
    let attempt = attempt.into_sql();
    let mut tries = 0;
    loop {
        tries += 1;
        match sqlx::raw_sql(attempt.clone()).execute(&mut *tx).await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(db))
                if tries < DROP_ATTEMPTS
                    && matches!(
                        db.code().as_deref(),
                        Some(sqlstate::LOCK_NOT_AVAILABLE | sqlstate::DEADLOCK_DETECTED)
                    ) =>
            {
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT hidra_drop")
                    .execute(&mut *tx)
                    .await?;
                let ended: i64 = sqlx::query_scalar(END_LOCK_HOLDERS)
                    .bind(schema)
                    .fetch_one(&mut *tx)
                    .await?;
                tracing::debug!(
                    schema,
                    ended,
                    "cancelled transactions keeping a tenant's drop waiting"
                );
            }
            Err(e) => return Err(e),
        }
    }
}

/// Cancels the statements of the other sessions holding or awaiting locks
/// on relations of schema `$1` in this database (ends them when idle inside
/// their transaction), where this role may signal them; returns how many.
const END_LOCK_HOLDERS: &str = "\
    SELECT count(CASE WHEN a.state LIKE 'idle in transaction%' \
                      THEN pg_terminate_backend(a.pid) ELSE pg_cancel_backend(a.pid) END) \
    FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid \
    WHERE a.pid <> pg_backend_pid() \
      AND a.pid IN (SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                    WHERE l.locktype = 'relation' AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1) \
                      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) \
      AND ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
           OR (NOT r.rolsuper AND (pg_has_role(r.oid, 'MEMBER') \
                                   OR pg_has_role('pg_signal_backend', 'MEMBER'))))";

/// Runs `before` + `tables` (quoted qualified names) + `after`, if there
/// are any tables.
async fn on_tables(
    tx: &mut sqlx::PgConnection,
    before: &'static str,
    tables: &[String],
    after: &'static str,
) -> std::result::Result<(), sqlx::Error> {
    if tables.is_empty() {
        return Ok(());
    }
    let mut statement = sql::Statement::new();
    statement.sql(before).trusted(&tables.join(", ")).sql(after);
    sqlx::raw_sql(statement.into_sql())
        .execute(&mut *tx)
        .await?;
    Ok(())
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
pub(crate) async fn ensure_empty(
    tx: &mut sqlx::PgConnection,
    table: &str,
    id: &TenantId,
    column: &str,
) -> Result<()> {
    let mut exists = sql::Statement::new();
    exists.sql("SELECT EXISTS (SELECT 1 FROM ").trusted(table);
    if !column.is_empty() {
        exists.sql(" WHERE ").name(column).sql(" = $1");
    }
    exists.sql(")");
    let any: bool = sqlx::query_scalar(exists.into_sql())
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
        // A name from the catalog, any case or character: quoted as it is.
        let column = sql::quote_ident(&column);
        let mut setval = sql::Statement::new();
        setval
            .sql("SELECT setval($1::regclass, GREATEST((SELECT max(")
            .trusted(&column)
            .sql(") FROM ")
            .trusted(table)
            .sql("), (SELECT last_value FROM ")
            // Quoted by `pg_get_serial_sequence`.
            .trusted(&sequence)
            .sql("), 1))");
        sqlx::query(setval.into_sql())
            .bind(&sequence)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("advancing a sequence"))?;
    }
    Ok(())
}
