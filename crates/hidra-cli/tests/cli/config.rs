//! Settings come from flags, then the environment, then the configuration
//! file, then defaults.

use crate::common::{Ctx, bare, error_line, json};

#[tokio::test]
async fn flags_beat_environment_beat_file() {
    let ctx = Ctx::new().await;
    // Everything from `hidra.toml` in the current directory; paths in it are
    // relative to it.
    std::fs::write(
        ctx.dir.path().join("hidra.toml"),
        format!(
            "database_url = \"{}\"\nschema_prefix = \"file_\"\ntenant_migrations = \"tenant\"\n",
            ctx.db.url()
        ),
    )
    .unwrap();
    let cmd = || {
        let mut cmd = bare();
        cmd.current_dir(ctx.dir.path());
        cmd
    };
    let schema = |out: std::process::Output| -> String {
        let tenant = json(&crate::common::success(out));
        tenant["placement"]["schema"].as_str().unwrap().to_owned()
    };
    crate::common::success(cmd().arg("init").output().unwrap());

    let out = cmd()
        .args(["tenant", "create", "one", "--json"])
        .output()
        .unwrap();
    assert_eq!(schema(out), "file_one");
    // The file's relative migrations directory was used.
    assert!(ctx.exists("file_one.items").await);

    let out = cmd()
        .env("HIDRA_SCHEMA_PREFIX", "env_")
        .args(["tenant", "create", "two", "--json"])
        .output()
        .unwrap();
    assert_eq!(schema(out), "env_two");

    let out = cmd()
        .env("HIDRA_SCHEMA_PREFIX", "env_")
        .args([
            "tenant",
            "create",
            "three",
            "--json",
            "--schema-prefix",
            "flag_",
        ])
        .output()
        .unwrap();
    assert_eq!(schema(out), "flag_three");

    // DATABASE_URL beats the file's database_url.
    let out = cmd()
        .env("DATABASE_URL", crate::common::UNREACHABLE)
        .args(["tenant", "list"])
        .output()
        .unwrap();
    assert!(error_line(&out).contains("127.0.0.1:1"));

    // --config names another file, wherever it is.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().join("other.toml");
    std::fs::write(
        &other,
        format!(
            "database_url = \"{}\"\nschema_prefix = \"other_\"\n",
            ctx.db.url()
        ),
    )
    .unwrap();
    let out = bare()
        .current_dir(elsewhere.path())
        .args(["tenant", "create", "four", "--json", "--config"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(schema(out), "other_four");
}

#[test]
fn configuration_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare()
        .current_dir(dir.path())
        .args(["tenant", "list", "--config", "missing.toml"])
        .output()
        .unwrap();
    let err = error_line(&out);
    assert!(
        err.starts_with("error: cannot read the configuration file missing.toml"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("hidra.toml"),
        "schema_prefix = \"t_\"\ndatabse_url = \"postgres://x\"\n",
    )
    .unwrap();
    let out = bare()
        .current_dir(dir.path())
        .args(["tenant", "list"])
        .output()
        .unwrap();
    let err = error_line(&out);
    assert!(
        err.starts_with(
            "error: invalid configuration file hidra.toml (line 2): unknown field `databse_url`"
        ),
        "{err}"
    );

    std::fs::write(dir.path().join("hidra.toml"), "schema_prefix = \n").unwrap();
    let out = bare()
        .current_dir(dir.path())
        .args(["tenant", "list"])
        .output()
        .unwrap();
    let err = error_line(&out);
    assert!(
        err.starts_with("error: invalid configuration file hidra.toml (line 1)"),
        "{err}"
    );
}
