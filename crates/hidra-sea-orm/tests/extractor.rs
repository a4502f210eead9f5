//! The axum side: `TenantDatabase` as an extractor behind `TenantLayer`, and
//! SeaORM inside the request transaction the layer settles.

mod common;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use common::*;
use hidra_axum::{RequestTx, TenantLayer};
use hidra_sea_orm::{TenantConnection, TenantDatabase};
use http_body_util::BodyExt;
use sea_orm::ActiveValue::Set;
use sea_orm::QueryOrder;
use sea_orm::entity::prelude::*;
use tower::ServiceExt;

async fn list(db: TenantDatabase) -> Result<Json<Vec<String>>, StatusCode> {
    let all = customer::Entity::find()
        .order_by_asc(customer::Column::Id)
        .all(&db)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(all.into_iter().map(|c| c.name).collect()))
}

#[derive(serde::Deserialize)]
struct Name {
    name: String,
}

/// Inserts in the request's transaction; a name of "oops" is refused after
/// the insert, so the layer rolls it back.
async fn create(mut tx: RequestTx, Query(q): Query<Name>) -> StatusCode {
    let db = TenantConnection::new(&mut tx);
    let added = customer::ActiveModel {
        name: Set(q.name.clone()),
        ..Default::default()
    }
    .insert(&db)
    .await;
    match added {
        Ok(_) if q.name == "oops" => StatusCode::UNPROCESSABLE_ENTITY,
        Ok(_) => StatusCode::CREATED,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn call(app: &Router, method: &str, tenant: &str, uri: &str) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-tenant-id", tenant)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

#[tokio::test]
async fn handlers_get_seaorm_scoped_to_the_requests_tenant() {
    let ctx = setup(3).await;
    ctx.tenant("acme").await;
    ctx.tenant("globex").await;
    let app = Router::new()
        .route("/customers", get(list).post(create))
        .layer(TenantLayer::new(ctx.hidra.clone()));

    for (tenant, name) in [("acme", "wile"), ("globex", "hank"), ("acme", "road")] {
        let (status, _) = call(&app, "POST", tenant, &format!("/customers?name={name}")).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, _) = call(&app, "POST", "globex", "/customers?name=oops").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, body) = call(&app, "GET", "acme", "/customers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Vec<String>>(&body).unwrap(),
        ["wile", "road"]
    );
    let (_, body) = call(&app, "GET", "globex", "/customers").await;
    assert_eq!(
        serde_json::from_slice::<Vec<String>>(&body).unwrap(),
        ["hank"]
    );
    // An unknown tenant never reaches the handler.
    let (status, _) = call(&app, "GET", "nobody", "/customers").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Without the layer the extractor refuses (500), instead of guessing.
    let bare = Router::new().route("/customers", get(list));
    let (status, _) = call(&bare, "GET", "acme", "/customers").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    ctx.teardown().await;
}
