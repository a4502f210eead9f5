//! Background jobs (hidra-apalis): each order's confirmation.
//!
//! `POST /orders` enqueues a [`ConfirmOrder`] job in the order's own
//! transaction ([`TenantQueue::push_in`]): the order and its job are
//! committed, or rolled back, together. A tenant on another server than the
//! job table (`--servers`) cannot do that: its job is enqueued at once, before
//! the order commits, and [`confirm_order`] waits for the order (up to
//! [`ORDER_WAIT`]); an order rolled back leaves a job that confirms nothing.
//! A worker started with the server
//! ([`spawn_worker`]) runs [`confirm_order`] as the job's tenant, which sets
//! the order's `confirmed_at`. `GET /orders/{id}/confirmation` reads the
//! job's status from apalis's table.

use std::time::Duration;

use hidra_apalis::apalis::prelude::{BoxDynError, WorkerBuilder, WorkerError};
use hidra_apalis::apalis_postgres::Config;
use hidra_apalis::{TenantJob, TenantJobContext, TenantJobs, TenantQueue};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The queue (apalis job type) of order confirmations.
pub const CONFIRMATIONS: &str = "order-confirmation";

/// How often the worker reports to apalis-postgres. apalis writes a finished
/// job's status at the worker's next wake-up, a new job or this heartbeat,
/// so it is also how stale `GET /orders/{id}/confirmation` can be (the
/// order's own `confirmed_at` is not). apalis's default is 30 s.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Heartbeats a worker may miss before its jobs are taken over (30 s).
const MISSED_HEARTBEATS: usize = 15;

/// How long a stopping worker may take to finish the job it is running.
const WORKER_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The job: confirm order `order_id` of the job's tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfirmOrder {
    /// The order, in the job's tenant.
    pub order_id: i64,
}

/// How long [`confirm_order`] waits for an order enqueued before its
/// transaction committed (see the module docs).
pub const ORDER_WAIT: Duration = Duration::from_secs(10);

/// Confirms the order, in the job's tenant's schema. Idempotent, as a job
/// may run more than once (a worker killed mid-job leaves it to run again):
/// an order already confirmed keeps its first `confirmed_at`. An order not
/// there yet is waited for, up to [`ORDER_WAIT`]. Returns whether this run
/// confirmed it (apalis records it as the job's result).
pub async fn confirm_order(
    job: TenantJob<ConfirmOrder>,
    ctx: TenantJobContext,
) -> Result<bool, BoxDynError> {
    let deadline = tokio::time::Instant::now() + ORDER_WAIT;
    let confirmed = loop {
        let mut tx = ctx.begin().await?;
        // The outer scan sees the order as it was before the update.
        let (exists, confirmed): (bool, bool) = sqlx::query_as(
            "WITH c AS (UPDATE orders SET confirmed_at = now() \
                        WHERE id = $1 AND confirmed_at IS NULL RETURNING id) \
             SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1), EXISTS (SELECT 1 FROM c)",
        )
        .bind(job.order_id)
        .fetch_one(&mut tx)
        .await?;
        tx.commit().await?;
        if exists || tokio::time::Instant::now() >= deadline {
            break confirmed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tracing::info!(tenant = %ctx.tenant_id(), order = job.order_id, confirmed, "order confirmation ran");
    Ok(confirmed)
}

/// Enqueues the confirmation of order `order_id` of `tenant`: in `tx`, the
/// order's transaction, where the job table is at hand; else at once (see
/// the module docs). Returns the job's id.
pub async fn enqueue_confirmation(
    confirmations: &TenantQueue<ConfirmOrder>,
    tx: &mut hidra::TenantTx,
    tenant: &hidra::Tenant,
    order_id: i64,
) -> Result<String, hidra_apalis::Error> {
    let job = ConfirmOrder { order_id };
    let id = match confirmations.push_in(tx, job.clone()).await {
        Err(hidra_apalis::Error::OwnDatabase(_)) => confirmations.push_for(tenant, job).await?,
        other => other?,
    };
    Ok(id.to_string())
}

/// The order confirmation queue of `jobs`.
pub fn confirmations(jobs: &TenantJobs) -> TenantQueue<ConfirmOrder> {
    jobs.queue(CONFIRMATIONS).with_config(
        Config::default()
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS),
    )
}

/// A running confirmation worker; [`stop`](ConfirmationWorker::stop) ends it.
#[derive(Debug)]
pub struct ConfirmationWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts a worker of `confirmations` under `jobs`' tenant layer, named after
/// this process (apalis registers workers by name).
pub fn spawn_worker(
    jobs: &TenantJobs,
    confirmations: &TenantQueue<ConfirmOrder>,
) -> ConfirmationWorker {
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = WorkerBuilder::new(format!("confirm-{}", std::process::id()))
        .backend(confirmations.storage())
        .layer(jobs.layer())
        .build(confirm_order);
    let task = tokio::spawn(async move {
        let signal = async move {
            // A dropped sender stops the worker too.
            let _ = stopped.await;
            Ok::<(), WorkerError>(())
        };
        if let Err(e) = worker.run_until(signal).await {
            tracing::error!(error = %e, "the order confirmation worker stopped");
        }
    });
    ConfirmationWorker { stop, task }
}

impl ConfirmationWorker {
    /// Stops taking jobs and waits (at most 30 s) for the running ones.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(WORKER_STOP_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("the order confirmation worker did not stop in time; aborted");
            task.abort();
        }
    }
}
