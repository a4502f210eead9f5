//! The registry cache: hits cost no registry read, unknown ids are cached
//! too, lifecycle changes made through the library or by another process reach
//! the cache through LISTEN/NOTIFY, and a lost listener clears the cache.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use common::*;
use hidra::{Confirmation, Hidra, NewTenant};
use hidra_axum::{TenantCache, TenantLayer};

/// The test routes behind a default layer, and that layer's cache.
fn app_with_cache(hidra: &Hidra) -> (Router, TenantCache) {
    let layer = TenantLayer::new(hidra.clone());
    let cache = layer.cache().clone();
    (routes().layer(layer), cache)
}

/// Suspends `tenant` with the registry's change trigger off: no
/// notification reaches any cache.
async fn suspend_unheard(conn: &mut sqlx::PgConnection, tenant: &str) {
    let mut tx = sqlx::Connection::begin(conn).await.unwrap();
    sqlx::raw_sql("ALTER TABLE tenants DISABLE TRIGGER tenants_notify_change")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE tenants SET status = 'suspended' WHERE id = $1")
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql("ALTER TABLE tenants ENABLE TRIGGER tenants_notify_change")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_second_request_reads_no_registry() {
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let (app, cache) = app_with_cache(&ctx.hidra);
    let h = [("x-tenant-id", "alpha")];

    let before = ctx.store.gets();
    assert_eq!(get(&app, "/whoami", &h).await.0, StatusCode::OK);
    assert_eq!(ctx.store.gets(), before + 1);
    for _ in 0..5 {
        assert_eq!(
            get(&app, "/marker", &h).await,
            (StatusCode::OK, "alpha".into())
        );
    }
    assert_eq!(ctx.store.gets(), before + 1);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (5, 1));
    assert!((stats.hit_rate() - 5.0 / 6.0).abs() < 1e-9);
}

#[tokio::test]
async fn concurrent_misses_for_one_tenant_read_the_registry_once() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()));
    let before = ctx.store.gets();
    let requests = (0..50).map(|_| {
        let app = app.clone();
        async move { get(&app, "/whoami", &[("x-tenant-id", "alpha")]).await }
    });
    for answer in futures_util::future::join_all(requests).await {
        assert_eq!(answer, (StatusCode::OK, "alpha".into()));
    }
    assert_eq!(ctx.store.gets(), before + 1);
}

#[tokio::test]
async fn unknown_ids_are_cached_until_registered() {
    let ctx = setup(2).await;
    let (app, cache) = app_with_cache(&ctx.hidra);
    let h = [("x-tenant-id", "ghost")];

    let before = ctx.store.gets();
    for _ in 0..20 {
        assert_eq!(get(&app, "/whoami", &h).await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(ctx.store.gets(), before + 1);

    // Registering the id announces it, which drops the negative entry at once.
    tenant_with_marker(&ctx.hidra, "ghost").await;
    cache.sync().await.unwrap();
    assert_eq!(
        get(&app, "/marker", &h).await,
        (StatusCode::OK, "ghost".into())
    );
}

#[tokio::test]
async fn suspension_through_the_library_is_seen_on_the_next_request() {
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let (app, cache) = app_with_cache(&ctx.hidra);
    let h = [("x-tenant-id", "alpha")];
    assert_eq!(get(&app, "/marker", &h).await.0, StatusCode::OK);
    assert_eq!(get(&app, "/marker", &h).await.0, StatusCode::OK);

    ctx.hidra.suspend(&id("alpha")).await.unwrap();
    cache.sync().await.unwrap();
    assert_eq!(get(&app, "/marker", &h).await.0, StatusCode::NOT_FOUND);

    ctx.hidra.activate(&id("alpha")).await.unwrap();
    cache.sync().await.unwrap();
    assert_eq!(
        get(&app, "/marker", &h).await,
        (StatusCode::OK, "alpha".into())
    );
}

#[tokio::test]
async fn changes_made_by_another_process_reach_the_cache() {
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "beta").await;
    let (app, cache) = app_with_cache(&ctx.hidra);
    for t in ["alpha", "beta"] {
        assert_eq!(
            get(&app, "/whoami", &[("x-tenant-id", t)]).await.0,
            StatusCode::OK
        );
    }

    // Another process: its own handle and pool on the same database.
    let other = Hidra::builder()
        .schema_sql("001_marker", MARKER_SCHEMA)
        .max_connections(1)
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    other.suspend(&id("alpha")).await.unwrap();
    other
        .deprovision(&id("beta"), Confirmation::of(&id("beta")))
        .await
        .unwrap();
    other.provision(NewTenant::new(id("gamma"))).await.unwrap();
    cache.sync().await.unwrap();

    for t in ["alpha", "beta"] {
        assert_eq!(
            get(&app, "/whoami", &[("x-tenant-id", t)]).await.0,
            StatusCode::NOT_FOUND,
            "{t}"
        );
    }
    assert_eq!(
        get(&app, "/whoami", &[("x-tenant-id", "gamma")]).await,
        (StatusCode::OK, "gamma".into())
    );
}

#[tokio::test]
async fn a_lost_listener_clears_the_cache_when_it_is_back() {
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let (app, cache) = app_with_cache(&ctx.hidra);
    let h = [("x-tenant-id", "alpha")];
    assert_eq!(get(&app, "/whoami", &h).await.0, StatusCode::OK);
    cache.sync().await.unwrap();

    // A change the listener never hears: the trigger is off while it is made.
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    suspend_unheard(&mut conn, "alpha").await;
    cache.sync().await.unwrap();
    // Unheard, so the cached record is still served (up to its TTL)...
    assert_eq!(get(&app, "/whoami", &h).await.0, StatusCode::OK);

    // ...until the listener's connection is lost and re-established.
    let pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(terminated);
    // Termination is asynchronous: wait until the backend is gone, so the next
    // barrier cannot reach the old connection.
    for _ in 0..500 {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(conn);
    cache.sync().await.unwrap();
    assert_eq!(get(&app, "/whoami", &h).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_thread_drops_its_copy_of_a_changed_record() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let (app, cache) = app_with_cache(&ctx.hidra);
    let h = [("x-tenant-id", "alpha")];
    // Requests on every worker thread: each keeps its own copy of the record.
    let burst = |app: Router| async move {
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move { get(&app, "/whoami", &h).await.0 })
            })
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        statuses
    };
    // One miss fills the shared cache; the bursts after it copy the record
    // to every thread and then serve it from those copies.
    assert_eq!(get(&app, "/whoami", &h).await.0, StatusCode::OK);
    for _ in 0..2 {
        let statuses = burst(app.clone()).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    }
    assert_eq!(cache.stats().hits, 128);

    ctx.hidra.suspend(&id("alpha")).await.unwrap();
    cache.sync().await.unwrap();
    let after = burst(app.clone()).await;
    assert!(
        after.iter().all(|s| *s == StatusCode::NOT_FOUND),
        "a thread served its copy of the suspended tenant: {after:?}"
    );
}

#[tokio::test]
async fn a_copied_record_lives_no_longer_than_its_ttl() {
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let ttl = Duration::from_millis(300);
    let cache = TenantCache::builder(ctx.hidra.clone()).ttl(ttl).build();
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()).with_cache(cache.clone()));
    let h = [("x-tenant-id", "alpha")];
    for _ in 0..3 {
        assert_eq!(get(&app, "/whoami", &h).await.0, StatusCode::OK);
    }
    assert!(
        cache.stats().hits >= 2,
        "the record is served from the cache"
    );

    // A change the cache never hears of: only the TTL can end the copy.
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    suspend_unheard(&mut conn, "alpha").await;
    drop(conn);
    let since = std::time::Instant::now();
    let mut status = StatusCode::OK;
    while status == StatusCode::OK && since.elapsed() < ttl * 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = get(&app, "/whoami", &h).await.0;
    }
    assert_eq!(status, StatusCode::NOT_FOUND, "served past its TTL");
}
