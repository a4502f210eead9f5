//! Tenant isolation through `acquire` and `begin`, under concurrency,
//! cancellation and panics. Every test runs against a real PostgreSQL.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hidra::{Hidra, Tenant};
use rand::Rng;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

async fn marker_via_conn(hidra: &Hidra, tenant: &Tenant) -> String {
    let mut conn = hidra.acquire(tenant).await.unwrap();
    sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn marker_via_tx(hidra: &Hidra, tenant: &Tenant) -> String {
    let mut tx = hidra.begin(tenant).await.unwrap();
    let m = sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    m
}

/// Asserts that every connection of the pool is clean for unscoped use and
/// correct for every tenant.
async fn assert_pool_clean(hidra: &Hidra, tenants: &[Tenant], pool_size: usize) {
    // Check out every connection at once, so each one is inspected.
    let mut shared = Vec::new();
    for _ in 0..pool_size {
        shared.push(hidra.acquire_shared().await.unwrap());
    }
    for conn in &mut shared {
        let path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(
            path, "\"$user\", public",
            "unscoped connection kept a tenant path"
        );
        let err = sqlx::query("SELECT 1 FROM marker")
            .execute(&mut **conn)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
    drop(shared);
    for tenant in tenants {
        let mut conns = Vec::new();
        for _ in 0..pool_size {
            conns.push(hidra.acquire(tenant).await.unwrap());
        }
        for conn in &mut conns {
            let m: String = sqlx::query_scalar("SELECT tenant FROM marker")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(m, tenant.id.as_str());
        }
    }
}

/// Waits until every connection of the pool is back in it (those cut off
/// are settled or closed in the background); panics after 30 s.
async fn wait_until_all_returned(hidra: &Hidra) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = hidra.pool_status();
        if status.idle == status.size {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connections still checked out 30 s after their tasks ended: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts a slow read of `tenant`'s marker (through `acquire`, or `begin`
/// when `in_tx`) and drops it once the server runs it, as a timeout would;
/// starts over if the read finished before that was seen. Panics after 30 s.
async fn cut_mid_query(
    hidra: &Hidra,
    tenant: &Tenant,
    in_tx: bool,
    tag: &str,
    observer: &mut PgConnection,
) {
    let sql = format!("SELECT tenant FROM marker, pg_sleep(0.2) /* {tag} */");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "could not cut a query of {} off mid-flight within 30 s",
            tenant.id
        );
        let work = async {
            if in_tx {
                let mut tx = hidra.begin(tenant).await.unwrap();
                let m = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.clone()))
                    .fetch_one(&mut tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                m
            } else {
                let mut conn = hidra.acquire(tenant).await.unwrap();
                sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.clone()))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        };
        let running = async {
            loop {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid() AND wait_event = 'PgSleep' AND strpos(query, $1) > 0",
                )
                .bind(tag)
                .fetch_one(&mut *observer)
                .await
                .unwrap();
                if n > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::select! {
            m = work => assert_eq!(m, tenant.id.as_str(), "wrong-tenant read"),
            () = running => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tenants_same_tables_see_only_their_rows() {
    let ctx = setup(4).await;
    let h = &ctx.hidra;
    let a = tenant_with_marker(h, "alpha").await;
    let b = tenant_with_marker(h, "beta").await;

    for (tenant, labels) in [(&a, ["a1", "a2"]), (&b, ["b1", "b2"])] {
        let mut conn = h.acquire(tenant).await.unwrap();
        for l in labels {
            sqlx::query("INSERT INTO items (label) VALUES ($1)")
                .bind(l)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    for (tenant, want) in [(&a, vec!["a1", "a2"]), (&b, vec!["b1", "b2"])] {
        let mut conn = h.acquire(tenant).await.unwrap();
        let got: Vec<String> = sqlx::query_scalar("SELECT label FROM items ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(got, want);
        drop(conn);
        let mut tx = h.begin(tenant).await.unwrap();
        let got: Vec<String> = sqlx::query_scalar("SELECT label FROM items ORDER BY id")
            .fetch_all(&mut tx)
            .await
            .unwrap();
        assert_eq!(got, want);
        tx.rollback().await.unwrap();
    }
    // A write through a rolled-back transaction leaves nothing.
    let mut tx = h.begin(&a).await.unwrap();
    sqlx::query("INSERT INTO items (label) VALUES ('ghost')")
        .execute(&mut tx)
        .await
        .unwrap();
    drop(tx);
    assert_eq!(marker_via_conn(h, &a).await, "alpha");
    let mut conn = h.acquire(&a).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE label = 'ghost'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
    drop(conn);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_interleaved_tasks_never_read_another_tenant() {
    const POOL: u32 = 6;
    let ctx = setup_uncapped(POOL).await;
    let h = ctx.hidra.clone();
    let mut tenants = Vec::new();
    for i in 0..8 {
        tenants.push(tenant_with_marker(&h, &format!("t{i}")).await);
    }
    let tenants = Arc::new(tenants);
    let wrong = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..1600usize {
        let (h, tenants, wrong) = (h.clone(), tenants.clone(), wrong.clone());
        tasks.push(tokio::spawn(async move {
            let tenant = &tenants[n % tenants.len()];
            let m = if n % 3 == 0 {
                marker_via_tx(&h, tenant).await
            } else {
                marker_via_conn(&h, tenant).await
            };
            if m != tenant.id.as_str() {
                wrong.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong-tenant reads");
    assert_pool_clean(&h, &tenants, POOL as usize).await;
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_queries_do_not_leak_bindings() {
    const POOL: u32 = 5;
    let ctx = setup_uncapped(POOL).await;
    let h = ctx.hidra.clone();
    let mut tenants = Vec::new();
    for i in 0..8 {
        tenants.push(tenant_with_marker(&h, &format!("c{i}")).await);
    }
    let tenants = Arc::new(tenants);
    let wrong = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let cancelled_checked_out = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..1600usize {
        let (h, tenants, wrong, cancelled, cancelled_checked_out) = (
            h.clone(),
            tenants.clone(),
            wrong.clone(),
            cancelled.clone(),
            cancelled_checked_out.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let tenant = &tenants[n % tenants.len()];
            let budget = Duration::from_micros(rand::rng().random_range(0..3000));
            let checked_out = AtomicBool::new(false);
            let work = async {
                if n % 2 == 0 {
                    let mut conn = h.acquire(tenant).await.unwrap();
                    checked_out.store(true, Ordering::Relaxed);
                    sqlx::query_scalar::<_, String>(
                        "SELECT tenant FROM marker, pg_sleep(random() * 0.002)",
                    )
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
                } else {
                    let mut tx = h.begin(tenant).await.unwrap();
                    checked_out.store(true, Ordering::Relaxed);
                    let m = sqlx::query_scalar::<_, String>(
                        "SELECT tenant FROM marker, pg_sleep(random() * 0.002)",
                    )
                    .fetch_one(&mut tx)
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                    m
                }
            };
            match tokio::time::timeout(budget, work).await {
                Ok(m) if m != tenant.id.as_str() => {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => {
                    cancelled.fetch_add(1, Ordering::Relaxed);
                    if checked_out.load(Ordering::Relaxed) {
                        cancelled_checked_out.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong-tenant reads");
    // How many of those were cut off in flight depends on the machine's
    // speed; these are cut off while the server runs them, every time.
    let mut observer = PgConnection::connect_with(&ctx.db.connect_options())
        .await
        .unwrap();
    for (n, tenant) in tenants.iter().enumerate() {
        cut_mid_query(&h, tenant, n % 2 == 1, &format!("cut-{n}"), &mut observer).await;
    }
    observer.close().await.unwrap();
    eprintln!(
        "cancelled {} of the 1600 random reads ({} after the checkout), and {} mid-query",
        cancelled.load(Ordering::Relaxed),
        cancelled_checked_out.load(Ordering::Relaxed),
        tenants.len()
    );
    // Let the cut-off connections be settled and come back.
    wait_until_all_returned(&h).await;
    assert_pool_clean(&h, &tenants, POOL as usize).await;
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn panicking_tasks_do_not_leak_bindings() {
    const POOL: u32 = 4;
    let ctx = setup_uncapped(POOL).await;
    let h = ctx.hidra.clone();
    let mut tenants = Vec::new();
    for i in 0..8 {
        tenants.push(tenant_with_marker(&h, &format!("p{i}")).await);
    }
    let tenants = Arc::new(tenants);
    let mut tasks = Vec::new();
    for n in 0..1600usize {
        let (h, tenants) = (h.clone(), tenants.clone());
        tasks.push(tokio::spawn(async move {
            let tenant = &tenants[n % tenants.len()];
            if n % 4 == 0 {
                let mut conn = h.acquire(tenant).await.unwrap();
                sqlx::query("SELECT tenant FROM marker")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                panic!("handler bug while holding a tenant connection");
            }
            if n % 4 == 1 {
                let mut tx = h.begin(tenant).await.unwrap();
                sqlx::query("INSERT INTO items (label) VALUES ('from-panic')")
                    .execute(&mut tx)
                    .await
                    .unwrap();
                panic!("handler bug inside a tenant transaction");
            }
            marker_via_conn(&h, tenant).await == tenant.id.as_str()
        }));
    }
    let (mut panics, mut ok) = (0, 0);
    for t in tasks {
        match t.await {
            Ok(true) => ok += 1,
            Ok(false) => panic!("wrong-tenant read"),
            Err(e) if e.is_panic() => panics += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, panics), (800, 800));
    // Let the connections the panics dropped be settled and come back.
    wait_until_all_returned(&h).await;
    assert_pool_clean(&h, &tenants, POOL as usize).await;
    // The panicking transactions rolled back.
    for t in tenants.iter() {
        let mut conn = h.acquire(t).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_stray_set_search_path_does_not_survive_the_checkout() {
    let ctx = setup(1).await;
    let h = &ctx.hidra;
    let a = tenant_with_marker(h, "left").await;
    let b = tenant_with_marker(h, "right").await;
    // User code points tenant A's connection at B's schema and returns it.
    let mut conn = h.acquire(&a).await.unwrap();
    sqlx::raw_sql("SET search_path TO tenant_right")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(marker_via_conn(h, &a).await, "left");
    assert_eq!(marker_via_tx(h, &a).await, "left");
    assert_eq!(marker_via_conn(h, &b).await, "right");
    assert_pool_clean(h, &[a, b], 1).await;
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_transaction_ended_early_by_user_code_does_not_fall_back_to_an_earlier_tenant() {
    let ctx = setup(1).await;
    let h = &ctx.hidra;
    let a = tenant_with_marker(h, "first").await;
    let b = tenant_with_marker(h, "second").await;
    // The only connection last served A with a session binding.
    assert_eq!(marker_via_conn(h, &a).await, "first");
    // B's transaction is ended by a raw COMMIT in user code: its
    // transaction-local binding goes, and A's must not be what is left.
    let mut tx = h.begin(&b).await.unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut tx).await.unwrap();
    let seen: Option<String> = sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_optional(&mut tx)
        .await
        .ok()
        .flatten();
    assert_ne!(
        seen.as_deref(),
        Some("first"),
        "B's transaction read A's rows"
    );
    drop(tx);
    assert_pool_clean(h, &[a, b], 1).await;
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_transaction_left_open_is_rolled_back_not_inherited() {
    let ctx = setup(1).await;
    let h = &ctx.hidra;
    let a = tenant_with_marker(h, "opener").await;
    let b = tenant_with_marker(h, "victim").await;
    // User code opens a raw transaction on tenant A's connection, writes, and
    // drops the connection without finishing it.
    let mut conn = h.acquire(&a).await.unwrap();
    sqlx::raw_sql("BEGIN; INSERT INTO items (label) VALUES ('uncommitted')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    // Tenant B's work must not run inside A's transaction (its COMMIT would
    // otherwise commit A's write), and B's binding must hold afterwards.
    let mut tx = h.begin(&b).await.unwrap();
    sqlx::query("INSERT INTO items (label) VALUES ('b-row')")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(marker_via_conn(h, &b).await, "victim");
    let mut conn = h.acquire(&a).await.unwrap();
    let labels: Vec<String> = sqlx::query_scalar("SELECT label FROM items")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(
        labels.is_empty(),
        "A's abandoned write was committed: {labels:?}"
    );
    drop(conn);
    // Same through an unscoped and a tenant checkout.
    for _ in 0..2 {
        let mut conn = h.acquire(&a).await.unwrap();
        sqlx::raw_sql("BEGIN; SET LOCAL search_path TO tenant_victim")
            .execute(&mut conn)
            .await
            .unwrap();
        drop(conn);
        assert_eq!(marker_via_conn(h, &a).await, "opener");
    }
    assert_pool_clean(h, &[a, b], 1).await;
    ctx.db.drop_now().await.unwrap();
}
