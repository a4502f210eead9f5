//! `RequestReadConn` and the health report with a real streaming replica.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use hidra::testing::TempCluster;
use hidra::{Hidra, NewTenant, TenantId};
use hidra_axum::health::Health;
use hidra_axum::{RequestReadConn, TenantLayer};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn whose(mut conn: RequestReadConn) -> String {
    let (standby, tenant): (bool, String) =
        sqlx::query_as("SELECT pg_is_in_recovery(), (SELECT tenant FROM marker)")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    format!("{standby} {tenant}")
}

async fn get_text(app: &Router, uri: &str, tenant: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::builder().uri(uri);
    if let Some(t) = tenant {
        request = request.header("x-tenant-id", t);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn read_connections_come_from_the_replica_and_health_reports_it() {
    let primary = TempCluster::start().await.unwrap();
    let mut replica = primary.start_replica().await.unwrap();
    let h = Hidra::builder()
        .schema_sql("001_marker", "CREATE TABLE marker (tenant TEXT NOT NULL)")
        .read_replica(replica.url())
        .replica_wait(std::time::Duration::from_secs(2))
        .connect(primary.url())
        .await
        .unwrap();
    h.install().await.unwrap();
    for name in ["acme", "globex"] {
        let t = h
            .provision(NewTenant::new(TenantId::new(name).unwrap()))
            .await
            .unwrap();
        let mut conn = h.acquire(&t).await.unwrap();
        sqlx::query("INSERT INTO marker VALUES ($1)")
            .bind(name)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    // Wait until the replica has the rows.
    let written = h.wal_position().await.unwrap();
    let acme = h
        .tenant(&TenantId::new("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    drop(h.acquire_read_after(&acme, written).await.unwrap());

    let app = Router::new()
        .route("/whose", get(whose))
        .layer(TenantLayer::new(h.clone()))
        .merge(Health::new(h.clone()).router());
    for name in ["acme", "globex"] {
        let (status, body) = get_text(&app, "/whose", Some(name)).await;
        assert_eq!((status, body), (StatusCode::OK, format!("true {name}")));
    }
    let (_, report) = get_text(&app, "/health/detailed", None).await;
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["replica"]["reachable"], true, "{report}");
    assert!(report["replica"]["lag_bytes"].is_u64(), "{report}");

    replica.pause().await.unwrap();
    let (status, body) = get_text(&app, "/whose", Some("acme")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "false acme"));
    let (_, report) = get_text(&app, "/health/detailed", None).await;
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["replica"]["reachable"], false, "{report}");
    h.close().await;
    replica.stop().await.unwrap();
    primary.stop().await.unwrap();
}
