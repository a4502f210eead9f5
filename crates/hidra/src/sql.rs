//! The one audited place where names become SQL text.
//!
//! Everything else in hidra binds values as parameters. Identifiers (schema, table
//! and column names) cannot be parameters, so they are validated by the types here
//! ([`Ident`]) and always written through [`Ident::quoted`], which doubles embedded
//! quotes even though validation already forbids them. Statements built here are
//! the only ones wrapped in [`sqlx::AssertSqlSafe`].

use std::borrow::Cow;
use std::fmt;

use sqlx::{AssertSqlSafe, SqlStr};

use crate::error::{Error, Result};

/// PostgreSQL's identifier limit (`NAMEDATALEN - 1`), in bytes.
pub(crate) const MAX_IDENT_BYTES: usize = 63;

/// A validated PostgreSQL identifier: lowercase ASCII letters, digits and `_`,
/// starting with a letter or `_`, at most 63 bytes.
///
/// Such names need no quoting to keep their meaning, and hidra quotes them anyway.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Validates `name` as an identifier. `what` names it in the error message.
    pub fn new(name: impl Into<String>, what: &'static str) -> Result<Self> {
        let name = name.into();
        check_ident(&name).map_err(|reason| {
            Error::InvalidConfig(Cow::Owned(format!("{what} {name:?} {reason}")))
        })?;
        Ok(Ident(name))
    }

    /// Builds an identifier the caller has already validated with the same rules.
    pub(crate) fn trusted(name: String) -> Self {
        debug_assert!(check_ident(&name).is_ok(), "untrusted identifier {name:?}");
        Ident(name)
    }

    /// The bare name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier: `"name"`.
    pub fn quoted(&self) -> String {
        quote_ident(&self.0)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Ident {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn check_ident(name: &str) -> std::result::Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("is empty"),
        Some(c) if c.is_ascii_lowercase() || c == '_' => {}
        Some(_) => return Err("must start with a lowercase ASCII letter or `_`"),
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err("may only contain lowercase ASCII letters, digits and `_`");
    }
    if name.len() > MAX_IDENT_BYTES {
        return Err("is longer than PostgreSQL's 63-byte identifier limit");
    }
    Ok(())
}

/// Quotes any string as a SQL identifier, doubling embedded double quotes.
pub(crate) fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes a string as a SQL literal (`'it''s'`), for the few statements that
/// cannot take parameters (utility statements in a multi-statement simple query).
pub(crate) fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A table name, optionally schema-qualified (`public.tenants`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<Ident>,
    name: Ident,
}

impl TableName {
    /// Parses `table` or `schema.table`; each part must be a valid [`Ident`].
    pub fn parse(s: &str) -> Result<Self> {
        match s.split_once('.') {
            Some((schema, name)) => Ok(TableName {
                schema: Some(Ident::new(schema, "schema name")?),
                name: Ident::new(name, "table name")?,
            }),
            None => Ok(TableName {
                schema: None,
                name: Ident::new(s, "table name")?,
            }),
        }
    }

    /// The unqualified table name.
    pub fn name(&self) -> &Ident {
        &self.name
    }

    /// The schema, if qualified.
    pub fn schema(&self) -> Option<&Ident> {
        self.schema.as_ref()
    }

    /// The quoted, possibly qualified name: `"public"."tenants"`.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", schema.quoted(), self.name.quoted()),
            None => self.name.quoted(),
        }
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// The value of `search_path` for a tenant schema followed by the shared schemas:
/// `"tenant_acme", "public"`.
pub(crate) fn search_path_value(schema: &Ident, shared: &[Ident]) -> String {
    let mut out = schema.quoted();
    for s in shared {
        out.push_str(", ");
        out.push_str(&s.quoted());
    }
    out
}

/// The setting's name as a literal, so that the statements below can be
/// built at compile time with `concat!`.
macro_rules! tenant_setting {
    () => {
        "hidra.tenant_id"
    };
}

/// The setting row-level security policies read the current tenant from.
pub(crate) const TENANT_SETTING: &str = tenant_setting!();

/// A transaction-local `search_path` (`$1`) and row-level tenant (`$2`).
pub(crate) const BIND_LOCAL: &str = concat!(
    "SELECT set_config('search_path', $1, true), set_config('",
    tenant_setting!(),
    "', $2, true)"
);

/// A transaction-local row-level tenant (`$1`; `''` for none).
pub(crate) const BIND_TENANT_LOCAL: &str =
    concat!("SELECT set_config('", tenant_setting!(), "', $1, true)");

/// Back to the session's `search_path` and no row-level tenant, for the rest
/// of the transaction.
pub(crate) const UNBIND_LOCAL: &str = concat!(
    "SET LOCAL search_path TO DEFAULT; SELECT set_config('",
    tenant_setting!(),
    "', '', true)"
);

/// `BEGIN` plus a transaction-local `search_path` and row-level tenant, sent as
/// one simple query so the binding costs no extra round trip. Utility `SET`s
/// skip the planner that `SELECT set_config(…)` goes through.
pub(crate) fn begin_scoped(search_path: &str, tenant_id: &str, timeouts: Timeouts) -> SqlStr {
    owned(format!(
        "BEGIN; SET LOCAL search_path TO {search_path}; SET LOCAL {TENANT_SETTING} TO {}{}",
        quote_literal(tenant_id),
        set_timeouts(timeouts, "SET LOCAL"),
    ))
}

/// The managed timeouts in milliseconds, `statement_timeout` first, then
/// `idle_in_transaction_session_timeout`; `None`: not managed (integers, so
/// they go into SQL text as they are).
pub(crate) type Timeouts = [Option<u64>; 2];

/// A tenant database's session timeouts, `None` when none is managed: its
/// connections serve that tenant alone, so the session holds them.
pub(crate) fn database_session_timeouts(t: Timeouts) -> Option<SqlStr> {
    let sets = set_timeouts(t, "SET");
    (!sets.is_empty()).then(|| owned(sets.trim_start_matches("; ").to_owned()))
}

/// `BEGIN` in a tenant database, with its transaction-local timeouts.
pub(crate) fn begin_in_database(t: Timeouts) -> SqlStr {
    owned(format!("BEGIN{}", set_timeouts(t, "SET LOCAL")))
}

/// `; SET statement_timeout TO …` (and the idle one) for the managed
/// timeouts, with `set` (`SET` or `SET LOCAL`). The values are integers.
fn set_timeouts(t: Timeouts, set: &str) -> String {
    let [statement_ms, idle_in_transaction_ms] = t;
    let mut out = String::new();
    if let Some(ms) = statement_ms {
        out.push_str(&format!("; {set} statement_timeout TO {ms}"));
    }
    if let Some(ms) = idle_in_transaction_ms {
        out.push_str(&format!(
            "; {set} idle_in_transaction_session_timeout TO {ms}"
        ));
    }
    out
}

/// The tenant checkout statement: the session `search_path` and row-level
/// tenant, in one simple query (`search_path` is a list of quoted names).
pub(crate) fn bind_session(search_path: &str, tenant_id: &str, timeouts: Timeouts) -> SqlStr {
    owned(format!(
        "SET search_path TO {search_path}; SET {TENANT_SETTING} TO {}{}",
        quote_literal(tenant_id),
        set_timeouts(timeouts, "SET"),
    ))
}

/// `CREATE SCHEMA IF NOT EXISTS` for `schema`.
pub(crate) fn create_schema_if_missing(schema: &Ident) -> String {
    format!("CREATE SCHEMA IF NOT EXISTS {};\n", schema.quoted())
}

/// `ddl` (idempotent statements) as one transaction under the lock that
/// serializes every installation (and the internal schema's creation), with
/// the notices of `IF NOT EXISTS` ("… already exists, skipping") silenced.
pub(crate) fn install_script(ddl: &str) -> SqlStr {
    owned(format!(
        "BEGIN; SET LOCAL client_min_messages TO warning; \
         SELECT pg_advisory_xact_lock({});\n{ddl}\nCOMMIT;",
        crate::migrate::INTERNAL_LOCK
    ))
}

/// The unscoped checkout statement: default `search_path`, no row-level
/// tenant, and the server's own value of each timeout Hidra manages.
pub(crate) fn reset_statement(managed: Timeouts) -> SqlStr {
    let mut sql = String::from(concat!(
        "RESET search_path; SET ",
        tenant_setting!(),
        " TO ''"
    ));
    let [statement_ms, idle_in_transaction_ms] = managed;
    if statement_ms.is_some() {
        sql.push_str("; RESET statement_timeout");
    }
    if idle_in_transaction_ms.is_some() {
        sql.push_str("; RESET idle_in_transaction_session_timeout");
    }
    owned(sql)
}

/// What every per-tenant statement of `schema` ends with (see
/// `scope::statements`): a comment naming the schema, on a line of its own so
/// that a trailing `--` comment of the application's ends before it.
pub(crate) fn statement_tag(schema: &Ident) -> String {
    // A validated identifier cannot contain `*/`.
    format!("\n/* hidra:{} */", schema.as_str())
}

/// `sql` followed by `tag` (from [`statement_tag`]).
pub(crate) fn with_tag(sql: &str, tag: &str) -> String {
    let mut out = String::with_capacity(sql.len() + tag.len());
    out.push_str(sql);
    out.push_str(tag);
    out
}

/// A statement text built here before (shared, so it clones cheaply).
pub(crate) fn shared(sql: std::sync::Arc<str>) -> SqlStr {
    sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(sql))
}

/// The history table every tenant schema keeps, created in `schema` (named,
/// not found through `search_path`: a migration may change that).
pub(crate) fn tenant_history_ddl(schema: &Ident) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}._hidra_migrations (
    version     BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    checksum    BYTEA NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    duration_ms BIGINT NOT NULL
)",
        schema.quoted()
    )
}

/// The statement recording one applied migration in `schema`'s history
/// (`$1` version, `$2` description, `$3` checksum, `$4` duration in ms).
pub(crate) fn record_history(schema: &Ident) -> String {
    format!(
        "INSERT INTO {}._hidra_migrations (version, description, checksum, duration_ms) \
         VALUES ($1, $2, $3, $4)",
        schema.quoted()
    )
}

/// `DROP SCHEMA IF EXISTS "name" CASCADE`.
pub(crate) fn drop_schema(schema: &Ident) -> SqlStr {
    owned(format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.quoted()))
}

/// Marks a statement assembled from validated, quoted parts as safe.
/// Shared (`Arc`) so that prepared statement texts clone cheaply.
pub(crate) fn owned(sql: String) -> SqlStr {
    sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(std::sync::Arc::<str>::from(sql)))
}

/// A bytea literal: `'\\x0a1b…'::bytea`.
pub(crate) fn bytea_literal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2 + 12);
    out.push_str("'\\x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out.push_str("'::bytea");
    out
}

/// The advisory lock key of a schema's migrations (stable across processes).
fn migration_lock_key(schema: &Ident) -> String {
    format!(
        "hashtextextended({}, 0)",
        quote_literal(&format!("hidra.migrate.{schema}"))
    )
}

/// What a migration batch should do besides running the migrations.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    pub(crate) schema: &'a Ident,
    pub(crate) search_path: &'a str,
    /// Wrap in `BEGIN … COMMIT` with the schema's advisory lock, claiming
    /// the new version in `hidra.schema_versions` only from this one (`None`:
    /// no row).
    pub(crate) own_transaction: Option<Option<i64>>,
    /// Create the schema first.
    pub(crate) create_schema: bool,
    /// Create the history table (new schema, or one that never had it).
    pub(crate) create_history: bool,
}

/// The setting with which a transaction tells the registry's trigger that it
/// announces its changes itself, after its commit (see
/// [`announce_after_commit`]).
pub(crate) const DEFER_ANNOUNCEMENT: &str = "hidra.announce_after_commit";

/// `COMMIT`, then the announcement of `id` on the registry's channel, in its
/// own tiny transaction. A transaction that notifies holds PostgreSQL's one
/// notification lock through its commit; a provisioning's commit is long
/// (its DDL), so announcing after it lets provisionings commit side by side.
pub(crate) fn commit_and_announce(id: &crate::TenantId) -> SqlStr {
    owned(format!(
        "COMMIT; SELECT pg_notify({}, {})",
        quote_literal(crate::CHANGES_CHANNEL),
        quote_literal(id.as_str())
    ))
}

/// Column name of the row a batch's claim returns (see [`migration_batch`]).
pub(crate) const CLAIMED_COLUMN: &str = "hidra_claimed";

/// Column name of the row each applied migration returns, so the caller can
/// tell how far a failed batch got.
pub(crate) const APPLIED_COLUMN: &str = "hidra_applied";

/// Builds one simple-query batch that applies `migrations` (in order) to a
/// schema and records them in its history and in `hidra.schema_versions`.
///
/// Each migration's SQL is the application's own, trusted text. It must not
/// contain transaction control (`BEGIN`, `COMMIT`).
pub(crate) fn migration_batch(
    b: &Batch<'_>,
    migrations: &[crate::migrate::Migration],
    final_version: i64,
    final_digest: &[u8],
) -> (SqlStr, Spans) {
    let mut spans = Spans::default();
    let schema_lit = quote_literal(b.schema.as_str());
    let mut sql = String::new();
    let version_row = format!(
        "version = {final_version}, digest = {}, updated_at = now()",
        bytea_literal(final_digest)
    );
    if let Some(expected) = b.own_transaction {
        sql.push_str("BEGIN;\n");
        sql.push_str(&format!(
            "SELECT pg_advisory_xact_lock({});\n",
            migration_lock_key(b.schema)
        ));
        // The claim: the recorded version moves only from the one planned,
        // in the same statement that checks it. A runner that got there first
        // leaves no row to update (a division by zero) or a row to conflict
        // with (a unique violation), before any migration runs; the row it
        // returns tells the caller that the claim passed.
        match expected {
            Some(v) => sql.push_str(&format!(
                "WITH claimed AS (UPDATE hidra.schema_versions SET {version_row} \
                 WHERE schema_name = {schema_lit} AND version = {v} RETURNING 1) \
                 SELECT 1 / count(*) > 0 AS {CLAIMED_COLUMN} FROM claimed;\n"
            )),
            None => sql.push_str(&format!(
                "INSERT INTO hidra.schema_versions (schema_name, version, digest) \
                 VALUES ({schema_lit}, {final_version}, {}) RETURNING true AS {CLAIMED_COLUMN};\n",
                bytea_literal(final_digest),
            )),
        }
    }
    if b.create_schema {
        sql.push_str(&format!("CREATE SCHEMA {};\n", b.schema.quoted()));
    }
    sql.push_str(&format!(
        "SELECT set_config('search_path', {}, true);\n",
        quote_literal(b.search_path)
    ));
    if b.create_history {
        sql.push_str(&tenant_history_ddl(b.schema));
        sql.push_str(";\n");
    }
    for m in migrations {
        sql.push_str("SELECT set_config('hidra.t0', clock_timestamp()::text, true);\n");
        spans.push(&sql);
        sql.push_str(&m.sql);
        sql.push_str("\n;\n");
        sql.push_str(&format!(
            "INSERT INTO {}._hidra_migrations (version, description, checksum, duration_ms) \
             VALUES ({}, {}, {}, (extract(epoch FROM clock_timestamp() - current_setting('hidra.t0')::timestamptz) * 1000)::bigint) \
             RETURNING version AS {APPLIED_COLUMN};\n",
            b.schema.quoted(),
            m.version,
            quote_literal(&m.description),
            bytea_literal(&m.checksum),
        ));
    }
    if b.own_transaction.is_some() {
        sql.push_str("COMMIT;\n");
    } else {
        // A new schema (or a renamed spare): its row is written here.
        sql.push_str(&format!(
            "INSERT INTO hidra.schema_versions (schema_name, version, digest) VALUES ({schema_lit}, {final_version}, {}) \
             ON CONFLICT (schema_name) DO UPDATE SET {version_row};\n",
            bytea_literal(final_digest),
        ));
        sql.push_str("SET LOCAL search_path TO DEFAULT;\n");
    }
    (owned(sql), spans)
}

/// Where each migration's own SQL starts in a batch, in characters (the
/// unit of PostgreSQL's error positions), so that an error is reported at
/// the migration's line, not the batch's. Offsets only: the migrations'
/// text is the caller's, looked at when an error needs it.
#[derive(Debug, Default)]
pub(crate) struct Spans(Vec<usize>);

impl Spans {
    /// One migration sent on its own.
    pub(crate) fn alone() -> Spans {
        Spans(vec![0])
    }

    fn push(&mut self, batch_so_far: &str) {
        self.0.push(batch_so_far.chars().count());
    }

    /// The migration of `batch` (its index) and the line in it that `error`
    /// points at, for a batch sent after `prefix` more characters.
    pub(crate) fn locate(
        &self,
        batch: &[crate::migrate::Migration],
        error: &sqlx::Error,
        prefix: usize,
    ) -> Option<(usize, u32)> {
        use sqlx::postgres::{PgDatabaseError, PgErrorPosition};
        let db = error.as_database_error()?;
        let PgErrorPosition::Original(position) =
            db.try_downcast_ref::<PgDatabaseError>()?.position()?
        else {
            return None;
        };
        // 1-based, in the whole query string.
        let at = position.checked_sub(1)?.checked_sub(prefix)?;
        self.0
            .iter()
            .zip(batch)
            .enumerate()
            .find_map(|(i, (start, m))| {
                let offset = at.checked_sub(*start)?;
                (offset < m.sql.chars().count()).then(|| {
                    let line = m.sql.chars().take(offset).filter(|c| *c == '\n').count() + 1;
                    (i, u32::try_from(line).unwrap_or(u32::MAX))
                })
            })
    }
}

/// Session-level advisory lock / unlock of a schema's migrations, for
/// migrations that cannot run in a transaction.
pub(crate) fn migration_session_lock(schema: &Ident, lock: bool) -> SqlStr {
    let f = if lock {
        "pg_advisory_lock"
    } else {
        "pg_advisory_unlock"
    };
    owned(format!("SELECT {f}({})", migration_lock_key(schema)))
}

/// `SET search_path TO …` for the session (no-transaction migrations only).
pub(crate) fn set_session_search_path(search_path: &str) -> SqlStr {
    owned(format!(
        "SELECT set_config('search_path', {}, false)",
        quote_literal(search_path)
    ))
}

/// `ALTER SCHEMA "from" RENAME TO "to"` and the matching bookkeeping row.
pub(crate) fn rename_schema(from: &Ident, to: &Ident) -> SqlStr {
    owned(format!(
        "ALTER SCHEMA {} RENAME TO {};\n\
         UPDATE hidra.schema_versions SET schema_name = {} WHERE schema_name = {};",
        from.quoted(),
        to.quoted(),
        quote_literal(to.as_str()),
        quote_literal(from.as_str()),
    ))
}

/// `ALTER <keyword> <identity> SET SCHEMA "target"`, moving one object of
/// an adopted schema (see `adopt`). `keyword` is one of Hidra's fixed object
/// keywords (`TABLE`, `TYPE`, `ROUTINE`, …); `identity` is the object's
/// identity as PostgreSQL's `pg_identify_object` quotes it (catalog text,
/// never user input).
pub(crate) fn set_schema(keyword: &'static str, identity: &str, target: &Ident) -> String {
    format!(
        "ALTER {keyword} {identity} SET SCHEMA {};\n",
        target.quoted()
    )
}

/// `CAST($n::text AS <type>)`: a value read as text, compared with a column
/// of type `column_type` (as PostgreSQL's `format_type` spells it), so that
/// an index on the column still serves the comparison.
pub(crate) fn text_param_as(n: u8, column_type: &str) -> String {
    format!("CAST(${n}::text AS {column_type})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn idents_are_validated() {
        assert!(Ident::new("tenant_acme", "x").is_ok());
        assert!(Ident::new("_x1", "x").is_ok());
        for bad in ["", "Acme", "a-b", "a b", "a\"b", "1a", "é", &"a".repeat(64)] {
            assert!(Ident::new(bad, "x").is_err(), "{bad:?} accepted");
        }
        assert!(Ident::new("a".repeat(63), "x").is_ok());
    }

    #[test]
    fn tables_parse_and_quote() {
        let t = TableName::parse("public.tenants").unwrap();
        assert_eq!(t.quoted(), "\"public\".\"tenants\"");
        assert_eq!(TableName::parse("tenants").unwrap().quoted(), "\"tenants\"");
        assert!(TableName::parse("public.ten;ants").is_err());
        assert!(TableName::parse("a.b.c").is_err());
    }

    #[test]
    fn search_path_is_quoted_list() {
        let path = search_path_value(
            &Ident::trusted("tenant_a".into()),
            &[Ident::trusted("public".into())],
        );
        assert_eq!(path, "\"tenant_a\", \"public\"");
        assert_eq!(bytea_literal(&[0, 255]), "'\\x00ff'::bytea");
        let none = [None, None];
        assert_eq!(
            begin_scoped(&path, "o'neil", none).as_str(),
            "BEGIN; SET LOCAL search_path TO \"tenant_a\", \"public\"; \
             SET LOCAL hidra.tenant_id TO 'o''neil'"
        );
        assert_eq!(
            bind_session(&path, "o'neil", none).as_str(),
            "SET search_path TO \"tenant_a\", \"public\"; SET hidra.tenant_id TO 'o''neil'"
        );
        assert!(reset_statement(none).as_str().contains(TENANT_SETTING));
        let managed = [Some(250), None];
        assert!(
            bind_session(&path, "o'neil", managed)
                .as_str()
                .ends_with("; SET statement_timeout TO 250")
        );
        assert!(
            begin_scoped(&path, "o'neil", managed)
                .as_str()
                .ends_with("; SET LOCAL statement_timeout TO 250")
        );
        assert!(
            reset_statement(managed)
                .as_str()
                .ends_with("; RESET statement_timeout")
        );
    }
}
