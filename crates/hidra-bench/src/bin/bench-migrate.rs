//! Provisioning and migration fan-out against the database's own floor,
//! measured in the same run on the same server, in alternating rounds.
//!
//! ```sh
//! cargo run --release -p hidra-bench --bin bench-migrate            # fan-out at 300 and 1,000 tenants
//! cargo run --release -p hidra-bench --bin bench-migrate -- --large # and at 10,000
//! ```
//!
//! - **Provisioning**, at concurrency 1 and 4: the floor sends the reference
//!   schema as one batch per tenant (`CREATE SCHEMA …; SET search_path …;
//!   <schema>`), Hidra provisions tenants (registry row, schema, history,
//!   version, all or nothing). Each variant runs in a fresh database; rounds
//!   alternate which goes first.
//! - **Migration fan-out**, at each size: one database with that many
//!   tenants provisioned by Hidra. The floor sends the reference migration
//!   raw to every schema (`SET search_path …; <migration>`), over the same
//!   number of connections; Hidra runs its migrator. Between variants the
//!   migration is undone (`bench/reference_migration_down.sql`) and the
//!   bookkeeping put back, untimed, so both run against the same schemas and
//!   the same catalog; rounds alternate the order.
//!
//! The tenant schema is `bench/reference_schema.sql`, the migration
//! `bench/reference_migration.sql`. Every figure is printed with its floor;
//! the summary gives the median ratio over the rounds.

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
    /// Tenants provisioned per variant and round.
    #[arg(long, default_value_t = 300)]
    provision: usize,
    /// Concurrencies of the provisioning figures.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    provision_concurrency: Vec<usize>,
    /// Tenant counts of the fan-out figures.
    #[arg(long, value_delimiter = ',', default_value = "300,1000")]
    sizes: Vec<usize>,
    /// Add 10,000 tenants to the fan-out sizes.
    #[arg(long)]
    large: bool,
    /// Connections of the fan-out, for the floor and Hidra alike.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Rounds per figure (the order of floor and Hidra alternates).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Sign-ups timed for the latency figures.
    #[arg(long, default_value_t = 60)]
    signups: usize,
    /// Reference schema (default: bench/reference_schema.sql).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Reference migration (default: bench/reference_migration.sql).
    #[arg(long)]
    migration: Option<PathBuf>,
    /// What undoes it (default: bench/reference_migration_down.sql).
    #[arg(long)]
    down: Option<PathBuf>,
    /// Skip phases: any of provision, replay, latency, migrate.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

/// One figure over rounds: the variant's rates and its floor's.
#[derive(Default)]
struct Figure {
    floor: Vec<f64>,
    hidra: Vec<f64>,
}

impl Figure {
    fn median_ratio(&self) -> f64 {
        let mut ratios: Vec<f64> = self
            .hidra
            .iter()
            .zip(&self.floor)
            .map(|(h, f)| h / f)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2]
    }

    fn line(&self, what: &str) -> String {
        let ratios: Vec<String> = self
            .hidra
            .iter()
            .zip(&self.floor)
            .map(|(h, f)| format!("{h:.1}/{f:.1}={:.2}", h / f))
            .collect();
        format!(
            "{what:<34} median {:.2} x floor   rounds (hidra/floor tenants/s): {}",
            self.median_ratio(),
            ratios.join("  ")
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema_sql = read_reference(args.schema.clone(), "reference_schema.sql")?;
    let migration_sql = read_reference(args.migration.clone(), "reference_migration.sql")?;
    let down_sql = read_reference(args.down.clone(), "reference_migration_down.sql")?;
    let mut sizes = args.sizes.clone();
    if args.large && !sizes.contains(&10_000) {
        sizes.push(10_000);
    }
    let skip = |phase: &str| args.skip.iter().any(|s| s == phase);
    println!(
        "bench-migrate: provisioning {} tenants at concurrency {:?}; fan-out at {:?} tenants over {} connections; {} rounds",
        args.provision, args.provision_concurrency, sizes, args.connections, args.rounds
    );

    let migrations = Migrations::new().push("reference schema", schema_sql.clone());
    let migrations_v2 = migrations
        .clone()
        .push("reference migration", migration_sql.clone());
    let mut summary = Vec::new();

    if !skip("provision") {
        for &conns in &args.provision_concurrency {
            let mut figure = Figure::default();
            for round in 0..args.rounds {
                for hidra_first in [round % 2 == 1, round % 2 == 0] {
                    let db = TestDatabase::create().await?;
                    if hidra_first {
                        let hidra = connect(&db, migrations.clone(), conns, 0).await?;
                        let elapsed = provision_many(&hidra, "p", args.provision, conns).await?;
                        figure.hidra.push(rate(args.provision, elapsed));
                        hidra.close().await;
                    } else {
                        let schema_sql = schema_sql.clone();
                        let elapsed = parallel(db.url(), conns, args.provision, move |i| {
                            format!("CREATE SCHEMA floor_{i}; SET search_path TO floor_{i}; {schema_sql}")
                        })
                        .await?;
                        figure.floor.push(rate(args.provision, elapsed));
                    }
                    db.drop_now().await?;
                }
            }
            let line = figure.line(&format!(
                "provision {} tenants, concurrency {conns}",
                args.provision
            ));
            println!("{line}");
            summary.push(line);
        }
    }

    if !skip("replay") {
        let db = TestDatabase::create().await?;
        let conns = args.connections;
        let hidra = connect(&db, Migrations::new(), 1, 0).await?;
        hidra.close().await;
        let stmts = Arc::new(statements(&schema_sql));
        let elapsed = replay(db.url(), conns, args.provision, stmts).await?;
        let r = rate(args.provision, elapsed);
        println!(
            "replay     provision  {:>6} tenants {:>8.2?}  {r:>8.1} tenants/s  (statement by statement, as the peers do)",
            args.provision, elapsed,
        );
        db.drop_now().await?;
    }

    if !skip("latency") {
        for warm in [false, true] {
            let db = TestDatabase::create().await?;
            let spares = if warm { args.signups + 5 } else { 0 };
            let hidra = connect(&db, migrations.clone(), args.connections, spares).await?;
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
        let conns = args.connections;
        for &n in &sizes {
            let db = TestDatabase::create().await?;
            let v1 = connect(&db, migrations.clone(), conns, 0).await?;
            let setup = Instant::now();
            provision_many(&v1, "m", n, conns).await?;
            v1.close().await;
            println!(
                "  ({n} tenants provisioned for the fan-out in {:.1?})",
                setup.elapsed()
            );
            let v1_digest: Vec<u8> = {
                let mut c = sqlx::PgConnection::connect(db.url()).await?;
                sqlx::query_scalar("SELECT digest FROM hidra.schema_versions LIMIT 1")
                    .fetch_one(&mut c)
                    .await?
            };
            let v1_hex: String = v1_digest.iter().map(|b| format!("{b:02x}")).collect();
            let v2 = connect(&db, migrations_v2.clone(), conns, 0).await?;
            let mut figure = Figure::default();
            let mut noop = Vec::new();
            for round in 0..args.rounds {
                for hidra_first in [round % 2 == 1, round % 2 == 0] {
                    if hidra_first {
                        let run = v2.migrator().concurrency(conns).run().await?;
                        anyhow::ensure!(run.is_success(), "migration failed: {run}");
                        anyhow::ensure!(run.migrated.len() == n, "{run}");
                        figure.hidra.push(rate(n, run.elapsed));
                        let again = v2.migrator().concurrency(conns).run().await?;
                        anyhow::ensure!(again.migrated.is_empty() && again.current == n, "{again}");
                        noop.push(again.elapsed);
                    } else {
                        let migration_sql = migration_sql.clone();
                        let elapsed = parallel(db.url(), conns, n, move |i| {
                            format!("SET search_path TO tenant_m{i}; {migration_sql}")
                        })
                        .await?;
                        figure.floor.push(rate(n, elapsed));
                    }
                    // Undo, untimed: the migration and Hidra's record of it.
                    let (down_sql, v1_hex) = (down_sql.clone(), v1_hex.clone());
                    parallel(db.url(), conns, n, move |i| {
                        format!(
                            "SET search_path TO tenant_m{i}; {down_sql}; \
                             DELETE FROM tenant_m{i}._hidra_migrations WHERE version = 2; \
                             UPDATE hidra.schema_versions SET version = 1, digest = '\\x{v1_hex}' \
                             WHERE schema_name = 'tenant_m{i}'"
                        )
                    })
                    .await?;
                }
            }
            noop.sort();
            let line = format!(
                "{}   no-op run median {:.2?}",
                figure.line(&format!("migrate {n} tenants, {conns} connections")),
                noop[noop.len() / 2]
            );
            println!("{line}");
            summary.push(line);
            v2.close().await;
            db.drop_now().await?;
        }
    }
    println!("\nsummary");
    for line in summary {
        println!("  {line}");
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
