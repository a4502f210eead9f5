//! The quickstart's customers API written with SeaORM entities: two tenants,
//! each with its own schema and its own customers, served by the same
//! handlers.
//!
//! ```sh
//! cargo run -p hidra-sea-orm --features axum --example customers
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
use hidra::testing::TestDatabase;
use hidra::{Hidra, NewTenant, TenantId};
use hidra_axum::{CurrentTenant, RequestTx, TenantLayer};
use hidra_sea_orm::{TenantConnection, TenantDatabase};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::{QueryOrder, TransactionTrait};
use serde::Deserialize;
use serde_json::{Value, json};

/// The tenant schema the migration creates in every tenant's schema.
const TENANT_SCHEMA: &str = "CREATE TABLE customers (
    id    BIGSERIAL PRIMARY KEY,
    name  TEXT NOT NULL CHECK (name <> ''),
    email TEXT
);";

// An entity's items are `pub`, as SeaORM's derives expect.
#[allow(unreachable_pub)]
mod customer {
    use sea_orm::entity::prelude::*;
    use serde::Serialize;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
    #[sea_orm(table_name = "customers")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub email: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

type Answer = Result<Json<Value>, (StatusCode, Json<Value>)>;

fn internal(e: DbErr) -> (StatusCode, Json<Value>) {
    if hidra_sea_orm::is_tenant_busy(&e) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "tenant_busy" })),
        );
    }
    tracing::error!(error = %e, "query failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "internal" })),
    )
}

/// `GET /customers`: the tenant's customers, nobody else's.
async fn list(tenant: CurrentTenant, db: TenantDatabase) -> Answer {
    let customers = customer::Entity::find()
        .order_by_asc(customer::Column::Id)
        .all(&db)
        .await
        .map_err(internal)?;
    Ok(Json(json!({ "tenant": tenant.id, "customers": customers })))
}

/// `GET /customers/{id}`.
async fn show(db: TenantDatabase, Path(id): Path<i64>) -> Answer {
    match customer::Entity::find_by_id(id)
        .one(&db)
        .await
        .map_err(internal)?
    {
        Some(c) => Ok(Json(json!(c))),
        None => Err((StatusCode::NOT_FOUND, Json(json!({ "error": "not_found" })))),
    }
}

#[derive(Deserialize)]
struct NewCustomer {
    name: String,
    email: Option<String>,
}

/// `POST /customers`: inserted in the request's transaction, which the layer
/// commits on success and rolls back on an error response.
async fn create(mut tx: RequestTx, Json(body): Json<NewCustomer>) -> Answer {
    if body.name.trim().is_empty() {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": "validation", "field": "name" })),
        ));
    }
    let db = TenantConnection::new(&mut tx);
    let added = customer::ActiveModel {
        name: Set(body.name),
        email: Set(body.email),
        ..Default::default()
    }
    .insert(&db)
    .await
    .map_err(internal)?;
    Ok(Json(json!(added)))
}

/// `DELETE /customers`: all of them, in a SeaORM transaction of its own.
async fn clear(db: TenantDatabase) -> Answer {
    let removed = db
        .transaction::<_, u64, DbErr>(|tx| {
            Box::pin(async move {
                let gone = customer::Entity::delete_many().exec(tx).await?;
                Ok(gone.rows_affected)
            })
        })
        .await
        .map_err(|e| internal(DbErr::Custom(e.to_string())))?;
    Ok(Json(json!({ "removed": removed })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();

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
        let db = TenantDatabase::new(hidra.clone(), tenant);
        for c in customers {
            customer::ActiveModel {
                name: Set(c.to_owned()),
                ..Default::default()
            }
            .insert(&db)
            .await?;
        }
    }

    let app = Router::new()
        .route("/customers", get(list).post(create).delete(clear))
        .route("/customers/{id}", get(show))
        .layer(TenantLayer::new(hidra.clone()));

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("\nHidra + SeaORM listening on {base}. Try:\n");
    println!("  curl -s -H 'X-Tenant-ID: acme' {base}/customers");
    println!("  curl -s -H 'X-Tenant-ID: globex' {base}/customers/1");
    println!(
        "  curl -s -H 'X-Tenant-ID: acme' -H 'content-type: application/json' -d '{{\"name\":\"Daffy\"}}' {base}/customers"
    );
    println!("  curl -s -X DELETE -H 'X-Tenant-ID: globex' {base}/customers\n");
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
