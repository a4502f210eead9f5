//! Transaction-pooler mode through a real PgBouncer (Debian's 1.18, which
//! has no `max_prepared_statements`) in `pool_mode = transaction` in front of
//! the test server: tenants at different migration versions, `TenantConn` and
//! `TenantTx`, many concurrent tasks over fewer server connections, and no
//! session state or named statement left on the proxy's server connections.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{MARKER_SCHEMA, id};
use futures_util::TryStreamExt;
use hidra::testing::{TempPgBouncer, TestDatabase};
use hidra::{Hidra, NewTenant, Tenant};
use sqlx::{Connection, PgConnection};

/// A database with the registry, `n` tenants (every other one a column
/// ahead) with a marker row each, and Hidra in pooler mode through a
/// PgBouncer with `server_connections` server connections.
async fn setup(
    n: usize,
    server_connections: u32,
) -> (TestDatabase, TempPgBouncer, Hidra, Vec<Tenant>) {
    let db = TestDatabase::create().await.expect("create test database");
    let bouncer = TempPgBouncer::start(db.url(), server_connections)
        .await
        .expect("start pgbouncer");
    let hidra = Hidra::builder()
        .schema_sql("001_marker", MARKER_SCHEMA)
        .max_connections(8)
        .transaction_pooler(&bouncer.url_for(db.name()))
        .connect_with(db.connect_options())
        .await
        .expect("connect hidra in pooler mode");
    assert!(hidra.is_pooled());
    hidra.install().await.unwrap();
    let mut tenants = Vec::new();
    for i in 0..n {
        let name = format!("pool_{i}");
        let tenant = hidra.provision(NewTenant::new(id(&name))).await.unwrap();
        let mut tx = hidra.begin(&tenant).await.unwrap();
        sqlx::query("INSERT INTO marker (tenant) VALUES ($1)")
            .bind(&name)
            .execute(&mut tx)
            .await
            .unwrap();
        if i % 2 == 1 {
            sqlx::query("ALTER TABLE marker ADD COLUMN loyalty INT NOT NULL DEFAULT 7")
                .execute(&mut tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        tenants.push(tenant);
    }
    (db, bouncer, hidra, tenants)
}

#[derive(sqlx::FromRow)]
struct Marker {
    tenant: String,
}

#[tokio::test]
async fn mixed_versions_through_pgbouncer_stay_isolated() {
    // 8 tenants, 2 server connections, 8 client connections, 32 tasks.
    let (_db, _bouncer, hidra, tenants) = setup(8, 2).await;
    let tenants = Arc::new(tenants);
    let checked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..32usize {
        let hidra = hidra.clone();
        let tenants = tenants.clone();
        let checked = checked.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..40usize {
                let t = &tenants[(task * 7 + round) % tenants.len()];
                let ahead = t.id.as_str().ends_with(['1', '3', '5', '7']);
                match round % 4 {
                    // SELECT * on a bare connection: each statement in its own
                    // transaction; the result shape differs between tenants.
                    0 => {
                        let mut conn = hidra.acquire(t).await.unwrap();
                        let row = sqlx::query("SELECT * FROM marker WHERE tenant = $1")
                            .bind(t.id.as_str())
                            .fetch_one(&mut conn)
                            .await
                            .unwrap();
                        assert_eq!(sqlx::Row::columns(&row).len(), if ahead { 2 } else { 1 });
                        let name: String = sqlx::Row::get(&row, "tenant");
                        assert_eq!(name, t.id.as_str());
                    }
                    // query_as and a stream on a bare connection.
                    1 => {
                        let mut conn = hidra.acquire(t).await.unwrap();
                        let m: Marker = sqlx::query_as("SELECT tenant FROM marker")
                            .fetch_one(&mut conn)
                            .await
                            .unwrap();
                        assert_eq!(m.tenant, t.id.as_str());
                        let all: Vec<String> = sqlx::query_scalar("SELECT tenant FROM marker")
                            .fetch(&mut conn)
                            .try_collect()
                            .await
                            .unwrap();
                        assert_eq!(all, [t.id.as_str()]);
                    }
                    // Several statements in one transaction, RETURNING *.
                    2 => {
                        let mut tx = hidra.begin(t).await.unwrap();
                        let label = format!("{}-{task}-{round}", t.id);
                        let row = sqlx::query("INSERT INTO items (label) VALUES ($1) RETURNING *")
                            .bind(&label)
                            .fetch_one(&mut tx)
                            .await
                            .unwrap();
                        let stored: String = sqlx::Row::get(&row, "label");
                        assert_eq!(stored, label);
                        let mine: i64 = sqlx::query_scalar(
                            "SELECT count(*) FROM items WHERE label NOT LIKE $1 || '-%'",
                        )
                        .bind(t.id.as_str())
                        .fetch_one(&mut tx)
                        .await
                        .unwrap();
                        assert_eq!(mine, 0, "another tenant's item in {}", t.id);
                        tx.commit().await.unwrap();
                    }
                    // The session is never bound: what the proxy's server
                    // connection shows outside the tenant's transaction.
                    _ => {
                        let mut tx = hidra.begin(t).await.unwrap();
                        let path: String =
                            sqlx::query_scalar("SELECT current_setting('search_path')")
                                .fetch_one(&mut tx)
                                .await
                                .unwrap();
                        assert!(path.contains(&hidra.schema_name(&t.id)), "{path}");
                        tx.rollback().await.unwrap();
                    }
                }
                checked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(checked.load(Ordering::Relaxed), 32 * 40);

    // Nothing left behind on the proxy's server connections: a plain client
    // through PgBouncer sees the default search_path, no tenant setting and no
    // prepared statement (simple queries only, as PgBouncer clients must).
    let mut plain = PgConnection::connect(&_bouncer.url_for(_db.name()))
        .await
        .unwrap();
    for _ in 0..4 {
        let rows = sqlx::raw_sql(
            "SELECT current_setting('search_path') || '|' || \
             coalesce(current_setting('hidra.tenant_id', true), '') || '|' || \
             (SELECT count(*) FROM pg_prepared_statements)",
        )
        .fetch_all(&mut plain)
        .await
        .unwrap();
        let seen: String = sqlx::Row::get(&rows[0], 0);
        assert_eq!(seen, "\"$user\", public||0");
    }
}

#[tokio::test]
async fn a_failed_statement_rolls_back_and_unsupported_calls_say_why() {
    let (_db, _bouncer, hidra, tenants) = setup(2, 1).await;
    let t = &tenants[0];
    let mut conn = hidra.acquire(t).await.unwrap();
    // A failing statement ends its own transaction: the next one works.
    let err = sqlx::query("INSERT INTO missing_table VALUES ($1)")
        .bind(1)
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing_table"), "{err}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM marker WHERE tenant = $1")
        .bind(t.id.as_str())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Each statement commits on its own.
    sqlx::query("INSERT INTO items (label) VALUES ($1)")
        .bind("kept")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let mut tx = hidra.begin(t).await.unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE label = $1")
        .bind("kept")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(kept, 1);
    // prepare() would need a named statement.
    let err = sqlx::Executor::prepare(&mut tx, sqlx::SqlSafeStr::into_sql_str("SELECT 1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("transaction-pooler mode"), "{err}");
    tx.rollback().await.unwrap();
}

/// The control: without pooler mode, through the same PgBouncer with one
/// server connection, sqlx's named statements of two clients collide.
#[tokio::test]
async fn without_pooler_mode_named_statements_collide() {
    let db = TestDatabase::create().await.expect("create test database");
    let bouncer = TempPgBouncer::start(db.url(), 1).await.unwrap();
    let url = bouncer.url_for(db.name());
    let mut a = PgConnection::connect(&url).await.unwrap();
    let mut b = PgConnection::connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT $1")
        .bind(1)
        .fetch_one(&mut a)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let err = sqlx::query_scalar::<_, i32>("SELECT $1 + 1")
        .bind(1)
        .fetch_one(&mut b)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

/// Futures dropped mid-statement, on bare connections and inside
/// transactions, leave nothing that reaches the next user: the pooled
/// connection left inside a transaction is closed at its next checkout.
#[tokio::test]
async fn cancelled_statements_through_pgbouncer_leave_nothing_behind() {
    let (_db, bouncer, hidra, tenants) = setup(4, 2).await;
    let tenants = Arc::new(tenants);
    let mut tasks = Vec::new();
    for task in 0..16usize {
        let hidra = hidra.clone();
        let tenants = tenants.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..10usize {
                let t = &tenants[(task + round) % tenants.len()];
                let slow = async {
                    if round % 2 == 0 {
                        let mut conn = hidra.acquire(t).await.unwrap();
                        sqlx::query("SELECT pg_sleep($1)")
                            .bind(0.2f64)
                            .execute(&mut conn)
                            .await
                            .map(|_| ())
                    } else {
                        let mut tx = hidra.begin(t).await.unwrap();
                        sqlx::query("INSERT INTO items (label) VALUES ($1)")
                            .bind("cancelled")
                            .execute(&mut tx)
                            .await?;
                        sqlx::query("SELECT pg_sleep($1)")
                            .bind(0.2f64)
                            .execute(&mut tx)
                            .await?;
                        tx.commit()
                            .await
                            .map_err(|e| sqlx::Error::Protocol(e.to_string()))
                    }
                };
                // Cut at once, or mid-statement.
                let cut = std::time::Duration::from_millis((task as u64 * 7 + round as u64) % 40);
                let _ = tokio::time::timeout(cut, slow).await;
                // The next user of the pool gets its own tenant only.
                let mut conn = hidra.acquire(t).await.unwrap();
                let seen: String = sqlx::query_scalar("SELECT tenant FROM marker")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(seen, t.id.as_str());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for t in tenants.iter() {
        let mut tx = hidra.begin(t).await.unwrap();
        let cancelled: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE label = $1")
            .bind("cancelled")
            .fetch_one(&mut tx)
            .await
            .unwrap();
        assert_eq!(
            cancelled, 0,
            "a cancelled transaction committed in {}",
            t.id
        );
        tx.rollback().await.unwrap();
    }
    let mut plain = PgConnection::connect(&bouncer.url_for(_db.name()))
        .await
        .unwrap();
    let rows = sqlx::raw_sql(
        "SELECT current_setting('search_path') || '|' || \
         coalesce(current_setting('hidra.tenant_id', true), '')",
    )
    .fetch_all(&mut plain)
    .await
    .unwrap();
    let seen: String = sqlx::Row::get(&rows[0], 0);
    assert_eq!(seen, "\"$user\", public|");
}

#[tokio::test]
async fn a_tenant_is_held_to_its_cap_through_the_pooler_too() {
    let db = TestDatabase::create().await.unwrap();
    let bouncer = TempPgBouncer::start(db.url(), 2).await.unwrap();
    let hidra = Hidra::builder()
        .schema_sql("001_marker", MARKER_SCHEMA)
        .max_connections(4)
        .tenant_cap(hidra::TenantCap::Connections(1))
        .tenant_wait(std::time::Duration::from_millis(100))
        .transaction_pooler(&bouncer.url_for(db.name()))
        .connect_with(db.connect_options())
        .await
        .unwrap();
    hidra.install().await.unwrap();
    let a = hidra.provision(NewTenant::new(id("a"))).await.unwrap();
    let b = hidra.provision(NewTenant::new(id("b"))).await.unwrap();
    let held = hidra.acquire(&a).await.unwrap();
    let busy = hidra.begin(&a).await.unwrap_err();
    assert!(
        matches!(busy, hidra::Error::TenantBusy { cap: 1, .. }),
        "{busy:?}"
    );
    let mut conn = hidra.acquire(&b).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM marker")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
    drop(held);
    drop(hidra.begin(&a).await.unwrap());
    assert_eq!(hidra.load().get(&a.id).unwrap().busy, 1);
}
