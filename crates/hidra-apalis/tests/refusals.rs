//! Jobs of tenants that are suspended or gone when the job comes up: never
//! run as that tenant (nor any other), and settled as the policy says.

mod common;

use std::time::Duration;

use apalis::prelude::TaskId;
use common::*;
use hidra::{Confirmation, Tenant, TenantStatus};
use hidra_apalis::{Refusal, TenantJobs, TenantQueue};

/// A fresh database with tenants `acme` (suspended after a probe job
/// `label` was enqueued for it) and `globex`.
async fn job_of_suspended_acme(label: &str) -> (Ctx, [Tenant; 2], TenantQueue<Probe>, TaskId) {
    let (ctx, [acme, globex], queue) = with_tenants(["acme", "globex"]).await;
    let id = queue.push_for(&acme, Probe::new(label)).await.unwrap();
    ctx.hidra.suspend(&acme.id).await.unwrap();
    (ctx, [acme, globex], queue, id)
}

#[tokio::test]
async fn a_suspended_tenants_job_is_dead_lettered_and_others_run() {
    let (ctx, [acme, globex], queue, refused) = job_of_suspended_acme("acme-1").await;
    let runs_ok = queue
        .push_for(&globex, Probe::new("globex-1"))
        .await
        .unwrap();

    let layer = ctx.jobs.layer().on_unavailable(Refusal::DeadLetter);
    let _worker = worker("dead-letter", &queue, layer);

    let row = wait_for_status(&ctx.jobs, &refused, "Killed").await;
    let result = row.last_result.unwrap().to_string();
    assert!(result.contains("tenant `acme` is suspended"), "{result}");
    wait_for_status(&ctx.jobs, &runs_ok, "Done").await;

    assert_eq!(runs(&ctx.hidra, &acme).await, []);
    assert_eq!(completed(&ctx.hidra, &globex).await, ["globex-1"]);
}

#[tokio::test]
async fn a_suspended_tenants_job_waits_and_runs_once_it_is_active() {
    let (ctx, [acme, _], queue, id) = job_of_suspended_acme("later").await;

    let layer = ctx
        .jobs
        .layer()
        .on_unavailable(Refusal::RetryAfter(Duration::from_millis(500)));
    let _worker = worker("retry-later", &queue, layer);

    // Refused once at least: back to pending, the refusal as its result.
    wait_for("the job to be refused", || async {
        job_row(&ctx.jobs, &id)
            .await
            .and_then(|row| row.last_result)
            .filter(|result| result.to_string().contains("is suspended"))
    })
    .await;
    assert_eq!(runs(&ctx.hidra, &acme).await, []);

    ctx.hidra.activate(&acme.id).await.unwrap();
    let row = wait_for_status(&ctx.jobs, &id, "Done").await;
    assert_eq!(completed(&ctx.hidra, &acme).await, ["later"]);
    // The refusals did not use up attempts: this is the first.
    assert_eq!(row.attempts, 1);
}

#[tokio::test]
async fn a_suspended_tenants_job_can_be_dropped() {
    let (ctx, [acme, _], queue, id) = job_of_suspended_acme("dropped").await;

    let layer = ctx.jobs.layer().on_unavailable(Refusal::Drop);
    let _worker = worker("drop", &queue, layer);

    wait_for("the job to be deleted", || async {
        job_row(&ctx.jobs, &id).await.is_none().then_some(())
    })
    .await;
    assert_eq!(runs(&ctx.hidra, &acme).await, []);
}

#[tokio::test]
async fn a_job_of_a_tenant_deleted_and_registered_again_is_never_run() {
    let ctx = setup().await;
    let first = tenant_marked(&ctx.hidra, "acme", "first acme").await;
    let queue = probes(&ctx.jobs);
    let id = queue.push_for(&first, Probe::new("first's")).await.unwrap();
    ctx.hidra
        .deprovision(&first.id, Confirmation::of(&first.id))
        .await
        .unwrap();
    let second = tenant_marked(&ctx.hidra, "acme", "second acme").await;
    let second_job = queue
        .push_for(&second, Probe::new("second's"))
        .await
        .unwrap();

    let _worker = worker("incarnations", &queue, ctx.jobs.layer());

    let row = wait_for_status(&ctx.jobs, &id, "Killed").await;
    let result = row.last_result.unwrap().to_string();
    assert!(result.contains("registered again"), "{result}");
    wait_for_status(&ctx.jobs, &second_job, "Done").await;
    // Status: each incarnation sees its own job only; another tenant none.
    let own = queue
        .status(&second, &second_job.to_string())
        .await
        .unwrap()
        .expect("the second incarnation's job");
    assert_eq!((own.status.as_str(), own.attempts), ("Done", 1));
    assert_eq!(own.id, second_job.to_string());
    assert_eq!(queue.status(&second, &id.to_string()).await.unwrap(), None);
    assert_eq!(
        queue.status(&first, &second_job.to_string()).await.unwrap(),
        None
    );
    let other = tenant_marked(&ctx.hidra, "globex", "globex").await;
    assert_eq!(
        queue.status(&other, &second_job.to_string()).await.unwrap(),
        None
    );
    assert_eq!(queue.status(&second, "no-such-job").await.unwrap(), None);
    let runs = runs(&ctx.hidra, &second).await;
    assert!(
        runs.iter()
            .all(|r| r.label == "second's" && r.seen == "second acme"),
        "{runs:?}"
    );
}

#[tokio::test]
async fn a_deleted_tenants_job_is_dead_lettered() {
    let (ctx, [acme], queue) = with_tenants(["acme"]).await;
    let id = queue.push_for(&acme, Probe::new("gone")).await.unwrap();
    ctx.hidra
        .deprovision(&acme.id, Confirmation::of(&acme.id))
        .await
        .unwrap();

    let _worker = worker("gone", &queue, ctx.jobs.layer());

    let row = wait_for_status(&ctx.jobs, &id, "Killed").await;
    assert_eq!(row.tenant, "acme");
    let result = row.last_result.unwrap().to_string();
    assert!(
        result.contains("tenant `acme` is not registered"),
        "{result}"
    );
}

#[tokio::test]
async fn a_suspension_reaches_a_running_worker_through_the_registry() {
    let ctx = setup().await;
    // A cache that would keep the tenant for an hour: only the registry's
    // notification can tell the worker of the suspension.
    let jobs = TenantJobs::builder(&ctx.hidra)
        .cache_ttl(Duration::from_secs(3600))
        .build();
    let acme = tenant(&ctx.hidra, "acme").await;
    let queue = probes(&jobs);
    let layer = jobs.layer().on_unavailable(Refusal::DeadLetter);
    let _worker = worker("listening", &queue, layer);

    let before = queue.push_for(&acme, Probe::new("before")).await.unwrap();
    wait_for_status(&jobs, &before, "Done").await;

    ctx.hidra.suspend(&acme.id).await.unwrap();
    wait_for("the workers to see the suspension", || async {
        let seen = jobs.tenant(&acme.id).await.unwrap().unwrap();
        (seen.status == TenantStatus::Suspended).then_some(())
    })
    .await;

    let after = queue.push_for(&acme, Probe::new("after")).await.unwrap();
    wait_for_status(&jobs, &after, "Killed").await;
    assert_eq!(completed(&ctx.hidra, &acme).await, ["before"]);
}
