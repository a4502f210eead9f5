//! Shared setup for the integration tests: a throw-away database per test with
//! the registry table created, and a `Hidra` connected to it (from
//! `hidra-test-support`), and what this crate's tests share besides.

#![allow(dead_code, unreachable_pub)]

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use hidra_test_support::{
    Ctx, id, keep_writing, notices_during, setup_with, tenant_with_marker, wait_for, while_writing,
    write_marker,
};

use hidra::{Hidra, Tenant};

/// The tenant schema used by most tests: a marker row that says whose schema it is.
pub const MARKER_SCHEMA: &str = "CREATE TABLE marker (tenant TEXT NOT NULL);
CREATE TABLE items (id BIGSERIAL PRIMARY KEY, label TEXT NOT NULL);";

/// `setup_with` the marker schema and a pool of `max` connections.
pub async fn setup(max: u32) -> Ctx {
    setup_with(
        Hidra::builder()
            .schema_sql("001_marker", MARKER_SCHEMA)
            .max_connections(max),
    )
    .await
}

/// `setup` without a per-tenant cap (one tenant may hold the whole pool),
/// for tests that hold every pooled connection for one tenant at once.
pub async fn setup_uncapped(max: u32) -> Ctx {
    setup_with(
        Hidra::builder()
            .schema_sql("001_marker", MARKER_SCHEMA)
            .max_connections(max)
            .tenant_cap(hidra::TenantCap::Fraction(1.0)),
    )
    .await
}

/// Names of the schemas that exist in the test database.
pub async fn schemas(hidra: &Hidra) -> Vec<String> {
    let mut conn = hidra.acquire_shared().await.unwrap();
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' \
         AND nspname NOT IN ('public', 'information_schema', 'hidra') ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

/// Ids in the registry table.
pub async fn registry_ids(hidra: &Hidra) -> Vec<String> {
    let mut conn = hidra.acquire_shared().await.unwrap();
    sqlx::query_scalar("SELECT id FROM public.tenants ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .unwrap()
}

/// Writes `n` customers, each with one order of `factor` × its id.
pub async fn fill_customers_and_orders(hidra: &Hidra, tenant: &Tenant, n: i32, factor: i32) {
    let mut tx = hidra.begin(tenant).await.unwrap();
    sqlx::query("INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, $1) g")
        .bind(n)
        .execute(&mut tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO orders (customer_id, total) SELECT id, id * $1 FROM customers \
         WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = customers.id)",
    )
    .bind(factor)
    .execute(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Every customer of `tenant` with its orders, in id order: what a move must keep.
pub async fn customers_and_orders(hidra: &Hidra, tenant: &Tenant) -> Vec<(i64, String, i64, i32)> {
    let mut conn = hidra.acquire(tenant).await.unwrap();
    sqlx::query_as(
        "SELECT c.id, c.name, o.id, o.total FROM customers c \
         JOIN orders o ON o.customer_id = c.id ORDER BY c.id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Polls `count` (a query returning one count) on `observer` every 10 ms
/// until `done` holds of it; panics after 30 s, naming what it waited for.
pub async fn wait_for_count(
    observer: &mut sqlx::PgConnection,
    what: &str,
    count: &'static str,
    done: impl Fn(i64) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar(count)
            .fetch_one(&mut *observer)
            .await
            .unwrap();
        if done(n) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 30 s for {what}; the count is still {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
