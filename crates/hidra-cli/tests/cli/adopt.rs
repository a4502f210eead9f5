use crate::common::{Ctx, json, success};

#[tokio::test]
async fn adopt_makes_the_public_schema_the_first_tenant() {
    let ctx = Ctx::new().await;
    ctx.exec(
        "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, n INT NOT NULL);
         INSERT INTO items (n) SELECT g FROM generate_series(1, 500) g;
         CREATE TABLE plans (name TEXT PRIMARY KEY);",
    )
    .await;
    ctx.ok(&["init"]);
    ctx.migration("2_labels.sql", "ALTER TABLE items ADD COLUMN label TEXT;");

    let out = ctx.ok(&[
        "adopt",
        "--tenant",
        "acme",
        "--baseline",
        "1",
        "--keep",
        "plans",
    ]);
    assert!(
        out.contains("adopted schema public as tenant acme (schema tenant_acme)"),
        "{out}"
    );
    assert!(out.contains("baseline version 1"), "{out}");
    assert!(out.contains("  moved table public.items"), "{out}");
    assert!(out.contains("  kept  table public.plans"), "{out}");
    assert!(!ctx.exists("public.items").await);
    assert!(ctx.exists("public.plans").await);
    assert_eq!(
        ctx.scalar::<i64>("SELECT count(*) FROM tenant_acme.items")
            .await,
        500
    );
    let list = json(&ctx.ok(&["tenant", "list", "--json"]));
    assert_eq!(list[0]["id"], "acme");
    assert_eq!(list[0]["status"], "active");

    // The baseline: only the later migration is applied.
    let out = ctx.ok(&["migrate"]);
    assert!(
        out.contains("migrated 1, already current 0, failed 0"),
        "{out}"
    );
    assert_eq!(
        ctx.scalar::<i64>("SELECT count(label) + count(*) FROM tenant_acme.items")
            .await,
        500
    );

    // Again: refused, nothing changed.
    let err = ctx.fails(&["adopt", "--tenant", "acme", "--baseline", "1"]);
    assert!(err.contains("tenant `acme` already exists"), "{err}");
    let err = ctx.fails(&[
        "adopt",
        "--tenant",
        "globex",
        "--baseline",
        "1",
        "--keep",
        "plans",
    ]);
    assert!(
        err.starts_with("error: cannot adopt schema `public` as tenant `globex`: ")
            && err.contains("has no tables to adopt")
            && err.ends_with("nothing was changed"),
        "{err}"
    );
    assert!(!ctx.exists("tenant_globex").await);
    // A usage mistake: neither --tenant nor --split-by.
    let usage = ctx.cmd().args(["adopt"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test]
async fn adopt_split_by_a_column_prints_row_counts_and_resumes() {
    let ctx = Ctx::new().await;
    ctx.migration(
        "2_users.sql",
        "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE);",
    );
    ctx.exec(
        "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, company_id INT NOT NULL, n INT NOT NULL);
         INSERT INTO items (company_id, n) SELECT 1 + g % 3, g FROM generate_series(1, 300) g;
         CREATE TABLE users (id BIGSERIAL PRIMARY KEY, company_id INT NOT NULL, email TEXT NOT NULL UNIQUE);
         INSERT INTO users (company_id, email) SELECT 1 + g % 3, 'U' || g || '@example.test' FROM generate_series(1, 6) g;",
    )
    .await;
    ctx.ok(&["init"]);

    let args = [
        "adopt",
        "--split-by",
        "company_id",
        "--tables",
        "items,users",
        "--id-prefix",
        "co-",
        "--users",
        "users",
    ];
    let out = ctx.cmd().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = success(out);
    assert!(
        stdout.contains("3 tenants (3 created now, 0 earlier), 306 rows before, 306 after"),
        "{stdout}"
    );
    assert!(
        stdout.contains("co-1 (company_id = 1): ok; items 100→100, users 2→2; logins 2"),
        "{stdout}"
    );
    assert!(stderr.contains("splitting: 3/3 tenants"), "{stderr}");
    assert_eq!(
        ctx.scalar::<String>(
            "SELECT tenant_id FROM public.hidra_logins WHERE email = 'u4@example.test'"
        )
        .await,
        "co-2"
    );
    assert_eq!(
        ctx.scalar::<i64>("SELECT count(*) FROM tenant_co_3.items")
            .await,
        100
    );

    // Run again: nothing created, everything verified.
    let mut again = args.to_vec();
    again.push("--json");
    let report = json(&ctx.ok(&again));
    assert_eq!(report["created"], 0);
    assert_eq!(report["verified"], true);
    assert_eq!(report["tenants"][2]["tenant"], "co-3");
    assert_eq!(report["tenants"][2]["earlier"], true);
    assert_eq!(report["tenants"][2]["tables"][0]["after"], 100);
}
