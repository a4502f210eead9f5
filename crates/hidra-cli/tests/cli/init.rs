use crate::common::Ctx;

#[tokio::test]
async fn init_creates_the_tables_and_is_idempotent() {
    let ctx = Ctx::new().await;
    let shared = ctx.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(
        shared.join("1_plans.sql"),
        "CREATE TABLE public.plans (name TEXT PRIMARY KEY);",
    )
    .unwrap();
    let shared = shared.to_str().unwrap();

    let out = ctx.ok(&["init", "--shared-migrations", shared]);
    assert!(
        out.contains("registry table  public.tenants: ready"),
        "{out}"
    );
    assert!(out.contains("shared migrations: applied 1"), "{out}");
    for table in [
        "public.tenants",
        "public.hidra_logins",
        "public.hidra_login_attempts",
        "public.hidra_api_keys",
        "hidra.schema_versions",
        "hidra.shared_migrations",
        "public.plans",
    ] {
        assert!(ctx.exists(table).await, "{table} is missing");
    }

    // Again: nothing to do, nothing fails.
    let out = ctx.ok(&["init", "--shared-migrations", shared]);
    assert!(
        out.contains("shared migrations: up to date (version 1"),
        "{out}"
    );
    // Without the shared directory, the applied ones are left alone.
    let out = ctx.ok(&["init"]);
    assert!(out.contains("shared migrations: none configured"), "{out}");
    let applied: i64 = ctx
        .scalar("SELECT count(*) FROM hidra.shared_migrations")
        .await;
    assert_eq!(applied, 1);
}

#[tokio::test]
async fn init_with_a_custom_registry_table() {
    let ctx = Ctx::new().await;
    ctx.ok(&["init", "--registry-table", "app.orgs"]);
    assert!(ctx.exists("app.orgs").await);
    assert!(!ctx.exists("public.tenants").await);
    // The auth tables reference it: deleting a tenant removes its keys.
    let fk: String = ctx
        .scalar(
            "SELECT confrelid::regclass::text FROM pg_constraint \
             WHERE conrelid = 'public.hidra_api_keys'::regclass AND contype = 'f' \
             AND confrelid <> conrelid",
        )
        .await;
    assert_eq!(fk, "app.orgs");
    let out = ctx.ok(&["tenant", "create", "acme", "--registry-table", "app.orgs"]);
    assert!(out.contains("created tenant `acme`"), "{out}");
    let n: i64 = ctx.scalar("SELECT count(*) FROM app.orgs").await;
    assert_eq!(n, 1);
}
