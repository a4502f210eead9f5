//! Per-tenant load: what `Hidra::load` counts for each tenant (connections
//! held and for how long, waits and refusals at the cap, cancelled
//! statements), and that its reports stay bounded however many tenants.

mod common;

use std::time::Duration;

use common::{MARKER_SCHEMA, setup_with, tenant_with_marker};
use hidra::{Error, Hidra, OTHER_TENANTS, TenantCap};

#[tokio::test]
async fn checkouts_connection_time_waits_and_refusals_are_counted_per_tenant() {
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql("001_marker", MARKER_SCHEMA)
            .max_connections(4)
            .tenant_cap(TenantCap::Connections(1))
            .tenant_wait(Duration::from_millis(100)),
    )
    .await;
    let h = &ctx.hidra;
    let a = tenant_with_marker(h, "a").await;
    let b = tenant_with_marker(h, "b").await;
    let before = h.load().get(&a.id).unwrap();

    let held = h.begin(&a).await.unwrap();
    assert!(matches!(h.acquire(&a).await, Err(Error::TenantBusy { .. })));
    let now = h.load().get(&a.id).unwrap();
    assert_eq!(now.connections, 1);
    assert_eq!(now.checkouts, before.checkouts + 1);
    assert_eq!((now.waits, now.busy), (before.waits + 1, before.busy + 1));
    // The busiest tenant right now is the one holding a connection.
    let busiest = h.load().busiest(1);
    assert_eq!(busiest.top[0].0, a.id);
    assert_eq!(busiest.other.connections, 0);
    assert_eq!(busiest.other_tenants, 1);

    // A waiting checkout is counted as a wait, not a refusal.
    let waiting = tokio::spawn({
        let (h, a) = (h.clone(), a.clone());
        async move { h.acquire(&a).await.map(drop) }
    });
    // On this single-threaded runtime, a few yields run it up to the wait.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished());
    drop(held);
    waiting.await.unwrap().unwrap();
    let after = h.load().get(&a.id).unwrap();
    assert_eq!(after.connections, 0);
    assert_eq!(after.checkouts, before.checkouts + 2);
    assert_eq!(
        (after.waits, after.busy),
        (before.waits + 2, before.busy + 1)
    );
    assert!(after.connection_seconds > now.connection_seconds);
    // Nothing of it is counted against b.
    let b_load = h.load().get(&b.id).unwrap();
    assert_eq!((b_load.busy, b_load.waits, b_load.connections), (0, 0, 0));
}

#[tokio::test]
async fn statements_cut_off_by_the_tenants_timeout_are_counted_for_it_only() {
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql("001_marker", MARKER_SCHEMA)
            .statement_timeout(Duration::from_millis(100)),
    )
    .await;
    let h = &ctx.hidra;
    let a = tenant_with_marker(h, "a").await;
    let b = tenant_with_marker(h, "b").await;
    let mut conn = h.acquire(&a).await.unwrap();
    assert!(
        sqlx::query("SELECT pg_sleep(1)")
            .execute(&mut conn)
            .await
            .is_err()
    );
    drop(conn);
    let mut tx = h.begin(&a).await.unwrap();
    assert!(
        sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_sleep(1)")
            .fetch_all(&mut tx)
            .await
            .is_err()
    );
    drop(tx);
    let mut conn = h.acquire(&b).await.unwrap();
    sqlx::query("SELECT pg_sleep(0.01)")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(h.load().get(&a.id).unwrap().cancelled, 2);
    assert_eq!(h.load().get(&b.id).unwrap().cancelled, 0);
}

#[tokio::test]
async fn a_thousand_tenants_give_at_most_n_plus_one_series_per_metric() {
    let ctx = setup_with(Hidra::builder().schema_sql("001_marker", MARKER_SCHEMA)).await;
    let h = &ctx.hidra;
    let real = tenant_with_marker(h, "real").await;
    // A thousand tenant records on the one schema: each checkout is counted
    // under its own id.
    for i in 0..1000 {
        let mut tenant = real.clone();
        tenant.id = hidra::TenantId::new(format!("t{i:04}")).unwrap();
        let mut conn = h.acquire(&tenant).await.unwrap();
        if i % 100 == 0 {
            // A few heavier ones, which must lead the report.
            sqlx::query("SELECT pg_sleep(0.02)")
                .execute(&mut conn)
                .await
                .unwrap();
        }
        h.load().record_request(&tenant.id);
    }
    const N: usize = 10;
    let report = h.load().top(N);
    assert_eq!(report.top.len(), N);
    assert_eq!(report.other_tenants, 1001 - N);
    let ids: Vec<&str> = report.top.iter().map(|(id, _)| id.as_str()).collect();
    for heavy in (0..1000).step_by(100).map(|i| format!("t{i:04}")) {
        assert!(
            ids.contains(&heavy.as_str()),
            "{heavy} missing from {ids:?}"
        );
    }
    let total: u64 =
        report.top.iter().map(|(_, l)| l.requests).sum::<u64>() + report.other.requests;
    assert_eq!(total, 1000);

    let text = report.to_prometheus();
    let mut metrics = 0;
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count();
        assert_eq!(series, N + 1, "{name}:\n{text}");
        metrics += 1;
    }
    assert!(metrics >= 8, "{text}");
    assert!(text.contains(&format!(
        "hidra_tenant_checkouts_total{{tenant=\"{OTHER_TENANTS}\"}}"
    )));
}
