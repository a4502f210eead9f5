//! Database per tenant, and three strategies side by side in one deployment.
//! Runs as an ordinary role (with CREATEDB) created by the test.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use common::*;
use hidra::rls::tenant_table_sql;
use hidra::testing::{PgServer, TestDatabase};
use hidra::{
    DatabasePoolConfig, Hidra, HidraBuilder, Migrations, NewTenant, Strategy, Tenant, TenantCap,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const TABLES: &str = "CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);";

struct DbCtx {
    db: TestDatabase,
    role: String,
    prefix: String,
    hidra: Hidra,
}

fn migrations() -> Migrations {
    Migrations::new().push("customers", TABLES)
}

async fn setup(builder: impl FnOnce(HidraBuilder) -> HidraBuilder) -> DbCtx {
    let db = TestDatabase::create().await.unwrap();
    let tag = &db.name()[db.name().len() - 8..];
    let role = format!("hidra_app_{tag}");
    let prefix = format!("d{tag}_");
    let mut su = PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS;
         GRANT CREATE ON DATABASE \"{db}\" TO {role};
         GRANT ALL ON SCHEMA public TO {role};",
        db = db.name()
    )))
    .execute(&mut su)
    .await
    .unwrap();
    let hidra = builder(
        Hidra::builder()
            .tenant_migrations(migrations())
            .database_prefix(&prefix)
            .seed_fn(|conn, tenant| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO customers (name) VALUES ($1)")
                        .bind(format!("first customer of {}", tenant.id))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            }),
    )
    .connect_with(db.connect_options().username(&role))
    .await
    .unwrap();
    hidra.install().await.unwrap();
    DbCtx {
        db,
        role,
        prefix,
        hidra,
    }
}

async fn databases_with_prefix(prefix: &str) -> Vec<String> {
    let server = PgServer::get().await.unwrap();
    let mut su = PgConnection::connect(server.url()).await.unwrap();
    sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1",
    )
    .bind(prefix)
    .fetch_all(&mut su)
    .await
    .unwrap()
}

async fn teardown(ctx: DbCtx) {
    ctx.hidra.close().await;
    let server = PgServer::get().await.unwrap();
    let mut su = PgConnection::connect(server.url()).await.unwrap();
    for db in databases_with_prefix(&ctx.prefix).await {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
        )))
        .execute(&mut su)
        .await
        .unwrap();
    }
    ctx.db.drop_now().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("DROP ROLE IF EXISTS {}", ctx.role)))
        .execute(&mut su)
        .await
        .unwrap();
}

/// The one handler every strategy goes through.
async fn customer_names(h: &Hidra, t: &Tenant) -> Vec<String> {
    let mut conn = h.acquire(t).await.unwrap();
    sqlx::query_scalar("SELECT name FROM customers ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

async fn add_customer(h: &Hidra, t: &Tenant, name: &str) {
    let mut tx = h.begin(t).await.unwrap();
    sqlx::query("INSERT INTO customers (name) VALUES ($1)")
        .bind(name)
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn database_tenant(h: &Hidra, name: &str) -> Tenant {
    h.provision(NewTenant::new(id(name)).strategy(Strategy::Database))
        .await
        .unwrap()
}

#[tokio::test]
async fn database_tenants_are_isolated_migrated_and_dropped() {
    let ctx = setup(|b| b).await;
    let h = &ctx.hidra;
    let a = database_tenant(h, "alpha").await;
    let b = database_tenant(h, "beta").await;
    assert_eq!(a.placement.strategy, Strategy::Database);
    assert_eq!(
        a.placement.database.as_deref(),
        Some(&*format!("{}alpha", ctx.prefix))
    );
    add_customer(h, &a, "a-only").await;
    assert_eq!(
        customer_names(h, &a).await,
        vec!["first customer of alpha", "a-only"]
    );
    assert_eq!(customer_names(h, &b).await, vec!["first customer of beta"]);
    // A rolled-back transaction leaves nothing.
    let mut tx = h.begin(&b).await.unwrap();
    sqlx::query("INSERT INTO customers (name) VALUES ('ghost')")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(customer_names(h, &b).await.len(), 1);

    // A tenant database made before the version claim was a function gets
    // it from the run that needs it.
    let mut conn = h.acquire(&a).await.unwrap();
    sqlx::query("DROP FUNCTION hidra.claim_version(bigint, text, bigint, bigint, bytea)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    // The runner migrates tenant databases too.
    let v2 = Hidra::builder()
        .tenant_migrations(
            migrations().push("email", "ALTER TABLE customers ADD COLUMN email TEXT;"),
        )
        .database_prefix(&ctx.prefix)
        .connect_with(ctx.db.connect_options().username(&ctx.role))
        .await
        .unwrap();
    let summary = v2.migrator().run().await.unwrap();
    assert!(summary.is_success(), "{summary}");
    assert_eq!(summary.migrated.len(), 2, "{summary}");
    let mut conn = v2.acquire(&a).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(email) FROM customers")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let claim: bool = sqlx::query_scalar(
        "SELECT to_regprocedure('hidra.claim_version(bigint,text,bigint,bigint,bytea)') IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(claim);
    drop(conn);
    // New tenants come from the template, which is brought up to date first.
    let c = database_tenant(&v2, "gamma").await;
    let mut conn = v2.acquire(&c).await.unwrap();
    let versions: i64 = sqlx::query_scalar("SELECT max(version) FROM _hidra_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, 2);
    drop(conn);
    assert_eq!(v2.migrator().run().await.unwrap().current, 3);
    v2.close().await;

    // Deprovisioning drops the database and its pool.
    let db_a = a.placement.database.clone().unwrap();
    h.deprovision(&a.id, hidra::Confirmation::of(&a.id))
        .await
        .unwrap();
    let left = databases_with_prefix(&ctx.prefix).await;
    assert!(!left.contains(&db_a), "{left:?}");
    assert_eq!(customer_names(h, &b).await.len(), 1);
    let stats = h.tenant_databases().stats();
    assert!(stats.databases <= 1, "{stats:?}");
    teardown(ctx).await;
}

#[tokio::test]
async fn a_failed_database_provisioning_leaves_nothing() {
    let ctx = setup(|b| {
        b.seed_fn(|_, tenant| {
            Box::pin(async move {
                if tenant.id.as_str() == "broken" {
                    return Err("no reference data".into());
                }
                Ok(())
            })
        })
    })
    .await;
    let h = &ctx.hidra;
    let err = h
        .provision(NewTenant::new(id("broken")).strategy(Strategy::Database))
        .await
        .unwrap_err();
    assert!(matches!(err, hidra::Error::Seed { .. }), "{err:?}");
    assert!(registry_ids(h).await.is_empty());
    let left = databases_with_prefix(&ctx.prefix).await;
    assert_eq!(
        left,
        vec![format!("{}_tpl", ctx.prefix)],
        "only the template may remain"
    );
    teardown(ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connection_budget_holds_under_200_concurrent_tenants() {
    const BUDGET: u32 = 10;
    const TENANTS: usize = 200;
    let ctx = setup(|b| {
        b.max_connections(5).database_per_tenant(
            DatabasePoolConfig::default()
                .with_budget(BUDGET)
                .with_per_database(2),
        )
    })
    .await;
    let h = ctx.hidra.clone();
    // Provision 200 tenant databases, a few at a time.
    let mut tenants = Vec::new();
    for chunk in (0..TENANTS).collect::<Vec<_>>().chunks(4) {
        let futs = chunk.iter().map(|i| {
            let h = h.clone();
            async move { database_tenant(&h, &format!("t{i}")).await }
        });
        tenants.extend(futures_util::future::join_all(futs).await);
    }
    let tenants = Arc::new(tenants);

    // Watch the server's connections to the tenant databases.
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (stop, max_seen, prefix) = (stop.clone(), max_seen.clone(), ctx.prefix.clone());
        let url = PgServer::get().await.unwrap().url().to_owned();
        tokio::spawn(async move {
            let mut su = PgConnection::connect(&url).await.unwrap();
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, $1) AND datname <> $1 || '_tpl'",
                )
                .bind(&prefix)
                .fetch_one(&mut su)
                .await
                .unwrap();
                max_seen.fetch_max(n, Ordering::Relaxed);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TENANTS {
        let (h, tenants) = (h.clone(), tenants.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..3 {
                let tenant = &tenants[(t * 7 + k * 13) % tenants.len()];
                let names = customer_names(&h, tenant).await;
                assert_eq!(names, vec![format!("first customer of {}", tenant.id)]);
                assert!(h.tenant_databases().stats().open <= BUDGET);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let samples = watcher.await.unwrap();
    let max = max_seen.load(Ordering::Relaxed);
    assert!(samples > 10, "too few samples: {samples}");
    assert!(max > 0, "the watcher should see tenant connections");
    assert!(
        max <= BUDGET as i64,
        "{max} server connections for a budget of {BUDGET}"
    );
    teardown(ctx).await;
}

#[tokio::test]
async fn three_strategies_are_served_by_the_same_handler() {
    let ctx = setup(|b| b).await;
    let h = &ctx.hidra;
    // The row-level tables, tenant-scoped, owned by the application role.
    let mut conn = h.acquire_shared().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "{}\n{}",
        TABLES.replace("CREATE TABLE ", "CREATE TABLE public."),
        tenant_table_sql("public.customers").unwrap()
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);

    let schema = h.provision(NewTenant::new(id("in-schema"))).await.unwrap();
    let rows = h
        .provision(NewTenant::new(id("in-rows")).strategy(Strategy::RowLevel))
        .await
        .unwrap();
    let database = database_tenant(h, "in-db").await;
    for t in [&schema, &rows, &database] {
        add_customer(h, t, &format!("second of {}", t.id)).await;
    }
    for t in [&schema, &rows, &database] {
        assert_eq!(
            customer_names(h, t).await,
            vec![
                format!("first customer of {}", t.id),
                format!("second of {}", t.id)
            ],
            "{}",
            t.id
        );
    }
    let listed = h.list(&hidra::ListTenants::first(10)).await.unwrap();
    let strategies: Vec<Strategy> = listed.items.iter().map(|t| t.placement.strategy).collect();
    assert_eq!(
        strategies,
        vec![Strategy::Database, Strategy::RowLevel, Strategy::Schema]
    );
    teardown(ctx).await;
}

#[tokio::test]
async fn moves_to_and_from_a_database_keep_every_row_and_leave_nothing_behind() {
    let ctx = setup(|b| {
        b.tenant_migrations(
            Migrations::new().push(
                "customers and orders",
                "CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
                 CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, customer_id BIGINT NOT NULL REFERENCES customers(id), total INT NOT NULL);",
            ),
        )
    })
    .await;
    let h = &ctx.hidra;
    let t = h.provision(NewTenant::new(id("mover"))).await.unwrap();
    fill_customers_and_orders(h, &t, 50, 3).await;
    let before = customers_and_orders(h, &t).await;
    assert_eq!(before.len(), 51, "50 customers and the seeded one");

    let in_db = h.move_tenant(&t.id, Strategy::Database).await.unwrap();
    assert_eq!(in_db.placement.strategy, Strategy::Database);
    assert_eq!(customers_and_orders(h, &in_db).await, before);
    assert!(
        !schemas(h).await.contains(&"tenant_mover".to_string()),
        "old schema left behind"
    );
    // Sequences continue after the copied ids.
    let mut conn = h.acquire(&in_db).await.unwrap();
    let next: i64 = sqlx::query_scalar("INSERT INTO customers (name) VALUES ('n') RETURNING id")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(next > 51);
    sqlx::query("DELETE FROM customers WHERE id = $1")
        .bind(next)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    let back = h.move_tenant(&t.id, Strategy::Schema).await.unwrap();
    assert_eq!(back.placement.strategy, Strategy::Schema);
    assert_eq!(customers_and_orders(h, &back).await, before);
    let dbs = databases_with_prefix(&ctx.prefix).await;
    assert!(
        !dbs.contains(&format!("{}mover", ctx.prefix)),
        "old database left behind: {dbs:?}"
    );
    teardown(ctx).await;
}

/// The writers that wait on the locked tables during a move fail once it
/// commits and retry at the new place: no acknowledged write is left in the
/// old schema or database (a database move once released its locks before
/// dropping the old database, and the writers that waited landed there).
#[tokio::test]
async fn moves_to_and_from_a_database_lose_no_acknowledged_write() {
    let ctx = setup(|b| b.tenant_migrations(migrations())).await;
    let h = &ctx.hidra;
    let t = h.provision(NewTenant::new(id("busy"))).await.unwrap();
    for to in [Strategy::Database, Strategy::Schema, Strategy::Database] {
        let current = h.tenant(&t.id).await.unwrap().unwrap();
        let mut conn = h.acquire(&current).await.unwrap();
        sqlx::query("DELETE FROM customers")
            .execute(&mut conn)
            .await
            .unwrap();
        drop(conn);
        let insert = "INSERT INTO customers (name) VALUES ($1)";
        let (moved, acked) = while_writing(h, &t.id, insert, 3, h.move_tenant(&t.id, to)).await;
        let moved = moved.unwrap();
        let mut conn = h.acquire(&moved).await.unwrap();
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM customers")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        // Each writer counts from w0: compare counts per name.
        let mut have = std::collections::HashMap::<String, usize>::new();
        for n in names {
            *have.entry(n).or_default() += 1;
        }
        let mut want = std::collections::HashMap::<String, usize>::new();
        for n in acked.iter().flatten() {
            *want.entry(n.clone()).or_default() += 1;
        }
        assert!(want.len() > 10, "the writers wrote: {}", want.len());
        for (name, n) in &want {
            let found = have.get(name).copied().unwrap_or(0);
            assert!(
                found >= *n,
                "{to:?}: {name} acknowledged {n} times, found {found}"
            );
        }
    }
    teardown(ctx).await;
}

#[tokio::test]
async fn a_move_advances_the_sequence_of_a_mixed_case_serial_column() {
    let ctx = setup(|b| {
        b.tenant_migrations(Migrations::new().push(
            "invoices",
            // `customers` for the seed every tenant of this file gets.
            r#"CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
               CREATE TABLE "Invoices" ("InvoiceNo" BIGSERIAL PRIMARY KEY, total INT NOT NULL);"#,
        ))
    })
    .await;
    let h = &ctx.hidra;
    let t = h.provision(NewTenant::new(id("ledger"))).await.unwrap();
    let mut conn = h.acquire(&t).await.unwrap();
    sqlx::raw_sql(r#"INSERT INTO "Invoices" (total) SELECT g FROM generate_series(1, 5) AS g"#)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    for to in [Strategy::Database, Strategy::Schema] {
        let moved = h.move_tenant(&t.id, to).await.unwrap();
        let mut conn = h.acquire(&moved).await.unwrap();
        let next: i64 = sqlx::query_scalar(
            r#"INSERT INTO "Invoices" (total) VALUES (0) RETURNING "InvoiceNo""#,
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(next > 5, "{to:?}: the sequence restarted at {next}");
        sqlx::query(r#"DELETE FROM "Invoices" WHERE "InvoiceNo" = $1"#)
            .bind(next)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    teardown(ctx).await;
}

#[tokio::test]
async fn a_dropped_transaction_releases_its_locks_at_once() {
    let ctx = setup(|b| b).await;
    let h = &ctx.hidra;
    let t = database_tenant(h, "locker").await;
    let mut tx = h.begin(&t).await.unwrap();
    sqlx::raw_sql("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        .execute(&mut tx)
        .await
        .unwrap();
    drop(tx); // an early return, a panic or a cancelled request
    let server = PgServer::get().await.unwrap();
    let mut su = PgConnection::connect(server.url()).await.unwrap();
    let database = t.placement.database.clone().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE d.datname = $1 AND l.mode = 'AccessExclusiveLock' AND l.granted",
        )
        .bind(&database)
        .fetch_one(&mut su)
        .await
        .unwrap();
        if held == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped transaction still holds its lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The tenant works on.
    add_customer(h, &t, "after").await;
    assert!(customer_names(h, &t).await.contains(&"after".to_owned()));
    teardown(ctx).await;
}

#[tokio::test]
async fn a_database_tenant_is_capped_and_gets_its_timeouts() {
    let ctx = setup(|b| {
        b.database_per_tenant(
            DatabasePoolConfig::default()
                .with_budget(8)
                .with_per_database(4),
        )
        .tenant_cap(TenantCap::Connections(1))
        .tenant_wait(Duration::from_millis(200))
        .statement_timeout(Duration::from_secs(5))
    })
    .await;
    let h = &ctx.hidra;
    let a = h
        .provision(
            NewTenant::new(id("alpha"))
                .strategy(Strategy::Database)
                .metadata(serde_json::json!({ "statement_timeout_ms": 1500 })),
        )
        .await
        .unwrap();
    let b = database_tenant(h, "beta").await;

    // Its own timeout, in a connection and in a transaction; the other
    // tenant gets the default.
    let show = "SHOW statement_timeout";
    let mut held = h.acquire(&a).await.unwrap();
    let value: String = sqlx::query_scalar(show).fetch_one(&mut held).await.unwrap();
    assert_eq!(value, "1500ms");
    let mut other = h.begin(&b).await.unwrap();
    let value: String = sqlx::query_scalar(show)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(value, "5s");
    other.rollback().await.unwrap();

    // At its cap of one, the tenant waits and is refused; the other is served.
    let busy = h.begin(&a).await.unwrap_err();
    assert!(
        matches!(&busy, hidra::Error::TenantBusy { id, cap: 1, .. } if id.as_str() == "alpha"),
        "{busy:?}"
    );
    assert!(matches!(
        h.acquire(&a).await,
        Err(hidra::Error::TenantBusy { .. })
    ));
    assert_eq!(customer_names(h, &b).await.len(), 1);
    let load = h.load().get(&a.id).unwrap();
    assert_eq!((load.connections, load.busy), (1, 2));

    drop(held);
    let mut tx = h.begin(&a).await.unwrap();
    let value: String = sqlx::query_scalar(show).fetch_one(&mut tx).await.unwrap();
    assert_eq!(value, "1500ms");
    tx.rollback().await.unwrap();
    teardown(ctx).await;
}

#[tokio::test]
async fn a_tenants_timeout_does_not_stay_on_its_databases_connections() {
    let ctx = setup(|b| {
        b.database_per_tenant(
            DatabasePoolConfig::default()
                .with_budget(1)
                .with_per_database(1),
        )
        .statement_timeout(Duration::from_millis(100))
    })
    .await;
    let h = &ctx.hidra;
    let a = database_tenant(h, "alpha").await;
    // The tenant's checkout sets its limit on the one pooled connection...
    let mut conn = h.acquire(&a).await.unwrap();
    let value: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, "100ms");
    drop(conn);
    // ...and the next user of that connection (the migration runner, a
    // move) gets the server's value back.
    let database = a.placement.database.clone().unwrap();
    let mut raw = h.tenant_databases().acquire(&database).await.unwrap();
    let value: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut *raw)
        .await
        .unwrap();
    assert_eq!(value, "0");
    drop(raw);
    teardown(ctx).await;
}

#[tokio::test]
async fn provisioning_over_an_existing_database_leaves_that_database_alone() {
    let ctx = setup(|b| b).await;
    let stray = format!("{}stray", ctx.prefix);
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{stray}\"")))
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let err = ctx
        .hidra
        .provision(NewTenant::new(id("stray")).strategy(Strategy::Database))
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert_eq!(
        databases_with_prefix(&stray).await,
        std::slice::from_ref(&stray)
    );
    assert!(!ctx.hidra.exists(&id("stray")).await.unwrap());
    teardown(ctx).await;
}

/// A table in the shared schema named like a tenant table, without
/// row-level security: what a stale schema binding would fall through to.
async fn shadow_customers(ctx: &DbCtx) -> PgConnection {
    let mut su = PgConnection::connect(ctx.db.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE public.customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
         GRANT ALL ON public.customers, public.customers_id_seq TO {};",
        ctx.role
    )))
    .execute(&mut su)
    .await
    .unwrap();
    su
}

async fn shadowed_rows(su: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM public.customers")
        .fetch_one(su)
        .await
        .unwrap()
}

/// A record read before its schema tenant moved binds the tenant where it
/// is now, and one read before its deprovisioning binds nothing: neither
/// ever reaches the shared schema's same-named table.
#[tokio::test]
async fn a_stale_schema_record_is_never_bound_to_the_shared_schemas() {
    let ctx = setup(|b| b.tenant_migrations(migrations())).await;
    let mut su = shadow_customers(&ctx).await;
    let h = &ctx.hidra;
    let stale = h.provision(NewTenant::new(id("leaver"))).await.unwrap();
    h.move_tenant(&stale.id, Strategy::Database).await.unwrap();
    add_customer(h, &stale, "in a transaction").await;
    let mut conn = h.acquire(&stale).await.unwrap();
    sqlx::query("INSERT INTO customers (name) VALUES ('on a session')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let now = h.tenant(&stale.id).await.unwrap().unwrap();
    assert_eq!(now.placement.strategy, Strategy::Database);
    let names = customer_names(h, &now).await;
    assert_eq!(names[1..], ["in a transaction", "on a session"]);

    // And back: the database record is stale now.
    h.move_tenant(&stale.id, Strategy::Schema).await.unwrap();
    add_customer(h, &now, "back in a schema").await;
    assert_eq!(customer_names(h, &stale).await.len(), 4);

    let gone = h.provision(NewTenant::new(id("gone"))).await.unwrap();
    h.deprovision(&gone.id, hidra::Confirmation::of(&gone.id))
        .await
        .unwrap();
    assert!(h.acquire(&gone).await.unwrap_err().is_not_found());
    assert!(h.begin(&gone).await.unwrap_err().is_not_found());
    assert_eq!(shadowed_rows(&mut su).await, 0);
    teardown(ctx).await;
}

/// A transaction left open on a tenant's schema does not hold up its
/// deprovisioning: it is ended, and its next statement fails rather than
/// falling through to the shared schema.
#[tokio::test]
async fn an_open_transaction_does_not_hold_up_the_drop_of_its_schema() {
    let ctx = setup(|b| b.tenant_migrations(migrations())).await;
    let mut su = shadow_customers(&ctx).await;
    let h = &ctx.hidra;
    let t = h.provision(NewTenant::new(id("lingering"))).await.unwrap();
    let mut tx = h.begin(&t).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(seen, 1);
    tokio::time::timeout(
        Duration::from_secs(30),
        h.deprovision(&t.id, hidra::Confirmation::of(&t.id)),
    )
    .await
    .expect("the deprovisioning waited for the open transaction")
    .unwrap();
    let late = sqlx::query("INSERT INTO customers (name) VALUES ('late')")
        .execute(&mut tx)
        .await;
    assert!(late.is_err());
    drop(tx);
    assert_eq!(shadowed_rows(&mut su).await, 0);
    teardown(ctx).await;
}

/// A transaction that read the tenant and then writes while the move holds
/// its tables waits on the move, which waits on it at the drop: the move
/// ends that transaction instead of failing itself.
#[tokio::test]
async fn a_move_is_not_stopped_by_a_transaction_that_read_before_writing() {
    let ctx = setup(|b| b.tenant_migrations(migrations())).await;
    let h = &ctx.hidra;
    let t = h.provision(NewTenant::new(id("reader"))).await.unwrap();
    let mut conn = h.acquire(&t).await.unwrap();
    sqlx::query(
        "INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 300000) AS g",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    let mut tx = h.begin(&t).await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    let mover = h.clone();
    let moving =
        tokio::spawn(async move { mover.move_tenant(&id("reader"), Strategy::Database).await });
    // Once the move holds the tables against writes, write.
    let su = sqlx::PgPool::connect(ctx.db.url()).await.unwrap();
    let schema = t.placement.schema.clone();
    wait_for("the move's lock", || {
        let (su, schema) = (su.clone(), schema.clone());
        async move {
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = 'customers' AND l.mode = 'ShareLock' AND l.granted)",
            )
            .bind(schema)
            .fetch_one(&su)
            .await
            .unwrap();
            held.then_some(())
        }
    })
    .await;
    let write = sqlx::query("INSERT INTO customers (name) VALUES ('during the move')")
        .execute(&mut tx)
        .await;
    assert!(write.is_err(), "the write went through: the move gave way");
    drop(tx);
    su.close().await;
    let moved = moving.await.unwrap().unwrap();
    assert_eq!(moved.placement.strategy, Strategy::Database);
    let mut conn = h.acquire(&moved).await.unwrap();
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, before);
    drop(conn);
    teardown(ctx).await;
}

/// A schema tenant whose history table was dropped by hand is reported as
/// such, not as a stale record.
#[tokio::test]
async fn a_schema_without_its_history_table_is_reported() {
    let ctx = setup(|b| b.tenant_migrations(migrations())).await;
    let h = &ctx.hidra;
    let t = h.provision(NewTenant::new(id("amnesiac"))).await.unwrap();
    let mut su = PgConnection::connect(ctx.db.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE \"{}\"._hidra_migrations",
        t.placement.schema
    )))
    .execute(&mut su)
    .await
    .unwrap();
    let e = h.acquire(&t).await.unwrap_err();
    assert!(matches!(e, hidra::Error::DataMissing { .. }), "{e}");
    let e = h.begin(&t).await.unwrap_err();
    assert!(matches!(e, hidra::Error::DataMissing { .. }), "{e}");
    teardown(ctx).await;
}
