//! Per-tenant statements: tenants at different migration versions served at
//! the same time through one pool, a fan-out migration under load, a tenant's
//! own `ALTER TABLE` under its cached statements, and the statement cache bound.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use hidra::{Hidra, Migrations, NewTenant, StaleStatement, Tenant};

const V1: &str =
    "CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL);";
const V2: &str = "ALTER TABLE customers ADD COLUMN loyalty INT NOT NULL DEFAULT 7;";

fn v1() -> Migrations {
    Migrations::new().push("customers", V1)
}

fn v2() -> Migrations {
    v1().push("loyalty", V2)
}

#[derive(sqlx::FromRow, Debug)]
struct CustomerV1 {
    id: i64,
    name: String,
    owner: String,
}

#[derive(sqlx::FromRow, Debug)]
struct CustomerV2 {
    id: i64,
    name: String,
    owner: String,
    loyalty: i32,
}

/// A handle with the v1 migrations and a pool of `pool` connections.
async fn hidra_v1(ctx: &Ctx, pool: u32) -> Hidra {
    Hidra::builder()
        .tenant_migrations(v1())
        .max_connections(pool)
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap()
}

/// Provisions `n` tenants named `{prefix}{i}` with three customers each,
/// whose `owner` names the tenant.
async fn tenants(h: &Hidra, prefix: &str, n: usize) -> Vec<Tenant> {
    let mut out = Vec::new();
    for i in 0..n {
        let t = h
            .provision(NewTenant::new(id(&format!("{prefix}{i}"))))
            .await
            .unwrap();
        let mut conn = h.acquire(&t).await.unwrap();
        sqlx::query("INSERT INTO customers (id, name, owner) SELECT g, 'c' || g, $1 FROM generate_series(1, 3) g")
            .bind(t.id.as_str())
            .execute(&mut conn)
            .await
            .unwrap();
        out.push(t);
    }
    out
}

/// Adds the v2 column to `tenant`'s schema by hand (as the runner would).
async fn upgrade(h: &Hidra, tenant: &Tenant) {
    let mut tx = h.begin(tenant).await.unwrap();
    sqlx::raw_sql(V2).execute(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
}

/// One of the mixed-version operations, checked against the tenant; returns
/// an error text instead of panicking so the caller can count.
async fn mixed_op(h: &Hidra, t: &Tenant, ahead: bool, i: usize) -> Result<(), String> {
    let owner = t.id.as_str();
    let e = |e: sqlx::Error| e.to_string();
    match i % 4 {
        0 => {
            let mut conn = h.acquire(t).await.map_err(|e| e.to_string())?;
            let row: sqlx::postgres::PgRow = sqlx::query("SELECT * FROM customers WHERE id = $1")
                .bind(1_i64)
                .fetch_one(&mut conn)
                .await
                .map_err(e)?;
            let cols = sqlx::Row::columns(&row).len();
            let got: String = sqlx::Row::try_get(&row, "owner").map_err(e)?;
            if got != owner || cols != if ahead { 4 } else { 3 } {
                return Err(format!("{owner}: got owner {got} with {cols} columns"));
            }
        }
        1 => {
            let mut conn = h.acquire(t).await.map_err(|e| e.to_string())?;
            let row: sqlx::postgres::PgRow =
                sqlx::query("UPDATE customers SET name = name WHERE id = $1 RETURNING *")
                    .bind(2_i64)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(e)?;
            let got: String = sqlx::Row::try_get(&row, "owner").map_err(e)?;
            if got != owner || sqlx::Row::columns(&row).len() != if ahead { 4 } else { 3 } {
                return Err(format!("{owner}: RETURNING * from {got}"));
            }
        }
        2 => {
            let mut tx = h.begin(t).await.map_err(|e| e.to_string())?;
            let got = if ahead {
                let c: CustomerV2 = sqlx::query_as("SELECT * FROM customers WHERE id = $1")
                    .bind(3_i64)
                    .fetch_one(&mut tx)
                    .await
                    .map_err(e)?;
                assert_eq!(c.loyalty, 7);
                (c.id, c.name, c.owner)
            } else {
                let c: CustomerV1 = sqlx::query_as("SELECT * FROM customers WHERE id = $1")
                    .bind(3_i64)
                    .fetch_one(&mut tx)
                    .await
                    .map_err(e)?;
                (c.id, c.name, c.owner)
            };
            tx.commit().await.map_err(|e| e.to_string())?;
            if got.2 != owner || got.0 != 3 || got.1 != "c3" {
                return Err(format!("{owner}: query_as got {got:?}"));
            }
        }
        _ => {
            let mut conn = h.acquire(t).await.map_err(|e| e.to_string())?;
            let owners: Vec<String> = sqlx::query_scalar("SELECT owner FROM customers ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .map_err(e)?;
            if owners.iter().any(|o| o != owner) || owners.len() != 3 {
                return Err(format!("{owner}: saw {owners:?}"));
            }
        }
    }
    Ok(())
}

/// 8 tenants, half a migration ahead, 2,000 interleaved statements over a
/// pool of `pool`: no error, every row from its own tenant.
async fn mixed_versions(pool: u32) {
    let ctx = setup(2).await;
    let h = hidra_v1(&ctx, pool).await;
    let ts = tenants(&h, "mix", 8).await;
    for t in ts.iter().step_by(2) {
        upgrade(&h, t).await;
    }
    let ts = Arc::new(ts);
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (h, ts, errors) = (h.clone(), ts.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let k = (w * 7 + i * 3) % ts.len();
                if let Err(e) = mixed_op(&h, &ts[k], k % 2 == 0, i + w).await {
                    errors.lock().unwrap().push(e);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} of 2000 failed, first: {:?}",
        errors.len(),
        errors.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_at_different_versions_share_a_pool_of_one() {
    mixed_versions(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_at_different_versions_share_a_pool_of_four() {
    mixed_versions(4).await;
}

/// The defect this design removes, reproduced through the escape hatch
/// (statements shared by text): proves the mixed-version test can fail.
#[tokio::test]
async fn shared_statements_fail_between_versions() {
    let ctx = setup(2).await;
    let h = hidra_v1(&ctx, 1).await;
    let ts = tenants(&h, "raw", 2).await;
    upgrade(&h, &ts[1]).await;
    let mut failed = 0;
    for i in 0..20 {
        let mut conn = h.acquire(&ts[i % 2]).await.unwrap();
        let r = sqlx::query("SELECT * FROM customers WHERE id = $1")
            .bind(1_i64)
            .fetch_one(conn.raw_connection())
            .await;
        if let Err(e) = r {
            assert!(
                e.to_string()
                    .contains("cached plan must not change result type"),
                "{e}"
            );
            failed += 1;
        }
    }
    assert!(failed >= 9, "only {failed} of 20 shared statements failed");
}

/// A fan-out migration over 200 tenants while 8 tasks keep querying
/// `SELECT *` through the old handle: no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_keep_working_while_the_runner_migrates() {
    let ctx = setup(2).await;
    let old = hidra_v1(&ctx, 6).await;
    let ts = Arc::new(tenants(&old, "fan", 200).await);
    let new = Hidra::builder()
        .tenant_migrations(v2())
        .max_connections(5)
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ops, errors) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let (h, ts, done, ops, errors) = (
            old.clone(),
            ts.clone(),
            done.clone(),
            ops.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            // Keep going until the run is over, and at least 100 statements.
            while !done.load(Ordering::Acquire) || i < w + 100 {
                let t = &ts[(i * 13) % ts.len()];
                let r: Result<sqlx::postgres::PgRow, _> = async {
                    let mut conn = h.acquire(t).await.map_err(|e| e.to_string())?;
                    sqlx::query("SELECT * FROM customers WHERE id = $1")
                        .bind(1_i64)
                        .fetch_one(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                }
                .await;
                match r {
                    Ok(row) => {
                        let owner: String = sqlx::Row::get(&row, "owner");
                        if owner != t.id.as_str() {
                            errors.lock().unwrap().push(format!("{} saw {owner}", t.id));
                        }
                    }
                    Err(e) => errors.lock().unwrap().push(e),
                }
                ops.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let summary = new.migrator().concurrency(4).run().await.unwrap();
    done.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(summary.failed.len(), 0, "{:?}", summary.failed);
    assert_eq!(summary.migrated.len(), 200);
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} of {} statements failed, first: {:?}",
        errors.len(),
        ops.load(Ordering::Relaxed),
        errors.first()
    );
}

/// A tenant's own `ALTER TABLE` while its statements are cached: retried
/// outside a transaction, a typed error inside one, and fine afterwards.
#[tokio::test]
async fn a_tenants_own_alter_table_is_retried_or_typed() {
    let ctx = setup(2).await;
    let h = hidra_v1(&ctx, 1).await;
    let ts = tenants(&h, "alter", 1).await;
    let t = &ts[0];
    let select = || sqlx::query("SELECT * FROM customers WHERE id = $1").bind(1_i64);
    let cols = |row: &sqlx::postgres::PgRow| sqlx::Row::columns(row).len();

    // Cache the statement on the pool's only connection, for a connection
    // and for a transaction.
    let mut conn = h.acquire(t).await.unwrap();
    assert_eq!(cols(&select().fetch_one(&mut conn).await.unwrap()), 3);
    drop(conn);

    upgrade(&h, t).await;
    // Outside a transaction: dropped and run again, invisible to the caller.
    let mut conn = h.acquire(t).await.unwrap();
    assert_eq!(cols(&select().fetch_one(&mut conn).await.unwrap()), 4);
    drop(conn);

    sqlx::raw_sql("ALTER TABLE customers ADD COLUMN extra TEXT")
        .execute(&mut h.acquire(t).await.unwrap())
        .await
        .unwrap();
    // Inside a transaction: a StaleStatement, and the transaction is lost.
    let mut tx = h.begin(t).await.unwrap();
    let err = select().fetch_one(&mut tx).await.unwrap_err();
    let stale = StaleStatement::find(&err).unwrap_or_else(|| panic!("not a StaleStatement: {err}"));
    assert!(stale.to_string().contains("run it again"), "{stale}");
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("0A000")
    );
    tx.rollback().await.unwrap();
    // The transaction run again works.
    let mut tx = h.begin(t).await.unwrap();
    assert_eq!(cols(&select().fetch_one(&mut tx).await.unwrap()), 5);
    tx.commit().await.unwrap();

    // Streams return the typed error, and the next statement works.
    sqlx::raw_sql("ALTER TABLE customers DROP COLUMN extra")
        .execute(&mut h.acquire(t).await.unwrap())
        .await
        .unwrap();
    let mut conn = h.acquire(t).await.unwrap();
    {
        use futures_util::TryStreamExt;
        let err = select()
            .fetch(&mut conn)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert!(StaleStatement::find(&err).is_some(), "{err}");
    }
    assert_eq!(cols(&select().fetch_one(&mut conn).await.unwrap()), 4);
}

/// More distinct (tenant, statement) pairs than the cache holds: the server
/// never keeps more prepared statements on the connection than the capacity.
#[tokio::test]
async fn the_statement_cache_stays_within_its_capacity() {
    let ctx = setup(2).await;
    let h = Hidra::builder()
        .tenant_migrations(v1())
        .max_connections(1)
        .statement_cache_capacity(8)
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    assert_eq!(h.statement_cache_capacity(), 8);
    let ts = tenants(&h, "cap", 6).await;
    let statements = [
        "SELECT name FROM customers WHERE id = $1",
        "SELECT owner FROM customers WHERE id = $1",
        "SELECT id FROM customers WHERE id = $1",
    ];
    let mut peak = 0;
    for round in 0..3 {
        for t in &ts {
            for sql in statements {
                let mut conn = h.acquire(t).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(1_i64 + round)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
                    .persistent(false)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                peak = peak.max(n);
            }
        }
    }
    // 18 distinct pairs went through; at most 8 stay prepared.
    assert!(peak <= 8, "{peak} statements prepared on the server");
    assert!(peak >= 6, "only {peak}: the cache is not being used");
}

/// The same under load: 8 tasks keep reading `SELECT *` of one tenant, half
/// through connections and half through transactions, while the tenant's
/// table gains columns. Connections never see an error (the stale statement
/// is retried); transactions see nothing but `StaleStatement`, and succeed
/// when run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_own_alter_table_under_load() {
    let ctx = setup(2).await;
    let h = hidra_v1(&ctx, 4).await;
    let t = tenants(&h, "load", 1).await.remove(0);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (conn_errors, tx_stale, tx_other, ops) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let (h, t, done) = (h.clone(), t.clone(), done.clone());
        let (conn_errors, tx_stale, tx_other, ops) = (
            conn_errors.clone(),
            tx_stale.clone(),
            tx_other.clone(),
            ops.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                let select = sqlx::query("SELECT * FROM customers WHERE id = $1").bind(1_i64);
                if w % 2 == 0 {
                    let mut conn = h.acquire(&t).await.unwrap();
                    if let Err(e) = select.fetch_one(&mut conn).await {
                        eprintln!("connection: {e}");
                        conn_errors.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    let mut tx = h.begin(&t).await.unwrap();
                    match select.fetch_one(&mut tx).await {
                        Ok(_) => tx.commit().await.unwrap(),
                        Err(e) if StaleStatement::find(&e).is_some() => {
                            tx_stale.fetch_add(1, Ordering::Relaxed);
                            tx.rollback().await.unwrap();
                        }
                        Err(e) => tx_other.lock().unwrap().push(e.to_string()),
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for column in ["a", "b", "c", "d", "e"] {
        // Let the readers cache their statements, then change the table.
        let before = ops.load(Ordering::Relaxed);
        while ops.load(Ordering::Relaxed) < before + 40 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut tx = h.begin(&t).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE customers ADD COLUMN {column} INT"
        )))
        .execute(&mut tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let before = ops.load(Ordering::Relaxed);
    while ops.load(Ordering::Relaxed) < before + 40 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    done.store(true, Ordering::Release);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        conn_errors.load(Ordering::Relaxed),
        0,
        "connections retry stale statements"
    );
    let other = tx_other.lock().unwrap();
    assert!(
        other.is_empty(),
        "transactions: only StaleStatement, got {other:?}"
    );
    eprintln!(
        "{} statements, {} stale-statement errors in transactions",
        ops.load(Ordering::Relaxed),
        tx_stale.load(Ordering::Relaxed)
    );
}
