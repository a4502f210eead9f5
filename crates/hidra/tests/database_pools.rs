//! `TenantDatabases`: connections to many tenant databases under one budget of
//! server connections, against a real PostgreSQL.
//!
//! Every test creates its own throw-away databases, each with a `marker` row
//! naming it, and drops them at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use hidra::testing::{PgServer, TestDatabase};
use hidra::{DatabasePoolConfig, DatabasePoolStats, Error, TenantDatabases};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

/// How many databases are created or dropped at once.
const CHUNK: usize = 8;

/// `n` fresh databases, each with a `marker` table holding its own name.
async fn databases(n: usize) -> Vec<TestDatabase> {
    let mut dbs = Vec::with_capacity(n);
    while dbs.len() < n {
        let chunk = CHUNK.min(n - dbs.len());
        let created = join_all((0..chunk).map(|_| async {
            let db = TestDatabase::create().await.expect("create test database");
            let mut conn = PgConnection::connect_with(&db.connect_options())
                .await
                .expect("connect to test database");
            sqlx::raw_sql("CREATE TABLE marker (tenant TEXT NOT NULL)")
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query("INSERT INTO marker (tenant) VALUES ($1)")
                .bind(db.name())
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            db
        }))
        .await;
        dbs.extend(created);
    }
    dbs
}

/// Drops the databases, a few at a time.
async fn drop_all(mut dbs: Vec<TestDatabase>) {
    while !dbs.is_empty() {
        let chunk: Vec<_> = dbs.drain(..CHUNK.min(dbs.len())).collect();
        for dropped in join_all(chunk.into_iter().map(TestDatabase::drop_now)).await {
            dropped.expect("drop test database");
        }
    }
}

fn names(dbs: &[TestDatabase]) -> Vec<String> {
    dbs.iter().map(|db| db.name().to_owned()).collect()
}

/// The test server, with no database chosen.
async fn server() -> PgConnectOptions {
    let server = PgServer::get().await.expect("test server");
    server.url().parse().expect("server URL")
}

/// A plain connection to the server's administrative database, outside the pools.
async fn admin() -> PgConnection {
    let server = PgServer::get().await.expect("test server");
    PgConnection::connect(server.url())
        .await
        .expect("admin connection")
}

/// Server connections to any of `names`, as the server sees them.
async fn server_connections(admin: &mut PgConnection, names: &[String]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1)")
        .bind(names)
        .fetch_one(admin)
        .await
        .unwrap()
}

fn pools(config: DatabasePoolConfig, server: PgConnectOptions) -> TenantDatabases {
    TenantDatabases::new(server, config).expect("valid config")
}

/// Polls `stats` until `done` holds, for at most ten seconds; returns the last stats.
async fn settle(
    pools: &TenantDatabases,
    done: impl Fn(&DatabasePoolStats) -> bool,
) -> DatabasePoolStats {
    for _ in 0..200 {
        let stats = pools.stats();
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pools.stats()
}

/// The marker of the database `conn` is open to.
async fn marker(conn: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquires_read_their_own_database() {
    let dbs = databases(20).await;
    let names = Arc::new(names(&dbs));
    let pools = pools(
        DatabasePoolConfig::default()
            .with_budget(6)
            .with_per_database(2)
            .with_acquire_timeout(Duration::from_secs(60)),
        server().await,
    );

    let tasks = (0..100).map(|_| {
        let pools = pools.clone();
        let names = Arc::clone(&names);
        tokio::spawn(async move {
            for _ in 0..20 {
                let name = &names[rand::random_range(0..names.len())];
                let mut conn = pools.acquire(name).await.unwrap();
                assert_eq!(conn.database(), name);
                assert_eq!(&marker(&mut conn).await, name);
            }
        })
    });
    for task in join_all(tasks).await {
        task.unwrap();
    }
    let stats = pools.stats();
    assert!(stats.open <= 6, "{stats:?}");
    assert_eq!(
        stats.open, stats.idle,
        "every connection was returned: {stats:?}"
    );

    pools.close().await;
    drop_all(dbs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_never_exceeded() {
    const BUDGET: u32 = 8;
    let dbs = databases(40).await;
    let names = Arc::new(names(&dbs));
    let pools = pools(
        DatabasePoolConfig::default()
            .with_budget(BUDGET)
            .with_per_database(4)
            .with_acquire_timeout(Duration::from_secs(60)),
        server().await,
    );

    // Watch from outside: the server's own count, and the pools' count.
    let done = Arc::new(AtomicBool::new(false));
    let max_stats = Arc::new(AtomicU32::new(0));
    let sampler = {
        let (done, names, pools, max_stats) = (
            Arc::clone(&done),
            Arc::clone(&names),
            pools.clone(),
            Arc::clone(&max_stats),
        );
        tokio::spawn(async move {
            let mut admin = admin().await;
            let (mut max_server, mut samples) = (0, 0u32);
            while !done.load(Ordering::Acquire) {
                max_server = max_server.max(server_connections(&mut admin, &names).await);
                max_stats.fetch_max(pools.stats().open, Ordering::Relaxed);
                samples += 1;
            }
            (max_server, samples)
        })
    };

    let tasks = (0..200).map(|_| {
        let (pools, names, max_stats) = (pools.clone(), Arc::clone(&names), Arc::clone(&max_stats));
        tokio::spawn(async move {
            for _ in 0..15 {
                let name = &names[rand::random_range(0..names.len())];
                let mut conn = pools.acquire(name).await.unwrap();
                max_stats.fetch_max(pools.stats().open, Ordering::Relaxed);
                let current: String = sqlx::query_scalar("SELECT current_database()::text")
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
                assert_eq!(&current, name);
            }
        })
    });
    for task in join_all(tasks).await {
        task.unwrap();
    }
    done.store(true, Ordering::Release);
    let (max_server, samples) = sampler.await.unwrap();
    let max_stats = max_stats.load(Ordering::Relaxed);
    eprintln!(
        "budget {BUDGET}: at most {max_server} server connections seen in {samples} samples of \
         pg_stat_activity, at most {max_stats} counted by the pools"
    );
    assert!(samples > 0 && max_server > 0, "the sampler saw the load");
    assert!(
        max_server <= i64::from(BUDGET),
        "{max_server} server connections"
    );
    assert!(max_stats <= BUDGET, "{max_stats} counted connections");

    pools.close().await;
    drop_all(dbs).await;
}

#[tokio::test]
async fn an_evicted_database_can_be_dropped() {
    let mut dbs = databases(2).await;
    let (a, b) = (dbs[0].name().to_owned(), dbs[1].name().to_owned());
    let pools = pools(DatabasePoolConfig::default().with_budget(4), server().await);

    // Two idle connections to `a`, one to `b`, and one of `a` still in use.
    let (a1, a2) = (
        pools.acquire(&a).await.unwrap(),
        pools.acquire(&a).await.unwrap(),
    );
    drop((a1, pools.acquire(&b).await.unwrap()));
    let mut in_use = a2;
    let stats = pools.stats();
    assert_eq!((stats.open, stats.idle, stats.databases), (3, 2, 2));

    pools.evict(&a).await;
    let stats = pools.stats();
    assert_eq!(
        (stats.open, stats.idle, stats.databases),
        (2, 1, 1),
        "only `b` is left, plus the connection of `a` in use"
    );
    // The connection in use still works, and is closed when returned.
    assert_eq!(marker(&mut in_use).await, a);
    drop(in_use);
    let stats = settle(&pools, |s| s.open == 1).await;
    assert_eq!((stats.open, stats.idle, stats.databases), (1, 1, 1));

    // No connection to `a` is left: a plain DROP DATABASE (no FORCE) succeeds.
    let mut admin = admin().await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE \"{a}\"")))
        .execute(&mut admin)
        .await
        .expect("drop the evicted database");
    let left = server_connections(&mut admin, &[a.clone(), b.clone()]).await;
    assert_eq!(left, 1, "only the idle connection to `b`");

    // `b` is untouched.
    let mut conn = pools.acquire(&b).await.unwrap();
    assert_eq!(marker(&mut conn).await, b);
    drop(conn);

    pools.close().await;
    // `a` is gone already; its guard's own drop would find nothing.
    let dropped_a = dbs.remove(0);
    drop_all(dbs).await;
    drop(dropped_a);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let dbs = databases(3).await;
    let names = names(&dbs);
    let pools = pools(
        DatabasePoolConfig::default().with_idle_timeout(Duration::from_millis(300)),
        server().await,
    );

    let conns = join_all(names.iter().map(|name| pools.acquire(name))).await;
    drop(conns);
    let stats = pools.stats();
    assert_eq!((stats.open, stats.idle, stats.databases), (3, 3, 3));

    let stats = settle(&pools, |s| s.open == 0).await;
    assert_eq!((stats.open, stats.idle, stats.databases), (0, 0, 0));
    let mut admin = admin().await;
    let mut left = server_connections(&mut admin, &names).await;
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = server_connections(&mut admin, &names).await;
    }
    assert_eq!(left, 0, "the server closed them too");

    // The pools still work afterwards.
    let mut conn = pools.acquire(&names[0]).await.unwrap();
    assert_eq!(marker(&mut conn).await, names[0]);
    drop(conn);

    pools.close().await;
    drop_all(dbs).await;
}

#[tokio::test]
async fn a_leftover_transaction_is_not_inherited() {
    let dbs = databases(1).await;
    let name = dbs[0].name().to_owned();
    let pools = pools(
        DatabasePoolConfig::default()
            .with_budget(1)
            .with_per_database(1),
        server().await,
    );

    // A clean connection is reused as it is.
    let mut conn = pools.acquire(&name).await.unwrap();
    let first = backend_pid(&mut conn).await;
    drop(conn);
    let mut conn = pools.acquire(&name).await.unwrap();
    assert_eq!(backend_pid(&mut conn).await, first, "reused");

    // A raw BEGIN left open: the connection is replaced, the work rolled back.
    sqlx::raw_sql("BEGIN; INSERT INTO marker (tenant) VALUES ('leftover')")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let mut conn = pools.acquire(&name).await.unwrap();
    let second = backend_pid(&mut conn).await;
    assert_ne!(
        second, first,
        "the connection inside a transaction was closed"
    );
    // One simple-protocol statement: `now()` is its own start only outside a transaction.
    let outside: bool = sqlx::raw_sql("SELECT now() = statement_timestamp()")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert!(outside, "not inside a transaction");
    let leftovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM marker WHERE tenant = 'leftover'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(leftovers, 0, "the leftover transaction was rolled back");

    // A failed transaction left open: replaced as well.
    let failed = sqlx::raw_sql("BEGIN; SELECT 1 / 0")
        .execute(&mut *conn)
        .await;
    assert!(failed.is_err());
    drop(conn);
    let mut conn = pools.acquire(&name).await.unwrap();
    assert_ne!(backend_pid(&mut conn).await, second);
    assert_eq!(marker(&mut conn).await, name);
    drop(conn);

    let stats = pools.stats();
    assert_eq!(
        (stats.open, stats.idle),
        (1, 1),
        "nothing leaked: {stats:?}"
    );

    pools.close().await;
    drop_all(dbs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_never_leak_budget() {
    const BUDGET: u32 = 4;
    let dbs = databases(10).await;
    let names = Arc::new(names(&dbs));
    let pools = pools(
        DatabasePoolConfig::default()
            .with_budget(BUDGET)
            .with_per_database(2)
            .with_acquire_timeout(Duration::from_secs(60)),
        server().await,
    );
    let random_acquire = |max_ms: u64| {
        let (pools, names) = (pools.clone(), Arc::clone(&names));
        tokio::spawn(async move {
            let name = &names[rand::random_range(0..names.len())];
            let limit = Duration::from_micros(rand::random_range(0..max_ms * 1000));
            match tokio::time::timeout(limit, pools.acquire(name)).await {
                Ok(conn) => {
                    let mut conn = conn.unwrap();
                    assert_eq!(&marker(&mut conn).await, name);
                    true
                }
                Err(_) => false,
            }
        })
    };

    // The whole budget in use: every waiting acquire is cancelled.
    let held = join_all(names[..4].iter().map(|name| pools.acquire(name))).await;
    let cancelled = join_all((0..100).map(|_| random_acquire(30))).await;
    assert!(cancelled.into_iter().all(|served| !served.unwrap()));
    assert_eq!(pools.stats().open, BUDGET);
    drop(held);

    // Cancellations at every stage: waiting, closing, connecting, checking.
    let outcomes = join_all((0..300).map(|_| random_acquire(40))).await;
    let served = outcomes
        .into_iter()
        .filter(|o| *o.as_ref().unwrap())
        .count();
    eprintln!("{served} of 300 acquires with short deadlines were served");

    // Once in-flight closes are done, every unit is idle or free...
    let stats = settle(&pools, |s| s.open == s.idle).await;
    assert_eq!(stats.open, stats.idle, "{stats:?}");
    assert!(stats.open <= BUDGET);

    // ...so the whole budget can be held at once.
    let all = tokio::time::timeout(
        Duration::from_secs(20),
        join_all(names[4..8].iter().map(|name| pools.acquire(name))),
    )
    .await
    .expect("the whole budget is available");
    let mut all: Vec<_> = all.into_iter().map(Result::unwrap).collect();
    assert_eq!(pools.stats().open, BUDGET);
    for conn in &mut all {
        let name = conn.database().to_owned();
        assert_eq!(marker(conn).await, name);
    }
    let mut admin = admin().await;
    assert!(server_connections(&mut admin, &names).await <= i64::from(BUDGET));
    drop(all);

    pools.close().await;
    drop_all(dbs).await;
}

#[tokio::test]
async fn acquires_time_out_when_the_budget_or_database_limit_is_reached() {
    let dbs = databases(2).await;
    let (a, b) = (dbs[0].name().to_owned(), dbs[1].name().to_owned());
    let timeout = Duration::from_millis(200);
    let pools = pools(
        DatabasePoolConfig::default()
            .with_budget(2)
            .with_per_database(1)
            .with_acquire_timeout(timeout),
        server().await,
    );

    let held_a = pools.acquire(&a).await.unwrap();
    // The per-database limit, with budget to spare.
    match pools.acquire(&a).await {
        Err(Error::Database {
            context,
            source: sqlx::Error::PoolTimedOut,
        }) => assert_eq!(
            context,
            "waiting for a tenant database connection (budget exhausted)"
        ),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The budget.
    let held_b = pools.acquire(&b).await.unwrap();
    let third = dbs[0].name().replace("hidra_test", "hidra_none");
    assert!(matches!(
        pools.acquire(&third).await,
        Err(Error::Database {
            source: sqlx::Error::PoolTimedOut,
            ..
        })
    ));
    // A waiter is served as soon as a connection of its database comes back.
    let waiter = tokio::spawn({
        let (pools, a) = (pools.clone(), a.clone());
        async move {
            pools
                .acquire(&a)
                .await
                .map(|conn| conn.database().to_owned())
        }
    });
    tokio::task::yield_now().await;
    drop(held_a);
    assert_eq!(waiter.await.unwrap().unwrap(), a);
    drop(held_b);

    pools.close().await;
    drop_all(dbs).await;
}

#[tokio::test]
async fn close_waits_for_connections_in_use_and_refuses_new_ones() {
    let dbs = databases(1).await;
    let name = dbs[0].name().to_owned();
    let pools = pools(DatabasePoolConfig::default(), server().await);
    assert!(
        TenantDatabases::new(server().await, DatabasePoolConfig::default().with_budget(0)).is_err()
    );

    let held = pools.acquire(&name).await.unwrap();
    assert_eq!(pools.stats().open, 1);
    // Poll `close` once, here: it starts, and cannot finish yet.
    let mut closing = Box::pin(pools.close());
    let first = std::future::poll_fn(|cx| Poll::Ready(closing.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "close returned with a connection in use"
    );
    // It has started: acquires are refused as closed...
    assert!(matches!(
        pools.acquire(&name).await,
        Err(Error::Database {
            source: sqlx::Error::PoolClosed,
            ..
        })
    ));
    // ... and it waits for the connection in use, still counted, however
    // long it is driven.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut closing)
            .await
            .is_err(),
        "close returned with a connection in use"
    );
    assert_eq!(pools.stats().open, 1, "the connection in use is counted");
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .expect("close finishes once the connection is back");
    let stats = pools.stats();
    assert_eq!((stats.open, stats.idle, stats.databases), (0, 0, 0));

    drop_all(dbs).await;
}
