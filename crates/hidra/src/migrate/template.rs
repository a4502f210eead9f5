//! The template schema: the tenant migrations applied to a schema that
//! belongs to no tenant, for sqlx's compile-time checked queries.
//!
//! `query!` and `query_as!` check their SQL against `DATABASE_URL` at build
//! time. A tenant's tables exist only in tenant schemas, so against the bare
//! database they fail with `relation "notes" does not exist`. Point the
//! macros at the template schema instead
//! (`DATABASE_URL=postgres://…/app?options=-c%20search_path%3Dhidra_template`),
//! keep it migrated with [`Hidra::migrate_template_schema`] (or `hidra
//! migrate template`), and the checked SQL is exactly what runs, unqualified,
//! on a [`TenantConn`](crate::TenantConn).

use sqlx::Connection;

use super::runner::{Target, read_history, recorded_state};
use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::sql::{self, Ident};

/// The template schema's name unless the application picks another.
pub const DEFAULT_TEMPLATE_SCHEMA: &str = "hidra_template";

/// What [`Hidra::migrate_template_schema`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TemplateSchema {
    /// The schema.
    pub schema: String,
    /// Its version before (0: it was just created, or empty).
    pub from: i64,
    /// Its version now: the latest tenant migration.
    pub to: i64,
}

impl TemplateSchema {
    /// A `DATABASE_URL` for sqlx's macros: `url` with the template schema as
    /// its search path (`options=-c search_path=…`, URL-encoded), so that
    /// unqualified table names resolve to the template's tables.
    pub fn database_url(&self, url: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!(
            "{url}{sep}options=-c%20search_path%3D{}",
            percent_encode(&self.schema)
        )
    }
}

/// Encodes what is not unreserved in a URL query value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Hidra {
    /// Creates the template schema `schema` if missing and brings it to the
    /// latest tenant migration, recording it like a tenant schema (its own
    /// history table, Hidra's bookkeeping). It holds no tenant's data and no
    /// tenant can be bound to it.
    ///
    /// Refuses a name a tenant schema could take (the tenant schema prefix),
    /// a shared schema and PostgreSQL's own ([`Error::InvalidConfig`]); a
    /// template whose applied migrations differ from the application's fails
    /// with [`Error::ChecksumMismatch`]: drop it with
    /// [`drop_template_schema`](Self::drop_template_schema) and migrate again
    /// (it holds nothing to lose).
    pub async fn migrate_template_schema(&self, schema: &str) -> Result<TemplateSchema> {
        let ident = self.template_ident(schema)?;
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        sqlx::raw_sql(sql::install_script(
            super::INTERNAL_LOCK,
            &sql::create_schema_if_missing(&ident),
        ))
        .execute(&mut *conn)
        .await
        .map_err(Error::db("creating the template schema"))?;
        let (version, digest, has_table) = read_history(&mut conn, ident.as_str()).await?;
        let migrations = &self.inner.migrations.tenant;
        if migrations
            .digest_at(version)
            .is_none_or(|expected| expected != digest.as_slice())
        {
            return Err(Error::ChecksumMismatch {
                schema: ident.as_str().to_owned(),
                detail: format!(
                    "the template schema is at version {version}, whose migrations differ from \
                     the application's: drop it (`hidra migrate template --recreate`, or \
                     Hidra::drop_template_schema) and migrate it again; it holds no data"
                ),
            });
        }
        let recorded = recorded_state(&mut conn, ident.as_str())
            .await?
            .map(|(v, _)| v);
        drop(conn);
        let target = Target {
            schema: ident.as_str().to_owned(),
            tenant: None,
            database: None,
            server: None,
        };
        self.migrator()
            .finish_target(target, version, recorded, !has_table)
            .await?;
        let to = migrations.latest();
        tracing::info!(
            schema = ident.as_str(),
            from = version,
            to,
            "template schema migrated"
        );
        Ok(TemplateSchema {
            schema: ident.as_str().to_owned(),
            from: version,
            to,
        })
    }

    /// Drops the template schema `schema` and its bookkeeping; returns
    /// whether it existed.
    pub async fn drop_template_schema(&self, schema: &str) -> Result<bool> {
        let ident = self.template_ident(schema)?;
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning to drop the template schema"))?;
        let existed: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(ident.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(Error::db("looking for the template schema"))?;
        let mut drop = sql::Statement::new();
        drop.sql("SET LOCAL client_min_messages = warning; DROP SCHEMA IF EXISTS ")
            .ident(&ident)
            .sql(" CASCADE");
        sqlx::raw_sql(drop.into_sql())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("dropping the template schema"))?;
        sqlx::query("DELETE FROM hidra.schema_versions WHERE schema_name = $1")
            .bind(ident.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("forgetting the template schema's version"))?;
        tx.commit()
            .await
            .map_err(Error::db("committing the drop of the template schema"))?;
        Ok(existed)
    }

    fn template_ident(&self, schema: &str) -> Result<Ident> {
        let ident = Ident::new(schema.to_owned(), "template schema name")?;
        let refused = |why: &str| {
            Err(Error::InvalidConfig(
                format!(
                    "`{schema}` cannot be the template schema: {why}; the default is \
                     `{DEFAULT_TEMPLATE_SCHEMA}`"
                )
                .into(),
            ))
        };
        let prefix = self.inner.schema.naming.prefix();
        if !prefix.is_empty() && schema.starts_with(prefix) {
            return refused(&format!("tenant schemas are named `{prefix}…`"));
        }
        if self
            .inner
            .schema
            .shared
            .iter()
            .any(|s| s.as_str() == schema)
        {
            return refused("it is a shared schema");
        }
        if schema == "hidra"
            || schema == "public"
            || schema == "information_schema"
            || schema.starts_with("pg_")
            || schema.starts_with("hidra_spare_")
        {
            return refused("the name is taken by PostgreSQL or Hidra");
        }
        Ok(ident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_for_the_macros_sets_the_search_path() {
        let t = TemplateSchema {
            schema: "hidra_template".into(),
            from: 0,
            to: 3,
        };
        assert_eq!(
            t.database_url("postgres://u@h/app"),
            "postgres://u@h/app?options=-c%20search_path%3Dhidra_template"
        );
        assert_eq!(
            t.database_url("postgres://u@h/app?sslmode=disable"),
            "postgres://u@h/app?sslmode=disable&options=-c%20search_path%3Dhidra_template"
        );
        assert_eq!(percent_encode("a b=c"), "a%20b%3Dc");
    }
}
