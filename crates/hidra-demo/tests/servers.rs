//! `--servers N`: the demo starts N more throw-away PostgreSQL servers,
//! registers them and places its tenants on them; requests reach each
//! tenant's data on its own server, and the registry stays on the first.

mod common;

use common::Demo;
use serde_json::{Value, json};
use sqlx::Connection;

const ADMIN: &str = "operator-token-0123456789abcdef0123456789";
const PASSWORD: &str = "correct horse battery";

/// The `server local-N: <url>` lines the demo prints.
fn server_urls(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("server "))
        .filter_map(|l| l.split_once(": "))
        .map(|(name, url)| (name.to_owned(), url.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_spread_over_the_servers_it_starts() {
    let demo = Demo::start_with(
        None,
        &["--port", "0", "--servers", "2"],
        &[("HIDRA_DEMO_ADMIN_TOKEN", ADMIN)],
    )
    .await;
    // Printed right after the listening line.
    let servers = hidra_test_support::wait_for("the server lines", || {
        let servers = server_urls(&demo.api.output.stdout());
        async move { (servers.len() == 2).then_some(servers) }
    })
    .await;
    assert_eq!(
        servers.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["local-1", "local-2"]
    );

    // The demo tenants and two sign-ups, placed by the fewest tenants.
    for tenant in ["initech", "hooli"] {
        let email = format!("boss@{tenant}.test");
        let r = demo.signup(tenant, tenant, &email, "Boss", PASSWORD).await;
        demo.expect(&r, 201);
    }
    let mut placed = std::collections::BTreeMap::<String, Vec<String>>::new();
    for tenant in ["acme", "globex", "initech", "hooli"] {
        let view = demo.expect(
            &demo
                .get(&format!("/admin/tenants/{tenant}"), Some(ADMIN))
                .await,
            200,
        );
        let server = view["placement"]["server"]
            .as_str()
            .unwrap_or_else(|| panic!("{tenant} is on the control server: {view}"))
            .to_owned();
        placed.entry(server).or_default().push(tenant.to_owned());
    }
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert!(placed.values().all(|t| t.len() == 2), "{placed:?}");

    // Each tenant works through the API and sees only its own customers.
    let acme = demo
        .login_ok("admin@acme.test", common::DEMO_PASSWORD)
        .await;
    let initech = demo.login_ok("boss@initech.test", PASSWORD).await;
    let r = demo
        .post("/customers", Some(&acme), json!({"name": "Only at Acme"}))
        .await;
    demo.expect(&r, 201);
    let r = demo
        .post(
            "/customers",
            Some(&initech),
            json!({"name": "Only at Initech"}),
        )
        .await;
    demo.expect(&r, 201);
    let names = |v: Value| -> Vec<String> {
        v["items"]
            .as_array()
            .or(v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let seen = names(demo.expect(&demo.get("/customers", Some(&initech)).await, 200));
    assert!(seen.contains(&"Only at Initech".to_owned()), "{seen:?}");
    assert!(!seen.contains(&"Only at Acme".to_owned()), "{seen:?}");

    // An order of a tenant on a server is confirmed by the background job,
    // whose table is on the first server.
    let initech_customer = demo.expect(&demo.get("/customers", Some(&initech)).await, 200);
    let customer = initech_customer["items"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no customer id in {initech_customer}"));
    let product = demo.expect(
        &demo
            .post(
                "/products",
                Some(&initech),
                json!({"sku": "TPS-1", "name": "TPS cover sheet", "price_cents": 150, "stock": 10}),
            )
            .await,
        201,
    );
    let order = demo.expect(
        &demo
            .post(
                "/orders",
                Some(&initech),
                json!({"customer_id": customer, "items": [{"product_id": product["id"], "quantity": 2}]}),
            )
            .await,
        201,
    );
    let path = format!("/orders/{}", order["id"]);
    hidra_test_support::wait_for("the order's confirmation", || {
        let (demo, path, initech) = (&demo, path.clone(), initech.clone());
        async move {
            let order = demo.expect(&demo.get(&path, Some(&initech)).await, 200);
            (!order["confirmed_at"].is_null()).then_some(())
        }
    })
    .await;

    // The rows are on the tenant's server, in its schema, and nowhere else.
    for (server, url) in &servers {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let schemas: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tenant_%' ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let want: Vec<String> = placed[server]
            .iter()
            .map(|t| format!("tenant_{t}"))
            .collect();
        assert_eq!(schemas, want, "{server}");
        if placed[server].contains(&"acme".to_owned()) {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tenant_acme.customers WHERE name = 'Only at Acme'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert_eq!(n, 1);
        }
    }

    // The health probe reports both servers.
    let health = demo.expect(&demo.get("/health/detailed", None).await, 200);
    let text = health.to_string();
    assert!(
        text.contains("local-1") && text.contains("local-2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_with_a_database_url_are_refused() {
    let db = hidra::testing::TestDatabase::create().await.unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hidra-demo"))
        .args(["--port", "0", "--servers", "1"])
        .env("DATABASE_URL", db.url())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--servers"), "{err}");
    db.drop_now().await.unwrap();
}
