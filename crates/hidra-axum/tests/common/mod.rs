//! Shared setup for the web tests: a throw-away database per test with the
//! registry table, a `Hidra` over a store that counts registry reads, tenants
//! with a marker row, and a small app exercising every extractor.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Query};
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing;
use hidra::testing::TestDatabase;
use hidra::{
    Hidra, ListTenants, NewTenant, Page, PgTenantStore, TenantId, TenantStatus, TenantStore,
};
// Each test binary uses some of them.
use hidra_axum::{CurrentTenant, RequestConn, RequestTx};
#[allow(unused_imports)]
pub use hidra_test_support::{id, setup_with, tenant_with_marker, wait_for, write_marker};
use http_body_util::BodyExt;
use sqlx::PgConnection;
use tower::ServiceExt;

/// Each tenant's schema: a marker row saying whose schema it is, and items.
pub const MARKER_SCHEMA: &str = "CREATE TABLE marker (tenant TEXT NOT NULL);
CREATE TABLE items (id BIGSERIAL PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE deferred (v INT, CONSTRAINT deferred_v_key UNIQUE (v) DEFERRABLE INITIALLY DEFERRED);";

/// A [`PgTenantStore`] that counts the registry reads made through it.
#[derive(Debug, Clone, Default)]
pub struct CountingStore {
    inner: PgTenantStore,
    pub gets: Arc<AtomicUsize>,
    pub domain_lookups: Arc<AtomicUsize>,
}

impl CountingStore {
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    pub fn domain_lookups(&self) -> usize {
        self.domain_lookups.load(Ordering::SeqCst)
    }
}

impl TenantStore for CountingStore {
    fn install_ddl(&self) -> Option<String> {
        self.inner.install_ddl()
    }

    async fn get(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
    ) -> hidra::Result<Option<hidra::Tenant>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(conn, id).await
    }

    async fn list(
        &self,
        conn: &mut PgConnection,
        page: &ListTenants,
    ) -> hidra::Result<Page<hidra::Tenant>> {
        self.inner.list(conn, page).await
    }

    async fn insert(
        &self,
        conn: &mut PgConnection,
        tenant: &hidra::Tenant,
    ) -> hidra::Result<hidra::Tenant> {
        self.inner.insert(conn, tenant).await
    }

    async fn update_status(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        from: &[TenantStatus],
        to: TenantStatus,
    ) -> hidra::Result<Option<hidra::Tenant>> {
        self.inner.update_status(conn, id, from, to).await
    }

    async fn update_placement(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        placement: &hidra::Placement,
    ) -> hidra::Result<Option<hidra::Tenant>> {
        self.inner.update_placement(conn, id, placement).await
    }

    async fn delete(&self, conn: &mut PgConnection, id: &TenantId) -> hidra::Result<bool> {
        self.inner.delete(conn, id).await
    }

    async fn find_by_domain(
        &self,
        conn: &mut PgConnection,
        host: &str,
    ) -> hidra::Result<Option<hidra::Tenant>> {
        self.domain_lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find_by_domain(conn, host).await
    }
}

pub struct Ctx {
    pub db: TestDatabase,
    pub hidra: Hidra,
    pub store: CountingStore,
}

/// A fresh database with the registry table, and a `Hidra` with the marker
/// schema, a pool of `max` connections and a counting store.
pub async fn setup(max: u32) -> Ctx {
    setup_with_schema(max, "").await
}

/// [`setup`], with `extra` SQL run in every tenant's schema after the marker
/// schema (when not empty).
pub async fn setup_with_schema(max: u32, extra: &str) -> Ctx {
    let store = CountingStore::default();
    let mut builder = Hidra::builder().schema_sql("001_marker", MARKER_SCHEMA);
    if !extra.is_empty() {
        builder = builder.schema_sql("002_extra", extra);
    }
    let hidra_test_support::Ctx { db, hidra } =
        setup_with(builder.max_connections(max).store(store.clone())).await;
    Ctx { db, hidra, store }
}

/// Provisions `name` (with `metadata`) and writes its marker row.
pub async fn tenant_with(hidra: &Hidra, name: &str, metadata: serde_json::Value) -> hidra::Tenant {
    let tenant = hidra
        .provision(NewTenant::new(id(name)).metadata(metadata))
        .await
        .unwrap();
    write_marker(hidra, &tenant, name).await;
    tenant
}

async fn marker(mut conn: RequestConn) -> Result<String, StatusCode> {
    sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_one(&mut *conn)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

async fn marker_tx(mut tx: RequestTx) -> Result<String, StatusCode> {
    sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_one(&mut *tx)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

async fn whoami(tenant: CurrentTenant) -> String {
    tenant.id.to_string()
}

async fn maybe_tenant(tenant: Option<CurrentTenant>) -> String {
    match tenant {
        Some(t) => format!("tenant {}", t.id),
        None => "no tenant".into(),
    }
}

async fn path(OriginalUri(original): OriginalUri, req: Request<Body>) -> String {
    format!("{} <- {}", req.uri(), original)
}

async fn current() -> String {
    hidra::context::current_id()
        .map(|id| id.to_string())
        .unwrap_or_else(|| "none".into())
}

#[derive(serde::Deserialize)]
pub struct Write {
    label: String,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    redirect: bool,
}

/// Inserts an item in a `RequestTx`, then answers 500 (`fail`), 303
/// (`redirect`) or 201.
async fn write_item(Query(w): Query<Write>, mut tx: RequestTx) -> axum::response::Response {
    sqlx::query("INSERT INTO items (label) VALUES ($1)")
        .bind(&w.label)
        .execute(&mut *tx)
        .await
        .unwrap();
    if w.fail {
        (StatusCode::INTERNAL_SERVER_ERROR, "failed after writing").into_response()
    } else if w.redirect {
        (StatusCode::SEE_OTHER, [("location", "/items")]).into_response()
    } else {
        (StatusCode::CREATED, "written").into_response()
    }
}

/// Inserts an item in a `RequestTx`, then panics.
async fn write_then_panic(Query(w): Query<Write>, mut tx: RequestTx) -> &'static str {
    sqlx::query("INSERT INTO items (label) VALUES ($1)")
        .bind(&w.label)
        .execute(&mut *tx)
        .await
        .unwrap();
    panic!("handler panicked after writing {}", w.label);
}

/// Inserts an item and commits explicitly, then answers 500.
async fn write_commit_then_fail(Query(w): Query<Write>, mut tx: RequestTx) -> StatusCode {
    sqlx::query("INSERT INTO items (label) VALUES ($1)")
        .bind(&w.label)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    StatusCode::INTERNAL_SERVER_ERROR
}

/// Breaks a deferred unique constraint, which only fails at commit, and answers 200.
async fn break_at_commit(mut tx: RequestTx) -> &'static str {
    sqlx::query("INSERT INTO deferred (v) VALUES (1), (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    "looks fine"
}

async fn two_tx(_a: RequestTx, _b: RequestTx) -> &'static str {
    "unreachable"
}

async fn items(mut conn: RequestConn) -> String {
    let labels: Vec<String> = sqlx::query_scalar("SELECT label FROM items ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    labels.join(",")
}

/// The routes every test uses, without the tenant layer.
pub fn routes() -> Router {
    Router::new()
        .route("/marker", routing::get(marker))
        .route("/marker-tx", routing::get(marker_tx))
        .route("/whoami", routing::get(whoami))
        .route("/maybe", routing::get(maybe_tenant))
        .route("/path/{*rest}", routing::get(path))
        .route("/current", routing::get(current))
        .route("/public/maybe", routing::get(maybe_tenant))
        .route("/items", routing::get(items).post(write_item))
        .route("/items/panic", routing::post(write_then_panic))
        .route(
            "/items/commit-then-fail",
            routing::post(write_commit_then_fail),
        )
        .route("/two-tx", routing::get(two_tx))
        .route("/break-at-commit", routing::post(break_at_commit))
}

/// Sends `req` through `app` in process.
pub async fn send<S>(app: S, req: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes)
where
    S: tower::Service<
            Request<Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
{
    let res = app.oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// A GET of `uri` with `headers`.
pub fn get_req(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

/// A POST of `uri` with `headers`.
pub fn post_req(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::post(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

/// GET `uri` through `app` and return status and body text.
pub async fn get<S>(app: &S, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, String)
where
    S: tower::Service<
            Request<Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone,
{
    let (status, _, body) = send(app.clone(), get_req(uri, headers)).await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Item labels of `tenant`, read directly.
pub async fn item_labels(hidra: &Hidra, tenant: &hidra::Tenant) -> Vec<String> {
    let mut conn = hidra.acquire(tenant).await.unwrap();
    sqlx::query_scalar("SELECT label FROM items ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// Serves `app` on a free port of 127.0.0.1 until the test's runtime ends.
pub async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
