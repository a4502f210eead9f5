//! `hidra sql`: one statement in many tenants.

use crate::common::{Ctx, error_line};

/// Output lines, sorted (tenants answer in any order).
fn sorted(out: &str) -> Vec<String> {
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn sql_runs_in_every_tenant_and_reports_the_failing_one() {
    let ctx = Ctx::initialized().await;
    for (t, n) in [("acme", 3), ("globex", 1), ("initech", 2)] {
        ctx.ok(&["tenant", "create", t]);
        ctx.exec(&format!(
            "INSERT INTO tenant_{t}.items (n) SELECT g FROM generate_series(1, {n}) g"
        ))
        .await;
    }
    let count = "SELECT count(*) AS items, sum(n) / 2.0 AS half, 'a,b' AS label FROM items";

    let csv = ctx.ok(&["sql", count, "--all-tenants", "--csv"]);
    let (header, rows) = csv.split_once('\n').unwrap();
    assert_eq!(header, "tenant,items,half,label");
    assert_eq!(
        sorted(rows),
        [
            "acme,3,3.0000000000000000,\"a,b\"",
            "globex,1,0.50000000000000000000,\"a,b\"",
            "initech,2,1.5000000000000000,\"a,b\"",
        ]
    );

    let json = ctx.ok(&["sql", count, "--tenant", "globex", "--json"]);
    let row: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        row,
        serde_json::json!({"tenant": "globex", "row": {"items": 1, "half": 0.5, "label": "a,b"}})
    );

    let table = ctx.ok(&["sql", "SELECT n FROM items WHERE n = 2", "--all-tenants"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "TENANT   n");
    assert_eq!(sorted(&lines[1..].join("\n")), ["acme     2", "initech  2"]);

    // One tenant lost its table: the others still answer, exit code 1.
    ctx.exec("DROP TABLE tenant_globex.items").await;
    let out = ctx
        .cmd()
        .args(["sql", count, "--all-tenants", "--csv"])
        .output()
        .unwrap();
    let error = error_line(&out);
    assert_eq!(error, "error: the statement failed in 1 of 3 tenants");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tenant globex failed: ") && stderr.contains("\"items\" does not exist"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        3,
        "header and two tenants:\n{stdout}"
    );

    // A usage mistake: neither --all-tenants nor --tenant.
    let usage = ctx.cmd().args(["sql", "SELECT 1"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}
