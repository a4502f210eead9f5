use hidra::sqlx::{self, Connection};
use hidra::testing::TestDatabase;

use crate::common::{Ctx, UNREACHABLE, error_line, json};

const PASSWORD: &str = "s3cret-pw";

/// A second database of the test server with a password in its URL (the
/// test server trusts local logins: the password is accepted and ignored).
/// A server is a URL: another database stands in for another machine.
async fn second() -> (TestDatabase, String) {
    let db = TestDatabase::create().await.unwrap();
    let url = db
        .url()
        .replacen("://postgres@", &format!("://postgres:{PASSWORD}@"), 1);
    assert!(url.contains(PASSWORD), "unexpected test URL shape");
    (db, url)
}

#[tokio::test]
async fn servers_are_added_listed_drained_and_removed() {
    let ctx = Ctx::initialized().await;
    let (_other, url) = second().await;

    let out = ctx.ok(&["server", "list"]);
    assert_eq!(out, "");
    let out = ctx.ok(&["server", "add", "eu-1", &url, "--capacity", "50"]);
    assert!(out.starts_with("registered server `eu-1` at "), "{out}");
    assert!(out.contains("postgres:***@"), "{out}");
    assert!(out.contains("(active, capacity 50 tenants)"), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");

    let list = json(&ctx.ok(&["server", "list", "--json"]));
    let servers = list.as_array().unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["name"], "eu-1");
    assert_eq!(servers[0]["state"], "active");
    assert_eq!(servers[0]["tenants"], 0);
    assert_eq!(servers[0]["capacity"], 50);
    assert!(!list.to_string().contains(PASSWORD), "{list}");
    let text = ctx.ok(&["server", "list"]);
    assert!(text.starts_with("NAME  STATE"), "{text}");
    assert!(text.contains("eu-1  active"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");

    // Refusals: a taken name, a bad name (before connecting), an
    // unreachable server (its password not shown).
    let err = ctx.fails(&["server", "add", "eu-1", &url]);
    assert!(err.contains("server name `eu-1` is taken"), "{err}");
    let err = ctx.fails(&["server", "add", "EU", &url]);
    assert!(
        err.starts_with("error: invalid server name \"EU\""),
        "{err}"
    );
    let err = ctx.fails(&["server", "add", "gone", UNREACHABLE]);
    assert!(err.contains("cannot connect to server `gone`"), "{err}");
    assert!(err.contains("someone:***@127.0.0.1:1/app"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    // States.
    let out = ctx.ok(&["server", "drain", "eu-1"]);
    assert_eq!(out, "server `eu-1` is draining (0 tenants)\n");
    let out = ctx.ok(&["server", "read-only", "eu-1"]);
    assert_eq!(out, "server `eu-1` is read_only (0 tenants)\n");
    let out = ctx.ok(&["server", "activate", "eu-1"]);
    assert_eq!(out, "server `eu-1` is active (0 tenants)\n");
    let err = ctx.fails(&["server", "drain", "nowhere"]);
    assert!(err.contains("server `nowhere` is not registered"), "{err}");

    // A tenant on it keeps it (placement is not built yet: set directly).
    ctx.ok(&["tenant", "create", "acme"]);
    ctx.exec("UPDATE public.tenants SET server = 'eu-1' WHERE id = 'acme'")
        .await;
    let list = json(&ctx.ok(&["server", "list", "--json"]));
    assert_eq!(list[0]["tenants"], 1);
    let err = ctx.fails(&["server", "remove", "eu-1"]);
    assert!(
        err.contains("server `eu-1` still holds 1 tenant(s)"),
        "{err}"
    );

    ctx.exec("UPDATE public.tenants SET server = NULL WHERE id = 'acme'")
        .await;
    let out = ctx.ok(&["server", "remove", "eu-1"]);
    assert_eq!(out, "removed server `eu-1` from the registry\n");
    assert_eq!(json(&ctx.ok(&["server", "list", "--json"])), json("[]"));
}

#[tokio::test]
async fn doctor_checks_every_registered_server() {
    let ctx = Ctx::initialized().await;
    let report = json(&ctx.ok(&["doctor", "--json"]));
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"servers"), "{report}");

    let (other, url) = second().await;
    ctx.ok(&["server", "add", "eu-1", &url]);
    let out = ctx.ok(&["doctor"]);
    let line = out
        .lines()
        .find(|l| l.contains("server eu-1"))
        .unwrap_or_else(|| panic!("no line for eu-1:\n{out}"));
    assert!(line.starts_with("ok "), "{line}");
    assert!(line.contains("PostgreSQL "), "{line}");
    assert!(line.contains("(active, 0 tenants)"), "{line}");
    assert!(!out.contains(PASSWORD), "{out}");

    // The server goes away: doctor names it, without its password.
    other.drop_now().await.unwrap();
    let out = ctx.cmd().args(["doctor", "--json"]).output().unwrap();
    assert_eq!(error_line(&out), "error: doctor found 1 problem");
    let report = json(&String::from_utf8(out.stdout).unwrap());
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "server eu-1")
        .unwrap_or_else(|| panic!("no check for eu-1: {report}"));
    assert_eq!(check["status"], "problem");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("cannot connect to server `eu-1`"),
        "{detail}"
    );
    assert!(!report.to_string().contains(PASSWORD), "{report}");
}

#[tokio::test]
async fn tenants_are_placed_moved_and_repaired_across_servers() {
    let ctx = Ctx::initialized().await;
    let (other, url) = second().await;
    ctx.ok(&["server", "add", "eu-1", &url]);

    // Placed where asked.
    let out = json(&ctx.ok(&["tenant", "create", "acme", "--server", "eu-1", "--json"]));
    assert_eq!(out["placement"]["server"], "eu-1", "{out}");
    let show = ctx.ok(&["tenant", "show", "acme"]);
    assert!(show.contains("server:    eu-1"), "{show}");
    let home = json(&ctx.ok(&["tenant", "create", "home", "--server", "control", "--json"]));
    assert_eq!(home["placement"]["server"], serde_json::Value::Null);
    let err = ctx.fails(&["tenant", "create", "lost", "--server", "nowhere"]);
    assert!(err.contains("server `nowhere` is not registered"), "{err}");
    // The schema is on the other database, not this one.
    assert!(!ctx.exists("tenant_acme").await);
    let mut conn = sqlx::PgConnection::connect(other.url()).await.unwrap();
    let there: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_acme')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(there);
    sqlx::query("INSERT INTO tenant_acme.items (n) SELECT g FROM generate_series(1, 250) g")
        .execute(&mut conn)
        .await
        .unwrap();

    // Moved back and forth, every row with it.
    let moved = json(&ctx.ok(&["tenant", "move", "acme", "--to-server", "control", "--json"]));
    assert_eq!(moved["from"], "eu-1", "{moved}");
    assert_eq!(moved["to"], serde_json::Value::Null, "{moved}");
    assert_eq!(moved["rows"], 250, "{moved}");
    assert!(ctx.exists("tenant_acme").await);
    let n: i64 = ctx.scalar("SELECT count(*) FROM tenant_acme.items").await;
    assert_eq!(n, 250);
    let out = ctx.ok(&["tenant", "move", "acme", "--to-server", "eu-1"]);
    assert!(
        out.starts_with("moved tenant `acme` from server control to eu-1: 250 rows in 1 tables"),
        "{out}"
    );
    assert!(!ctx.exists("tenant_acme").await);
    let err = ctx.fails(&["tenant", "move", "acme", "--to-server", "nowhere"]);
    assert!(err.contains("server `nowhere` is not registered"), "{err}");

    // Migration status is read where each tenant lives.
    let status = json(&ctx.ok(&["migrate", "status", "--json"]));
    let schemas = status["tenants"]["schemas"].as_array().unwrap();
    let acme = schemas.iter().find(|s| s["tenant"] == "acme").unwrap();
    assert_eq!(acme["server"], "eu-1", "{status}");
    assert_eq!(acme["version"], 1, "{status}");
    assert_eq!(acme["pending"], 0, "{status}");
    let text = ctx.ok(&["migrate", "status"]);
    assert!(text.contains("TENANT  SCHEMA       SERVER"), "{text}");
    let line = text.lines().find(|l| l.starts_with("acme")).unwrap();
    assert!(line.contains("eu-1"), "{text}");

    // An archive imports onto a server.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.tar");
    let file = file.to_str().unwrap();
    ctx.ok(&["tenant", "export", "acme", "--output", file]);
    let copy = json(&ctx.ok(&[
        "tenant",
        "import",
        file,
        "--as",
        "acme-copy",
        "--server",
        "eu-1",
        "--json",
    ]));
    assert_eq!(copy["tenant"]["placement"]["server"], "eu-1", "{copy}");
    assert_eq!(copy["rows"], 250, "{copy}");
    let err = ctx.fails(&[
        "tenant", "import", file, "--as", "lost", "--server", "nowhere",
    ]);
    assert!(err.contains("nowhere"), "{err}");
    assert!(ctx.fails(&["tenant", "show", "lost"]).contains("lost"));

    // A provisioning a killed process left half done: doctor finds it and
    // --repair undoes it on its server.
    ctx.exec("UPDATE public.tenants SET status = 'provisioning' WHERE id = 'acme'")
        .await;
    let out = ctx.cmd().args(["doctor", "--json"]).output().unwrap();
    let report = json(&String::from_utf8(out.stdout).unwrap());
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "interrupted provisionings")
        .unwrap_or_else(|| panic!("no provisioning check: {report}"));
    assert_eq!(check["status"], "problem", "{report}");
    assert!(
        check["items"][0]
            .as_str()
            .unwrap()
            .starts_with("acme on server eu-1")
    );
    let out = ctx.ok(&["doctor", "--repair"]);
    assert!(
        out.contains("repaired: 1 provisioning undone on their servers"),
        "{out}"
    );
    let gone: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_acme')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(gone);
    let err = ctx.fails(&["tenant", "show", "acme"]);
    assert!(err.contains("acme"), "{err}");
}
