//! A small multi-tenant API in one file: two tenants, each with its own schema
//! and its own customers, served by the same handlers.
//!
//! ```sh
//! cargo run -p hidra-axum --example quickstart
//! ```
//!
//! It needs no setup: it uses `DATABASE_URL`, else a PostgreSQL answering on
//! 127.0.0.1:5432, else a throw-away cluster started from the installed
//! `postgresql` server binaries. It works in a fresh database of its own,
//! dropped when you stop it with Ctrl-C. `PORT` picks the port (default 3000).

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use hidra::testing::{PgServer, TestDatabase};
use hidra::{Hidra, NewTenant, TenantId};
use hidra_axum::health::Health;
use hidra_axum::{CurrentTenant, RequestConn, RequestTx, TenantLayer};
use serde::Deserialize;
use serde_json::{Value, json};

const TENANT_SCHEMA: &str = "CREATE TABLE customers (
    id    BIGSERIAL PRIMARY KEY,
    name  TEXT NOT NULL CHECK (name <> ''),
    email TEXT
);";

type Answer = Result<Json<Value>, (StatusCode, Json<Value>)>;

fn internal(e: sqlx::Error) -> (StatusCode, Json<Value>) {
    tracing::error!(error = %e, "query failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "internal" })),
    )
}

/// `GET /customers`: the tenant's customers, nobody else's.
async fn list(tenant: CurrentTenant, mut conn: RequestConn) -> Answer {
    let rows: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, name, email FROM customers ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .map_err(internal)?;
    let customers: Vec<Value> = rows
        .into_iter()
        .map(|(id, name, email)| json!({ "id": id, "name": name, "email": email }))
        .collect();
    Ok(Json(json!({ "tenant": tenant.id, "customers": customers })))
}

/// `GET /customers/{id}`.
async fn show(mut conn: RequestConn, Path(id): Path<i64>) -> Answer {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT name, email FROM customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(internal)?;
    match row {
        Some((name, email)) => Ok(Json(json!({ "id": id, "name": name, "email": email }))),
        None => Err((StatusCode::NOT_FOUND, Json(json!({ "error": "not_found" })))),
    }
}

#[derive(Deserialize)]
struct NewCustomer {
    name: String,
    email: Option<String>,
}

/// `POST /customers`: written in a transaction the layer commits on success.
async fn create(mut tx: RequestTx, Json(body): Json<NewCustomer>) -> Answer {
    if body.name.trim().is_empty() {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": "validation", "field": "name" })),
        ));
    }
    let id: i64 =
        sqlx::query_scalar("INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id")
            .bind(&body.name)
            .bind(&body.email)
            .fetch_one(&mut *tx)
            .await
            .map_err(internal)?;
    Ok(Json(
        json!({ "id": id, "name": body.name, "email": body.email }),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();

    let server = PgServer::get().await?;
    if server.is_temporary() {
        tracing::info!("no PostgreSQL answered: started a throw-away cluster for this run");
    }
    let db = TestDatabase::create().await?;
    tracing::info!(database = db.name(), "working in a fresh database");

    let hidra = Hidra::builder()
        .schema_sql("customers", TENANT_SCHEMA)
        .connect_with(db.connect_options())
        .await?;
    hidra.install().await?;

    for (id, name, customers) in [
        ("acme", "Acme Corp", ["Wile E. Coyote", "Road Runner"]),
        ("globex", "Globex", ["Hank Scorpio", "Homer Simpson"]),
    ] {
        let tenant = hidra
            .provision(NewTenant::new(TenantId::new(id)?).name(name))
            .await?;
        let mut conn = hidra.acquire(&tenant).await?;
        for c in customers {
            sqlx::query("INSERT INTO customers (name) VALUES ($1)")
                .bind(c)
                .execute(&mut conn)
                .await?;
        }
    }

    // The tenant routes behind the tenant layer; the health probes beside
    // them, outside it (they need no tenant), reporting the layer's cache.
    let tenants = TenantLayer::new(hidra.clone());
    let health = Health::new(hidra.clone())
        .with_cache(tenants.cache().clone())
        .router();
    let api = Router::new()
        .route("/customers", get(list).post(create))
        .route("/customers/{id}", get(show))
        .layer(tenants);
    let app = Router::new().merge(api).merge(health);

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("\nHidra quickstart listening on {base}. Try:\n");
    println!("  curl -s -H 'X-Tenant-ID: acme' {base}/customers");
    println!("  curl -s -H 'X-Tenant-ID: globex' {base}/customers");
    println!(
        "  curl -s -H 'X-Tenant-ID: acme' -H 'content-type: application/json' -d '{{\"name\":\"Daffy\"}}' {base}/customers"
    );
    println!(
        "  curl -s -i -H 'X-Tenant-ID: nobody' {base}/customers   # 404, same as any unknown tenant"
    );
    println!("  curl -s {base}/health/detailed\n");
    println!("Ctrl-C stops it and drops its database.");

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    hidra.close().await;
    db.drop_now().await?;
    Ok(())
}
