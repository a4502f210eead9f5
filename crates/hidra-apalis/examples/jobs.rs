//! Order confirmations as tenant jobs, end to end.
//!
//! ```text
//! cargo run -p hidra-apalis --example jobs
//! ```
//!
//! It creates a throw-away database (on the server `DATABASE_URL` names, or
//! the local one `hidra::testing` finds), two tenants, and orders whose
//! confirmation job is enqueued in the order's own transaction; one worker
//! confirms them all, each in its tenant's schema. Then a tenant is
//! suspended, and its next job is refused instead of run.

use std::error::Error;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use hidra::testing::TestDatabase;
use hidra::{Hidra, NewTenant, Tenant, TenantId};
use hidra_apalis::{Refusal, TenantJob, TenantJobContext, TenantJobs};
use serde::{Deserialize, Serialize};

/// The job: confirm one order of the job's tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ConfirmOrder {
    order: i64,
}

/// Runs as the job's tenant: `orders` is that tenant's table.
async fn confirm_order(
    job: TenantJob<ConfirmOrder>,
    ctx: TenantJobContext,
) -> Result<String, BoxDynError> {
    let mut tx = ctx.begin().await?;
    let (item,): (String,) =
        sqlx::query_as("UPDATE orders SET confirmed_at = now() WHERE id = $1 RETURNING item")
            .bind(job.order)
            .fetch_one(&mut tx)
            .await?;
    tx.commit().await?;
    println!(
        "  [{}] confirmed order {} ({item})",
        ctx.tenant_id(),
        job.order
    );
    Ok(item)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let db = TestDatabase::create_with_prefix("hidra_apalis_example").await?;
    let hidra = Hidra::builder()
        .schema_sql(
            "001_orders",
            "CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, item TEXT NOT NULL, \
             confirmed_at TIMESTAMPTZ)",
        )
        .connect(db.url())
        .await?;
    hidra.install().await?;
    let jobs = TenantJobs::new(&hidra);
    jobs.install().await?;
    let confirmations = jobs.queue::<ConfirmOrder>("confirm-order");

    let acme = hidra
        .provision(NewTenant::new(TenantId::new("acme")?))
        .await?;
    let globex = hidra
        .provision(NewTenant::new(TenantId::new("globex")?))
        .await?;

    println!("placing orders, each with its confirmation job in the same transaction");
    for (tenant, item) in [
        (&acme, "anvil"),
        (&globex, "doomsday device"),
        (&acme, "rocket skates"),
    ] {
        let mut tx = hidra.begin(tenant).await?;
        let (order,): (i64,) = sqlx::query_as("INSERT INTO orders (item) VALUES ($1) RETURNING id")
            .bind(item)
            .fetch_one(&mut tx)
            .await?;
        confirmations
            .push_in(&mut tx, ConfirmOrder { order })
            .await?;
        tx.commit().await?;
    }
    // An order that fails after its job was enqueued: neither exists.
    let mut tx = hidra.begin(&acme).await?;
    confirmations
        .push_in(&mut tx, ConfirmOrder { order: 999 })
        .await?;
    tx.rollback().await?;

    println!("running a worker");
    let worker = WorkerBuilder::new("confirm-order-1")
        .backend(confirmations.storage())
        .layer(jobs.layer().on_unavailable(Refusal::DeadLetter))
        .build(confirm_order);
    let running = tokio::spawn(worker.run());
    for tenant in [&acme, &globex] {
        wait_until_confirmed(&hidra, tenant).await?;
    }

    println!("suspending globex, then enqueueing a job for it");
    hidra.suspend(&globex.id).await?;
    let id = confirmations
        .push_for(&globex, ConfirmOrder { order: 1 })
        .await?;
    let refusal = wait_for_refusal(&jobs, &id).await?;
    println!("  job {id}: {refusal}");

    running.abort();
    hidra.close().await;
    db.drop_now().await?;
    Ok(())
}

/// Waits (up to 30 s) until every order of `tenant` is confirmed.
async fn wait_until_confirmed(hidra: &Hidra, tenant: &Tenant) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut conn = hidra.acquire(tenant).await?;
        let (open,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM orders WHERE confirmed_at IS NULL")
                .fetch_one(&mut conn)
                .await?;
        if open == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} still has {open} unconfirmed orders", tenant.id).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 30 s) until job `id` was refused, and returns its status and
/// result.
async fn wait_for_refusal(jobs: &TenantJobs, id: &TaskId) -> Result<String, Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row: Option<(String, serde_json::Value)> = sqlx::query_as(
            "SELECT status, last_result FROM apalis.jobs WHERE id = $1 AND last_result IS NOT NULL",
        )
        .bind(id.to_string())
        .fetch_optional(jobs.pool())
        .await?;
        if let Some((status, result)) = row {
            return Ok(format!("{status}, {result}"));
        }
        if Instant::now() > deadline {
            return Err(format!("job {id} was not refused").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
