//! Tenant-scoped HTTP requests through Hidra's web layer against raw sqlx,
//! measured in the same run on the same database.
//!
//! ```sh
//! cargo run --release -p hidra-bench --bin bench-web
//! cargo run --release -p hidra-bench --bin bench-web -- --duration 20 --rounds 5
//! ```
//!
//! One fresh database holds 100 tenants provisioned with
//! `bench/reference_schema.sql` and 1,000 customers each. Axum
//! servers listen on loopback, each with a pool of the same size, all serving
//! `GET /customers/{id}` for the tenant named by `X-Tenant-ID`:
//!
//! - **hidra**: behind `TenantLayer` (registry cache), the handler taking a
//!   `RequestConn` and running an unqualified query;
//! - **raw**: plain sqlx, no tenancy at all: a schema-qualified query chosen
//!   by the header, on a default `PgPoolOptions` pool (which pings every
//!   connection it hands out). The baseline of the ratio;
//! - **raw, no ping**: the same with `test_before_acquire(false)`. Hidra's
//!   pool replaces sqlx's ping with its own binding statement, so this is the
//!   baseline without any per-checkout statement;
//! - **raw, no ping, behind TenantLayer**: what the web layer alone costs;
//! - **raw search_path**: plain sqlx binding the connection itself with a
//!   prepared `set_config('search_path', $1, false)` before the same
//!   unqualified query as hidra's: the floor of any `search_path` binding.
//!   Switching a connection's `search_path` makes PostgreSQL re-plan its
//!   cached statements, which a schema-qualified query never pays.
//!
//! - **qualified** (built with `--features pg-query`): the design the issue
//!   asked to measure next. No checkout statement at all and a session
//!   `search_path` that names no tenant; instead each distinct SQL text is
//!   parsed once per tenant with PostgreSQL's own parser (`pg_query`) and the
//!   tenant's schema inserted before every unqualified relation of the tenant
//!   schema, behind `TenantLayer`. Its floor, and the cost of one rewrite.
//!
//! `--tenants 1000` puts the statement caches under pressure (for Hidra and
//! raw alike: each keeps `--statement-cache` statements per connection),
//! `--zipf 1.0` skews the tenant mix, and `--provision-during 2` provisions
//! tenants continuously while every variant is measured. After the run, the
//! private memory of each server's backends is read from `/proc`.
//!
//! A small load generator (keep-alive HTTP/1.1 connections, concurrency 32,
//! a random tenant and customer per request) drives each server in turn for a
//! fixed time after a warm-up, and reports requests per second and p50/p99
//! latency, then the ratios to raw. The variants alternate within each round
//! (each round starting with the next one) and the figures are medians over
//! the rounds (the ratios: medians of the
//! ratios within a round), so a burst of other work on the machine skews one
//! round, not the result.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use clap::Parser;
use hidra::testing::TestDatabase;
use hidra::{Hidra, NewTenant, TenantId};
use hidra_axum::{RequestConn, TenantLayer};
use hidra_bench::{CpuTicks, percentile, rate, read_reference};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr, SqlStr};

#[derive(Parser, Debug)]
#[command(about = "Benchmark tenant-scoped HTTP requests through hidra-axum against raw sqlx")]
struct Args {
    /// Tenants to provision.
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Customers per tenant.
    #[arg(long, default_value_t = 1000)]
    customers: i64,
    /// Concurrent keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds per variant and round.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Rounds; the variants alternate within each round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections of each server's pool (the same for all).
    #[arg(long, default_value_t = 10)]
    pool: u32,
    /// Reference schema (default: bench/reference_schema.sql).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Measure only these variants (hidra, raw, raw-noping, layer,
    /// search-path, and qualified with `--features pg-query`); the ratios
    /// need them all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Pick tenants from a Zipf distribution with this exponent (e.g. 1.0:
    /// the busiest tenant gets a share of about 1/H(n)); default uniform.
    #[arg(long)]
    zipf: Option<f64>,
    /// Provision new tenants continuously at this many per second during
    /// every measurement (each `CREATE SCHEMA` resets every backend's cached
    /// plans), to measure what sign-ups cost the reads of others.
    #[arg(long)]
    provision_during: Option<f64>,
    /// Prepared statements kept per connection, for every server alike
    /// (default: Hidra's default).
    #[arg(long)]
    statement_cache: Option<usize>,
    /// An empty database to use instead of a throw-away one.
    #[arg(long)]
    database_url: Option<String>,
}

/// Which tenant each request names: uniform, or Zipf-skewed through the
/// cumulative weights of tenants 1..=n.
#[derive(Clone)]
struct TenantMix {
    cumulative: Option<Arc<Vec<f64>>>,
}

impl TenantMix {
    fn new(n: usize, zipf: Option<f64>) -> Self {
        let cumulative = zipf.map(|s| {
            let mut total = 0.0;
            let mut out = Vec::with_capacity(n);
            for k in 1..=n {
                total += 1.0 / (k as f64).powf(s);
                out.push(total);
            }
            Arc::new(out.into_iter().map(|c| c / total).collect())
        });
        TenantMix { cumulative }
    }

    fn pick(&self, rng: &mut StdRng, n: usize) -> usize {
        match &self.cumulative {
            None => rng.random_range(0..n),
            Some(c) => {
                let x: f64 = rng.random();
                c.partition_point(|&v| v < x).min(n - 1)
            }
        }
    }
}

/// The resident private memory (RssAnon, KiB) of the server backends whose
/// `application_name` is `app`, summed, and how many there are. Read from
/// `/proc`: the benchmark runs on the database's machine.
async fn backend_memory(pool: &PgPool, app: &str) -> anyhow::Result<(u64, usize)> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(app)
            .fetch_all(pool)
            .await?;
    let mut total = 0;
    for pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok((total, pids.len()))
}

#[derive(serde::Serialize, sqlx::FromRow)]
struct Customer {
    id: i64,
    name: String,
    email: Option<String>,
}

async fn hidra_customer(
    Path(id): Path<i64>,
    mut conn: RequestConn,
) -> Result<axum::Json<Customer>, StatusCode> {
    sqlx::query_as("SELECT id, name, email FROM customers WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .map(axum::Json)
        .ok_or(StatusCode::NOT_FOUND)
}

/// The raw server: a pool and one schema-qualified statement per tenant.
#[derive(Clone)]
struct Raw {
    pool: PgPool,
    queries: Arc<HashMap<String, SqlStr>>,
}

async fn raw_customer(
    State(raw): State<Raw>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<axum::Json<Customer>, StatusCode> {
    let query = headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| raw.queries.get(t))
        .ok_or(StatusCode::NOT_FOUND)?;
    sqlx::query_as(query.clone())
        .bind(id)
        .fetch_optional(&raw.pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .map(axum::Json)
        .ok_or(StatusCode::NOT_FOUND)
}

/// The `search_path` floor: plain sqlx binding each checkout itself.
#[derive(Clone)]
struct Bind {
    pool: PgPool,
    paths: Arc<HashMap<String, String>>,
}

async fn bind_customer(
    State(b): State<Bind>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<axum::Json<Customer>, StatusCode> {
    let path = headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| b.paths.get(t))
        .ok_or(StatusCode::NOT_FOUND)?;
    let fail = |_| StatusCode::INTERNAL_SERVER_ERROR;
    let mut conn = b.pool.acquire().await.map_err(fail)?;
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(path)
        .execute(&mut *conn)
        .await
        .map_err(fail)?;
    sqlx::query_as("SELECT id, name, email FROM customers WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(fail)?
        .map(axum::Json)
        .ok_or(StatusCode::NOT_FOUND)
}

/// The schema-qualifying design: statement text rewritten per tenant.
#[cfg(feature = "pg-query")]
mod qualified {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, RwLock};

    use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

    /// `sql` with `schema.` (already quoted) inserted before every
    /// unqualified relation named in `tables` that is not a CTE of the
    /// statement; the rest of the text is left as written.
    pub(crate) fn qualify(
        sql: &str,
        schema: &str,
        tables: &HashSet<String>,
    ) -> anyhow::Result<String> {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)?;
        let ctes: HashSet<&str> = parsed.cte_names.iter().map(String::as_str).collect();
        let mut at: Vec<usize> = parsed
            .protobuf
            .nodes()
            .into_iter()
            .filter_map(|(node, ..)| match node {
                pg_query::NodeRef::RangeVar(r)
                    if r.schemaname.is_empty()
                        && !ctes.contains(r.relname.as_str())
                        && tables.contains(&r.relname) =>
                {
                    usize::try_from(r.location).ok()
                }
                _ => None,
            })
            .collect();
        at.sort_unstable();
        at.dedup();
        let mut out = String::with_capacity(sql.len() + at.len() * (schema.len() + 1));
        let mut from = 0;
        for i in at {
            out.push_str(&sql[from..i]);
            out.push_str(schema);
            out.push('.');
            from = i;
        }
        out.push_str(&sql[from..]);
        Ok(out)
    }

    /// Each tenant's schema, the tenant schema's relations, and the
    /// rewritten statements (one parse per tenant and SQL text).
    #[derive(Clone)]
    pub(crate) struct Qualified {
        pub(crate) pool: sqlx::PgPool,
        pub(crate) schemas: Arc<HashMap<String, String>>,
        pub(crate) tables: Arc<HashSet<String>>,
        /// Per tenant, per SQL text: looked up without allocating.
        pub(crate) statements: Arc<RwLock<HashMap<String, HashMap<&'static str, SqlStr>>>>,
    }

    impl Qualified {
        /// `sql` for `tenant`, rewritten on first use.
        pub(crate) fn statement(&self, tenant: &str, sql: &'static str) -> anyhow::Result<SqlStr> {
            let cached = self.statements.read().unwrap();
            if let Some(s) = cached.get(tenant).and_then(|t| t.get(sql)) {
                return Ok(s.clone());
            }
            drop(cached);
            let schema = self
                .schemas
                .get(tenant)
                .ok_or_else(|| anyhow::anyhow!("no schema for {tenant}"))?;
            let text = AssertSqlSafe(qualify(sql, schema, &self.tables)?).into_sql_str();
            self.statements
                .write()
                .unwrap()
                .entry(tenant.to_owned())
                .or_default()
                .insert(sql, text.clone());
            Ok(text)
        }
    }

    #[test]
    fn relations_of_the_tenant_schema_are_qualified_ctes_and_others_not() {
        let tables: HashSet<String> = ["customers", "orders"].map(String::from).into();
        let sql = "WITH orders AS (SELECT 1 AS id) SELECT c.id FROM customers c \
                   JOIN orders o ON o.id = c.id JOIN public.plans p ON true \
                   WHERE c.name = 'customers' AND EXISTS (SELECT 1 FROM \"customers\")";
        assert_eq!(
            qualify(sql, "\"tenant_a\"", &tables).unwrap(),
            "WITH orders AS (SELECT 1 AS id) SELECT c.id FROM \"tenant_a\".customers c \
             JOIN orders o ON o.id = c.id JOIN public.plans p ON true \
             WHERE c.name = 'customers' AND EXISTS (SELECT 1 FROM \"tenant_a\".\"customers\")"
        );
    }
}

#[cfg(feature = "pg-query")]
async fn qualified_customer(
    State(q): State<qualified::Qualified>,
    tenant: hidra_axum::CurrentTenant,
    Path(id): Path<i64>,
) -> Result<axum::Json<Customer>, StatusCode> {
    let fail = |_| StatusCode::INTERNAL_SERVER_ERROR;
    let sql = q
        .statement(
            tenant.0.id.as_str(),
            "SELECT id, name, email FROM customers WHERE id = $1",
        )
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(&q.pool)
        .await
        .map_err(fail)?
        .map(axum::Json)
        .ok_or(StatusCode::NOT_FOUND)
}

async fn serve(app: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// What one load run measured.
#[derive(Default)]
struct Measured {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU ticks spent while measuring: this process's and the machine's.
    cpu: CpuTicks,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.cpu.process += other.cpu.process;
        self.cpu.busy += other.cpu.busy;
        self.cpu.total += other.cpu.total;
    }
}

/// Drives `addr` with `concurrency` keep-alive connections for
/// `warmup + duration`, recording only after the warm-up.
async fn load(
    addr: SocketAddr,
    tenants: Arc<Vec<String>>,
    mix: TenantMix,
    customers: i64,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + duration;
    // Where the CPU went while measuring, this process and the machine.
    let cpu = CpuTicks::over(measure_from, until);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (tenants, mix) = (Arc::clone(&tenants), mix.clone());
        workers.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut rng = StdRng::from_rng(&mut rand::rng());
            let mut out = Measured::default();
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                let tenant = &tenants[mix.pick(&mut rng, tenants.len())];
                let id = rng.random_range(1..=customers);
                let req = http::Request::get(format!("/customers/{id}"))
                    .header("host", "127.0.0.1")
                    .header("x-tenant-id", tenant)
                    .body(Empty::<Bytes>::new())?;
                sender.ready().await?;
                let res = sender.send_request(req).await?;
                let ok = res.status() == StatusCode::OK;
                let body = res.into_body().collect().await?.to_bytes();
                let took = now.elapsed();
                if now >= measure_from {
                    out.requests += 1;
                    out.latencies.push(took);
                    // The answer must be the customer asked for.
                    let expected = format!("{{\"id\":{id},");
                    if !ok || !body.starts_with(expected.as_bytes()) {
                        out.errors += 1;
                    }
                }
            }
            anyhow::Ok(out)
        }));
    }
    let mut total = Measured::default();
    for worker in workers {
        total.merge(worker.await??);
    }
    total.elapsed = duration;
    total.cpu = cpu.await?.unwrap_or_default();
    Ok(total)
}

struct Variant {
    key: &'static str,
    name: &'static str,
    addr: SocketAddr,
    measured: Measured,
    /// Throughput, p50 and p99 of each round.
    rounds: Vec<(f64, Duration, Duration)>,
    /// CPU µs per request of each round: this process's, the machine's.
    cpu: Vec<(f64, f64)>,
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// What `TenantLayer` costs per request in this process, with no network and
/// no database: a router with a trivial handler called directly (as hyper
/// calls it), with and without the layer, alternating, `n` requests per
/// batch. Returns the median nanoseconds per request of each.
async fn layer_in_process(
    hidra: &Hidra,
    tenants: &[String],
    n: usize,
    batches: usize,
) -> anyhow::Result<(f64, f64)> {
    use tower::ServiceExt;

    let plain = Router::new().route("/customers/{id}", get(|| async { "ok" }));
    let layered = plain.clone().layer(TenantLayer::new(hidra.clone()));
    let mut times = [Vec::new(), Vec::new()];
    for batch in 0..batches {
        // Alternate which goes first.
        for which in [batch % 2, 1 - batch % 2] {
            let app = if which == 0 { &plain } else { &layered };
            let started = Instant::now();
            for i in 0..n {
                let req = http::Request::get("/customers/1")
                    .header("x-tenant-id", tenants[i % tenants.len()].as_str())
                    .body(axum::body::Body::empty())?;
                let res = app.clone().oneshot(req).await?;
                anyhow::ensure!(res.status() == StatusCode::OK, "{}", res.status());
            }
            times[which].push(started.elapsed().as_nanos() as f64 / n as f64);
        }
    }
    let [mut plain, mut layered] = times;
    Ok((median(&mut plain), median(&mut layered)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema_sql = read_reference(args.schema.clone(), "reference_schema.sql")?;

    let db;
    let options: PgConnectOptions = match &args.database_url {
        Some(url) => url.parse().context("invalid --database-url")?,
        None => {
            db = TestDatabase::create().await?;
            println!("database: throw-away {}", db.name());
            db.connect_options()
        }
    };

    let mut builder = Hidra::builder()
        .schema_sql("reference schema", schema_sql)
        .max_connections(args.pool);
    if let Some(n) = args.statement_cache {
        builder = builder.statement_cache_capacity(n);
    }
    let hidra = builder
        .connect_with(options.clone().application_name("bench-hidra"))
        .await?;
    // Every server keeps as many prepared statements per connection.
    let capacity = hidra.statement_cache_capacity();
    let options = options.statement_cache_capacity(capacity);
    println!("statement cache: {capacity} per connection, for every server");
    hidra.install().await?;

    let started = Instant::now();
    let mut tenants = Vec::new();
    let mut queries = HashMap::new();
    let mut paths = HashMap::new();
    #[cfg_attr(not(feature = "pg-query"), allow(unused_variables, unused_mut))]
    let mut schemas = HashMap::new();
    for i in 0..args.tenants {
        let id = TenantId::new(format!("bench-{i:04}"))?;
        let tenant = hidra.provision(NewTenant::new(id.clone())).await?;
        let mut conn = hidra.acquire(&tenant).await?;
        sqlx::query(
            "INSERT INTO customers (name, email, phone) \
             SELECT 'Customer ' || g, 'customer' || g || '@example.com', '+1 555 ' || g \
             FROM generate_series(1, $1) AS g",
        )
        .bind(args.customers)
        .execute(&mut conn)
        .await?;
        drop(conn);
        let schema = hidra::Ident::new(hidra.schema_name(&id), "schema")?;
        queries.insert(
            id.to_string(),
            AssertSqlSafe(format!(
                "SELECT id, name, email FROM {}.customers WHERE id = $1",
                schema.quoted()
            ))
            .into_sql_str(),
        );
        paths.insert(id.to_string(), format!("{}, public", schema.quoted()));
        schemas.insert(id.to_string(), schema.quoted().to_string());
        tenants.push(id.to_string());
    }
    let mut conn = hidra.acquire_shared().await?;
    sqlx::raw_sql("ANALYZE").execute(&mut *conn).await?;
    drop(conn);
    println!(
        "provisioned {} tenants with {} customers each in {:.1} s",
        args.tenants,
        args.customers,
        started.elapsed().as_secs_f64()
    );

    let (plain, layered) = layer_in_process(&hidra, &tenants, 20_000, 10).await?;
    println!(
        "TenantLayer in process (no network, no database): {:.0} ns per request over a trivial handler ({plain:.0} ns without it, {layered:.0} ns with it; median of 10 batches)",
        layered - plain
    );

    let hidra_app = Router::new()
        .route("/customers/{id}", get(hidra_customer))
        .layer(TenantLayer::new(hidra.clone()));
    let queries = Arc::new(queries);
    let raw_pool = PgPoolOptions::new()
        .max_connections(args.pool)
        .connect_with(options.clone().application_name("bench-raw"))
        .await?;
    let raw_pool_handle = raw_pool.clone();
    let raw_app = Router::new()
        .route("/customers/{id}", get(raw_customer))
        .with_state(Raw {
            pool: raw_pool,
            queries: Arc::clone(&queries),
        });
    let layered_app = Router::new()
        .route("/customers/{id}", get(raw_customer))
        .with_state(Raw {
            pool: PgPoolOptions::new()
                .max_connections(args.pool)
                .test_before_acquire(false)
                .connect_with(options.clone())
                .await?,
            queries: Arc::clone(&queries),
        })
        .layer(TenantLayer::new(hidra.clone()));
    let noping_pool = PgPoolOptions::new()
        .max_connections(args.pool)
        .test_before_acquire(false)
        .connect_with(options.clone())
        .await?;
    #[cfg(feature = "pg-query")]
    let options_for_qualified = options.clone();
    let bind_app = Router::new()
        .route("/customers/{id}", get(bind_customer))
        .with_state(Bind {
            pool: PgPoolOptions::new()
                .max_connections(args.pool)
                .test_before_acquire(false)
                .connect_with(options)
                .await?,
            paths: Arc::new(paths),
        });
    let noping_app = Router::new()
        .route("/customers/{id}", get(raw_customer))
        .with_state(Raw {
            pool: noping_pool,
            queries,
        });

    let mut variants = Vec::from([
        Variant {
            key: "hidra",
            name: "hidra (TenantLayer + RequestConn)",
            addr: serve(hidra_app).await?,
            measured: Measured::default(),
            rounds: Vec::new(),
            cpu: Vec::new(),
        },
        Variant {
            key: "raw",
            name: "raw sqlx (default pool)",
            addr: serve(raw_app).await?,
            measured: Measured::default(),
            rounds: Vec::new(),
            cpu: Vec::new(),
        },
        Variant {
            key: "raw-noping",
            name: "raw sqlx (no ping)",
            addr: serve(noping_app).await?,
            measured: Measured::default(),
            rounds: Vec::new(),
            cpu: Vec::new(),
        },
        Variant {
            key: "layer",
            name: "raw sqlx (no ping) + TenantLayer",
            addr: serve(layered_app).await?,
            measured: Measured::default(),
            rounds: Vec::new(),
            cpu: Vec::new(),
        },
        Variant {
            key: "search-path",
            name: "raw sqlx, search_path per request",
            addr: serve(bind_app).await?,
            measured: Measured::default(),
            rounds: Vec::new(),
            cpu: Vec::new(),
        },
    ]);
    #[cfg(feature = "pg-query")]
    {
        let mut tables = std::collections::HashSet::new();
        let mut conn = hidra.acquire_shared().await?;
        let first_id = TenantId::new(tenants[0].as_str())?;
        let first = schemas[first_id.as_str()].clone();
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        )
        .bind(hidra.schema_name(&first_id))
        .fetch_all(&mut *conn)
        .await?;
        drop(conn);
        tables.extend(names);
        let tables = Arc::new(tables);
        // What one rewrite costs (paid once per tenant and SQL text).
        let sql = "SELECT id, name, email FROM customers WHERE id = $1";
        let n = 2000;
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(qualified::qualify(sql, &first, &tables)?);
        }
        println!(
            "qualified design: one rewrite of the point read takes {:.1} µs ({} relations known)",
            started.elapsed().as_secs_f64() * 1e6 / f64::from(n),
            tables.len()
        );
        let q = qualified::Qualified {
            pool: PgPoolOptions::new()
                .max_connections(args.pool)
                .test_before_acquire(false)
                // A session path naming no tenant: only qualified text finds
                // tenant tables.
                .connect_with(options_for_qualified.options([("search_path", "pg_catalog")]))
                .await?,
            schemas: Arc::new(schemas),
            tables,
            statements: Default::default(),
        };
        let app = Router::new()
            .route("/customers/{id}", get(qualified_customer))
            .with_state(q)
            .layer(TenantLayer::new(hidra.clone()));
        variants.push(Variant {
            key: "qualified",
            name: "qualified text (pg_query), no binding",
            addr: serve(app).await?,
            measured: Measured::default(),
            rounds: Vec::new(),
            cpu: Vec::new(),
        });
    }

    println!(
        "load: concurrency {}, {} s warm-up + {} s measured per variant, {} round(s), pools of {}",
        args.concurrency, args.warmup, args.duration, args.rounds, args.pool
    );
    let churn = args.provision_during.map(|rate| {
        let hidra = hidra.clone();
        println!("provisioning {rate} tenants/s during every measurement");
        tokio::spawn(async move {
            let every = Duration::from_secs_f64(1.0 / rate);
            let mut tick = tokio::time::interval(every);
            let mut made = 0usize;
            loop {
                tick.tick().await;
                let Ok(id) = TenantId::new(format!("churn-{made:05}")) else {
                    break;
                };
                if let Err(e) = hidra.provision(NewTenant::new(id)).await {
                    eprintln!("provisioning during the run failed: {e}");
                }
                made += 1;
            }
        })
    });
    let tenants = Arc::new(tenants);
    let mix = TenantMix::new(tenants.len(), args.zipf);
    match args.zipf {
        Some(s) => println!("tenants: {} chosen Zipf(s = {s})", tenants.len()),
        None => println!("tenants: {} chosen uniformly", tenants.len()),
    }
    for round in 1..=args.rounds {
        // Each round starts with the next variant, so that no variant always
        // runs first (or right after the same other one).
        let n = variants.len();
        for i in (0..n).map(|i| (i + round - 1) % n) {
            let v = &mut variants[i];
            if !args.only.is_empty() && !args.only.iter().any(|k| k == v.key) {
                continue;
            }
            let m = load(
                v.addr,
                Arc::clone(&tenants),
                mix.clone(),
                args.customers,
                args.concurrency,
                Duration::from_secs(args.warmup),
                Duration::from_secs(args.duration),
            )
            .await?;
            let mut sorted = m.latencies.clone();
            sorted.sort_unstable();
            let row = (
                rate(m.requests, m.elapsed),
                percentile(&sorted, 50.0),
                percentile(&sorted, 99.0),
            );
            let (process, machine) = m.cpu.micros_per(m.requests);
            println!(
                "  round {round}: {:<34} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  CPU per request: this process {process:>5.1} µs, machine {machine:>5.1} µs",
                v.name,
                row.0,
                ms(row.1),
                ms(row.2)
            );
            v.cpu.push((process, machine));
            v.rounds.push(row);
            v.measured.merge(m);
        }
    }

    // The machine may be shared: every figure below is the median over the
    // rounds, and every ratio the median of the ratios measured within one
    // round, back to back.
    println!();
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>7} {:>14} {:>14}   (median of {} rounds)",
        "variant",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "process µs/req",
        "machine µs/req",
        args.rounds
    );
    for v in variants.iter().filter(|v| !v.rounds.is_empty()) {
        let mut tput: Vec<f64> = v.rounds.iter().map(|r| r.0).collect();
        let mut p50: Vec<f64> = v.rounds.iter().map(|r| ms(r.1)).collect();
        let mut p99: Vec<f64> = v.rounds.iter().map(|r| ms(r.2)).collect();
        let mut process: Vec<f64> = v.cpu.iter().map(|c| c.0).collect();
        let mut machine: Vec<f64> = v.cpu.iter().map(|c| c.1).collect();
        println!(
            "{:<34} {:>10.0} {:>9.3} {:>9.3} {:>7} {:>14.1} {:>14.1}",
            v.name,
            median(&mut tput),
            median(&mut p50),
            median(&mut p99),
            v.measured.errors,
            median(&mut process),
            median(&mut machine),
        );
    }
    if let Some(churn) = churn {
        churn.abort();
    }
    println!();
    for (name, app) in [
        ("hidra", "bench-hidra"),
        ("raw (default pool)", "bench-raw"),
    ] {
        let (kib, n) = backend_memory(&raw_pool_handle, app).await?;
        println!(
            "server memory after the run, {name}: {n} backends, {:.1} MiB private (RssAnon), {:.2} MiB each",
            kib as f64 / 1024.0,
            kib as f64 / 1024.0 / n.max(1) as f64
        );
    }
    let errors: usize = variants.iter().map(|v| v.measured.errors).sum();
    anyhow::ensure!(
        errors == 0,
        "{errors} requests failed or got a wrong answer"
    );
    if !args.only.is_empty() {
        return Ok(());
    }
    println!();
    let ratio = |a: usize, b: usize| {
        let per_round = |f: &dyn Fn(&(f64, Duration, Duration)) -> f64| {
            let mut r: Vec<f64> = variants[a]
                .rounds
                .iter()
                .zip(&variants[b].rounds)
                .map(|(x, y)| f(x) / f(y))
                .collect();
            median(&mut r)
        };
        format!(
            "throughput {:.3}, p50 {:.3}, p99 {:.3}",
            per_round(&|r| r.0),
            per_round(&|r| ms(r.1)),
            per_round(&|r| ms(r.2)),
        )
    };
    println!("hidra / raw (default pool):           {}", ratio(0, 1));
    println!("hidra / raw (no ping):                {}", ratio(0, 2));
    println!("TenantLayer alone (no ping):          {}", ratio(3, 2));
    println!("search_path floor / raw (default):    {}", ratio(4, 1));
    println!("hidra / search_path floor:            {}", ratio(0, 4));
    if variants.len() > 5 {
        println!("qualified design / raw (default):     {}", ratio(5, 1));
        println!("hidra / qualified design:             {}", ratio(0, 5));
    }
    Ok(())
}
