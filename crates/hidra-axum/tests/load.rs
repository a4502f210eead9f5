//! The web layer's side of per-tenant load: a tenant at its pool cap gets the
//! configured status with `Retry-After`, requests and rate-limit refusals are
//! counted per tenant, and `/health/detailed` names who holds the pool.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use common::*;
use hidra::testing::TestDatabase;
use hidra::{Hidra, TenantCap};
use hidra_axum::health::Health;
use hidra_axum::{TenantLayer, TenantRate};

async fn capped(cap: u32) -> (TestDatabase, Hidra) {
    let db = TestDatabase::create().await.unwrap();
    let hidra = Hidra::builder()
        .schema_sql("001_marker", MARKER_SCHEMA)
        .max_connections(4)
        .tenant_cap(TenantCap::Connections(cap))
        .tenant_wait(Duration::from_millis(100))
        .connect_with(db.connect_options())
        .await
        .unwrap();
    hidra.install().await.unwrap();
    (db, hidra)
}

#[tokio::test]
async fn a_tenant_at_its_cap_gets_503_or_the_configured_429_with_retry_after() {
    let (_db, hidra) = capped(1).await;
    let alpha = tenant_with_marker(&hidra, "alpha").await;
    tenant_with_marker(&hidra, "beta").await;
    let held = hidra.acquire(&alpha).await.unwrap();

    for (layer, expected) in [
        (
            TenantLayer::new(hidra.clone()),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            TenantLayer::new(hidra.clone()).with_busy_status(StatusCode::TOO_MANY_REQUESTS),
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ] {
        let app = routes().layer(layer);
        for uri in ["/marker", "/marker-tx"] {
            let (status, headers, body) =
                send(app.clone(), get_req(uri, &[("x-tenant-id", "alpha")])).await;
            assert_eq!(status, expected, "{uri}");
            assert_eq!(headers["retry-after"], "1");
            assert_eq!(&body[..], br#"{"error":"tenant_busy"}"#);
            // The other tenant is served meanwhile.
            assert_eq!(
                get(&app, uri, &[("x-tenant-id", "beta")]).await,
                (StatusCode::OK, "beta".to_owned())
            );
        }
    }
    drop(held);
    let app = routes().layer(TenantLayer::new(hidra.clone()));
    assert_eq!(
        get(&app, "/marker", &[("x-tenant-id", "alpha")]).await,
        (StatusCode::OK, "alpha".to_owned())
    );
    assert_eq!(hidra.load().get(&alpha.id).unwrap().busy, 4);
}

#[tokio::test]
#[should_panic(expected = "429 or 503")]
async fn a_busy_status_other_than_429_or_503_is_refused() {
    let (_db, hidra) = capped(1).await;
    let _ = TenantLayer::new(hidra).with_busy_status(StatusCode::OK);
}

#[tokio::test]
async fn requests_and_limit_hits_are_counted_and_the_busiest_tenants_reported() {
    let (_db, hidra) = capped(3).await;
    let alpha = tenant_with_marker(&hidra, "alpha").await;
    let beta = tenant_with_marker(&hidra, "beta").await;
    let tenants =
        TenantLayer::new(hidra.clone()).with_rate_limit(TenantRate::per_second(1).with_burst(2));
    let app: Router = routes()
        .layer(tenants)
        .merge(Health::new(hidra.clone()).with_top_tenants(1).router());

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&app, "/whoami", &[("x-tenant-id", "beta")]).await.0);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let load = hidra.load().get(&beta.id).unwrap();
    assert_eq!((load.requests, load.rate_limited), (2, 1));

    // alpha holds two connections now: it leads, beta is summed in `other`.
    let _held = (
        hidra.acquire(&alpha).await.unwrap(),
        hidra.begin(&alpha).await.unwrap(),
    );
    let (status, body) = get(&app, "/health/detailed", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let busiest = &report["tenants"]["busiest"];
    assert_eq!(busiest.as_array().unwrap().len(), 1, "{report}");
    assert_eq!(busiest[0]["tenant"], "alpha");
    assert_eq!(busiest[0]["load"]["connections"], 2);
    assert_eq!(report["tenants"]["other_tenants"], 1);
    assert_eq!(report["tenants"]["other"]["requests"], 2);
    assert_eq!(report["tenants"]["other"]["rate_limited"], 1);
}
