//! The one audited place where names and values become SQL text.
//!
//! Everything else in hidra binds values as parameters. Identifiers (schema,
//! table and column names) cannot be parameters, so they are validated by the
//! types here ([`Ident`]) and always written through [`Ident::quoted`], which
//! doubles embedded quotes even though validation already forbids them. The
//! few values that cannot be parameters (utility statements, multi-statement
//! batches) are written through [`quote_literal`] and the other literal
//! helpers here.
//!
//! Statements are assembled with [`Statement`]: fixed text from Hidra's own
//! source, quoted identifiers and literals, integers, and (named as such)
//! text trusted as it is (the application's own migrations and queries).
//! This module is the only one of the core that wraps text in
//! [`sqlx::AssertSqlSafe`]. It depends on nothing of the crate but its error
//! type: what a statement is for is its callers' business.

use std::borrow::Cow;
use std::fmt;

use sqlx::{AssertSqlSafe, SqlStr};

use crate::error::{Error, Result};

/// A SQL statement being assembled, the way Hidra writes SQL text: fixed
/// text (`&'static str`, from Hidra's own source), identifiers through
/// [`Ident::quoted`], literals through [`quote_literal`] and the other
/// helpers here, integers, and text trusted as it is, named as such.
/// [`finish`](Self::finish) marks the result as safe for sqlx.
#[derive(Clone, Debug, Default)]
pub(crate) struct Statement(String);

impl Statement {
    /// An empty statement.
    pub(crate) fn new() -> Self {
        Statement(String::new())
    }

    /// Fixed SQL text.
    pub(crate) fn sql(&mut self, text: &'static str) -> &mut Self {
        self.0.push_str(text);
        self
    }

    /// A quoted identifier: `"name"`.
    pub(crate) fn ident(&mut self, ident: &Ident) -> &mut Self {
        self.0.push_str(&ident.quoted());
        self
    }

    /// An identifier that only PostgreSQL's catalog vouches for (a column
    /// or table name read from it), quoted.
    pub(crate) fn name(&mut self, name: &str) -> &mut Self {
        self.0.push_str(&quote_ident(name));
        self
    }

    /// Quoted identifiers separated by `, `.
    pub(crate) fn names<I>(&mut self, names: I) -> &mut Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for (i, name) in names.into_iter().enumerate() {
            if i > 0 {
                self.0.push_str(", ");
            }
            self.name(name.as_ref());
        }
        self
    }

    /// A quoted, possibly qualified table name: `"public"."tenants"`.
    pub(crate) fn table(&mut self, table: &TableName) -> &mut Self {
        if let Some(schema) = &table.schema {
            self.ident(schema).sql(".");
        }
        self.ident(&table.name)
    }

    /// A part assembled before with this builder (a column list, a clause).
    pub(crate) fn append(&mut self, part: &Statement) -> &mut Self {
        self.0.push_str(&part.0);
        self
    }

    /// A quoted string literal: `'it''s'`.
    pub(crate) fn literal(&mut self, value: &str) -> &mut Self {
        self.0.push_str(&quote_literal(value));
        self
    }

    /// A bytea literal.
    pub(crate) fn bytea(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.push_str(&bytea_literal(bytes));
        self
    }

    /// An integer.
    pub(crate) fn int(&mut self, n: impl Into<i128>) -> &mut Self {
        self.0.push_str(&n.into().to_string());
        self
    }

    /// SQL text taken as it is: the application's own (a migration, a
    /// query it hands over), or text quoted before (a [`TableName`], a
    /// `search_path` value, a name PostgreSQL's catalog quoted).
    pub(crate) fn trusted(&mut self, text: &str) -> &mut Self {
        self.0.push_str(text);
        self
    }

    /// The text so far.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The statement, marked safe for sqlx.
    pub(crate) fn finish(&self) -> SqlStr {
        owned(self.0.clone())
    }

    /// The statement, marked safe for sqlx, without a copy.
    pub(crate) fn into_sql(self) -> SqlStr {
        owned(self.0)
    }

    /// The text, for an API that hands SQL to the application (the auth
    /// tables' recommended DDL).
    #[cfg(feature = "auth")]
    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

/// A statement written as fixed SQL text from Hidra's source with named
/// holes (`{t}`), each filled with one part of the kinds [`Statement`]
/// writes: for statements that read best whole (a table's DDL, a statement
/// naming its table three times). `{{` and `}}` stand for `{` and `}`, as in
/// `format!`. For example
/// `template("SELECT tenant_id FROM {t} WHERE email = $1").table("t", &logins)`.
///
/// Every hole must have its part and every part its hole: a mismatch is a
/// mistake in Hidra's own text, and filling panics on it.
#[derive(Debug)]
#[must_use]
pub(crate) struct Template {
    text: &'static str,
    parts: Vec<(&'static str, Statement)>,
}

/// A [`Template`] of `text`, its holes to be filled.
pub(crate) fn template(text: &'static str) -> Template {
    Template {
        text,
        parts: Vec::new(),
    }
}

impl Template {
    /// Fills `hole` with what `write` writes.
    fn part(mut self, hole: &'static str, write: impl FnOnce(&mut Statement)) -> Self {
        assert!(
            self.parts.iter().all(|(h, _)| *h != hole),
            "SQL template hole {{{hole}}} given two parts"
        );
        let mut part = Statement::new();
        write(&mut part);
        self.parts.push((hole, part));
        self
    }

    /// `hole` filled with a quoted identifier (see [`Statement::ident`]).
    pub(crate) fn ident(self, hole: &'static str, ident: &Ident) -> Self {
        self.part(hole, |s| {
            s.ident(ident);
        })
    }

    /// `hole` filled with a quoted name PostgreSQL's catalog vouches for,
    /// or one Hidra derives from a validated one (see [`Statement::name`]).
    pub(crate) fn name(self, hole: &'static str, name: &str) -> Self {
        self.part(hole, |s| {
            s.name(name);
        })
    }

    /// `hole` filled with a quoted table name (see [`Statement::table`]).
    pub(crate) fn table(self, hole: &'static str, table: &TableName) -> Self {
        self.part(hole, |s| {
            s.table(table);
        })
    }

    /// `hole` filled with a quoted string literal (see [`Statement::literal`]).
    pub(crate) fn literal(self, hole: &'static str, value: &str) -> Self {
        self.part(hole, |s| {
            s.literal(value);
        })
    }

    /// `hole` filled with fixed SQL text (a column list of Hidra's own).
    pub(crate) fn sql(self, hole: &'static str, text: &'static str) -> Self {
        self.part(hole, |s| {
            s.sql(text);
        })
    }

    /// `hole` filled with text taken as it is (see [`Statement::trusted`]).
    pub(crate) fn trusted(self, hole: &'static str, text: &str) -> Self {
        self.part(hole, |s| {
            s.trusted(text);
        })
    }

    /// `hole` filled with a part assembled before with [`Statement`].
    pub(crate) fn append(self, hole: &'static str, part: &Statement) -> Self {
        self.part(hole, |s| {
            s.append(part);
        })
    }

    /// The text with its holes filled.
    ///
    /// # Panics
    ///
    /// On a hole without a part, a part without a hole, or a lone brace.
    pub(crate) fn statement(self) -> Statement {
        let text = self.text;
        let mut out = Statement(String::with_capacity(text.len()));
        let mut used = vec![false; self.parts.len()];
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            out.0.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
                out.0.push_str(&tail[..1]);
                rest = after;
                continue;
            }
            let end = tail
                .strip_prefix('{')
                .and_then(|t| t.find('}'))
                .unwrap_or_else(|| panic!("a lone brace in SQL template {text:?}"));
            let hole = &tail[1..=end];
            let i = self
                .parts
                .iter()
                .position(|(h, _)| *h == hole)
                .unwrap_or_else(|| panic!("no part for hole {{{hole}}} of SQL template {text:?}"));
            out.append(&self.parts[i].1);
            used[i] = true;
            rest = &tail[end + 2..];
        }
        out.0.push_str(rest);
        if let Some(i) = used.iter().position(|u| !u) {
            panic!(
                "part {:?} fills no hole of SQL template {text:?}",
                self.parts[i].0
            );
        }
        out
    }

    /// The filled statement, marked safe for sqlx.
    pub(crate) fn finish(self) -> SqlStr {
        self.statement().into_sql()
    }
}

/// SQL text handed over by the application as it is (a query it runs on
/// every tenant), marked safe for sqlx.
pub(crate) fn trusted(text: &str) -> SqlStr {
    owned(text.to_owned())
}

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

/// `"schema"."name"`: a table of `schema` whose name PostgreSQL's catalog
/// gave, quoted.
pub(crate) fn qualified(schema: &Ident, name: &str) -> String {
    format!("{}.{}", schema.quoted(), quote_ident(name))
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
///
/// With `guard` (the registry's `_bind_row_level` function), the row-level
/// tenant is bound through it instead, which checks the registry first.
/// With `proof` (see [`prove_schema`]), the statement fails unless the
/// tenant's schema is still there.
pub(crate) fn begin_scoped(
    search_path: &str,
    tenant_id: &str,
    guard: Option<&str>,
    proof: Option<&str>,
    timeouts: Timeouts,
) -> SqlStr {
    bind_statement(true, search_path, tenant_id, guard, proof, timeouts)
}

/// What [`begin_scoped`] (`local`) and [`bind_session`] send.
fn bind_statement(
    local: bool,
    search_path: &str,
    tenant_id: &str,
    guard: Option<&str>,
    proof: Option<&str>,
    timeouts: Timeouts,
) -> SqlStr {
    let (begin, set) = if local {
        ("BEGIN; ", "SET LOCAL")
    } else {
        ("", "SET")
    };
    let id = quote_literal(tenant_id);
    // `hidra.tenant_id`: through the guard function, or a utility `SET`.
    let tenant = match guard {
        Some(function) => format!("SELECT {function}({id}, {local})"),
        None => format!("{set} {TENANT_SETTING} TO {id}"),
    };
    owned(format!(
        "{begin}{set} search_path TO {search_path}; {tenant}{}{}",
        set_timeouts(timeouts, set),
        proof.map(|p| format!("; {p}")).unwrap_or_default(),
    ))
}

/// The statement that proves a schema tenant's schema is still where its
/// record places it: a lock on its migration history, which every tenant
/// schema has. Outside the schema it fails (`3F000` or `42P01`) instead of
/// letting unqualified names fall through to the shared schemas; inside a
/// transaction it holds until the end, so a move or a deprovisioning cannot
/// drop the schema under the transaction (they cancel it instead; see
/// `strategy::schema::drop_tenant_schema`). `ACCESS SHARE` conflicts with
/// nothing but such a drop.
pub(crate) fn prove_schema(schema: &Ident) -> String {
    let mut sql = Statement::new();
    sql.sql("LOCK TABLE ")
        .ident(schema)
        .sql("._hidra_migrations IN ACCESS SHARE MODE");
    sql.0
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
/// With `guard` and `proof`, as in [`begin_scoped`] (a session's proof
/// holds for the checkout statement only).
pub(crate) fn bind_session(
    search_path: &str,
    tenant_id: &str,
    guard: Option<&str>,
    proof: Option<&str>,
    timeouts: Timeouts,
) -> SqlStr {
    bind_statement(false, search_path, tenant_id, guard, proof, timeouts)
}

/// `CREATE SCHEMA IF NOT EXISTS` for `schema`.
pub(crate) fn create_schema_if_missing(schema: &Ident) -> String {
    format!("CREATE SCHEMA IF NOT EXISTS {};\n", schema.quoted())
}

/// `ddl` (idempotent statements) as one transaction under the lock that
/// serializes every installation (`lock`: the internal schema's lock), with
/// the notices of `IF NOT EXISTS` ("… already exists, skipping") silenced.
pub(crate) fn install_script(lock: i64, ddl: &str) -> SqlStr {
    let mut sql = Statement::new();
    sql.sql("BEGIN; SET LOCAL client_min_messages TO warning; SELECT pg_advisory_xact_lock(")
        .int(lock)
        .sql(");\n")
        .trusted(ddl)
        .sql("\nCOMMIT;");
    sql.into_sql()
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

/// `CREATE DATABASE "name"`, copied from `template` when given.
pub(crate) fn create_database(database: &Ident, template: Option<&Ident>) -> SqlStr {
    let mut sql = Statement::new();
    sql.sql("CREATE DATABASE ").ident(database);
    if let Some(template) = template {
        sql.sql(" TEMPLATE ").ident(template);
    }
    sql.into_sql()
}

/// `DROP DATABASE IF EXISTS "name" WITH (FORCE)`: other sessions connected
/// to it are terminated.
pub(crate) fn drop_database(database: &Ident) -> SqlStr {
    let mut sql = Statement::new();
    sql.sql("DROP DATABASE IF EXISTS ")
        .ident(database)
        .sql(" WITH (FORCE)");
    sql.into_sql()
}

/// `DROP VIEW IF EXISTS "schema"."name"`.
pub(crate) fn drop_view(schema: &Ident, name: &Ident) -> SqlStr {
    let mut sql = Statement::new();
    sql.sql("DROP VIEW IF EXISTS ")
        .ident(schema)
        .sql(".")
        .ident(name);
    sql.into_sql()
}

/// `DROP SCHEMA IF EXISTS "name" CASCADE`.
pub(crate) fn drop_schema(schema: &Ident) -> Statement {
    let mut sql = Statement::new();
    sql.sql("DROP SCHEMA IF EXISTS ")
        .ident(schema)
        .sql(" CASCADE");
    sql
}

/// Marks a statement assembled from validated, quoted parts (with the
/// helpers of this module) as safe: the one use of [`AssertSqlSafe`] for
/// built statements, under [`Statement::finish`] too. Shared (`Arc`) so that
/// prepared statement texts clone cheaply.
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

/// The setting with which a transaction tells the registry's trigger that it
/// announces its changes itself, after its commit (see
/// [`announce_after_commit`]).
pub(crate) const DEFER_ANNOUNCEMENT: &str = "hidra.announce_after_commit";

/// `COMMIT`, then the announcement of `id` on the registry's `channel`, in its
/// own tiny transaction. A transaction that notifies holds PostgreSQL's one
/// notification lock through its commit; a provisioning's commit is long
/// (its DDL), so announcing after it lets provisionings commit side by side.
pub(crate) fn commit_and_announce(channel: &str, id: &str) -> SqlStr {
    let mut sql = Statement::new();
    sql.sql("COMMIT; SELECT pg_notify(")
        .literal(channel)
        .sql(", ")
        .literal(id)
        .sql(")");
    sql.into_sql()
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
pub(crate) fn set_schema(keyword: &'static str, identity: &str, target: &Ident) -> Statement {
    let mut sql = Statement::new();
    sql.sql("ALTER ")
        .sql(keyword)
        .sql(" ")
        .trusted(identity)
        .sql(" SET SCHEMA ")
        .ident(target)
        .sql(";\n");
    sql
}

/// `CAST($n::text AS <type>)`: a value read as text, compared with a column
/// of type `column_type` (as PostgreSQL's `format_type` spells it), so that
/// an index on the column still serves the comparison.
pub(crate) fn text_param_as(n: u8, column_type: &str) -> Statement {
    let mut sql = Statement::new();
    sql.sql("CAST($")
        .int(n)
        .sql("::text AS ")
        .trusted(column_type)
        .sql(")");
    sql
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
    fn statements_write_tables_lists_and_parts() {
        let t = TableName::parse("public.hidra_logins").unwrap();
        let mut list = Statement::new();
        list.names(["a", "b\"c"].iter());
        let mut sql = Statement::new();
        sql.sql("SELECT ")
            .append(&list)
            .sql(" FROM ")
            .table(&t)
            .sql(", ")
            .table(&TableName::parse("bare").unwrap());
        assert_eq!(
            sql.as_str(),
            "SELECT \"a\", \"b\"\"c\" FROM \"public\".\"hidra_logins\", \"bare\""
        );
        assert_eq!(sql.finish().as_str(), sql.as_str());
        let none: [&str; 0] = [];
        assert_eq!(Statement::new().names(none).as_str(), "");
    }

    #[test]
    fn templates_fill_every_hole_with_its_part() {
        let t = TableName::parse("public.keys").unwrap();
        let mut cast = Statement::new();
        cast.sql("$1::int");
        let sql = template(
            "SELECT {cols} FROM {t} WHERE {c} = {v} AND k ~ '^[0-9a-f]{{24}}$' AND s <> '{{}}' \
             AND t = {lit} AND {t}.{n} IS NOT NULL -- {raw}",
        )
        .sql("cols", "a, b")
        .table("t", &t)
        .ident("c", &Ident::trusted("tenant_id".into()))
        .append("v", &cast)
        .literal("lit", "o'neil")
        .name("n", "Odd\"Name")
        .trusted("raw", "as is")
        .finish();
        assert_eq!(
            sql.as_str(),
            "SELECT a, b FROM \"public\".\"keys\" WHERE \"tenant_id\" = $1::int \
             AND k ~ '^[0-9a-f]{24}$' AND s <> '{}' AND t = 'o''neil' \
             AND \"public\".\"keys\".\"Odd\"\"Name\" IS NOT NULL -- as is"
        );
        assert_eq!(template("no holes").finish().as_str(), "no holes");
    }

    #[test]
    #[should_panic(expected = "no part for hole {t}")]
    fn templates_refuse_a_hole_without_its_part() {
        let _ = template("SELECT 1 FROM {t}").finish();
    }

    #[test]
    #[should_panic(expected = "part \"x\" fills no hole")]
    fn templates_refuse_a_part_without_its_hole() {
        let _ = template("SELECT 1").sql("x", "1").finish();
    }

    #[test]
    #[should_panic(expected = "given two parts")]
    fn templates_refuse_a_hole_filled_twice() {
        let _ = template("SELECT {x}").sql("x", "1").sql("x", "2");
    }

    #[test]
    #[should_panic(expected = "a lone brace")]
    fn templates_refuse_a_lone_brace() {
        let _ = template("SELECT '}'").finish();
    }

    #[test]
    fn adoption_fragments_quote_their_parts() {
        let target = Ident::trusted("tenant_acme".into());
        assert_eq!(
            set_schema("TABLE", "public.orders", &target).as_str(),
            "ALTER TABLE public.orders SET SCHEMA \"tenant_acme\";\n"
        );
        assert_eq!(
            text_param_as(1, "character varying(20)").as_str(),
            "CAST($1::text AS character varying(20))"
        );
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
            begin_scoped(&path, "o'neil", None, None, none).as_str(),
            "BEGIN; SET LOCAL search_path TO \"tenant_a\", \"public\"; \
             SET LOCAL hidra.tenant_id TO 'o''neil'"
        );
        assert_eq!(
            bind_session(&path, "o'neil", None, None, none).as_str(),
            "SET search_path TO \"tenant_a\", \"public\"; SET hidra.tenant_id TO 'o''neil'"
        );
        let guard = Some("\"public\".\"tenants_bind_row_level\"");
        assert_eq!(
            begin_scoped(&path, "acme", guard, None, none).as_str(),
            "BEGIN; SET LOCAL search_path TO \"tenant_a\", \"public\"; \
             SELECT \"public\".\"tenants_bind_row_level\"('acme', true)"
        );
        assert!(
            bind_session(&path, "acme", guard, None, none)
                .as_str()
                .ends_with("; SELECT \"public\".\"tenants_bind_row_level\"('acme', false)")
        );
        let proof = prove_schema(&Ident::trusted("tenant_a".into()));
        assert_eq!(
            begin_scoped(&path, "", None, Some(&proof), [Some(250), None]).as_str(),
            "BEGIN; SET LOCAL search_path TO \"tenant_a\", \"public\"; \
             SET LOCAL hidra.tenant_id TO ''; SET LOCAL statement_timeout TO 250; \
             LOCK TABLE \"tenant_a\"._hidra_migrations IN ACCESS SHARE MODE"
        );
        assert!(reset_statement(none).as_str().contains(TENANT_SETTING));
        let managed = [Some(250), None];
        assert!(
            bind_session(&path, "o'neil", None, None, managed)
                .as_str()
                .ends_with("; SET statement_timeout TO 250")
        );
        assert!(
            begin_scoped(&path, "o'neil", None, None, managed)
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
