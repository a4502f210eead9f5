//! One tenant cannot take the whole shared pool: a tenant at its cap waits
//! for one of its own connections, outside the pool's queue, while the other
//! tenants are served; past its wait it gets a typed, retryable error.

mod common;

use std::time::Duration;

use common::{MARKER_SCHEMA, setup_with, tenant_with_marker};
use hidra::{Error, Hidra, TenantCap};

fn capped(max: u32, cap: u32, wait: Duration) -> hidra::HidraBuilder {
    Hidra::builder()
        .schema_sql("001_marker", MARKER_SCHEMA)
        .max_connections(max)
        .tenant_cap(TenantCap::Connections(cap))
        .tenant_wait(wait)
}

async fn marker(conn: &mut hidra::TenantConn) -> String {
    sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenant_at_its_cap_waits_while_the_others_are_served() {
    let ctx = setup_with(capped(4, 2, Duration::from_secs(30))).await;
    let a = tenant_with_marker(&ctx.hidra, "a").await;
    let b = tenant_with_marker(&ctx.hidra, "b").await;

    let a1 = ctx.hidra.acquire(&a).await.unwrap();
    let _a2 = ctx.hidra.begin(&a).await.unwrap();
    let hidra = ctx.hidra.clone();
    let a3 = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut conn = hidra.acquire(&a).await?;
            Ok::<_, Error>(marker(&mut conn).await)
        })
    };
    // Two of the four connections are free, but a is at its cap: b is served.
    let mut conn = ctx.hidra.acquire(&b).await.unwrap();
    assert_eq!(marker(&mut conn).await, "b");
    drop(conn);
    assert!(!a3.is_finished(), "a took a third connection");
    // One of a's own comes back: the waiting checkout gets it.
    drop(a1);
    assert_eq!(a3.await.unwrap().unwrap(), "a");
}

#[tokio::test]
async fn past_its_wait_a_capped_checkout_is_a_retryable_tenant_busy() {
    let ctx = setup_with(capped(4, 1, Duration::from_millis(200))).await;
    let a = tenant_with_marker(&ctx.hidra, "a").await;
    let b = tenant_with_marker(&ctx.hidra, "b").await;
    let held = ctx.hidra.acquire(&a).await.unwrap();
    for _ in 0..2 {
        let busy = ctx.hidra.acquire(&a).await.unwrap_err();
        assert!(
            matches!(&busy, Error::TenantBusy { id, cap: 1, .. } if id.as_str() == "a"),
            "{busy:?}"
        );
        assert!(busy.is_retryable());
        let busy = ctx.hidra.begin(&a).await.unwrap_err();
        assert!(matches!(busy, Error::TenantBusy { .. }), "{busy:?}");
    }
    // Waiting took no connection from the pool: b still gets one, and a
    // gets its own once it is given back.
    let mut conn = ctx.hidra.acquire(&b).await.unwrap();
    assert_eq!(marker(&mut conn).await, "b");
    drop(held);
    let mut conn = ctx.hidra.acquire(&a).await.unwrap();
    assert_eq!(marker(&mut conn).await, "a");
}

#[tokio::test]
async fn interleaved_cancelled_and_panicking_work_under_a_cap_of_one_leaks_no_share() {
    let ctx = setup_with(capped(4, 1, Duration::from_secs(20))).await;
    let mut tenants = Vec::new();
    for name in ["t0", "t1", "t2", "t3", "t4", "t5"] {
        tenants.push(tenant_with_marker(&ctx.hidra, name).await);
    }
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let (hidra, tenant) = (ctx.hidra.clone(), tenants[i % tenants.len()].clone());
        tasks.push(tokio::spawn(async move {
            let work = async {
                if i % 2 == 0 {
                    let mut conn = hidra.acquire(&tenant).await.unwrap();
                    let seen = marker(&mut conn).await;
                    assert_eq!(seen, tenant.id.as_str());
                } else {
                    let mut tx = hidra.begin(&tenant).await.unwrap();
                    let seen: String = sqlx::query_scalar("SELECT tenant FROM marker")
                        .fetch_one(&mut tx)
                        .await
                        .unwrap();
                    assert_eq!(seen, tenant.id.as_str());
                    if i % 7 == 0 {
                        panic!("a handler panics holding its transaction");
                    }
                    tx.commit().await.unwrap();
                }
            };
            if i % 5 == 0 {
                // Cut off at some point of the checkout or the statement.
                let _ =
                    tokio::time::timeout(Duration::from_micros(200 * (i as u64 % 11)), work).await;
            } else {
                work.await;
            }
        }));
    }
    let mut panicked = 0;
    for task in tasks {
        if let Err(e) = task.await {
            assert!(e.is_panic());
            panicked += 1;
        }
    }
    assert!(panicked > 0);
    // Every share came back: with a cap of one, each tenant is served again
    // (a leaked share would make this wait 20 s and fail).
    for tenant in &tenants {
        let mut conn = tokio::time::timeout(Duration::from_secs(5), ctx.hidra.acquire(tenant))
            .await
            .expect("a share leaked")
            .unwrap();
        assert_eq!(marker(&mut conn).await, tenant.id.as_str());
    }
}
