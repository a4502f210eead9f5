use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row, SqlStr};

use super::{ListTenants, MAX_PAGE_SIZE, Page, TenantStore, TenantUpdate};
use crate::error::{Error, Result, db_code, sqlstate};
use crate::sql::{self, Ident, TableName};
use crate::tenant::{Placement, Tenant, TenantId, TenantStatus};

/// The channel on which the registry table's trigger announces changed tenant
/// ids (`NOTIFY hidra_tenant_changes, '<id>'`), so caches in every process can
/// drop their copy at once.
pub const CHANGES_CHANNEL: &str = "hidra_tenant_changes";

/// Column names of the registry table; defaults match [`RegistryTable::ddl`].
#[derive(Clone, Debug)]
pub struct RegistryColumns {
    /// Tenant id (`TEXT`, primary key).
    pub id: String,
    /// Display name (`TEXT`).
    pub name: String,
    /// Lifecycle status (`TEXT`).
    pub status: String,
    /// Isolation strategy (`TEXT`).
    pub strategy: String,
    /// Tenant schema (`TEXT`, unique).
    pub schema_name: String,
    /// Tenant database, when the strategy has one (`TEXT NULL`).
    pub database_name: String,
    /// Server holding the data (`TEXT NULL`).
    pub server: String,
    /// Free-form metadata (`JSONB`).
    pub metadata: String,
    /// Creation time (`TIMESTAMPTZ`).
    pub created_at: String,
    /// Last change (`TIMESTAMPTZ`).
    pub updated_at: String,
}

impl Default for RegistryColumns {
    fn default() -> Self {
        RegistryColumns {
            id: "id".into(),
            name: "name".into(),
            status: "status".into(),
            strategy: "strategy".into(),
            schema_name: "schema_name".into(),
            database_name: "database_name".into(),
            server: "server".into(),
            metadata: "metadata".into(),
            created_at: "created_at".into(),
            updated_at: "updated_at".into(),
        }
    }
}

/// Where the registry lives: the table name (default `public.tenants`) and its
/// column names.
///
/// The application owns this table: hidra never creates it implicitly. Create it
/// on purpose with the DDL from [`RegistryTable::ddl`] (shipped as
/// `sql/registry.sql` for the default names), from your own migrations or with
/// `hidra init`.
///
/// ```
/// use hidra::RegistryTable;
///
/// let registry = RegistryTable::new("app.customers_registry")?;
/// assert!(registry.ddl().contains("CREATE TABLE IF NOT EXISTS \"app\".\"customers_registry\""));
/// # Ok::<(), hidra::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct RegistryTable {
    table: TableName,
    columns: Columns,
}

#[derive(Clone, Debug)]
struct Columns {
    id: Ident,
    name: Ident,
    status: Ident,
    strategy: Ident,
    schema_name: Ident,
    database_name: Ident,
    server: Ident,
    metadata: Ident,
    created_at: Ident,
    updated_at: Ident,
}

impl Default for RegistryTable {
    fn default() -> Self {
        RegistryTable::new("public.tenants").expect("default registry table name is valid")
    }
}

impl RegistryTable {
    /// A registry in `table` (`name` or `schema.name`) with the default column names.
    pub fn new(table: &str) -> Result<Self> {
        Self::with_columns(table, RegistryColumns::default())
    }

    /// A registry in `table` with custom column names.
    pub fn with_columns(table: &str, c: RegistryColumns) -> Result<Self> {
        let col = |name: String| Ident::new(name, "registry column name");
        Ok(RegistryTable {
            table: TableName::parse(table)?,
            columns: Columns {
                id: col(c.id)?,
                name: col(c.name)?,
                status: col(c.status)?,
                strategy: col(c.strategy)?,
                schema_name: col(c.schema_name)?,
                database_name: col(c.database_name)?,
                server: col(c.server)?,
                metadata: col(c.metadata)?,
                created_at: col(c.created_at)?,
                updated_at: col(c.updated_at)?,
            },
        })
    }

    /// The table name.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The column naming a tenant's server.
    pub(crate) fn server_column(&self) -> &Ident {
        &self.columns.server
    }

    fn schema_constraint(&self) -> String {
        format!("{}_{}_key", self.table.name(), self.columns.schema_name)
    }

    fn database_constraint(&self) -> String {
        format!("{}_{}_key", self.table.name(), self.columns.database_name)
    }

    /// In the registry's schema: `<table>_<suffix>`, quoted (and qualified
    /// when the table is).
    fn companion(&self, suffix: &str) -> String {
        let name = sql::quote_ident(&format!("{}_{suffix}", self.table.name().as_str()));
        match self.table.schema() {
            Some(s) => format!("{}.{name}", s.quoted()),
            None => name,
        }
    }

    /// The function a row-level tenant's checkout binds it with (see
    /// [`bind_row_level_ddl`](Self::bind_row_level_ddl)).
    pub(crate) fn bind_row_level_function(&self) -> String {
        self.companion("bind_row_level")
    }

    /// `<table>_bind_row_level(tenant, local)`: binds `hidra.tenant_id` only
    /// while this registry names `tenant` a row-level tenant of the control
    /// server (see `row_level::binding_function_ddl`). A record read before
    /// the tenant moved out of the shared tables, or was deprovisioned, can
    /// then not write rows nobody will see.
    pub(crate) fn bind_row_level_ddl(&self) -> String {
        let c = &self.columns;
        let mut exists = sql::Statement::new();
        exists
            .sql("SELECT FROM ")
            .table(&self.table)
            .sql(" WHERE ")
            .ident(&c.id)
            .sql(" = $1 AND ")
            .ident(&c.strategy)
            .sql(" = 'row_level' AND ")
            .ident(&c.server)
            .sql(" IS NULL");
        crate::strategy::row_level::binding_function_ddl(
            &self.bind_row_level_function(),
            exists.as_str(),
        )
    }

    /// The recommended DDL for this table: the table, its constraints, the
    /// trigger that announces changes on [`CHANGES_CHANNEL`], and the
    /// function that binds a row-level tenant. Idempotent.
    pub fn ddl(&self) -> String {
        let c = &self.columns;
        let t = self.table.quoted();
        let bare = self.table.name().as_str();
        let func = self.companion("notify_change");
        let ddl = format!(
            r#"-- Hidra tenant registry. The application owns this table: run this on purpose
-- (from your migrations or `hidra init`). Safe to run more than once.
CREATE TABLE IF NOT EXISTS {t} (
    {id} TEXT NOT NULL,
    {name} TEXT NOT NULL,
    {status} TEXT NOT NULL DEFAULT 'provisioning',
    {strategy} TEXT NOT NULL DEFAULT 'schema',
    {schema_name} TEXT NOT NULL,
    {database_name} TEXT,
    {server} TEXT,
    {metadata} JSONB NOT NULL DEFAULT '{{}}'::jsonb,
    {created_at} TIMESTAMPTZ NOT NULL DEFAULT now(),
    {updated_at} TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT {pkey} PRIMARY KEY ({id}),
    CONSTRAINT {database_key} UNIQUE ({database_name}),
    CONSTRAINT {id_check} CHECK ({id} ~ '^[a-z][a-z0-9_-]{{0,49}}$')
);
-- Each schema-per-tenant tenant has its own schema; row-level tenants share one.
CREATE UNIQUE INDEX IF NOT EXISTS {schema_key} ON {t} ({schema_name}) WHERE {strategy} = 'schema';

-- Every change to a tenant row is announced, so that caches in every process
-- serving this database drop their copy at once. A transaction that sets
-- {defer} announces its rows itself, after its commit.
CREATE OR REPLACE FUNCTION {func}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('{defer}', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('{channel}', OLD.{id});
    ELSE
        PERFORM pg_notify('{channel}', NEW.{id});
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS {trigger} ON {t};
CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {t}
    FOR EACH ROW EXECUTE FUNCTION {func}();
"#,
            id = c.id.quoted(),
            name = c.name.quoted(),
            status = c.status.quoted(),
            strategy = c.strategy.quoted(),
            schema_name = c.schema_name.quoted(),
            database_name = c.database_name.quoted(),
            server = c.server.quoted(),
            metadata = c.metadata.quoted(),
            created_at = c.created_at.quoted(),
            updated_at = c.updated_at.quoted(),
            pkey = sql::quote_ident(&format!("{bare}_pkey")),
            schema_key = sql::quote_ident(&self.schema_constraint()),
            database_key = sql::quote_ident(&self.database_constraint()),
            id_check = sql::quote_ident(&format!("{bare}_{}_check", c.id)),
            trigger = sql::quote_ident(&format!("{bare}_notify_change")),
            channel = CHANGES_CHANNEL,
            defer = sql::DEFER_ANNOUNCEMENT,
        );
        format!(
            "{ddl}\n-- A row-level tenant is bound only while this table says it is one.\n{}",
            self.bind_row_level_ddl()
        )
    }
}

/// The PostgreSQL [`TenantStore`], over a [`RegistryTable`].
#[derive(Clone, Debug)]
pub struct PgTenantStore {
    registry: RegistryTable,
    q: Statements,
}

#[derive(Clone, Debug)]
struct Statements {
    get: SqlStr,
    list: SqlStr,
    insert: SqlStr,
    /// `INSERT INTO … (cols) VALUES`, for [`PgTenantStore::insert_literal`].
    insert_into: sql::Statement,
    /// `RETURNING cols`.
    returning: sql::Statement,
    update_status: SqlStr,
    update_placement: SqlStr,
    update_details: SqlStr,
    delete: SqlStr,
    find_by_domain: SqlStr,
}

impl Default for PgTenantStore {
    fn default() -> Self {
        PgTenantStore::new(RegistryTable::default())
    }
}

impl PgTenantStore {
    /// The registration of `tenant` as one statement with its values as
    /// literals (quoted here), returning the row like `insert`: for a
    /// provisioning sent as one batch.
    pub(crate) fn insert_literal(&self, tenant: &Tenant) -> sql::Statement {
        let mut sql = self.q.insert_into.clone();
        sql.sql("(");
        for (i, value) in [
            Some(tenant.id.as_str()),
            Some(&tenant.name),
            Some(tenant.status.as_str()),
            Some(tenant.placement.strategy.as_str()),
            Some(&tenant.placement.schema),
            tenant.placement.database.as_deref(),
            tenant.placement.server.as_deref(),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                sql.sql(", ");
            }
            match value {
                Some(value) => sql.literal(value),
                None => sql.sql("NULL"),
            };
        }
        sql.sql(", ")
            .literal(&tenant.metadata.to_string())
            .sql("::jsonb, now(), now())")
            .append(&self.q.returning);
        sql
    }

    /// A registry row as a tenant record.
    pub(crate) fn decode(&self, row: &PgRow) -> Result<Tenant> {
        decode(row)
    }

    /// The error of a failed registration of `tenant`: a taken id, schema or
    /// database name, or a database failure.
    pub(crate) fn insert_error(&self, tenant: &Tenant, err: sqlx::Error) -> Error {
        match db_code(&err) {
            Some((code, constraint)) if code == sqlstate::UNIQUE_VIOLATION => {
                let r = &self.registry;
                if constraint.as_deref() == Some(r.schema_constraint().as_str()) {
                    Error::SchemaTaken {
                        id: tenant.id.clone(),
                        schema: tenant.placement.schema.clone(),
                    }
                } else if constraint.as_deref() == Some(r.database_constraint().as_str()) {
                    Error::SchemaTaken {
                        id: tenant.id.clone(),
                        schema: tenant.placement.database.clone().unwrap_or_default(),
                    }
                } else {
                    Error::AlreadyExists(tenant.id.clone())
                }
            }
            _ => self.map_err("registering a tenant")(err),
        }
    }

    /// A store over `registry`.
    pub fn new(registry: RegistryTable) -> Self {
        let c = &registry.columns;
        let mut cols = sql::Statement::new();
        for (i, column) in [
            &c.id,
            &c.name,
            &c.status,
            &c.strategy,
            &c.schema_name,
            &c.database_name,
            &c.server,
            &c.metadata,
            &c.created_at,
            &c.updated_at,
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                cols.sql(", ");
            }
            cols.ident(column);
        }
        // `text` with `{t}`, `{cols}` and each column's hole it has filled.
        let on = |text: &'static str| {
            let mut statement = sql::template(text);
            if text.contains("{t}") {
                statement = statement.table("t", &registry.table);
            }
            if text.contains("{cols}") {
                statement = statement.append("cols", &cols);
            }
            for (hole, column) in [
                ("id", &c.id),
                ("name", &c.name),
                ("status", &c.status),
                ("strategy", &c.strategy),
                ("schema", &c.schema_name),
                ("database", &c.database_name),
                ("server", &c.server),
                ("metadata", &c.metadata),
                ("updated", &c.updated_at),
            ] {
                if text.contains(&format!("{{{hole}}}")) {
                    statement = statement.ident(hole, column);
                }
            }
            statement.statement()
        };
        let q = Statements {
            get: on("SELECT {cols} FROM {t} WHERE {id} = $1").into_sql(),
            list: on("SELECT {cols} FROM {t} WHERE ($1::text IS NULL OR {id} > $1) \
                 AND ($2::text IS NULL OR {status} = $2) \
                 AND ($4::text IS NULL OR strpos(lower({id}), lower($4)) > 0 \
                      OR strpos(lower({name}), lower($4)) > 0) \
                 ORDER BY {id} LIMIT $3")
            .into_sql(),
            insert: on(
                "INSERT INTO {t} ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), now()) \
                 RETURNING {cols}",
            )
            .into_sql(),
            insert_into: on("INSERT INTO {t} ({cols}) VALUES "),
            returning: on(" RETURNING {cols}"),
            update_status: on("UPDATE {t} SET {status} = $2, {updated} = now() \
                 WHERE {id} = $1 AND {status} = ANY($3) RETURNING {cols}")
            .into_sql(),
            update_placement: on(
                "UPDATE {t} SET {strategy} = $2, {schema} = $3, {database} = $4, {server} = $5, \
                 {updated} = now() WHERE {id} = $1 RETURNING {cols}",
            )
            .into_sql(),
            update_details: on(
                "UPDATE {t} SET {name} = coalesce($2, {name}), {metadata} = coalesce($3, {metadata}), \
                 {updated} = now() WHERE {id} = $1 RETURNING {cols}",
            )
            .into_sql(),
            delete: on("DELETE FROM {t} WHERE {id} = $1").into_sql(),
            find_by_domain: on(
                "SELECT {cols} FROM {t} WHERE {metadata}->'domains' @> jsonb_build_array($1::text) \
                 ORDER BY {id} LIMIT 2",
            )
            .into_sql(),
        };
        PgTenantStore { registry, q }
    }

    /// The table this store reads and writes.
    pub fn registry(&self) -> &RegistryTable {
        &self.registry
    }

    fn map_err(&self, context: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |err| match db_code(&err) {
            Some((code, _)) if code == sqlstate::UNDEFINED_TABLE => {
                Error::RegistryMissing(self.registry.table.to_string())
            }
            _ => Error::Database {
                context,
                source: err,
            },
        }
    }
}

fn decode(row: &PgRow) -> Result<Tenant> {
    let raw_id: String = row.try_get(0).map_err(Error::db("decoding a tenant row"))?;
    let corrupt = |reason: String| Error::CorruptRecord {
        id: raw_id.clone(),
        reason,
    };
    let id = TenantId::new(&raw_id).map_err(|e| corrupt(e.to_string()))?;
    let get_str = |i: usize| -> Result<String> {
        row.try_get::<String, _>(i)
            .map_err(|e| corrupt(e.to_string()))
    };
    let get_opt = |i: usize| -> Result<Option<String>> {
        row.try_get::<Option<String>, _>(i)
            .map_err(|e| corrupt(e.to_string()))
    };
    Ok(Tenant {
        name: get_str(1)?,
        status: get_str(2)?.parse().map_err(corrupt)?,
        placement: Placement {
            strategy: get_str(3)?.parse().map_err(corrupt)?,
            schema: get_str(4)?,
            database: get_opt(5)?,
            server: get_opt(6)?,
        },
        metadata: row.try_get(7).map_err(|e| corrupt(e.to_string()))?,
        created_at: row.try_get(8).map_err(|e| corrupt(e.to_string()))?,
        updated_at: row.try_get(9).map_err(|e| corrupt(e.to_string()))?,
        id,
    })
}

impl TenantStore for PgTenantStore {
    fn install_ddl(&self) -> Option<String> {
        let registry = &self.registry;
        let schema = registry
            .table()
            .schema()
            .map(sql::create_schema_if_missing)
            .unwrap_or_default();
        Some(schema + &registry.ddl())
    }

    async fn get(&self, conn: &mut PgConnection, id: &TenantId) -> Result<Option<Tenant>> {
        let row = sqlx::query(self.q.get.clone())
            .bind(id.as_str())
            .fetch_optional(conn)
            .await
            .map_err(self.map_err("reading the tenant registry"))?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self, conn: &mut PgConnection, page: &ListTenants) -> Result<Page<Tenant>> {
        let limit = page.limit.clamp(1, MAX_PAGE_SIZE);
        let rows = sqlx::query(self.q.list.clone())
            .bind(page.after.as_ref().map(TenantId::as_str))
            .bind(page.status.map(|s| s.as_str()))
            .bind(i64::from(limit) + 1)
            .bind(page.search.as_deref().filter(|s| !s.is_empty()))
            .fetch_all(conn)
            .await
            .map_err(self.map_err("listing tenants"))?;
        let mut items = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|t| t.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn insert(&self, conn: &mut PgConnection, tenant: &Tenant) -> Result<Tenant> {
        let result = sqlx::query(self.q.insert.clone())
            .bind(tenant.id.as_str())
            .bind(&tenant.name)
            .bind(tenant.status.as_str())
            .bind(tenant.placement.strategy.as_str())
            .bind(&tenant.placement.schema)
            .bind(tenant.placement.database.as_deref())
            .bind(tenant.placement.server.as_deref())
            .bind(&tenant.metadata)
            .fetch_one(conn)
            .await;
        match result {
            Ok(row) => decode(&row),
            Err(err) => Err(self.insert_error(tenant, err)),
        }
    }

    async fn update_status(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        from: &[TenantStatus],
        to: TenantStatus,
    ) -> Result<Option<Tenant>> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let row = sqlx::query(self.q.update_status.clone())
            .bind(id.as_str())
            .bind(to.as_str())
            .bind(&from)
            .fetch_optional(conn)
            .await
            .map_err(self.map_err("updating a tenant's status"))?;
        row.as_ref().map(decode).transpose()
    }

    async fn update_placement(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        placement: &Placement,
    ) -> Result<Option<Tenant>> {
        let row = sqlx::query(self.q.update_placement.clone())
            .bind(id.as_str())
            .bind(placement.strategy.as_str())
            .bind(&placement.schema)
            .bind(placement.database.as_deref())
            .bind(placement.server.as_deref())
            .fetch_optional(conn)
            .await
            .map_err(|err| match db_code(&err) {
                Some((code, _)) if code == sqlstate::UNIQUE_VIOLATION => Error::SchemaTaken {
                    id: id.clone(),
                    schema: placement.schema.clone(),
                },
                _ => self.map_err("updating a tenant's placement")(err),
            })?;
        row.as_ref().map(decode).transpose()
    }

    async fn update_details(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        update: &TenantUpdate,
    ) -> Result<Option<Tenant>> {
        let row = sqlx::query(self.q.update_details.clone())
            .bind(id.as_str())
            .bind(update.name.as_deref())
            .bind(update.metadata.as_ref())
            .fetch_optional(conn)
            .await
            .map_err(self.map_err("updating a tenant's name or metadata"))?;
        row.as_ref().map(decode).transpose()
    }

    async fn delete(&self, conn: &mut PgConnection, id: &TenantId) -> Result<bool> {
        let done = sqlx::query(self.q.delete.clone())
            .bind(id.as_str())
            .execute(conn)
            .await
            .map_err(self.map_err("deleting a tenant record"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn find_by_domain(&self, conn: &mut PgConnection, host: &str) -> Result<Option<Tenant>> {
        let rows = sqlx::query(self.q.find_by_domain.clone())
            .bind(host)
            .fetch_all(conn)
            .await
            .map_err(self.map_err("looking up a custom domain"))?;
        match rows.as_slice() {
            [] => Ok(None),
            [row] => decode(row).map(Some),
            [a, b, ..] => Err(Error::InvalidConfig(
                format!(
                    "custom domain {host:?} is listed by tenants `{}` and `{}`; \
                         a domain must belong to one tenant",
                    decode(a)?.id,
                    decode(b)?.id
                )
                .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_ddl_matches_the_generator() {
        let shipped = include_str!("../../sql/registry.sql");
        let generated = RegistryTable::default().ddl();
        if std::env::var_os("HIDRA_REGENERATE_SQL").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/sql/registry.sql"),
                &generated,
            )
            .unwrap();
        }
        assert_eq!(shipped, generated, "HIDRA_REGENERATE_SQL=1 rewrites it");
    }

    #[test]
    fn custom_names_are_validated_and_quoted() {
        let cols = RegistryColumns {
            status: "state".into(),
            ..Default::default()
        };
        let r = RegistryTable::with_columns("app.orgs", cols).unwrap();
        assert!(r.ddl().contains("\"state\" TEXT NOT NULL"));
        let bad = RegistryColumns {
            status: "state; drop".into(),
            ..Default::default()
        };
        assert!(RegistryTable::with_columns("orgs", bad).is_err());
        assert!(RegistryTable::new("Orgs").is_err());
    }
}
