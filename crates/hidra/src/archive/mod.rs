//! Export one tenant to a portable archive, and import it again:
//! [`Hidra::export_tenant`](crate::Hidra::export_tenant) and
//! [`Hidra::import_tenant`](crate::Hidra::import_tenant).
//!
//! A per-tenant backup, a way to move a tenant to another deployment, or to
//! bring it back under another id.
//!
//! ```no_run
//! use hidra::archive::{ExportOptions, ImportOptions};
//! use hidra::{Hidra, Strategy, TenantId};
//!
//! # async fn run(hidra: Hidra) -> hidra::Result<()> {
//! let acme = TenantId::new("acme")?;
//! let file = tokio::fs::File::create("acme.tar").await.expect("create the file");
//! let summary = hidra.export_tenant(&acme, file, ExportOptions::new()).await?;
//! println!("{} tables, {} rows, {} bytes", summary.tables, summary.rows, summary.bytes);
//!
//! let copy = hidra
//!     .import_tenant(
//!         "acme.tar",
//!         ImportOptions::new().as_id(TenantId::new("acme-copy")?).strategy(Strategy::Schema),
//!     )
//!     .await?;
//! println!("imported {}", copy.tenant.id);
//! # Ok(()) }
//! ```
//!
//! # The archive
//!
//! A POSIX tar file (any `tar` lists and extracts it) holding, in order:
//!
//! - `schema/<version>.sql`: the tenant migrations' SQL as applied to the
//!   tenant, up to its version (its schema DDL at that version);
//! - `data/<nnnn>/<chunk>.copy`: each table's rows in PostgreSQL's binary
//!   `COPY` format (text for a table whose binary form would name a type by
//!   its OID, see [`CopyFormat`]), in chunks of at most 4 MiB, parents
//!   before children;
//! - `shared/logins/…`, `shared/api_keys/…`: its rows in the shared login
//!   and API-key tables, when they exist;
//! - `manifest.json`: format version, the registry record, the migration
//!   history (versions and checksums), every table with its columns and
//!   types and row count, the sequences' values, and the size and SHA-256 of
//!   every entry;
//! - `manifest.sha256`: the SHA-256 of `manifest.json`.
//!
//! The manifest comes last because an export streams: the archive can be
//! written into a socket or an HTTP response as it is read from the database.
//!
//! # Consistency
//!
//! An export reads the tenant's tables, its sequences, its registry record
//! and its shared rows in **one `REPEATABLE READ READ ONLY` transaction**:
//! one snapshot, whatever is written meanwhile, without blocking writers. For
//! a tenant in its own database, its tables are read in one snapshot of that
//! database, and its registry record and shared rows in one of the shared
//! database.
//!
//! # Import: all or nothing
//!
//! [`Hidra::import_tenant`](crate::Hidra::import_tenant) first reads the whole
//! archive and checks it: every tar header, the manifest's checksum, every
//! entry's size and SHA-256, the format version, that the application's
//! tenant migrations include the archive's (same versions, same checksums),
//! that the id is free and that the shared rows would not collide. Only then
//! does it create anything: the tenant's schema is built by the
//! application's own migrations up to the archive's version, the rows are
//! loaded with binary `COPY` (row counts checked against the manifest), the
//! sequences are set to their exported values, the migrations after it are
//! applied, the shared rows are written and the registry row is added — all
//! in **one transaction**. For a row-level target the rows are moved into the
//! row-level tables in that same transaction. For a database-per-tenant
//! target the tenant's database is built and loaded in a transaction of its
//! own, then the registry row and shared rows are committed; on any failure
//! the database is dropped again (as provisioning does, a process killed or
//! a future dropped in between leaves a `provisioning` record that
//! [`deprovision`](crate::Hidra::deprovision) removes with its database).
//! A dropped import or export future closes its connections rather than
//! returning them to the pool in the middle of a `COPY`.
//!
//! # Credentials under a new id
//!
//! The registry record gets a new `created_at`, so an imported tenant is a new
//! incarnation: tokens issued before the export are refused (users sign in
//! again), whether the id is the same or not.
//!
//! - **Logins** (the login table maps an email to its tenant) are imported
//!   under the same or a new id: the users come with the tenant's data and
//!   sign in with the same passwords. Emails are unique across tenants, so an
//!   import whose emails are already registered is refused (pass
//!   [`ImportOptions::skip_credentials`] to import without them).
//! - **API keys** are imported only under the **same id**. A key is a bearer
//!   secret whose stored row names its tenant: re-attaching it to another id
//!   would let whoever holds a key of the exported tenant into a tenant it
//!   was never issued for (a template tenant cloned for each new customer
//!   would share its keys with all of them). Under a new id the keys are left
//!   out ([`ImportSummary::api_keys_left_out`] counts them); issue new ones.

mod export;
mod import;
mod rows;
mod tar;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sql::TableName;
use crate::tenant::{Strategy, Tenant, TenantId, TenantStatus};

/// The archive format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The largest data entry written: a table's rows are split into entries of
/// about this size (each a whole number of `COPY` messages).
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

const MANIFEST: &str = "manifest.json";
const MANIFEST_SUM: &str = "manifest.sha256";

/// How far an export or import got, for progress bars.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Progress {
    /// Tables (and shared tables) done.
    pub tables_done: usize,
    /// Tables (and shared tables) in all.
    pub tables: usize,
    /// The table being read or loaded.
    pub table: String,
    /// Rows so far.
    pub rows: u64,
    /// Rows in all, when known (an import knows it from the manifest).
    pub total_rows: Option<u64>,
    /// Bytes of table data so far.
    pub bytes: u64,
}

type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Where a tenant's credentials live in the shared database: the login
/// table and the API key table (by default `public.hidra_logins` and
/// `public.hidra_api_keys`, as `auth::LoginTable` and `auth::ApiKeyTable`
/// default to). Each is exported and imported when it exists.
///
/// ```
/// use hidra::archive::{CredentialTables, ExportOptions};
///
/// let tables = CredentialTables::new().logins("auth.logins")?.api_keys("auth.api_keys")?;
/// let options = ExportOptions::new().credential_tables(tables);
/// # let _ = options;
/// # Ok::<(), hidra::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CredentialTables {
    logins: TableName,
    api_keys: TableName,
}

impl Default for CredentialTables {
    fn default() -> Self {
        CredentialTables {
            logins: TableName::parse("public.hidra_logins").expect("a valid table name"),
            api_keys: TableName::parse("public.hidra_api_keys").expect("a valid table name"),
        }
    }
}

impl CredentialTables {
    /// The default tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// The login table (schema-qualified).
    pub fn logins(mut self, table: &str) -> Result<Self> {
        self.logins = qualified(table, "login table")?;
        Ok(self)
    }

    /// The API key table (schema-qualified).
    pub fn api_keys(mut self, table: &str) -> Result<Self> {
        self.api_keys = qualified(table, "API key table")?;
        Ok(self)
    }
}

fn qualified(table: &str, what: &'static str) -> Result<TableName> {
    let name = TableName::parse(table)?;
    if name.schema().is_none() {
        return Err(Error::InvalidConfig(
            format!("{what} {table:?} must be schema-qualified (e.g. `public.{table}`)").into(),
        ));
    }
    Ok(name)
}

/// How [`Hidra::export_tenant`](crate::Hidra::export_tenant) runs.
#[derive(Clone, Default)]
pub struct ExportOptions {
    progress: Option<ProgressFn>,
    shared: CredentialTables,
    skip_credentials: bool,
}

impl fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportOptions")
            .field("progress", &self.progress.is_some())
            .field("shared", &self.shared)
            .field("skip_credentials", &self.skip_credentials)
            .finish()
    }
}

impl ExportOptions {
    /// The defaults: the tenant's rows in `public.hidra_logins` and
    /// `public.hidra_api_keys` are included when those tables exist.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The setters [`ExportOptions`] and [`ImportOptions`] share.
macro_rules! common_options {
    ($ty:ident, $done:literal, $skip:literal) => {
        impl $ty {
            #[doc = concat!("Called after every chunk of rows ", $done, ".")]
            pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
                self.progress = Some(Arc::new(f));
                self
            }

            /// Where the credentials live, if not in the default tables.
            pub fn credential_tables(mut self, tables: CredentialTables) -> Self {
                self.shared = tables;
                self
            }

            #[doc = $skip]
            pub fn skip_credentials(mut self) -> Self {
                self.skip_credentials = true;
                self
            }
        }
    };
}

common_options!(
    ExportOptions,
    "read",
    "Leaves the tenant's logins and API keys out of the archive."
);
common_options!(
    ImportOptions,
    "loaded",
    "Imports neither logins nor API keys."
);

/// What [`Hidra::export_tenant`](crate::Hidra::export_tenant) wrote.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ExportSummary {
    /// The tenant.
    pub tenant: TenantId,
    /// Its migration version.
    pub migration_version: i64,
    /// Tables written.
    pub tables: usize,
    /// Rows written, over all tables.
    pub rows: u64,
    /// Login rows written.
    pub logins: u64,
    /// API key rows written.
    pub api_keys: u64,
    /// Size of the archive in bytes.
    pub bytes: u64,
}

/// How [`Hidra::import_tenant`](crate::Hidra::import_tenant) restores a tenant.
#[derive(Clone, Default)]
pub struct ImportOptions {
    as_id: Option<TenantId>,
    strategy: Option<Strategy>,
    name: Option<String>,
    skip_credentials: bool,
    server: Option<crate::ServerName>,
    progress: Option<ProgressFn>,
    shared: CredentialTables,
}

impl fmt::Debug for ImportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportOptions")
            .field("as_id", &self.as_id)
            .field("strategy", &self.strategy)
            .field("name", &self.name)
            .field("skip_credentials", &self.skip_credentials)
            .field("server", &self.server)
            .field("progress", &self.progress.is_some())
            .field("shared", &self.shared)
            .finish()
    }
}

impl ImportOptions {
    /// The defaults: the archive's id, the strategy the tenant had, its name.
    pub fn new() -> Self {
        Self::default()
    }

    /// Imports under another id (its API keys are then left out; see the
    /// [module docs](self)).
    pub fn as_id(mut self, id: TenantId) -> Self {
        self.as_id = Some(id);
        self
    }

    /// The strategy to import onto (default: the one it had).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// The display name (default: the archived one).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Imports onto the registered server `server` (default: the control
    /// server): the tenant is built on the control server, then moved there
    /// ([`Hidra::move_to_server`](crate::Hidra::move_to_server)); a move
    /// that fails takes the import back. The server must be `active`, and
    /// the strategy schema or database.
    pub fn on_server(mut self, server: crate::ServerName) -> Self {
        self.server = Some(server);
        self
    }
}

/// What [`Hidra::import_tenant`](crate::Hidra::import_tenant) restored.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ImportSummary {
    /// The new tenant's record.
    pub tenant: Tenant,
    /// The archive's migration version (the tenant is now at the latest).
    pub archived_version: i64,
    /// Tables loaded.
    pub tables: usize,
    /// Rows loaded, over all tables.
    pub rows: u64,
    /// Login rows written.
    pub logins: u64,
    /// API keys written.
    pub api_keys: u64,
    /// API keys in the archive that were not imported (under a new id, or
    /// with [`ImportOptions::skip_credentials`]).
    pub api_keys_left_out: u64,
}

/// What an archive holds, as its manifest says; see [`verify`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Manifest {
    /// The archive format ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The hidra version that wrote it.
    pub hidra: String,
    /// When the export's snapshot was taken.
    pub exported_at: chrono::DateTime<chrono::Utc>,
    /// The tenant's registry record.
    pub tenant: ArchivedTenant,
    /// The tenant's migration version.
    pub migration_version: i64,
    /// The migrations applied to it, in order.
    pub migrations: Vec<ArchivedMigration>,
    /// Its tables, parents before children.
    pub tables: Vec<ArchivedTable>,
    /// Its sequences (none for a row-level tenant, whose sequences are shared).
    pub sequences: Vec<ArchivedSequence>,
    /// Its rows in the shared credential tables.
    pub shared: Vec<ArchivedTable>,
    /// Every entry but the manifest, with its size and SHA-256.
    pub entries: Vec<ArchivedEntry>,
}

/// The registry record in a [`Manifest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArchivedTenant {
    /// Its id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Status (`active` or `suspended`).
    pub status: TenantStatus,
    /// Its strategy when exported.
    pub strategy: Strategy,
    /// Its metadata.
    pub metadata: serde_json::Value,
    /// When it was registered.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A migration in a [`Manifest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArchivedMigration {
    /// Version.
    pub version: i64,
    /// Description.
    pub description: String,
    /// sqlx's checksum (SHA-384 of the SQL), hex.
    pub checksum: String,
}

/// A table in a [`Manifest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArchivedTable {
    /// Its name (for shared tables, `logins` or `api_keys`).
    pub name: String,
    /// Its columns, in `COPY` order: name and type.
    pub columns: Vec<(String, String)>,
    /// Rows.
    pub rows: u64,
    /// Its data entries, in order.
    pub chunks: Vec<String>,
    /// The `COPY` format of its data.
    #[serde(default)]
    pub format: CopyFormat,
}

/// The `COPY` format of a table's data in an archive.
///
/// Binary, unless a column's binary form would name a type by its OID (an
/// array of the tenant's own enum or composite type, a composite): those
/// OIDs differ from one schema or database to the next, so such a table is
/// written as text, which names nothing by OID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CopyFormat {
    /// PostgreSQL's binary `COPY` format.
    #[default]
    Binary,
    /// PostgreSQL's text `COPY` format.
    Text,
}

impl CopyFormat {
    /// The `FORMAT` option of `COPY`.
    fn option(self) -> &'static str {
        match self {
            CopyFormat::Binary => "binary",
            CopyFormat::Text => "text",
        }
    }
}

/// A sequence's state in a [`Manifest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArchivedSequence {
    /// Its name.
    pub name: String,
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`.
    pub is_called: bool,
}

/// An entry's size and digest in a [`Manifest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArchivedEntry {
    /// Its path in the archive.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// Reads a whole archive and checks it (every header, the manifest's digest,
/// every entry's size and SHA-256, the format version), changing nothing.
/// [`Hidra::import_tenant`](crate::Hidra::import_tenant) runs the same checks
/// before it creates anything.
///
/// ```no_run
/// # async fn run() -> hidra::Result<()> {
/// let manifest = hidra::archive::verify("acme.tar").await?;
/// println!("{} at version {}", manifest.tenant.id, manifest.migration_version);
/// # Ok(()) }
/// ```
pub async fn verify(path: impl AsRef<std::path::Path>) -> Result<Manifest> {
    import::verify_file(path.as_ref()).await
}

impl crate::Hidra {
    /// A shared connection that is closed, not given back, if the export or
    /// import using it is cut off (a dropped future may leave it inside a
    /// transaction or a `COPY`); [`PoolConn::settled`] once it finished
    /// cleanly.
    ///
    /// [`PoolConn::settled`]: crate::scope::PoolConn::settled
    async fn archive_conn(&self) -> Result<crate::scope::PoolConn> {
        let mut conn = self.acquire_shared().await?.into_pool_conn();
        conn.close_on_drop();
        Ok(conn)
    }
}

/// SHA-256, hex.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
