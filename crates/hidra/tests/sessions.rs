//! Per-user token versions (log out everywhere, deactivation, re-roling,
//! password change, deletion) and brute-force limits, against a real
//! PostgreSQL, with two `Hidra` instances standing for two processes.

mod auth_common;

use std::time::{Duration, Instant};

use auth_common::*;
use hidra::Hidra;
use hidra::auth::{Accounts, AuthError, Claims, Limit, LoginLimits, NewUser, UserUpdate};

const PASSWORD: &str = "correct horse battery";

/// A second "process": its own pools, caches and listeners on the same database.
async fn other_process(ctx: &Ctx) -> (Hidra, Accounts) {
    let hidra = Hidra::builder()
        .schema_sql("auth tables", TENANT_SQL)
        .max_connections(2)
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    let accounts = Accounts::new(hidra.clone(), ctx.jwt.clone()).with_passwords(cheap_passwords());
    (hidra, accounts)
}

async fn ada(ctx: &Ctx) -> i64 {
    ctx.accounts
        .register(
            &ctx.acme,
            NewUser::new("ada@acme.test", "Ada", PASSWORD).role("admin"),
        )
        .await
        .unwrap()
        .id
}

async fn login(accounts: &Accounts) -> Claims {
    accounts
        .login("ada@acme.test", PASSWORD)
        .await
        .unwrap()
        .claims()
        .clone()
}

/// Polls `accounts`' check of `claims` until it refuses, for at most `limit`.
async fn refused_within(accounts: &Accounts, claims: &Claims, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match accounts.revocations().check(claims).await {
            Err(hidra::Error::Auth(AuthError::TokenRevoked)) => return start.elapsed(),
            Ok(()) if start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("still {other:?} after {:?}", start.elapsed()),
        }
    }
}

#[tokio::test]
async fn tokens_carry_the_version_and_each_change_ends_the_sessions() {
    let ctx = setup().await;
    let id = ada(&ctx).await;
    let claims = login(&ctx.accounts).await;
    assert_eq!(claims.token_version, Some(1));
    ctx.accounts.revocations().check(&claims).await.unwrap();
    // A token round trip keeps the version.
    let token = ctx.jwt.sign(&claims).unwrap();
    assert_eq!(ctx.jwt.verify(&token).unwrap().token_version, Some(1));

    // Renaming keeps the sessions.
    let renamed = ctx
        .accounts
        .update_user(&ctx.acme, id, UserUpdate::new().full_name("Ada L."))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.full_name, "Ada L.");
    ctx.accounts.revocations().check(&claims).await.unwrap();

    type Change = fn(&Ctx, i64) -> futures_util::future::BoxFuture<'_, ()>;
    let changes: [(&str, Change); 4] = [
        ("log out everywhere", |ctx, id| {
            Box::pin(async move {
                assert!(
                    ctx.accounts
                        .log_out_everywhere(&ctx.acme, id)
                        .await
                        .unwrap()
                );
            })
        }),
        ("re-role", |ctx, id| {
            Box::pin(async move {
                let user = ctx
                    .accounts
                    .update_user(&ctx.acme, id, UserUpdate::new().roles(["sales"]))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(user.roles, ["sales"]);
            })
        }),
        ("password change", |ctx, _| {
            Box::pin(async move {
                assert!(
                    ctx.accounts
                        .set_password(&ctx.acme, "ada@acme.test", PASSWORD)
                        .await
                        .unwrap()
                );
            })
        }),
        ("deactivation", |ctx, id| {
            Box::pin(async move {
                ctx.accounts
                    .update_user(&ctx.acme, id, UserUpdate::new().active(false))
                    .await
                    .unwrap()
                    .unwrap();
            })
        }),
    ];
    let mut claims = claims;
    for (what, change) in changes {
        let before = claims.token_version.unwrap();
        change(&ctx, id).await;
        // In the process that made the change: at once.
        assert_eq!(
            kind(ctx.accounts.revocations().check(&claims).await),
            AuthError::TokenRevoked,
            "{what}"
        );
        if what == "deactivation" {
            assert_eq!(
                kind(ctx.accounts.login("ada@acme.test", PASSWORD).await),
                AuthError::InvalidCredentials
            );
            break;
        }
        claims = login(&ctx.accounts).await;
        assert_eq!(claims.token_version, Some(before + 1), "{what}");
        ctx.accounts.revocations().check(&claims).await.unwrap();
    }

    // An unknown role changes nothing.
    let reactivated = ctx
        .accounts
        .update_user(&ctx.acme, id, UserUpdate::new().active(true))
        .await
        .unwrap();
    assert!(reactivated.is_some());
    let claims = login(&ctx.accounts).await;
    assert_eq!(
        kind(
            ctx.accounts
                .update_user(&ctx.acme, id, UserUpdate::new().roles(["nope"]))
                .await
        ),
        AuthError::UnknownRole("nope".into())
    );
    ctx.accounts.revocations().check(&claims).await.unwrap();

    // Deletion: no login row, no session.
    assert!(
        ctx.accounts
            .delete_user(&ctx.acme, "ada@acme.test")
            .await
            .unwrap()
    );
    assert_eq!(
        kind(ctx.accounts.revocations().check(&claims).await),
        AuthError::TokenRevoked
    );
    // A user that does not exist.
    assert!(
        ctx.accounts
            .update_user(&ctx.acme, id, UserUpdate::new().active(false))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !ctx.accounts
            .log_out_everywhere(&ctx.acme, id)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn tokens_without_a_version_or_of_another_user_are_refused() {
    let ctx = setup().await;
    let id = ada(&ctx).await;
    let claims = login(&ctx.accounts).await;
    let mut unversioned = claims.clone();
    unversioned.token_version = None;
    assert_eq!(
        kind(ctx.accounts.revocations().check(&unversioned).await),
        AuthError::TokenRevoked
    );
    // The same version, claimed for a user without a login row.
    let mut stranger = claims.clone();
    stranger.sub = (id + 1).to_string();
    assert_eq!(
        kind(ctx.accounts.revocations().check(&stranger).await),
        AuthError::TokenRevoked
    );
    // The same user id and version in the other tenant.
    let mut other_tenant = claims.clone();
    other_tenant.tenant = ctx.globex.id.clone();
    assert_eq!(
        kind(ctx.accounts.revocations().check(&other_tenant).await),
        AuthError::TokenRevoked
    );
    // A token issued for a user just registered (sign-up) is current.
    let user = ctx
        .accounts
        .register(
            &ctx.globex,
            NewUser::new("bob@globex.test", "Bob", PASSWORD),
        )
        .await
        .unwrap();
    let issued = ctx
        .accounts
        .issue_token(&ctx.globex, &user)
        .await
        .unwrap()
        .unwrap();
    ctx.accounts
        .revocations()
        .check(issued.claims())
        .await
        .unwrap();
}

#[tokio::test]
async fn another_process_refuses_within_a_second() {
    let ctx = setup().await;
    let id = ada(&ctx).await;
    let (other_hidra, other) = other_process(&ctx).await;
    let claims = login(&ctx.accounts).await;
    // The other process has the current version cached.
    other.revocations().check(&claims).await.unwrap();
    other.revocations().check(&claims).await.unwrap();

    ctx.accounts
        .log_out_everywhere(&ctx.acme, id)
        .await
        .unwrap();
    let took = refused_within(&other, &claims, Duration::from_secs(1)).await;
    eprintln!("refused by the other process after {took:?}");

    // And after its listener's connection is killed: it reconnects by
    // itself and clears what it cached meanwhile.
    let claims = login(&ctx.accounts).await;
    other.revocations().check(&claims).await.unwrap();
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%hidra_login_changes%'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(killed >= 1, "no login listener found");
    drop(conn);
    tokio::time::sleep(Duration::from_millis(100)).await;
    ctx.accounts
        .log_out_everywhere(&ctx.acme, id)
        .await
        .unwrap();
    let took = refused_within(&other, &claims, Duration::from_secs(3)).await;
    eprintln!("refused after a listener restart after {took:?}");
    other_hidra.close().await;
}

fn strict(accounts: Accounts) -> Accounts {
    accounts.with_limits(
        LoginLimits::new()
            .per_account(Limit::new(3, Duration::from_secs(60)))
            .per_client(Limit::new(5, Duration::from_secs(60)))
            .sign_ups(Limit::new(2, Duration::from_secs(60))),
    )
}

fn retry_after(result: hidra::Result<impl std::fmt::Debug>) -> u64 {
    match kind(result) {
        AuthError::TooManyAttempts { retry_after_secs } => retry_after_secs,
        other => panic!("expected TooManyAttempts, got {other:?}"),
    }
}

#[tokio::test]
async fn failed_logins_lock_the_account_in_every_process_known_or_not() {
    let ctx = setup().await;
    ada(&ctx).await;
    let accounts = strict(ctx.accounts.clone());
    let (_other_hidra, other) = other_process(&ctx).await;
    let other = strict(other);

    // Three failures, spread over two processes, lock the account: even
    // the right password is refused, without being checked.
    for accounts in [&accounts, &other, &accounts] {
        assert_eq!(
            kind(accounts.login("ada@acme.test", "wrong password").await),
            AuthError::InvalidCredentials
        );
    }
    let secs = retry_after(other.login("ada@acme.test", PASSWORD).await);
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    retry_after(accounts.login("  ADA@acme.test ", PASSWORD).await);

    // An email nobody registered behaves the same: no probing for accounts.
    for _ in 0..3 {
        assert_eq!(
            kind(accounts.login("nobody@acme.test", "wrong password").await),
            AuthError::InvalidCredentials
        );
    }
    retry_after(accounts.login("nobody@acme.test", "wrong password").await);

    // Another account is not locked by them.
    ctx.accounts
        .register(
            &ctx.globex,
            NewUser::new("bob@globex.test", "Bob", PASSWORD),
        )
        .await
        .unwrap();
    accounts.login("bob@globex.test", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_success_clears_the_account_and_windows_end() {
    let ctx = setup().await;
    ada(&ctx).await;
    let accounts = ctx
        .accounts
        .clone()
        .with_limits(LoginLimits::new().per_account(Limit::new(2, Duration::from_secs(1))));
    // One failure, a success, one failure: never two in a row.
    for _ in 0..3 {
        let _ = accounts.login("ada@acme.test", "wrong password").await;
        accounts.login("ada@acme.test", PASSWORD).await.unwrap();
    }
    for _ in 0..2 {
        let _ = accounts.login("ada@acme.test", "wrong password").await;
    }
    retry_after(accounts.login("ada@acme.test", PASSWORD).await);
    // The window is one second.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    accounts.login("ada@acme.test", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_client_is_limited_across_accounts_and_sign_ups_per_client() {
    let ctx = setup().await;
    ada(&ctx).await;
    let accounts = strict(ctx.accounts.clone());
    // Five failures on five accounts from one client lock the client, for
    // every account; another client is unaffected.
    for i in 0..5 {
        let _ = accounts
            .login_from("10.0.0.7", &format!("user{i}@acme.test"), "wrong")
            .await;
    }
    retry_after(
        accounts
            .login_from("10.0.0.7", "ada@acme.test", PASSWORD)
            .await,
    );
    accounts
        .login_from("10.0.0.8", "ada@acme.test", PASSWORD)
        .await
        .unwrap();
    // A success does not clear the client's count.
    retry_after(
        accounts
            .login_from("10.0.0.7", "ada@acme.test", PASSWORD)
            .await,
    );

    accounts.check_sign_up("10.0.0.7").await.unwrap();
    accounts.check_sign_up("10.0.0.7").await.unwrap();
    retry_after(accounts.check_sign_up("10.0.0.7").await);
    accounts.check_sign_up("10.0.0.9").await.unwrap();
}

#[tokio::test]
async fn limits_need_their_table_and_say_so() {
    let ctx = setup().await;
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    sqlx::query("DROP TABLE public.hidra_login_attempts")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let err = ctx
        .accounts
        .login("ada@acme.test", PASSWORD)
        .await
        .unwrap_err();
    assert!(err.is_table_missing(), "{err:?}");
    assert!(err.to_string().contains("Accounts::install()"), "{err}");
    assert!(err.to_string().contains("without_limits"), "{err}");
    // Without limits, login does not need it.
    ada(&ctx).await;
    ctx.accounts
        .clone()
        .without_limits()
        .login("ada@acme.test", PASSWORD)
        .await
        .unwrap();
}
