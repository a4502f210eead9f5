//! Adopting an existing single-tenant application: [`Hidra::adopt_schema`](crate::Hidra::adopt_schema)
//! and [`Hidra::adopt_split`](crate::Hidra::adopt_split).
//!
//! Two starting points are common, and each has its call:
//!
//! - **One database, one customer.** The application's tables live in one
//!   schema (usually `public`). [`Hidra::adopt_schema`](crate::Hidra::adopt_schema) makes that schema's
//!   objects the first tenant's: its tables, sequences, views, materialized
//!   views, functions, procedures and types are moved into the tenant's
//!   schema with `ALTER … SET SCHEMA`, a change of catalog entries only (no
//!   row is copied, so it takes the same time for ten rows or ten million),
//!   in **one transaction** with the tenant's registration and its migration
//!   *baseline*: the tenant migration version the schema already corresponds
//!   to. Its history then says every migration up to the baseline is
//!   applied, and the next [`migrate`](crate::migrate) run applies the rest.
//!   The tables you name as shared stay where they are, with whatever they
//!   need (the functions of their triggers, the types of their columns);
//!   Hidra's own tables (the registry, `hidra_*`) and sqlx's
//!   `_sqlx_migrations` stay too. Objects of extensions stay in place: in a
//!   shared schema (such as `public`) every tenant still reaches them.
//!
//! - **Shared tables with a tenant column** ("`company_id` in every table").
//!   [`Hidra::adopt_split`](crate::Hidra::adopt_split) registers one tenant per distinct value of the
//!   column and copies each company's rows into its own schema, built by the
//!   tenant migrations (which describe the tables without that column), in
//!   one transaction per tenant: registry row, schema, rows (explicit ids
//!   kept, so foreign keys hold), sequences moved past the copied ids, login
//!   lookup rows from the users table you name, and a check that every table
//!   holds as many rows as the company had. An interrupted run is resumed by
//!   running it again: tenants registered by an earlier run are verified and
//!   skipped, never copied twice. The shared tables are left as they were,
//!   for you to compare and then drop.
//!
//! Both inspect everything first and refuse, with every problem listed and
//! what to do about it ([`Error::AdoptRefused`](crate::Error::AdoptRefused)),
//! before anything is changed: objects that cannot move (extension members in
//! a schema no tenant searches, operators, collations, text search
//! configurations), objects outside the schema that depend on what would
//! move (a view in another schema, a shared table's foreign key), functions
//! that pin their own `search_path`, a tenant already registered, an email
//! that two companies' users share, rows without a tenant value, a table the
//! tenant migrations do not create, a column they would drop.
//!
//! Stop the application's writes while adopting: a schema adoption holds
//! `ACCESS EXCLUSIVE` locks on the moved tables until it commits; a split
//! locks the shared tables against writes while each tenant is copied, but
//! rows written between two tenants' copies are only in the shared tables.
//!
//! Function bodies are not rewritten: a function that names a moved table
//! with its old schema (`public.orders` inside a PL/pgSQL body) must be
//! changed by hand; unqualified names resolve through the tenant's
//! `search_path` as before.

mod schema;
mod split;

pub use schema::{AdoptSchema, SchemaAdoption};
pub use split::{AdoptSplit, SplitProgress, SplitReport, SplitTenant, TableRows};

impl crate::Hidra {
    /// Marks a tenant registered by an adoption `active`, in its transaction.
    pub(crate) async fn activate_adopted(
        &self,
        tx: &mut sqlx::PgConnection,
        id: &crate::TenantId,
    ) -> crate::Result<crate::Tenant> {
        use crate::TenantStatus::{Active, Provisioning};
        self.inner
            .registry
            .store
            .update_status(tx, id, &[Provisioning], Active)
            .await?
            .ok_or_else(|| crate::Error::NotFound(id.clone()))
    }
}

/// The tables that stay in the adopted schema whatever the user names: sqlx's
/// migration history of the single-tenant application, and Hidra's own.
pub(crate) fn always_kept(table: &str) -> bool {
    table == "_sqlx_migrations" || table.starts_with("hidra_")
}

/// Up to `max` of `items`, comma-separated, then "and N more": a refusal's list.
pub(crate) fn some_of(items: &[String], max: usize) -> String {
    let shown = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match items.len().saturating_sub(max) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_cut_short() {
        let items: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(some_of(&items, 5), "a, b, c");
        assert_eq!(some_of(&items, 2), "a, b and 1 more");
        assert!(always_kept("hidra_logins") && always_kept("_sqlx_migrations"));
        assert!(!always_kept("orders"));
    }
}
