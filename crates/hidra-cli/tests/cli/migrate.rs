use hidra::sqlx::{self, Connection};
use serde_json::Value;

use crate::common::{Ctx, json};

/// `(tenant, version, pending)` of every schema, from `migrate status --json`.
fn status(ctx: &Ctx) -> Vec<(String, i64, i64)> {
    let s = json(&ctx.ok(&["migrate", "status", "--json"]));
    s["tenants"]["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["tenant"].as_str().unwrap().to_owned(),
                row["version"].as_i64().unwrap_or(-1),
                row["pending"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn row(t: &str, version: i64, pending: i64) -> (String, i64, i64) {
    (t.to_owned(), version, pending)
}

#[tokio::test]
async fn migrate_dry_run_then_for_real_then_one_tenant() {
    let ctx = Ctx::initialized().await;
    let shared = ctx.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(
        shared.join("1_plans.sql"),
        "CREATE TABLE public.plans (name TEXT PRIMARY KEY);",
    )
    .unwrap();
    ctx.ok(&["tenant", "create", "acme"]);
    ctx.ok(&["tenant", "create", "globex"]);
    ctx.migration("2_labels.sql", "ALTER TABLE items ADD COLUMN label TEXT;");
    let with_shared = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        v.push("--shared-migrations".into());
        v.push(shared.to_str().unwrap().into());
        v
    };

    assert_eq!(status(&ctx), [row("acme", 1, 1), row("globex", 1, 1)]);
    let out = ctx.ok(&["migrate", "status"]);
    assert!(
        out.contains("latest version 2; 2 schemas, 2 behind, 0 with problems"),
        "{out}"
    );

    // A dry run reports and applies nothing, shared or tenant.
    let out = success_of(ctx.cmd().args(with_shared(&["migrate", "--dry-run"])));
    assert!(
        out.contains("shared: would apply 1 (now at version 0)"),
        "{out}"
    );
    assert!(
        out.contains("would migrate 2, already current 0, failed 0"),
        "{out}"
    );
    assert!(out.contains("acme: 1 -> 2"), "{out}");
    assert!(!ctx.exists("public.plans").await);
    let columns: i64 = ctx
        .scalar(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_schema LIKE 'tenant\\_%' AND column_name = 'label'",
        )
        .await;
    assert_eq!(columns, 0);
    assert_eq!(status(&ctx), [row("acme", 1, 1), row("globex", 1, 1)]);

    // For real: shared first, then the tenants, with plain progress lines.
    let out = ctx
        .cmd()
        .args(with_shared(&["migrate", "--concurrency", "2"]))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("shared: applied 1 (now at version 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tenants: migrated 2, already current 0, failed 0"),
        "{stdout}"
    );
    assert!(
        stderr.contains("migrating: 2/2 schemas, 0 failed"),
        "{stderr}"
    );
    assert!(ctx.exists("public.plans").await);
    assert_eq!(status(&ctx), [row("acme", 2, 0), row("globex", 2, 0)]);

    // Only one tenant.
    ctx.migration("3_more.sql", "CREATE TABLE more (x INT);");
    let summary = json(&ctx.ok(&["migrate", "--tenant", "globex", "--json"]));
    assert_eq!(summary["dry_run"], false);
    assert_eq!(summary["shared"], Value::Null);
    let migrated = summary["tenants"]["migrated"].as_array().unwrap();
    assert_eq!(migrated.len(), 1);
    assert_eq!(migrated[0]["tenant"], "globex");
    assert_eq!(migrated[0]["from"], 2);
    assert_eq!(migrated[0]["to"], 3);
    assert_eq!(status(&ctx), [row("acme", 2, 1), row("globex", 3, 0)]);

    // Nothing left after a full run.
    let out = ctx.ok(&["migrate"]);
    assert!(
        out.contains("migrated 1, already current 1, failed 0"),
        "{out}"
    );
    let out = ctx.ok(&["migrate"]);
    assert!(
        out.contains("migrated 0, already current 2, failed 0"),
        "{out}"
    );
}

fn success_of(cmd: &mut assert_cmd::Command) -> String {
    crate::common::success(cmd.output().unwrap())
}

#[tokio::test]
async fn a_failing_tenant_makes_the_run_fail_with_the_summary() {
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "good"]);
    ctx.ok(&["tenant", "create", "bad"]);
    ctx.exec("INSERT INTO tenant_bad.items (n) VALUES (0)")
        .await;
    ctx.migration(
        "2_positive.sql",
        "ALTER TABLE items ADD CONSTRAINT items_n_positive CHECK (n > 0);",
    );

    let out = ctx.cmd().arg("migrate").output().unwrap();
    let err = crate::common::error_line(&out);
    assert_eq!(
        err,
        "error: 1 of 2 schemas failed to migrate (listed above); the others are unaffected"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("tenants: migrated 1, already current 0, failed 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bad: migration 2 (positive) failed"),
        "{stdout}"
    );
    assert!(stdout.contains("items_n_positive"), "{stdout}");
    // The failing tenant was left as it was; the other one moved on.
    assert_eq!(status(&ctx), [row("bad", 1, 1), row("good", 2, 0)]);

    // The JSON summary says the same, with the same exit code.
    let out = ctx.cmd().args(["migrate", "--json"]).output().unwrap();
    crate::common::error_line(&out);
    let summary = json(&String::from_utf8(out.stdout).unwrap());
    let failed = summary["tenants"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["tenant"], "bad");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("items_n_positive")
    );
}

#[tokio::test]
async fn migrate_errors() {
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "acme"]);

    let err = ctx.fails(&["migrate", "--tenant", "nope"]);
    assert_eq!(err, "error: tenant `nope` not found");
    let err = ctx.fails(&["migrate", "--tenant", "acme", "--tenant", "Bad!"]);
    assert!(
        err.starts_with("error: invalid tenant id \"Bad!\""),
        "{err}"
    );

    let none = |args: &[&str]| {
        crate::common::error_line(
            &ctx.cmd()
                .env_remove("HIDRA_TENANT_MIGRATIONS")
                .args(args)
                .output()
                .unwrap(),
        )
    };
    assert!(none(&["migrate"]).contains("nothing to migrate"));
    assert!(none(&["migrate", "status"]).contains("no tenant migrations configured"));

    let err = ctx.fails(&["migrate", "--tenant-migrations", "does/not/exist"]);
    assert_eq!(
        err,
        "error: tenant migrations directory does/not/exist does not exist"
    );

    // An edited migration is reported by status, which then exits 1 like
    // doctor, and refused by a run.
    ctx.migration("1_items.sql", "CREATE TABLE items (id BIGINT);");
    let out = ctx
        .cmd()
        .args(["migrate", "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        crate::common::error_line(&out),
        "error: migration status found 1 schema with a problem"
    );
    let s = json(&String::from_utf8(out.stdout).unwrap());
    let problem = s["tenants"]["schemas"][0]["problem"].as_str().unwrap();
    assert!(problem.contains("checksum mismatch"), "{problem}");
    let out = ctx.cmd().args(["migrate", "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 with problems"));
    let err = ctx.fails(&["migrate", "--dry-run"]);
    assert!(err.contains("1 of 1 schemas failed"), "{err}");
}

/// The template schema for sqlx's macros: created at the latest version,
/// migrated when migrations are added, recreated on demand, and the printed
/// URL resolves unqualified names to its tables. It is no tenant.
#[tokio::test]
async fn the_template_schema_follows_the_tenant_migrations() {
    let ctx = Ctx::initialized().await;
    let out = ctx.ok(&["migrate", "template"]);
    assert!(
        out.contains("template schema `hidra_template` migrated from version 0 to 1"),
        "{out}"
    );
    assert!(ctx.exists("hidra_template.items").await);
    let url = out.lines().last().unwrap().trim().to_owned();
    assert!(
        url.ends_with("options=-c%20search_path%3Dhidra_template"),
        "{url}"
    );
    // The URL is what the macros connect with: `items` is the template's.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let path: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(path, "hidra_template");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);

    let out = ctx.ok(&["migrate", "template"]);
    assert!(out.contains("is at version 1"), "{out}");
    ctx.migration("2_labels.sql", "ALTER TABLE items ADD COLUMN label TEXT;");
    let done = json(&ctx.ok(&["migrate", "template", "--json"]));
    assert_eq!(
        (done["from"].as_i64(), done["to"].as_i64()),
        (Some(1), Some(2))
    );
    let label: Option<String> = sqlx::query_scalar("SELECT label FROM items LIMIT 1")
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    assert_eq!(label, None);

    // An edited migration: refused until recreated.
    ctx.migration("2_labels.sql", "ALTER TABLE items ADD COLUMN tag TEXT;");
    let err = ctx.fails(&["migrate", "template"]);
    assert!(err.contains("--recreate"), "{err}");
    let done = json(&ctx.ok(&["migrate", "template", "--recreate", "--json"]));
    assert_eq!(done["recreated"], true);
    assert_eq!(
        (done["from"].as_i64(), done["to"].as_i64()),
        (Some(0), Some(2))
    );
    assert!(ctx.exists("hidra_template.items").await);

    // It is no tenant, and a tenant's schema cannot be it.
    assert_eq!(ctx.ok(&["tenant", "list", "--json"]).trim(), "[]");
    let err = ctx.fails(&["migrate", "template", "--schema", "tenant_acme"]);
    assert!(err.contains("tenant schemas are named `tenant_…`"), "{err}");
    // Tenants are not migrated by it, nor it by `migrate`.
    ctx.ok(&["tenant", "create", "acme"]);
    let s = json(&ctx.ok(&["migrate", "status", "--json"]));
    let schemas = s["tenants"]["schemas"].as_array().unwrap();
    assert_eq!(schemas.len(), 1, "{s}");
}
