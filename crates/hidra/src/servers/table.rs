//! [`ServersTable`]: where the server registry lives, and its recommended DDL.

use crate::error::Result;
use crate::sql::{self, TableName};

/// The table of the [server registry](crate::Servers) (default
/// `public.hidra_servers`), owned by the application like the tenant
/// registry: [`Hidra::install`](crate::Hidra::install) creates the default
/// one, or run [`ServersTable::ddl`] (shipped as `sql/servers.sql`) from your
/// own migrations.
///
/// Columns: `name` (primary key, a [`ServerName`](crate::ServerName)),
/// `url` (the connection URL), `state` (`active`, `draining` or
/// `read_only`), `capacity` (how many tenants it should hold, optional) and
/// `created_at`, and `removed_at` (set by [`Servers::remove`](crate::Servers::remove): a
/// removed server's row stays, so that its name is never reused). The tenant registry's `server` column names a row of this
/// table; a tenant without one lives on the control server (the database
/// [`Hidra`](crate::Hidra) connects to), which is not in this table.
///
/// Like Hidra's other tables, the default name starts with `hidra_`, so that
/// [adopting](crate::adopt) the schema it is in leaves it where it is.
///
/// ```
/// use hidra::ServersTable;
///
/// let table = ServersTable::new("ops.servers")?;
/// assert!(table.ddl().contains("CREATE TABLE IF NOT EXISTS \"ops\".\"servers\""));
/// # Ok::<(), hidra::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ServersTable {
    table: TableName,
}

impl Default for ServersTable {
    fn default() -> Self {
        ServersTable::new("public.hidra_servers").expect("default servers table name is valid")
    }
}

impl ServersTable {
    /// The registry in `table` (`name` or `schema.name`).
    pub fn new(table: &str) -> Result<Self> {
        Ok(ServersTable {
            table: TableName::parse(table)?,
        })
    }

    /// The table name.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The name of the primary key constraint, which a duplicate name breaks.
    pub(crate) fn pkey(&self) -> String {
        format!("{}_pkey", self.table.name())
    }

    /// The recommended DDL: the table and its constraints, and its schema
    /// if it has one of its own. Idempotent.
    pub fn ddl(&self) -> String {
        let t = self.table.quoted();
        let bare = self.table.name().as_str();
        let constraint = |what: &str| sql::quote_ident(&format!("{bare}_{what}"));
        let schema = self
            .table
            .schema()
            .filter(|s| s.as_str() != "public")
            .map(sql::create_schema_if_missing)
            .unwrap_or_default();
        format!(
            r#"-- Hidra server registry: the PostgreSQL servers tenants may live on, besides
-- the control server (the database Hidra connects to, not listed here). The
-- application owns this table: `Hidra::install()` (or `hidra init`) creates it,
-- or run this from your migrations. Safe to run more than once.
{schema}CREATE TABLE IF NOT EXISTS {t} (
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    capacity INTEGER,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT {pkey} PRIMARY KEY (name),
    CONSTRAINT {name_check} CHECK (name ~ '^[a-z][a-z0-9_-]{{0,49}}$'),
    CONSTRAINT {state_check} CHECK (state IN ('active', 'draining', 'read_only')),
    CONSTRAINT {capacity_check} CHECK (capacity IS NULL OR capacity >= 0)
);
-- A removed server keeps its row (and its name, never reused).
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS removed_at TIMESTAMPTZ;
"#,
            pkey = constraint("pkey"),
            name_check = constraint("name_check"),
            state_check = constraint("state_check"),
            capacity_check = constraint("capacity_check"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_ddl_matches_the_generator() {
        let shipped = include_str!("../../sql/servers.sql");
        assert_eq!(shipped, ServersTable::default().ddl());
    }

    #[test]
    fn adopting_a_schema_leaves_the_default_table_in_place() {
        let table = ServersTable::default();
        assert!(crate::adopt::always_kept(table.table().name().as_str()));
    }

    #[test]
    fn names_are_validated_and_quoted() {
        let t = ServersTable::new("ops.servers").unwrap();
        assert!(t.ddl().starts_with("-- Hidra server registry"));
        assert!(t.ddl().contains("CREATE SCHEMA IF NOT EXISTS \"ops\";"));
        assert!(t.ddl().contains("CONSTRAINT \"servers_pkey\" PRIMARY KEY"));
        assert!(ServersTable::new("Servers").is_err());
        assert!(ServersTable::new("x; drop").is_err());
    }
}
