//! A job for every active tenant.

mod common;

use common::*;

#[tokio::test]
async fn a_job_for_every_active_tenant_runs_once_for_each() {
    let (ctx, [t1, t2, t3, t4, t5, suspended], queue) =
        with_tenants(["t1", "t2", "t3", "t4", "t5", "t6"]).await;
    ctx.hidra.suspend(&suspended.id).await.unwrap();
    let active = [t1, t2, t3, t4, t5];

    // Pages of two tenants, two pages written at once.
    let enqueued = queue
        .push_to_all(Probe::new("nightly"))
        .page_size(2)
        .concurrency(2)
        .await
        .unwrap();
    assert_eq!(enqueued, 5);

    let (per_tenant,): (Vec<String>,) = sqlx::query_as(
        "SELECT array_agg(tenant ORDER BY tenant) FROM \
         (SELECT convert_from(job, 'UTF8')::jsonb ->> 'tenant' AS tenant FROM apalis.jobs) j",
    )
    .fetch_one(ctx.jobs.pool())
    .await
    .unwrap();
    assert_eq!(per_tenant, ["t1", "t2", "t3", "t4", "t5"]);

    let _worker = worker("fan-out", &queue, ctx.jobs.layer());
    for tenant in &active {
        let name = tenant.id.as_str();
        let runs = wait_for(&format!("{name}'s job"), || async {
            let runs = runs(&ctx.hidra, tenant).await;
            runs.iter().any(|r| r.phase == "completed").then_some(runs)
        })
        .await;
        assert_eq!(
            runs.len(),
            2,
            "{name}: one job, started and completed: {runs:?}"
        );
        assert!(runs.iter().all(|r| r.seen == name), "{runs:?}");
    }
    assert_eq!(runs(&ctx.hidra, &suspended).await, []);
}

#[tokio::test]
async fn a_fan_out_over_no_tenant_enqueues_nothing() {
    let ctx = setup().await;
    let enqueued = probes(&ctx.jobs)
        .push_to_all(Probe::new("nobody"))
        .await
        .unwrap();
    assert_eq!(enqueued, 0);
}
