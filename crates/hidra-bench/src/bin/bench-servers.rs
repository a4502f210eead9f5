//! Tenants over several PostgreSQL servers: provisioning over 1, 2 and 3
//! servers, point reads with tenants spread over three servers against the
//! same reads on one, and a move of a large tenant between servers.
//!
//! ```sh
//! cargo run --release -p hidra-bench --bin bench-servers
//! cargo run --release -p hidra-bench --bin bench-servers -- --tenants 60 --move-rows 100000
//! ```
//!
//! Four throw-away clusters are started from the installed server binaries
//! (`hidra::testing::TempCluster`): a control server holding the registry,
//! and three servers registered with it. **They all run on this machine**, so
//! "over three servers" measures what Hidra adds (placement, a pool per
//! server, the two-server provisioning protocol), not the capacity three
//! machines would add.
//!
//! 1. **Provisioning.** For 1, 2 and 3 registered servers in turn (rounds
//!    alternate the variants), a fresh control database and a fresh database
//!    on each server; `--tenants` schema tenants of `bench/reference_schema.sql`
//!    are provisioned with `--concurrency` tasks, placed by
//!    `FewestTenants::excluding_control()`. The floor, **raw**, is the same
//!    number of `CREATE SCHEMA` plus the reference schema, one transaction
//!    each, issued with plain sqlx on one server over `--concurrency`
//!    connections opened before the clock starts.
//! 2. **Point reads.** 30 tenants spread over the three servers and 30 tenants
//!    all on the first, each with 1,000 customers; for `--duration` seconds,
//!    32 tasks pick a random tenant of a set and read one customer through
//!    `hidra.acquire`. Rounds alternate the two sets.
//! 3. **Move.** A tenant with `--move-rows` customers moves from the first
//!    server to the second: the total time and the write freeze.
//!
//! Figures are medians over `--rounds` rounds, every round printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hidra::testing::TempCluster;
use hidra::{FewestTenants, Hidra, Migrations, NewServer, NewTenant, ServerName, Tenant, TenantId};
use hidra_bench::{fan_out, per_connection, percentile, rate, read_reference};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

#[derive(Parser, Debug)]
#[command(about = "Benchmark tenants spread over several PostgreSQL servers")]
struct Args {
    /// Tenants provisioned per variant and round.
    #[arg(long, default_value_t = 120)]
    tenants: usize,
    /// Concurrent provisionings.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Rounds (variants alternate within each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds of each point-read load.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Rows of the tenant that is moved.
    #[arg(long, default_value_t = 1_000_000)]
    move_rows: i64,
}

/// A database of `cluster` for one variant, and its URL.
async fn fresh_database(cluster: &TempCluster, name: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect(cluster.url()).await?;
    // Two statements: neither may run inside a transaction block.
    for statement in [
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut conn)
            .await?;
    }
    Ok(format!(
        "{}/{name}",
        cluster.url().rsplit_once('/').unwrap().0
    ))
}

/// A control database on `control` with `servers` registered (a fresh
/// database on each), and a handle placing tenants on them only.
async fn fleet(
    control: &TempCluster,
    servers: &[TempCluster],
    tag: &str,
    schema: &str,
) -> anyhow::Result<Hidra> {
    let url = fresh_database(control, &format!("control_{tag}")).await?;
    let hidra = Hidra::builder()
        .tenant_migrations(Migrations::new().push("reference", schema))
        .placement(FewestTenants::excluding_control())
        .connect(&url)
        .await?;
    hidra.install().await?;
    for (i, cluster) in servers.iter().enumerate() {
        let url = fresh_database(cluster, &format!("s_{tag}")).await?;
        let name = ServerName::new(format!("s{}", i + 1))?;
        hidra.servers().add(NewServer::new(name, url)).await?;
    }
    Ok(hidra)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema = read_reference(None, "reference_schema.sql")?;
    eprintln!("starting 4 throw-away clusters…");
    let control = TempCluster::start().await?;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TempCluster::start().await?);
    }

    // 1. Provisioning.
    println!(
        "## Provisioning {} schema tenants, concurrency {}",
        args.tenants, args.concurrency
    );
    let mut figures: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for round in 0..args.rounds {
        let mut line = format!("round {}:", round + 1);
        for (v, n) in [0usize, 1, 2, 3].into_iter().enumerate() {
            let tag = format!("r{round}v{v}");
            let per_sec = if n == 0 {
                raw_provisioning(&servers[0], &tag, &schema, &args).await?
            } else {
                let hidra = fleet(&control, &servers[..n], &tag, &schema).await?;
                let h = hidra.clone();
                let (_, took) = fan_out(args.tenants, args.concurrency, move |i| {
                    let h = h.clone();
                    async move {
                        h.provision(NewTenant::new(TenantId::new(format!("t{i}"))?))
                            .await
                            .context("provisioning")
                    }
                })
                .await?;
                hidra.close().await;
                rate(args.tenants, took)
            };
            figures[v].push(per_sec);
            let label = if n == 0 {
                "raw".to_owned()
            } else {
                format!("{n} server(s)")
            };
            line.push_str(&format!("  {label} {per_sec:.1}/s"));
        }
        println!("{line}");
    }
    let raw = median(figures[0].clone());
    println!("| variant | tenants/s (median) | of raw |\n|---|---:|---:|");
    println!("| raw, one server | {raw:.1} | 1.00 |");
    for (n, runs) in figures.iter().enumerate().skip(1) {
        let m = median(runs.clone());
        println!("| Hidra, {n} server(s) | {m:.1} | {:.2} |", m / raw);
    }

    // 2. Point reads.
    let hidra = fleet(&control, &servers, "reads", &schema).await?;
    let mut spread = Vec::new();
    let mut one = Vec::new();
    for i in 0..30 {
        spread.push(
            hidra
                .provision(NewTenant::new(TenantId::new(format!("spread{i}"))?))
                .await?,
        );
        let s1 = ServerName::new("s1")?;
        one.push(
            hidra
                .provision(NewTenant::new(TenantId::new(format!("one{i}"))?).on_server(s1))
                .await?,
        );
    }
    for t in spread.iter().chain(&one) {
        let mut conn = hidra.acquire(t).await?;
        sqlx::query(
            "INSERT INTO customers (name, email) SELECT 'c' || g, 'c' || g || '@x.test' FROM generate_series(1, 1000) g",
        )
        .execute(&mut conn)
        .await?;
    }
    println!("\n## Point reads, 32 tasks, {} s each", args.duration);
    let (mut spread_rates, mut one_rates) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let s = reads(&hidra, &spread, args.duration).await?;
        let o = reads(&hidra, &one, args.duration).await?;
        println!(
            "round {}: spread over 3: {:.0}/s p99 {:.2} ms   all on one: {:.0}/s p99 {:.2} ms",
            round + 1,
            s.0,
            s.1.as_secs_f64() * 1e3,
            o.0,
            o.1.as_secs_f64() * 1e3
        );
        spread_rates.push(s.0);
        one_rates.push(o.0);
    }
    let (s, o) = (median(spread_rates), median(one_rates));
    println!(
        "median: spread {s:.0}/s, one {o:.0}/s, spread/one {:.2}",
        s / o
    );

    // 3. Move.
    println!(
        "\n## Move of a tenant with {} rows, s1 to s2",
        args.move_rows
    );
    let big = hidra
        .provision(NewTenant::new(TenantId::new("big")?).on_server(ServerName::new("s1")?))
        .await?;
    let mut conn = hidra.acquire(&big).await?;
    let filled = Instant::now();
    sqlx::query(
        "INSERT INTO customers (name, email, phone, address) SELECT 'c' || g, 'c' || g || '@x.test', '+1 555 0100', g || ' Main Street' FROM generate_series(1, $1) g",
    )
    .bind(args.move_rows)
    .execute(&mut conn)
    .await?;
    drop(conn);
    eprintln!("filled in {:.1} s", filled.elapsed().as_secs_f64());
    let moved = hidra
        .move_to_server(&big.id, Some(&ServerName::new("s2")?))
        .await?;
    println!(
        "moved {} rows in {} tables: total {:.2} s, write freeze {:.2} s",
        moved.rows,
        moved.tables,
        moved.elapsed.as_secs_f64(),
        moved.write_freeze.as_secs_f64()
    );
    hidra.close().await;
    control.stop().await?;
    for s in servers {
        s.stop().await?;
    }
    Ok(())
}

/// `tenants` schemas with the reference schema, raw, on `cluster`.
async fn raw_provisioning(
    cluster: &TempCluster,
    tag: &str,
    schema: &str,
    args: &Args,
) -> anyhow::Result<f64> {
    let url = fresh_database(cluster, &format!("raw_{tag}")).await?;
    let schema = Arc::new(schema.to_owned());
    // Connections opened before the clock starts, as Hidra's pools are warm.
    let took = per_connection(&url, args.concurrency, args.tenants, move |conn, i| {
        let schema = schema.clone();
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "BEGIN; CREATE SCHEMA t{i}; SET LOCAL search_path TO t{i}; {schema}; COMMIT;"
            )))
            .execute(conn)
            .await?;
            Ok(())
        })
    })
    .await?;
    Ok(rate(args.tenants, took))
}

/// Point reads over `tenants` for `secs` seconds: reads per second and p99.
async fn reads(hidra: &Hidra, tenants: &[Tenant], secs: u64) -> anyhow::Result<(f64, Duration)> {
    let tenants = Arc::new(tenants.to_vec());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for seed in 0..32u64 {
        let (hidra, tenants) = (hidra.clone(), tenants.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = &tenants[rng.random_range(0..tenants.len())];
                let started = Instant::now();
                let mut conn = hidra.acquire(t).await?;
                let _: (String,) = sqlx::query_as("SELECT name FROM customers WHERE id = $1")
                    .bind(rng.random_range(1..=1000i64))
                    .fetch_one(&mut conn)
                    .await?;
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    Ok((all.len() as f64 / secs as f64, percentile(&all, 99.0)))
}
