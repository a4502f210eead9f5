//! Provisioning, suspension and deprovisioning: all or nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hidra::{Confirmation, Error, Hidra, ListTenants, NewTenant, TenantStatus, TenantUpdate};
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn provision_creates_an_active_tenant_with_its_schema() {
    let ctx = setup(2).await;
    let h = &ctx.hidra;
    let t = h
        .provision(
            NewTenant::new(id("acme-corp"))
                .name("Acme Corp")
                .metadata(serde_json::json!({"plan": "pro"})),
        )
        .await
        .unwrap();
    assert_eq!(t.status, TenantStatus::Active);
    assert_eq!(t.name, "Acme Corp");
    assert_eq!(t.placement.schema, "tenant_acme_corp");
    assert_eq!(t.metadata["plan"], "pro");
    assert_eq!(schemas(h).await, vec!["tenant_acme_corp"]);
    assert_eq!(h.tenant(&id("acme-corp")).await.unwrap(), Some(t.clone()));
    assert!(h.exists(&id("acme-corp")).await.unwrap());
    assert!(!h.exists(&id("globex")).await.unwrap());
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_tenant_is_renamed_and_its_metadata_replaced_and_nothing_else_changes() {
    let ctx = setup(2).await;
    let h = &ctx.hidra;
    let before = h
        .provision(NewTenant::new(id("acme")).metadata(serde_json::json!({"plan": "free"})))
        .await
        .unwrap();
    let mut changes = h.changes_listener().await.unwrap();
    let after = h
        .update_tenant(&id("acme"), TenantUpdate::default().name("Acme Inc."))
        .await
        .unwrap();
    assert_eq!(after.name, "Acme Inc.");
    assert_eq!(after.metadata, before.metadata, "metadata left alone");
    assert_eq!(after.placement, before.placement);
    assert_eq!(after.status, before.status);
    assert_eq!(
        after.incarnation(),
        before.incarnation(),
        "same incarnation"
    );
    assert!(after.updated_at > before.updated_at);
    // Announced, so every process's cache drops its copy.
    let note = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("an announcement")
        .unwrap();
    assert_eq!(note.payload(), "acme");

    let after = h
        .update_tenant(
            &id("acme"),
            TenantUpdate::default().metadata(serde_json::json!({"plan": "pro"})),
        )
        .await
        .unwrap();
    assert_eq!(after.name, "Acme Inc.");
    assert_eq!(after.metadata["plan"], "pro");
    assert_eq!(h.tenant(&id("acme")).await.unwrap(), Some(after.clone()));

    for bad in [
        TenantUpdate::default().name(" "),
        TenantUpdate::default().metadata(serde_json::json!([1])),
    ] {
        let err = h.update_tenant(&id("acme"), bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    }
    assert_eq!(h.tenant(&id("acme")).await.unwrap(), Some(after));
    let err = h
        .update_tenant(&id("nobody"), TenantUpdate::default().name("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn tenants_are_searched_by_id_or_name_ignoring_case() {
    let ctx = setup(2).await;
    let h = &ctx.hidra;
    for (tid, name) in [
        ("acme", "Acme Corporation"),
        ("globex", "Globex 100%"),
        ("initech", "Initech"),
        ("corp-x", "X"),
    ] {
        h.provision(NewTenant::new(id(tid)).name(name))
            .await
            .unwrap();
    }
    let found = |q: &str| {
        let page = ListTenants::first(10).search(q);
        async move {
            h.list(&page)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|t| t.id.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found("CORP").await, ["acme", "corp-x"]);
    assert_eq!(found("tech").await, ["initech"]);
    assert_eq!(found("%").await, ["globex"], "% is matched literally");
    assert_eq!(
        found("_").await,
        Vec::<String>::new(),
        "_ is matched literally"
    );
    assert_eq!(found("").await.len(), 4, "an empty search is no filter");
    // With paging and a status filter.
    h.suspend(&id("corp-x")).await.unwrap();
    let page = h.list(&ListTenants::first(1).search("corp")).await.unwrap();
    assert_eq!(page.items[0].id.as_str(), "acme");
    let rest = h
        .list(
            &ListTenants::first(1)
                .search("corp")
                .after(page.next.unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items[0].id.as_str(), "corp-x");
    assert!(rest.next.is_none());
    let suspended = h
        .list(
            &ListTenants::first(10)
                .search("corp")
                .status(TenantStatus::Suspended),
        )
        .await
        .unwrap();
    assert_eq!(suspended.items.len(), 1);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn second_id_mapping_to_the_same_schema_is_refused() {
    let ctx = setup(2).await;
    let h = &ctx.hidra;
    h.provision(NewTenant::new(id("acme-corp"))).await.unwrap();
    let err = h
        .provision(NewTenant::new(id("acme_corp")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::SchemaTaken { schema, .. } if schema == "tenant_acme_corp"),
        "{err:?}"
    );
    assert!(err.to_string().contains("already taken"), "{err}");
    assert_eq!(registry_ids(h).await, vec!["acme-corp"]);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_stray_schema_of_the_same_name_is_refused_and_left_alone() {
    let ctx = setup(2).await;
    let h = &ctx.hidra;
    let mut conn = h.acquire_shared().await.unwrap();
    sqlx::raw_sql("CREATE SCHEMA tenant_stray; CREATE TABLE tenant_stray.keep (x int)")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let err = h.provision(NewTenant::new(id("stray"))).await.unwrap_err();
    assert!(matches!(err, Error::SchemaTaken { .. }), "{err:?}");
    assert!(registry_ids(h).await.is_empty());
    assert_eq!(schemas(h).await, vec!["tenant_stray"]);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn schema_sql_failing_halfway_rolls_everything_back() {
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql(
                "001_ok",
                "CREATE TABLE first (id int); CREATE TABLE second (id int);",
            )
            .schema_sql("002_ok", "INSERT INTO first VALUES (1);")
            .schema_sql(
                "003_broken",
                "CREATE TABLE third (id int); CREATE TABLE first (id int);",
            )
            .schema_sql("004_never", "CREATE TABLE fourth (id int);"),
    )
    .await;
    let h = &ctx.hidra;
    let err = h
        .provision(NewTenant::new(id("halfway")))
        .await
        .unwrap_err();
    match &err {
        Error::MigrationFailed {
            migration, schema, ..
        } => {
            assert_eq!(migration, "3 (003_broken)");
            assert_eq!(schema, "tenant_halfway");
        }
        other => panic!("expected MigrationFailed, got {other:?}"),
    }
    assert_eq!(err.sqlstate().as_deref(), Some("42P07"));
    assert!(schemas(h).await.is_empty(), "schema left behind");
    assert!(registry_ids(h).await.is_empty(), "registry row left behind");
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn failing_seed_rolls_everything_back_and_a_good_seed_runs_in_the_schema() {
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql("001", "CREATE TABLE roles (name TEXT PRIMARY KEY)")
            .seed_fn(|conn, tenant| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO roles (name) VALUES ('admin')")
                        .execute(&mut *conn)
                        .await?;
                    if tenant.id.as_str().starts_with("bad") {
                        return Err("reference data unavailable".into());
                    }
                    Ok(())
                })
            }),
    )
    .await;
    let h = &ctx.hidra;
    let err = h
        .provision(NewTenant::new(id("bad-seed")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Seed { .. }), "{err:?}");
    assert!(schemas(h).await.is_empty());
    assert!(registry_ids(h).await.is_empty());

    let good = h.provision(NewTenant::new(id("good-seed"))).await.unwrap();
    let mut conn = h.acquire(&good).await.unwrap();
    let roles: Vec<String> = sqlx::query_scalar("SELECT name FROM roles")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(roles, vec!["admin"]);
    drop(conn);
    ctx.db.drop_now().await.unwrap();
}

/// A per-tenant setup hook (a sign-up's first user) runs in the
/// provisioning transaction after the handle's seed, bound to the new tenant.
struct FirstRow(&'static str);

impl hidra::Seed for FirstRow {
    async fn seed(
        &self,
        conn: &mut sqlx::PgConnection,
        _tenant: &hidra::Tenant,
    ) -> Result<(), hidra::BoxError> {
        sqlx::query("INSERT INTO roles (name) VALUES ($1)")
            .bind(self.0)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_setup_hook_joins_the_provisioning_transaction() {
    let ctx = setup_with(
        Hidra::builder().schema_sql("001", "CREATE TABLE roles (name TEXT PRIMARY KEY)"),
    )
    .await;
    let h = &ctx.hidra;
    let t = h
        .provision(NewTenant::new(id("with-setup")).setup(FirstRow("owner")))
        .await
        .unwrap();
    let mut conn = h.acquire(&t).await.unwrap();
    let roles: Vec<String> = sqlx::query_scalar("SELECT name FROM roles")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(roles, vec!["owner"]);
    drop(conn);
    // Failing setup (a duplicate key): nothing of the tenant remains.
    struct Twice;
    impl hidra::Seed for Twice {
        async fn seed(
            &self,
            conn: &mut sqlx::PgConnection,
            tenant: &hidra::Tenant,
        ) -> Result<(), hidra::BoxError> {
            FirstRow("x").seed(conn, tenant).await?;
            FirstRow("x").seed(conn, tenant).await
        }
    }
    let err = h
        .provision(NewTenant::new(id("bad-setup")).setup(Twice))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Seed { .. }), "{err:?}");
    assert_eq!(registry_ids(h).await, vec!["with-setup"]);
    assert_eq!(schemas(h).await, vec!["tenant_with_setup"]);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_provisions_of_one_id_exactly_one_wins() {
    let ctx = setup(12).await;
    let h = Arc::new(ctx.hidra.clone());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.provision(NewTenant::new(id("contested"))).await
        }));
    }
    let (mut won, mut exists) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(t) => {
                assert_eq!(t.status, TenantStatus::Active);
                won += 1
            }
            Err(Error::AlreadyExists(i)) => {
                assert_eq!(i.as_str(), "contested");
                exists += 1
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((won, exists), (1, 7));
    assert_eq!(schemas(&h).await, vec!["tenant_contested"]);
    ctx.db.drop_now().await.unwrap();
}

/// Sessions of the test database, besides the observer's own, sleeping in `pg_sleep`.
const SLEEPING: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event = 'PgSleep'";

/// Client sessions of the test database, besides the observer's own, running
/// a statement or inside a transaction.
const BUSY: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() \
     AND backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'";

#[tokio::test]
async fn cancelled_provisioning_leaves_nothing() {
    let ctx = setup_with(
        Hidra::builder().schema_sql("001_slow", "CREATE TABLE t (id int); SELECT pg_sleep(0.5);"),
    )
    .await;
    let h = &ctx.hidra;
    let mut observer = PgConnection::connect_with(&ctx.db.connect_options())
        .await
        .unwrap();
    // Cut provisioning off while the server runs its slow migration, inside
    // the provisioning transaction.
    let mut provision = Box::pin(h.provision(NewTenant::new(id("interrupted"))));
    tokio::select! {
        res = &mut provision => panic!("provisioning finished before it could be cut off: {res:?}"),
        () = wait_for_count(&mut observer, "the slow migration to run", SLEEPING, |n| n == 1) => {}
    }
    drop(provision);
    // The server finishes the statement and rolls back when the connection is
    // returned (or closed); wait for that.
    wait_for_count(
        &mut observer,
        "the interrupted provisioning to end on the server",
        BUSY,
        |n| n == 0,
    )
    .await;
    assert!(schemas(h).await.is_empty());
    assert!(registry_ids(h).await.is_empty());
    // And the id is free again.
    h.provision(NewTenant::new(id("interrupted")))
        .await
        .unwrap();
    observer.close().await.unwrap();
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn suspend_activate_and_their_errors() {
    let ctx = setup(2).await;
    let h = &ctx.hidra;
    h.provision(NewTenant::new(id("acme"))).await.unwrap();
    let t = h.suspend(&id("acme")).await.unwrap();
    assert_eq!(t.status, TenantStatus::Suspended);
    assert_eq!(
        h.suspend(&id("acme")).await.unwrap().status,
        TenantStatus::Suspended
    );
    assert_eq!(
        h.activate(&id("acme")).await.unwrap().status,
        TenantStatus::Active
    );
    assert!(matches!(
        h.suspend(&id("nobody")).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        h.activate(&id("nobody")).await,
        Err(Error::NotFound(_))
    ));
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn deprovision_needs_confirmation_and_removes_everything() {
    let ctx = setup(2).await;
    let h = &ctx.hidra;
    let keep = tenant_with_marker(h, "keep").await;
    tenant_with_marker(h, "doomed").await;

    let err = h
        .deprovision(&id("doomed"), Confirmation::of(&id("keep")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConfirmationRequired(_)), "{err:?}");
    assert_eq!(schemas(h).await, vec!["tenant_doomed", "tenant_keep"]);

    h.deprovision(&id("doomed"), Confirmation::of(&id("doomed")))
        .await
        .unwrap();
    assert_eq!(schemas(h).await, vec!["tenant_keep"]);
    assert_eq!(registry_ids(h).await, vec!["keep"]);
    assert!(matches!(
        h.deprovision(&id("doomed"), Confirmation::of(&id("doomed")))
            .await,
        Err(Error::NotFound(_))
    ));
    // The survivor is untouched.
    let mut conn = h.acquire(&keep).await.unwrap();
    let m: String = sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(m, "keep");
    drop(conn);
    // The id can be provisioned again, empty.
    let again = h.provision(NewTenant::new(id("doomed"))).await.unwrap();
    let mut conn = h.acquire(&again).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM marker")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
    drop(conn);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn list_paginates_by_id_and_filters_by_status() {
    let ctx = setup(2).await;
    let h = &ctx.hidra;
    for i in 0..7 {
        h.provision(NewTenant::new(id(&format!("t{i}"))))
            .await
            .unwrap();
    }
    h.suspend(&id("t3")).await.unwrap();
    let mut seen = Vec::new();
    let mut page = ListTenants::first(3);
    loop {
        let p = h.list(&page).await.unwrap();
        assert!(p.items.len() <= 3);
        seen.extend(p.items.iter().map(|t| t.id.to_string()));
        match p.next {
            Some(next) => page = ListTenants::first(3).after(next),
            None => break,
        }
    }
    assert_eq!(seen, vec!["t0", "t1", "t2", "t3", "t4", "t5", "t6"]);
    let suspended = h
        .list(&ListTenants::first(10).status(TenantStatus::Suspended))
        .await
        .unwrap();
    assert_eq!(suspended.items.len(), 1);
    assert_eq!(suspended.items[0].id.as_str(), "t3");
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_missing_registry_table_is_a_clear_error() {
    let db = hidra::testing::TestDatabase::create().await.unwrap();
    let h = Hidra::builder()
        .connect_with(db.connect_options())
        .await
        .unwrap();
    let err = h.provision(NewTenant::new(id("early"))).await.unwrap_err();
    assert!(matches!(err, Error::RegistryMissing(_)), "{err:?}");
    assert!(err.to_string().contains("hidra init"), "{err}");
    assert!(schemas(&h).await.is_empty());
    // Nothing of hidra's own either: no internal schema left behind.
    let mut conn = h.acquire_shared().await.unwrap();
    let internal: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'hidra')")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert!(
        !internal,
        "the internal schema was created for a failed provisioning"
    );
    drop(conn);
    db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_new_tenant_is_announced_once_committed() {
    let ctx = setup(2).await;
    let h = &ctx.hidra;
    let mut listener = h.changes_listener().await.unwrap();
    let tenant = h.provision(NewTenant::new(id("announced"))).await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("no announcement within 10 s")
        .unwrap();
    assert_eq!(note.channel(), hidra::CHANGES_CHANNEL);
    assert_eq!(note.payload(), "announced");
    // Other changes are still announced by the registry's trigger.
    h.suspend(&tenant.id).await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("no announcement within 10 s")
        .unwrap();
    assert_eq!(note.payload(), "announced");
}
