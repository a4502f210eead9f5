//! Shared setup: a throw-away database per test and a `Hidra` over it (from
//! `hidra-test-support`), tenants with a `customers` table, and the SeaORM
//! entity for it.

#![allow(dead_code, unreachable_pub)]

use hidra::{Hidra, Tenant};
// Each test binary uses some of them.
#[allow(unused_imports)]
pub use hidra_test_support::{Ctx, id, setup_with};

pub const CUSTOMERS: &str =
    "CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE);";

pub mod customer {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "customers")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `setup_with` the customers table and a pool of `max` connections.
pub async fn setup(max: u32) -> Ctx {
    setup_with(
        Hidra::builder()
            .schema_sql("001_customers", CUSTOMERS)
            .max_connections(max),
    )
    .await
}

/// The customers' names in `tenant`'s schema, read with plain sqlx.
pub async fn names(h: &Hidra, tenant: &Tenant) -> Vec<String> {
    let mut conn = h.acquire(tenant).await.unwrap();
    sqlx::query_scalar("SELECT name FROM customers ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}
