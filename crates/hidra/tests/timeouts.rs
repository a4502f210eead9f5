//! Per-tenant statement timeouts: applied with the tenant's binding, cut off
//! only that tenant's slow queries, and follow the registry without a
//! restart; unscoped checkouts get the server's own value back.

mod common;

use std::time::Duration;

use common::{MARKER_SCHEMA, id, setup_with};
use hidra::{Hidra, NewTenant};

/// The SQLSTATE of a statement cancelled by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

async fn show(conn: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenants_timeout_cuts_off_its_queries_only_and_follows_the_registry() {
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql("001_marker", MARKER_SCHEMA)
            .max_connections(1)
            .statement_timeout(Duration::from_secs(5)),
    )
    .await;
    let h = &ctx.hidra;
    let slow = h
        .provision(
            NewTenant::new(id("slow")).metadata(serde_json::json!({ "statement_timeout_ms": 100 })),
        )
        .await
        .unwrap();
    let other = h.provision(NewTenant::new(id("other"))).await.unwrap();

    // The tenant's own limit cuts its long query off, in a connection and in
    // a transaction.
    let mut conn = h.acquire(&slow).await.unwrap();
    let err = sqlx::query("SELECT pg_sleep(1)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some(QUERY_CANCELED), "{err}");
    drop(conn);
    let mut tx = h.begin(&slow).await.unwrap();
    let err = sqlx::query("SELECT pg_sleep(1)")
        .execute(&mut tx)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some(QUERY_CANCELED), "{err}");
    drop(tx);

    // On the same (only) connection, the other tenant has the default and
    // runs the same kind of query to the end.
    let mut conn = h.acquire(&other).await.unwrap();
    assert_eq!(show(conn.raw_connection()).await, "5s");
    sqlx::query("SELECT pg_sleep(0.3)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    // An unscoped checkout gets the server's own value back.
    let mut shared = h.acquire_shared().await.unwrap();
    assert_eq!(show(&mut shared).await, "0");
    // The registry changes the other tenant's limit: its next record binds it.
    sqlx::query(
        "UPDATE public.tenants SET metadata = '{\"statement_timeout_ms\": 50}' WHERE id = 'other'",
    )
    .execute(&mut *shared)
    .await
    .unwrap();
    drop(shared);
    let other = h.tenant(&other.id).await.unwrap().unwrap();
    let mut conn = h.acquire(&other).await.unwrap();
    assert_eq!(show(conn.raw_connection()).await, "50ms");
    let err = sqlx::query("SELECT pg_sleep(0.3)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some(QUERY_CANCELED), "{err}");
}

#[tokio::test]
async fn a_value_postgresql_refuses_in_the_registry_is_ignored() {
    let ctx = setup_with(
        Hidra::builder()
            .schema_sql("001_marker", MARKER_SCHEMA)
            .max_connections(2)
            .statement_timeout(Duration::from_secs(5)),
    )
    .await;
    let h = &ctx.hidra;
    let odd = h
        .provision(
            NewTenant::new(id("odd"))
                .metadata(serde_json::json!({ "statement_timeout_ms": 99_999_999_999u64 })),
        )
        .await
        .unwrap();
    // Out of PostgreSQL's range: the default applies, checkouts work.
    let mut conn = h.acquire(&odd).await.unwrap();
    assert_eq!(show(conn.raw_connection()).await, "5s");
}

#[tokio::test]
async fn without_a_configured_timeout_nothing_is_set() {
    let ctx = common::setup(1).await;
    let h = &ctx.hidra;
    let t = h
        .provision(
            NewTenant::new(id("t")).metadata(serde_json::json!({ "statement_timeout_ms": 1 })),
        )
        .await
        .unwrap();
    let mut conn = h.acquire(&t).await.unwrap();
    // Overrides are honoured only when Hidra manages the timeout.
    assert_eq!(show(conn.raw_connection()).await, "0");
    sqlx::query("SELECT pg_sleep(0.05)")
        .execute(&mut conn)
        .await
        .unwrap();
}
