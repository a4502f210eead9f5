//! The README's first example, run as a new user would: on a fresh database
//! with nothing created by hand, `install` is the only setup step.

mod common;

use common::notices_during;
use hidra::testing::TestDatabase;
use hidra::{Hidra, NewTenant, TenantId};

#[tokio::test]
async fn the_readme_example_works_on_a_fresh_database() {
    let db = TestDatabase::create().await.unwrap();
    let hidra = Hidra::builder()
        .schema_sql(
            "001_customers",
            "CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL)",
        )
        .connect_with(db.connect_options())
        .await
        .unwrap();
    // Before the install step the error says what to do.
    let missing = hidra
        .provision(NewTenant::new(TenantId::new("acme").unwrap()))
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("Hidra::install()"),
        "{missing}"
    );

    hidra.install().await.unwrap();
    let acme = hidra
        .provision(NewTenant::new(TenantId::new("acme").unwrap()))
        .await
        .unwrap();
    let mut conn = hidra.acquire(&acme).await.unwrap();
    sqlx::query("INSERT INTO customers (name) VALUES ('Wile E.')")
        .execute(&mut conn)
        .await
        .unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM customers")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(names, ["Wile E."]);
}

#[tokio::test]
async fn install_is_idempotent_and_safe_from_several_processes_at_once() {
    let db = TestDatabase::create().await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..4 {
        // Each its own pool, like separate processes starting together.
        handles.push(
            Hidra::builder()
                .connect_with(db.connect_options())
                .await
                .unwrap(),
        );
    }
    let installs = handles.iter().map(|h| h.install());
    for done in futures_util::future::join_all(installs).await {
        done.unwrap();
    }
    // And again, with the tables there.
    handles[0].install().await.unwrap();
    let tenant = handles[1]
        .provision(NewTenant::new(TenantId::new("acme").unwrap()))
        .await
        .unwrap();
    assert!(tenant.is_active());
    assert_eq!(
        handles[2]
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn install_creates_a_registry_in_its_own_schema() {
    let db = TestDatabase::create().await.unwrap();
    let hidra = Hidra::builder()
        .registry(hidra::RegistryTable::new("control.tenants").unwrap())
        .connect_with(db.connect_options())
        .await
        .unwrap();
    hidra.install().await.unwrap();
    let tenant = hidra
        .provision(NewTenant::new(TenantId::new("acme").unwrap()))
        .await
        .unwrap();
    let mut conn = hidra.acquire_shared().await.unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM control.tenants")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(ids, [tenant.id.to_string()]);
}

/// What a service does at each start (the demo's order): install the shared
/// tables and bring everything to the latest migration.
async fn start(db: &TestDatabase) -> Hidra {
    use hidra::auth::{Accounts, ApiKeys, Jwt, LoginLimits};

    let hidra = Hidra::builder()
        .schema_sql("001_customers", "CREATE TABLE customers (id BIGINT)")
        .shared_migrations(hidra::Migrations::new().push("plans", "CREATE TABLE plans (name TEXT)"))
        .connect_with(db.connect_options())
        .await
        .unwrap();
    let jwt = Jwt::hs256("a secret of thirty-two bytes or more, for tests").unwrap();
    let accounts = Accounts::new(hidra.clone(), jwt).with_limits(LoginLimits::new());
    let keys = ApiKeys::new(
        hidra.clone(),
        "a pepper of thirty-two bytes or more, for tests",
    )
    .unwrap();
    hidra.install().await.unwrap();
    accounts.install().await.unwrap();
    keys.install().await.unwrap();
    hidra.migrate_shared().await.unwrap();
    assert!(hidra.migrator().run().await.unwrap().is_success());
    hidra
}

/// The install steps are idempotent DDL (`IF NOT EXISTS`), which PostgreSQL
/// answers with "… already exists, skipping" notices, logged by sqlx at
/// `INFO`: a service would log a dozen of them at every start.
#[tokio::test]
async fn a_restart_logs_no_already_exists_notices() {
    let db = TestDatabase::create().await.unwrap();
    let first = start(&db).await;
    first
        .provision(NewTenant::new(TenantId::new("acme").unwrap()))
        .await
        .unwrap();
    first.close().await;

    let restarted = notices_during(async {
        start(&db).await.close().await;
    })
    .await;
    assert_eq!(restarted, "", "notices logged at a restart");

    // The capture does see a notice when there is one.
    let hidra = Hidra::builder()
        .connect_with(db.connect_options())
        .await
        .unwrap();
    let control = notices_during(async {
        let mut conn = hidra.acquire_shared().await.unwrap();
        sqlx::raw_sql("DROP TABLE IF EXISTS no_such_table")
            .execute(&mut *conn)
            .await
            .unwrap();
    })
    .await;
    assert!(control.contains("skipping"), "{control:?}");
}
