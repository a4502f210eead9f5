//! `hidra top` against a running service's `/health/detailed`.

use hidra::{Hidra, NewTenant, TenantId};

use crate::common::*;

/// A service with hidra-axum's health routes on a free port; its address.
async fn serve(hidra: Hidra) -> std::net::SocketAddr {
    let app: axum::Router = hidra_axum::health::Health::new(hidra).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || bare().args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_tenants_holding_connections_and_their_rates() {
    let ctx = Ctx::new().await;
    let hidra = Hidra::builder()
        .schema_sql("001_items", ITEMS)
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    hidra.install().await.unwrap();
    let busy = hidra
        .provision(NewTenant::new(TenantId::new("busy-one").unwrap()))
        .await
        .unwrap();
    let quiet = hidra
        .provision(NewTenant::new(TenantId::new("quiet").unwrap()))
        .await
        .unwrap();
    drop(hidra.acquire(&quiet).await.unwrap());
    let _held = (
        hidra.acquire(&busy).await.unwrap(),
        hidra.begin(&busy).await.unwrap(),
    );
    let url = format!("http://{}/health/detailed", serve(hidra.clone()).await);

    let output = run(vec![
        "top".into(),
        "--url".into(),
        url.clone(),
        "-n".into(),
        "2".into(),
        "--interval".into(),
        "0.5".into(),
    ])
    .await;
    let stdout = success(output);
    let frames: Vec<&str> = stdout.split("hidra top - ").skip(1).collect();
    assert_eq!(frames.len(), 2, "{stdout}");
    for frame in &frames {
        assert!(frame.contains("pool "), "{frame}");
        let header = frame.lines().find(|l| l.starts_with("TENANT")).unwrap();
        assert!(header.contains("CONNS"), "{frame}");
        let line = frame.lines().find(|l| l.starts_with("busy-one")).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[1], "2", "{frame}");
        // The quiet tenant holds nothing: it is in the busiest list below the
        // busy one or summed in the others.
        assert!(
            frame.contains("quiet") || frame.contains("others"),
            "{frame}"
        );
    }
    // Rates appear from the second refresh on: connection time per second
    // is the connections held on average, two here.
    let first = frames[0]
        .lines()
        .find(|l| l.starts_with("busy-one"))
        .unwrap();
    assert_eq!(first.split_whitespace().nth(2), Some("-"), "{first}");
    let second = frames[1]
        .lines()
        .find(|l| l.starts_with("busy-one"))
        .unwrap();
    let per_second: f64 = second.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((1.0..=3.0).contains(&per_second), "{second}");

    let output = run(vec![
        "top".into(),
        "--url".into(),
        url,
        "-n".into(),
        "1".into(),
        "--json".into(),
    ])
    .await;
    let stdout = success(output);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["tenants"]["busiest"][0]["tenant"], "busy-one");
    assert_eq!(report["tenants"]["busiest"][0]["load"]["connections"], 2);
}

#[tokio::test]
async fn top_says_what_is_wrong_with_a_service_it_cannot_read() {
    let output = run(vec![
        "top".into(),
        "--url".into(),
        "http://127.0.0.1:1/health/detailed".into(),
        "-n".into(),
        "1".into(),
    ])
    .await;
    let line = error_line(&output);
    assert!(
        line.contains("could not read http://127.0.0.1:1/health/detailed"),
        "{line}"
    );
    let output = run(vec![
        "top".into(),
        "--url".into(),
        "https://example.invalid/x".into(),
    ])
    .await;
    assert!(error_line(&output).contains("only http://"));
}
