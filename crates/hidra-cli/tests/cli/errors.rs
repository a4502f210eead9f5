//! Failures common to every subcommand: an unreachable or silent database,
//! bad input caught before connecting, usage mistakes.

use std::time::{Duration, Instant};

use crate::common::{PEPPER, UNREACHABLE, bare, error_line};

/// Every subcommand that talks to the database.
const COMMANDS: &[&[&str]] = &[
    &["init"],
    &["tenant", "create", "acme"],
    &["tenant", "list"],
    &["tenant", "show", "acme"],
    &["tenant", "suspend", "acme"],
    &["tenant", "activate", "acme"],
    &["tenant", "delete", "acme", "--yes"],
    &["migrate"],
    &["migrate", "status"],
    &["api-key", "create", "acme"],
    &["api-key", "list", "acme"],
    &["api-key", "rotate", "0123456789abcdef01234567"],
    &["api-key", "revoke", "0123456789abcdef01234567"],
    &[
        "api-key",
        "verify",
        "hk_0123456789abcdef01234567_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ],
];

#[test]
fn an_unreachable_database_is_one_line_naming_it_without_the_password() {
    let migrations = tempfile::tempdir().unwrap();
    for args in COMMANDS {
        let started = Instant::now();
        let out = bare()
            .env("DATABASE_URL", UNREACHABLE)
            .env("HIDRA_TENANT_MIGRATIONS", migrations.path())
            .env("HIDRA_API_KEY_PEPPER", PEPPER)
            .args(*args)
            .output()
            .unwrap();
        let err = error_line(&out);
        assert!(
            err.starts_with(
                "error: cannot connect to PostgreSQL at postgres://someone:***@127.0.0.1:1/app: "
            ),
            "{args:?}: {err}"
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} was slow"
        );
    }

    // The doctor reports it as its first finding.
    let detail = doctor_database_problem(bare().env("DATABASE_URL", UNREACHABLE));
    assert!(detail.contains("someone:***@127.0.0.1:1"), "{detail}");
    assert!(!detail.contains("s3cret"));
}

/// Runs `doctor --json` with `cmd`, expects the database check to be its one
/// problem, and returns that check's detail.
fn doctor_database_problem(cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.args(["doctor", "--json"]).output().unwrap();
    assert_eq!(error_line(&out), "error: doctor found 1 problem");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checks"][0]["name"], "database");
    assert_eq!(report["checks"][0]["status"], "problem");
    report["checks"][0]["detail"].as_str().unwrap().to_owned()
}

/// Without a database named (no `DATABASE_URL`, `--database-url` or
/// `database_url` in `hidra.toml`), nothing runs: no command guesses a
/// database to create, migrate or delete things in.
#[test]
fn every_command_needs_a_database_named() {
    let empty = tempfile::tempdir().unwrap();
    let migrations = tempfile::tempdir().unwrap();
    for args in COMMANDS {
        let out = bare()
            .current_dir(empty.path())
            .env("HIDRA_TENANT_MIGRATIONS", migrations.path())
            .env("HIDRA_API_KEY_PEPPER", PEPPER)
            .args(*args)
            .output()
            .unwrap();
        assert_eq!(
            error_line(&out),
            "error: no database given: set DATABASE_URL, pass --database-url URL, \
             or set database_url in hidra.toml",
            "{args:?}"
        );
    }
    // The doctor reports it as its first finding.
    let detail = doctor_database_problem(bare().current_dir(empty.path()));
    assert!(detail.starts_with("no database given"), "{detail}");
}

#[test]
fn a_silent_server_times_out_quickly() {
    // Accepts connections (the kernel's backlog) and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("postgres://u:pw@{}/app", listener.local_addr().unwrap());
    let started = Instant::now();
    let out = bare()
        .env("DATABASE_URL", &url)
        .args(["tenant", "list", "--connect-timeout", "1"])
        .output()
        .unwrap();
    let err = error_line(&out);
    assert!(err.contains("no answer within 1 s"), "{err}");
    assert!(err.contains("postgres://u:***@127.0.0.1:"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(listener);
}

#[test]
fn bad_input_is_refused_before_connecting() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["tenant", "create", "Acme"],
            "error: invalid tenant id \"Acme\"",
        ),
        (
            &["tenant", "delete", "pg_x", "--yes"],
            "error: invalid tenant id \"pg_x\"",
        ),
        (
            &["migrate", "--tenant", "x y"],
            "error: invalid tenant id \"x y\"",
        ),
        (
            &["api-key", "list", "Nope"],
            "error: invalid tenant id \"Nope\"",
        ),
        (
            &["api-key", "revoke", "hk_short"],
            "error: invalid API key id",
        ),
        (
            &["api-key", "create", "acme"],
            "error: HIDRA_API_KEY_PEPPER is not set",
        ),
        (
            &["tenant", "list", "--registry-table", "Bad Table"],
            "error: the registry table setting: invalid configuration",
        ),
    ];
    for (args, expected) in cases {
        let out = bare()
            .env("DATABASE_URL", UNREACHABLE)
            .args(*args)
            .output()
            .unwrap();
        let err = error_line(&out);
        assert!(err.starts_with(expected), "{args:?}: {err}");
    }
}

#[test]
fn usage_mistakes_exit_with_2_and_help_works() {
    for args in [
        &["tenant"][..],
        &["tenant", "frobnicate"],
        &["tenant", "list", "--status", "sleeping"],
        &["api-key", "create", "acme", "--expires-in", "soon"],
        &["migrate", "--concurrency", "0"],
    ] {
        let out = bare().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("error: ") || stderr.contains("Usage: hidra"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    for args in [
        &["--help"][..],
        &["tenant", "--help"],
        &["migrate", "status", "--help"],
    ] {
        let out = bare().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
    }
    let out = bare().arg("--version").output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("hidra "));
}

#[test]
fn an_invalid_database_url_is_named_without_the_password() {
    let out = bare()
        .env("DATABASE_URL", "postgres://u:s3cret@[::1/app")
        .args(["tenant", "list"])
        .output()
        .unwrap();
    let err = error_line(&out);
    assert!(
        err.starts_with("error: invalid database URL postgres://u:***@[::1/app"),
        "{err}"
    );
    assert!(!err.contains("s3cret"));
}
