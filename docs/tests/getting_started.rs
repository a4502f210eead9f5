//! The getting-started chapter's application, run as the chapter says
//! (`DATABASE_URL=… cargo run`), answers the chapter's `curl` commands as the
//! chapter says it does.

use std::process::Stdio;
use std::time::Duration;

use hidra::testing::TestDatabase;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_getting_started_application_serves_two_tenants() {
    let db = TestDatabase::create().await.unwrap();
    let mut app = tokio::process::Command::new(env!("CARGO_BIN_EXE_getting-started"))
        .env("DATABASE_URL", db.url())
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the getting-started application");
    let mut lines = BufReader::new(app.stdout.take().unwrap()).lines();
    // A guard against a hung start, not a measure of speed.
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("the application says where it listens")
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    let base = format!("http://{addr}/notes");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let send = |tenant: &'static str, body: Option<&'static str>| {
        let request = match body {
            Some(b) => client.post(&base).body(b),
            None => client.get(&base),
        };
        async move {
            let r = request.header("x-tenant-id", tenant).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    let (status, _) = send("acme", Some("buy milk")).await;
    assert_eq!(status, 200);
    assert_eq!(
        send("acme", None).await,
        (200, r#"{"notes":["buy milk"],"tenant":"acme"}"#.to_owned())
    );
    assert_eq!(
        send("globex", None).await,
        (200, r#"{"notes":[],"tenant":"globex"}"#.to_owned())
    );
    let (status, body) = send("nobody", None).await;
    assert_eq!(status, 404);
    assert!(body.contains("tenant_not_found"), "{body}");

    app.kill().await.unwrap();
    db.drop_now().await.unwrap();
}
