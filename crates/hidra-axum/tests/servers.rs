//! Tenants on several servers behind the tenant layer: requests through the
//! extractors (`RequestConn`, `RequestTx`) land on each tenant's own server
//! for every strategy, checked on the servers themselves, and
//! `/health/detailed` reports each registered server.

mod common;

use axum::body::Body;
use common::*;
use hidra::testing::TempCluster;
use hidra::{NewServer, NewTenant, ServerName, Strategy, Tenant};
use hidra_axum::TenantLayer;
use http::StatusCode;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tower::ServiceExt;

async fn start_server(hidra: &hidra::Hidra, name: &str) -> TempCluster {
    let shared = MARKER_SCHEMA.replace("CREATE TABLE ", "CREATE TABLE public.");
    let (cluster, url) = hidra_test_support::app_server(&format!(
        "{shared}
         {}
         {}",
        hidra::rls::tenant_table_sql("public.marker").unwrap(),
        hidra::rls::tenant_table_sql("public.items").unwrap(),
    ))
    .await;
    hidra
        .servers()
        .add(NewServer::new(ServerName::new(name).unwrap(), url))
        .await
        .unwrap();
    cluster
}

/// The item labels `cluster` holds for `tenant`, read on the server itself.
async fn labels_on(cluster: &TempCluster, tenant: &Tenant) -> Vec<String> {
    let p = &tenant.placement;
    let url = match &p.database {
        Some(db) => format!("{}/{db}", cluster.url().rsplit_once('/').unwrap().0),
        None => cluster.url().to_owned(),
    };
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let sql = match p.strategy {
        Strategy::RowLevel => format!(
            "SELECT label FROM public.items WHERE tenant_id = '{}' ORDER BY id",
            tenant.id
        ),
        _ => format!("SELECT label FROM \"{}\".items ORDER BY id", p.schema),
    };
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// `/health/detailed` (a registered server gets half a second to answer),
/// which must answer `200`.
async fn detailed(hidra: &hidra::Hidra) -> serde_json::Value {
    let health = hidra_axum::health::Health::new(hidra.clone())
        .with_timeout(std::time::Duration::from_millis(500))
        .router::<()>();
    let request = http::Request::get("/health/detailed").body(Body::empty());
    let res = health.oneshot(request.unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(res.into_body()).await;
    serde_json::from_slice(&body.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn the_extractors_reach_each_tenants_server_for_every_strategy() {
    let ctx = setup(4).await;
    let hidra = &ctx.hidra;
    let s1 = start_server(hidra, "s1").await;
    let s2 = start_server(hidra, "s2").await;
    let mut tenants = Vec::new();
    for (tid, strategy, server) in [
        ("schema-s1", Strategy::Schema, Some("s1")),
        ("db-s2", Strategy::Database, Some("s2")),
        ("rows-s1", Strategy::RowLevel, Some("s1")),
        ("rows-s2", Strategy::RowLevel, Some("s2")),
        ("schema-home", Strategy::Schema, None),
    ] {
        let new = NewTenant::new(id(tid)).strategy(strategy);
        let new = match server {
            Some(s) => new.on_server(ServerName::new(s).unwrap()),
            None => new.on_control_server(),
        };
        let tenant = hidra.provision(new).await.unwrap();
        let mut conn = hidra.acquire(&tenant).await.unwrap();
        sqlx::query("INSERT INTO marker (tenant) VALUES ($1)")
            .bind(tid)
            .execute(&mut conn)
            .await
            .unwrap();
        drop(conn);
        tenants.push((tenant, server));
    }

    let app = routes().layer(TenantLayer::new(hidra.clone()));
    for (tenant, _) in &tenants {
        let h = [("x-tenant-id", tenant.id.as_str())];
        // Each tenant sees its own marker, through a connection and a
        // transaction.
        assert_eq!(
            get(&app, "/marker", &h).await,
            (StatusCode::OK, tenant.id.to_string())
        );
        assert_eq!(
            get(&app, "/marker-tx", &h).await,
            (StatusCode::OK, tenant.id.to_string())
        );
        let uri = format!("/items?label={}-item", tenant.id);
        let (status, _, _) = send(app.clone(), post_req(&uri, &h)).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            get(&app, "/items", &h).await,
            (StatusCode::OK, format!("{}-item", tenant.id))
        );
    }
    // The writes are on the tenants' own servers, and nowhere else.
    for (tenant, server) in &tenants {
        let expected = vec![format!("{}-item", tenant.id)];
        match server {
            Some("s1") => assert_eq!(labels_on(&s1, tenant).await, expected),
            Some("s2") => assert_eq!(labels_on(&s2, tenant).await, expected),
            _ => assert_eq!(item_labels(hidra, tenant).await, expected),
        }
        if tenant.placement.strategy == Strategy::RowLevel {
            let other = if *server == Some("s1") { &s2 } else { &s1 };
            assert!(labels_on(other, tenant).await.is_empty());
        }
    }

    // `/health/detailed` names both servers, with their tenants and pools.
    let body = detailed(hidra).await;
    assert_eq!(body["status"], "ok", "{body}");
    let servers = body["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{body}");
    assert_eq!(servers[0]["name"], "s1");
    assert_eq!(servers[0]["tenants"], 2);
    assert_eq!(servers[0]["reachable"], true);
    assert!(servers[0]["pool"]["size"].as_u64().unwrap() >= 1, "{body}");
    assert_eq!(servers[1]["tenants"], 2);

    // A stopped server degrades the report without failing it.
    s2.stop().await.unwrap();
    let body = detailed(hidra).await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["servers"][1]["reachable"], false, "{body}");
    // The other servers' tenants are still served.
    let h = [("x-tenant-id", "schema-s1")];
    assert_eq!(
        get(&app, "/marker", &h).await,
        (StatusCode::OK, "schema-s1".to_owned())
    );
}
