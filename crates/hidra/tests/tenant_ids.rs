//! Hostile tenant ids are refused before any SQL runs, and nothing is created.

mod common;

use common::*;
use hidra::{Error, TenantId};

const HOSTILE: &[&str] = &[
    "",
    "acme'",
    "acme\"",
    "ac\"me",
    "acme;",
    "a;DROP SCHEMA public CASCADE",
    "acme; drop table tenants",
    "drop",
    "DROP",
    "Acme",
    "ACME",
    "acmé",
    "ακμη",
    "acme\u{0}",
    "acme\n",
    "acme corp",
    "acme.corp",
    "acme/..",
    "public",
    "information_schema",
    "pg_catalog",
    "pg_toast",
    "pg-temp",
    "hidra",
    "1acme",
    "-acme",
    "_acme",
];

#[test]
fn hostile_ids_are_refused_with_the_rule_broken() {
    for bad in HOSTILE
        .iter()
        .copied()
        .chain([&*"a".repeat(51), &*"a".repeat(64)])
    {
        match TenantId::new(bad) {
            Err(Error::InvalidTenantId { reason, .. }) => assert!(!reason.is_empty()),
            other => {
                // "drop" is a perfectly good lowercase id; everything else must fail.
                assert_eq!(bad, "drop", "{bad:?} accepted: {other:?}");
            }
        }
    }
    assert!(TenantId::new("a".repeat(50)).is_ok());
}

#[tokio::test]
async fn nothing_is_created_for_refused_ids() {
    let ctx = setup(2).await;
    for bad in HOSTILE {
        // The only way to reach provisioning is through a validated TenantId.
        if let Ok(id) = TenantId::new(bad) {
            ctx.hidra
                .provision(hidra::NewTenant::new(id))
                .await
                .unwrap();
        }
    }
    assert_eq!(schemas(&ctx.hidra).await, vec!["tenant_drop"]);
    assert_eq!(registry_ids(&ctx.hidra).await, vec!["drop"]);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn the_registry_refuses_ids_that_bypassed_validation() {
    let ctx = setup(2).await;
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    let err = sqlx::query(
        "INSERT INTO tenants (id, name, schema_name) VALUES ('Bad\"Id', 'x', 'tenant_bad')",
    )
    .execute(&mut *conn)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("check constraint"), "{err}");
    drop(conn);
    ctx.db.drop_now().await.unwrap();
}
