//! [`Hidra::import_tenant`]: check a whole archive, then restore it in one
//! transaction.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use sqlx::{Connection, PgConnection};
use tokio::io::BufReader;

use super::export::{column_list, copy_columns, table_exists};
use super::rows::RowCounter;
use super::tar::{Entry, TarReader};
use super::{
    ArchivedTable, FORMAT_VERSION, ImportOptions, ImportSummary, MANIFEST, MANIFEST_SUM, Manifest,
    Progress, hex, sha256_hex,
};
use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::lifecycle::ProvisioningLock;
use crate::migrate::{self, Migrations};
use crate::sql::{self, Ident, Statement, TableName};
use crate::tenant::{NewTenant, Placement, Strategy, Tenant, TenantId, TenantStatus};

type Reader = TarReader<BufReader<tokio::fs::File>>;

fn corrupt(reason: impl Into<String>) -> Error {
    Error::ArchiveCorrupt {
        reason: reason.into().into(),
    }
}

async fn open(path: &Path) -> Result<Reader> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| Error::ArchiveIo {
            context: "opening the archive",
            source,
        })?;
    Ok(TarReader::new(BufReader::with_capacity(1 << 20, file)))
}

/// Reads the whole archive at `path` and checks every byte of it; returns
/// its manifest.
pub(super) async fn verify_file(path: &Path) -> Result<Manifest> {
    let mut reader = open(path).await?;
    let mut seen: HashMap<String, (u64, String)> = HashMap::new();
    let (mut manifest, mut sum) = (None, None);
    while let Some(Entry { path, data }) = reader.next().await? {
        match path.as_str() {
            MANIFEST => manifest = Some(data),
            MANIFEST_SUM => sum = Some(data),
            _ => {
                let digest = sha256_hex(&data);
                if seen
                    .insert(path.clone(), (data.len() as u64, digest))
                    .is_some()
                {
                    return Err(corrupt(format!("entry {path} appears twice")));
                }
            }
        }
    }
    let (Some(manifest), Some(sum)) = (manifest, sum) else {
        return Err(corrupt(
            "it has no manifest: the archive is truncated, or not a tenant archive",
        ));
    };
    let expected = std::str::from_utf8(&sum)
        .ok()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default();
    if expected != sha256_hex(&manifest) {
        return Err(corrupt("manifest.json does not match its checksum"));
    }
    // The format first: a later format may have another shape.
    let format = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|v| v.get("format").and_then(|f| f.as_u64()))
        .ok_or_else(|| corrupt("manifest.json has no format version"))?;
    if format != u64::from(FORMAT_VERSION) {
        return Err(Error::ArchiveFormat {
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    let manifest: Manifest = serde_json::from_slice(&manifest)
        .map_err(|e| corrupt(format!("manifest.json cannot be read: {e}")))?;
    for entry in &manifest.entries {
        match seen.remove(&entry.path) {
            None => return Err(corrupt(format!("entry {} is missing", entry.path))),
            Some((bytes, digest)) if bytes != entry.bytes || digest != entry.sha256 => {
                return Err(corrupt(format!(
                    "entry {} does not match its checksum",
                    entry.path
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = seen.keys().next() {
        return Err(corrupt(format!(
            "entry {extra} is not listed in the manifest"
        )));
    }
    let listed: HashSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    for table in manifest.tables.iter().chain(&manifest.shared) {
        if let Some(chunk) = table.chunks.iter().find(|c| !listed.contains(c.as_str())) {
            return Err(corrupt(format!("entry {chunk} is missing")));
        }
    }
    Ok(manifest)
}

/// Reads the archive's entries in order, checking each against the
/// manifest again (the file may have changed since it was verified).
struct Loader<'a> {
    reader: Reader,
    sums: HashMap<&'a str, &'a str>,
    progress: Progress,
    on_progress: Option<&'a (dyn Fn(&Progress) + Send + Sync)>,
}

impl Loader<'_> {
    /// The data of entry `path`, skipping the entries before it.
    async fn entry(&mut self, path: &str) -> Result<Vec<u8>> {
        loop {
            let entry = self
                .reader
                .next()
                .await?
                .ok_or_else(|| corrupt(format!("entry {path} is missing")))?;
            if entry.path == path {
                if self.sums.get(path).copied() != Some(sha256_hex(&entry.data).as_str()) {
                    return Err(corrupt(format!("entry {path} does not match its checksum")));
                }
                return Ok(entry.data);
            }
        }
    }

    /// Loads an archived table's rows into `target` with binary `COPY`.
    async fn copy_in(
        &mut self,
        conn: &mut PgConnection,
        table: &ArchivedTable,
        target: &str,
    ) -> Result<u64> {
        self.progress.table = table.name.clone();
        let mut copy = conn
            .copy_in_raw(
                sql::template("COPY {target} ({columns}) FROM STDIN (FORMAT {format})")
                    .trusted("target", target)
                    .append("columns", &column_list(&table.columns))
                    .sql("format", table.format.option())
                    .statement()
                    .as_str(),
            )
            .await
            .map_err(Error::db("starting to load a table"))?;
        let mut counter = RowCounter::new(table.format);
        for chunk in &table.chunks {
            let data = match self.entry(chunk).await {
                Ok(data) => data,
                Err(e) => {
                    let _ = copy.abort("the archive is damaged").await;
                    return Err(e);
                }
            };
            let before = counter.rows();
            if let Err(e) = counter.feed(&data) {
                let _ = copy.abort("the archive is damaged").await;
                return Err(e);
            }
            self.progress.bytes += data.len() as u64;
            self.progress.rows += counter.rows() - before;
            copy.send(data)
                .await
                .map_err(Error::db("loading a table's rows"))?;
            self.report();
        }
        if !counter.is_complete() || counter.rows() != table.rows {
            let _ = copy.abort("the archive is damaged").await;
            return Err(corrupt(format!(
                "table {} holds {} rows where the manifest says {}",
                table.name,
                counter.rows(),
                table.rows
            )));
        }
        copy.finish()
            .await
            .map_err(Error::db("loading a table's rows"))?;
        self.progress.tables_done += 1;
        self.report();
        Ok(counter.rows())
    }

    fn report(&self) {
        if let Some(f) = self.on_progress {
            f(&self.progress);
        }
    }
}

fn refused(id: &TenantId, reason: impl Into<String>) -> Error {
    Error::ImportRefused {
        id: id.clone(),
        reason: reason.into().into(),
    }
}

/// The credentials an import wrote.
#[derive(Default)]
struct Credentials {
    logins: u64,
    api_keys: u64,
    api_keys_left_out: u64,
}

impl Plan<'_> {
    /// Whether the archived shared rows `archived` are imported: not when
    /// asked to skip them, API keys only under the archived id, and an
    /// empty table not at all.
    fn imports(&self, archived: &ArchivedTable) -> bool {
        let same_id = self.id == self.manifest.tenant.id;
        !self.options.skip_credentials
            && (archived.name != "api_keys" || same_id)
            && archived.rows > 0
    }
}

impl Credentials {
    fn summary(self, plan: &Plan<'_>, tenant: Tenant, tables: usize, rows: u64) -> ImportSummary {
        ImportSummary {
            tenant,
            archived_version: plan.manifest.migration_version,
            tables,
            rows,
            logins: self.logins,
            api_keys: self.api_keys,
            api_keys_left_out: self.api_keys_left_out,
        }
    }
}

/// What an import restores, decided before anything is created.
struct Plan<'a> {
    manifest: &'a Manifest,
    options: &'a ImportOptions,
    id: TenantId,
    /// The application's migrations up to the archive's version.
    base: Migrations,
}

impl Hidra {
    /// Restores a tenant from the archive at `path` (see [`crate::archive`]),
    /// all or nothing, under its own id or [`ImportOptions::as_id`], onto its
    /// own strategy or [`ImportOptions::strategy`].
    ///
    /// The whole archive is checked before anything is created: a damaged,
    /// truncated or altered archive fails with [`Error::ArchiveCorrupt`], one
    /// of another format version with [`Error::ArchiveFormat`], one whose
    /// migrations the application does not have (or has changed) with
    /// [`Error::ImportRefused`], a taken id with [`Error::AlreadyExists`].
    /// The tenant is then built and loaded in one transaction, brought to the
    /// latest migration, and returned with its status at export.
    ///
    /// ```no_run
    /// # async fn run(hidra: hidra::Hidra) -> hidra::Result<()> {
    /// use hidra::archive::ImportOptions;
    ///
    /// let restored = hidra
    ///     .import_tenant("acme.tar", ImportOptions::new().as_id(hidra::TenantId::new("acme-restored")?))
    ///     .await?;
    /// println!("{} rows in {} tables", restored.rows, restored.tables);
    /// # Ok(()) }
    /// ```
    pub async fn import_tenant(
        &self,
        path: impl AsRef<Path>,
        options: ImportOptions,
    ) -> Result<ImportSummary> {
        let path = path.as_ref();
        let started = std::time::Instant::now();
        let manifest = verify_file(path).await?;
        let id = options
            .as_id
            .clone()
            .unwrap_or_else(|| manifest.tenant.id.clone());
        let strategy = options.strategy.unwrap_or(manifest.tenant.strategy);
        let plan = Plan {
            base: self.archived_migrations(&manifest, &id)?,
            manifest: &manifest,
            options: &options,
            id,
        };
        if self.tenant(&plan.id).await?.is_some() {
            return Err(Error::AlreadyExists(plan.id.clone()));
        }
        if let Some(server) = &options.server {
            if strategy == Strategy::RowLevel {
                return Err(refused(
                    &plan.id,
                    "a row-level archive is imported on the control server only: import it there, then move it with `Hidra::move_to_server` (`hidra tenant move ID --to-server NAME`), or import it as schema or database",
                ));
            }
            // Before anything is built; the move checks again.
            self.check_active_server(server).await?;
        }
        self.require_ready(strategy).await?;
        let loaded: Vec<&ArchivedTable> = (manifest.tables.iter())
            .chain(manifest.shared.iter().filter(|t| plan.imports(t)))
            .collect();
        let sums = manifest
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.sha256.as_str()))
            .collect();
        let mut loader = Loader {
            reader: open(path).await?,
            sums,
            progress: Progress {
                tables_done: 0,
                tables: loaded.len(),
                table: String::new(),
                rows: 0,
                total_rows: Some(loaded.iter().map(|t| t.rows).sum()),
                bytes: 0,
            },
            on_progress: options.progress.as_deref(),
        };
        // A database of its own, or the shared database (a schema, then
        // placed under the strategy asked for).
        let summary = if strategy == Strategy::Database {
            self.import_database(&plan, &mut loader).await?
        } else {
            self.import_shared(&plan, strategy, &mut loader).await?
        };
        let summary = match &options.server {
            Some(server) => self.place_import(summary, server).await?,
            None => summary,
        };
        tracing::info!(
            tenant = %summary.tenant.id,
            from = %manifest.tenant.id,
            strategy = %strategy,
            rows = summary.rows,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "imported tenant"
        );
        Ok(summary)
    }

    /// Moves a tenant just imported on the control server to `server`; if
    /// the move fails, the import is taken back (the tenant deprovisioned),
    /// so that an import onto a server is all or nothing too.
    async fn place_import(
        &self,
        mut summary: ImportSummary,
        server: &crate::ServerName,
    ) -> Result<ImportSummary> {
        let id = summary.tenant.id.clone();
        match self.move_to_server(&id, Some(server)).await {
            Ok(moved) => {
                summary.tenant = moved.tenant;
                Ok(summary)
            }
            Err(e) => {
                let undo = self.deprovision(&id, crate::Confirmation::of(&id)).await;
                if let Err(undo) = undo {
                    tracing::error!(tenant = %id, error = %undo, "could not take back an import whose move to its server failed");
                }
                Err(e)
            }
        }
    }

    /// The application's migrations up to the archive's version, which must
    /// be the archive's own (same versions and checksums).
    fn archived_migrations(&self, manifest: &Manifest, id: &TenantId) -> Result<Migrations> {
        let ours = &self.inner.migrations.tenant;
        if ours.iter().any(|m| m.no_tx) {
            return Err(refused(
                id,
                "an import builds the tenant in one transaction: `-- no-transaction` migrations cannot be part of it",
            ));
        }
        let base: Vec<_> = ours
            .iter()
            .take_while(|m| m.version <= manifest.migration_version)
            .cloned()
            .collect();
        let matches = base.len() == manifest.migrations.len()
            && base
                .iter()
                .zip(&manifest.migrations)
                .all(|(m, a)| m.version == a.version && hex(&m.checksum) == a.checksum);
        if !matches {
            let first = base
                .iter()
                .zip(&manifest.migrations)
                .find(|(m, a)| m.version != a.version || hex(&m.checksum) != a.checksum)
                .map(|(_, a)| a.version)
                .or_else(|| manifest.migrations.get(base.len()).map(|a| a.version))
                .unwrap_or(manifest.migration_version);
            return Err(refused(
                id,
                format!(
                    "the archive's tenant migration {first} is missing from the application's tenant migrations or differs from it; import with the migrations the tenant was exported with (the archive's schema/ entries hold their SQL)"
                ),
            ));
        }
        Migrations::from_list(base)
    }

    /// Schema and row-level targets: one transaction in the shared database.
    async fn import_shared(
        &self,
        plan: &Plan<'_>,
        strategy: Strategy,
        loader: &mut Loader<'_>,
    ) -> Result<ImportSummary> {
        let schema = self.inner.schema.naming.schema_for(&plan.id);
        let mut conn = self.archive_conn().await?;
        self.ensure_internal_for(&mut conn, &plan.id).await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the import"))?;
        let draft = self.import_draft(plan, crate::strategy::schema::placement(&schema));
        let tenant = self.inner.registry.store.insert(&mut tx, &draft).await?;
        let path = self.binding(&tenant)?.search_path;
        let (tables, rows) = self
            .restore_tables(&mut tx, plan, &schema, &path, true, loader)
            .await?;
        let credentials = self.restore_credentials(&mut tx, plan, loader).await?;
        let tenant = self.place_from_schema(&mut tx, tenant, strategy).await?;
        let tenant = self.finish_import(&mut tx, plan, &tenant).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the import"))?;
        conn.settled();
        Ok(credentials.summary(plan, tenant, tables, rows))
    }

    /// Database-per-tenant target: as provisioning does, the record is
    /// registered (`provisioning`) first, the database built and loaded in
    /// its own transaction, then the shared rows and the status committed;
    /// on failure the database and the record are removed.
    async fn import_database(
        &self,
        plan: &Plan<'_>,
        loader: &mut Loader<'_>,
    ) -> Result<ImportSummary> {
        let database = self.inner.database.naming.schema_for(&plan.id);
        let schema = Ident::trusted(crate::strategy::database::TENANT_DB_SCHEMA.to_owned());
        let draft = self.import_draft(plan, crate::strategy::database::placement(&database));
        // Held until the row is settled: a killed process leaves a row
        // `hidra doctor --repair` recognises as abandoned.
        let (mut lock, tenant) = ProvisioningLock::register(self, &draft).await?;
        // A database of that name that is not ours (SchemaTaken) must
        // survive the undo: only the record goes.
        let created = sqlx::raw_sql(sql::create_database(&database, None))
            .execute(&mut **lock.conn())
            .await
            .map_err(crate::strategy::database::creation_error(
                &plan.id, &database,
            ));
        if let Err(e) = created {
            self.undo_database_tenant(lock, &tenant, false).await;
            return Err(e);
        }
        let result = async {
            let path = self.binding(&tenant)?.search_path;
            let (tables, rows) = {
                let mut db = self.inner.database.pools.acquire(database.as_str()).await?;
                db.discard_on_drop(true);
                migrate::ensure_internal(&mut db).await?;
                let mut tx = db
                    .begin()
                    .await
                    .map_err(Error::db("beginning the import"))?;
                let loaded = self
                    .restore_tables(&mut tx, plan, &schema, &path, false, loader)
                    .await?;
                tx.commit()
                    .await
                    .map_err(Error::db("committing the tenant database"))?;
                db.discard_on_drop(false);
                loaded
            };
            // On the lock's connection: no second one of the shared pool.
            let mut tx = lock
                .conn()
                .begin()
                .await
                .map_err(Error::db("beginning the import"))?;
            let credentials = self.restore_credentials(&mut tx, plan, loader).await?;
            let tenant = self.finish_import(&mut tx, plan, &tenant).await?;
            tx.commit()
                .await
                .map_err(Error::db("committing the import"))?;
            Ok(credentials.summary(plan, tenant, tables, rows))
        }
        .await;
        match result {
            Ok(_) => lock.release().await,
            Err(_) => self.undo_database_tenant(lock, &tenant, true).await,
        }
        result
    }

    /// The new record: the archived name (or the one asked for) and
    /// metadata, a new incarnation.
    fn import_draft(&self, plan: &Plan<'_>, placement: Placement) -> Tenant {
        let archived = &plan.manifest.tenant;
        let new = NewTenant::new(plan.id.clone())
            .name(plan.options.name.clone().unwrap_or(archived.name.clone()))
            .metadata(archived.metadata.clone());
        self.draft(new, placement)
    }

    /// The archived status, in the import's transaction.
    async fn finish_import(
        &self,
        tx: &mut PgConnection,
        plan: &Plan<'_>,
        tenant: &Tenant,
    ) -> Result<Tenant> {
        let status = match plan.manifest.tenant.status {
            TenantStatus::Suspended => TenantStatus::Suspended,
            _ => TenantStatus::Active,
        };
        self.inner
            .registry
            .store
            .update_status(tx, &tenant.id, &[TenantStatus::Provisioning], status)
            .await?
            .ok_or_else(|| Error::NotFound(tenant.id.clone()))
    }

    /// Builds `schema` at the archive's version (creating it when `create`),
    /// loads the archived rows and sequences, and migrates it to the latest
    /// version, in the caller's transaction. Returns tables and rows loaded.
    async fn restore_tables(
        &self,
        tx: &mut PgConnection,
        plan: &Plan<'_>,
        schema: &Ident,
        search_path: &str,
        create: bool,
        loader: &mut Loader<'_>,
    ) -> Result<(usize, u64)> {
        let manifest = plan.manifest;
        let base: Vec<_> = plan.base.iter().cloned().collect();
        let build = Build {
            id: &plan.id,
            schema,
            search_path,
        };
        migrate_in(tx, &build, true, create, &base, &plan.base).await?;

        let targets =
            crate::strategy::row_level::tables_in_order(tx, schema.as_str(), None).await?;
        crate::moves::truncate(tx, &targets).await?;
        let mut rows = 0;
        let mut tables = 0;
        for table in &manifest.tables {
            let Some((_, target, _)) = targets.iter().find(|t| t.0 == table.name) else {
                if table.rows == 0 {
                    continue;
                }
                return Err(refused(
                    &plan.id,
                    format!(
                        "table {} of the archive has no counterpart in the tenant schema its migrations build",
                        table.name
                    ),
                ));
            };
            check_columns(tx, &plan.id, table, target).await?;
            rows += loader.copy_in(tx, table, target).await?;
            tables += 1;
        }
        if manifest.tenant.strategy == Strategy::RowLevel {
            // Its sequences were shared: start past its own ids.
            for (name, target, _) in &targets {
                crate::moves::advance_sequences(tx, target, schema.as_str(), name).await?;
            }
        }
        for seq in &manifest.sequences {
            sqlx::query("SELECT setval(format('%I.%I', $1::text, $2::text)::regclass, $3, $4)")
                .bind(schema.as_str())
                .bind(&seq.name)
                .bind(seq.last_value)
                .bind(seq.is_called)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("setting a sequence"))?;
        }
        let all = &self.inner.migrations.tenant;
        let rest = all.after(manifest.migration_version);
        if !rest.is_empty() {
            migrate_in(tx, &build, false, false, rest, all).await?;
        }
        Ok((tables, rows))
    }

    /// Writes the archived login and API-key rows under the new id, in the
    /// caller's transaction; see the [module docs](crate::archive) for which.
    async fn restore_credentials(
        &self,
        tx: &mut PgConnection,
        plan: &Plan<'_>,
        loader: &mut Loader<'_>,
    ) -> Result<Credentials> {
        let mut summary = Credentials::default();
        for archived in &plan.manifest.shared {
            let (table, key, count) = match archived.name.as_str() {
                "logins" => (&plan.options.shared.logins, "email", &mut summary.logins),
                "api_keys" => (
                    &plan.options.shared.api_keys,
                    "key_id",
                    &mut summary.api_keys,
                ),
                other => return Err(corrupt(format!("unknown shared table {other}"))),
            };
            if !plan.imports(archived) {
                if archived.name == "api_keys" {
                    summary.api_keys_left_out += archived.rows;
                }
                continue;
            }
            *count = restore_shared(tx, &plan.id, archived, table, key, loader).await?;
        }
        Ok(summary)
    }
}

/// Where [`migrate_in`] builds.
struct Build<'a> {
    id: &'a TenantId,
    schema: &'a Ident,
    search_path: &'a str,
}

/// Applies `migrations` to the schema in the caller's transaction,
/// recording them (and the version they reach) as provisioning does: the
/// first batch creates the history table (and the schema when
/// `create_schema`).
async fn migrate_in(
    tx: &mut PgConnection,
    build: &Build<'_>,
    first: bool,
    create_schema: bool,
    migrations: &[migrate::Migration],
    all: &Migrations,
) -> Result<()> {
    let Build {
        id,
        schema,
        search_path,
    } = *build;
    let version = migrations.last().map_or(0, |m| m.version);
    let digest = all.digest_at(version).expect("one of ours");
    let (batch, spans) = migrate::migration_batch(
        &migrate::Batch {
            schema,
            search_path,
            own_transaction: None,
            create_schema,
            create_history: first,
        },
        migrations,
        version,
        digest,
    );
    migrate::execute_batch(tx, batch).await.map_err(|f| {
        let duplicate = crate::error::db_code(&f.error)
            .is_some_and(|(code, _)| code == crate::error::sqlstate::DUPLICATE_SCHEMA);
        match migrate::failed_migration(migrations, &spans, &f.error, 0, f.applied) {
            _ if create_schema && f.applied == 0 && duplicate => Error::SchemaTaken {
                id: id.clone(),
                schema: schema.to_string(),
            },
            Some(failed) => failed.error(schema.as_str(), f.error),
            None => Error::Database {
                context: "building the tenant schema",
                source: f.error,
            },
        }
    })
}

/// Every archived column must exist in `target` with the same type.
async fn check_columns(
    tx: &mut PgConnection,
    id: &TenantId,
    table: &ArchivedTable,
    target: &str,
) -> Result<()> {
    let have = copy_columns(tx, target).await?;
    for (name, ty) in &table.columns {
        match have.iter().find(|(n, _)| n == name) {
            Some((_, t)) if t == ty => {}
            found => {
                return Err(refused(
                    id,
                    format!(
                        "column {}.{name} is {ty} in the archive but {} in the schema the migrations build",
                        table.name,
                        found.map_or("missing", |(_, t)| t.as_str())
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Loads archived shared rows into a temporary copy of `table`, refuses
/// keys that are taken, and inserts them under `id`.
async fn restore_shared(
    tx: &mut PgConnection,
    id: &TenantId,
    archived: &ArchivedTable,
    table: &TableName,
    key: &str,
    loader: &mut Loader<'_>,
) -> Result<u64> {
    if !table_exists(tx, table).await? {
        return Err(refused(
            id,
            format!(
                "the archive holds {} rows of {} but table {table} does not exist; create it (`hidra init`) or import without credentials",
                archived.rows, archived.name
            ),
        ));
    }
    check_columns(tx, id, archived, &table.quoted()).await?;
    let mut temp = Statement::new();
    temp.name(&format!("hidra_import_{}", archived.name));
    sqlx::raw_sql(
        sql::template("CREATE TEMPORARY TABLE {temp} (LIKE {t}) ON COMMIT DROP")
            .append("temp", &temp)
            .table("t", table)
            .finish(),
    )
    .execute(&mut *tx)
    .await
    .map_err(Error::db("staging shared rows"))?;
    let rows = loader.copy_in(tx, archived, temp.as_str()).await?;
    let taken: Option<String> = sqlx::query_scalar(
        sql::template("SELECT s.{key}::text FROM {temp} s JOIN {t} t ON t.{key} = s.{key} LIMIT 1")
            .name("key", key)
            .append("temp", &temp)
            .table("t", table)
            .finish(),
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(Error::db("checking shared rows"))?;
    if let Some(taken) = taken {
        return Err(refused(
            id,
            format!(
                "{} {taken:?} of the archive is already registered in {table} (to another tenant); import without credentials, or remove it first",
                if archived.name == "logins" {
                    "email"
                } else {
                    "API key"
                }
            ),
        ));
    }
    let mut values = Statement::new();
    for (i, (c, _)) in archived.columns.iter().enumerate() {
        if i > 0 {
            values.sql(", ");
        }
        if c == "tenant_id" {
            values.sql("$1");
        } else {
            values.name(c);
        }
    }
    sqlx::query(
        sql::template("INSERT INTO {t} ({columns}) SELECT {values} FROM {temp}")
            .table("t", table)
            .append("columns", &column_list(&archived.columns))
            .append("values", &values)
            .append("temp", &temp)
            .finish(),
    )
    .bind(id.as_str())
    .execute(&mut *tx)
    .await
    .map_err(Error::db("writing shared rows"))?;
    sqlx::raw_sql(
        sql::template("DROP TABLE {temp}")
            .append("temp", &temp)
            .finish(),
    )
    .execute(&mut *tx)
    .await
    .map_err(Error::db("staging shared rows"))?;
    Ok(rows)
}
