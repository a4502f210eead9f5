//! Shared setup for the integration tests: a throw-away database per test with
//! the registry table created, and a `Hidra` connected to it.

#![allow(dead_code, unreachable_pub)]

use hidra::testing::TestDatabase;
use hidra::{Hidra, HidraBuilder, NewTenant, Tenant, TenantId};

/// The tenant schema used by most tests: a marker row that says whose schema it is.
pub const MARKER_SCHEMA: &str = "CREATE TABLE marker (tenant TEXT NOT NULL);
CREATE TABLE items (id BIGSERIAL PRIMARY KEY, label TEXT NOT NULL);";

pub struct Ctx {
    pub db: TestDatabase,
    pub hidra: Hidra,
}

/// A fresh database with the registry table, and a `Hidra` built from `builder`.
pub async fn setup_with(builder: HidraBuilder) -> Ctx {
    let db = TestDatabase::create().await.expect("create test database");
    let hidra = builder
        .connect_with(db.connect_options())
        .await
        .expect("connect hidra");
    hidra.install().await.expect("create registry");
    Ctx { db, hidra }
}

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

pub fn id(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

/// Provisions `name` and writes its marker row.
pub async fn tenant_with_marker(hidra: &Hidra, name: &str) -> Tenant {
    let tenant = hidra.provision(NewTenant::new(id(name))).await.unwrap();
    let mut conn = hidra.acquire(&tenant).await.unwrap();
    sqlx::query("INSERT INTO marker (tenant) VALUES ($1)")
        .bind(name)
        .execute(&mut conn)
        .await
        .unwrap();
    tenant
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

/// PostgreSQL's notices as sqlx logs them (target `sqlx::postgres::notice`),
/// captured while `f` runs on this thread.
pub async fn notices_during<F: std::future::Future<Output = ()>>(f: F) -> String {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "sqlx::postgres::notice=trace",
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test's runtime is single-threaded: everything `f` does, spawned
    // tasks included, runs on this thread and logs to `subscriber`.
    let guard = tracing::subscriber::set_default(subscriber);
    f.await;
    drop(guard);
    let bytes = capture.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}
