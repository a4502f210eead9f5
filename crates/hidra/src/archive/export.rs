//! [`Hidra::export_tenant`]: one snapshot of a tenant, streamed into a tar
//! archive.

use futures_util::StreamExt;
use sqlx::{Connection, PgConnection};
use tokio::io::AsyncWrite;

use super::tar::TarWriter;
use super::{
    ArchivedEntry, ArchivedMigration, ArchivedSequence, ArchivedTable, ArchivedTenant, CHUNK_BYTES,
    CopyFormat, ExportOptions, ExportSummary, FORMAT_VERSION, MANIFEST, MANIFEST_SUM, Manifest,
    Progress, hex, sha256_hex,
};
use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::migrate::Migration;
use crate::sql::{self, Ident, Statement, TableName};
use crate::tenant::{Strategy, Tenant, TenantId};

/// A `REPEATABLE READ READ ONLY` transaction: one snapshot for every read.
async fn snapshot(conn: &mut PgConnection) -> Result<sqlx::Transaction<'_, sqlx::Postgres>> {
    let mut tx = conn
        .begin()
        .await
        .map_err(Error::db("beginning the export"))?;
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(Error::db("beginning the export"))?;
    Ok(tx)
}

/// Whether `table` exists.
pub(super) async fn table_exists(conn: &mut PgConnection, table: &TableName) -> Result<bool> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table.quoted())
        .fetch_one(conn)
        .await
        .map_err(Error::db("looking for a shared table"))
}

/// Columns (name, type) of a table that `COPY` reads and writes (generated
/// columns left out), in order. Types of the table's own schema are named
/// without it (`mood[]`, not `tenant_acme.mood[]`), so that two tenants'
/// tables compare equal.
pub(super) async fn copy_columns(
    conn: &mut PgConnection,
    qualified: &str,
) -> Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT a.attname::text, \
                replace(format_type(a.atttypid, a.atttypmod), quote_ident(n.nspname) || '.', '') \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped \
           AND a.attgenerated = '' ORDER BY a.attnum",
    )
    .bind(qualified)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::db("reading a table's columns"))
}

/// Text when a column's binary form would name a type by its OID (see
/// [`CopyFormat`]), else binary.
async fn copy_format(conn: &mut PgConnection, qualified: &str) -> Result<CopyFormat> {
    let by_oid: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' \
         WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped \
           AND a.attgenerated = '' \
           AND (t.typtype = 'c' OR e.typtype = 'c' OR e.oid >= 16384))",
    )
    .bind(qualified)
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::db("reading a table's column types"))?;
    Ok(if by_oid {
        CopyFormat::Text
    } else {
        CopyFormat::Binary
    })
}

/// `"a", "b"`.
pub(super) fn column_list(columns: &[(String, String)]) -> Statement {
    let mut list = Statement::new();
    list.names(columns.iter().map(|(c, _)| c));
    list
}

/// Writes the entries of an archive and remembers their digests.
struct Writer<'p, W> {
    tar: TarWriter<W>,
    entries: Vec<ArchivedEntry>,
    progress: Progress,
    on_progress: Option<&'p (dyn Fn(&Progress) + Send + Sync)>,
}

impl<W: AsyncWrite + Unpin + Send> Writer<'_, W> {
    async fn entry(&mut self, path: String, data: &[u8]) -> Result<()> {
        self.tar.append(&path, data).await?;
        self.entries.push(ArchivedEntry {
            path,
            bytes: data.len() as u64,
            sha256: sha256_hex(data),
        });
        Ok(())
    }

    /// Streams `COPY … TO STDOUT` into entries under `dir`.
    async fn copy_out(
        &mut self,
        conn: &mut PgConnection,
        statement: &str,
        dir: &str,
        name: &str,
        columns: Vec<(String, String)>,
        format: CopyFormat,
    ) -> Result<ArchivedTable> {
        let mut table = ArchivedTable {
            name: name.to_owned(),
            columns,
            rows: 0,
            chunks: Vec::new(),
            format,
        };
        self.progress.table = name.to_owned();
        let mut counter = super::rows::RowCounter::new(format);
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
        let mut stream = conn
            .copy_out_raw(statement)
            .await
            .map_err(Error::db("starting to read a table"))?;
        loop {
            let next = stream.next().await;
            let done = next.is_none();
            if let Some(bytes) = next {
                let bytes = bytes.map_err(Error::db("reading a table"))?;
                counter.feed(&bytes)?;
                buf.extend_from_slice(&bytes);
            }
            if buf.len() >= CHUNK_BYTES || (done && (!buf.is_empty() || table.chunks.is_empty())) {
                let path = format!("{dir}/{:06}.copy", table.chunks.len());
                self.entry(path.clone(), &buf).await?;
                table.chunks.push(path);
                self.progress.bytes += buf.len() as u64;
                self.progress.rows += counter.rows() - table.rows;
                table.rows = counter.rows();
                buf.clear();
                self.report();
            }
            if done {
                break;
            }
        }
        if !counter.is_complete() {
            return Err(Error::ArchiveCorrupt {
                reason: format!("PostgreSQL's COPY of {name} ended early").into(),
            });
        }
        self.progress.tables_done += 1;
        self.report();
        Ok(table)
    }

    fn report(&self) {
        if let Some(f) = self.on_progress {
            f(&self.progress);
        }
    }
}

/// What is read of the tenant's own tables.
struct Source<'a> {
    /// The schema holding its tables.
    schema: Ident,
    /// Row-level: the tenant column to filter by and leave out.
    tenant_column: Option<&'a Ident>,
    id: &'a TenantId,
}

impl Hidra {
    /// Writes one tenant to `out` as a portable archive (see [`crate::archive`]):
    /// its schema DDL at its migration version, every table's rows, its
    /// sequences, its registry record and its rows in the shared login and
    /// API-key tables, with a manifest and checksums.
    ///
    /// Everything is read in one `REPEATABLE READ READ ONLY` transaction, so
    /// the archive is one consistent snapshot while the tenant keeps being
    /// written. `out` can be a file, a socket or an HTTP response body: the
    /// archive is written as it is read, in entries of at most 4 MiB.
    ///
    /// Fails with [`Error::NotFound`], [`Error::InvalidStatus`] (the tenant
    /// is being provisioned or deleted) and [`Error::ChecksumMismatch`] when
    /// the tenant's migration history is not the application's (its DDL could
    /// not be written).
    ///
    /// ```no_run
    /// # async fn run(hidra: hidra::Hidra) -> hidra::Result<()> {
    /// use hidra::archive::ExportOptions;
    ///
    /// let id = hidra::TenantId::new("acme")?;
    /// let mut body = Vec::new(); // or a file, a socket, a response body
    /// let summary = hidra
    ///     .export_tenant(&id, &mut body, ExportOptions::new().on_progress(|p| {
    ///         eprintln!("{}: {} rows", p.table, p.rows);
    ///     }))
    ///     .await?;
    /// assert_eq!(summary.bytes, body.len() as u64);
    /// # Ok(()) }
    /// ```
    ///
    /// As an HTTP response body, through a pipe: the export runs in a task
    /// of its own and the body reads the other end as it is written (with
    /// axum, `Body::from_stream(tokio_util::io::ReaderStream::new(reader))`).
    /// A failure after the response has started ends the body early: the
    /// client gets a truncated archive, which an import refuses; log the
    /// task's error.
    ///
    /// ```no_run
    /// # async fn run(hidra: hidra::Hidra, id: hidra::TenantId) {
    /// use hidra::archive::ExportOptions;
    /// use tokio::io::AsyncReadExt;
    ///
    /// let (writer, mut reader) = tokio::io::duplex(256 * 1024);
    /// let export = tokio::spawn(async move {
    ///     hidra.export_tenant(&id, writer, ExportOptions::new()).await
    /// });
    /// let mut first = [0u8; 512];
    /// reader.read_exact(&mut first).await.expect("the first tar header");
    /// // … hand `reader` to the response, then:
    /// # drop(reader);
    /// if let Ok(Err(e)) = export.await {
    ///     tracing::warn!(error = %e, "export failed mid-way");
    /// }
    /// # }
    /// ```
    pub async fn export_tenant<W>(
        &self,
        id: &TenantId,
        out: W,
        options: ExportOptions,
    ) -> Result<ExportSummary>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let started = std::time::Instant::now();
        let mut shared = self.archive_conn().await?;
        let mut tx = snapshot(&mut shared).await?;
        let tenant = self
            .inner
            .registry
            .store
            .get(&mut tx, id)
            .await?
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        tenant.require_settled("exporting")?;
        let exported_at: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT transaction_timestamp()")
                .fetch_one(&mut *tx)
                .await
                .map_err(Error::db("beginning the export"))?;
        let mut writer = Writer {
            tar: TarWriter::new(out, exported_at.timestamp().max(0) as u64),
            entries: Vec::new(),
            progress: Progress {
                tables_done: 0,
                tables: 0,
                table: String::new(),
                rows: 0,
                total_rows: None,
                bytes: 0,
            },
            on_progress: options.progress.as_deref(),
        };
        let source = Source {
            schema: tenant.placement.schema_ident()?,
            tenant_column: (tenant.placement.strategy == Strategy::RowLevel)
                .then_some(&self.inner.row_level.column),
            id,
        };
        // The tenant's rows from its own server: its database, or the
        // database of the server holding its schema or its rows.
        let home = self.home(&tenant).await?;
        let mut manifest = match (tenant.placement.strategy, &home) {
            (Strategy::Database, _) => {
                let mut conn = self.database_conn_at(&home, &tenant).await?;
                conn.discard_on_drop(true);
                let manifest = self
                    .export_in_snapshot(&mut conn, &tenant, &source, &mut writer)
                    .await?;
                conn.discard_on_drop(false);
                manifest
            }
            (_, crate::servers::Home::Control) => {
                self.export_data(&mut tx, &tenant, &source, &mut writer)
                    .await?
            }
            _ => {
                let mut conn = self.acquire_shared_at(&home).await?.into_pool_conn();
                conn.close_on_drop();
                let manifest = self
                    .export_in_snapshot(&mut conn, &tenant, &source, &mut writer)
                    .await?;
                conn.settled();
                manifest
            }
        };
        manifest.exported_at = exported_at;
        if !options.skip_credentials {
            let tables = [
                ("logins", &options.shared.logins),
                ("api_keys", &options.shared.api_keys),
            ];
            for (kind, table) in tables {
                if let Some(rows) = export_shared(&mut tx, &mut writer, kind, table, id).await? {
                    manifest.shared.push(rows);
                }
            }
        }
        tx.rollback()
            .await
            .map_err(Error::db("ending the export"))?;
        shared.settled();
        drop(shared);

        manifest.entries = std::mem::take(&mut writer.entries);
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        writer.tar.append(MANIFEST, &json).await?;
        let sum = format!("{}  {MANIFEST}\n", sha256_hex(&json));
        writer.tar.append(MANIFEST_SUM, sum.as_bytes()).await?;
        let bytes = writer.tar.written() + 1024;
        writer.tar.finish().await?;
        let summary = ExportSummary {
            tenant: id.clone(),
            migration_version: manifest.migration_version,
            tables: manifest.tables.len(),
            rows: manifest.tables.iter().map(|t| t.rows).sum(),
            logins: shared_rows(&manifest, "logins"),
            api_keys: shared_rows(&manifest, "api_keys"),
            bytes,
        };
        tracing::info!(
            tenant = %id,
            tables = summary.tables,
            rows = summary.rows,
            bytes = summary.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "exported tenant"
        );
        Ok(summary)
    }

    /// [`export_data`](Self::export_data) in a snapshot of its own on
    /// `conn`: the tenant's database, or the server holding its schema.
    async fn export_in_snapshot<W>(
        &self,
        conn: &mut PgConnection,
        tenant: &Tenant,
        source: &Source<'_>,
        writer: &mut Writer<'_, W>,
    ) -> Result<Manifest>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let mut data = snapshot(conn).await?;
        let manifest = self.export_data(&mut data, tenant, source, writer).await?;
        data.rollback()
            .await
            .map_err(Error::db("ending the export"))?;
        Ok(manifest)
    }

    /// The DDL, tables and sequences of the tenant, read on `conn` (in the
    /// snapshot; a row-level tenant is bound first), written to `writer`;
    /// the manifest without shared rows.
    async fn export_data<W: AsyncWrite + Unpin + Send>(
        &self,
        conn: &mut PgConnection,
        tenant: &Tenant,
        source: &Source<'_>,
        writer: &mut Writer<'_, W>,
    ) -> Result<Manifest> {
        if source.tenant_column.is_some() {
            sqlx::query(sql::BIND_TENANT_LOCAL)
                .bind(source.id.as_str())
                .execute(&mut *conn)
                .await
                .map_err(Error::db("binding the row-level tenant"))?;
        }
        let schema = source.schema.as_str();
        let (version, applied) = match source.tenant_column {
            // The row-level tables follow the application's latest migrations
            // (as a move to a schema assumes); the import checks every column.
            Some(_) => {
                let all = &self.inner.migrations.tenant;
                (all.latest(), all.iter().cloned().collect())
            }
            None => self.applied_migrations(conn, &source.schema).await?,
        };
        for m in &applied {
            writer
                .entry(format!("schema/{:020}.sql", m.version), m.sql.as_bytes())
                .await?;
        }
        let tables = match source.tenant_column {
            Some(_) => self.row_level_tables(conn).await?,
            None => crate::strategy::row_level::tables_in_order(conn, schema, None).await?,
        };
        writer.progress.tables = tables.len();
        let mut archived = Vec::with_capacity(tables.len());
        for (i, (name, qualified, _)) in tables.iter().enumerate() {
            let mut columns = copy_columns(conn, qualified).await?;
            let format = copy_format(conn, qualified).await?;
            let statement = match source.tenant_column {
                Some(column) => {
                    columns.retain(|(c, _)| c != column.as_str());
                    sql::template(
                        "COPY (SELECT {columns} FROM {t} WHERE {column} = {id}) \
                         TO STDOUT (FORMAT {format})",
                    )
                    .append("columns", &column_list(&columns))
                    .trusted("t", qualified)
                    .ident("column", column)
                    .literal("id", source.id.as_str())
                    .sql("format", format.option())
                }
                None => sql::template("COPY {t} ({columns}) TO STDOUT (FORMAT {format})")
                    .trusted("t", qualified)
                    .append("columns", &column_list(&columns))
                    .sql("format", format.option()),
            }
            .statement();
            let table = writer
                .copy_out(
                    conn,
                    statement.as_str(),
                    &format!("data/{i:04}"),
                    name,
                    columns,
                    format,
                )
                .await?;
            archived.push(table);
        }
        let sequences = match source.tenant_column {
            Some(_) => Vec::new(),
            None => sequences(conn, schema).await?,
        };
        Ok(Manifest {
            format: FORMAT_VERSION,
            hidra: env!("CARGO_PKG_VERSION").to_owned(),
            exported_at: chrono::Utc::now(),
            tenant: ArchivedTenant {
                id: tenant.id.clone(),
                name: tenant.name.clone(),
                status: tenant.status,
                strategy: tenant.placement.strategy,
                metadata: tenant.metadata.clone(),
                created_at: tenant.created_at,
            },
            migration_version: version,
            migrations: applied
                .iter()
                .map(|m| ArchivedMigration {
                    version: m.version,
                    description: m.description.clone(),
                    checksum: hex(&m.checksum),
                })
                .collect(),
            tables: archived,
            sequences,
            shared: Vec::new(),
            entries: Vec::new(),
        })
    }

    /// The application's migrations applied to `schema`, as its history
    /// records them; the history must match the application's.
    async fn applied_migrations(
        &self,
        conn: &mut PgConnection,
        schema: &Ident,
    ) -> Result<(i64, Vec<Migration>)> {
        let history: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            sql::template(
                "SELECT version, checksum FROM {schema}._hidra_migrations ORDER BY version",
            )
            .ident("schema", schema)
            .finish(),
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("reading the tenant's migration history"))?;
        let ours = &self.inner.migrations.tenant;
        let mut applied = Vec::with_capacity(history.len());
        for (version, checksum) in history {
            match ours.iter().find(|m| m.version == version) {
                Some(m) if m.checksum == checksum => applied.push(m.clone()),
                found => {
                    return Err(Error::ChecksumMismatch {
                        schema: schema.to_string(),
                        detail: format!(
                            "migration {version} applied to it is {} the application's tenant migrations, so its DDL cannot be exported; configure the same migrations",
                            if found.is_some() {
                                "different in"
                            } else {
                                "missing from"
                            }
                        ),
                    });
                }
            }
        }
        Ok((applied.last().map_or(0, |m| m.version), applied))
    }
}

/// The values of the sequences of `schema`.
async fn sequences(conn: &mut PgConnection, schema: &str) -> Result<Vec<ArchivedSequence>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'S' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::db("listing the tenant's sequences"))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let (last_value, is_called): (i64, bool) = sqlx::query_as(
            sql::template("SELECT last_value, is_called FROM {schema}.{name}")
                .name("schema", schema)
                .name("name", &name)
                .finish(),
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("reading a sequence"))?;
        out.push(ArchivedSequence {
            name,
            last_value,
            is_called,
        });
    }
    Ok(out)
}

/// The tenant's rows of a shared credential table, if the table exists.
async fn export_shared<W: AsyncWrite + Unpin + Send>(
    conn: &mut PgConnection,
    writer: &mut Writer<'_, W>,
    kind: &str,
    table: &TableName,
    id: &TenantId,
) -> Result<Option<ArchivedTable>> {
    if !table_exists(conn, table).await? {
        return Ok(None);
    }
    let columns = copy_columns(conn, &table.quoted()).await?;
    let statement = sql::template(
        "COPY (SELECT {columns} FROM {t} WHERE tenant_id = {id}) TO STDOUT (FORMAT binary)",
    )
    .append("columns", &column_list(&columns))
    .table("t", table)
    .literal("id", id.as_str())
    .statement();
    writer.progress.tables += 1;
    let rows = writer
        .copy_out(
            conn,
            statement.as_str(),
            &format!("shared/{kind}"),
            kind,
            columns,
            CopyFormat::Binary,
        )
        .await?;
    Ok(Some(rows))
}

fn shared_rows(manifest: &Manifest, kind: &str) -> u64 {
    manifest
        .shared
        .iter()
        .filter(|t| t.name == kind)
        .map(|t| t.rows)
        .sum()
}
