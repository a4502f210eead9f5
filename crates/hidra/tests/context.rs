//! The task-local current tenant.

mod common;

use common::*;

#[tokio::test]
async fn scope_sets_current_and_spawn_does_not_inherit() {
    let ctx = setup(2).await;
    let t = ctx
        .hidra
        .provision(hidra::NewTenant::new(id("ctx")))
        .await
        .unwrap();
    assert!(hidra::context::current().is_none());
    hidra::context::scope(t.clone(), async {
        assert_eq!(hidra::context::current_id(), Some(id("ctx")));
        // A plain spawn does not inherit the tenant...
        let plain = tokio::spawn(async { hidra::context::current_id() });
        assert_eq!(plain.await.unwrap(), None);
        // ...propagate carries it on purpose.
        let carried = tokio::spawn(hidra::context::propagate(async {
            hidra::context::current_id()
        }));
        assert_eq!(carried.await.unwrap(), Some(id("ctx")));
        // ...and so does context::spawn, into nested spawns too.
        let spawned = hidra::context::spawn(async {
            let inner = hidra::context::spawn(async { hidra::context::current_id() });
            (hidra::context::current_id(), inner.await.unwrap())
        });
        assert_eq!(spawned.await.unwrap(), (Some(id("ctx")), Some(id("ctx"))));
    })
    .await;
    assert!(hidra::context::current().is_none());
    // The synchronous scope, and the named future held across polls (as a
    // tower service's response future holds it).
    let seen = hidra::context::sync_scope(t.clone(), hidra::context::current_id);
    assert_eq!(seen, Some(id("ctx")));
    assert!(hidra::context::current().is_none());
    let mut held: std::pin::Pin<Box<hidra::context::Scoped<_>>> =
        Box::pin(hidra::context::scope(t.clone(), async {
            tokio::task::yield_now().await;
            hidra::context::current_id()
        }));
    assert_eq!((&mut held).await, Some(id("ctx")));
    assert!(hidra::context::current().is_none());
    // Outside any scope, a carried task has no tenant either.
    let none = hidra::context::spawn(async { hidra::context::current_id() });
    assert_eq!(none.await.unwrap(), None);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn scope_ends_with_a_panicking_future_on_the_same_task() {
    use futures_util::FutureExt;
    use std::panic::AssertUnwindSafe;

    let ctx = setup(1).await;
    let t = ctx
        .hidra
        .provision(hidra::NewTenant::new(id("boom")))
        .await
        .unwrap();
    let res = AssertUnwindSafe(hidra::context::scope(t, async {
        assert!(hidra::context::current().is_some());
        panic!("inside scope");
    }))
    .catch_unwind()
    .await;
    assert!(res.is_err());
    assert!(
        hidra::context::current().is_none(),
        "tenant outlived its scope"
    );
    ctx.db.drop_now().await.unwrap();
}
