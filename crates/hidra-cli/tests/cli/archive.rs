use crate::common::{Ctx, json};

#[tokio::test]
async fn tenant_export_and_import() {
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "acme", "--name", "Acme Inc"]);
    ctx.exec("INSERT INTO tenant_acme.items (n) SELECT g FROM generate_series(1, 500) g")
        .await;
    ctx.ok_with_pepper(&["api-key", "create", "acme", "--name", "ci"]);
    let file = ctx.dir.path().join("acme.tar");
    let file = file.to_str().unwrap();

    let out = ctx.ok(&["tenant", "export", "acme", "--output", file]);
    assert!(
        out.starts_with(&format!(
            "exported tenant `acme` to {file}: 1 tables, 500 rows, 0 logins, 1 API keys, migration version 1,"
        )),
        "{out}"
    );

    // Under a new id: same rows, the API key left out (with a note).
    let output = ctx
        .cmd()
        .args(["tenant", "import", file, "--as", "acme-copy", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    let summary = json(&crate::common::success(output));
    assert_eq!(summary["tenant"]["id"], "acme-copy");
    assert_eq!(summary["tenant"]["name"], "Acme Inc");
    assert_eq!(summary["rows"], 500);
    assert_eq!(summary["api_keys_left_out"], 1);
    assert!(stderr.contains("importing: 500/500 rows"), "{stderr}");
    let same: bool = ctx
        .scalar(
            "SELECT (SELECT array_agg((id, n) ORDER BY id) FROM tenant_acme.items) \
             = (SELECT array_agg((id, n) ORDER BY id) FROM tenant_acme_copy.items)",
        )
        .await;
    assert!(same);

    // A taken id, a damaged archive, an unknown tenant: one error line each,
    // nothing created, no archive left behind.
    let err = ctx.fails(&["tenant", "import", file]);
    assert!(err.contains("tenant `acme` already exists"), "{err}");
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() / 2;
    bytes.truncate(at);
    let damaged = ctx.dir.path().join("damaged.tar");
    std::fs::write(&damaged, bytes).unwrap();
    let err = ctx.fails(&[
        "tenant",
        "import",
        damaged.to_str().unwrap(),
        "--as",
        "other",
    ]);
    assert!(
        err.starts_with(
            "error: the tenant archive is damaged: the archive is truncated; nothing was imported"
        ),
        "{err}"
    );
    assert!(!ctx.exists("tenant_other").await);
    let missing = ctx.dir.path().join("nobody.tar");
    let err = ctx.fails(&[
        "tenant",
        "export",
        "nobody",
        "--output",
        missing.to_str().unwrap(),
    ]);
    assert!(err.contains("tenant `nobody` not found"), "{err}");
    assert!(!missing.exists());
    let left: Vec<_> = std::fs::read_dir(ctx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let ids = json(&ctx.ok(&["tenant", "list", "--json"]));
    let ids: Vec<&str> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "acme-copy"]);
}
