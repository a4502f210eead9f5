//! What each way of binding a checked-out connection to a tenant costs, step
//! by step, against the raw baseline (sqlx's ping and a schema-qualified
//! query), measured in the same run with plain sqlx connections.
//!
//! Every variant runs `--tasks` concurrent workers, each with its own
//! connection, each operation picking a random tenant of `--tenants` schemas
//! and reading one row. The variants alternate within each round and the
//! figures are medians over `--rounds`.
//!
//! ```sh
//! cargo run --release -p hidra-bench --bin bench-checkout -- --rounds 3 --seconds 5
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::Rng;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

#[derive(Parser, Debug)]
struct Args {
    /// Tenant schemas.
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Concurrent workers, one connection each.
    #[arg(long, default_value_t = 16)]
    tasks: usize,
    /// Measured seconds per variant and round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds (variants alternate within each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Only these variants (comma-separated names).
    #[arg(long)]
    only: Option<String>,
    /// An existing database to use instead of a throw-away one.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// sqlx's ping (a bare Sync), then a schema-qualified prepared query.
    Raw,
    /// No binding at all, schema-qualified query: the floor.
    RawNoPing,
    /// Hidra before per-tenant statements: one simple query with the
    /// leftover-transaction check and both settings, then an unqualified
    /// query shared by all tenants.
    SimpleShared,
    /// The same binding, then a per-tenant (tagged) unqualified query.
    SimpleTagged,
    /// `SET search_path …; SET hidra.tenant_id …` as one simple query through
    /// `begin_with` (the transaction status of the reply is the
    /// leftover-transaction check), then a tagged query.
    SetTagged,
    /// Only `SET search_path …` through `begin_with`, then a tagged query:
    /// what a binding of one setting would cost.
    Set1Tagged,
    /// A prepared `set_config($1)`, `set_config($2)` with no
    /// leftover-transaction check, then a tagged query.
    PreparedTagged,
    /// `set-tagged` on a pool that does not ping a connection it takes back
    /// (Hidra's: the next checkout's binding proves the connection anyway).
    SetTaggedNoRelease,
}

impl Variant {
    const ALL: [Variant; 8] = [
        Variant::Raw,
        Variant::RawNoPing,
        Variant::SimpleShared,
        Variant::SimpleTagged,
        Variant::SetTagged,
        Variant::Set1Tagged,
        Variant::PreparedTagged,
        Variant::SetTaggedNoRelease,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw",
            Variant::RawNoPing => "raw-no-ping",
            Variant::SimpleShared => "simple-shared",
            Variant::SimpleTagged => "simple-tagged",
            Variant::SetTagged => "set-tagged",
            Variant::Set1Tagged => "set1-tagged",
            Variant::PreparedTagged => "prepared-tagged",
            Variant::SetTaggedNoRelease => "set-tagged-norelease",
        }
    }
}

struct Texts {
    qualified: Vec<String>,
    tagged: Vec<String>,
    simple_bind: Vec<String>,
    set_bind: Vec<String>,
    set1_bind: Vec<String>,
    path: Vec<String>,
}

fn texts(tenants: usize) -> Texts {
    let schema = |t: usize| format!("tenant_t{t}");
    let query = "SELECT id, name, email FROM customers WHERE id = $1";
    Texts {
        qualified: (0..tenants)
            .map(|t| format!("SELECT id, name, email FROM \"{}\".customers WHERE id = $1", schema(t)))
            .collect(),
        tagged: (0..tenants)
            .map(|t| format!("{query}\n/* hidra:{} */", schema(t)))
            .collect(),
        simple_bind: (0..tenants)
            .map(|t| {
                format!(
                    "SELECT now() = statement_timestamp(), set_config('search_path', '\"{}\", \"public\"', false), set_config('hidra.tenant_id', '', false)",
                    schema(t)
                )
            })
            .collect(),
        set_bind: (0..tenants)
            .map(|t| format!("SET search_path TO \"{}\", \"public\"; SET hidra.tenant_id TO ''", schema(t)))
            .collect(),
        set1_bind: (0..tenants)
            .map(|t| format!("SET search_path TO \"{}\", \"public\"", schema(t)))
            .collect(),
        path: (0..tenants).map(|t| format!("\"{}\", \"public\"", schema(t))).collect(),
    }
}

async fn one(
    conn: &mut PgConnection,
    v: Variant,
    texts: &Texts,
    t: usize,
    id: i64,
) -> anyhow::Result<()> {
    let row_sql: &str = match v {
        Variant::Raw => {
            conn.ping().await?;
            &texts.qualified[t]
        }
        Variant::RawNoPing => &texts.qualified[t],
        Variant::SimpleShared | Variant::SimpleTagged => {
            use sqlx::Row;
            let row = sqlx::raw_sql(AssertSqlSafe(texts.simple_bind[t].as_str()))
                .fetch_one(&mut *conn)
                .await?;
            let fresh: bool = row.try_get(0)?;
            anyhow::ensure!(fresh);
            if v == Variant::SimpleShared {
                "SELECT id, name, email FROM customers WHERE id = $1"
            } else {
                &texts.tagged[t]
            }
        }
        Variant::SetTagged | Variant::Set1Tagged | Variant::SetTaggedNoRelease => {
            let bind = if v != Variant::Set1Tagged {
                &texts.set_bind[t]
            } else {
                &texts.set1_bind[t]
            };
            match sqlx::Transaction::<sqlx::Postgres>::begin(
                &mut *conn,
                Some(sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(bind.as_str()))),
            )
            .await
            {
                Err(sqlx::Error::BeginFailed) => {}
                Ok(_) => anyhow::bail!("left inside a transaction"),
                Err(e) => return Err(e.into()),
            }
            &texts.tagged[t]
        }
        Variant::PreparedTagged => {
            sqlx::query("SELECT set_config('search_path', $1, false), set_config('hidra.tenant_id', $2, false)")
                .bind(&texts.path[t])
                .bind("")
                .execute(&mut *conn)
                .await?;
            &texts.tagged[t]
        }
    };
    let _row: (i64, String, String) = sqlx::query_as(AssertSqlSafe(row_sql))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    // sqlx's pool pings every connection it takes back; Hidra's does not.
    if v != Variant::SetTaggedNoRelease {
        conn.ping().await?;
    }
    Ok(())
}

async fn run(url: &str, v: Variant, args: &Args, texts: Arc<Texts>) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..args.tasks {
        let mut c = PgConnection::connect(url).await?;
        c.ping().await?;
        conns.push(c);
    }
    let warm = Duration::from_secs(1);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (stop, ops, texts, n) = (stop.clone(), ops.clone(), texts.clone(), args.tenants);
        tasks.push(tokio::spawn(async move {
            let mut counted = false;
            while !stop.load(Ordering::Relaxed) {
                let (t, id) = {
                    let mut rng = rand::rng();
                    (rng.random_range(0..n), rng.random_range(1..=100))
                };
                one(&mut conn, v, &texts, t, id).await?;
                if counted || t0.elapsed() > warm {
                    counted = true;
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(warm).await;
    let start_ops = ops.load(Ordering::Relaxed);
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let done = ops.load(Ordering::Relaxed) - start_ops;
    let elapsed = t1.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(done as f64 / elapsed.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db;
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => {
            db = hidra::testing::TestDatabase::create_with_prefix("bench_checkout").await?;
            db.url().to_owned()
        }
    };
    let mut setup = PgConnection::connect(&url).await?;
    for t in 0..args.tenants {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS tenant_t{t} CASCADE; CREATE SCHEMA tenant_t{t};
             CREATE TABLE tenant_t{t}.customers (id BIGINT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);
             INSERT INTO tenant_t{t}.customers SELECT g, 'name ' || g, 'c' || g || '@example.com' FROM generate_series(1, 100) g;"
        )))
        .execute(&mut setup)
        .await?;
    }
    setup.close().await?;
    let variants: Vec<Variant> = match &args.only {
        Some(only) => Variant::ALL
            .into_iter()
            .filter(|v| only.split(',').any(|o| o == v.name()))
            .collect(),
        None => Variant::ALL.to_vec(),
    };
    let texts = Arc::new(texts(args.tenants));
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds {
        for (i, v) in variants.iter().enumerate() {
            let r = run(&url, *v, &args, texts.clone()).await?;
            println!("round {round} {:<16} {r:>9.0} ops/s", v.name());
            results[i].push(r);
        }
    }
    let median = |xs: &[f64]| {
        let mut xs = xs.to_vec();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let raw = variants
        .iter()
        .position(|v| *v == Variant::Raw)
        .map(|i| median(&results[i]));
    println!(
        "\n{} tenants, {} tasks, medians of {} rounds:",
        args.tenants, args.tasks, args.rounds
    );
    for (i, v) in variants.iter().enumerate() {
        let m = median(&results[i]);
        match raw {
            Some(raw) => println!("{:<16} {m:>9.0} ops/s  {:.3} × raw", v.name(), m / raw),
            None => println!("{:<16} {m:>9.0} ops/s", v.name()),
        }
    }
    Ok(())
}
