//! Per-tenant request limits: a tenant past its rate gets 429 with
//! Retry-After, the others are served as usual, and a tenant's registry
//! metadata sets its own rate.

mod common;

use std::time::Instant;

use axum::http::StatusCode;
use common::*;
use hidra_axum::{TenantLayer, TenantRate};

/// Sends `n` requests for `tenant` back to back; returns the statuses, the
/// `Retry-After` of the refusals and the time it took.
async fn burst(app: &axum::Router, tenant: &str, n: usize) -> (Vec<StatusCode>, Vec<u64>, f64) {
    let started = Instant::now();
    let (mut statuses, mut waits) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (status, headers, body) =
            send(app.clone(), get_req("/whoami", &[("x-tenant-id", tenant)])).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(&body[..], br#"{"error":"rate_limited"}"#);
            waits.push(headers["retry-after"].to_str().unwrap().parse().unwrap());
        } else {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&body[..], tenant.as_bytes());
        }
        statuses.push(status);
    }
    (statuses, waits, started.elapsed().as_secs_f64())
}

fn served(statuses: &[StatusCode]) -> usize {
    statuses.iter().filter(|s| **s == StatusCode::OK).count()
}

#[tokio::test]
async fn a_tenant_past_its_rate_gets_429_and_the_others_are_served() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "a").await;
    tenant_with_marker(&ctx.hidra, "b").await;
    tenant_with(
        &ctx.hidra,
        "big",
        serde_json::json!({ "requests_per_second": 1, "request_burst": 6 }),
    )
    .await;
    let app = routes().layer(
        TenantLayer::new(ctx.hidra.clone())
            .with_rate_limit(TenantRate::per_second(1).with_burst(2)),
    );

    let (statuses, waits, took) = burst(&app, "a", 10).await;
    // A full bucket lets the burst through; then one request a second.
    assert!(served(&statuses) >= 2, "{statuses:?}");
    assert!(
        served(&statuses) <= 2 + took.ceil() as usize,
        "{statuses:?} in {took} s"
    );
    if took < 7.0 {
        assert!(!waits.is_empty(), "{statuses:?}");
    }
    assert!(waits.iter().all(|w| *w >= 1), "{waits:?}");

    // b has a bucket of its own, full.
    let (statuses, _, _) = burst(&app, "b", 2).await;
    assert_eq!(served(&statuses), 2, "{statuses:?}");

    // big's registry metadata gives it a burst of six.
    let (statuses, _, took) = burst(&app, "big", 10).await;
    assert!(served(&statuses) >= 6, "{statuses:?}");
    assert!(
        served(&statuses) <= 6 + took.ceil() as usize,
        "{statuses:?} in {took} s"
    );
}
