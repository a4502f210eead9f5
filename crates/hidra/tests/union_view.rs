//! `all_<table>` views over every schema tenant's table: rows tagged with
//! their tenant, columns common to all versions, rebuilt as tenants come and
//! go (also by the background refresher after a deprovisioning dropped it).

mod common;

use std::time::Duration;

use common::*;
use hidra::{Confirmation, Error, Hidra, NewTenant};

async fn orders(hidra: &Hidra, tenant: &str, totals: &[i64]) {
    let t = hidra.tenant(&id(tenant)).await.unwrap().unwrap();
    let mut conn = hidra.acquire(&t).await.unwrap();
    for total in totals {
        sqlx::query("INSERT INTO orders (total) VALUES ($1)")
            .bind(total)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

async fn view_rows(hidra: &Hidra) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut conn = hidra.acquire_shared().await.unwrap();
    sqlx::query_as(
        "SELECT tenant_id, total FROM hidra_reports.all_orders ORDER BY tenant_id, total",
    )
    .fetch_all(&mut *conn)
    .await
}

fn rows(r: &[(&str, i64)]) -> Vec<(String, i64)> {
    r.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_union_view_reads_every_tenants_table_and_follows_them() {
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql(
                "001_orders",
                "CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, total BIGINT NOT NULL)",
            )
            .max_connections(4),
    )
    .await;
    let h = &ctx.hidra;
    for t in ["acme", "globex", "initech"] {
        h.provision(NewTenant::new(id(t))).await.unwrap();
    }
    orders(h, "acme", &[10, 20]).await;
    orders(h, "globex", &[5]).await;
    // initech is one migration ahead: an extra column, left out of the view.
    let initech = h.tenant(&id("initech")).await.unwrap().unwrap();
    let mut conn = h.acquire(&initech).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE orders ADD COLUMN note TEXT; INSERT INTO orders (total, note) VALUES (7, 'x')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    // A suspended tenant's rows are still in the view.
    h.suspend(&id("globex")).await.unwrap();
    let view = h.create_union_view("orders").await.unwrap();
    assert_eq!(
        (view.schema.as_str(), view.name.as_str()),
        ("hidra_reports", "all_orders")
    );
    assert_eq!(view.columns, ["id", "total"]);
    assert_eq!(
        view.left_out_columns,
        Vec::<String>::new(),
        "acme's columns are everyone's"
    );
    assert_eq!(view.tenants, 3);
    assert_eq!(view.left_out_tenants, Vec::new());
    assert_eq!(
        view_rows(h).await.unwrap(),
        rows(&[("acme", 10), ("acme", 20), ("globex", 5), ("initech", 7)])
    );
    // Isolation: the view is on no tenant's search path, so a tenant's
    // connection cannot reach the other tenants' rows through it.
    let acme = h.tenant(&id("acme")).await.unwrap().unwrap();
    let mut conn = h.acquire(&acme).await.unwrap();
    let err = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM all_orders")
        .fetch_one(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    drop(conn);

    // A new tenant appears after a refresh.
    h.provision(NewTenant::new(id("hooli"))).await.unwrap();
    orders(h, "hooli", &[99]).await;
    let refreshed = h.refresh_union_views().await.unwrap();
    assert_eq!(refreshed.len(), 1);
    assert_eq!(refreshed[0].tenants, 4);
    assert!(
        view_rows(h)
            .await
            .unwrap()
            .contains(&("hooli".to_owned(), 99))
    );

    // Deprovisioning drops the view with the tenant's table (CASCADE); the
    // refresher rebuilds it without the tenant.
    let refresher = h.spawn_union_view_refresh(Duration::from_millis(100));
    h.deprovision(&id("globex"), Confirmation::of(&id("globex")))
        .await
        .unwrap();
    let expected = rows(&[("acme", 10), ("acme", 20), ("hooli", 99), ("initech", 7)]);
    wait_for(
        "the refresher to rebuild the view without globex",
        || async { (view_rows(h).await.ok() == Some(expected.clone())).then_some(()) },
    )
    .await;
    refresher.abort();

    // No tenant has the table: refused; dropping stops maintaining it.
    let err = h.create_union_view("invoices").await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("no schema tenant has a table `invoices`"),
        "{err}"
    );
    assert!(h.drop_union_view("orders").await.unwrap());
    assert!(view_rows(h).await.is_err());
    assert!(h.refresh_union_views().await.unwrap().is_empty());
    assert!(!h.drop_union_view("orders").await.unwrap());
    // Names are identifiers, never SQL.
    assert!(h.create_union_view("orders; DROP TABLE x").await.is_err());
    ctx.hidra.close().await;
    ctx.db.drop_now().await.unwrap();
}
