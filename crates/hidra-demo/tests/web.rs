//! What a browser meets: the documentation UI rendered by a real browser with
//! no internet. The demo runs as its real binary on a throw-away database.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::Demo;
use hidra::testing::TestDatabase;

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
