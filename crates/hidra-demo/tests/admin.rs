//! The operator's tenant admin API (`/admin/tenants`), end to end against the
//! real binary on a throw-away database: only the operator token opens it,
//! and each operation changes what the tenants themselves see.

mod common;

use common::{Body, Demo};
use hidra::testing::TestDatabase;
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "operator-token-0123456789abcdef0123456789";
const PASSWORD: &str = "correct horse battery";

async fn demo_with_admin() -> (TestDatabase, Demo) {
    let db = TestDatabase::create()
        .await
        .expect("create a test database");
    let demo = Demo::start_with(
        Some(db.url()),
        &["--port", "0"],
        &[("HIDRA_DEMO_ADMIN_TOKEN", ADMIN)],
    )
    .await;
    (db, demo)
}

/// Signs up `tenant` with one admin and returns the admin's token.
async fn sign_up(demo: &Demo, tenant: &str, company: &str) -> String {
    let email = format!("boss@{tenant}.test");
    let r = demo.signup(tenant, company, &email, "Boss", PASSWORD).await;
    demo.expect(&r, 201);
    demo.login_ok(&email, PASSWORD).await
}

/// A new API key of the signed-in user's tenant, reading customers.
async fn api_key(demo: &Demo, token: &str, name: &str) -> String {
    let r = demo
        .post(
            "/api-keys",
            Some(token),
            json!({"name": name, "scopes": ["customers:read"]}),
        )
        .await;
    demo.expect(&r, 201)["key"]
        .as_str()
        .expect("a key")
        .to_owned()
}

fn ids(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["id"].as_str().expect("an id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_token_opens_the_admin_api() {
    let (_db, demo) = demo_with_admin().await;
    let boss = sign_up(&demo, "acme", "Acme").await;
    let key = api_key(&demo, &boss, "ci").await;

    let attempts = [
        ("no credential", None),
        ("the tenant admin's token", Some(boss.as_str())),
        ("the tenant's API key as bearer", Some(key.as_str())),
        (
            "a wrong token",
            Some("operator-token-0123456789abcdef012345678X"),
        ),
        ("the token's prefix", Some(&ADMIN[..32])),
    ];
    for (what, token) in attempts {
        for (method, path) in [
            (Method::GET, "/admin/tenants"),
            (Method::GET, "/admin/tenants/acme"),
            (Method::POST, "/admin/tenants/acme/suspend"),
            (Method::DELETE, "/admin/tenants/acme?force=true"),
            (Method::POST, "/admin/tenants/acme/api-keys"),
            (Method::GET, "/admin/tenants/acme/export"),
        ] {
            let r = demo.send(method, path, token, &[], Body::None).await;
            demo.expect_error(&r, 401, "unauthorized");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"hidra-admin\""),
                "{what}: {r}"
            );
        }
    }
    // The key in its own header is no operator credential either.
    let r = demo
        .get_with("/admin/tenants", None, &[("x-api-key", &key)])
        .await;
    demo.expect_error(&r, 401, "unauthorized");
    // Nothing of the above changed the tenant.
    let r = demo.get("/customers", Some(&boss)).await;
    demo.expect(&r, 200);
    let r = demo.get("/admin/tenants/acme", Some(ADMIN)).await;
    assert_eq!(demo.expect(&r, 200)["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_lists_searches_and_inspects_tenants() {
    let (_db, demo) = demo_with_admin().await;
    sign_up(&demo, "acme", "Acme Corporation").await;
    sign_up(&demo, "globex", "Globex").await;
    let initech = sign_up(&demo, "initech", "Initech").await;
    // A second user of initech.
    let r = demo
        .post(
            "/users",
            Some(&initech),
            json!({"email": "peter@initech.test", "full_name": "Peter", "password": PASSWORD,
                   "roles": ["member"]}),
        )
        .await;
    demo.expect(&r, 201);

    let all = demo.expect(&demo.get("/admin/tenants", Some(ADMIN)).await, 200);
    assert_eq!(ids(&all), ["acme", "globex", "initech"]);
    assert_eq!(all["next"], Value::Null);

    // Pages follow `next`.
    let first = demo.expect(&demo.get("/admin/tenants?limit=2", Some(ADMIN)).await, 200);
    assert_eq!(ids(&first), ["acme", "globex"]);
    assert_eq!(first["next"], "globex");
    let second = demo.expect(
        &demo
            .get("/admin/tenants?limit=2&after=globex", Some(ADMIN))
            .await,
        200,
    );
    assert_eq!(ids(&second), ["initech"]);
    assert_eq!(second["next"], Value::Null);

    // Search by id or name, ignoring case; `%` is no wildcard.
    let found = demo.expect(&demo.get("/admin/tenants?q=CORP", Some(ADMIN)).await, 200);
    assert_eq!(ids(&found), ["acme"]);
    let found = demo.expect(&demo.get("/admin/tenants?q=glob", Some(ADMIN)).await, 200);
    assert_eq!(ids(&found), ["globex"]);
    let found = demo.expect(&demo.get("/admin/tenants?q=%25", Some(ADMIN)).await, 200);
    assert_eq!(ids(&found), Vec::<&str>::new());

    // Bad parameters name the field.
    demo.expect_invalid(
        &demo.get("/admin/tenants?limit=0", Some(ADMIN)).await,
        "limit",
    );
    demo.expect_invalid(
        &demo.get("/admin/tenants?limit=1001", Some(ADMIN)).await,
        "limit",
    );
    demo.expect_invalid(
        &demo.get("/admin/tenants?status=gone", Some(ADMIN)).await,
        "status",
    );
    demo.expect_invalid(
        &demo
            .get("/admin/tenants?after=Not%20An%20Id", Some(ADMIN))
            .await,
        "after",
    );

    // Detail: placement, migration version, users.
    let detail = demo.expect(&demo.get("/admin/tenants/initech", Some(ADMIN)).await, 200);
    assert_eq!(detail["id"], "initech");
    assert_eq!(detail["name"], "Initech");
    assert_eq!(detail["status"], "active");
    assert_eq!(detail["placement"]["strategy"], "schema");
    assert_eq!(detail["placement"]["schema"], "tenant_initech");
    assert_eq!(detail["users"], 2);
    assert_eq!(detail["active_api_keys"], 0);
    let latest = detail["migration"]["latest"].as_i64().expect("latest");
    assert!(latest > 0, "{detail}");
    assert_eq!(detail["migration"]["version"], latest);
    assert_eq!(detail["migration"]["pending"], 0);
    assert_eq!(
        demo.expect(&demo.get("/admin/tenants/acme", Some(ADMIN)).await, 200)["users"],
        1
    );

    for missing in ["/admin/tenants/nobody", "/admin/tenants/NOT%20AN%20ID"] {
        demo.expect_error(&demo.get(missing, Some(ADMIN)).await, 404, "not_found");
    }

    // The OpenAPI document describes the admin API and its credential.
    let doc = demo.expect(&demo.get("/docs/openapi.json", None).await, 200);
    for path in [
        "/admin/tenants",
        "/admin/tenants/{id}",
        "/admin/tenants/{id}/suspend",
        "/admin/tenants/{id}/activate",
        "/admin/tenants/{id}/api-keys",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_changes_suspends_rekeys_and_deletes_a_tenant() {
    let (db, demo) = demo_with_admin().await;
    let acme = sign_up(&demo, "acme", "Acme").await;
    let globex = sign_up(&demo, "globex", "Globex").await;
    let r = demo
        .post("/customers", Some(&acme), json!({"name": "Wile E. Coyote"}))
        .await;
    demo.expect(&r, 201);

    // Name and metadata.
    let put = |body: Value| {
        let demo = &demo;
        async move {
            demo.send(
                Method::PUT,
                "/admin/tenants/acme",
                Some(ADMIN),
                &[],
                Body::Json(body),
            )
            .await
        }
    };
    let r = put(json!({"name": "ACME Inc.", "metadata": {"plan": "pro"}})).await;
    let view = demo.expect(&r, 200);
    assert_eq!(view["name"], "ACME Inc.");
    assert_eq!(view["metadata"], json!({"plan": "pro"}));
    let r = put(json!({"metadata": {"plan": "enterprise"}})).await;
    let view = demo.expect(&r, 200);
    assert_eq!(view["name"], "ACME Inc.", "an absent name stays");
    assert_eq!(view["metadata"], json!({"plan": "enterprise"}));
    demo.expect_invalid(&put(json!({"metadata": [1, 2]})).await, "metadata");
    demo.expect_invalid(&put(json!({"name": "  "})).await, "name");
    demo.expect_invalid(&put(json!({})).await, "body");
    demo.expect_invalid(&put(json!({"status": "active"})).await, "body");
    let r = demo
        .send(
            Method::PUT,
            "/admin/tenants/nobody",
            Some(ADMIN),
            &[],
            Body::Json(json!({"name": "x"})),
        )
        .await;
    demo.expect_error(&r, 404, "not_found");

    // Suspended: the tenant's own requests are refused at once (as if it did
    // not exist: refusals never say which tenants do), the other tenant is
    // served; activated: served again.
    let r = demo
        .post("/admin/tenants/acme/suspend", Some(ADMIN), json!({}))
        .await;
    assert_eq!(demo.expect(&r, 200)["status"], "suspended");
    let r = demo.get("/customers", Some(&acme)).await;
    demo.expect_error(&r, 404, "tenant_not_found");
    demo.expect(&demo.get("/customers", Some(&globex)).await, 200);
    let r = demo
        .post("/admin/tenants/acme/activate", Some(ADMIN), json!({}))
        .await;
    assert_eq!(demo.expect(&r, 200)["status"], "active");
    demo.expect(&demo.get("/customers", Some(&acme)).await, 200);

    // Regenerating keys revokes the old ones and issues one that works.
    let old = api_key(&demo, &acme, "leaked").await;
    demo.expect(
        &demo
            .get_with("/customers", None, &[("x-api-key", &old)])
            .await,
        200,
    );
    let r = demo
        .send(
            Method::POST,
            "/admin/tenants/acme/api-keys",
            Some(ADMIN),
            &[],
            Body::None,
        )
        .await;
    let regenerated = demo.expect(&r, 201);
    assert_eq!(regenerated["revoked"], 1);
    let new = regenerated["key"]["key"].as_str().expect("the new key");
    assert_eq!(
        demo.get_with("/customers", None, &[("x-api-key", &old)])
            .await
            .status,
        401
    );
    let customers = demo.expect(
        &demo
            .get_with("/customers", None, &[("x-api-key", new)])
            .await,
        200,
    );
    assert_eq!(customers["items"][0]["name"], "Wile E. Coyote");
    let r = demo
        .post(
            "/admin/tenants/acme/api-keys",
            Some(ADMIN),
            json!({"scopes": ["users:manage"]}),
        )
        .await;
    demo.expect_invalid(&r, "scopes");
    let detail = demo.expect(&demo.get("/admin/tenants/acme", Some(ADMIN)).await, 200);
    assert_eq!(detail["active_api_keys"], 1);

    // Export: a tar archive streamed from one snapshot, which an import
    // restores under another id.
    let response = demo
        .client
        .get(format!("{}/admin/tenants/acme/export", demo.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-tar"
    );
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"acme-"),
        "{disposition}"
    );
    let archive = response.bytes().await.expect("the archive");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.tar");
    std::fs::write(&file, &archive).unwrap();
    let manifest = hidra::archive::verify(&file)
        .await
        .expect("a sound archive");
    assert_eq!(manifest.tenant.id.as_str(), "acme");
    let customers = manifest
        .tables
        .iter()
        .find(|t| t.name == "customers")
        .unwrap();
    assert_eq!(customers.rows, 1);
    let migrations =
        hidra::Migrations::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/tenant"))
            .await
            .unwrap();
    let importer = hidra::Hidra::builder()
        .tenant_migrations(migrations)
        .connect(db.url())
        .await
        .expect("connect");
    let copy = hidra::TenantId::new("acme-copy").unwrap();
    importer
        .import_tenant(
            &file,
            hidra::archive::ImportOptions::new()
                .as_id(copy.clone())
                .skip_credentials(),
        )
        .await
        .expect("import the exported archive");
    let tenant = importer.tenant(&copy).await.unwrap().unwrap();
    let mut conn = importer.acquire(&tenant).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM customers")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(names, ["Wile E. Coyote"]);
    drop(conn);
    importer.close().await;
    let detail = demo.expect(
        &demo.get("/admin/tenants/acme-copy", Some(ADMIN)).await,
        200,
    );
    assert_eq!(detail["users"], 0);
    demo.expect(
        &demo.delete("/admin/tenants/acme-copy", Some(ADMIN)).await,
        204,
    );
    // A truncated archive is refused by the import.
    std::fs::write(&file, &archive[..archive.len() / 2]).unwrap();
    assert!(hidra::archive::verify(&file).await.is_err());
    demo.expect_error(
        &demo.get("/admin/tenants/nobody/export", Some(ADMIN)).await,
        404,
        "not_found",
    );

    // Deleting: refused while it has users, done when forced; its users
    // can no longer log in, the other tenant is untouched.
    let r = demo.delete("/admin/tenants/acme", Some(ADMIN)).await;
    demo.expect_error(&r, 409, "conflict");
    demo.expect(&demo.get("/customers", Some(&acme)).await, 200);
    let r = demo
        .delete("/admin/tenants/acme?force=true", Some(ADMIN))
        .await;
    demo.expect(&r, 204);
    demo.expect_error(
        &demo.get("/admin/tenants/acme", Some(ADMIN)).await,
        404,
        "not_found",
    );
    assert_eq!(demo.login("boss@acme.test", PASSWORD).await.status, 401);
    assert_ne!(demo.get("/customers", Some(&acme)).await.status, 200);
    demo.expect(&demo.get("/customers", Some(&globex)).await, 200);
    let all = demo.expect(&demo.get("/admin/tenants", Some(ADMIN)).await, 200);
    assert_eq!(ids(&all), ["globex"]);

    // A tenant without users is deleted without force.
    let hidra = hidra::Hidra::builder()
        .connect(db.url())
        .await
        .expect("connect");
    let empty = hidra::TenantId::new("empty").expect("an id");
    hidra
        .provision(hidra::NewTenant::new(empty.clone()))
        .await
        .expect("provision a tenant without users");
    let detail = demo.expect(&demo.get("/admin/tenants/empty", Some(ADMIN)).await, 200);
    assert_eq!(detail["users"], 0);
    demo.expect(&demo.delete("/admin/tenants/empty", Some(ADMIN)).await, 204);
    assert!(!hidra.exists(&empty).await.expect("exists"));
    hidra.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_operator_token_the_admin_api_is_off() {
    let db = TestDatabase::create()
        .await
        .expect("create a test database");
    let demo = Demo::start(Some(db.url()), &["--port", "0"]).await;
    let r = demo.get("/admin/tenants", Some(ADMIN)).await;
    assert_eq!(r.status, 404, "{r}");
    drop(demo);

    // A token too short to resist guessing stops the start.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hidra-demo"))
        .env("DATABASE_URL", db.url())
        .env("HIDRA_DEMO_ADMIN_TOKEN", "short")
        .args(["--port", "0"])
        .output()
        .await
        .expect("run the demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HIDRA_DEMO_ADMIN_TOKEN must be at least 32 characters"),
        "{stderr}"
    );
}
