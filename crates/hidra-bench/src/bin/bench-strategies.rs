//! The three isolation strategies side by side, each figure next to its
//! baseline measured in the same run on the same server.
//!
//! ```sh
//! cargo run --release -p hidra-bench --bin bench-strategies
//! cargo run --release -p hidra-bench --bin bench-strategies -- --databases 200 --duration 5
//! ```
//!
//! Everything runs as an ordinary role created for the run (`NOSUPERUSER
//! NOBYPASSRLS CREATEDB`), so that row-level security really applies, in a
//! throw-away database, with tenant databases under a prefix of their own.
//! At the end the tenant databases, the template, the database and the role
//! are dropped, also after an error or Ctrl-C (best effort).
//!
//! 1. **Point reads.** Schema and database tenants are provisioned with
//!    `bench/reference_schema.sql`; the row-level tenants share a
//!    `public.customers` table, the reference one made tenant-scoped with
//!    [`hidra::rls::tenant_table_sql`]. Every tenant gets 1,000 customers. For
//!    a fixed time after a warm-up, 32 tasks each pick a random tenant and one
//!    of its customer ids, `hidra.acquire(&tenant)` and run
//!    `SELECT name, email FROM customers WHERE id = $1`. The baseline, **raw**,
//!    is a plain sqlx pool of the same size as Hidra's shared pool (default
//!    options, so it pings every checkout) running the schema-qualified
//!    statement against the schema tenants' tables. Each variant's line also
//!    gives the CPU it cost per read, this process's (Hidra or sqlx and the
//!    load generator) and the whole machine's (PostgreSQL and the kernel
//!    too), read from `/proc` over the measured window: on a saturated
//!    machine the ratio of the machine's figures is the throughput ratio to
//!    expect, whatever the speed of the hour.
//! 2. **Provisioning database tenants.** Tenants per second creating tenant
//!    databases through `Hidra::provision` (the first provisioning, which
//!    creates and migrates the template, is timed apart and excluded), against
//!    the floor: `CREATE DATABASE … TEMPLATE <template>` issued raw, as the same
//!    role and with the same concurrency.
//! 3. **The budget run.** With `--databases` tenant databases and a budget of
//!    `--budget` server connections, 64 tasks read round-robin over all of them.
//!    A separate connection samples `pg_stat_activity` throughout and the
//!    maximum number of server connections to the tenant databases is printed
//!    next to the budget, with a `FAIL` line (and exit code 1) if Hidra ever
//!    exceeded it. A round robin over more databases than the budget leaves no
//!    connection to reuse, so the floor is plain sqlx opening a connection for
//!    every read, reading and closing it, at most `--budget` at a time (it does
//!    not wait for the server to end the closed backend, Hidra does, which is
//!    why the floor may be seen above the budget).
//!
//! The machine these figures come from is usually shared with other work:
//! treat them as noisy and compare ratios within one run, not across runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hidra::rls::tenant_table_sql;
use hidra::testing::{PgServer, TestDatabase};
use hidra::{DatabasePoolConfig, Hidra, Ident, Migrations, NewTenant, Strategy, Tenant, TenantId};
use hidra_bench::{CpuTicks, fan_out, percentile, rate, read_reference, statements};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, SqlSafeStr, SqlStr};

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark Hidra's three isolation strategies against raw sqlx and the database floor"
)]
struct Args {
    /// Schema-per-tenant tenants of the point-read run.
    #[arg(long, default_value_t = 100)]
    schema_tenants: usize,
    /// Row-level tenants of the point-read run.
    #[arg(long, default_value_t = 100)]
    row_tenants: usize,
    /// Database-per-tenant tenants of the point-read run.
    #[arg(long, default_value_t = 50)]
    database_tenants: usize,
    /// Customers per tenant.
    #[arg(long, default_value_t = 1000)]
    customers: i32,
    /// Concurrent tasks of the point-read run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds of every load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up seconds before every measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Rounds of the point-read run; the variants alternate within each round
    /// and the figures are medians over the rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Connections of Hidra's shared pool and of the raw pool alike.
    #[arg(long, default_value_t = 16)]
    pool: u32,
    /// Budget of server connections to tenant databases.
    #[arg(long, default_value_t = 40)]
    budget: u32,
    /// Database tenants provisioned for the provisioning rate.
    #[arg(long, default_value_t = 50)]
    provision: usize,
    /// Concurrent provisionings, for Hidra and the floor alike.
    #[arg(long, default_value_t = 4)]
    provision_concurrency: usize,
    /// Tenant databases of the budget run (tenants of the runs before count).
    #[arg(long, default_value_t = 500)]
    databases: usize,
    /// Concurrent tasks of the budget run.
    #[arg(long, default_value_t = 64)]
    budget_concurrency: usize,
    /// Reference schema (default: bench/reference_schema.sql).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Skip phases: any of reads, provision, budget.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

impl Args {
    fn skips(&self, phase: &str) -> bool {
        self.skip.iter().any(|s| s == phase)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }
}

/// The point read every strategy runs, unqualified.
const POINT_READ: &str = "SELECT name, email FROM customers WHERE id = $1";

/// What one run owns and drops at the end.
struct Run {
    /// The server's administrative URL (a superuser), for setup, sampling and cleanup.
    admin_url: String,
    /// The throw-away database.
    db: TestDatabase,
    /// The ordinary role everything runs as.
    role: String,
    /// The prefix of every tenant database (and the template, and the floor's).
    prefix: String,
}

impl Run {
    fn options(&self) -> PgConnectOptions {
        self.db.connect_options().username(&self.role)
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema_sql = read_reference(args.schema.clone(), "reference_schema.sql")?;
    let server = PgServer::get().await?;
    let db = TestDatabase::create().await?;
    let tag = db.name()[db.name().len() - 8..].to_owned();
    let run = Run {
        admin_url: server.url().to_owned(),
        role: format!("hidra_bench_{tag}"),
        prefix: format!("hb{tag}_"),
        db,
    };
    let hidra = setup(&run, &args, &schema_sql).await;
    let outcome = match &hidra {
        Ok(hidra) => {
            tokio::select! {
                r = bench(&run, &args, hidra) => r,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Err(e) => Err(anyhow::anyhow!("setting up: {e:#}")),
    };
    if let Ok(hidra) = &hidra {
        // Tasks of an interrupted load may still hold connections for a while.
        let _ = tokio::time::timeout(Duration::from_secs(15), hidra.close()).await;
    }
    if let Err(e) = cleanup(run).await {
        eprintln!("warning: cleanup incomplete: {e:#}");
    }
    outcome
}

/// The role, the Hidra handle, the registry and the row-level table.
async fn setup(run: &Run, args: &Args, schema_sql: &str) -> anyhow::Result<Hidra> {
    let mut su = PgConnection::connect(run.db.url()).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS;
         GRANT CREATE ON DATABASE \"{db}\" TO {role};
         GRANT ALL ON SCHEMA public TO {role};",
        role = run.role,
        db = run.db.name()
    )))
    .execute(&mut su)
    .await
    .context("creating the bench role")?;
    let (version, max_conns): (String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('max_connections')",
    )
    .fetch_one(&mut su)
    .await?;
    su.close().await?;
    println!(
        "bench-strategies: PostgreSQL {version} (max_connections {max_conns}), role {} \
         (NOSUPERUSER NOBYPASSRLS CREATEDB), database prefix {}",
        run.role, run.prefix
    );
    println!(
        "figures are noisy: the machine is shared with other work; compare the ratios within this run"
    );

    let hidra = Hidra::builder()
        .tenant_migrations(Migrations::new().push("reference schema", schema_sql))
        .max_connections(args.pool)
        .database_prefix(&run.prefix)
        .database_per_tenant(DatabasePoolConfig::default().with_budget(args.budget))
        .connect_with(run.options())
        .await?;
    hidra.install().await.context("creating the registry")?;
    let mut conn = hidra.acquire_shared().await?;
    // The reference `customers` table, shared by the row-level tenants.
    let customers: Vec<String> = statements(schema_sql)
        .into_iter()
        .filter(|s| s.starts_with("CREATE TABLE customers") || s.contains(" ON customers "))
        .map(|s| {
            s.replace("CREATE TABLE customers", "CREATE TABLE public.customers")
                .replace(" ON customers ", " ON public.customers ")
        })
        .collect();
    anyhow::ensure!(
        !customers.is_empty(),
        "the reference schema has no `customers` table"
    );
    sqlx::raw_sql(AssertSqlSafe(format!(
        "{};\n{}",
        customers.join(";\n"),
        tenant_table_sql("public.customers")?
    )))
    .execute(&mut *conn)
    .await
    .context("creating the row-level customers table")?;
    drop(conn);
    let audit = hidra.audit_row_level().await?;
    anyhow::ensure!(audit.is_clean(), "{audit}");
    Ok(hidra)
}

/// Drops the tenant databases, the template, the database and the role.
async fn cleanup(run: Run) -> anyhow::Result<()> {
    let started = Instant::now();
    let admin = PgPoolOptions::new()
        .max_connections(4)
        .connect(&run.admin_url)
        .await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)")
            .bind(&run.prefix)
            .fetch_all(&admin)
            .await?;
    let dropped = names.len();
    let names = Arc::new(names);
    let pool = admin.clone();
    fan_out(names.len(), 4, move |i| {
        let (pool, names) = (pool.clone(), names.clone());
        async move {
            let name = Ident::new(names[i].clone(), "database name")?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                name.quoted()
            )))
            .execute(&pool)
            .await?;
            anyhow::Ok(())
        }
    })
    .await?;
    run.db.drop_now().await?;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP ROLE IF EXISTS {}", run.role)))
        .execute(&admin)
        .await?;
    admin.close().await;
    eprintln!(
        "cleanup: dropped {dropped} tenant databases, the database and the role in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Tenants with their customers' ids.
#[derive(Default)]
struct Tenants {
    tenants: Vec<Tenant>,
    ids: Vec<Vec<i64>>,
}

impl Tenants {
    fn len(&self) -> usize {
        self.tenants.len()
    }

    fn database_names(&self) -> Vec<String> {
        self.tenants
            .iter()
            .filter_map(|t| t.placement.database.clone())
            .collect()
    }
}

/// The database tenants so far, and how long the first (template) provisioning took.
#[derive(Default)]
struct DatabaseTenants {
    tenants: Vec<Tenant>,
    template: Option<Duration>,
    /// Customers' ids of the first tenants (the ones filled so far).
    ids: Vec<Vec<i64>>,
}

impl DatabaseTenants {
    /// Provisions until there are `n` database tenants; returns how long the
    /// provisionings after the first took.
    async fn grow(
        &mut self,
        hidra: &Hidra,
        n: usize,
        concurrency: usize,
    ) -> anyhow::Result<Duration> {
        if self.tenants.is_empty() && n > 0 {
            let t0 = Instant::now();
            self.tenants
                .push(provision(hidra, "d0".into(), Strategy::Database).await?);
            self.template = Some(t0.elapsed());
        }
        let from = self.tenants.len();
        if n <= from {
            return Ok(Duration::ZERO);
        }
        let (more, elapsed) =
            provision_many(hidra, "d", from..n, Strategy::Database, concurrency).await?;
        self.tenants.extend(more);
        Ok(elapsed)
    }

    /// Fills the first `n` tenants with customers (those not filled yet).
    async fn fill(&mut self, hidra: &Hidra, n: usize, customers: i32) -> anyhow::Result<()> {
        let from = self.ids.len();
        if n > from {
            let ids = fill_many(hidra, &self.tenants[from..n], customers).await?;
            self.ids.extend(ids);
        }
        Ok(())
    }

    fn first(&self, n: usize) -> Tenants {
        Tenants {
            tenants: self.tenants[..n].to_vec(),
            ids: self.ids[..n].to_vec(),
        }
    }
}

async fn bench(run: &Run, args: &Args, hidra: &Hidra) -> anyhow::Result<()> {
    let mut dbs = DatabaseTenants::default();
    if !args.skips("reads") {
        reads(run, args, hidra, &mut dbs).await?;
    }
    if !args.skips("provision") {
        provisioning(run, args, hidra, &mut dbs).await?;
    }
    if !args.skips("budget") {
        budget_run(run, args, hidra, &mut dbs).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. Point reads

async fn reads(
    run: &Run,
    args: &Args,
    hidra: &Hidra,
    dbs: &mut DatabaseTenants,
) -> anyhow::Result<()> {
    let c = args.provision_concurrency;
    let t0 = Instant::now();
    let (schema, _) =
        provision_many(hidra, "s", 0..args.schema_tenants, Strategy::Schema, c).await?;
    let schema_ids = fill_many(hidra, &schema, args.customers).await?;
    let (rows, _) = provision_many(hidra, "r", 0..args.row_tenants, Strategy::RowLevel, c).await?;
    let row_ids = fill_many(hidra, &rows, args.customers).await?;
    dbs.grow(hidra, args.database_tenants, c).await?;
    dbs.fill(hidra, args.database_tenants, args.customers)
        .await?;
    eprintln!(
        "reads: {} schema, {} row-level and {} database tenants with {} customers each, set up in {:.1?}",
        schema.len(),
        rows.len(),
        args.database_tenants,
        args.customers,
        t0.elapsed()
    );
    anyhow::ensure!(
        !schema.is_empty() && !rows.is_empty() && args.database_tenants > 0,
        "the point-read run needs tenants of every strategy"
    );

    let raw_pool = PgPoolOptions::new()
        .max_connections(args.pool)
        .connect_with(run.options())
        .await?;
    let raw_sql = schema
        .iter()
        .map(|t| {
            let schema = Ident::new(t.placement.schema.clone(), "schema name")?;
            Ok(AssertSqlSafe(format!(
                "SELECT name, email FROM {}.customers WHERE id = $1",
                schema.quoted()
            ))
            .into_sql_str())
        })
        .collect::<anyhow::Result<Vec<SqlStr>>>()?;
    let schema = Tenants {
        tenants: schema,
        ids: schema_ids,
    };
    let rows = Tenants {
        tenants: rows,
        ids: row_ids,
    };
    let database = dbs.first(args.database_tenants);
    let db_names = database.database_names();
    let variants: Vec<(&str, Arc<Workload>)> = vec![
        (
            "raw",
            Workload::new(
                Reader::Raw {
                    pool: raw_pool.clone(),
                    sql: raw_sql,
                },
                &schema,
                Pick::Random,
            ),
        ),
        (
            "schema",
            Workload::new(Reader::Hidra(hidra.clone()), &schema, Pick::Random),
        ),
        (
            "row level",
            Workload::new(Reader::Hidra(hidra.clone()), &rows, Pick::Random),
        ),
        (
            "database",
            Workload::new(Reader::Hidra(hidra.clone()), &database, Pick::Random),
        ),
    ];
    for (name, w) in &variants {
        w.check()
            .await
            .with_context(|| format!("checking the {name} reads"))?;
    }
    check_row_isolation(hidra, &rows).await?;

    println!();
    println!(
        "1. point reads: {} tasks, {} s warm-up + {} s, {} round(s); shared pool {} = raw pool {}, database budget {}",
        args.concurrency,
        args.warmup,
        args.duration,
        args.rounds,
        args.pool,
        args.pool,
        args.budget
    );
    let mut rounds: Vec<Vec<Measured>> = (0..variants.len()).map(|_| Vec::new()).collect();
    let (mut max_db_conns, mut opened) = (0, 0);
    for round in 0..args.rounds.max(1) {
        for k in 0..variants.len() {
            // Rotate the order so that no variant always runs first.
            let v = (k + round) % variants.len();
            let (name, w) = &variants[v];
            let sampler = (*name == "database")
                .then(|| Sampler::start(&run.admin_url, db_names.clone(), hidra.clone()));
            let m = load(w.clone(), args.concurrency, args.warmup(), args.duration()).await?;
            if let Some(s) = sampler {
                let seen = s.stop().await?;
                max_db_conns = max_db_conns.max(seen.server_max);
                opened += seen.opened;
            }
            m.report_errors(name);
            rounds[v].push(m);
        }
    }
    raw_pool.close().await;

    println!(
        "   {:<40} {:>10} {:>9} {:>9} {:>9} {:>13} {:>13}",
        "", "ops/s", "p50", "p99", "x raw", "cpu us/op", "machine us/op"
    );
    let raw_ops: Vec<f64> = rounds[0].iter().map(Measured::ops).collect();
    for (v, (name, _)) in variants.iter().enumerate() {
        let label = match *name {
            "raw" => format!("raw sqlx, schema-qualified ({} schemas)", schema.len()),
            "schema" => format!("hidra schema ({} tenants)", schema.len()),
            "row level" => format!("hidra row level ({} tenants)", rows.len()),
            _ => format!("hidra database ({} tenants)", database.len()),
        };
        let mut ops: Vec<f64> = rounds[v].iter().map(Measured::ops).collect();
        let mut ratios: Vec<f64> = ops.iter().zip(&raw_ops).map(|(o, r)| o / r).collect();
        // In round order, before `median` sorts them.
        let per_round = ratios.clone();
        let mut p50: Vec<f64> = rounds[v].iter().map(|m| ms(m.p(50.0))).collect();
        let mut p99: Vec<f64> = rounds[v].iter().map(|m| ms(m.p(99.0))).collect();
        let mut process: Vec<f64> = rounds[v].iter().map(|m| m.cpu_per_op().0).collect();
        let mut machine: Vec<f64> = rounds[v].iter().map(|m| m.cpu_per_op().1).collect();
        println!(
            "   {label:<40} {:>10.0} {:>7.2}ms {:>7.2}ms {:>8.2}x {:>13.1} {:>13.1}",
            median(&mut ops),
            median(&mut p50),
            median(&mut p99),
            median(&mut ratios),
            median(&mut process),
            median(&mut machine)
        );
        if per_round.len() > 1 {
            let each: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
            println!("   {:<40} rounds x raw: {}", "", each.join(" "));
        }
    }
    let load_secs = ((args.warmup + args.duration) * args.rounds.max(1) as u64) as f64;
    println!(
        "   (raw: default PgPoolOptions, which ping every checkout; hidra replaces the ping with its \
         binding statement. database: {} databases under a budget of {} ({} per database): at most \
         {} server connections to them seen, {} connections opened, {:.0}/s)",
        database.len(),
        args.budget,
        DatabasePoolConfig::default().per_database(),
        max_db_conns,
        opened,
        opened as f64 / load_secs
    );
    Ok(())
}

/// A row of one row-level tenant is invisible to another.
async fn check_row_isolation(hidra: &Hidra, rows: &Tenants) -> anyhow::Result<()> {
    if rows.len() < 2 {
        return Ok(());
    }
    let mut conn = hidra.acquire(&rows.tenants[0]).await?;
    let other: Option<(String, Option<String>)> = sqlx::query_as(POINT_READ)
        .bind(rows.ids[1][0])
        .fetch_optional(&mut conn)
        .await?;
    anyhow::ensure!(
        other.is_none(),
        "row level: tenant {} sees a row of tenant {}",
        rows.tenants[0].id,
        rows.tenants[1].id
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Provisioning database tenants

async fn provisioning(
    run: &Run,
    args: &Args,
    hidra: &Hidra,
    dbs: &mut DatabaseTenants,
) -> anyhow::Result<()> {
    let c = args.provision_concurrency;
    // Creates the template with the first tenant, if the reads did not.
    dbs.grow(hidra, 1, c).await?;
    let before = dbs.tenants.len();
    let n = args.provision;
    let elapsed = dbs.grow(hidra, before + n, c).await?;
    let hidra_rate = rate(n, elapsed);

    // The floor: the same copies, raw, as the same role, with the same concurrency.
    let template = format!("{}_tpl", run.prefix);
    let floor_pool = PgPoolOptions::new()
        .max_connections(c as u32)
        .min_connections(c as u32)
        .connect_with(run.options())
        .await?;
    let template = Ident::new(template, "template name")?;
    let prefix = run.prefix.clone();
    let pool = floor_pool.clone();
    let (_, floor_elapsed) = fan_out(n, c, move |i| {
        let (pool, template) = (pool.clone(), template.clone());
        let name = format!("{prefix}_floor{i}");
        async move {
            let name = Ident::new(name, "database name")?;
            create_from_template(&pool, &name, &template).await
        }
    })
    .await?;
    let floor_rate = rate(n, floor_elapsed);
    // The floor's copies are not needed any more.
    let names: Vec<String> = (0..n).map(|i| format!("{}_floor{i}", run.prefix)).collect();
    let names = Arc::new(names);
    let pool = floor_pool.clone();
    fan_out(n, c, move |i| {
        let (pool, names) = (pool.clone(), names.clone());
        async move {
            let name = Ident::new(names[i].clone(), "database name")?;
            sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE {}", name.quoted())))
                .execute(&pool)
                .await?;
            anyhow::Ok(())
        }
    })
    .await?;
    floor_pool.close().await;

    println!();
    println!("2. provisioning database tenants: concurrency {c}");
    if let Some(t) = dbs.template {
        println!(
            "   first provisioning (creates and migrates the template): {:.1?}, excluded",
            t
        );
    }
    println!(
        "   floor  CREATE DATABASE … TEMPLATE, raw  {n:>5} databases {:>9.2?} {floor_rate:>8.1} /s",
        floor_elapsed
    );
    println!(
        "   hidra  provision (database)             {n:>5} tenants   {:>9.2?} {hidra_rate:>8.1} /s  {:.2} x floor",
        elapsed,
        hidra_rate / floor_rate
    );
    Ok(())
}

/// `CREATE DATABASE … TEMPLATE …`, retried while the template is briefly busy
/// (SQLSTATE 55006), as Hidra does.
async fn create_from_template(pool: &PgPool, name: &Ident, template: &Ident) -> anyhow::Result<()> {
    let sql = format!(
        "CREATE DATABASE {} TEMPLATE {}",
        name.quoted(),
        template.quoted()
    );
    let mut attempt = 0;
    loop {
        match sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(pool)
            .await
        {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(e))
                if attempt < 20 && e.code().as_deref() == Some("55006") =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------
// 3. The budget run

async fn budget_run(
    run: &Run,
    args: &Args,
    hidra: &Hidra,
    dbs: &mut DatabaseTenants,
) -> anyhow::Result<()> {
    let n = args.databases;
    anyhow::ensure!(n > 0, "--databases must be at least 1");
    let t0 = Instant::now();
    let have = dbs.tenants.len();
    dbs.grow(hidra, n, args.provision_concurrency).await?;
    dbs.fill(hidra, n, args.customers).await?;
    eprintln!(
        "budget: {} more tenant databases provisioned and all {n} filled in {:.1?}",
        n.saturating_sub(have),
        t0.elapsed()
    );
    let all = dbs.first(n);
    let names = all.database_names();
    let budget = args.budget as usize;

    // The floor: no pool can help a round robin over more databases than the
    // budget, so every request opens a connection to its database, reads and
    // closes it, at most `budget` at a time.
    let raw = Workload::new(
        Reader::Connect {
            options: names.iter().map(|db| run.options().database(db)).collect(),
            permits: tokio::sync::Semaphore::new(budget),
        },
        &all,
        Pick::RoundRobin(AtomicUsize::new(0)),
    );
    raw.check().await?;
    let sampler = Sampler::start(&run.admin_url, names.clone(), hidra.clone());
    let floor = load(raw, args.budget_concurrency, args.warmup(), args.duration()).await?;
    let floor_seen = sampler.stop().await?;
    floor.report_errors("budget run, raw");

    let w = Workload::new(
        Reader::Hidra(hidra.clone()),
        &all,
        Pick::RoundRobin(AtomicUsize::new(0)),
    );
    w.check().await?;
    let sampler = Sampler::start(&run.admin_url, names, hidra.clone());
    let m = load(w, args.budget_concurrency, args.warmup(), args.duration()).await?;
    let seen = sampler.stop().await?;
    m.report_errors("budget run, hidra");

    println!();
    println!(
        "3. budget run: {n} tenant databases, budget {}, {} tasks round-robin, {} s warm-up + {} s",
        args.budget, args.budget_concurrency, args.warmup, args.duration
    );
    println!(
        "   {:<44} {:>10} {:>9} {:>9} {:>8} {:>16}",
        "", "requests/s", "p50", "p99", "x floor", "max server conns"
    );
    println!(
        "   {:<44} {:>10.0} {:>7.2}ms {:>7.2}ms {:>7.2}x {:>11} / {}",
        "floor: raw connect, read, close (<= budget)",
        floor.ops(),
        ms(floor.p(50.0)),
        ms(floor.p(99.0)),
        1.0,
        floor_seen.server_max,
        args.budget
    );
    println!(
        "   {:<44} {:>10.0} {:>7.2}ms {:>7.2}ms {:>7.2}x {:>11} / {}",
        "hidra database, TenantDatabases",
        m.ops(),
        ms(m.p(50.0)),
        ms(m.p(99.0)),
        m.ops() / floor.ops(),
        seen.server_max,
        args.budget
    );
    println!(
        "   (max server conns: connections to the {n} tenant databases in pg_stat_activity, sampled by a \
         separate connection: {} samples during hidra's load, {} during the floor's; hidra's own count \
         peaked at {}. Connections opened, warm-up included: floor {}, hidra {}. Errors: floor {}, \
         hidra {})",
        seen.samples,
        floor_seen.samples,
        seen.client_max,
        floor_seen.opened,
        seen.opened,
        floor.errors,
        m.errors
    );
    if seen.server_max > i64::from(args.budget) {
        println!(
            "   FAIL: hidra had {} server connections to tenant databases open at once, over the budget of {}",
            seen.server_max, args.budget
        );
        anyhow::bail!("the connection budget was exceeded");
    }
    println!(
        "   ok: hidra stayed within the budget ({} <= {})",
        seen.server_max, args.budget
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Provisioning and data

async fn provision(hidra: &Hidra, id: String, strategy: Strategy) -> anyhow::Result<Tenant> {
    let id = TenantId::new(id)?;
    Ok(hidra
        .provision(NewTenant::new(id).strategy(strategy))
        .await?)
}

/// Provisions the tenants `<prefix><i>` for `i` in `range`, `concurrency` at a time.
async fn provision_many(
    hidra: &Hidra,
    prefix: &str,
    range: std::ops::Range<usize>,
    strategy: Strategy,
    concurrency: usize,
) -> anyhow::Result<(Vec<Tenant>, Duration)> {
    let (hidra, prefix, start) = (hidra.clone(), prefix.to_owned(), range.start);
    fan_out(range.len(), concurrency, move |i| {
        let hidra = hidra.clone();
        let id = format!("{prefix}{}", start + i);
        async move { provision(&hidra, id, strategy).await }
    })
    .await
}

/// Inserts `n` customers into each tenant, a few tenants at a time; returns
/// the ids of each tenant's customers.
async fn fill_many(hidra: &Hidra, tenants: &[Tenant], n: i32) -> anyhow::Result<Vec<Vec<i64>>> {
    let (hidra, tenants) = (hidra.clone(), Arc::new(tenants.to_vec()));
    let (ids, _) = fan_out(tenants.len(), 8, move |i| {
        let (hidra, tenants) = (hidra.clone(), tenants.clone());
        async move {
            let tenant = &tenants[i];
            let mut conn = hidra.acquire(tenant).await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "INSERT INTO customers (name, email, phone) \
                 SELECT $1 || ' customer ' || g, 'customer' || g || '@' || $1 || '.example', '+1 555 ' || g \
                 FROM generate_series(1, $2) AS g RETURNING id",
            )
            .bind(tenant.id.as_str())
            .bind(n)
            .fetch_all(&mut conn)
            .await
            .with_context(|| format!("filling tenant {}", tenant.id))?;
            anyhow::ensure!(!ids.is_empty(), "tenant {} got no customers", tenant.id);
            Ok(ids)
        }
    })
    .await?;
    Ok(ids)
}

// ---------------------------------------------------------------------------
// Load

/// Who runs the point read.
enum Reader {
    /// Plain sqlx: one schema-qualified statement per tenant.
    Raw { pool: PgPool, sql: Vec<SqlStr> },
    /// Hidra: `acquire(&tenant)` and the unqualified statement.
    Hidra(Hidra),
    /// Plain sqlx without a pool: connect to the tenant's database, read,
    /// close, with at most as many connections as permits.
    Connect {
        options: Vec<PgConnectOptions>,
        permits: tokio::sync::Semaphore,
    },
}

/// How a task picks the next tenant.
enum Pick {
    Random,
    RoundRobin(AtomicUsize),
}

/// A point-read load over a set of tenants.
struct Workload {
    reader: Reader,
    tenants: Vec<Tenant>,
    ids: Vec<Vec<i64>>,
    pick: Pick,
}

impl Workload {
    fn new(reader: Reader, tenants: &Tenants, pick: Pick) -> Arc<Workload> {
        Arc::new(Workload {
            reader,
            tenants: tenants.tenants.clone(),
            ids: tenants.ids.clone(),
            pick,
        })
    }

    /// One point read of a tenant and customer chosen by `rng`.
    async fn read_one(&self, rng: &mut SmallRng) -> anyhow::Result<()> {
        let t = match &self.pick {
            Pick::Random => rng.random_range(0..self.tenants.len()),
            Pick::RoundRobin(next) => next.fetch_add(1, Ordering::Relaxed) % self.tenants.len(),
        };
        let ids = &self.ids[t];
        let id = ids[rng.random_range(0..ids.len())];
        self.read(t, id).await?;
        Ok(())
    }

    async fn read(&self, t: usize, id: i64) -> anyhow::Result<(String, Option<String>)> {
        Ok(match &self.reader {
            Reader::Raw { pool, sql } => {
                sqlx::query_as(sql[t].clone())
                    .bind(id)
                    .fetch_one(pool)
                    .await?
            }
            Reader::Hidra(hidra) => {
                let mut conn = hidra.acquire(&self.tenants[t]).await?;
                sqlx::query_as(POINT_READ)
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await?
            }
            Reader::Connect { options, permits } => {
                let _permit = permits.acquire().await?;
                let mut conn = PgConnection::connect_with(&options[t]).await?;
                let row = sqlx::query_as(POINT_READ)
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await?;
                conn.close().await?;
                row
            }
        })
    }

    /// The first and last tenants' reads return their own customers.
    async fn check(&self) -> anyhow::Result<()> {
        for t in [0, self.tenants.len() - 1] {
            let id = self.ids[t][0];
            let (name, _) = self.read(t, id).await?;
            let tenant = &self.tenants[t].id;
            anyhow::ensure!(
                name.starts_with(&format!("{tenant} customer ")),
                "tenant {tenant} read customer {id} as {name:?}"
            );
        }
        Ok(())
    }
}

/// What one load measured.
#[derive(Default)]
struct Measured {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    window: Duration,
    /// Latencies of the successful reads, sorted.
    latencies: Vec<Duration>,
    /// Where the CPU went while measuring: this process, the machine.
    cpu: CpuTicks,
}

impl Measured {
    fn ops(&self) -> f64 {
        rate(self.ok, self.window)
    }

    fn p(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    /// CPU µs per read: this process's (Hidra or sqlx, and the load
    /// generator) and the whole machine's (PostgreSQL and the kernel too).
    fn cpu_per_op(&self) -> (f64, f64) {
        self.cpu.micros_per(self.ok)
    }

    fn report_errors(&self, name: &str) {
        if self.errors > 0 {
            println!(
                "   {name}: {} errors, the first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
    }
}

/// Runs `w` on `tasks` tasks for `warmup + duration`, measuring the reads
/// started after the warm-up.
async fn load(
    w: Arc<Workload>,
    tasks: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let cpu = CpuTicks::over(start, end);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let w = w.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = SmallRng::from_os_rng();
            let mut m = Measured::default();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let result = w.read_one(&mut rng).await;
                if t0 < start {
                    continue;
                }
                match result {
                    Ok(()) => {
                        m.ok += 1;
                        m.latencies.push(t0.elapsed());
                    }
                    Err(e) => {
                        m.errors += 1;
                        m.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            m
        }));
    }
    let mut total = Measured {
        window: duration,
        ..Measured::default()
    };
    for h in handles {
        let m = h.await?;
        total.ok += m.ok;
        total.errors += m.errors;
        if total.first_error.is_none() {
            total.first_error = m.first_error;
        }
        total.latencies.extend(m.latencies);
    }
    total.latencies.sort_unstable();
    total.cpu = cpu.await?.unwrap_or_default();
    Ok(total)
}

/// Samples the server connections to a set of databases from
/// `pg_stat_activity` on a connection of its own, and Hidra's own count.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Seen>>,
}

/// What a [`Sampler`] saw.
struct Seen {
    /// Sessions opened to the databases meanwhile (`pg_stat_database`).
    opened: i64,
    server_max: i64,
    client_max: u32,
    samples: usize,
}

impl Sampler {
    fn start(admin_url: &str, databases: Vec<String>, hidra: Hidra) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let url = admin_url.to_owned();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await?;
            let sessions_before = sessions(&mut conn, &databases).await?;
            let mut server_max = 0;
            let mut client_max = 0;
            let mut samples = 0;
            while !flag.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname::text = ANY($1)",
                )
                .bind(&databases)
                .fetch_one(&mut conn)
                .await?;
                server_max = server_max.max(n);
                client_max = client_max.max(hidra.tenant_databases().stats().open);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Backends report their statistics at most once a second.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let opened = sessions(&mut conn, &databases).await? - sessions_before;
            let _ = conn.close().await;
            Ok(Seen {
                opened,
                server_max,
                client_max,
                samples,
            })
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> anyhow::Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// Sessions ever opened to `databases`, as far as the statistics know.
async fn sessions(conn: &mut PgConnection, databases: &[String]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(sessions), 0)::bigint FROM pg_stat_database WHERE datname::text = ANY($1)",
    )
    .bind(databases)
    .fetch_one(conn)
    .await?)
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
