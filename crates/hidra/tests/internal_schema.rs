//! `Hidra::internal_schema_status` against real PostgreSQL: what it reports
//! before and after `Hidra::install`, and for a schema that lost a table.

use hidra::Hidra;
use hidra::testing::TestDatabase;

const EVERY_PART: [&str; 5] = [
    "hidra",
    "hidra.shared_migrations",
    "hidra.schema_versions",
    "hidra.spare_schemas",
    "hidra.row_level_tenants",
];

#[tokio::test]
async fn the_internal_schema_status_follows_the_install() {
    let db = TestDatabase::create().await.expect("create test database");
    let hidra = Hidra::builder()
        .max_connections(2)
        .connect_with(db.connect_options())
        .await
        .expect("connect hidra");

    // Never installed: every part is missing, and looking creates nothing.
    let status = hidra.internal_schema_status().await.unwrap();
    assert!(!status.is_complete());
    assert!(!status.schema && !status.shared_migrations);
    assert_eq!(status.missing(), EVERY_PART);
    assert_eq!(hidra.internal_schema_status().await.unwrap(), status);

    hidra.install().await.unwrap();
    let status = hidra.internal_schema_status().await.unwrap();
    assert!(status.is_complete(), "{status:?}");
    assert!(status.missing().is_empty());
    assert!(status.schema && status.shared_migrations);
    assert!(status.schema_versions && status.spare_schemas);

    // A table dropped by hand: the schema is there, the table is named.
    let mut conn = hidra.acquire_shared().await.unwrap();
    sqlx::raw_sql("DROP TABLE hidra.spare_schemas")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let status = hidra.internal_schema_status().await.unwrap();
    assert!(status.schema && !status.spare_schemas);
    assert!(!status.is_complete());
    assert_eq!(status.missing(), ["hidra.spare_schemas"]);

    // Installing again puts it back.
    hidra.install().await.unwrap();
    assert!(hidra.internal_schema_status().await.unwrap().is_complete());

    hidra.close().await;
    db.drop_now().await.unwrap();
}
