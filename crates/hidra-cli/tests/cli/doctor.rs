use serde_json::Value;

use hidra::sqlx::{self, Connection, PgConnection};
use hidra_test_support::wait_for;

use crate::common::{Ctx, error_line, json};

/// The status of each check of a JSON report, by name.
fn statuses(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

#[tokio::test]
async fn doctor_passes_then_finds_each_problem() {
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "acme"]);
    ctx.ok(&["tenant", "create", "globex"]);

    let out = ctx.ok(&["doctor"]);
    assert!(out.starts_with("ok       database"), "{out}");
    assert!(out.contains("PostgreSQL "), "{out}");
    assert!(out.contains("public.tenants: 2 tenants"), "{out}");
    assert!(out.contains("every schema at version 1"), "{out}");
    let report = json(&ctx.ok(&["doctor", "--json"]));
    assert_eq!(report["ok"], true);
    assert_eq!(report["problems"], 0);
    assert_eq!(check(&report, "shared migrations")["status"], "skipped");

    // A schema named like a tenant without a row, a row without its schema,
    // and a new migration nobody applied yet.
    ctx.exec("CREATE SCHEMA tenant_ghost; DROP SCHEMA tenant_globex CASCADE")
        .await;
    ctx.migration("2_more.sql", "CREATE TABLE more (x INT);");

    let out = ctx.cmd().args(["doctor", "--json"]).output().unwrap();
    assert_eq!(error_line(&out), "error: doctor found 3 problems");
    let report = json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"], 3);
    let orphans = check(&report, "orphan schemas");
    assert_eq!(orphans["status"], "problem");
    assert_eq!(orphans["items"], serde_json::json!(["tenant_ghost"]));
    let missing = check(&report, "missing schemas");
    assert_eq!(missing["status"], "problem");
    assert_eq!(
        missing["items"],
        serde_json::json!(["globex (schema tenant_globex, active)"])
    );
    let behind = check(&report, "tenant migrations");
    assert_eq!(behind["status"], "problem");
    let items = behind["items"].as_array().unwrap();
    assert!(
        items.contains(&Value::from("acme (tenant_acme): version 1, 1 pending")),
        "{items:?}"
    );

    // The text report lists the same, and fails the same way.
    let out = ctx.cmd().arg("doctor").output().unwrap();
    assert_eq!(error_line(&out), "error: doctor found 3 problems");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("PROBLEM  orphan schemas"), "{text}");
    assert!(text.contains("- tenant_ghost"), "{text}");

    // Fixing them makes it pass again.
    ctx.exec("DROP SCHEMA tenant_ghost").await;
    ctx.ok(&["tenant", "delete", "globex", "--yes"]);
    ctx.ok(&["migrate"]);
    ctx.ok(&["doctor"]);
}

#[tokio::test]
async fn doctor_on_a_database_never_initialized() {
    let ctx = Ctx::new().await;
    let out = ctx.cmd().args(["doctor", "--json"]).output().unwrap();
    assert_eq!(error_line(&out), "error: doctor found 2 problems");
    let report = json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(
        statuses(&report),
        [
            ("database", "ok"),
            ("registry", "problem"),
            ("internal schema", "problem"),
            ("orphan schemas", "skipped"),
            ("missing schemas", "skipped"),
            ("shared migrations", "skipped"),
            ("tenant migrations", "skipped"),
            ("row-level security", "skipped"),
            ("servers", "skipped"),
            ("interrupted provisionings", "skipped"),
            ("half-made registrations", "skipped"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert!(
        check(&report, "registry")["detail"]
            .as_str()
            .unwrap()
            .contains("run `hidra init`")
    );
    // The doctor only reads: it created nothing.
    assert!(!ctx.exists("hidra").await);
}

/// A row-level setup as an ordinary role (row-level security never restricts
/// a superuser), with the tenant column `org_id`.
#[tokio::test]
async fn doctor_audits_row_level_security_when_there_are_row_level_tenants() {
    use hidra::sqlx::{self, AssertSqlSafe, Connection, PgConnection};

    let ctx = Ctx::new().await;
    let role = format!("hidra_cli_{}", &ctx.db.name()[ctx.db.name().len() - 8..]);
    ctx.exec(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS;
         GRANT CREATE ON DATABASE \"{db}\" TO {role};
         GRANT ALL ON SCHEMA public TO {role};",
        db = ctx.db.name()
    ))
    .await;
    let options = ctx.db.connect_options().username(&role);
    let host = options.get_host().to_owned();
    let url = if host.starts_with('/') {
        format!(
            "postgres://{role}@localhost:{}/{}?host={host}",
            options.get_port(),
            ctx.db.name()
        )
    } else {
        format!(
            "postgres://{role}@{host}:{}/{}",
            options.get_port(),
            ctx.db.name()
        )
    };
    let run = |args: &[&str]| {
        ctx.cmd()
            .env("DATABASE_URL", &url)
            .env("HIDRA_TENANT_COLUMN", "org_id")
            .args(args)
            .output()
            .unwrap()
    };
    crate::common::success(run(&["init"]));
    let mut conn = PgConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE public.customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);\n{}",
        hidra::rls::tenant_table_sql_with("public.customers", "org_id").unwrap()
    )))
    .execute(&mut conn)
    .await
    .unwrap();

    // No row-level tenant yet: nothing to audit.
    let report = json(&crate::common::success(run(&["doctor", "--json"])));
    assert_eq!(check(&report, "row-level security")["status"], "skipped");

    let out = crate::common::success(run(&["tenant", "create", "r1", "--strategy", "row_level"]));
    assert!(
        out.contains("created tenant `r1` (row_level, schema public, active)"),
        "{out}"
    );
    let report = json(&crate::common::success(run(&["doctor", "--json"])));
    let rls = check(&report, "row-level security");
    assert_eq!(rls["status"], "ok", "{rls}");
    assert!(
        rls["detail"]
            .as_str()
            .unwrap()
            .contains("1 tenant-scoped table"),
        "{rls}"
    );

    // The table's owner is the application's role: without FORCE it bypasses
    // the policy.
    sqlx::raw_sql("ALTER TABLE public.customers NO FORCE ROW LEVEL SECURITY")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let out = run(&["doctor", "--json"]);
    assert_eq!(error_line(&out), "error: doctor found 1 problem");
    let report = json(&String::from_utf8(out.stdout).unwrap());
    let rls = check(&report, "row-level security");
    assert_eq!(rls["status"], "problem");
    let items = rls["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(
        items[0]
            .as_str()
            .unwrap()
            .contains("does not force row-level security")
    );
    assert!(items[1].as_str().unwrap().contains("owner bypasses it"));

    let Ctx { db, dir } = ctx;
    db.drop_now().await.unwrap();
    drop(dir);
    let server = hidra::testing::PgServer::get().await.unwrap();
    let mut admin = PgConnection::connect(server.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn doctor_finds_tenants_stuck_in_provisioning() {
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "acme"]);
    assert_eq!(
        check(&json(&ctx.ok(&["doctor", "--json"])), "stuck provisioning")["status"],
        "ok"
    );
    // Rows left `provisioning` by multi-step provisionings: `hung` an hour
    // ago by a process that still holds its provisioning lock (the session
    // below stands for it), `crashed` by a process that is gone (nobody holds
    // its lock), and `fresh` by one that is gone too.
    ctx.exec(
        "INSERT INTO public.tenants (id, name, status, strategy, schema_name, created_at, updated_at) \
         VALUES ('hung', 'Hung', 'provisioning', 'schema', 'tenant_hung', now() - interval '1 hour', now()), \
                ('crashed', 'Crashed', 'provisioning', 'schema', 'tenant_crashed', now() - interval '1 hour', now()), \
                ('fresh', 'Fresh', 'provisioning', 'schema', 'tenant_fresh', now(), now()); \
         CREATE SCHEMA tenant_hung; CREATE SCHEMA tenant_crashed; CREATE SCHEMA tenant_fresh",
    )
    .await;
    let mut alive = PgConnection::connect(ctx.db.url()).await.unwrap();
    // The provisioning lock's keys (`servers::provision`): "hidp", the id.
    sqlx::query("SELECT pg_advisory_lock(1751737456, hashtext('hung'))")
        .execute(&mut alive)
        .await
        .unwrap();
    let out = ctx.cmd().args(["doctor", "--json"]).output().unwrap();
    assert_eq!(error_line(&out), "error: doctor found 2 problems");
    let report = json(&String::from_utf8(out.stdout).unwrap());
    let items = |name: &str| -> Vec<String> {
        let found = check(&report, name);
        assert_eq!(found["status"], "problem", "{found}");
        (found["items"].as_array().unwrap().iter())
            .map(|i| i.as_str().unwrap().to_owned())
            .collect()
    };
    let stuck = items("stuck provisioning");
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert!(stuck[0].starts_with("hung "), "{stuck:?}");
    let interrupted = items("interrupted provisionings");
    assert_eq!(interrupted.len(), 2, "{interrupted:?}");
    assert!(interrupted[0].starts_with("crashed on the control server (schema, since"));
    assert!(interrupted[1].starts_with("fresh on the control server"));

    // Repair undoes the two nobody finishes, and leaves the one in progress
    // (still a problem).
    let repair = || {
        ctx.cmd()
            .args(["doctor", "--repair", "--json"])
            .output()
            .unwrap()
    };
    assert_eq!(error_line(&repair()), "error: doctor found 1 problem");
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM public.tenants WHERE status = 'provisioning' ORDER BY id",
    )
    .fetch_all(&mut alive)
    .await
    .unwrap();
    assert_eq!(left, ["hung"]);
    // Once its process is gone, it is interrupted too.
    drop(alive);
    wait_for("the hung provisioning's lock to go", || async {
        let out = ctx.cmd().args(["doctor", "--json"]).output().unwrap();
        let report = json(&String::from_utf8(out.stdout).unwrap());
        (check(&report, "interrupted provisionings")["items"][0]
            .as_str()
            .is_some_and(|i| i.starts_with("hung ")))
        .then_some(())
    })
    .await;
    let out = repair();
    let report = json(&String::from_utf8(out.stdout.clone()).unwrap());
    assert_eq!(
        check(&report, "stuck provisioning")["status"],
        "ok",
        "{report}"
    );
    assert_eq!(check(&report, "interrupted provisionings")["status"], "ok");
    // The schemas stay: without their bookkeeping row they cannot be told
    // from stray ones of those names.
    assert_eq!(
        check(&report, "orphan schemas")["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(error_line(&out), "error: doctor found 1 problem");
}
