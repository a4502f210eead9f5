//! Isolation end to end, over real TCP: 8 tenants, 2,000 concurrent requests
//! with random tenant headers, half of them aborted by their clients while the
//! server is in the middle of the tenant's query. Every answer must carry the
//! marker of the tenant its request named.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing;
use common::*;
use hidra_axum::{RequestConn, RequestTx, TenantLayer};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

const TENANTS: usize = 8;
const REQUESTS: usize = 2_000;

/// Lets a client know the server is inside its handler, with a bound connection.
#[derive(Clone, Default)]
struct Probe {
    started: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
    finished: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Probe {
    fn start(&self, headers: &HeaderMap) -> Finish {
        let id = headers
            .get("x-test-req")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if let Some(tx) = id.and_then(|id| self.started.lock().unwrap().remove(&id)) {
            let _ = tx.send(());
        }
        Finish {
            probe: self.clone(),
            done: false,
        }
    }
}

/// Counts handlers that finished and handlers dropped mid-flight.
struct Finish {
    probe: Probe,
    done: bool,
}

impl Finish {
    fn done(mut self) {
        self.done = true;
        self.probe.finished.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if !self.done {
            self.probe.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(serde::Deserialize)]
struct Delay {
    ms: u32,
}

const QUERY: &str = "SELECT tenant FROM marker CROSS JOIN pg_sleep($1::float8 / 1000) AS s";

async fn via_conn(
    State(probe): State<Probe>,
    Query(d): Query<Delay>,
    headers: HeaderMap,
    mut conn: RequestConn,
) -> Result<String, StatusCode> {
    let finish = probe.start(&headers);
    let marker = sqlx::query_scalar(QUERY)
        .bind(d.ms as f64)
        .fetch_one(&mut *conn)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    finish.done();
    Ok(marker)
}

async fn via_tx(
    State(probe): State<Probe>,
    Query(d): Query<Delay>,
    headers: HeaderMap,
    mut tx: RequestTx,
) -> Result<String, StatusCode> {
    let finish = probe.start(&headers);
    // A write too, so an aborted transaction has something to lose.
    sqlx::query("INSERT INTO items (label) VALUES ('x')")
        .execute(&mut *tx)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let marker = sqlx::query_scalar(QUERY)
        .bind(d.ms as f64)
        .fetch_one(&mut *tx)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    finish.done();
    Ok(marker)
}

enum Outcome {
    Answered {
        tenant: String,
        status: StatusCode,
        body: Bytes,
    },
    Aborted,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_requests_half_aborted_never_cross_tenants() {
    let ctx = setup(10).await;
    let names: Vec<String> = (0..TENANTS).map(|i| format!("tenant-{i}")).collect();
    let mut tenants = Vec::new();
    for name in &names {
        tenants.push(tenant_with_marker(&ctx.hidra, name).await);
    }
    let probe = Probe::default();
    let app: Router = Router::new()
        .route("/conn", routing::get(via_conn))
        .route("/tx", routing::get(via_tx))
        .with_state(probe.clone())
        .layer(TenantLayer::new(ctx.hidra.clone()));
    let addr = serve(app).await;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    let mut rng = rand::rng();
    let mut tasks = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let tenant = names[rng.random_range(0..TENANTS)].clone();
        let route = if rng.random_bool(0.5) { "/conn" } else { "/tx" };
        let abort = i % 2 == 1;
        if abort {
            // A raw connection that goes away once the handler is mid-query.
            let (tx, started) = oneshot::channel();
            probe.started.lock().unwrap().insert(i as u64, tx);
            let ms = rng.random_range(5..15);
            tasks.push(tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let head = format!(
                    "GET {route}?ms={ms} HTTP/1.1\r\nhost: {addr}\r\n\
                     x-tenant-id: {tenant}\r\nx-test-req: {i}\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await.unwrap();
                started.await.expect("the handler started");
                drop(stream);
                Outcome::Aborted
            }));
        } else {
            let client = client.clone();
            let ms = rng.random_range(0..3);
            tasks.push(tokio::spawn(async move {
                let req = http::Request::get(format!("http://{addr}{route}?ms={ms}"))
                    .header("x-tenant-id", &tenant)
                    .body(Empty::new())
                    .unwrap();
                let res = client.request(req).await.unwrap();
                let status = res.status();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                Outcome::Answered {
                    tenant,
                    status,
                    body,
                }
            }));
        }
    }

    let (mut answered, mut aborted, mut mismatches) = (0, 0, Vec::new());
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Answered {
                tenant,
                status,
                body,
            } => {
                answered += 1;
                if status != StatusCode::OK || body != tenant.as_bytes() {
                    mismatches.push((tenant, status, body));
                }
            }
            Outcome::Aborted => aborted += 1,
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} wrong answers: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    assert_eq!((answered, aborted), (REQUESTS / 2, REQUESTS / 2));
    // The aborts reached the server while handlers were running: handlers were
    // dropped mid-query, connections and transactions abandoned.
    let dropped = probe.dropped.load(Ordering::SeqCst);
    assert!(dropped > 0, "no handler was cancelled by a client abort");
    eprintln!(
        "answered {answered}, aborted {aborted}, handlers finished {}, handlers cancelled {dropped}",
        probe.finished.load(Ordering::SeqCst)
    );

    // Afterwards every connection of the pool serves every tenant correctly.
    for _ in 0..3 {
        for name in &names {
            for route in ["/conn", "/tx"] {
                let req = http::Request::get(format!("http://{addr}{route}?ms=0"))
                    .header("x-tenant-id", name)
                    .body(Empty::new())
                    .unwrap();
                let res = client.request(req).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                let body = res.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, name.as_bytes());
            }
        }
    }
    // And no pooled connection kept a tenant's search path.
    let mut shared = Vec::new();
    for _ in 0..10 {
        shared.push(ctx.hidra.acquire_shared().await.unwrap());
    }
    for conn in &mut shared {
        let path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(path, "\"$user\", public");
    }
    drop(shared);
    // Only committed transactions left rows: one per answered `/tx` request at most.
    let mut rows = 0i64;
    for tenant in &tenants {
        let mut conn = ctx.hidra.acquire(tenant).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        rows += n;
    }
    assert!(rows <= (REQUESTS / 2 + 3 * TENANTS) as i64, "{rows} rows");
}
