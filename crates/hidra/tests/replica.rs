//! Reads on a real streaming replica (`pg_basebackup -R` of a throw-away
//! cluster): served by the replica, bound to their tenant, read-your-writes,
//! and the primary while the replica is away.

mod common;

use std::time::Duration;

use common::*;
use hidra::testing::TempCluster;
use hidra::{Hidra, NewTenant, TenantConn};
use sqlx::{Connection, PgConnection};

async fn on_replica(conn: &mut TenantConn) -> bool {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn markers(conn: &mut TenantConn) -> Vec<String> {
    sqlx::query_scalar("SELECT tenant FROM marker ORDER BY tenant")
        .fetch_all(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn reads_go_to_the_replica_bound_to_their_tenant_and_fall_back_to_the_primary() {
    let primary = TempCluster::start().await.unwrap();
    let mut replica = primary.start_replica().await.unwrap();
    let h = Hidra::builder()
        .schema_sql("001_marker", MARKER_SCHEMA)
        .max_connections(4)
        .read_replica(replica.url())
        // The throw-away primary commits without waiting for its WAL flush
        // (`synchronous_commit=off`): its writes reach the replica within
        // the WAL writer's delay, not at once.
        .replica_wait(Duration::from_secs(2))
        .connect(primary.url())
        .await
        .unwrap();
    h.install().await.unwrap();
    let a = h.provision(NewTenant::new(id("alpha"))).await.unwrap();
    let b = h.provision(NewTenant::new(id("beta"))).await.unwrap();
    for t in [&a, &b] {
        let mut tx = h.begin(t).await.unwrap();
        sqlx::query("INSERT INTO marker VALUES ($1)")
            .bind(t.id.as_str())
            .execute(&mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let written = h.wal_position().await.unwrap();

    // Read-your-writes: the replica, once it has replayed the inserts, and
    // each tenant sees its own rows there.
    for t in [&a, &b] {
        let mut conn = h.acquire_read_after(t, written).await.unwrap();
        assert!(on_replica(&mut conn).await, "served by the replica");
        assert_eq!(markers(&mut conn).await, [t.id.as_str()]);
        let write = sqlx::query("INSERT INTO marker VALUES ('x')")
            .execute(&mut conn)
            .await;
        assert!(write.unwrap_err().to_string().contains("read-only"));
    }
    let status = h.replica_status().await.unwrap();
    assert!(status.reachable);
    assert!(
        h.replica_status()
            .await
            .unwrap()
            .to_prometheus()
            .contains("hidra_replica_up 1")
    );

    // Replay paused: a read after a newer write waits, then reads from the
    // primary, which has it; a plain read still goes to the replica.
    let mut admin = PgConnection::connect(replica.url()).await.unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut admin)
        .await
        .unwrap();
    // A pause is a request: wait until replay has stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if state == "paused" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay never paused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tx = h.begin(&a).await.unwrap();
    sqlx::query("INSERT INTO marker VALUES ('alpha-2')")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let newer = h.wal_position().await.unwrap();
    assert!(newer > written);
    let mut conn = h.acquire_read_after(&a, newer).await.unwrap();
    assert!(
        !on_replica(&mut conn).await,
        "the replica is behind: the primary answers"
    );
    assert_eq!(markers(&mut conn).await, ["alpha", "alpha-2"]);
    drop(conn);
    let mut stale = h.acquire_read(&a).await.unwrap();
    assert!(on_replica(&mut stale).await);
    assert_eq!(markers(&mut stale).await, ["alpha"], "not replayed yet");
    drop(stale);
    let lagging = h.replica_status().await.unwrap();
    assert!(lagging.lag_bytes.unwrap() > 0, "{lagging:?}");
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut conn = h.acquire_read_after(&a, newer).await.unwrap();
    assert!(on_replica(&mut conn).await);
    assert_eq!(markers(&mut conn).await, ["alpha", "alpha-2"]);
    drop(conn);

    // Replica stopped: reads are served by the primary.
    replica.pause().await.unwrap();
    for t in [&a, &b, &a] {
        let mut conn = h.acquire_read(t).await.unwrap();
        assert!(!on_replica(&mut conn).await);
        assert_eq!(markers(&mut conn).await[0], t.id.as_str());
    }
    assert!(!h.replica_status().await.unwrap().reachable);
    // And back on the replica once it is.
    replica.resume().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut conn = h.acquire_read(&b).await.unwrap();
        if on_replica(&mut conn).await {
            assert_eq!(markers(&mut conn).await, ["beta"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads never returned to the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.close().await;
    replica.stop().await.unwrap();
    primary.stop().await.unwrap();
}
