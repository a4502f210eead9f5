//! The test harness itself: a throw-away database is created, usable, and
//! dropped even while a connection to it is open.

use hidra::testing::{PgServer, TestDatabase};
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn databases_are_created_and_dropped() {
    let db = TestDatabase::create().await.unwrap();
    assert!(db.name().starts_with("hidra_test_"));
    let mut conn = PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let (current,): (String,) = sqlx::query_as("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(current, db.name());
    // The open connection does not stop the drop.
    let name = db.name().to_owned();
    db.drop_now().await.unwrap();
    let server = PgServer::get().await.unwrap();
    let mut admin = PgConnection::connect(server.url()).await.unwrap();
    let (exists,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(!exists);
}
