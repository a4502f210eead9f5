//! The getting-started chapter's first test (`docs/src/getting-started.md`
//! includes this file).

// ANCHOR: test
use hidra::testing::TestDatabase;
use hidra::{Hidra, NewTenant, TenantId};

#[tokio::test]
async fn tenants_do_not_see_each_others_notes() {
    let db = TestDatabase::create().await.unwrap();
    let hidra = Hidra::builder()
        .schema_sql("001_notes", "CREATE TABLE notes (body TEXT)")
        .connect_with(db.connect_options())
        .await
        .unwrap();
    hidra.install().await.unwrap();
    let acme = hidra
        .provision(NewTenant::new(TenantId::new("acme").unwrap()))
        .await
        .unwrap();
    let globex = hidra
        .provision(NewTenant::new(TenantId::new("globex").unwrap()))
        .await
        .unwrap();

    let mut conn = hidra.acquire(&acme).await.unwrap();
    sqlx::query("INSERT INTO notes VALUES ('secret')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    let mut conn = hidra.acquire(&globex).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
    drop(conn);
    hidra.close().await;
    db.drop_now().await.unwrap(); // or let it drop
}
// ANCHOR_END: test
