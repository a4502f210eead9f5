//! A worker process killed (SIGKILL) in the middle of a job: once its
//! heartbeats stop, another worker takes the job over and runs it to
//! completion, as its tenant.
//!
//! The killed worker is this test binary run again as a child, in the
//! ignored test `killable_worker`, told its database by an environment
//! variable.

mod common;

use apalis::prelude::*;
use common::*;
use hidra_apalis::TenantJobs;

/// The child's database URL.
const CHILD_DB: &str = "HIDRA_APALIS_KILLABLE_WORKER_DB";

#[tokio::test]
async fn a_job_whose_worker_is_killed_mid_job_runs_again_to_completion_as_its_tenant() {
    let (ctx, [acme, globex], queue) = with_tenants(["acme", "globex"]).await;
    let id = queue
        .push_for(&acme, Probe::new("interrupted"))
        .await
        .unwrap();

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["killable_worker", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_DB, ctx.db.url())
        .kill_on_drop(true)
        .spawn()
        .expect("start the child worker");

    // The child got as far as the job's first write, then hangs.
    wait_for("the child to start the job", || async {
        let runs = runs(&ctx.hidra, &acme).await;
        (runs.len() == 1).then_some(())
    })
    .await;
    child.kill().await.expect("SIGKILL the child");

    // A worker of this process takes the orphaned job over once the child's
    // last heartbeat is two intervals old.
    let _worker = worker("survivor", &queue, ctx.jobs.layer());
    let row = wait_for_status(&ctx.jobs, &id, "Done").await;
    assert_eq!(row.tenant, "acme");

    let runs = runs(&ctx.hidra, &acme).await;
    let phases: Vec<&str> = runs.iter().map(|r| r.phase.as_str()).collect();
    assert_eq!(phases, ["started", "started", "completed"], "{runs:?}");
    for run in &runs {
        assert_eq!(run.label, "interrupted");
        assert_eq!(run.seen, "acme", "{run:?}");
        assert_eq!(run.current.as_deref(), Some("acme"), "{run:?}");
    }
    assert_eq!(common::runs(&ctx.hidra, &globex).await, []);
}

/// The worker `a_job_whose_worker_is_killed_mid_job_…` kills: it records
/// that its job started, then hangs.
#[tokio::test]
#[ignore = "a child process of a_job_whose_worker_is_killed_mid_job_runs_again_to_completion_as_its_tenant"]
async fn killable_worker() {
    let url = std::env::var(CHILD_DB)
        .unwrap_or_else(|_| panic!("run by the worker_killed test, which sets {CHILD_DB}"));
    let hidra = connect(&url).await;
    let jobs = TenantJobs::new(&hidra);
    let queue = probes(&jobs);
    let worker = WorkerBuilder::new(format!("killable-{}", std::process::id()))
        .backend(queue.storage())
        .data(HangAfterStart(true))
        .layer(jobs.layer())
        .build(probe);
    worker.run().await.unwrap();
}
