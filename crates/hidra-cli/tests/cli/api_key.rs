use crate::common::{Ctx, PEPPER, error_line, json};

/// The key id inside a full key `hk_<id>_<secret>`.
fn key_id(key: &str) -> &str {
    &key[3..27]
}

#[tokio::test]
async fn api_key_lifecycle() {
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "acme"]);

    // The key alone on stdout, shown once; the rest on stderr.
    let out = ctx
        .cmd()
        .env("HIDRA_API_KEY_PEPPER", PEPPER)
        .args([
            "api-key",
            "create",
            "acme",
            "--name",
            "ci",
            "--scope",
            "customers:read",
            "--scope",
            "products:*",
            "--expires-in",
            "30d",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(key.lines().count(), 1, "{key}");
    let key = key.trim().to_owned();
    assert!(
        key.starts_with("hk_") && key.len() == 3 + 24 + 1 + 64,
        "{key}"
    );
    assert!(stderr.contains("shown only this once"), "{stderr}");
    assert!(!stderr.contains(&key[28..]), "the secret leaked to stderr");
    let id = key_id(&key).to_owned();

    // Listing needs no pepper and never shows the secret.
    let list = ctx.ok(&["api-key", "list", "acme"]);
    assert!(list.contains(&format!("hk_{id}")), "{list}");
    assert!(list.contains("customers:read, products:*"), "{list}");
    assert!(!list.contains(&key[28..]), "{list}");
    let listed = json(&ctx.ok(&["api-key", "list", "acme", "--json"]));
    assert_eq!(listed[0]["key_id"], id.as_str());
    assert_eq!(listed[0]["state"], "active");
    assert!(!listed[0]["expires_at"].is_null());
    assert!(listed[0].get("key").is_none());

    // The printed key verifies, as an argument or on stdin.
    let verified = json(&ctx.ok_with_pepper(&["api-key", "verify", &key, "--json"]));
    assert_eq!(verified["tenant"], "acme");
    assert_eq!(verified["name"], "ci");
    let out = ctx
        .cmd()
        .env("HIDRA_API_KEY_PEPPER", PEPPER)
        .args(["api-key", "verify"])
        .write_stdin(format!("{key}\n"))
        .output()
        .unwrap();
    let out = crate::common::success(out);
    assert!(out.starts_with(&format!("valid: API key hk_{id}")), "{out}");

    // Rotation prints a new key once; the old one keeps working for the grace period.
    let rotated = ctx.ok_with_pepper(&["api-key", "rotate", &id]);
    let new_key = rotated.trim().to_owned();
    assert_eq!(rotated.lines().count(), 1);
    assert_ne!(new_key, key);
    let new_id = key_id(&new_key).to_owned();
    ctx.ok_with_pepper(&["api-key", "verify", &key]);
    ctx.ok_with_pepper(&["api-key", "verify", &new_key]);
    let err = error_line(
        &ctx.cmd()
            .env("HIDRA_API_KEY_PEPPER", PEPPER)
            .args(["api-key", "rotate", &format!("hk_{id}")])
            .output()
            .unwrap(),
    );
    assert!(err.contains("replaced by a rotation"), "{err}");
    let rotated = json(&ctx.ok_with_pepper(&["api-key", "rotate", &new_id, "--json"]));
    let third = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(rotated["rotated_from"], new_id.as_str());
    assert_eq!(rotated["scopes"][1], "products:*");

    // Revocation needs no pepper and takes effect at once.
    let out = ctx.ok(&["api-key", "revoke", &format!("hk_{}", key_id(&third))]);
    assert!(out.contains("revoked API key"), "{out}");
    let err = error_line(
        &ctx.cmd()
            .env("HIDRA_API_KEY_PEPPER", PEPPER)
            .args(["api-key", "verify", &third])
            .output()
            .unwrap(),
    );
    assert!(err.contains("revoked"), "{err}");
    let listed = json(&ctx.ok(&["api-key", "list", "acme", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert_eq!(listed[2]["state"], "revoked");
}

#[tokio::test]
async fn api_key_errors() {
    let ctx = Ctx::initialized().await;
    ctx.ok(&["tenant", "create", "acme"]);
    let with_pepper = |pepper: &str, args: &[&str]| {
        error_line(
            &ctx.cmd()
                .env("HIDRA_API_KEY_PEPPER", pepper)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let some_id = "0123456789abcdef01234567";
    let some_key = format!("hk_{some_id}_{}", "a".repeat(64));

    // The pepper: missing or too short.
    for args in [
        &["api-key", "create", "acme"][..],
        &["api-key", "rotate", some_id],
        &["api-key", "verify", &some_key],
    ] {
        let err = ctx.fails(args);
        assert!(
            err.starts_with("error: HIDRA_API_KEY_PEPPER is not set"),
            "{args:?}: {err}"
        );
        let err = with_pepper("short", args);
        assert!(
            err.contains(
                "HIDRA_API_KEY_PEPPER: invalid configuration: the API key pepper is 5 bytes long"
            ),
            "{args:?}: {err}"
        );
    }

    // Tenants: invalid or unknown.
    assert!(
        with_pepper(PEPPER, &["api-key", "create", "ACME"]).starts_with("error: invalid tenant id")
    );
    assert!(
        ctx.fails(&["api-key", "list", "a.b"])
            .starts_with("error: invalid tenant id")
    );
    assert_eq!(
        with_pepper(PEPPER, &["api-key", "create", "nope"]),
        "error: tenant `nope` not found"
    );
    assert_eq!(
        ctx.fails(&["api-key", "list", "nope"]),
        "error: tenant `nope` not found"
    );

    // Keys: malformed or unknown.
    assert!(
        ctx.fails(&["api-key", "revoke", "hk_xyz"])
            .contains("invalid API key id")
    );
    assert_eq!(
        ctx.fails(&["api-key", "revoke", some_id]),
        format!("error: unknown API key hk_{some_id}")
    );
    assert_eq!(
        with_pepper(PEPPER, &["api-key", "rotate", some_id]),
        format!("error: unknown API key hk_{some_id}")
    );
    assert!(with_pepper(PEPPER, &["api-key", "verify", "hk_nope"]).contains("invalid API key"));
    assert!(with_pepper(PEPPER, &["api-key", "verify", &some_key]).contains("unknown API key"));

    // A key made with one pepper does not verify with another.
    let key = ctx.ok_with_pepper(&["api-key", "create", "acme"]);
    let other = "another-pepper-0123456789abcdef-0123456789";
    assert!(with_pepper(other, &["api-key", "verify", key.trim()]).contains("invalid API key"));

    // No key table yet: say what to do.
    let fresh = Ctx::new().await;
    let err = fresh.fails(&["api-key", "revoke", some_id]);
    assert!(err.contains("run `hidra init` first"), "{err}");
}
