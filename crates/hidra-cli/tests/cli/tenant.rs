use crate::common::{Ctx, json, without_settings};

#[tokio::test]
async fn tenant_lifecycle() {
    let ctx = Ctx::initialized().await;

    let out = ctx.ok(&[
        "tenant",
        "create",
        "acme",
        "--name",
        "Acme Inc",
        "--metadata",
        r#"{"plan":"pro"}"#,
    ]);
    assert!(
        out.contains("created tenant `acme` (schema tenant_acme, migrations at version 1, active)"),
        "{out}"
    );
    // The tenant migration ran in its schema.
    assert!(ctx.exists("tenant_acme.items").await);
    let created = json(&ctx.ok(&["tenant", "create", "globex-corp", "--json"]));
    assert_eq!(created["id"], "globex-corp");
    assert_eq!(created["placement"]["schema"], "tenant_globex_corp");
    ctx.ok(&["tenant", "create", "initech"]);

    let shown = json(&ctx.ok(&["tenant", "show", "acme", "--json"]));
    assert_eq!(shown["name"], "Acme Inc");
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["metadata"]["plan"], "pro");
    let out = ctx.ok(&["tenant", "show", "acme"]);
    assert!(out.contains("schema:    tenant_acme"), "{out}");

    let out = ctx.ok(&["tenant", "list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("ID"), "{out}");
    assert!(
        lines[1].starts_with("acme ") && lines[1].contains("Acme Inc"),
        "{out}"
    );
    assert!(lines[2].starts_with("globex-corp "), "{out}");
    let listed = json(&ctx.ok(&["tenant", "list", "--json", "--limit", "2"]));
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "globex-corp"]);
    let found = json(&ctx.ok(&["tenant", "list", "--json", "--search", "INC"]));
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["id"], "acme");

    let out = ctx.ok(&["tenant", "suspend", "acme"]);
    assert_eq!(out.trim(), "tenant `acme` is suspended");
    let suspended = json(&ctx.ok(&["tenant", "list", "--status", "suspended", "--json"]));
    assert_eq!(suspended.as_array().unwrap().len(), 1);
    assert_eq!(suspended[0]["id"], "acme");
    let out = ctx.ok(&["tenant", "activate", "acme"]);
    assert_eq!(out.trim(), "tenant `acme` is active");

    let out = ctx.ok(&["tenant", "delete", "acme", "--yes"]);
    assert!(out.contains("deleted tenant `acme`"), "{out}");
    assert!(!ctx.exists("tenant_acme").await);
    let left = json(&ctx.ok(&["tenant", "list", "--json"]));
    assert_eq!(left.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn tenant_errors() {
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "acme"]);

    for args in [
        &["tenant", "create", "Acme"][..],
        &["tenant", "show", "pg_catalog"],
        &["tenant", "suspend", "1abc"],
        &["tenant", "activate", "a b"],
        &["tenant", "delete", "hidra", "--yes"],
    ] {
        let err = ctx.fails(args);
        assert!(
            err.starts_with("error: invalid tenant id"),
            "{args:?}: {err}"
        );
    }
    for args in [
        &["tenant", "show", "nope"][..],
        &["tenant", "suspend", "nope"],
        &["tenant", "activate", "nope"],
        &["tenant", "delete", "nope", "--yes"],
    ] {
        assert_eq!(
            ctx.fails(args),
            "error: tenant `nope` not found",
            "{args:?}"
        );
    }
    let err = ctx.fails(&["tenant", "create", "acme"]);
    assert!(err.contains("tenant `acme` already exists"), "{err}");
    let err = ctx.fails(&["tenant", "create", "other", "--metadata", "[1]"]);
    assert!(err.contains("expected a JSON object"), "{err}");
    let err = ctx.fails(&["tenant", "create", "other", "--metadata", "{oops"]);
    assert!(err.contains("invalid --metadata"), "{err}");
    assert!(!ctx.exists("tenant_other").await);

    // Without --yes and without a terminal: refused, nothing deleted.
    let err = ctx.fails(&["tenant", "delete", "acme"]);
    assert!(err.contains("pass --yes"), "{err}");
    assert!(ctx.exists("tenant_acme").await);
    let err = error_with_stdin(&ctx, &["tenant", "delete", "acme"], "acme\n");
    assert!(err.contains("pass --yes"), "{err}");
    assert!(ctx.exists("tenant_acme").await);

    // Activating a tenant being deleted is refused by the core.
    ctx.exec("UPDATE tenants SET status = 'deleting' WHERE id = 'acme'")
        .await;
    let err = ctx.fails(&["tenant", "activate", "acme"]);
    assert!(err.contains("tenant `acme` is deleting"), "{err}");
}

fn error_with_stdin(ctx: &Ctx, args: &[&str], stdin: &str) -> String {
    crate::common::error_line(&ctx.cmd().args(args).write_stdin(stdin).output().unwrap())
}

#[tokio::test]
async fn create_without_tenant_migrations_says_so() {
    let ctx = Ctx::initialized().await;
    let out = ctx
        .cmd()
        .env_remove("HIDRA_TENANT_MIGRATIONS")
        .args(["tenant", "create", "bare"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("note: no tenant migrations configured"),
        "{stderr}"
    );
    assert!(ctx.exists("tenant_bare").await);
    assert!(!ctx.exists("tenant_bare.items").await);
}

#[tokio::test]
async fn listing_nothing() {
    let ctx = Ctx::initialized().await;
    assert_eq!(ctx.ok(&["tenant", "list", "--json"]).trim(), "[]");
    let out = ctx.cmd().args(["tenant", "list"]).output().unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(String::from_utf8(out.stderr).unwrap().trim(), "no tenants");
}

/// `delete` on a terminal asks for the id again; `script` gives the command
/// a pseudo-terminal and types the answer.
#[tokio::test]
async fn delete_asks_for_the_id_on_a_terminal() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "acme"]);
    // Runs `tenant delete acme` on a pseudo-terminal that receives `answer`.
    let script = |answer: &str| {
        let mut cmd = without_settings(assert_cmd::Command::new("script"));
        cmd.current_dir(ctx.dir.path())
            .env("DATABASE_URL", ctx.db.url())
            .env("HIDRA_TENANT_MIGRATIONS", ctx.tenant_dir())
            .args([
                "-qec",
                &format!("'{}' tenant delete acme", env!("CARGO_BIN_EXE_hidra")),
                "/dev/null",
            ])
            .write_stdin(format!("{answer}\n"));
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    let (code, screen) = script("globex");
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains("Type the tenant id to confirm"), "{screen}");
    assert!(screen.contains("confirmation did not match"), "{screen}");
    assert!(ctx.exists("tenant_acme").await);

    let (code, screen) = script("acme");
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("deleted tenant `acme`"), "{screen}");
    assert!(!ctx.exists("tenant_acme").await);
}

/// `tenant create` before `hidra init` says what to do and creates nothing:
/// no schema of the tenant, no internal schema of Hidra.
#[tokio::test]
async fn create_without_a_registry_leaves_nothing_behind() {
    let ctx = Ctx::new().await;
    let err = ctx.fails(&["tenant", "create", "acme"]);
    assert!(
        err.contains("registry table") && err.contains("hidra init"),
        "{err}"
    );
    assert!(!ctx.exists("hidra").await);
    assert!(!ctx.exists("tenant_acme").await);
    // And once initialized, the same command works.
    ctx.ok(&["init"]);
    ctx.ok(&["tenant", "create", "acme"]);
    assert!(ctx.exists("tenant_acme.items").await);
}
