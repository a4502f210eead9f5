//! A tenant in its own database: its jobs live in the shared database's job
//! table and run against its own database; none can be enqueued in its
//! transactions, which are in its database.

mod common;

use common::*;
use hidra::testing::PgServer;
use hidra::{NewTenant, Strategy};
use hidra_apalis::{Error, TenantJobs};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

#[tokio::test]
async fn a_database_tenants_jobs_run_in_its_database_and_cannot_join_its_transactions() {
    let db = hidra::testing::TestDatabase::create().await.unwrap();
    let prefix = format!("j{}_", &db.name()[db.name().len() - 8..]);
    let hidra = hidra::Hidra::builder()
        .schema_sql("001_probe", SCHEMA)
        .database_prefix(&prefix)
        .connect(db.url())
        .await
        .unwrap();
    hidra.install().await.unwrap();
    let jobs = TenantJobs::new(&hidra);
    jobs.install().await.unwrap();
    let own = NewTenant::new(id("solo")).strategy(Strategy::Database);
    let solo = hidra.provision(own).await.unwrap();
    let mut conn = hidra.acquire(&solo).await.unwrap();
    sqlx::query("INSERT INTO marker (tenant) VALUES ('solo, own database')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let shared = tenant(&hidra, "shared").await;
    let queue = probes(&jobs);

    let mut tx = hidra.begin(&solo).await.unwrap();
    let err = queue
        .push_in(&mut tx, Probe::new("in tx"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::OwnDatabase(t) if t.as_str() == "solo"),
        "{err}"
    );
    tx.rollback().await.unwrap();

    let id = queue.push_for(&solo, Probe::new("own")).await.unwrap();
    let _worker = worker("databases", &queue, jobs.layer());
    wait_for_status(&jobs, &id, "Done").await;
    let runs = runs(&hidra, &solo).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs.iter()
            .all(|r| r.seen == "solo, own database" && r.context == "solo"),
        "{runs:?}"
    );
    assert_eq!(common::runs(&hidra, &shared).await, []);

    drop(_worker);
    hidra.close().await;
    drop_databases(&prefix).await;
}

/// Drops the tenant databases made under `prefix`.
async fn drop_databases(prefix: &str) {
    let server = PgServer::get().await.unwrap();
    let mut su = PgConnection::connect(server.url()).await.unwrap();
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)")
            .bind(prefix)
            .fetch_all(&mut su)
            .await
            .unwrap();
    for name in names {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut su)
        .await
        .unwrap();
    }
}
