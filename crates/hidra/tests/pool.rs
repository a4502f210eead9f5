//! The shared pool gives a connection back at once when its user finished
//! with it, and settles it first otherwise: a transaction dropped unfinished
//! is rolled back without waiting for another checkout, and a statement cut
//! off mid-flight is finished before anyone else gets its connection.

mod common;

use std::time::Duration;

use common::{notices_during, setup, tenant_with_marker};
use sqlx::{Connection, PgConnection};

/// The state of backend `pid`, read on a connection of its own.
async fn backend_state(db: &hidra::testing::TestDatabase, pid: i32) -> Option<String> {
    let mut conn = PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let state = sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_optional(&mut conn)
        .await
        .unwrap()
        .flatten();
    conn.close().await.unwrap();
    state
}

/// The backend process serving `conn`.
async fn backend_pid<'c>(conn: impl sqlx::Executor<'c, Database = sqlx::Postgres>) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Polls `backend_state` until it is `want` (or 10 s pass).
async fn wait_for_state(db: &hidra::testing::TestDatabase, pid: i32, want: &str) -> Option<String> {
    let mut state = None;
    for _ in 0..1000 {
        state = backend_state(db, pid).await;
        if state.as_deref() == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state
}

#[tokio::test]
async fn a_dropped_transaction_is_rolled_back_before_any_other_checkout() {
    let ctx = setup(1).await;
    let a = tenant_with_marker(&ctx.hidra, "a").await;

    let mut tx = ctx.hidra.begin(&a).await.unwrap();
    let pid = backend_pid(&mut tx).await;
    sqlx::query("INSERT INTO items (label) VALUES ('never committed')")
        .execute(&mut tx)
        .await
        .unwrap();
    assert_eq!(
        backend_state(&ctx.db, pid).await.as_deref(),
        Some("idle in transaction")
    );
    drop(tx);

    // Nothing else checks a connection out: the rollback happens by itself.
    assert_eq!(
        wait_for_state(&ctx.db, pid, "idle").await.as_deref(),
        Some("idle"),
        "the dropped transaction still holds its backend"
    );
    // The connection was rolled back and reused, not closed.
    let mut conn = ctx.hidra.acquire(&a).await.unwrap();
    let again = backend_pid(&mut conn).await;
    assert_eq!(again, pid);
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(items, 0);
}

#[tokio::test]
async fn a_statement_cut_off_is_finished_before_its_connection_is_reused() {
    let ctx = setup(2).await;
    let a = tenant_with_marker(&ctx.hidra, "a").await;
    let b = tenant_with_marker(&ctx.hidra, "b").await;
    let c = tenant_with_marker(&ctx.hidra, "c").await;

    // c holds one connection while a's statement on the other is cut off.
    let mut held = ctx.hidra.acquire(&c).await.unwrap();
    let held_pid = backend_pid(&mut held).await;
    let mut conn = ctx.hidra.acquire(&a).await.unwrap();
    let cut_pid = backend_pid(&mut conn).await;
    assert_ne!(cut_pid, held_pid);
    let sleep = sqlx::query("SELECT pg_sleep(1)").execute(&mut conn);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sleep)
            .await
            .is_err(),
        "pg_sleep(1) finished within 100 ms"
    );
    drop(conn);
    drop(held);

    // The cut-off connection is busy until its query ends, so b gets the
    // other one at once rather than waiting behind a's query.
    let mut conn = ctx.hidra.acquire(&b).await.unwrap();
    let pid = backend_pid(&mut conn).await;
    assert_eq!(
        pid, held_pid,
        "b got the connection still running a's query"
    );
    let marker: String = sqlx::query_scalar("SELECT tenant FROM marker")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(marker, "b");
    drop(conn);

    // Once settled, the cut-off connection serves again, bound to its new tenant.
    assert_eq!(
        wait_for_state(&ctx.db, cut_pid, "idle").await.as_deref(),
        Some("idle")
    );
    let mut first = ctx.hidra.acquire(&c).await.unwrap();
    let mut second = ctx.hidra.acquire(&b).await.unwrap();
    for (conn, name) in [(&mut first, "c"), (&mut second, "b")] {
        let marker: String = sqlx::query_scalar("SELECT tenant FROM marker")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(marker, name);
    }
    assert_eq!(
        ctx.hidra.pool_status().size,
        2,
        "no connection was replaced"
    );
}

#[tokio::test]
async fn closing_waits_for_checked_out_connections_and_refuses_new_ones() {
    let ctx = setup(2).await;
    let a = tenant_with_marker(&ctx.hidra, "a").await;
    let b = tenant_with_marker(&ctx.hidra, "b").await;
    let conn = ctx.hidra.acquire(&a).await.unwrap();
    let hidra = ctx.hidra.clone();
    let closing = tokio::spawn(async move { hidra.close().await });
    // Refused as soon as the pool is closing (b, not a: a is at its cap).
    let mut refused = None;
    for _ in 0..1000 {
        match ctx.hidra.acquire(&b).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(other) => drop(other),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = refused.expect("checkouts still served after close()");
    assert!(
        !matches!(refused, hidra::Error::TenantBusy { .. }),
        "{refused:?}"
    );
    assert!(
        !closing.is_finished(),
        "close() returned with a connection out"
    );
    drop(conn);
    tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .expect("close() returned once the connection came back")
        .unwrap();
    assert_eq!(ctx.hidra.pool_status().size, 0);
}

#[tokio::test]
async fn a_server_that_never_answers_fails_the_checkout_instead_of_hanging() {
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("postgres");
    let connect = hidra::Hidra::builder()
        .acquire_timeout(Duration::from_millis(300))
        .connect_with(options);
    let err = tokio::time::timeout(Duration::from_secs(20), connect)
        .await
        .expect("connecting to a silent server hung")
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_transaction_its_own_sql_ended_is_given_back_without_a_stray_rollback() {
    let ctx = setup(1).await;
    let a = tenant_with_marker(&ctx.hidra, "a").await;
    let notices = notices_during(async {
        let mut tx = ctx.hidra.begin(&a).await.unwrap();
        let pid = backend_pid(&mut tx).await;
        sqlx::query("INSERT INTO items (label) VALUES ('committed by its own SQL')")
            .execute(&mut tx)
            .await
            .unwrap();
        // What a `commit()` whose future was dropped after the server
        // committed leaves behind, too.
        sqlx::raw_sql("COMMIT").execute(&mut tx).await.unwrap();
        drop(tx);

        // One connection: this checkout waits for the settled one.
        let mut conn = ctx.hidra.acquire(&a).await.unwrap();
        assert_eq!(backend_pid(&mut conn).await, pid, "reused, not closed");
        let items: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(items, 1, "the commit stands");
    })
    .await;
    assert!(
        !notices.contains("no transaction in progress"),
        "a ROLLBACK was sent outside a transaction: {notices}"
    );
}
