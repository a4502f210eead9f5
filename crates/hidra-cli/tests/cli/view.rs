use crate::common::{Ctx, json};

/// `hidra view`: a view over every tenant's `items`, rebuilt by `refresh`
/// after a tenant came, gone with `drop`.
#[tokio::test]
async fn views_over_every_tenant() {
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "acme"]);
    ctx.ok(&["tenant", "create", "globex"]);
    ctx.exec("INSERT INTO tenant_acme.items (n) VALUES (1), (2); INSERT INTO tenant_globex.items (n) VALUES (3)")
        .await;

    let out = ctx.ok(&["view", "create", "items"]);
    assert!(
        out.contains("hidra_reports.all_items: `items` of 2 tenant(s), columns tenant_id, id, n"),
        "{out}"
    );
    let n: i64 = ctx
        .scalar("SELECT sum(n) FROM hidra_reports.all_items")
        .await;
    assert_eq!(n, 6);

    ctx.ok(&["tenant", "create", "initech"]);
    ctx.exec("INSERT INTO tenant_initech.items (n) VALUES (10)")
        .await;
    let refreshed = json(&ctx.ok(&["view", "refresh", "--json"]));
    assert_eq!(refreshed[0]["view"], "hidra_reports.all_items");
    assert_eq!(refreshed[0]["tenants"], 3);
    let n: i64 = ctx
        .scalar("SELECT sum(n) FROM hidra_reports.all_items WHERE tenant_id <> 'acme'")
        .await;
    assert_eq!(n, 13);

    let err = ctx.fails(&["view", "create", "nothing"]);
    assert!(
        err.contains("no schema tenant has a table `nothing`"),
        "{err}"
    );
    let out = ctx.ok(&["view", "drop", "items"]);
    assert!(out.contains("dropped the view over `items`"), "{out}");
    assert!(!ctx.exists("hidra_reports.all_items").await);
    let out = ctx.ok(&["view", "drop", "items"]);
    assert!(out.contains("no view over `items` was maintained"), "{out}");
}
