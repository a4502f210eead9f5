//! Noisy neighbours: what one tenant holding connections in slow
//! transactions does to the other tenants' reads, without and with Hidra's
//! per-tenant cap on the shared pool.
//!
//! ```sh
//! cargo run --release -p hidra-bench --bin bench-noisy
//! ```
//!
//! One fresh database holds `--tenants` tenants (the reference schema, 1,000
//! customers each) served by a pool of `--pool` connections. The quiet
//! tenants send point reads at a steady `--quiet-rate` per second in all
//! (open loop: each read is timed from when it was due, so waiting for a
//! connection counts). Three runs, each on a fresh `Hidra` handle:
//!
//! - **alone**: the quiet tenants only;
//! - **noisy, no cap**: plus one noisy tenant with `--noisy-clients` clients,
//!   each looping over a transaction that sleeps `--sleep-ms` in
//!   `pg_sleep`, with `TenantCap::Fraction(1.0)` (it may take the whole pool);
//! - **noisy, capped**: the same with Hidra's default cap (half the pool).
//!
//! Printed: the quiet tenants' completed reads per second (offered at a fixed
//! rate, so this only drops when reads fail or fall behind), p50 and p99,
//! and how many failed; the noisy tenant's completed transactions per second
//! and its refusals (`TenantBusy` after a 1 s wait).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hidra::testing::TestDatabase;
use hidra::{Error, Hidra, NewTenant, Tenant, TenantCap, TenantId};
use hidra_bench::{percentile, rate, read_reference};
use rand::Rng;
use sqlx::postgres::PgConnectOptions;

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark the quiet tenants' reads next to a noisy tenant, without and with the per-tenant cap"
)]
struct Args {
    /// Tenants (one of them noisy).
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Connections of the shared pool.
    #[arg(long, default_value_t = 16)]
    pool: u32,
    /// Point reads per second of all the quiet tenants together.
    #[arg(long, default_value_t = 400)]
    quiet_rate: u32,
    /// Concurrent clients of the noisy tenant.
    #[arg(long, default_value_t = 64)]
    noisy_clients: usize,
    /// How long each of the noisy tenant's transactions sleeps.
    #[arg(long, default_value_t = 200)]
    sleep_ms: u64,
    /// Measured seconds per run (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Run {
    Alone,
    Uncapped,
    Capped,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::Alone => "quiet tenants alone",
            Run::Uncapped => "with the noisy tenant, no cap",
            Run::Capped => "with the noisy tenant, capped (default)",
        }
    }
}

struct Outcome {
    quiet_done: usize,
    quiet_failed: usize,
    latencies: Vec<Duration>,
    noisy_done: usize,
    noisy_refused: usize,
    elapsed: Duration,
    /// The noisy tenant runs through the warm-up too.
    noisy_elapsed: Duration,
}

async fn handle(
    options: &PgConnectOptions,
    schema: &str,
    pool: u32,
    run: Run,
) -> anyhow::Result<Hidra> {
    let cap = match run {
        Run::Capped => TenantCap::Fraction(0.5),
        _ => TenantCap::Fraction(1.0),
    };
    Ok(Hidra::builder()
        .schema_sql("reference schema", schema.to_owned())
        .max_connections(pool)
        .tenant_cap(cap)
        .tenant_wait(Duration::from_secs(1))
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.clone())
        .await?)
}

async fn measure(
    hidra: Hidra,
    quiet: Arc<Vec<Tenant>>,
    noisy: Tenant,
    run: Run,
    args: &Args,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let (noisy_done, noisy_refused) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut noisy_tasks = Vec::new();
    if run != Run::Alone {
        for _ in 0..args.noisy_clients {
            let (hidra, noisy, stop) = (hidra.clone(), noisy.clone(), stop.clone());
            let (done, refused) = (noisy_done.clone(), noisy_refused.clone());
            let sleep = args.sleep_ms as f64 / 1000.0;
            noisy_tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match hidra.begin(&noisy).await {
                        Ok(mut tx) => {
                            let slept = sqlx::query("SELECT pg_sleep($1)")
                                .bind(sleep)
                                .execute(&mut tx)
                                .await;
                            if slept.is_ok() && tx.commit().await.is_ok() {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(Error::TenantBusy { .. }) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }));
        }
    }
    let warmup = Duration::from_secs(2);
    let measure = Duration::from_secs(args.duration);
    let every = Duration::from_secs_f64(1.0 / f64::from(args.quiet_rate.max(1)));
    let start = tokio::time::Instant::now() + warmup;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now(), every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut reads = Vec::new();
    loop {
        let due = tick.tick().await;
        if due >= start + measure {
            break;
        }
        let (hidra, quiet) = (hidra.clone(), quiet.clone());
        let counted = due >= start;
        reads.push(tokio::spawn(async move {
            let (tenant, id) = {
                let mut rng = rand::rng();
                (
                    quiet[rng.random_range(0..quiet.len())].clone(),
                    rng.random_range(1..=1000i64),
                )
            };
            let read = async {
                let mut conn = hidra.acquire(&tenant).await?;
                let name: String = sqlx::query_scalar("SELECT name FROM customers WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| Error::Database {
                        context: "reading",
                        source: e,
                    })?;
                Ok::<_, Error>(name)
            };
            let ok = read.await.is_ok();
            (counted, ok, due.elapsed())
        }));
    }
    let mut out = Outcome {
        quiet_done: 0,
        quiet_failed: 0,
        latencies: Vec::new(),
        noisy_done: 0,
        noisy_refused: 0,
        elapsed: measure,
        noisy_elapsed: warmup + measure,
    };
    for read in reads {
        let (counted, ok, took) = read.await.expect("a read task panicked");
        if !counted {
            continue;
        }
        if ok {
            out.quiet_done += 1;
            out.latencies.push(took);
        } else {
            out.quiet_failed += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in noisy_tasks {
        let _ = task.await;
    }
    out.noisy_done = noisy_done.load(Ordering::Relaxed);
    out.noisy_refused = noisy_refused.load(Ordering::Relaxed);
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema = read_reference(None, "reference_schema.sql")?;
    let db = TestDatabase::create().await?;
    let options = db.connect_options();
    let setup = handle(&options, &schema, args.pool, Run::Alone).await?;
    setup.install().await?;
    let started = Instant::now();
    let mut tenants = Vec::new();
    for i in 0..args.tenants.max(2) {
        let tenant = setup
            .provision(NewTenant::new(TenantId::new(format!("t{i:04}"))?))
            .await?;
        let mut conn = setup.acquire(&tenant).await?;
        sqlx::query(
            "INSERT INTO customers (name, email) SELECT 'Customer ' || g, 'c' || g || '@example.com' \
             FROM generate_series(1, 1000) AS g",
        )
        .execute(&mut conn)
        .await?;
        tenants.push(tenant);
    }
    setup.close().await;
    println!(
        "{} tenants, 1,000 customers each, in {:.1} s; pool {}, quiet reads {}/s, noisy: {} clients × pg_sleep({} ms) in a transaction",
        tenants.len(),
        started.elapsed().as_secs_f64(),
        args.pool,
        args.quiet_rate,
        args.noisy_clients,
        args.sleep_ms
    );
    let noisy = tenants.remove(0);
    let quiet = Arc::new(tenants);
    println!(
        "\n{:<42} {:>9} {:>9} {:>9} {:>8} {:>12} {:>10}",
        "run", "quiet/s", "p50 ms", "p99 ms", "failed", "noisy tx/s", "refused"
    );
    let mut alone = None;
    for run in [Run::Alone, Run::Uncapped, Run::Capped] {
        let hidra = handle(&options, &schema, args.pool, run).await?;
        let mut out = measure(hidra.clone(), quiet.clone(), noisy.clone(), run, &args).await;
        hidra.close().await;
        out.latencies.sort_unstable();
        let (p50, p99) = (
            percentile(&out.latencies, 50.0),
            percentile(&out.latencies, 99.0),
        );
        let tput = rate(out.quiet_done, out.elapsed);
        println!(
            "{:<42} {:>9.0} {:>9.2} {:>9.2} {:>8} {:>12.1} {:>10}",
            run.name(),
            tput,
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            out.quiet_failed,
            rate(out.noisy_done, out.noisy_elapsed),
            out.noisy_refused
        );
        match alone {
            None => alone = Some((tput, p99)),
            Some((t0, p0)) => println!(
                "{:<42} throughput {:.3} × alone, p99 {:.2} × alone",
                "",
                tput / t0,
                p99.as_secs_f64() / p0.as_secs_f64()
            ),
        }
    }
    Ok(())
}
