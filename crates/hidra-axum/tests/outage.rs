//! The web layer through a database outage, against a throw-away cluster of
//! the test's own: requests get a fast `503` with `Retry-After` while the
//! server is stopped, are served again once it is back, and the registry
//! listener reconnects by itself, so a tenant suspended by another process
//! after the restart is refused within about a second.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use hidra::testing::TempCluster;
use hidra::{Hidra, NewTenant};
use hidra_axum::TenantLayer;

async fn handle(url: &str) -> Hidra {
    Hidra::builder()
        .schema_sql("001_marker", MARKER_SCHEMA)
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_a_restart_requests_fail_fast_and_invalidation_resumes() {
    let mut cluster = TempCluster::start()
        .await
        .expect("start a throw-away cluster");
    let served = handle(cluster.url()).await;
    served.install().await.unwrap();
    let tenant = served.provision(NewTenant::new(id("gamma"))).await.unwrap();
    let mut conn = served.acquire(&tenant).await.unwrap();
    sqlx::query("INSERT INTO marker VALUES ('gamma')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let layer = TenantLayer::new(served.clone());
    let cache = layer.cache().clone();
    let app = routes().layer(layer);
    let h = [("x-tenant-id", "gamma")];
    assert_eq!(
        get(&app, "/marker", &h).await,
        (StatusCode::OK, "gamma".into())
    );

    // Down: 503 with Retry-After, fast (no wait for the 30 s acquire timeout).
    cluster.pause().await.unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        // A lookup that misses the cache, and a checkout.
        let (status, headers, _) =
            send(app.clone(), get_req("/marker", &[("x-tenant-id", "delta")])).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            headers.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let (status, headers, _) = send(app.clone(), get_req("/marker", &h)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key("retry-after"));
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(15),
        "a request waited {slowest:?}"
    );

    // Back: served again, and the listener is back too.
    cluster.resume().await.unwrap();
    let back = Instant::now();
    while get(&app, "/marker", &h).await != (StatusCode::OK, "gamma".into()) {
        assert!(back.elapsed() < Duration::from_secs(30), "not served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = back.elapsed();

    // Another process suspends the tenant: refused soon, through the
    // reconnected listener (the cache's TTL is a minute).
    let other = handle(cluster.url()).await;
    other.suspend(&id("gamma")).await.unwrap();
    let suspended = Instant::now();
    loop {
        let (status, _) = get(&app, "/marker", &h).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            suspended.elapsed() < Duration::from_secs(20),
            "the suspension never reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "outage: slowest refusal {slowest:?}, served again {recovered:?} after the server was back, \
         suspension seen after {:?}",
        suspended.elapsed()
    );
    cache.sync().await.unwrap();
    other.close().await;
    served.close().await;
    cluster.stop().await.unwrap();
}
