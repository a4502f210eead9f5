//! Row-level isolation, its audit, and moves between strategies. Runs as an
//! ordinary role created by the test: row-level security never restricts a
//! superuser.

mod common;

use common::*;
use hidra::rls::{Finding, tenant_table_sql};
use hidra::testing::{PgServer, TestDatabase};
use hidra::{Error, Hidra, Migrations, NewTenant, Strategy, Tenant};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const TENANT_TABLES: &str = "
CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, customer_id BIGINT NOT NULL REFERENCES customers(id), total INT NOT NULL);
";

struct RlsCtx {
    db: TestDatabase,
    role: String,
    hidra: Hidra,
}

async fn admin(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

/// A database, an ordinary role owning the row-level tables, and a Hidra
/// connected as that role.
async fn rls_setup() -> RlsCtx {
    let db = TestDatabase::create().await.unwrap();
    let role = format!("hidra_app_{}", &db.name()[db.name().len() - 8..]);
    let mut su = admin(db.url()).await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS;
         GRANT CREATE ON DATABASE \"{db}\" TO {role};
         GRANT ALL ON SCHEMA public TO {role};",
        db = db.name()
    )))
    .execute(&mut su)
    .await
    .unwrap();
    let hidra = Hidra::builder()
        .tenant_migrations(Migrations::new().push("tables", TENANT_TABLES))
        .max_connections(4)
        .connect_with(db.connect_options().username(&role))
        .await
        .unwrap();
    hidra.install().await.unwrap();
    let mut conn = hidra.acquire_shared().await.unwrap();
    let shared = TENANT_TABLES.replace("CREATE TABLE ", "CREATE TABLE public.");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "{shared}\n{}\n{}",
        tenant_table_sql("public.customers").unwrap(),
        tenant_table_sql("public.orders").unwrap()
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    RlsCtx { db, role, hidra }
}

async fn teardown(ctx: RlsCtx) {
    ctx.hidra.close().await;
    let server = PgServer::get().await.unwrap();
    ctx.db.drop_now().await.unwrap();
    let mut su = admin(server.url()).await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP ROLE IF EXISTS {}", ctx.role)))
        .execute(&mut su)
        .await
        .unwrap();
}

async fn names(h: &Hidra, t: &Tenant) -> Vec<String> {
    let mut conn = h.acquire(t).await.unwrap();
    sqlx::query_scalar("SELECT name FROM customers ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

async fn row_level(h: &Hidra, name: &str) -> Tenant {
    h.provision(NewTenant::new(id(name)).strategy(Strategy::RowLevel))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_row_level_tenant_cannot_touch_another_tenants_rows() {
    let ctx = rls_setup().await;
    let h = &ctx.hidra;
    assert!(h.audit_row_level().await.unwrap().is_clean());
    let audited = Hidra::builder()
        .audit_row_level_on_connect(true)
        .connect_with(ctx.db.connect_options().username(&ctx.role))
        .await
        .expect("a clean setup passes the startup audit");
    audited.close().await;
    let a = row_level(h, "alpha").await;
    let b = row_level(h, "beta").await;
    assert_eq!(a.placement.strategy, Strategy::RowLevel);
    assert_eq!(a.placement.schema, "public");

    for (t, n) in [(&a, "a-cust"), (&b, "b-cust")] {
        let mut tx = h.begin(t).await.unwrap();
        sqlx::query("INSERT INTO customers (name) VALUES ($1)")
            .bind(n)
            .execute(&mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(names(h, &a).await, vec!["a-cust"]);
    assert_eq!(names(h, &b).await, vec!["b-cust"]);

    let mut conn = h.acquire(&a).await.unwrap();
    // Update and delete reach none of B's rows.
    let updated = sqlx::query("UPDATE customers SET name = 'hijacked' WHERE name = 'b-cust'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM customers WHERE name = 'b-cust'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 0);
    // Inserting a row for B while bound to A is refused by the policy.
    let err = sqlx::query("INSERT INTO customers (name, tenant_id) VALUES ('forged', 'beta')")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    // Moving one of A's rows to B is refused too.
    let err = sqlx::query("UPDATE customers SET tenant_id = 'beta'")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(conn);
    assert_eq!(names(h, &b).await, vec!["b-cust"]);

    // No tenant bound: nothing visible, inserts refused.
    let mut shared = h.acquire_shared().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&mut *shared)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        sqlx::query("INSERT INTO customers (name) VALUES ('orphan')")
            .execute(&mut *shared)
            .await
            .is_err()
    );
    drop(shared);
    teardown(ctx).await;
}

#[tokio::test]
async fn a_row_level_binding_never_outlives_its_checkout() {
    let ctx = rls_setup().await;
    let h = &ctx.hidra;
    let a = row_level(h, "alpha").await;
    let s = h.provision(NewTenant::new(id("schemy"))).await.unwrap();
    let mut tx = h.begin(&a).await.unwrap();
    sqlx::query("INSERT INTO customers (name) VALUES ('a1')")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Hammer a small pool with alternating checkouts: a schema tenant and an
    // unscoped user never see A's rows, A always does.
    for _ in 0..50 {
        assert_eq!(names(h, &a).await, vec!["a1"]);
        let mut conn = h.acquire(&s).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM public.customers")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0, "a schema tenant saw row-level rows");
        drop(conn);
        let mut shared = h.acquire_shared().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
            .fetch_one(&mut *shared)
            .await
            .unwrap();
        assert_eq!(n, 0, "an unscoped checkout saw row-level rows");
    }
    teardown(ctx).await;
}

#[tokio::test]
async fn the_audit_finds_every_misconfiguration_and_provisioning_fails_closed() {
    let ctx = rls_setup().await;
    let h = &ctx.hidra;
    let mut conn = h.acquire_shared().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE public.not_enabled (id int, tenant_id text);
         CREATE TABLE public.not_forced (id int, tenant_id text);
         ALTER TABLE public.not_forced ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p ON public.not_forced USING (tenant_id = current_setting('hidra.tenant_id', true));
         CREATE TABLE public.no_policy (id int, tenant_id text);
         ALTER TABLE public.no_policy ENABLE ROW LEVEL SECURITY;
         ALTER TABLE public.no_policy FORCE ROW LEVEL SECURITY;
         CREATE TABLE public.hidra_lookup (email text, tenant_id text);",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    // Hidra's policy, widened by a permissive one of the application's.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE public.leaky (id int, tenant_id text);
         {}
         CREATE POLICY everyone ON public.leaky USING (true);",
        tenant_table_sql("public.leaky").unwrap()
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let report = h.audit_row_level().await.unwrap();
    let role = ctx.role.clone();
    for expected in [
        Finding::NotEnabled {
            table: "not_enabled".into(),
        },
        Finding::NotForced {
            table: "not_forced".into(),
        },
        Finding::OwnerWithoutForce {
            table: "not_forced".into(),
            role: role.clone(),
        },
        Finding::NoPolicy {
            table: "no_policy".into(),
        },
        Finding::ExtraPermissivePolicy {
            table: "leaky".into(),
            policy: "everyone".into(),
        },
    ] {
        assert!(
            report.findings.contains(&expected),
            "missing {expected:?} in {report}"
        );
    }
    assert!(
        !report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Superuser { .. } | Finding::BypassRls { .. }))
    );
    // Run at startup, the audit refuses to connect.
    let at_startup = Hidra::builder()
        .audit_row_level_on_connect(true)
        .connect_with(ctx.db.connect_options().username(&role))
        .await
        .unwrap_err();
    assert!(
        matches!(at_startup, Error::RowLevelInsecure(_)),
        "{at_startup:?}"
    );
    let err = h
        .provision(NewTenant::new(id("unsafe")).strategy(Strategy::RowLevel))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RowLevelInsecure(_)), "{err:?}");
    assert!(registry_ids(h).await.is_empty());

    // BYPASSRLS on the role, and a superuser connection.
    let mut su = admin(ctx.db.url()).await;
    sqlx::raw_sql(AssertSqlSafe(format!("ALTER ROLE {role} BYPASSRLS")))
        .execute(&mut su)
        .await
        .unwrap();
    let report = h.audit_row_level().await.unwrap();
    assert!(
        report
            .findings
            .contains(&Finding::BypassRls { role: role.clone() }),
        "{report}"
    );
    let as_superuser = Hidra::builder()
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    let report = as_superuser.audit_row_level().await.unwrap();
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Superuser { .. })),
        "{report}"
    );
    as_superuser.close().await;
    teardown(ctx).await;
}

#[tokio::test]
async fn deprovisioning_a_row_level_tenant_removes_only_its_rows() {
    let ctx = rls_setup().await;
    let h = &ctx.hidra;
    let a = row_level(h, "alpha").await;
    let b = row_level(h, "beta").await;
    for t in [&a, &b] {
        let mut tx = h.begin(t).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO customers (name) VALUES ('c');
             INSERT INTO orders (customer_id, total) SELECT id, 10 FROM customers;",
        )
        .execute(&mut tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    h.deprovision(&a.id, hidra::Confirmation::of(&a.id))
        .await
        .unwrap();
    let mut su = admin(ctx.db.url()).await;
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT tenant_id FROM public.customers UNION ALL SELECT tenant_id FROM public.orders",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(left, vec!["beta", "beta"]);
    assert_eq!(registry_ids(h).await, vec!["beta"]);
    teardown(ctx).await;
}

#[tokio::test]
async fn a_move_keeps_every_row_and_leaves_nothing_behind() {
    let ctx = rls_setup().await;
    let h = &ctx.hidra;
    let a = row_level(h, "mover").await;
    let other = row_level(h, "stayer").await;
    for t in [&a, &other] {
        fill_customers_and_orders(h, t, 20, 10).await;
    }
    let before = customers_and_orders(h, &a).await;
    assert_eq!(before.len(), 20);

    // Row level -> own schema.
    let moved = h.move_tenant(&a.id, Strategy::Schema).await.unwrap();
    assert_eq!(moved.placement.strategy, Strategy::Schema);
    assert_eq!(moved.placement.schema, "tenant_mover");
    assert_eq!(customers_and_orders(h, &moved).await, before);
    let mut su = admin(ctx.db.url()).await;
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM public.customers WHERE tenant_id = 'mover') \
              + (SELECT count(*) FROM public.orders WHERE tenant_id = 'mover')",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(left, 0, "rows left behind in the shared tables");
    // New rows continue after the copied ids.
    let mut conn = h.acquire(&moved).await.unwrap();
    let new_id: i64 =
        sqlx::query_scalar("INSERT INTO customers (name) VALUES ('new') RETURNING id")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(new_id > before.iter().map(|r| r.0).max().unwrap());
    sqlx::query("DELETE FROM customers WHERE id = $1")
        .bind(new_id)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    // The other tenant is untouched.
    assert_eq!(customers_and_orders(h, &other).await.len(), 20);

    // And back to row level.
    let back = h.move_tenant(&a.id, Strategy::RowLevel).await.unwrap();
    assert_eq!(back.placement.strategy, Strategy::RowLevel);
    assert_eq!(customers_and_orders(h, &back).await, before);
    assert!(
        !schemas(h).await.contains(&"tenant_mover".to_string()),
        "schema left behind"
    );
    assert_eq!(customers_and_orders(h, &other).await.len(), 20);
    teardown(ctx).await;
}

/// The transactions that wait on the shared tables while a row-level tenant
/// moves into a schema of its own, and those begun after it with the record
/// read before, fail or land in the schema: no acknowledged write is left
/// behind in the shared tables (a stale record once kept writing there).
#[tokio::test]
async fn a_move_out_of_the_shared_tables_loses_no_acknowledged_write() {
    let ctx = rls_setup().await;
    let h = &ctx.hidra;
    let t = row_level(h, "busy").await;
    let insert = "INSERT INTO customers (name) VALUES ($1)";
    let (moved, acked) =
        while_writing(h, &t.id, insert, 3, h.move_tenant(&t.id, Strategy::Schema)).await;
    let moved = moved.unwrap();
    let acked: usize = acked.iter().map(Vec::len).sum();
    let mut conn = h.acquire(&moved).await.unwrap();
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM customers WHERE name LIKE 'w%'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let mut su = admin(ctx.db.url()).await;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.customers WHERE tenant_id = 'busy'")
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert!(acked > 10, "{acked}");
    assert_eq!((found as usize, left), (acked, 0));
    teardown(ctx).await;
}

/// A record read before its row-level tenant moved out binds the tenant
/// where it is now (the checkout reads the registry again), and one read
/// before its deprovisioning binds nothing.
#[tokio::test]
async fn a_stale_row_level_record_is_never_bound_to_the_shared_tables() {
    let ctx = rls_setup().await;
    let h = &ctx.hidra;
    let stale = row_level(h, "leaver").await;
    h.move_tenant(&stale.id, Strategy::Schema).await.unwrap();
    let mut conn = h.acquire(&stale).await.unwrap();
    sqlx::query("INSERT INTO customers (name) VALUES ('after the move')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let mut tx = h.begin(&stale).await.unwrap();
    sqlx::query("INSERT INTO customers (name) VALUES ('in a transaction')")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut su = admin(ctx.db.url()).await;
    let (shared, own): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM public.customers WHERE tenant_id = 'leaver'), \
                (SELECT count(*) FROM tenant_leaver.customers WHERE name <> '')",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!((shared, own), (0, 2));

    let gone = row_level(h, "gone").await;
    h.deprovision(&gone.id, hidra::Confirmation::of(&gone.id))
        .await
        .unwrap();
    assert!(h.acquire(&gone).await.unwrap_err().is_not_found());
    assert!(h.begin(&gone).await.unwrap_err().is_not_found());
    teardown(ctx).await;
}

/// A session checked out while a move holds the tenant's lock waits for
/// the move, then reads the registry as the move left it: a stale record is
/// never bound for a session either.
#[tokio::test]
async fn a_session_bound_during_a_move_waits_for_it_and_reads_the_registry_after() {
    let ctx = rls_setup().await;
    let h = &ctx.hidra;
    let stale = row_level(h, "session").await;
    // Warm: the guard function exists before the "move" takes the lock.
    drop(h.acquire(&stale).await.unwrap());

    // What a move does: the tenant's lock, exclusive, then a placement
    // that is no longer row level, committed.
    let mut mover = admin(ctx.db.url()).await;
    sqlx::raw_sql(
        "BEGIN; SELECT pg_advisory_xact_lock(1751737458, hashtext('session')); \
         UPDATE public.tenants SET strategy = 'schema', schema_name = 'tenant_session' \
         WHERE id = 'session'",
    )
    .execute(&mut mover)
    .await
    .unwrap();
    let checkout = {
        let (h, stale) = (h.clone(), stale.clone());
        tokio::spawn(async move { h.acquire(&stale).await.map(drop) })
    };
    let url = ctx.db.url().to_owned();
    wait_for("the checkout waiting on the tenant's lock", || {
        let url = url.clone();
        async move {
            let mut su = admin(&url).await;
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                 AND classid = 1751737458 AND NOT granted)",
            )
            .fetch_one(&mut su)
            .await
            .unwrap();
            waiting.then_some(())
        }
    })
    .await;
    sqlx::raw_sql("COMMIT").execute(&mut mover).await.unwrap();
    // Refused on the shared tables; its record read again names a schema
    // that this fake move never built, which the schema proof refuses too.
    let e = checkout.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::StaleRecord(_)), "{e:?}");
    teardown(ctx).await;
}
