//! The one error type of the core crate.
//!
//! Every fallible function of `hidra` returns [`Result`]. Variants say what went
//! wrong and what to do about it; database failures keep the driver error as their
//! [`source`](std::error::Error::source) so nothing is lost, and they are
//! classified by SQLSTATE code or constraint name, never by message text.

use std::borrow::Cow;

use crate::tenant::{TenantId, TenantStatus};

/// A boxed error from user code (seed hooks, custom stores).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `hidra`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tenant id broke one of the [`TenantId`] rules; no SQL was run for it.
    #[error("invalid tenant id {id:?}: {reason}")]
    InvalidTenantId {
        /// The refused input (shown with escapes, never used in SQL).
        id: String,
        /// The rule it broke.
        reason: Cow<'static, str>,
    },

    /// A configured name (schema prefix, table or column name) is not a safe
    /// PostgreSQL identifier, or a setting is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(Cow<'static, str>),

    /// The database URL could not be parsed.
    #[error("invalid database URL; expected postgres://user[:password]@host[:port]/database")]
    InvalidUrl(#[source] sqlx::Error),

    /// A directory of migrations could not be read.
    #[error("cannot load migrations from {}; check the path and its files' names (`<version>_<description>.sql`)", .dir.display())]
    MigrationSource {
        /// The directory.
        dir: std::path::PathBuf,
        /// What sqlx's loader said.
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A table Hidra's auth or API-key tables live in does not exist: the
    /// application has not created it yet.
    #[error(
        "the table `{table}` does not exist; create it with `{create}` (or `hidra init`) first"
    )]
    TableMissing {
        /// The missing table, qualified.
        table: String,
        /// The call that creates it.
        create: &'static str,
    },

    /// Moving a tenant between these two strategies is not supported.
    #[error("moving a tenant from {from} to {to} is not supported")]
    MoveUnsupported {
        /// Its strategy now.
        from: crate::Strategy,
        /// The strategy asked for.
        to: crate::Strategy,
    },

    /// A move cannot proceed as asked; nothing was changed.
    #[error("cannot move tenant `{id}`: {reason}")]
    MoveRefused {
        /// The tenant.
        id: TenantId,
        /// Why, and what to do.
        reason: Cow<'static, str>,
    },

    /// Adopting an existing schema or splitting shared tables into tenants
    /// ([`Hidra::adopt_schema`](crate::Hidra::adopt_schema),
    /// [`Hidra::adopt_split`](crate::Hidra::adopt_split)) cannot proceed as
    /// asked; nothing was changed. Each problem says what to do.
    #[error("cannot adopt {what}: {}; nothing was changed", .problems.join("; "))]
    AdoptRefused {
        /// What was to be adopted (`schema "public"`).
        what: String,
        /// Every problem found, each with what to do about it.
        problems: Vec<String>,
    },

    /// A tenant with this id is already registered (or being provisioned).
    #[error("tenant `{0}` already exists; pick another id or deprovision the existing one first")]
    AlreadyExists(TenantId),

    /// Another tenant already uses the schema this id maps to (`acme-corp` and
    /// `acme_corp` both map to `tenant_acme_corp`), or a stray schema of that name exists.
    #[error(
        "schema name `{schema}` for tenant `{id}` is already taken by another tenant or an existing schema; pick another id"
    )]
    SchemaTaken {
        /// The tenant whose provisioning was refused.
        id: TenantId,
        /// The schema name in conflict.
        schema: String,
    },

    /// No tenant with this id is registered.
    #[error("tenant `{0}` not found")]
    NotFound(TenantId),

    /// A tenant's record was read before the tenant moved (to another
    /// strategy or server) or was deprovisioned: the checkout refused to
    /// bind it to the old placement (a row-level tenant no longer in the
    /// shared tables, a schema or database that is gone).
    /// [`Hidra::acquire`](crate::Hidra::acquire) and
    /// [`Hidra::begin`](crate::Hidra::begin) read the record again and
    /// retry once by themselves; this reaches you only if it moved again.
    #[error(
        "tenant `{0}` is no longer where its record places it (it moved or was deprovisioned since the record was read); read it again with Hidra::tenant"
    )]
    StaleRecord(TenantId),

    /// The registry places a tenant where its data is not: its schema, the
    /// schema's migration history (`_hidra_migrations`) or its database is
    /// missing. Nothing was bound.
    #[error(
        "tenant `{id}`'s data is missing from where the registry places it ({place}): its schema, that schema's `_hidra_migrations` table or its database is gone; restore it from a backup, or deprovision the tenant"
    )]
    DataMissing {
        /// The tenant.
        id: TenantId,
        /// Its schema or database, as the registry names it.
        place: String,
    },

    /// A server name broke one of the [`ServerName`](crate::ServerName)
    /// rules; no SQL was run for it.
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName {
        /// The refused input (shown with escapes, never used in SQL).
        name: String,
        /// The rule it broke.
        reason: Cow<'static, str>,
    },

    /// A server with this name is registered, or was: the name of a
    /// removed server is never reused.
    #[error(
        "server name `{0}` is taken (by a registered server, or one removed before: names are never reused); pick another name"
    )]
    ServerExists(crate::ServerName),

    /// No server with this name is registered.
    #[error("server `{0}` is not registered; `hidra server list` shows the registered ones")]
    ServerNotFound(crate::ServerName),

    /// A server could not be reached (refused, timed out, or it refused the
    /// login or database); nothing was registered.
    #[error(
        "cannot connect to server `{name}` at {url}; check that it is running and that the URL's host, port, user, password and database are right"
    )]
    ServerUnreachable {
        /// The server.
        name: crate::ServerName,
        /// Its URL, password redacted.
        url: String,
        /// What connecting said.
        #[source]
        source: sqlx::Error,
    },

    /// A server runs a PostgreSQL older than 15; nothing was registered.
    #[error(
        "server `{name}` at {url} runs PostgreSQL {version}; Hidra needs PostgreSQL 15 or later: upgrade it or register another server"
    )]
    ServerUnsupported {
        /// The server.
        name: crate::ServerName,
        /// Its URL, password redacted.
        url: String,
        /// Its `server_version`.
        version: String,
    },

    /// A server still holds tenants (their registry rows name it), so it
    /// cannot be removed; nothing was changed.
    #[error(
        "server `{name}` still holds {tenants} tenant(s); move or deprovision them first (drain it so that it takes no new ones)"
    )]
    ServerInUse {
        /// The server.
        name: crate::ServerName,
        /// How many tenant rows name it.
        tenants: u64,
    },

    /// A registered server could not be used for this tenant's part of a
    /// fleet operation (a migration run reads each server's bookkeeping
    /// once): the cause, said once for the whole server, is the source.
    /// The other servers' tenants are not affected; rerun once it is back.
    #[error(
        "server `{server}` could not be reached or read, so this tenant was left as it is; rerun once the server is back"
    )]
    ServerFailed {
        /// The server.
        server: crate::ServerName,
        /// Why, shared by every tenant of the server.
        #[source]
        source: std::sync::Arc<Error>,
    },

    /// A new tenant was to go to a server that takes no new tenants (it is
    /// draining or read-only); nothing was created.
    #[error(
        "server `{name}` is {state} and takes no new tenants; place the tenant elsewhere, or `hidra server activate {name}`"
    )]
    ServerNotActive {
        /// The server.
        name: crate::ServerName,
        /// Its state.
        state: crate::ServerState,
    },

    /// The placement policy found no server with room for a new tenant
    /// (every active server is at its capacity hint, or the policy refused
    /// them all); nothing was created.
    #[error(
        "no server can take a new tenant ({candidates} candidate(s), none with room): register or activate a server, raise a capacity hint, or name a server for the tenant"
    )]
    NoServerAvailable {
        /// How many servers the policy was offered.
        candidates: usize,
    },

    /// PostgreSQL does not answer (connections are refused or time out);
    /// checkouts fail at once instead of queueing until it does. Retry
    /// shortly: service resumes by itself within about a quarter second of the
    /// server being back.
    #[error("PostgreSQL is unreachable (for {down_for:?}); retry shortly")]
    Unavailable {
        /// How long the server has been unreachable.
        down_for: std::time::Duration,
    },

    /// The tenant already holds its share of the shared pool (see
    /// [`HidraBuilder::tenant_cap`](crate::HidraBuilder::tenant_cap)) and none
    /// of its connections came free in time: one tenant cannot take every
    /// connection from the others. Retry shortly (the web layer answers
    /// `503` with `Retry-After`), or raise the tenant's cap.
    #[error(
        "tenant `{id}` already holds its share of the pool ({cap} connections) and none came free within {waited:?}; retry shortly"
    )]
    TenantBusy {
        /// The tenant at its cap.
        id: TenantId,
        /// Its cap.
        cap: u32,
        /// How long the checkout waited.
        waited: std::time::Duration,
    },

    /// The tenant is not in a state that allows the operation.
    #[error("tenant `{id}` is {status}; {action} needs it to be {expected}")]
    InvalidStatus {
        /// The tenant concerned.
        id: TenantId,
        /// Its current status.
        status: TenantStatus,
        /// What it would have to be.
        expected: &'static str,
        /// The refused operation.
        action: &'static str,
    },

    /// A destructive operation was called without the matching confirmation.
    #[error(
        "refusing to delete tenant `{0}` without confirmation: pass `Confirmation::of(&id)` for the same id"
    )]
    ConfirmationRequired(TenantId),

    /// A migration failed on one schema; that schema was left at its previous version.
    #[error(
        "migration {migration}{} failed on schema `{schema}`; the schema was left as it was: fix the migration and run again",
        .line.map(|l| format!(", line {l},")).unwrap_or_default()
    )]
    MigrationFailed {
        /// The schema being migrated.
        schema: String,
        /// The failing migration: `version (description)`.
        migration: String,
        /// The line of the migration's own SQL the error points at, when
        /// PostgreSQL gave a position.
        line: Option<u32>,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },

    /// The migrations recorded in a schema differ from the ones given: an
    /// applied migration was edited, removed or renumbered.
    #[error(
        "schema `{schema}`: {detail}; an applied migration must never change: restore it and add a new migration instead"
    )]
    ChecksumMismatch {
        /// The schema concerned.
        schema: String,
        /// What differs.
        detail: String,
    },

    /// The seed hook failed while provisioning; everything was rolled back.
    #[error("seed hook failed while provisioning tenant `{id}`; the tenant was rolled back")]
    Seed {
        /// The tenant being provisioned.
        id: TenantId,
        /// What the hook returned.
        #[source]
        source: BoxError,
    },

    /// The work a fan-out ran for a tenant failed ([`crate::fanout`]); the
    /// other tenants' work went on.
    #[error("the work run for tenant `{id}` failed: {source}")]
    TenantWork {
        /// The tenant.
        id: TenantId,
        /// What the work returned.
        #[source]
        source: BoxError,
    },

    /// A tenant archive is damaged, truncated or altered ([`crate::archive`]);
    /// nothing was imported.
    #[error(
        "the tenant archive is damaged: {reason}; nothing was imported: export the tenant again or use an intact copy"
    )]
    ArchiveCorrupt {
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },

    /// A tenant archive was written in a format this version cannot read;
    /// nothing was imported.
    #[error(
        "the tenant archive has format version {found}, this version of hidra reads version {supported}; import it with a matching hidra version"
    )]
    ArchiveFormat {
        /// The archive's format version.
        found: u64,
        /// The one this version reads.
        supported: u32,
    },

    /// Reading or writing a tenant archive failed.
    #[error("i/o error while {context}")]
    ArchiveIo {
        /// What hidra was doing.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An intact archive cannot be imported as asked; nothing was created.
    #[error("cannot import tenant `{id}`: {reason}")]
    ImportRefused {
        /// The id it would have had.
        id: TenantId,
        /// Why, and what to do.
        reason: Cow<'static, str>,
    },

    /// The registry table is missing: the application has not created it yet.
    #[error(
        "the tenant registry table `{0}` does not exist; create it with `Hidra::install()` (or `hidra init`) first"
    )]
    RegistryMissing(String),

    /// A registry row could not be decoded (unknown status, unexpected column type).
    #[error("corrupt registry row for tenant `{id}`: {reason}")]
    CorruptRecord {
        /// The raw id of the row.
        id: String,
        /// What was wrong with it.
        reason: String,
    },

    /// The database refused or failed the operation.
    #[error("database error while {context}")]
    Database {
        /// What hidra was doing.
        context: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },

    /// Row-level isolation does not hold (see [`crate::rls`]); nothing was done.
    #[error("row-level security is not safe to rely on: {}", join(.0))]
    RowLevelInsecure(Vec<crate::strategy::row_level::Finding>),

    /// A throw-away PostgreSQL could not be started or reached (feature `testing`).
    #[error("test database setup failed: {0}")]
    Harness(String),

    /// Hashing a password failed (feature `auth`; argon2 refused its input
    /// or parameters).
    #[cfg(feature = "auth")]
    #[error("hashing a password failed")]
    Hashing(#[source] BoxError),

    /// An authentication or authorization check refused (feature `auth`); the
    /// [`AuthError`](crate::auth::AuthError) names the kind of refusal.
    #[cfg(feature = "auth")]
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

/// Findings, `; `-separated.
fn join(findings: &[crate::strategy::row_level::Finding]) -> String {
    findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The error of a checkout for `id`: a binding that found the tenant
    /// gone from its record's placement ([`refuses_stale_record`]) is
    /// [`Error::StaleRecord`].
    pub(crate) fn for_checkout_of(self, id: &TenantId) -> Error {
        match &self {
            Error::Database {
                source: sqlx::Error::Database(db),
                ..
            } if refuses_stale_record(db.code().as_deref()) => Error::StaleRecord(id.clone()),
            _ => self,
        }
    }

    /// Whether no tenant with the id is registered ([`Error::NotFound`]).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// Whether the id (or the schema or database name it maps to) is taken
    /// ([`Error::AlreadyExists`], [`Error::SchemaTaken`]).
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists(_) | Error::SchemaTaken { .. })
    }

    /// Whether an adoption was refused before anything changed
    /// ([`Error::AdoptRefused`]).
    pub fn is_adopt_refused(&self) -> bool {
        matches!(self, Error::AdoptRefused { .. })
    }

    /// Whether a server name was refused ([`Error::InvalidServerName`]).
    pub fn is_invalid_server_name(&self) -> bool {
        matches!(self, Error::InvalidServerName { .. })
    }

    /// Whether the server name is taken ([`Error::ServerExists`]).
    pub fn is_server_exists(&self) -> bool {
        matches!(self, Error::ServerExists(_))
    }

    /// Whether no server with the name is registered
    /// ([`Error::ServerNotFound`]).
    pub fn is_server_not_found(&self) -> bool {
        matches!(self, Error::ServerNotFound(_))
    }

    /// Whether a server did not answer or runs an unsupported PostgreSQL
    /// ([`Error::ServerUnreachable`], [`Error::ServerUnsupported`]).
    pub fn is_server_unusable(&self) -> bool {
        matches!(
            self,
            Error::ServerUnreachable { .. } | Error::ServerUnsupported { .. }
        )
    }

    /// Whether a server still holds tenants ([`Error::ServerInUse`]).
    pub fn is_server_in_use(&self) -> bool {
        matches!(self, Error::ServerInUse { .. })
    }

    /// Whether a registered server could not be used for this tenant
    /// ([`Error::ServerFailed`]).
    pub fn is_server_failed(&self) -> bool {
        matches!(self, Error::ServerFailed { .. })
    }

    /// Whether a new tenant found no server to go to
    /// ([`Error::ServerNotActive`], [`Error::NoServerAvailable`]).
    pub fn is_no_server(&self) -> bool {
        matches!(
            self,
            Error::ServerNotActive { .. } | Error::NoServerAvailable { .. }
        )
    }

    /// Whether the tenant held its share of the pool
    /// ([`Error::TenantBusy`]).
    pub fn is_tenant_busy(&self) -> bool {
        matches!(self, Error::TenantBusy { .. })
    }

    /// Whether a table Hidra needs has not been created
    /// ([`Error::RegistryMissing`], [`Error::TableMissing`]).
    pub fn is_table_missing(&self) -> bool {
        matches!(self, Error::RegistryMissing(_) | Error::TableMissing { .. })
    }

    /// Whether a migration failed or no longer matches what was applied
    /// ([`Error::MigrationFailed`], [`Error::ChecksumMismatch`]).
    pub fn is_migration_error(&self) -> bool {
        matches!(
            self,
            Error::MigrationFailed { .. } | Error::ChecksumMismatch { .. }
        )
    }

    /// Whether a tenant archive is damaged or of an unknown format
    /// ([`Error::ArchiveCorrupt`], [`Error::ArchiveFormat`]).
    pub fn is_archive_error(&self) -> bool {
        matches!(
            self,
            Error::ArchiveCorrupt { .. } | Error::ArchiveFormat { .. }
        )
    }

    /// Whether the same call may succeed if retried shortly: the server is
    /// unreachable, a connection was lost or could not be had in time, or
    /// the tenant held its share of the pool.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::TenantBusy { .. } => true,
            Error::Database { source, .. } => is_connection_error(source),
            _ => false,
        }
    }

    /// Wraps a driver error with what hidra was doing, as a closure for `map_err`.
    pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Database { context, source }
    }

    /// The SQLSTATE code of the underlying database error, if any (e.g. `"42P01"`).
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Database { source, .. } | Error::MigrationFailed { source, .. } => {
                db_code(source).map(|(code, _)| code)
            }
            _ => None,
        }
    }
}

/// SQLSTATE codes hidra classifies on.
/// Whether a checkout's binding failed with `code` because the tenant is no
/// longer where the record it was bound from places it: the registry's
/// row-level guard refused it (`HD001`), the schema proof found no schema
/// (`3F000`) or no history table (`42P01`), or its database is gone
/// (`3D000`). The connection itself is sound.
pub(crate) fn refuses_stale_record(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            crate::strategy::row_level::STALE_RECORD
                | sqlstate::INVALID_SCHEMA_NAME
                | sqlstate::UNDEFINED_TABLE
                | sqlstate::INVALID_CATALOG_NAME
        )
    )
}

pub(crate) mod sqlstate {
    pub(crate) const INVALID_SCHEMA_NAME: &str = "3F000";
    pub(crate) const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub(crate) const DEADLOCK_DETECTED: &str = "40P01";
    pub(crate) const INVALID_CATALOG_NAME: &str = "3D000";
    pub(crate) const UNIQUE_VIOLATION: &str = "23505";
    pub(crate) const SERIALIZATION_FAILURE: &str = "40001";
    pub(crate) const UNDEFINED_FUNCTION: &str = "42883";
    pub(crate) const DUPLICATE_SCHEMA: &str = "42P06";
    pub(crate) const UNDEFINED_TABLE: &str = "42P01";
}

/// The SQLSTATE code and constraint name of a driver error, if it came from the server.
pub(crate) fn db_code(err: &sqlx::Error) -> Option<(String, Option<String>)> {
    match err {
        sqlx::Error::Database(db) => Some((
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.constraint().map(str::to_owned),
        )),
        _ => None,
    }
}

/// Whether `e` is about the connection rather than the statement: the server
/// went away (an I/O error, SQLSTATE class 08, an administrator shutdown
/// `57P01`–`57P03`), or no connection could be had in time.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}
