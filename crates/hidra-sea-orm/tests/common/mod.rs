//! Shared setup: a throw-away database per test, a `Hidra` over it, tenants
//! with a `customers` table, and the SeaORM entity for it.

#![allow(dead_code, unreachable_pub)]

use hidra::testing::TestDatabase;
use hidra::{Hidra, HidraBuilder, NewTenant, Tenant, TenantId};

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

pub struct Ctx {
    pub db: TestDatabase,
    pub hidra: Hidra,
}

pub fn id(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

/// A fresh database with the registry, and a `Hidra` built from `builder`.
pub async fn setup_with(builder: HidraBuilder) -> Ctx {
    let db = TestDatabase::create().await.expect("create test database");
    let hidra = builder
        .connect_with(db.connect_options())
        .await
        .expect("connect hidra");
    hidra.install().await.expect("install");
    Ctx { db, hidra }
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

impl Ctx {
    pub async fn tenant(&self, name: &str) -> Tenant {
        self.hidra
            .provision(NewTenant::new(id(name)))
            .await
            .expect("provision")
    }

    pub async fn teardown(self) {
        self.hidra.close().await;
        self.db.drop_now().await.unwrap();
    }
}

/// The customers' names in `tenant`'s schema, read with plain sqlx.
pub async fn names(h: &Hidra, tenant: &Tenant) -> Vec<String> {
    let mut conn = h.acquire(tenant).await.unwrap();
    sqlx::query_scalar("SELECT name FROM customers ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}
