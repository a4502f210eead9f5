//! The checked queries run in each tenant's schema: two tenants with the same
//! table never see each other's notes, and the types the macros derived from
//! the template schema are the types the tenants' rows have.

use hidra::testing::TestDatabase;
use hidra::{Hidra, NewTenant, TenantId};
use hidra_checked_queries::{add_note, counts, migrations, notes, pin};

#[tokio::test]
async fn checked_queries_run_in_each_tenants_own_schema() {
    let db = TestDatabase::create().await.unwrap();
    let hidra = Hidra::builder()
        .tenant_migrations(migrations())
        .connect(db.url())
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

    let mut a = hidra.acquire(&acme).await.unwrap();
    let first = add_note(&mut a, "Call Wile E.", Some("about the rockets"))
        .await
        .unwrap();
    let second = add_note(&mut a, "Order more rockets", None).await.unwrap();
    assert_eq!(first.body.as_deref(), Some("about the rockets"));
    assert_eq!(second.body, None);
    assert!(!second.pinned);
    assert!(pin(&mut a, first.id, true).await.unwrap());
    drop(a);

    let mut g = hidra.acquire(&globex).await.unwrap();
    assert_eq!(notes(&mut g).await.unwrap(), Vec::new());
    assert_eq!(counts(&mut g).await.unwrap(), (0, 0));
    // acme's note id means nothing in globex.
    assert!(!pin(&mut g, first.id, true).await.unwrap());
    let own = add_note(&mut g, "Hammock", None).await.unwrap();
    assert_eq!(own.id, 1, "globex has its own sequence");
    drop(g);

    let mut a = hidra.acquire(&acme).await.unwrap();
    let listed = notes(&mut a).await.unwrap();
    let titles: Vec<&str> = listed.iter().map(|n| n.title.as_str()).collect();
    assert_eq!(
        titles,
        ["Call Wile E.", "Order more rockets"],
        "pinned first"
    );
    assert!(listed[0].pinned);
    assert_eq!(counts(&mut a).await.unwrap(), (2, 1));
    drop(a);
    hidra.close().await;
    db.drop_now().await.unwrap();
}
