//! What a browser meets: the documentation UI rendered by a real browser with
//! no internet, the CORS policy, and compressed answers. The demo runs as its
//! real binary on a throw-away database.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{Body, Demo, Resp};
use hidra::testing::TestDatabase;
use reqwest::Method;

/// Set to make the browser test fail, rather than skip, without Chromium
/// (CI sets it: a skipped test there would hide a blank docs page).
const REQUIRE_CHROMIUM: &str = "HIDRA_REQUIRE_CHROMIUM";

/// Debian's `chromium` on `PATH`.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

async fn demo(envs: &[(&str, &str)]) -> (TestDatabase, Demo) {
    let db = TestDatabase::create()
        .await
        .expect("create a test database");
    let demo = Demo::start_with(Some(db.url()), &["--port", "0"], envs).await;
    (db, demo)
}

/// `/docs` in headless Chromium, with every host name unresolvable (as in an
/// air-gapped deployment): the UI's scripts come from the demo itself, and
/// the operations of the OpenAPI document are on the rendered page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_renders_its_operations_offline_in_a_browser() {
    let Some(chromium) = chromium() else {
        let required = std::env::var(REQUIRE_CHROMIUM).is_ok_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "{REQUIRE_CHROMIUM} is set but `chromium` is not on PATH: `apt-get install chromium`"
        );
        // Straight to the process's stderr: the test harness shows what
        // `eprintln!` prints only for failed tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED the_docs_page_renders_its_operations_offline_in_a_browser: \
             `chromium` is not on PATH (`apt-get install chromium`, or set \
             {REQUIRE_CHROMIUM}=1 to make this a failure) !!!\n"
        );
        return;
    };
    let (_db, demo) = demo(&[]).await;
    let profile = tempfile::tempdir().expect("a browser profile directory");
    let mut browser = tokio::process::Command::new(chromium);
    browser
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            // No name resolves: anything the page wants from the internet fails.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            // Time for the scripts to fetch the document and render it.
            "--virtual-time-budget=30000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // `/docs` redirects to the UI at `/docs/`.
        .arg(format!("{}/docs", demo.base))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // A guard against a hung browser, not a measure of speed.
    let out = tokio::time::timeout(Duration::from_secs(300), browser.output())
        .await
        .expect("chromium did not exit within 5 minutes")
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let context = || {
        format!(
            "\n----- chromium ({}) stderr -----\n{}\n----- DOM -----\n{dom}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(out.status.success(), "{}", context());
    for expected in [
        // Operations of the document, each rendered as a block with its path
        // and summary.
        r#"data-path="/customers""#,
        r#"data-path="/signup""#,
        "Creates a customer",
        "Hidra demo SaaS API",
    ] {
        assert!(
            dom.contains(expected),
            "the rendered /docs has no {expected:?}{}",
            context()
        );
    }
}

/// The preflight of a browser's `POST /customers` with a token and JSON.
async fn preflight(demo: &Demo, origin: &str) -> Resp {
    demo.send(
        Method::OPTIONS,
        "/customers",
        None,
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
        Body::None,
    )
    .await
}

/// A browser page of a listed origin may call the API; one of any other
/// origin gets no `Access-Control-Allow-Origin`, so its browser keeps the
/// answer from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_configured_origins_only() {
    let (_db, demo) = demo(&[(
        "HIDRA_DEMO_CORS_ORIGINS",
        "https://app.example.test, http://localhost:5173",
    )])
    .await;
    for origin in ["https://app.example.test", "http://localhost:5173"] {
        let r = preflight(&demo, origin).await;
        demo.expect(&r, 200);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{r:?}"
        );
        let methods = r.header("access-control-allow-methods").unwrap_or_default();
        assert!(methods.contains("POST"), "{r:?}");
        let headers = r
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "{r:?}"
        );
    }
    // The real request of an allowed origin carries the header too.
    let r = demo
        .get_with("/health", None, &[("origin", "https://app.example.test")])
        .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.test")
    );

    for origin in ["https://evil.example.test", "https://app.example.test.evil"] {
        let r = preflight(&demo, origin).await;
        assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
        let r = demo.get_with("/health", None, &[("origin", origin)]).await;
        assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    }
}

/// Without `HIDRA_DEMO_CORS_ORIGINS` no origin is allowed; a malformed one
/// stops the demo before it creates anything, with a message saying how to
/// write it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_no_origin_by_default_and_refuses_a_malformed_one() {
    let (db, demo) = demo(&[]).await;
    let r = preflight(&demo, "http://localhost:5173").await;
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    drop(demo);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hidra-demo"))
        .env("DATABASE_URL", db.url())
        .env("HIDRA_DEMO_CORS_ORIGINS", "https://app.example.test/")
        .args(["--port", "0"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run hidra-demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`https://app.example.test/` is not an origin"),
        "{stderr}"
    );
}

/// Answers are gzip-compressed for clients that accept it, and only for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_compressed_when_the_client_accepts_gzip() {
    let (_db, demo) = demo(&[]).await;
    let compressed = demo
        .client
        .get(format!("{}/docs/openapi.json", demo.base))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("GET /docs/openapi.json");
    assert_eq!(compressed.status(), 200);
    assert_eq!(
        compressed
            .headers()
            .get("content-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let gzipped = compressed.bytes().await.expect("the compressed body");
    // The gzip magic number, and smaller than the plain document.
    assert_eq!(&gzipped[..2], &[0x1f, 0x8b]);

    let r = demo.get("/docs/openapi.json", None).await;
    demo.expect(&r, 200);
    assert_eq!(r.header("content-encoding"), None);
    assert!(gzipped.len() < r.text.len(), "{} bytes", gzipped.len());
}
