//! Database outages, against a throw-away cluster of the test's own (never the
//! shared server): checkouts fail fast with a retryable error while the server
//! is stopped, service resumes by itself once it is back, and no answer ever
//! comes from the wrong tenant.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hidra::testing::TempCluster;
use hidra::{Error, Hidra, Tenant};

/// What the load saw.
#[derive(Default)]
struct Seen {
    ok: AtomicUsize,
    retryable: AtomicUsize,
    other: AtomicUsize,
    wrong_tenant: AtomicUsize,
    /// The longest a failed checkout took, in ms.
    slowest_failure_ms: AtomicUsize,
}

async fn one(h: &Hidra, t: &Tenant, seen: &Seen) {
    let started = Instant::now();
    let result: Result<String, Error> = async {
        let mut conn = h.acquire(t).await?;
        sqlx::query_scalar("SELECT tenant FROM marker")
            .fetch_one(&mut conn)
            .await
            .map_err(|source| Error::Database {
                context: "reading the marker",
                source,
            })
    }
    .await;
    match result {
        Ok(marker) if marker == t.id.as_str() => {
            seen.ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {
            seen.wrong_tenant.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) if e.is_retryable() => {
            seen.retryable.fetch_add(1, Ordering::Relaxed);
            let ms = started.elapsed().as_millis() as usize;
            seen.slowest_failure_ms.fetch_max(ms, Ordering::Relaxed);
        }
        Err(e) => {
            eprintln!("not retryable: {e:?}");
            seen.other.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs `tasks` workers over `tenants` until `stop`.
fn load(
    h: &Hidra,
    tenants: &[Tenant],
    seen: &Arc<Seen>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|w| {
            let (h, ts, seen, stop) = (h.clone(), tenants.to_vec(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Acquire) {
                    one(&h, &ts[i % ts.len()], &seen).await;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

/// Waits until the load has been served 50 more times, then stops it.
async fn settle(seen: &Seen, stop: &AtomicBool, workers: Vec<tokio::task::JoinHandle<()>>) {
    let ok_after = seen.ok.load(Ordering::Relaxed);
    while seen.ok.load(Ordering::Relaxed) < ok_after + 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
}

/// Waits until a checkout for `t` succeeds; returns how long that took.
async fn until_served(h: &Hidra, t: &Tenant) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(mut conn) = h.acquire(t).await
            && sqlx::query("SELECT 1").execute(&mut conn).await.is_ok()
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "service did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_server_fails_checkouts_fast_and_service_comes_back() {
    let mut cluster = TempCluster::start()
        .await
        .expect("start a throw-away cluster");
    // A long acquire timeout: a checkout that waits for it is unmistakable.
    const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
    let h = Hidra::builder()
        .schema_sql("001_marker", MARKER_SCHEMA)
        .max_connections(4)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(cluster.url())
        .await
        .unwrap();
    h.install().await.unwrap();
    let tenants = vec![
        tenant_with_marker(&h, "down-a").await,
        tenant_with_marker(&h, "down-b").await,
    ];

    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let workers = load(&h, &tenants, &seen, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served_before = seen.ok.load(Ordering::Relaxed);
    assert!(served_before > 0, "the load runs");

    cluster.pause().await.unwrap();
    // While it is down: every failure is retryable and none waits for the
    // acquire timeout. Wait on the condition: enough failures seen.
    let down_at = Instant::now();
    while seen.retryable.load(Ordering::Relaxed) < 50 {
        assert!(
            down_at.elapsed() < ACQUIRE_TIMEOUT,
            "checkouts are not failing fast"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let direct = Instant::now();
    let err = h.acquire(&tenants[0]).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(direct.elapsed() < ACQUIRE_TIMEOUT / 2);

    cluster.resume().await.unwrap();
    let recovery = until_served(&h, &tenants[1]).await;
    settle(&seen, &stop, workers).await;
    eprintln!(
        "outage: {} served, {} retryable failures (slowest {} ms), recovery {recovery:?} after the server accepted connections",
        seen.ok.load(Ordering::Relaxed),
        seen.retryable.load(Ordering::Relaxed),
        seen.slowest_failure_ms.load(Ordering::Relaxed),
    );
    assert_eq!(seen.wrong_tenant.load(Ordering::Relaxed), 0);
    assert_eq!(
        seen.other.load(Ordering::Relaxed),
        0,
        "every failure was retryable"
    );
    assert!(
        (seen.slowest_failure_ms.load(Ordering::Relaxed) as u128) < ACQUIRE_TIMEOUT.as_millis() / 2,
        "no failed checkout waited for the acquire timeout"
    );
    h.close().await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_backends_give_retryable_errors_and_no_wrong_tenant() {
    let ctx = setup(4).await;
    let tenants = vec![
        tenant_with_marker(&ctx.hidra, "kill-a").await,
        tenant_with_marker(&ctx.hidra, "kill-b").await,
        tenant_with_marker(&ctx.hidra, "kill-c").await,
    ];
    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let workers = load(&ctx.hidra, &tenants, &seen, &stop);
    let admin = sqlx::PgPool::connect(ctx.db.url()).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&admin)
        .await
        .unwrap();
    }
    settle(&seen, &stop, workers).await;
    assert_eq!(seen.wrong_tenant.load(Ordering::Relaxed), 0);
    assert_eq!(
        seen.other.load(Ordering::Relaxed),
        0,
        "every failure was retryable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_per_tenant_checkouts_fail_fast_too() {
    let mut cluster = TempCluster::start()
        .await
        .expect("start a throw-away cluster");
    const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
    let h = Hidra::builder()
        .schema_sql("001_marker", MARKER_SCHEMA)
        .database_per_tenant(hidra::DatabasePoolConfig::new().with_acquire_timeout(ACQUIRE_TIMEOUT))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(cluster.url())
        .await
        .unwrap();
    h.install().await.unwrap();
    let mut tenants = Vec::new();
    for name in ["own-a", "own-b"] {
        let tenant = h
            .provision(hidra::NewTenant::new(id(name)).strategy(hidra::Strategy::Database))
            .await
            .unwrap();
        let mut conn = h.acquire(&tenant).await.unwrap();
        sqlx::query("INSERT INTO marker (tenant) VALUES ($1)")
            .bind(name)
            .execute(&mut conn)
            .await
            .unwrap();
        tenants.push(tenant);
    }
    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let workers = load(&h, &tenants, &seen, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.ok.load(Ordering::Relaxed) > 0, "the load runs");

    cluster.pause().await.unwrap();
    let down_at = Instant::now();
    while seen.retryable.load(Ordering::Relaxed) < 50 {
        assert!(
            down_at.elapsed() < ACQUIRE_TIMEOUT,
            "checkouts are not failing fast"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let direct = Instant::now();
    let err = h.begin(&tenants[0]).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        direct.elapsed() < Duration::from_secs(2),
        "{:?}",
        direct.elapsed()
    );

    cluster.resume().await.unwrap();
    let recovery = until_served(&h, &tenants[1]).await;
    settle(&seen, &stop, workers).await;
    eprintln!(
        "database-per-tenant outage: {} served, {} retryable failures (slowest {} ms), recovery {recovery:?}",
        seen.ok.load(Ordering::Relaxed),
        seen.retryable.load(Ordering::Relaxed),
        seen.slowest_failure_ms.load(Ordering::Relaxed),
    );
    assert_eq!(seen.wrong_tenant.load(Ordering::Relaxed), 0);
    assert_eq!(
        seen.other.load(Ordering::Relaxed),
        0,
        "every failure was retryable"
    );
    assert!(
        seen.slowest_failure_ms.load(Ordering::Relaxed) < 2000,
        "no failed checkout waited long"
    );
    h.close().await;
    cluster.stop().await.unwrap();
}
