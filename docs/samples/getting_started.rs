//! The getting-started chapter's application (`docs/src/getting-started.md`
//! includes this file): `tests/getting_started.rs` runs it and sends it the
//! chapter's requests.

// ANCHOR: app
use axum::routing::get;
use axum::{Json, Router};
use hidra::{Hidra, NewTenant, TenantId};
use hidra_axum::{CurrentTenant, RequestConn, RequestTx, TenantLayer};

/// The first tenant migration: what every tenant's schema starts with.
const NOTES: &str = "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)";

/// `GET /notes`: the tenant's notes, nobody else's.
async fn list(tenant: CurrentTenant, mut conn: RequestConn) -> Json<serde_json::Value> {
    let notes: Vec<String> = sqlx::query_scalar("SELECT body FROM notes ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    Json(serde_json::json!({ "tenant": tenant.id, "notes": notes }))
}

/// `POST /notes`: in a transaction the layer commits if the answer is a success.
async fn add(mut tx: RequestTx, body: String) -> Result<(), axum::http::StatusCode> {
    sqlx::query("INSERT INTO notes (body) VALUES ($1)")
        .bind(body)
        .execute(&mut tx)
        .await
        .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let hidra = Hidra::builder()
        .schema_sql("001_notes", NOTES)
        .connect(&url)
        .await?;
    hidra.install().await?;
    for id in ["acme", "globex"] {
        let id = TenantId::new(id)?;
        if !hidra.exists(&id).await? {
            hidra.provision(NewTenant::new(id)).await?;
        }
    }

    // The layer resolves the tenant (here from the `X-Tenant-ID` header),
    // refuses unknown and suspended ones with the same 404, and hands the
    // handlers connections bound to it.
    let app = Router::new()
        .route("/notes", get(list).post(add))
        .layer(TenantLayer::new(hidra.clone()));
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
// ANCHOR_END: app
