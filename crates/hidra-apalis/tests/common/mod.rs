//! Shared setup for the integration tests: a throw-away database per test
//! with the registry and apalis-postgres's tables, tenants whose schema holds
//! a marker row saying whose it is, and a probe job that records what it saw.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use apalis::prelude::*;
use hidra::testing::TestDatabase;
use hidra::{Hidra, HidraBuilder, NewTenant, Tenant};
// Each test binary uses some of them.
use hidra_apalis::{TenantJob, TenantJobContext, TenantJobLayer, TenantJobs, TenantQueue};
#[allow(unused_imports)]
pub use hidra_test_support::{id, wait_for, write_marker};
use serde::{Deserialize, Serialize};

/// Every tenant's tables: a marker row naming the tenant, what probe jobs
/// saw, and orders (for jobs enqueued with one).
pub const SCHEMA: &str = "CREATE TABLE marker (tenant TEXT NOT NULL);
CREATE TABLE job_runs (id BIGSERIAL PRIMARY KEY, label TEXT NOT NULL, phase TEXT NOT NULL,
    seen TEXT NOT NULL, current TEXT, context TEXT NOT NULL);
CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, total INT NOT NULL);";

pub struct Ctx {
    pub db: TestDatabase,
    pub hidra: Hidra,
    pub jobs: TenantJobs,
}

/// A Hidra builder with the tests' tenant schema.
fn builder() -> HidraBuilder {
    Hidra::builder().schema_sql("001_probe", SCHEMA)
}

/// A Hidra handle with the tests' tenant schema, on `url`.
pub async fn connect(url: &str) -> Hidra {
    builder().connect(url).await.expect("connect hidra")
}

/// A fresh database with Hidra's and apalis's tables.
pub async fn setup() -> Ctx {
    let hidra_test_support::Ctx { db, hidra } = hidra_test_support::setup_with(builder()).await;
    let jobs = TenantJobs::new(&hidra);
    jobs.install().await.expect("install apalis-postgres");
    Ctx { db, hidra, jobs }
}

/// A fresh database with tenants `names` (each its own marker) and the
/// probe queue.
pub async fn with_tenants<const N: usize>(
    names: [&str; N],
) -> (Ctx, [Tenant; N], TenantQueue<Probe>) {
    let ctx = setup().await;
    let mut tenants = Vec::with_capacity(N);
    for name in names {
        tenants.push(tenant(&ctx.hidra, name).await);
    }
    let queue = probes(&ctx.jobs);
    let tenants = tenants.try_into().unwrap_or_else(|_| unreachable!());
    (ctx, tenants, queue)
}

/// Provisions `name` with `marker` as its marker row.
pub async fn tenant_marked(hidra: &Hidra, name: &str, marker: &str) -> Tenant {
    let tenant = hidra.provision(NewTenant::new(id(name))).await.unwrap();
    write_marker(hidra, &tenant, marker).await;
    tenant
}

/// Provisions `name` with its own name as its marker.
pub async fn tenant(hidra: &Hidra, name: &str) -> Tenant {
    tenant_marked(hidra, name, name).await
}

/// The probe job: a label, and how it should behave.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    pub label: String,
    /// An order whose presence it records (`-1` for none).
    #[serde(default)]
    pub order: i64,
}

impl Probe {
    pub fn new(label: &str) -> Self {
        Probe {
            label: label.into(),
            order: -1,
        }
    }
}

/// A worker's own behaviour: whether it stops forever after recording that
/// it started (to be killed there).
#[derive(Clone, Copy, Debug)]
pub struct HangAfterStart(pub bool);

/// Records, in its tenant's schema, the marker it sees through its context's
/// connection, the current tenant of its task and its context's tenant; then
/// that it completed. An order named in the job is recorded as its label's
/// suffix when found.
pub async fn probe(
    job: TenantJob<Probe>,
    ctx: TenantJobContext,
    hang: Data<HangAfterStart>,
) -> Result<(), BoxDynError> {
    record(&job, &ctx, "started").await?;
    if hang.0.0 {
        std::future::pending::<()>().await;
    }
    record(&job, &ctx, "completed").await
}

async fn record(
    job: &TenantJob<Probe>,
    ctx: &TenantJobContext,
    phase: &str,
) -> Result<(), BoxDynError> {
    let mut tx = ctx.begin().await?;
    let (seen,): (String,) = sqlx::query_as("SELECT tenant FROM marker")
        .fetch_one(&mut tx)
        .await?;
    let (orders,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE id = $1")
        .bind(job.order)
        .fetch_one(&mut tx)
        .await?;
    let label = if orders > 0 {
        format!("{}+order", job.label)
    } else {
        job.label.clone()
    };
    sqlx::query(
        "INSERT INTO job_runs (label, phase, seen, current, context) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(label)
    .bind(phase)
    .bind(seen)
    .bind(hidra::context::current_id().map(|id| id.to_string()))
    .bind(ctx.tenant_id().as_str())
    .execute(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One row of `job_runs`.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Run {
    pub label: String,
    pub phase: String,
    pub seen: String,
    pub current: Option<String>,
    pub context: String,
}

/// What the probe jobs recorded in `tenant`'s schema, in order.
pub async fn runs(hidra: &Hidra, tenant: &Tenant) -> Vec<Run> {
    let mut conn = hidra.acquire(tenant).await.unwrap();
    sqlx::query_as("SELECT label, phase, seen, current, context FROM job_runs ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// The labels of `tenant`'s completed probe jobs, sorted.
pub async fn completed(hidra: &Hidra, tenant: &Tenant) -> Vec<String> {
    let mut labels: Vec<String> = runs(hidra, tenant)
        .await
        .into_iter()
        .filter(|r| r.phase == "completed")
        .map(|r| r.label)
        .collect();
    labels.sort();
    labels
}

/// The probe queue, with heartbeats every second and workers given up after
/// two missed ones (the tests' scale, not production's).
pub fn probes(jobs: &TenantJobs) -> TenantQueue<Probe> {
    jobs.queue::<Probe>("probe").with_config(
        apalis_postgres::Config::default()
            .heartbeat_interval(Duration::from_secs(1))
            .missed_heartbeats(2),
    )
}

/// A running worker; aborted when dropped.
pub struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a worker named `name` of `queue`'s probes under `layer`.
pub fn worker(name: &str, queue: &TenantQueue<Probe>, layer: TenantJobLayer) -> Running {
    let worker = WorkerBuilder::new(name)
        .backend(queue.storage())
        .data(HangAfterStart(false))
        .layer(layer)
        .build(probe);
    Running(tokio::spawn(async move {
        if let Err(e) = worker.run().await {
            panic!("worker failed: {e}");
        }
    }))
}

/// A job's row in apalis's table: status, attempts, last result.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct JobRow {
    pub status: String,
    pub attempts: i32,
    pub last_result: Option<serde_json::Value>,
    pub tenant: String,
}

/// The row of job `id`, if it exists.
pub async fn job_row(jobs: &TenantJobs, id: &TaskId) -> Option<JobRow> {
    sqlx::query_as(
        "SELECT status, attempts, last_result, \
         convert_from(job, 'UTF8')::jsonb ->> 'tenant' AS tenant \
         FROM apalis.jobs WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(jobs.pool())
    .await
    .unwrap()
}

/// Waits until job `id` has `status`, and returns its row.
pub async fn wait_for_status(jobs: &TenantJobs, id: &TaskId, status: &str) -> JobRow {
    wait_for(&format!("job {id} to be {status}"), || async {
        job_row(jobs, id).await.filter(|row| row.status == status)
    })
    .await
}
