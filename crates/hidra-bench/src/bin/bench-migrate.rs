//! Provisioning and migration fan-out against the database's own floor,
//! measured in the same run on the same server.
//!
//! ```sh
//! cargo run --release -p hidra-bench --bin bench-migrate            # 500 / 1,000 tenants
//! cargo run --release -p hidra-bench --bin bench-migrate -- --large # 10,000 for the fan-out
//! ```
//!
//! Every phase runs in its own fresh database so that catalog size is the
//! same for a figure and its floor. The tenant schema is
//! `bench/reference_schema.sql`, the migration
//! `bench/reference_migration.sql`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hidra::testing::TestDatabase;
use hidra::{Hidra, Migrations, NewTenant, TenantId};
use hidra_bench::{fan_out, per_connection, percentile, rate, read_reference, statements};
use sqlx::{AssertSqlSafe, Connection};

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark Hidra's provisioning and migration fan-out against the database floor"
)]
struct Args {
    /// Tenants to provision.
    #[arg(long, default_value_t = 500)]
    provision: usize,
    /// Existing tenants to migrate.
    #[arg(long, default_value_t = 1000)]
    migrate: usize,
    /// Migrate 10,000 tenants instead.
    #[arg(long)]
    large: bool,
    /// Connections used by the floor and by Hidra alike.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Sign-ups timed for the latency figures.
    #[arg(long, default_value_t = 60)]
    signups: usize,
    /// Reference schema (default: bench/reference_schema.sql).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Reference migration (default: bench/reference_migration.sql).
    #[arg(long)]
    migration: Option<PathBuf>,
    /// Skip phases: any of floor-provision, provision, replay, latency, migrate.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema_sql = read_reference(args.schema.clone(), "reference_schema.sql")?;
    let migration_sql = read_reference(args.migration.clone(), "reference_migration.sql")?;
    let n_migrate = if args.large { 10_000 } else { args.migrate };
    let conns = args.connections;
    let skip = |phase: &str| args.skip.iter().any(|s| s == phase);
    println!(
        "bench-migrate: {} provisions, {} tenants migrated, {} connections",
        args.provision, n_migrate, conns
    );

    let migrations = Migrations::new().push("reference schema", schema_sql.clone());
    let migrations_v2 = migrations
        .clone()
        .push("reference migration", migration_sql.clone());

    // Provisioning floor: the schema as one batch per tenant, no library.
    let mut floor_provision = None;
    if !skip("floor-provision") {
        let db = TestDatabase::create().await?;
        let schema_sql = schema_sql.clone();
        let elapsed = parallel(db.url(), conns, args.provision, move |i| {
            format!("CREATE SCHEMA floor_{i}; SET search_path TO floor_{i}; {schema_sql}")
        })
        .await?;
        let r = rate(args.provision, elapsed);
        println!(
            "floor      provision  {:>6} tenants {:>8.2?}  {r:>8.1} tenants/s",
            args.provision, elapsed
        );
        floor_provision = Some(r);
        db.drop_now().await?;
    }
    let ratio = |r: f64, floor: Option<f64>| {
        floor.map_or(String::new(), |f| format!("  {:.2} x floor", r / f))
    };

    if !skip("provision") {
        let db = TestDatabase::create().await?;
        let hidra = connect(&db, migrations.clone(), conns, 0).await?;
        let elapsed = provision_many(&hidra, "p", args.provision, conns).await?;
        let r = rate(args.provision, elapsed);
        println!(
            "hidra      provision  {:>6} tenants {:>8.2?}  {r:>8.1} tenants/s{}  (one batch per tenant)",
            args.provision,
            elapsed,
            ratio(r, floor_provision)
        );
        hidra.close().await;
        db.drop_now().await?;
    }

    if !skip("replay") {
        let db = TestDatabase::create().await?;
        let hidra = connect(&db, Migrations::new(), 1, 0).await?;
        hidra.close().await;
        let stmts = Arc::new(statements(&schema_sql));
        let elapsed = replay(db.url(), conns, args.provision, stmts).await?;
        let r = rate(args.provision, elapsed);
        println!(
            "replay     provision  {:>6} tenants {:>8.2?}  {r:>8.1} tenants/s{}  (statement by statement, as the peers do)",
            args.provision,
            elapsed,
            ratio(r, floor_provision)
        );
        db.drop_now().await?;
    }

    if !skip("latency") {
        for warm in [false, true] {
            let db = TestDatabase::create().await?;
            let spares = if warm { args.signups + 5 } else { 0 };
            let hidra = connect(&db, migrations.clone(), conns, spares).await?;
            if warm {
                hidra.top_up_spares().await?;
            }
            let mut lat = Vec::with_capacity(args.signups);
            for i in 0..args.signups {
                let id = TenantId::new(format!("signup{i}"))?;
                let t0 = Instant::now();
                hidra.provision(NewTenant::new(id)).await?;
                lat.push(t0.elapsed());
            }
            lat.sort();
            println!(
                "hidra      sign-up latency, warm pool {:<3}  p50 {:>8.2?}  p99 {:>8.2?}  ({} sign-ups)",
                if warm { "on" } else { "off" },
                percentile(&lat, 50.0),
                percentile(&lat, 99.0),
                args.signups
            );
            hidra.close().await;
            db.drop_now().await?;
        }
    }

    if !skip("migrate") {
        // Floor: the migration as one batch per schema, no library.
        let db = TestDatabase::create().await?;
        let (schema_sql, migration_sql) = (schema_sql.clone(), migration_sql.clone());
        parallel(db.url(), conns, n_migrate, move |i| {
            format!("CREATE SCHEMA floor_{i}; SET search_path TO floor_{i}; {schema_sql}")
        })
        .await?;
        let elapsed = parallel(db.url(), conns, n_migrate, move |i| {
            format!("SET search_path TO floor_{i}; {migration_sql}")
        })
        .await?;
        let floor = rate(n_migrate, elapsed);
        println!(
            "floor      migrate    {n_migrate:>6} tenants {elapsed:>8.2?}  {floor:>8.1} tenants/s"
        );
        db.drop_now().await?;

        let db = TestDatabase::create().await?;
        let v1 = connect(&db, migrations.clone(), conns, 0).await?;
        provision_many(&v1, "m", n_migrate, conns).await?;
        v1.close().await;
        let v2 = connect(&db, migrations_v2.clone(), conns + 1, 0).await?;
        let summary = v2.migrator().concurrency(conns).run().await?;
        anyhow::ensure!(summary.is_success(), "migration failed: {summary}");
        anyhow::ensure!(summary.migrated.len() == n_migrate, "{summary}");
        let r = rate(n_migrate, summary.elapsed);
        println!(
            "hidra      migrate    {n_migrate:>6} tenants {:>8.2?}  {r:>8.1} tenants/s  {:.2} x floor",
            summary.elapsed,
            r / floor
        );
        let noop = v2.migrator().concurrency(conns).run().await?;
        anyhow::ensure!(
            noop.migrated.is_empty() && noop.current == n_migrate,
            "{noop}"
        );
        println!(
            "hidra      no-op run  {n_migrate:>6} tenants {:>8.2?}",
            noop.elapsed
        );
        v2.close().await;
        db.drop_now().await?;
    }
    Ok(())
}

async fn connect(
    db: &TestDatabase,
    migrations: Migrations,
    conns: usize,
    warm: usize,
) -> anyhow::Result<Hidra> {
    let hidra = Hidra::builder()
        .tenant_migrations(migrations)
        .max_connections(conns as u32 + 1)
        .warm_pool(warm)
        .connect_with(db.connect_options())
        .await?;
    hidra.install().await.context("creating the registry")?;
    Ok(hidra)
}

/// Provisions `n` tenants through Hidra with `conns` concurrent callers.
async fn provision_many(
    hidra: &Hidra,
    prefix: &str,
    n: usize,
    conns: usize,
) -> anyhow::Result<Duration> {
    let (hidra, prefix) = (hidra.clone(), prefix.to_owned());
    let (_, elapsed) = fan_out(n, conns, move |i| {
        let (hidra, id) = (hidra.clone(), TenantId::new(format!("{prefix}{i}")));
        async move {
            hidra.provision(NewTenant::new(id?)).await?;
            Ok(())
        }
    })
    .await?;
    Ok(elapsed)
}

/// Runs `sql(i)` for `i` in `0..n` as one simple query each, over `conns`
/// plain connections.
async fn parallel(
    url: &str,
    conns: usize,
    n: usize,
    sql: impl Fn(usize) -> String + Send + Sync + 'static,
) -> anyhow::Result<Duration> {
    per_connection(url, conns, n, move |conn, i| {
        let sql = sql(i);
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
            Ok(())
        })
    })
    .await
}

/// Provisioning as the peers do it: registry row, schema, then each statement
/// of the schema in its own round trip, in one transaction.
async fn replay(
    url: &str,
    conns: usize,
    n: usize,
    stmts: Arc<Vec<String>>,
) -> anyhow::Result<Duration> {
    per_connection(url, conns, n, move |conn, i| {
        let stmts = stmts.clone();
        Box::pin(async move {
            let mut tx = conn.begin().await?;
            sqlx::query("INSERT INTO tenants (id, name, schema_name, status) VALUES ($1, $1, $2, 'provisioning')")
                .bind(format!("r{i}"))
                .bind(format!("tenant_r{i}"))
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA tenant_r{i}")))
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(AssertSqlSafe(format!("SET LOCAL search_path TO tenant_r{i}")))
                .execute(&mut *tx)
                .await?;
            for s in stmts.iter() {
                sqlx::raw_sql(AssertSqlSafe(s.clone())).execute(&mut *tx).await?;
            }
            sqlx::raw_sql("SET LOCAL search_path TO DEFAULT").execute(&mut *tx).await?;
            sqlx::query("UPDATE tenants SET status = 'active' WHERE id = $1")
                .bind(format!("r{i}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    })
    .await
}
