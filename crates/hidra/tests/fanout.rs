//! Work fanned out over many tenants: reports and maintenance.

mod common;

use std::collections::BTreeMap;

use common::*;
use futures_util::TryStreamExt;
use hidra::fanout::{Rows, TenantResult};
use hidra::{Error, NewTenant};

async fn collect<T>(
    stream: futures_util::stream::BoxStream<'static, hidra::Result<TenantResult<T>>>,
) -> BTreeMap<String, hidra::Result<T>> {
    stream
        .map_ok(|r| (r.tenant.to_string(), r.result))
        .try_collect()
        .await
        .expect("the registry can be listed")
}

#[tokio::test]
async fn a_query_over_200_tenants_survives_one_failing_tenant() {
    let ctx = setup(4).await;
    let h = &ctx.hidra;
    for i in 0..200 {
        let t = h
            .provision(NewTenant::new(id(&format!("t{i:03}"))))
            .await
            .unwrap();
        let mut conn = h.acquire(&t).await.unwrap();
        sqlx::query("INSERT INTO items (label) SELECT 'item ' || n FROM generate_series(1, $1) n")
            .bind(i % 7)
            .execute(&mut conn)
            .await
            .unwrap();
        if i == 117 {
            // This one's schema lost a table: its query fails mid-run.
            sqlx::raw_sql("DROP TABLE items")
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    let sql = "SELECT count(*) AS n, max(label) AS last, count(*) * 1.5 AS weighted FROM items";
    let results = collect(h.fan_out().concurrency(3).query(sql)).await;
    assert_eq!(results.len(), 200, "one result per active tenant");
    let mut ok = 0;
    for (tenant, result) in &results {
        let i: usize = tenant[1..].parse().unwrap();
        if i == 117 {
            let e = result.as_ref().unwrap_err();
            assert!(matches!(e, Error::TenantWork { .. }), "{e:?}");
            assert!(e.to_string().contains("t117"), "{e}");
            continue;
        }
        let rows = result.as_ref().unwrap();
        assert_eq!(
            rows.columns
                .iter()
                .map(|c| (c.name.as_str(), c.type_name.as_str()))
                .collect::<Vec<_>>(),
            [("n", "INT8"), ("last", "TEXT"), ("weighted", "NUMERIC")],
        );
        let n = i % 7;
        let last = (n > 0).then(|| format!("item {n}"));
        assert_eq!(
            rows.rows,
            [vec![
                Some(n.to_string()),
                last,
                Some(format!("{:.1}", n as f64 * 1.5))
            ]],
            "tenant {tenant}"
        );
        ok += 1;
    }
    assert_eq!(ok, 199);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn named_tenants_closures_and_refusals() {
    let ctx = setup(3).await;
    let h = &ctx.hidra;
    let a = h.provision(NewTenant::new(id("alpha"))).await.unwrap();
    let b = h.provision(NewTenant::new(id("beta"))).await.unwrap();
    h.suspend(&b.id).await.unwrap();
    for t in [&a] {
        let mut conn = h.acquire(t).await.unwrap();
        sqlx::query("INSERT INTO marker VALUES ('alpha')")
            .execute(&mut conn)
            .await
            .unwrap();
    }

    // "Every tenant" means every active one.
    let all = collect(h.fan_out().run(|mut conn| async move {
        sqlx::query_scalar::<_, String>("SELECT current_schema()::text")
            .fetch_one(&mut conn)
            .await
    }))
    .await;
    assert_eq!(all.keys().collect::<Vec<_>>(), ["alpha"]);
    assert_eq!(all["alpha"].as_ref().unwrap(), &h.schema_name(&a.id));

    // Named tenants: an unknown id is its own result.
    let named = collect(h.fan_out().tenants([a.id.clone(), id("ghost")]).run(
        |mut conn| async move {
            sqlx::query_scalar::<_, String>("SELECT tenant FROM marker")
                .fetch_all(&mut conn)
                .await
        },
    ))
    .await;
    assert_eq!(named["alpha"].as_ref().unwrap(), &["alpha"]);
    assert!(named["ghost"].as_ref().unwrap_err().is_not_found());

    // A statement that writes reports the rows it touched; several statements
    // at once are refused for each tenant, before anything runs.
    let updated = collect(
        h.fan_out()
            .tenants([a.id.clone()])
            .query("UPDATE marker SET tenant = upper(tenant)"),
    )
    .await;
    let rows: &Rows = updated["alpha"].as_ref().unwrap();
    assert_eq!((rows.rows_affected, rows.columns.len()), (1, 0));
    let refused = collect(
        h.fan_out()
            .tenants([a.id.clone()])
            .query("DELETE FROM marker; SELECT 1"),
    )
    .await;
    assert!(refused["alpha"].is_err());
    let mut conn = h.acquire(&a).await.unwrap();
    let left: Vec<String> = sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, ["ALPHA"]);
    ctx.db.drop_now().await.unwrap();
}
