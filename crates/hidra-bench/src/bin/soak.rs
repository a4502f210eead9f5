//! A soak run of Hidra's web path: a million tenant-scoped requests with
//! client aborts, handler panics and a PostgreSQL restart, every answer
//! checked against the tenant it was asked of.
//!
//! ```sh
//! cargo run --release -p hidra-bench --bin soak
//! cargo run --release -p hidra-bench --bin soak -- --requests 20000
//! cargo run --release -p hidra-bench --bin soak -- --no-restart
//! ```
//!
//! A throw-away PostgreSQL cluster ([`TempCluster`]) holds 64 tenants
//! (schema per tenant, `bench/reference_schema.sql`) with 1,000 customers
//! each, whose names carry the tenant's id (`soak-07 customer 42`). The server
//! under test runs in a child process (this binary again, with the hidden
//! `serve` subcommand), so that its memory can be read from `/proc`: axum
//! behind `TenantLayer` (`X-Tenant-ID`), with tower-http's
//! `CatchPanicLayer` outermost, serving
//!
//! - `GET /customers/{id}`: a `RequestConn` reads the customer (its name, and
//!   `current_schema()`);
//! - `POST /customers/{id}`: in a `RequestTx`, inserts an `audit_log` row
//!   naming the tenant the layer resolved, then sets the customer's phone to
//!   the request body and returns the row.
//!
//! With `x-soak-panic: 1` a handler panics after its first statement, with
//! the connection (and, for writes, an open transaction) in hand.
//!
//! The client drives `--requests` requests over `--concurrency` keep-alive
//! HTTP/1.1 connections, each to a random tenant and customer; `--write-rate`
//! of them are writes, `--panic-rate` carry the panic header, and
//! `--abort-rate` are abandoned by the client after a random 0–2 ms: it
//! closes the connection, so the server drops the request wherever it is
//! (resolving the tenant, waiting for a pooled connection, or mid-query; the
//! server counts which). After `--restart-at` of the requests the cluster is
//! stopped (`pg_ctl stop -m fast`) for `--down-for` seconds and started again
//! on the same port; the run measures how long after that requests succeed
//! again.
//!
//! Every answer is classified: a `200` must carry the customer asked for,
//! from the schema of the tenant asked for (anything else from another
//! tenant is a *wrong-tenant answer*, printed, and fails the run), and
//! everything else is counted by status and error code. Before the run (after
//! a warm-up) and after it, the server's `VmRSS` and `RssAnon` are read.
//! After the run a final batch of plain requests must all be answered
//! correctly, the server's pool must be idle with no backend left in a
//! transaction, and every tenant's `audit_log` must hold only its own rows
//! and none written by a panicked request; otherwise the run exits with an
//! error. The figures end in a Markdown table for the README.
//! `--server-log hidra_axum=warn,hidra=warn` shows the server's own log (on
//! standard error) to explain unexpected errors.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::{Args, Parser, Subcommand};
use hidra::testing::TempCluster;
use hidra::{Hidra, NewTenant, TenantId};
use hidra_axum::{CurrentTenant, RequestConn, RequestTx, TenantLayer};
use hidra_bench::{percentile, proc_status_kib, rate, read_reference};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;
use sqlx::postgres::PgConnectOptions;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;
use tower_http::catch_panic::CatchPanicLayer;

/// The header that makes a handler panic.
const PANIC_HEADER: &str = "x-soak-panic";

/// The `application_name` of the server's connections.
const SERVER_APP: &str = "soak-server";

/// How many wrong-tenant answers are printed in full.
const PRINT_WRONG: usize = 20;

#[derive(Parser, Debug)]
#[command(
    about = "Soak Hidra's web path: requests with client aborts, handler panics and a PostgreSQL restart, every answer checked",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the server under test (started by the soak run itself).
    #[command(hide = true)]
    Serve {
        /// The database URL.
        #[arg(long)]
        url: String,
        /// Connections of the server's pool.
        #[arg(long)]
        pool: u32,
        /// A `tracing` filter for the server's log on standard error.
        #[arg(long)]
        log: Option<String>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Requests of the soak run.
    #[arg(long, default_value_t = 1_000_000)]
    requests: usize,
    /// Tenants to provision.
    #[arg(long, default_value_t = 64)]
    tenants: usize,
    /// Customers per tenant.
    #[arg(long, default_value_t = 1000)]
    customers: i64,
    /// Concurrent keep-alive connections of the client.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Share of requests the client abandons after a random delay.
    #[arg(long, default_value_t = 0.05)]
    abort_rate: f64,
    /// The longest delay, in microseconds, before an abandoned request is
    /// dropped (the timer's granularity is 1 ms).
    #[arg(long, default_value_t = 2000)]
    abort_max_us: u64,
    /// Share of requests whose handler panics after its first statement.
    #[arg(long, default_value_t = 0.001)]
    panic_rate: f64,
    /// Share of requests that are writes (the rest are reads).
    #[arg(long, default_value_t = 0.2)]
    write_rate: f64,
    /// Fraction of the requests after which PostgreSQL is restarted.
    #[arg(long, default_value_t = 0.5)]
    restart_at: f64,
    /// Do not restart PostgreSQL.
    #[arg(long)]
    no_restart: bool,
    /// Seconds between the end of the stop and the start of PostgreSQL
    /// (the outage also spans the stop and the start).
    #[arg(long, default_value_t = 2.0)]
    down_for: f64,
    /// Connections of the server's pool.
    #[arg(long, default_value_t = 10)]
    pool: u32,
    /// Plain requests before the run (and before the first memory reading).
    #[arg(long, default_value_t = 20_000)]
    warmup: usize,
    /// Plain requests after the run, all of which must be answered correctly.
    #[arg(long, default_value_t = 20_000)]
    verify: usize,
    /// Reference schema (default: bench/reference_schema.sql).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Let the server log what this `tracing` filter selects to standard
    /// error (e.g. `hidra_axum=warn`); default silent.
    #[arg(long)]
    server_log: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Some(Command::Serve { url, pool, log }) => {
            runtime.block_on(serve(&url, pool, log.as_deref()))
        }
        None => runtime.block_on(soak(cli.run)),
    }
}

// ---------------------------------------------------------------------------
// The server under test (child process).
// ---------------------------------------------------------------------------

/// The payload of an injected panic, told apart from real ones by type.
struct InjectedPanic;

/// What the server counts of requests, or of handler bodies.
#[derive(Debug, Default)]
struct Counters {
    /// Started.
    entered: AtomicU64,
    /// Returned an answer.
    completed: AtomicU64,
    /// Dropped before they finished (the client went away).
    cancelled: AtomicU64,
    /// Panicked.
    panicked: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Counted {
        Counted {
            entered: self.entered.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of [`Counters`].
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Counted {
    entered: u64,
    completed: u64,
    cancelled: u64,
    panicked: u64,
}

impl Counted {
    /// What was counted since `earlier`.
    fn since(self, earlier: Counted) -> Counted {
        Counted {
            entered: self.entered - earlier.entered,
            completed: self.completed - earlier.completed,
            cancelled: self.cancelled - earlier.cancelled,
            panicked: self.panicked - earlier.panicked,
        }
    }
}

/// Counts one run of a request or handler; dropped unfinished, it counts a
/// cancellation (or a panic, while unwinding).
struct InFlight<'a> {
    counters: &'a Counters,
    finished: bool,
}

impl<'a> InFlight<'a> {
    fn enter(counters: &'a Counters) -> Self {
        counters.entered.fetch_add(1, Ordering::Relaxed);
        InFlight {
            counters,
            finished: false,
        }
    }

    fn finish(mut self) {
        self.finished = true;
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let counter = if std::thread::panicking() {
            &self.counters.panicked
        } else {
            &self.counters.cancelled
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct ServerState {
    hidra: Hidra,
    /// Every request of the tenant routes, from before `TenantLayer`.
    requests: Counters,
    /// Handler bodies: their tenant connection or transaction in hand.
    handlers: Counters,
}

/// A customer as the server answers it: the row, and the schema it came from.
#[derive(Debug, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
struct Answer {
    id: i64,
    name: String,
    schema: String,
    phone: Option<String>,
}

/// What `GET /soak/stats` answers.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ServerStats {
    requests: Counted,
    handlers: Counted,
    pool_size: u32,
    pool_idle: u32,
    pool_max: u32,
}

fn wants_panic(headers: &HeaderMap) -> bool {
    headers.contains_key(PANIC_HEADER)
}

async fn read_customer(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    mut conn: RequestConn,
) -> Result<axum::Json<Answer>, hidra_axum::Error> {
    let run = InFlight::enter(&state.handlers);
    let answer: Answer = sqlx::query_as(
        "SELECT id, name, current_schema()::text AS schema, phone FROM customers WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await?;
    if wants_panic(&headers) {
        std::panic::panic_any(InjectedPanic);
    }
    run.finish();
    Ok(axum::Json(answer))
}

async fn write_customer(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<i64>,
    tenant: CurrentTenant,
    headers: HeaderMap,
    mut tx: RequestTx,
    phone: String,
) -> Result<axum::Json<Answer>, hidra_axum::Error> {
    let run = InFlight::enter(&state.handlers);
    let panic = wants_panic(&headers);
    sqlx::query(
        "INSERT INTO audit_log (action, payload) VALUES ('soak', \
         jsonb_build_object('tenant', $1::text, 'customer', $2::bigint, 'panic', $3::boolean))",
    )
    .bind(tenant.id.as_str())
    .bind(id)
    .bind(panic)
    .execute(&mut tx)
    .await?;
    if panic {
        // Mid-transaction: the insert above must be rolled back.
        std::panic::panic_any(InjectedPanic);
    }
    let answer: Answer = sqlx::query_as(
        "UPDATE customers SET phone = $2 WHERE id = $1 \
         RETURNING id, name, current_schema()::text AS schema, phone",
    )
    .bind(id)
    .bind(phone)
    .fetch_one(&mut tx)
    .await?;
    run.finish();
    Ok(axum::Json(answer))
}

async fn stats(State(state): State<Arc<ServerState>>) -> axum::Json<ServerStats> {
    let pool = state.hidra.pool_status();
    axum::Json(ServerStats {
        requests: state.requests.snapshot(),
        handlers: state.handlers.snapshot(),
        pool_size: pool.size,
        pool_idle: pool.idle,
        pool_max: pool.max,
    })
}

/// Counts every request of the tenant routes, wherever it ends.
async fn count_requests(
    State(state): State<Arc<ServerState>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let run = InFlight::enter(&state.requests);
    let response = next.run(req).await;
    run.finish();
    response
}

/// `500 {"error":"injected_panic"}` for an injected panic, `500
/// {"error":"panic"}` for any other.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let code = if panic.is::<InjectedPanic>() {
        "injected_panic"
    } else {
        "panic"
    };
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({ "error": code })),
    )
        .into_response()
}

/// The `serve` subcommand: serves until its standard input closes (the soak
/// run ended or died), printing its address on standard output; logs to
/// standard error what `log` (a `tracing` filter) lets through.
async fn serve(url: &str, pool: u32, log: Option<&str>) -> anyhow::Result<()> {
    if let Some(filter) = log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
            .with_writer(std::io::stderr)
            .init();
    }
    // Injected panics are expected by the thousand; report only real ones.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<InjectedPanic>() {
            default_hook(info);
        }
    }));
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });

    let options: PgConnectOptions = url.parse().context("invalid --url")?;
    let hidra = Hidra::builder()
        .max_connections(pool)
        .connect_with(options.application_name(SERVER_APP))
        .await?;
    let state = Arc::new(ServerState {
        hidra: hidra.clone(),
        requests: Counters::default(),
        handlers: Counters::default(),
    });
    let tenant_routes = Router::new()
        .route("/customers/{id}", get(read_customer).post(write_customer))
        .layer(TenantLayer::new(hidra))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ));
    let app = Router::new()
        .merge(tenant_routes)
        .route("/soak/stats", get(stats))
        .with_state(state)
        .layer(CatchPanicLayer::custom(panic_response));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `200` with the customer asked for, from the tenant asked for.
    Ok,
    /// An answer that names another tenant (its schema or its row).
    WrongTenant,
    /// `200` from the right tenant but not the answer asked for.
    BadAnswer,
    /// `500 {"error":"injected_panic"}`: a panic the request asked for.
    InjectedPanic,
    /// Any other status, with the body's error code.
    Status(u16, &'static str),
    /// The connection failed (not closed by the client).
    Connection,
    /// The client gave up on the request and closed its connection.
    Aborted,
}

impl Kind {
    /// Whether this is an error that the client did not ask for.
    fn is_failure(self) -> bool {
        !matches!(self, Kind::Ok | Kind::InjectedPanic | Kind::Aborted)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Ok => f.write_str("200, answer checked"),
            Kind::WrongTenant => f.write_str("WRONG-TENANT answer"),
            Kind::BadAnswer => f.write_str("200, wrong answer (right tenant)"),
            Kind::InjectedPanic => f.write_str("500 injected_panic (asked for)"),
            Kind::Status(status, code) => write!(f, "{status} {code}"),
            Kind::Connection => f.write_str("connection error"),
            Kind::Aborted => f.write_str("aborted by the client"),
        }
    }
}

/// The error codes a body may carry (anything else is `other`).
fn error_code(body: &[u8]) -> &'static str {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    const KNOWN: [&str; 6] = [
        "service_unavailable",
        "internal_error",
        "panic",
        "injected_panic",
        "tenant_not_found",
        "invalid_text",
    ];
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| KNOWN.into_iter().find(|k| *k == b.error))
        .unwrap_or("other")
}

/// One request as the client saw it.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// When it ended, since the start of the load.
    done: Duration,
    latency: Duration,
    kind: Kind,
    write: bool,
    /// Whether the client meant to abandon it (it may have been answered first).
    abort_planned: bool,
}

/// A tenant as the client knows it.
#[derive(Debug)]
struct Target {
    id: String,
    schema: String,
}

/// What one load phase does.
#[derive(Debug)]
struct Plan {
    requests: usize,
    concurrency: usize,
    abort_rate: f64,
    abort_max: Duration,
    panic_rate: f64,
    write_rate: f64,
    /// The request whose start triggers the restart.
    restart_index: Option<usize>,
}

impl Plan {
    /// Plain requests: no aborts, no panics, no restart.
    fn plain(requests: usize, args: &RunArgs) -> Self {
        Plan {
            requests,
            concurrency: args.concurrency,
            abort_rate: 0.0,
            abort_max: Duration::ZERO,
            panic_rate: 0.0,
            write_rate: args.write_rate,
            restart_index: None,
        }
    }
}

/// Shared by the workers of one load phase.
#[derive(Debug)]
struct Load {
    addr: SocketAddr,
    tenants: Arc<Vec<Target>>,
    customers: i64,
    plan: Plan,
    start: Instant,
    next: AtomicUsize,
    done: AtomicUsize,
    wrong_printed: AtomicUsize,
    restart: Notify,
}

/// One keep-alive HTTP/1.1 connection; dropping it closes the socket.
struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<HttpConn> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(HttpConn { sender, task })
}

/// Sends `req` and reads the whole answer.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    sender.ready().await?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

impl Load {
    fn new(
        addr: SocketAddr,
        tenants: Arc<Vec<Target>>,
        customers: i64,
        plan: Plan,
        start: Instant,
    ) -> Self {
        Load {
            addr,
            tenants,
            customers,
            plan,
            start,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            wrong_printed: AtomicUsize::new(0),
            restart: Notify::new(),
        }
    }

    /// Runs the phase on `concurrency` connections; every request's record.
    async fn run(self: Arc<Self>) -> anyhow::Result<Vec<Record>> {
        let mut workers = Vec::new();
        for _ in 0..self.plan.concurrency.max(1) {
            workers.push(tokio::spawn(Arc::clone(&self).worker()));
        }
        let mut records = Vec::with_capacity(self.plan.requests);
        for worker in workers {
            records.extend(worker.await??);
        }
        records.sort_by_key(|r| r.done);
        Ok(records)
    }

    async fn worker(self: Arc<Self>) -> anyhow::Result<Vec<Record>> {
        let plan = &self.plan;
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let mut records = Vec::new();
        let mut conn: Option<HttpConn> = None;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= plan.requests {
                return Ok(records);
            }
            if plan.restart_index == Some(i) {
                self.restart.notify_one();
            }
            let tenant = &self.tenants[rng.random_range(0..self.tenants.len())];
            let id = rng.random_range(1..=self.customers);
            let write = rng.random_bool(plan.write_rate);
            let panic = rng.random_bool(plan.panic_rate);
            let abort = rng
                .random_bool(plan.abort_rate)
                .then(|| rng.random_range(Duration::ZERO..=plan.abort_max));
            let phone = format!("+{i}");
            let mut req = http::Request::builder()
                .uri(format!("/customers/{id}"))
                .header("host", "127.0.0.1")
                .header("x-tenant-id", &tenant.id);
            if panic {
                req = req.header(PANIC_HEADER, "1");
            }
            let req = if write {
                req.method("POST")
                    .body(Full::new(Bytes::from(phone.clone())))?
            } else {
                req.method("GET").body(Full::new(Bytes::new()))?
            };

            let started = Instant::now();
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match connect(self.addr).await {
                    Ok(c) => conn.insert(c),
                    Err(_) => {
                        records.push(self.record(started, Kind::Connection, write, false));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let outcome = match abort {
                None => Some(exchange(&mut c.sender, req).await),
                Some(delay) => tokio::time::timeout(delay, exchange(&mut c.sender, req))
                    .await
                    .ok(),
            };
            let kind = match outcome {
                None => {
                    conn = None;
                    Kind::Aborted
                }
                Some(Err(_)) => {
                    conn = None;
                    Kind::Connection
                }
                Some(Ok((status, body))) => {
                    let kind = classify(tenant, id, write.then_some(&phone), status, &body);
                    if kind == Kind::WrongTenant
                        && self.wrong_printed.fetch_add(1, Ordering::Relaxed) < PRINT_WRONG
                    {
                        println!(
                            "WRONG TENANT: {} of customer {id} of {} got {status} {}",
                            if write { "write" } else { "read" },
                            tenant.id,
                            String::from_utf8_lossy(&body)
                        );
                    }
                    kind
                }
            };
            records.push(self.record(started, kind, write, abort.is_some()));
        }
    }

    fn record(&self, started: Instant, kind: Kind, write: bool, abort_planned: bool) -> Record {
        self.done.fetch_add(1, Ordering::Relaxed);
        Record {
            done: self.start.elapsed(),
            latency: started.elapsed(),
            kind,
            write,
            abort_planned,
        }
    }
}

/// Checks an answer against the request: the tenant first, then the row.
fn classify(
    tenant: &Target,
    id: i64,
    phone: Option<&String>,
    status: StatusCode,
    body: &[u8],
) -> Kind {
    if status != StatusCode::OK {
        let code = error_code(body);
        return match (status, code) {
            (StatusCode::INTERNAL_SERVER_ERROR, "injected_panic") => Kind::InjectedPanic,
            _ => Kind::Status(status.as_u16(), code),
        };
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return Kind::BadAnswer;
    };
    let prefix = format!("{} ", tenant.id);
    if answer.schema != tenant.schema || !answer.name.starts_with(&prefix) {
        return Kind::WrongTenant;
    }
    let right_row = answer.id == id && answer.name == format!("{prefix}customer {id}");
    let right_write = phone.is_none_or(|p| answer.phone.as_ref() == Some(p));
    if right_row && right_write {
        Kind::Ok
    } else {
        Kind::BadAnswer
    }
}

// ---------------------------------------------------------------------------
// The soak run.
// ---------------------------------------------------------------------------

/// When the restart happened, since the start of the load.
#[derive(Debug, Clone, Copy)]
struct Restart {
    stop_began: Duration,
    stopped: Duration,
    accepting: Duration,
}

async fn restart(
    cluster: &mut TempCluster,
    down_for: Duration,
    start: Instant,
) -> anyhow::Result<Restart> {
    let stop_began = start.elapsed();
    cluster.pause().await?;
    let stopped = start.elapsed();
    tokio::time::sleep(down_for).await;
    cluster.resume().await?;
    Ok(Restart {
        stop_began,
        stopped,
        accepting: start.elapsed(),
    })
}

/// The server's memory, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    anon: u64,
    peak: u64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let field = |name: &str| {
        proc_status_kib(pid, name).with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss: field("VmRSS")?,
        anon: field("RssAnon")?,
        peak: field("VmHWM")?,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Counts of a phase by kind: (reads, writes).
fn by_kind(records: &[Record]) -> BTreeMap<Kind, (usize, usize)> {
    let mut counts = BTreeMap::new();
    for r in records {
        let entry: &mut (usize, usize) = counts.entry(r.kind).or_default();
        if r.write {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }
    counts
}

fn count(records: &[Record], f: impl Fn(&Record) -> bool) -> usize {
    records.iter().filter(|r| f(r)).count()
}

/// Fetches the server's counters.
async fn server_stats(addr: SocketAddr) -> anyhow::Result<ServerStats> {
    let mut conn = connect(addr).await?;
    let req = http::Request::get("/soak/stats")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))?;
    let (status, body) = exchange(&mut conn.sender, req).await?;
    anyhow::ensure!(
        status == StatusCode::OK,
        "GET /soak/stats answered {status}"
    );
    Ok(serde_json::from_slice(&body)?)
}

/// What the tenants' `audit_log` tables hold after the run.
#[derive(Debug, Default)]
struct Audit {
    committed: i64,
    foreign: i64,
    panicked: i64,
}

async fn audit(hidra: &Hidra, tenants: &[hidra::Tenant]) -> anyhow::Result<Audit> {
    let mut total = Audit::default();
    for tenant in tenants {
        let mut conn = hidra.acquire(tenant).await?;
        let row = sqlx::query(
            "SELECT count(*) AS committed, \
                    count(*) FILTER (WHERE payload->>'tenant' IS DISTINCT FROM $1) AS foreign_rows, \
                    count(*) FILTER (WHERE (payload->>'panic')::boolean) AS panicked \
             FROM audit_log WHERE action = 'soak'",
        )
        .bind(tenant.id.as_str())
        .fetch_one(&mut conn)
        .await?;
        total.committed += row.try_get::<i64, _>("committed")?;
        total.foreign += row.try_get::<i64, _>("foreign_rows")?;
        total.panicked += row.try_get::<i64, _>("panicked")?;
    }
    Ok(total)
}

/// The server's backends by state (`idle`, `idle in transaction`, …).
async fn backend_states(hidra: &Hidra) -> anyhow::Result<Vec<(String, i64)>> {
    let mut conn = hidra.acquire_shared().await?;
    let rows = sqlx::query_as(
        "SELECT coalesce(state, '?'), count(*) FROM pg_stat_activity \
         WHERE application_name = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(SERVER_APP)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

/// Runs one load phase to its end.
async fn phase(load: Load) -> anyhow::Result<Vec<Record>> {
    Arc::new(load).run().await
}

/// Prints the progress of `load` every 10 s until aborted.
fn spawn_progress(load: Arc<Load>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            let done = load.done.load(Ordering::Relaxed);
            println!(
                "  {:>9} / {} requests, {:.0} req/s so far",
                thousands(done),
                thousands(load.plan.requests),
                rate(done, load.start.elapsed())
            );
        }
    })
}

async fn soak(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.no_restart || (args.restart_at > 0.0 && args.restart_at < 1.0),
        "--restart-at must be between 0 and 1 (exclusive)"
    );
    for (name, p) in [
        ("--abort-rate", args.abort_rate),
        ("--panic-rate", args.panic_rate),
        ("--write-rate", args.write_rate),
    ] {
        anyhow::ensure!((0.0..=1.0).contains(&p), "{name} must be between 0 and 1");
    }
    anyhow::ensure!(
        args.tenants > 0 && args.customers > 0,
        "no tenants or customers"
    );
    let schema_sql = read_reference(args.schema.clone(), "reference_schema.sql")?;

    // The database: a private cluster, which this run stops and starts.
    let mut cluster = TempCluster::start().await?;
    println!("PostgreSQL: throw-away cluster at {}", cluster.url());
    let admin = Hidra::builder()
        .schema_sql("reference schema", schema_sql)
        .max_connections(4)
        .connect(cluster.url())
        .await?;
    admin.install().await?;
    let provision_started = Instant::now();
    let mut tenants = Vec::new();
    let mut targets = Vec::new();
    for i in 0..args.tenants {
        let id = TenantId::new(format!("soak-{i:02}"))?;
        let tenant = admin.provision(NewTenant::new(id.clone())).await?;
        let mut conn = admin.acquire(&tenant).await?;
        sqlx::query(
            "INSERT INTO customers (name, email) \
             SELECT $2 || ' customer ' || g, 'customer' || g || '@' || $2 || '.example' \
             FROM generate_series(1, $1) AS g",
        )
        .bind(args.customers)
        .bind(id.as_str())
        .execute(&mut conn)
        .await?;
        drop(conn);
        targets.push(Target {
            id: id.to_string(),
            schema: admin.schema_name(&id),
        });
        tenants.push(tenant);
    }
    let mut conn = admin.acquire_shared().await?;
    sqlx::raw_sql("ANALYZE").execute(&mut *conn).await?;
    drop(conn);
    println!(
        "provisioned {} tenants (schema per tenant) with {} customers each in {:.1} s",
        args.tenants,
        args.customers,
        provision_started.elapsed().as_secs_f64()
    );
    let targets = Arc::new(targets);

    // The server under test, in its own process.
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["serve", "--url", cluster.url(), "--pool"])
        .arg(args.pool.to_string());
    if let Some(filter) = &args.server_log {
        command.args(["--log", filter]);
    }
    let mut server = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the server process")?;
    let pid = server.id().context("the server process has no id")?;
    let stdout = server.stdout.take().context("no server stdout")?;
    let line = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .context("the server did not start within 60 s")??
    .context("the server exited before listening")?;
    let addr: SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("unexpected server output: {line}"))?;
    println!(
        "server: pid {pid}, {addr}, pool of {}; TenantLayer (X-Tenant-ID) inside tower-http CatchPanicLayer",
        args.pool
    );

    // Warm-up: every tenant cached, every pooled connection used.
    let warmup = phase(Load::new(
        addr,
        Arc::clone(&targets),
        args.customers,
        Plan::plain(args.warmup, &args),
        Instant::now(),
    ))
    .await?;
    let warm_ok = count(&warmup, |r| r.kind == Kind::Ok);
    anyhow::ensure!(
        warm_ok == warmup.len(),
        "the warm-up had failures: {:?}",
        by_kind(&warmup)
    );
    let before = memory(pid)?;
    let stats_before = server_stats(addr).await?;
    println!(
        "warm-up: {} requests, all answered correctly; server VmRSS {:.1} MiB, RssAnon {:.1} MiB",
        thousands(warmup.len()),
        mib(before.rss),
        mib(before.anon)
    );

    // The soak run.
    let restart_index = (!args.no_restart)
        .then(|| ((args.requests as f64 * args.restart_at) as usize).min(args.requests - 1));
    let down_for = Duration::from_secs_f64(args.down_for);
    println!(
        "soak: {} requests over {} tenants, concurrency {}, {:.0} % writes, {} % aborted after 0–{} µs, {} % panicking{}",
        thousands(args.requests),
        args.tenants,
        args.concurrency,
        args.write_rate * 100.0,
        args.abort_rate * 100.0,
        args.abort_max_us,
        args.panic_rate * 100.0,
        match restart_index {
            Some(i) => format!(
                ", PostgreSQL down for {:.1} s after request {}",
                args.down_for,
                thousands(i)
            ),
            None => String::new(),
        }
    );
    let start = Instant::now();
    let load = Arc::new(Load::new(
        addr,
        Arc::clone(&targets),
        args.customers,
        Plan {
            requests: args.requests,
            concurrency: args.concurrency,
            abort_rate: args.abort_rate,
            abort_max: Duration::from_micros(args.abort_max_us),
            panic_rate: args.panic_rate,
            write_rate: args.write_rate,
            restart_index,
        },
        start,
    ));
    let reporter = spawn_progress(Arc::clone(&load));
    let mut running = tokio::spawn(Arc::clone(&load).run());
    let restarted = match restart_index {
        None => None,
        Some(_) => tokio::select! {
            () = load.restart.notified() => Some(restart(&mut cluster, down_for, start).await?),
            _ = &mut running => anyhow::bail!("the load ended before the restart point"),
        },
    };
    let records = running.await??;
    let elapsed = start.elapsed();
    reporter.abort();
    let stats_run = server_stats(addr).await?;
    let run_requests = stats_run.requests.since(stats_before.requests);
    let run_handlers = stats_run.handlers.since(stats_before.handlers);

    // After the run: plain requests must all be right, the pool idle and clean.
    let verify = phase(Load::new(
        addr,
        Arc::clone(&targets),
        args.customers,
        Plan::plain(args.verify, &args),
        Instant::now(),
    ))
    .await?;
    let verify_ok = count(&verify, |r| r.kind == Kind::Ok);
    let stats = server_stats(addr).await?;
    let states = backend_states(&admin).await?;
    let after = memory(pid)?;
    let audit = audit(&admin, &tenants).await?;

    drop(server.stdin.take());
    if tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .is_err()
    {
        server.kill().await?;
    }
    admin.close().await;
    cluster.stop().await?;

    report(Report {
        args: &args,
        records: &records,
        elapsed,
        restarted,
        before,
        after,
        verify: &verify,
        warmup: &warmup,
        stats: &stats,
        run_requests,
        run_handlers,
        states: &states,
        audit: &audit,
    })?;

    let wrong = count(&records, |r| r.kind == Kind::WrongTenant)
        + count(&verify, |r| r.kind == Kind::WrongTenant);
    let bad = count(&records, |r| r.kind == Kind::BadAnswer);
    anyhow::ensure!(wrong == 0, "{wrong} answers came from the wrong tenant");
    anyhow::ensure!(bad == 0, "{bad} answers were wrong");
    anyhow::ensure!(
        verify_ok == verify.len(),
        "{} of the {} requests after the run failed",
        verify.len() - verify_ok,
        verify.len()
    );
    anyhow::ensure!(
        audit.foreign == 0,
        "{} audit rows landed in another tenant's schema",
        audit.foreign
    );
    anyhow::ensure!(
        audit.panicked == 0,
        "{} writes of panicked requests were committed",
        audit.panicked
    );
    Ok(())
}

/// Everything the report prints.
struct Report<'a> {
    args: &'a RunArgs,
    records: &'a [Record],
    elapsed: Duration,
    restarted: Option<Restart>,
    before: Memory,
    after: Memory,
    warmup: &'a [Record],
    verify: &'a [Record],
    stats: &'a ServerStats,
    /// The server's requests during the soak run.
    run_requests: Counted,
    /// The server's handler bodies during the soak run.
    run_handlers: Counted,
    states: &'a [(String, i64)],
    audit: &'a Audit,
}

fn report(r: Report<'_>) -> anyhow::Result<()> {
    let records = r.records;
    let n = records.len();
    let kinds = by_kind(records);
    let ok = count(records, |x| x.kind == Kind::Ok);
    let wrong = count(records, |x| x.kind == Kind::WrongTenant);
    let aborted = count(records, |x| x.kind == Kind::Aborted);
    let planned = count(records, |x| x.abort_planned);
    let panics = count(records, |x| x.kind == Kind::InjectedPanic);
    let unavailable = count(records, |x| matches!(x.kind, Kind::Status(503, _)));
    let connection = count(records, |x| x.kind == Kind::Connection);
    let other = count(records, |x| {
        x.kind.is_failure()
            && !matches!(
                x.kind,
                Kind::WrongTenant | Kind::Status(503, _) | Kind::Connection
            )
    });
    let mut latencies: Vec<Duration> = records
        .iter()
        .filter(|x| x.kind == Kind::Ok)
        .map(|x| x.latency)
        .collect();
    latencies.sort_unstable();

    println!();
    println!(
        "soak run: {} requests in {:.1} s, {:.0} req/s; answered 200 p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        thousands(n),
        r.elapsed.as_secs_f64(),
        rate(n, r.elapsed),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "outcome", "reads", "writes", "total"
    );
    for (kind, (reads, writes)) in &kinds {
        println!(
            "{:<34} {:>10} {:>10} {:>10}",
            kind.to_string(),
            thousands(*reads),
            thousands(*writes),
            thousands(reads + writes)
        );
    }
    println!(
        "client aborts planned: {} ({} cut before the answer, {} answered first)",
        thousands(planned),
        thousands(aborted),
        thousands(planned - aborted)
    );
    let (q, h) = (r.run_requests, r.run_handlers);
    println!(
        "server: {} requests reached the tenant routes, {} answered, {} panicked, {} dropped unanswered (client gone): {} before the handler (resolving, checking out), {} in the handler with a connection in hand",
        thousands(q.entered as usize),
        thousands(q.completed as usize),
        thousands(q.panicked as usize),
        thousands(q.cancelled as usize),
        thousands(q.cancelled.saturating_sub(h.cancelled) as usize),
        thousands(h.cancelled as usize),
    );

    let mut recovery = None;
    let failure = |x: &&Record| x.kind.is_failure();
    if let Some(rs) = r.restarted {
        let before_stop = records
            .iter()
            .filter(failure)
            .filter(|x| x.done < rs.stop_began)
            .count();
        let first_failure = records
            .iter()
            .filter(failure)
            .find(|x| x.done >= rs.stop_began)
            .map(|x| x.done);
        let back = records
            .iter()
            .find(|x| x.kind == Kind::Ok && x.done >= rs.accepting)
            .map(|x| x.done);
        let after_back: Vec<&Record> = match back {
            Some(b) => records
                .iter()
                .filter(failure)
                .filter(|x| x.done > b)
                .collect(),
            None => Vec::new(),
        };
        let during = records
            .iter()
            .filter(failure)
            .filter(|x| x.done >= rs.stop_began && back.is_none_or(|b| x.done <= b))
            .count();
        println!();
        println!(
            "restart: pg_ctl stop -m fast at {:.1} s (down after {:.0} ms), started again and accepting at {:.1} s",
            rs.stop_began.as_secs_f64(),
            ms(rs.stopped - rs.stop_began),
            rs.accepting.as_secs_f64()
        );
        if let Some(f) = first_failure {
            println!(
                "  first failed request {:.0} ms after the stop began",
                ms(f.saturating_sub(rs.stop_began))
            );
        }
        match back {
            Some(b) => {
                println!(
                    "  service back {:.0} ms after PostgreSQL accepted connections again ({:.0} ms after the stop began)",
                    ms(b - rs.accepting),
                    ms(b - rs.stop_began)
                );
                recovery = Some(b - rs.accepting);
            }
            None => println!("  service NOT back by the end of the run"),
        }
        println!(
            "  failed requests: {} before the stop, {} from the stop until service was back, {} after{}",
            thousands(before_stop),
            thousands(during),
            thousands(after_back.len()),
            match (back, after_back.last()) {
                (Some(b), Some(last)) => format!(
                    " (the last {:.0} ms after service was back: {})",
                    ms(last.done - b),
                    last.kind
                ),
                _ => String::new(),
            }
        );
        for (kind, (reads, writes)) in by_kind(&after_back.into_iter().copied().collect::<Vec<_>>())
        {
            println!(
                "    after service was back: {kind}: {} reads, {} writes",
                thousands(reads),
                thousands(writes)
            );
        }
    }

    println!();
    println!(
        "server memory (pid, /proc/<pid>/status): VmRSS {:.1} → {:.1} MiB, RssAnon {:.1} → {:.1} MiB, peak VmHWM {:.1} MiB",
        mib(r.before.rss),
        mib(r.after.rss),
        mib(r.before.anon),
        mib(r.after.anon),
        mib(r.after.peak)
    );
    let verify_ok = count(r.verify, |x| x.kind == Kind::Ok);
    println!(
        "after the run: {} of {} plain requests answered correctly; server pool {} open, {} idle (max {}); server backends by state: {}",
        thousands(verify_ok),
        thousands(r.verify.len()),
        r.stats.pool_size,
        r.stats.pool_idle,
        r.stats.pool_max,
        r.states
            .iter()
            .map(|(s, c)| format!("{s} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let all: Vec<&Record> = r
        .warmup
        .iter()
        .chain(records)
        .chain(r.verify)
        .filter(|x| x.write)
        .collect();
    let ok_writes = all.iter().filter(|x| x.kind == Kind::Ok).count();
    let unsure = all
        .iter()
        .filter(|x| matches!(x.kind, Kind::Aborted | Kind::Connection))
        .count();
    let committed = r.audit.committed as usize;
    let consistent = committed >= ok_writes && committed <= ok_writes + unsure;
    println!(
        "audit_log: {} writes committed ({} answered 200, up to {} more aborted or cut: {}); {} in another tenant's schema, {} from panicked requests",
        thousands(committed),
        thousands(ok_writes),
        thousands(unsure),
        if consistent {
            "consistent"
        } else {
            "INCONSISTENT"
        },
        r.audit.foreign,
        r.audit.panicked
    );

    // For the README.
    let a = r.args;
    println!();
    println!("| soak run | |");
    println!("|---|---|");
    println!(
        "| load | {} requests over {} tenants (schema per tenant), concurrency {}, pool {}, {:.0} % writes |",
        thousands(n),
        a.tenants,
        a.concurrency,
        a.pool,
        a.write_rate * 100.0
    );
    println!(
        "| time | {:.1} s, {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms) |",
        r.elapsed.as_secs_f64(),
        rate(n, r.elapsed),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0))
    );
    println!("| answered and checked | {} |", thousands(ok));
    println!("| wrong-tenant answers | **{wrong}** |");
    println!(
        "| client aborts | {} planned, {} cut before the answer; the server dropped {} requests, {} of them holding a connection |",
        thousands(planned),
        thousands(aborted),
        thousands(r.run_requests.cancelled as usize),
        thousands(r.run_handlers.cancelled as usize)
    );
    println!("| injected panics (500) | {} |", thousands(panics));
    match (r.restarted, recovery) {
        (Some(_), Some(rec)) => println!(
            "| PostgreSQL restart ({:.0} s down) | {} × 503, {} connection errors; service back {:.0} ms after PostgreSQL was |",
            a.down_for,
            thousands(unavailable),
            thousands(connection),
            ms(rec)
        ),
        (Some(_), None) => println!(
            "| PostgreSQL restart ({:.0} s down) | {} × 503, {} connection errors; service not back |",
            a.down_for,
            thousands(unavailable),
            thousands(connection)
        ),
        (None, _) => println!(
            "| no restart | {} × 503, {} connection errors |",
            thousands(unavailable),
            thousands(connection)
        ),
    }
    println!("| other errors | {} |", thousands(other));
    println!(
        "| after the run | {} / {} plain requests correct; pool {} open, {} idle; audit rows foreign {}, from panics {} |",
        thousands(verify_ok),
        thousands(r.verify.len()),
        r.stats.pool_size,
        r.stats.pool_idle,
        r.audit.foreign,
        r.audit.panicked
    );
    println!(
        "| server memory | VmRSS {:.1} → {:.1} MiB, RssAnon {:.1} → {:.1} MiB |",
        mib(r.before.rss),
        mib(r.after.rss),
        mib(r.before.anon),
        mib(r.after.anon)
    );
    Ok(())
}
