//! The health routes: liveness, readiness with a real database check, and the
//! detailed report.

mod common;

use axum::Router;
use axum::http::StatusCode;
use common::*;
use hidra_axum::TenantLayer;
use hidra_axum::health::Health;
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn health_routes_report_the_database_pool_and_cache() {
    let ctx = setup(3).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let tenants = TenantLayer::new(ctx.hidra.clone()).with_excluded("/health");
    let app: Router = routes()
        .merge(
            Health::new(ctx.hidra.clone())
                .with_cache(tenants.cache().clone())
                .router(),
        )
        .layer(tenants);

    for uri in ["/health", "/health/live"] {
        let (status, body) = get(&app, uri, &[]).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(json(&body), serde_json::json!({ "status": "ok" }));
    }
    let (status, body) = get(&app, "/health/ready", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["status"], "ready");

    // One miss, then two hits.
    for _ in 0..3 {
        assert_eq!(
            get(&app, "/whoami", &[("x-tenant-id", "alpha")]).await.0,
            StatusCode::OK
        );
    }
    let (status, body) = get(&app, "/health/detailed", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let report = json(&body);
    assert_eq!(report["status"], "ok");
    assert_eq!(report["database"]["reachable"], true);
    assert!(report["database"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(report["pool"]["max"], 3);
    let size = report["pool"]["size"].as_u64().unwrap();
    assert!((1..=3).contains(&size), "{report}");
    assert!(report["pool"]["idle"].as_u64().unwrap() <= size);
    assert_eq!(report["cache"]["hits"], 2);
    assert_eq!(report["cache"]["misses"], 1);
    assert!((report["cache"]["hit_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(report["cache"]["entries"], 1, "{report}");
}

#[tokio::test]
async fn readiness_fails_with_503_when_the_database_is_gone() {
    let ctx = setup(2).await;
    let app: Router = hidra_axum::health::router(ctx.hidra.clone());
    assert_eq!(get(&app, "/health/ready", &[]).await.0, StatusCode::OK);

    ctx.hidra.close().await;
    let (status, body) = get(&app, "/health/ready", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body), serde_json::json!({ "status": "unavailable" }));
    let (status, body) = get(&app, "/health/detailed", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let report = json(&body);
    assert_eq!(report["database"]["reachable"], false);
    assert_eq!(report["database"]["latency_ms"], Value::Null);
    assert_eq!(report["cache"], Value::Null);
    // Liveness does not depend on the database.
    assert_eq!(get(&app, "/health/live", &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn readiness_times_out_on_a_database_that_does_not_answer() {
    let ctx = setup(1).await;
    let app: Router = Health::new(ctx.hidra.clone())
        .with_timeout(std::time::Duration::from_millis(200))
        .router();
    // The only connection is held: the check cannot get one.
    let held = ctx.hidra.acquire_shared().await.unwrap();
    assert_eq!(
        get(&app, "/health/ready", &[]).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    drop(held);
    let app: Router = Health::new(ctx.hidra.clone()).router();
    assert_eq!(get(&app, "/health/ready", &[]).await.0, StatusCode::OK);
}
