//! `TenantTx`: committed on a success response, rolled back on an error
//! response or a panic, settled early on request, refused when extracted twice.

mod common;

use axum::http::StatusCode;
use common::*;
use hidra_axum::TenantLayer;
use tower::ServiceExt;

#[tokio::test]
async fn success_commits_and_error_rolls_back() {
    let ctx = setup(2).await;
    let alpha = tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()));
    let h = [("x-tenant-id", "alpha")];

    let (status, _, _) = send(app.clone(), post_req("/items?label=kept", &h)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, body) = send(app.clone(), post_req("/items?label=lost&fail=true", &h)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(&body[..], b"failed after writing");
    let (status, _, _) = send(
        app.clone(),
        post_req("/items?label=moved&redirect=true", &h),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    assert_eq!(item_labels(&ctx.hidra, &alpha).await, ["kept", "moved"]);
    // The handlers' own view agrees.
    assert_eq!(
        get(&app, "/items", &h).await,
        (StatusCode::OK, "kept,moved".into())
    );
}

#[tokio::test]
async fn a_panicking_handler_leaves_nothing() {
    // One connection: the next request gets the very connection the panicking
    // handler had, and must find it clean.
    let ctx = setup(1).await;
    let alpha = tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "beta").await;
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()));

    let req = post_req("/items/panic?label=lost", &[("x-tenant-id", "alpha")]);
    let outcome = tokio::spawn(app.clone().oneshot(req)).await;
    assert!(outcome.unwrap_err().is_panic());

    assert!(item_labels(&ctx.hidra, &alpha).await.is_empty());
    assert_eq!(
        get(&app, "/marker-tx", &[("x-tenant-id", "beta")]).await,
        (StatusCode::OK, "beta".into())
    );
    let (status, _, _) = send(
        app.clone(),
        post_req("/items?label=after", &[("x-tenant-id", "alpha")]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(item_labels(&ctx.hidra, &alpha).await, ["after"]);
}

#[tokio::test]
async fn an_early_commit_stands_whatever_the_response() {
    let ctx = setup(2).await;
    let alpha = tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()));
    let (status, _, _) = send(
        app,
        post_req(
            "/items/commit-then-fail?label=early",
            &[("x-tenant-id", "alpha")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(item_labels(&ctx.hidra, &alpha).await, ["early"]);
}

#[tokio::test]
async fn a_failed_commit_is_a_500_without_database_text() {
    let ctx = setup(2).await;
    let alpha = tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()));
    let (status, _, body) = send(
        app.clone(),
        post_req("/break-at-commit", &[("x-tenant-id", "alpha")]),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(&body[..], br#"{"error":"internal_error"}"#);
    let mut conn = ctx.hidra.acquire(&alpha).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deferred")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn extracting_it_twice_is_refused() {
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()));
    let (status, body) = get(&app, "/two-tx", &[("x-tenant-id", "alpha")]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("extracted twice"), "{body}");
}
