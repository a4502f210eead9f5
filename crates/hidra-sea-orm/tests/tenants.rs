//! SeaORM on tenant connections: isolation, transactions, cancellation and
//! panics, and tenants at different migration versions.

mod common;

use std::time::Duration;

use common::*;
use hidra::{Hidra, NewTenant};
use hidra_sea_orm::{TenantConnection, TenantDatabase, TenantTransaction};
use sea_orm::entity::prelude::*;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DbBackend, FromQueryResult, IsolationLevel, JsonValue,
    Statement, TransactionError, TransactionSession, TransactionTrait,
};

async fn add(db: &impl ConnectionTrait, name: &str) -> customer::Model {
    customer::ActiveModel {
        name: Set(name.to_owned()),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap()
}

fn names_of(models: Vec<customer::Model>) -> Vec<String> {
    models.into_iter().map(|m| m.name).collect()
}

#[tokio::test]
async fn each_tenant_sees_only_its_own_rows_through_seaorm() {
    let ctx = setup(2).await;
    let (a, b) = (ctx.tenant("alpha").await, ctx.tenant("beta").await);
    let (da, db) = (
        TenantDatabase::new(ctx.hidra.clone(), a.clone()),
        TenantDatabase::new(ctx.hidra.clone(), b.clone()),
    );
    let a1 = add(&da, "a-one").await;
    add(&da, "a-two").await;
    let b1 = add(&db, "b-one").await;
    // Both tenants' first rows have id 1: the ids are per tenant too.
    assert_eq!((a1.id, b1.id), (1, 1));

    let all_a = customer::Entity::find().all(&da).await.unwrap();
    assert_eq!(names_of(all_a), ["a-one", "a-two"]);
    let all_b = customer::Entity::find().all(&db).await.unwrap();
    assert_eq!(names_of(all_b), ["b-one"]);

    // Updates and deletes by id reach the tenant's own row only.
    let mut edit: customer::ActiveModel = b1.clone().into();
    edit.name = Set("b-renamed".into());
    edit.update(&db).await.unwrap();
    assert_eq!(names(&ctx.hidra, &a).await, ["a-one", "a-two"]);
    let gone = customer::Entity::delete_by_id(1).exec(&da).await.unwrap();
    assert_eq!(gone.rows_affected, 1);
    assert_eq!(names(&ctx.hidra, &a).await, ["a-two"]);
    assert_eq!(names(&ctx.hidra, &b).await, ["b-renamed"]);
    let found = customer::Entity::find_by_id(2).one(&db).await.unwrap();
    assert_eq!(
        found, None,
        "beta has no customer 2; alpha's is not visible"
    );

    // The same through a connection and a transaction of Hidra's own.
    let conn = TenantConnection::new(ctx.hidra.acquire(&a).await.unwrap());
    let via_conn = customer::Entity::find().all(&conn).await.unwrap();
    assert_eq!(names_of(via_conn), ["a-two"]);
    let mut tx = ctx.hidra.begin(&b).await.unwrap();
    add(&TenantConnection::new(&mut tx), "b-in-tx").await;
    tx.commit().await.unwrap();
    assert_eq!(names(&ctx.hidra, &b).await, ["b-renamed", "b-in-tx"]);
    drop(conn);
    ctx.teardown().await;
}

#[tokio::test]
async fn a_failing_transaction_rolls_back_only_its_own_tenants_work() {
    let ctx = setup(3).await;
    let (a, b) = (ctx.tenant("alpha").await, ctx.tenant("beta").await);
    let da = TenantDatabase::new(ctx.hidra.clone(), a.clone());
    let db = TenantDatabase::new(ctx.hidra.clone(), b.clone());

    // Beta commits while alpha's transaction is open and then fails.
    let failed = da
        .transaction::<_, (), DbErr>(|tx| {
            let db = db.clone();
            Box::pin(async move {
                add(tx, "a-doomed").await;
                add(&db, "b-kept").await;
                // A unique violation: the callback's error rolls it all back.
                customer::ActiveModel {
                    name: Set("a-doomed".into()),
                    ..Default::default()
                }
                .insert(tx)
                .await?;
                Ok(())
            })
        })
        .await;
    match failed {
        Err(TransactionError::Transaction(e)) => {
            assert!(
                matches!(
                    e.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ),
                "the sqlx error reaches SeaORM's classification: {e}"
            );
        }
        other => panic!("expected the callback's error, got {other:?}"),
    }
    assert!(names(&ctx.hidra, &a).await.is_empty());
    assert_eq!(names(&ctx.hidra, &b).await, ["b-kept"]);

    // Nested transactions are savepoints.
    let tx = da.begin().await.unwrap();
    add(&tx, "a-outer").await;
    let inner = tx.begin().await.unwrap();
    add(&inner, "a-rolled-back").await;
    inner.rollback().await.unwrap();
    let inner = tx.begin().await.unwrap();
    add(&inner, "a-released").await;
    inner.commit().await.unwrap();
    {
        // Dropped unfinished: rolled back before the transaction's next statement.
        let dropped = tx.begin().await.unwrap();
        add(&dropped, "a-dropped").await;
    }
    let seen = customer::Entity::find().all(&tx).await.unwrap();
    assert_eq!(names_of(seen), ["a-outer", "a-released"]);
    tx.commit().await.unwrap();
    assert_eq!(names(&ctx.hidra, &a).await, ["a-outer", "a-released"]);

    // A dropped outer transaction is rolled back.
    let tx = da.begin().await.unwrap();
    add(&tx, "a-abandoned").await;
    drop(tx);
    assert_eq!(names(&ctx.hidra, &a).await, ["a-outer", "a-released"]);

    // Isolation level and access mode apply to the tenant transaction.
    let tx = da
        .begin_with_config(
            Some(IsolationLevel::Serializable),
            Some(sea_orm::AccessMode::ReadOnly),
        )
        .await
        .unwrap();
    let row = tx
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('transaction_isolation') AS iso, \
             current_setting('transaction_read_only') AS ro",
        ))
        .await
        .unwrap()
        .unwrap();
    let (iso, ro): (String, String) = (
        row.try_get("", "iso").unwrap(),
        row.try_get("", "ro").unwrap(),
    );
    assert_eq!((iso.as_str(), ro.as_str()), ("serializable", "on"));
    let refused = tx.execute_unprepared("DELETE FROM customers").await;
    assert!(refused.is_err(), "a read-only transaction refuses writes");
    tx.rollback().await.unwrap();
    // A statement on a nested transaction whose parent ended is refused.
    let outer = da.begin().await.unwrap();
    let inner = outer.begin().await.unwrap();
    outer.commit().await.unwrap();
    let late = inner.execute_unprepared("SELECT 1").await;
    assert!(late.is_err(), "{late:?}");
    drop(inner);
    ctx.teardown().await;
}

/// The backend pid of the connection a statement on `db` runs on, while a
/// `pg_sleep` on it is in flight.
async fn sleeping_pid(h: &Hidra) -> i32 {
    let mut shared = h.acquire_shared().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'active' \
             AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
        )
        .fetch_optional(&mut *shared)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the statement never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cancelled_and_panicking_seaorm_work_leaves_no_bound_connection_behind() {
    // One tenant connection for both tenants, plus one for watching.
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql("001_customers", CUSTOMERS)
            .max_connections(2)
            .tenant_cap(hidra::TenantCap::Connections(1)),
    )
    .await;
    let (a, b) = (ctx.tenant("alpha").await, ctx.tenant("beta").await);
    let da = TenantDatabase::new(ctx.hidra.clone(), a.clone());
    let db = TenantDatabase::new(ctx.hidra.clone(), b.clone());
    add(&db, "b-only").await;

    // Cancelled mid-statement, inside a transaction with an insert done.
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let work = {
        let da = da.clone();
        async move {
            let tx = da.begin().await.unwrap();
            add(&tx, "a-cancelled").await;
            started_tx.send(()).unwrap();
            tx.execute_unprepared("SELECT pg_sleep(30)").await
        }
    };
    let watch = async {
        started.await.unwrap();
        sleeping_pid(&ctx.hidra).await
    };
    let pid = tokio::select! {
        r = work => panic!("the sleep finished: {r:?}"),
        pid = watch => pid,
    };
    // The future is gone; its statement still runs on the server. Cut it short
    // so that the connection's next user does not wait 30 s for it.
    let mut shared = ctx.hidra.acquire_shared().await.unwrap();
    sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .execute(&mut *shared)
        .await
        .unwrap();
    drop(shared);
    // Panicking inside a SeaORM transaction, on another task.
    let panicked = tokio::spawn({
        let da = da.clone();
        async move {
            let tx = da.begin().await.unwrap();
            add(&tx, "a-panicked").await;
            panic!("handler bug");
        }
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    // Panicking inside the `transaction` callback.
    let in_callback = tokio::spawn({
        let da = da.clone();
        async move {
            da.transaction::<_, (), DbErr>(|tx| {
                Box::pin(async move {
                    add(tx, "a-callback-panicked").await;
                    panic!("callback bug");
                })
            })
            .await
        }
    })
    .await;
    assert!(in_callback.unwrap_err().is_panic());

    // Beta, on whatever connection alpha left behind, sees its own rows only,
    // and none of alpha's work was committed.
    for _ in 0..3 {
        let seen = customer::Entity::find().all(&db).await.unwrap();
        assert_eq!(names_of(seen), ["b-only"]);
        let unqualified = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT current_schema() AS s, \
                 current_setting('transaction_isolation') AS iso",
            ))
            .await
            .unwrap()
            .unwrap();
        let schema: String = unqualified.try_get("", "s").unwrap();
        assert_eq!(schema, ctx.hidra.schema_name(&b.id));
    }
    assert!(names(&ctx.hidra, &a).await.is_empty());
    ctx.teardown().await;
}

#[tokio::test]
async fn tenants_at_different_migration_versions_share_one_connection_through_seaorm() {
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql("001_customers", CUSTOMERS)
            .max_connections(1)
            .tenant_cap(hidra::TenantCap::Connections(1)),
    )
    .await;
    let old = ctx.tenant("old").await;
    let new = ctx.tenant("new").await;
    // `new` is one migration ahead: an extra column, so `SELECT *` differs.
    let mut tx = ctx.hidra.begin(&new).await.unwrap();
    sqlx::raw_sql("ALTER TABLE customers ADD COLUMN loyalty INT NOT NULL DEFAULT 7")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let d_old = TenantDatabase::new(ctx.hidra.clone(), old.clone());
    let d_new = TenantDatabase::new(ctx.hidra.clone(), new.clone());
    add(&d_old, "o").await;
    add(&d_new, "n").await;

    let select = "SELECT * FROM customers WHERE id = $1";
    let update = "UPDATE customers SET name = name WHERE id = $1 RETURNING *";
    let mut failures = Vec::new();
    for i in 0..200 {
        let (db, columns) = if i % 2 == 0 { (&d_old, 2) } else { (&d_new, 3) };
        let sql = if i % 4 < 2 { select } else { update };
        let stmt = Statement::from_sql_and_values(DbBackend::Postgres, sql, [1i64.into()]);
        match JsonValue::find_by_statement(stmt).one(db).await {
            Ok(Some(JsonValue::Object(row))) if row.len() == columns => {}
            other => failures.push(format!("{i}: {other:?}")),
        }
        // Entity reads interleave with the raw ones.
        if customer::Entity::find_by_id(1)
            .one(db)
            .await
            .unwrap()
            .is_none()
        {
            failures.push(format!("{i}: entity read found nothing"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    ctx.teardown().await;
}

#[tokio::test]
async fn a_seaorm_transaction_of_your_own_tenant_tx() {
    let ctx = setup(2).await;
    let a = ctx.tenant("alpha").await;
    let tx = TenantTransaction::new(ctx.hidra.begin(&a).await.unwrap());
    assert_eq!(tx.tenant(), &a.id);
    add(&tx, "a-wrapped").await;
    tx.commit().await.unwrap();
    assert_eq!(names(&ctx.hidra, &a).await, ["a-wrapped"]);
    ctx.teardown().await;
}

#[tokio::test]
async fn a_busy_tenant_is_a_connection_acquire_error() {
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql("001_customers", CUSTOMERS)
            .max_connections(2)
            .tenant_cap(hidra::TenantCap::Connections(1))
            .tenant_wait(Duration::from_millis(50)),
    )
    .await;
    let a = ctx.tenant("alpha").await;
    let da = TenantDatabase::new(ctx.hidra.clone(), a.clone());
    let held = da.begin().await.unwrap();
    let refused = customer::Entity::find().all(&da).await.unwrap_err();
    assert!(hidra_sea_orm::is_tenant_busy(&refused), "{refused:?}");
    held.rollback().await.unwrap();
    assert!(customer::Entity::find().all(&da).await.unwrap().is_empty());
    ctx.teardown().await;
}

#[tokio::test]
async fn every_strategy_serves_seaorm() {
    // Database per tenant, next to a schema tenant, in one Hidra.
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql("001_customers", CUSTOMERS)
            .max_connections(3)
            .database_prefix(format!("so{}_", std::process::id()))
            .database_per_tenant(hidra::DatabasePoolConfig::default().with_budget(4)),
    )
    .await;
    let schema = ctx.tenant("in-schema").await;
    let own_db = ctx
        .hidra
        .provision(NewTenant::new(id("own-db")).strategy(hidra::Strategy::Database))
        .await
        .unwrap();
    for (t, n) in [(&schema, "s-row"), (&own_db, "d-row")] {
        let db = TenantDatabase::new(ctx.hidra.clone(), t.clone());
        add(&db, n).await;
        let tx = db.begin().await.unwrap();
        add(&tx, &format!("{n}-tx")).await;
        tx.commit().await.unwrap();
    }
    for (t, n) in [(&schema, "s-row"), (&own_db, "d-row")] {
        let db = TenantDatabase::new(ctx.hidra.clone(), t.clone());
        let seen = names_of(customer::Entity::find().all(&db).await.unwrap());
        assert_eq!(seen, [n.to_owned(), format!("{n}-tx")]);
    }
    ctx.hidra
        .deprovision(&own_db.id, hidra::Confirmation::of(&own_db.id))
        .await
        .unwrap();
    ctx.teardown().await;
}

#[tokio::test]
async fn row_level_tenants_serve_seaorm_under_their_policies() {
    use hidra::testing::{PgServer, TestDatabase};
    use sqlx::{AssertSqlSafe, Connection, PgConnection};

    // Row-level security never restricts a superuser: run as an ordinary role.
    let test_db = TestDatabase::create().await.unwrap();
    let role = format!("hidra_so_{}", &test_db.name()[test_db.name().len() - 8..]);
    let mut su = PgConnection::connect(test_db.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS;
         GRANT CREATE ON DATABASE \"{db}\" TO {role};
         GRANT ALL ON SCHEMA public TO {role};",
        db = test_db.name()
    )))
    .execute(&mut su)
    .await
    .unwrap();
    let h = Hidra::builder()
        .tenant_migrations(hidra::Migrations::new().push("customers", CUSTOMERS))
        .max_connections(2)
        .connect_with(test_db.connect_options().username(&role))
        .await
        .unwrap();
    h.install().await.unwrap();
    let mut shared = h.acquire_shared().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE public.customers (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);\n{}",
        hidra::rls::tenant_table_sql("public.customers").unwrap()
    )))
    .execute(&mut *shared)
    .await
    .unwrap();
    drop(shared);
    let mut tenants = Vec::new();
    for name in ["alpha", "beta"] {
        let t = h
            .provision(NewTenant::new(id(name)).strategy(hidra::Strategy::RowLevel))
            .await
            .unwrap();
        let db = TenantDatabase::new(h.clone(), t.clone());
        add(&db, &format!("{name}-row")).await;
        tenants.push(db);
    }
    for (db, name) in tenants.iter().zip(["alpha", "beta"]) {
        let seen = names_of(customer::Entity::find().all(db).await.unwrap());
        assert_eq!(seen, [format!("{name}-row")]);
        // Another tenant's row by id: invisible, and not updatable.
        let all = customer::Entity::update_many()
            .col_expr(customer::Column::Name, Expr::value("hijacked"))
            .exec(db)
            .await
            .unwrap();
        assert_eq!(all.rows_affected, 1, "only its own row");
    }
    h.close().await;
    test_db.drop_now().await.unwrap();
    let server = PgServer::get().await.unwrap();
    let mut su = PgConnection::connect(server.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&mut su)
        .await
        .unwrap();
}
