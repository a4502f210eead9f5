//! Jobs enqueued in a tenant's transaction exist only if it commits.

mod common;

use common::*;

/// Inserts an order in `tx` and enqueues a probe for it there.
async fn order_and_job(
    queue: &hidra_apalis::TenantQueue<Probe>,
    tx: &mut hidra::TenantTx,
    label: &str,
) -> apalis::prelude::TaskId {
    let (order,): (i64,) = sqlx::query_as("INSERT INTO orders (total) VALUES (42) RETURNING id")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let probe = Probe {
        label: label.into(),
        order,
    };
    queue.push_in(tx, probe).await.unwrap()
}

#[tokio::test]
async fn a_job_enqueued_in_a_rolled_back_transaction_is_not_run_and_a_committed_one_is() {
    let (ctx, [acme, globex], queue) = with_tenants(["acme", "globex"]).await;
    let _worker = worker("transactions", &queue, ctx.jobs.layer());

    let mut tx = ctx.hidra.begin(&acme).await.unwrap();
    let rolled_back = order_and_job(&queue, &mut tx, "rolled back").await;
    tx.rollback().await.unwrap();

    let mut tx = ctx.hidra.begin(&acme).await.unwrap();
    let committed = order_and_job(&queue, &mut tx, "committed").await;
    // Not visible to workers before the commit.
    assert!(job_row(&ctx.jobs, &committed).await.is_none());
    tx.commit().await.unwrap();

    // In a request: the tenant's record comes from the current tenant.
    let in_request = hidra::context::scope(globex.clone(), async {
        let mut tx = ctx.hidra.begin(&globex).await.unwrap();
        let id = order_and_job(&queue, &mut tx, "in a request").await;
        tx.commit().await.unwrap();
        id
    })
    .await;

    let row = wait_for_status(&ctx.jobs, &committed, "Done").await;
    assert_eq!(row.tenant, "acme");
    wait_for_status(&ctx.jobs, &in_request, "Done").await;
    // The job saw the order its transaction wrote.
    assert_eq!(completed(&ctx.hidra, &acme).await, ["committed+order"]);
    assert_eq!(completed(&ctx.hidra, &globex).await, ["in a request+order"]);
    // The rolled-back job never existed, so no worker can ever run it.
    assert!(job_row(&ctx.jobs, &rolled_back).await.is_none());
}

#[tokio::test]
async fn a_job_enqueued_in_a_transaction_keeps_the_tenants_binding() {
    let (ctx, [acme], queue) = with_tenants(["acme"]).await;

    let mut tx = ctx.hidra.begin(&acme).await.unwrap();
    order_and_job(&queue, &mut tx, "first").await;
    // The transaction still reads the tenant's own tables after the insert
    // into apalis's.
    let (marker,): (String,) = sqlx::query_as("SELECT tenant FROM marker")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(marker, "acme");
    tx.commit().await.unwrap();
}
