//! Jobs of several tenants through one worker pool: each runs as its own
//! tenant and sees only its tenant's data.

mod common;

use apalis::prelude::*;
use common::*;
use hidra_apalis::{Error, TenantJob, TenantJobContext};

#[tokio::test]
async fn jobs_of_two_tenants_run_as_their_own_tenant_in_one_worker_pool() {
    let (ctx, [acme, globex], queue) = with_tenants(["acme", "globex"]).await;

    // Interleaved, by naming the tenant and through the current tenant (as a
    // request handler would).
    for i in 0..6 {
        queue
            .push_for(&acme, Probe::new(&format!("acme-{i}")))
            .await
            .unwrap();
        let pushed = hidra::context::scope(globex.clone(), async {
            queue.push(Probe::new(&format!("globex-{i}"))).await
        });
        pushed.await.unwrap();
    }

    // Two workers of one queue, each running several jobs at once.
    let _one = worker("pool-1", &queue, ctx.jobs.layer());
    let _two = worker("pool-2", &queue, ctx.jobs.layer());

    let (acme_runs, globex_runs) = wait_for("twelve completed jobs", || async {
        let a = runs(&ctx.hidra, &acme).await;
        let g = runs(&ctx.hidra, &globex).await;
        let done = |r: &[Run]| r.iter().filter(|r| r.phase == "completed").count();
        (done(&a) + done(&g) == 12).then_some((a, g))
    })
    .await;
    for (name, runs) in [("acme", &acme_runs), ("globex", &globex_runs)] {
        assert_eq!(runs.len(), 12, "{name}: six jobs, started and completed");
        for run in runs {
            assert!(run.label.starts_with(name), "{name} ran {run:?}");
            assert_eq!(run.seen, name, "{name}'s job saw another schema: {run:?}");
            assert_eq!(
                run.current.as_deref(),
                Some(name),
                "current tenant: {run:?}"
            );
            assert_eq!(run.context, name, "job context: {run:?}");
        }
    }
}

#[tokio::test]
async fn push_without_a_current_tenant_is_refused() {
    let ctx = setup().await;
    let queue = probes(&ctx.jobs);
    let err = queue.push(Probe::new("nobody")).await.unwrap_err();
    assert!(matches!(err, Error::NoCurrentTenant), "{err}");
    let (queued,): (i64,) = sqlx::query_as("SELECT count(*) FROM apalis.jobs")
        .fetch_one(ctx.jobs.pool())
        .await
        .unwrap();
    assert_eq!(queued, 0);
}

/// A job function that asks for its tenant, on a worker without the layer.
async fn needs_context(_: TenantJob<Probe>, _: TenantJobContext) -> Result<(), BoxDynError> {
    Ok(())
}

#[tokio::test]
async fn a_worker_without_the_layer_runs_no_tenant_job() {
    let (ctx, [acme], queue) = with_tenants(["acme"]).await;
    let id = queue.push_for(&acme, Probe::new("orphan")).await.unwrap();

    let worker = WorkerBuilder::new("no-layer")
        .backend(queue.storage())
        .build(needs_context);
    let _running = tokio::spawn(worker.run());

    let row = wait_for_status(&ctx.jobs, &id, "Failed").await;
    let result = row.last_result.unwrap().to_string();
    assert!(result.contains("TenantJobLayer"), "{result}");
}
