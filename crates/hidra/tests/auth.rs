//! Authentication: tenant-bound tokens, registration and login through the
//! shared lookup, role permissions and API keys, against real PostgreSQL.

#![cfg(feature = "auth")]

mod auth_common;

use std::time::Duration;

use auth_common::*;
use hidra::auth::{ApiKeys, AuthError, Jwt, JwtAlgorithm, NewApiKey, NewUser, RolePermissions};
use hidra::{Confirmation, Error};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

fn rs256() -> Jwt {
    Jwt::from_pem(
        JwtAlgorithm::Rs256,
        Some(&key("rsa_private.pem")),
        &key("rsa_public.pem"),
    )
    .unwrap()
}

fn eddsa() -> Jwt {
    Jwt::from_pem(
        JwtAlgorithm::EdDsa,
        Some(&key("ed25519_private.pem")),
        &key("ed25519_public.pem"),
    )
    .unwrap()
}

fn hs256() -> Jwt {
    Jwt::hs256(SECRET).unwrap()
}

/// Valid claims for `acme`, as a JSON object, for hand-made tokens.
fn payload() -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": "1", "tenant": "acme", "roles": ["admin"], "iat": now, "exp": now + 600})
}

/// A token with any header and payload, signed with HMAC-SHA-256 over `secret`.
fn hmac_token(header: &Value, payload: &Value, secret: &[u8]) -> String {
    let header: Header = serde_json::from_value(header.clone()).unwrap();
    jsonwebtoken::encode(&header, payload, &EncodingKey::from_secret(secret)).unwrap()
}

fn every_algorithm() -> Vec<Jwt> {
    vec![hs256(), rs256(), eddsa()]
}

#[test]
fn tokens_round_trip_with_every_algorithm() {
    for jwt in every_algorithm() {
        let token = jwt
            .issue(
                "42",
                &hidra::testing::tenant_record("acme"),
                ["admin", "sales"],
            )
            .unwrap();
        let claims = jwt.verify(&token).unwrap();
        assert_eq!(claims.sub, "42");
        assert_eq!(claims.tenant, id("acme"));
        assert_eq!(claims.roles, ["admin", "sales"]);
        assert!(claims.exp > claims.iat);
        let header = token.split('.').next().unwrap();
        let header: Value = serde_json::from_slice(&b64url_decode(header)).unwrap();
        assert_eq!(header["alg"], jwt.algorithm().as_str());
    }
}

#[test]
fn alg_none_is_refused() {
    for jwt in every_algorithm() {
        let body = b64url_encode(payload().to_string().as_bytes());
        for alg in ["none", "None", "NONE"] {
            let head = b64url_encode(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
            for token in [format!("{head}.{body}."), format!("{head}.{body}")] {
                assert_eq!(
                    kind(jwt.verify(&token)),
                    AuthError::InvalidToken,
                    "{alg} accepted by {:?}",
                    jwt.algorithm()
                );
            }
        }
    }
}

#[test]
fn algorithm_confusion_is_refused() {
    let jwt = rs256();
    let public = key("rsa_public.pem");
    // The classic attack: an HS256 token whose HMAC secret is the RS256
    // public key the server verifies with (with and without the newline).
    let trimmed = String::from_utf8(public.clone()).unwrap();
    for secret in [&public[..], trimmed.trim_end().as_bytes()] {
        for alg in ["HS256", "HS384", "HS512"] {
            let token = hmac_token(&json!({"alg": alg, "typ": "JWT"}), &payload(), secret);
            assert_eq!(kind(jwt.verify(&token)), AuthError::InvalidToken, "{alg}");
        }
    }
    // Same against EdDSA with its public key.
    let ed = eddsa();
    let token = hmac_token(
        &json!({"alg": "HS256"}),
        &payload(),
        &key("ed25519_public.pem"),
    );
    assert_eq!(kind(ed.verify(&token)), AuthError::InvalidToken);
}

#[test]
fn any_other_algorithm_than_the_pinned_one_is_refused() {
    let tokens: Vec<(JwtAlgorithm, String)> = every_algorithm()
        .into_iter()
        .map(|j| {
            (
                j.algorithm(),
                j.issue("1", &hidra::testing::tenant_record("acme"), ["admin"])
                    .unwrap(),
            )
        })
        .collect();
    for verifier in every_algorithm() {
        for (alg, token) in &tokens {
            if *alg == verifier.algorithm() {
                assert!(verifier.verify(token).is_ok());
            } else {
                assert_eq!(
                    kind(verifier.verify(token)),
                    AuthError::InvalidToken,
                    "{alg} token accepted by {} verifier",
                    verifier.algorithm()
                );
            }
        }
    }
    // A stronger HMAC than the pinned one is still another algorithm.
    let token = hmac_token(&json!({"alg": "HS512"}), &payload(), SECRET);
    assert_eq!(kind(hs256().verify(&token)), AuthError::InvalidToken);
}

#[test]
fn keys_of_the_wrong_type_are_refused_at_configuration() {
    let rsa = key("rsa_private.pem");
    let rsa_pub = key("rsa_public.pem");
    let ed = key("ed25519_private.pem");
    let ed_pub = key("ed25519_public.pem");
    assert!(Jwt::from_pem(JwtAlgorithm::Rs256, Some(&ed), &ed_pub).is_err());
    assert!(Jwt::from_pem(JwtAlgorithm::Rs256, None, &ed_pub).is_err());
    assert!(Jwt::from_pem(JwtAlgorithm::EdDsa, Some(&rsa), &rsa_pub).is_err());
    assert!(Jwt::from_pem(JwtAlgorithm::EdDsa, None, &rsa_pub).is_err());
    assert!(Jwt::from_pem(JwtAlgorithm::Hs256, None, &rsa_pub).is_err());
    // A private key that does not belong to the public key.
    let err = Jwt::from_pem(
        JwtAlgorithm::Rs256,
        Some(&key("rsa_other_private.pem")),
        &rsa_pub,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn wrong_key_is_refused() {
    // HS256: another secret.
    let other = Jwt::hs256(b"another secret of thirty-two bytes or more!!").unwrap();
    let token = other
        .issue("1", &hidra::testing::tenant_record("acme"), ["admin"])
        .unwrap();
    assert_eq!(kind(hs256().verify(&token)), AuthError::InvalidToken);

    // RS256: signed with another private key.
    let other = Jwt::from_pem(
        JwtAlgorithm::Rs256,
        Some(&key("rsa_other_private.pem")),
        &key("rsa_other_public.pem"),
    )
    .unwrap();
    let token = other
        .issue("1", &hidra::testing::tenant_record("acme"), ["admin"])
        .unwrap();
    assert_eq!(kind(rs256().verify(&token)), AuthError::InvalidToken);

    // RS256: verified with another public key.
    let verifier = Jwt::from_pem(JwtAlgorithm::Rs256, None, &key("rsa_other_public.pem")).unwrap();
    let token = rs256()
        .issue("1", &hidra::testing::tenant_record("acme"), ["admin"])
        .unwrap();
    assert_eq!(kind(verifier.verify(&token)), AuthError::InvalidToken);
}

#[test]
fn tampered_payload_is_refused() {
    for jwt in every_algorithm() {
        let token = jwt
            .issue("1", &hidra::testing::tenant_record("acme"), ["viewer"])
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
        for (field, value) in [
            ("roles", json!(["admin"])),
            ("tenant", json!("globex")),
            ("sub", json!("2")),
            ("exp", json!(claims["exp"].as_i64().unwrap() + 3600)),
        ] {
            let original = claims[field].clone();
            claims[field] = value;
            let forged = format!(
                "{}.{}.{}",
                parts[0],
                b64url_encode(claims.to_string().as_bytes()),
                parts[2]
            );
            assert_eq!(
                kind(jwt.verify(&forged)),
                AuthError::InvalidToken,
                "{field} tampered, {}",
                jwt.algorithm()
            );
            claims[field] = original;
        }
        // The signature itself, one bit.
        let mut sig = b64url_decode(parts[2]);
        sig[0] ^= 1;
        let forged = format!("{}.{}.{}", parts[0], parts[1], b64url_encode(&sig));
        assert_eq!(kind(jwt.verify(&forged)), AuthError::InvalidToken);
        // The untouched token still verifies.
        assert!(jwt.verify(&token).is_ok());
    }
}

#[test]
fn expired_token_is_refused() {
    for jwt in every_algorithm() {
        let mut claims = jwt.claims("1", &hidra::testing::tenant_record("acme"), ["admin"]);
        claims.iat -= 7200;
        claims.exp = claims.iat + 3600; // an hour ago
        let token = jwt.sign(&claims).unwrap();
        assert_eq!(kind(jwt.verify(&token)), AuthError::Expired);
        // Five seconds past `exp` is expired when no leeway is allowed.
        let strict = jwt.clone().with_leeway(Duration::ZERO);
        let mut claims = strict.claims("1", &hidra::testing::tenant_record("acme"), ["admin"]);
        claims.exp -= 3600 + 5;
        assert_eq!(
            kind(strict.verify(&strict.sign(&claims).unwrap())),
            AuthError::Expired
        );
    }
}

#[test]
fn expiry_within_the_leeway_is_tolerated() {
    let jwt = hs256().with_leeway(Duration::from_secs(3600));
    let mut claims = jwt.claims("1", &hidra::testing::tenant_record("acme"), ["admin"]);
    claims.exp = claims.iat - 600; // ten minutes ago, within an hour of leeway
    assert!(jwt.verify(&jwt.sign(&claims).unwrap()).is_ok());
}

#[test]
fn not_yet_valid_token_is_refused() {
    for jwt in every_algorithm() {
        let mut claims = jwt.claims("1", &hidra::testing::tenant_record("acme"), ["admin"]);
        claims.nbf = Some(claims.iat + 3600);
        let token = jwt.sign(&claims).unwrap();
        assert_eq!(kind(jwt.verify(&token)), AuthError::NotYetValid);
    }
}

#[test]
fn missing_or_invalid_tenant_claim_is_refused() {
    let jwt = hs256();
    let head = json!({"alg": "HS256", "typ": "JWT"});
    let mut claims = payload();
    claims.as_object_mut().unwrap().remove("tenant");
    assert_eq!(
        kind(jwt.verify(&hmac_token(&head, &claims, SECRET))),
        AuthError::MissingTenantClaim
    );
    claims["tenant"] = Value::Null;
    assert_eq!(
        kind(jwt.verify(&hmac_token(&head, &claims, SECRET))),
        AuthError::MissingTenantClaim
    );
    for bad in [
        json!("Acme"),
        json!("pg_catalog"),
        json!("acme; DROP TABLE users"),
        json!(""),
        json!(42),
        json!(["acme"]),
    ] {
        claims["tenant"] = bad.clone();
        assert_eq!(
            kind(jwt.verify(&hmac_token(&head, &claims, SECRET))),
            AuthError::InvalidTenantClaim,
            "{bad}"
        );
    }
    // Missing `sub`, `exp` or `iat`, or mistyped roles: invalid.
    for field in ["sub", "exp", "iat"] {
        let mut claims = payload();
        claims.as_object_mut().unwrap().remove(field);
        assert_eq!(
            kind(jwt.verify(&hmac_token(&head, &claims, SECRET))),
            AuthError::InvalidToken,
            "{field}"
        );
    }
    let mut claims = payload();
    claims["roles"] = json!("admin");
    assert_eq!(
        kind(jwt.verify(&hmac_token(&head, &claims, SECRET))),
        AuthError::InvalidToken
    );
}

#[test]
fn token_of_tenant_a_is_refused_for_tenant_b() {
    for jwt in every_algorithm() {
        let token = jwt
            .issue("1", &hidra::testing::tenant_record("acme"), ["admin"])
            .unwrap();
        assert_eq!(
            jwt.verify_for(&token, &hidra::testing::tenant_record("acme"))
                .unwrap()
                .tenant,
            id("acme")
        );
        let err = jwt
            .verify_for(&token, &hidra::testing::tenant_record("globex"))
            .unwrap_err();
        assert!(
            matches!(err, Error::Auth(AuthError::WrongTenant)),
            "{err:?}"
        );
        assert!(!err.to_string().contains("acme"), "{err}");
        assert!(!err.to_string().contains("globex"), "{err}");
    }
}

#[test]
fn issuer_and_audience_are_enforced_when_configured() {
    let jwt = hs256()
        .with_issuer("https://auth.acme.test")
        .with_audience("api");
    let token = jwt
        .issue("1", &hidra::testing::tenant_record("acme"), ["admin"])
        .unwrap();
    let claims = jwt.verify(&token).unwrap();
    assert_eq!(claims.iss.as_deref(), Some("https://auth.acme.test"));
    assert_eq!(claims.aud.as_deref(), Some("api"));
    for other in [
        hs256()
            .with_issuer("https://evil.test")
            .with_audience("api"),
        hs256()
            .with_issuer("https://auth.acme.test")
            .with_audience("other"),
    ] {
        assert_eq!(kind(other.verify(&token)), AuthError::InvalidToken);
    }
    // A token without `iss`/`aud` is refused by a verifier that requires them.
    let bare = hs256()
        .issue("1", &hidra::testing::tenant_record("acme"), ["admin"])
        .unwrap();
    assert_eq!(kind(jwt.verify(&bare)), AuthError::InvalidToken);
}

#[test]
fn keys_load_from_files_and_public_keys_only_verify() {
    for (alg, private, public) in [
        (JwtAlgorithm::Rs256, "rsa_private.pem", "rsa_public.pem"),
        (
            JwtAlgorithm::EdDsa,
            "ed25519_private.pem",
            "ed25519_public.pem",
        ),
    ] {
        let issuer = Jwt::from_pem_files(alg, Some(&key_path(private)), &key_path(public)).unwrap();
        let verifier = Jwt::from_pem_files(alg, None, &key_path(public)).unwrap();
        assert!(issuer.can_issue());
        assert!(!verifier.can_issue());
        let token = issuer
            .issue("1", &hidra::testing::tenant_record("acme"), ["admin"])
            .unwrap();
        assert_eq!(verifier.verify(&token).unwrap().tenant, id("acme"));
        let err = verifier
            .issue("1", &hidra::testing::tenant_record("acme"), ["admin"])
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    }
    let err = Jwt::from_pem_files(JwtAlgorithm::Rs256, None, &key_path("missing.pem")).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

// ---------------------------------------------------------------------------
// Registration and login
// ---------------------------------------------------------------------------

#[tokio::test]
async fn register_then_login_issues_a_token_with_the_users_roles() {
    let ctx = setup().await;
    let user = ctx
        .accounts
        .register(
            &ctx.acme,
            NewUser::new("  Ada@Acme.TEST ", "Ada Lovelace", "correct horse battery")
                .role("sales")
                .role("admin")
                .role("sales"),
        )
        .await
        .unwrap();
    assert_eq!(user.email, "ada@acme.test");
    assert_eq!(user.roles, ["admin", "sales"]);
    assert_eq!(user.tenant, ctx.acme.id);
    assert_eq!(user_emails(&ctx.hidra, &ctx.acme).await, ["ada@acme.test"]);
    assert_eq!(user_role_count(&ctx.hidra, &ctx.acme).await, 2);
    assert_eq!(
        lookup_rows(&ctx.hidra).await,
        [("ada@acme.test".to_owned(), "acme".to_owned())]
    );

    // The stored hash is argon2id, not the password.
    let mut conn = ctx.hidra.acquire(&ctx.acme).await.unwrap();
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("correct horse"));

    let login = ctx
        .accounts
        .login("ADA@acme.test", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(login.user(), &user);
    let claims = ctx.jwt.verify_for(login.token(), &ctx.acme).unwrap();
    assert_eq!(&claims, login.claims());
    assert_eq!(claims.sub, user.id.to_string());
    assert_eq!(claims.roles, ["admin", "sales"]);
    assert!(!format!("{login:?}").contains(login.token()));
    assert_eq!(
        kind(ctx.jwt.verify_for(login.token(), &ctx.globex)),
        AuthError::WrongTenant
    );
    assert_eq!(
        ctx.accounts.tenant_of("ada@acme.test").await.unwrap(),
        Some(ctx.acme.id.clone())
    );
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn login_with_unknown_email_or_wrong_password_fails_identically() {
    let ctx = setup().await;
    ctx.user(&ctx.acme, "ada@acme.test", "Ada", &[]).await;
    ctx.user(&ctx.acme, "old@acme.test", "Old", &[]).await;
    ctx.user(&ctx.globex, "gus@globex.test", "Gus", &[]).await;
    let mut conn = ctx.hidra.acquire(&ctx.acme).await.unwrap();
    sqlx::query("UPDATE users SET is_active = FALSE WHERE email = 'old@acme.test'")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    ctx.hidra.suspend(&ctx.globex.id).await.unwrap();

    let unknown = ctx
        .accounts
        .login("nobody@acme.test", "correct horse")
        .await
        .unwrap_err();
    let wrong = ctx
        .accounts
        .login("ada@acme.test", "wrong horse")
        .await
        .unwrap_err();
    let inactive = ctx
        .accounts
        .login("old@acme.test", "correct horse")
        .await
        .unwrap_err();
    let suspended = ctx
        .accounts
        .login("gus@globex.test", "correct horse")
        .await
        .unwrap_err();
    let malformed = ctx
        .accounts
        .login("not an email", "correct horse")
        .await
        .unwrap_err();
    for err in [&unknown, &wrong, &inactive, &suspended, &malformed] {
        assert!(
            matches!(err, Error::Auth(AuthError::InvalidCredentials)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), unknown.to_string());
        assert_eq!(format!("{err:?}"), format!("{unknown:?}"));
        assert!(std::error::Error::source(err).is_none());
    }
    assert_eq!(unknown.to_string(), "invalid email or password");
    // The right password still works.
    assert!(
        ctx.accounts
            .login("ada@acme.test", "correct horse")
            .await
            .is_ok()
    );
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn registration_is_atomic_when_the_lookup_row_is_taken() {
    let ctx = setup().await;
    // The email already belongs to another tenant: the second insert (the
    // lookup row) fails after the user row went in.
    exec(
        &ctx.hidra,
        "INSERT INTO public.hidra_logins (email, tenant_id) VALUES ('dup@x.test', 'globex')",
    )
    .await;
    let err = ctx
        .accounts
        .register(
            &ctx.acme,
            NewUser::new("dup@x.test", "Dup", "correct horse").role("admin"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(AuthError::EmailTaken)), "{err:?}");
    assert!(user_emails(&ctx.hidra, &ctx.acme).await.is_empty());
    assert_eq!(user_role_count(&ctx.hidra, &ctx.acme).await, 0);
    assert_eq!(
        lookup_rows(&ctx.hidra).await,
        [("dup@x.test".to_owned(), "globex".to_owned())]
    );
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn registration_is_atomic_when_the_lookup_insert_errors() {
    let ctx = setup().await;
    exec(
        &ctx.hidra,
        "CREATE FUNCTION public.refuse_login() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused by test trigger'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON public.hidra_logins
             FOR EACH ROW EXECUTE FUNCTION public.refuse_login();",
    )
    .await;
    let err = ctx
        .accounts
        .register(
            &ctx.acme,
            NewUser::new("ada@acme.test", "Ada", "correct horse").role("admin"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert!(user_emails(&ctx.hidra, &ctx.acme).await.is_empty());
    assert_eq!(user_role_count(&ctx.hidra, &ctx.acme).await, 0);
    assert!(lookup_rows(&ctx.hidra).await.is_empty());
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn registration_is_atomic_when_the_user_insert_fails() {
    let ctx = setup().await;
    // A user row made by hand, without a lookup row: the first insert fails.
    let mut conn = ctx.hidra.acquire(&ctx.acme).await.unwrap();
    sqlx::query(
        "INSERT INTO users (email, full_name, password_hash) VALUES ('ada@acme.test', 'Ada', 'x')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    let err = ctx
        .accounts
        .register(
            &ctx.acme,
            NewUser::new("ada@acme.test", "Ada", "correct horse"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(AuthError::EmailTaken)), "{err:?}");
    assert!(lookup_rows(&ctx.hidra).await.is_empty());

    // An unknown role fails between the two inserts.
    let err = ctx
        .accounts
        .register(
            &ctx.acme,
            NewUser::new("bob@acme.test", "Bob", "correct horse").role("ghost"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Auth(AuthError::UnknownRole(r)) if r == "ghost"),
        "{err:?}"
    );
    assert_eq!(user_emails(&ctx.hidra, &ctx.acme).await, ["ada@acme.test"]);
    assert!(lookup_rows(&ctx.hidra).await.is_empty());
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn an_email_is_unique_across_tenants() {
    let ctx = setup().await;
    ctx.user(&ctx.acme, "ada@x.test", "Ada", &[]).await;
    let err = ctx
        .accounts
        .register(
            &ctx.globex,
            NewUser::new("ADA@x.test", "Ada", "correct horse"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(AuthError::EmailTaken)), "{err:?}");
    assert!(user_emails(&ctx.hidra, &ctx.globex).await.is_empty());
    assert_eq!(lookup_rows(&ctx.hidra).await.len(), 1);

    // Bad input is refused before anything is written.
    let err = ctx
        .accounts
        .register(&ctx.acme, NewUser::new("nope", "N", "correct horse"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Auth(AuthError::InvalidEmail)),
        "{err:?}"
    );
    let err = ctx
        .accounts
        .register(&ctx.acme, NewUser::new("bob@x.test", "Bob", "short"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Auth(AuthError::InvalidPassword { .. })),
        "{err:?}"
    );
    assert_eq!(lookup_rows(&ctx.hidra).await.len(), 1);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn deleting_users_and_tenants_frees_their_emails() {
    let ctx = setup().await;
    for (tenant, email) in [(&ctx.acme, "ada@x.test"), (&ctx.globex, "gus@x.test")] {
        ctx.accounts
            .register(
                tenant,
                NewUser::new(email, "X", "correct horse").role("viewer"),
            )
            .await
            .unwrap();
    }
    assert!(
        ctx.accounts
            .delete_user(&ctx.acme, "ada@x.test")
            .await
            .unwrap()
    );
    assert!(
        !ctx.accounts
            .delete_user(&ctx.acme, "ada@x.test")
            .await
            .unwrap()
    );
    assert!(user_emails(&ctx.hidra, &ctx.acme).await.is_empty());
    assert_eq!(
        lookup_rows(&ctx.hidra).await,
        [("gus@x.test".to_owned(), "globex".to_owned())]
    );
    // The email can be registered again, in another tenant.
    ctx.user(&ctx.globex, "ada@x.test", "Ada", &[]).await;
    // Deprovisioning a tenant removes its lookup rows (foreign key cascade).
    ctx.hidra
        .deprovision(&ctx.globex.id, Confirmation::of(&ctx.globex.id))
        .await
        .unwrap();
    assert!(lookup_rows(&ctx.hidra).await.is_empty());
    assert_eq!(
        kind(ctx.accounts.login("gus@x.test", "correct horse").await),
        AuthError::InvalidCredentials
    );
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn passwords_can_be_changed() {
    let ctx = setup().await;
    ctx.user(&ctx.acme, "ada@x.test", "Ada", &[]).await;
    assert!(
        ctx.accounts
            .set_password(&ctx.acme, "ada@x.test", "battery staple")
            .await
            .unwrap()
    );
    assert_eq!(
        kind(ctx.accounts.login("ada@x.test", "correct horse").await),
        AuthError::InvalidCredentials
    );
    assert!(
        ctx.accounts
            .login("ada@x.test", "battery staple")
            .await
            .is_ok()
    );
    assert!(
        !ctx.accounts
            .set_password(&ctx.acme, "nobody@x.test", "battery staple")
            .await
            .unwrap()
    );
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn permissions_come_from_the_tenants_roles() {
    let ctx = setup().await;
    ctx.user(&ctx.acme, "sam@x.test", "Sam", &["sales"]).await;
    let login = ctx
        .accounts
        .login("sam@x.test", "correct horse")
        .await
        .unwrap();
    let mut conn = ctx.hidra.acquire(&ctx.acme).await.unwrap();
    let perms = RolePermissions::load(&mut conn).await.unwrap();
    drop(conn);
    let claims = login.claims();
    assert!(claims.has_role("sales"));
    assert!(!claims.has_role("admin"));
    assert!(claims.can(&perms, "customers:delete"));
    assert!(claims.can(&perms, "products:read"));
    assert!(!claims.can(&perms, "products:write"));
    assert!(claims.require_permission(&perms, "customers:read").is_ok());
    assert_eq!(
        kind(claims.require_permission(&perms, "users:write")),
        AuthError::MissingPermission("users:write".into())
    );
    assert_eq!(perms.permissions("admin"), Some(&["*".to_owned()][..]));

    // Another tenant's roles are its own.
    let mut conn = ctx.hidra.acquire(&ctx.globex).await.unwrap();
    sqlx::query("UPDATE roles SET permissions = '{}' WHERE name = 'sales'")
        .execute(&mut conn)
        .await
        .unwrap();
    let globex = RolePermissions::load(&mut conn).await.unwrap();
    assert!(!globex.allows(&claims.roles, "customers:read"));
    ctx.db.drop_now().await.unwrap();
}

// ---------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn api_keys_verify_to_their_tenant_and_scopes() {
    let ctx = setup().await;
    let created = ctx
        .keys
        .create(
            &ctx.acme.id,
            NewApiKey::new("ci")
                .scope("products:read")
                .scope("customers:*"),
        )
        .await
        .unwrap();
    let key = created.secret();
    assert!(key.starts_with("hk_"));
    assert_eq!(key.len(), 3 + 24 + 1 + 64);
    assert_eq!(ApiKeys::key_id_of(key), Some(created.key_id()));
    assert!(!format!("{created:?}").contains(&key[28..]));

    let verified = ctx.keys.verify(key).await.unwrap();
    assert_eq!(verified.tenant(), &ctx.acme.id);
    assert_eq!(verified.name(), "ci");
    assert_eq!(verified.key_id(), created.key_id());
    assert!(verified.has_scope("customers:write"));
    assert!(verified.require_scope("products:read").is_ok());
    assert_eq!(
        kind(verified.require_scope("products:write")),
        AuthError::MissingScope("products:write".into())
    );
    // A key of tenant A on a request for tenant B.
    assert_eq!(
        kind(verified.require_tenant(&ctx.globex.id)),
        AuthError::WrongTenant
    );

    // Listing shows the record and nothing secret.
    let other = ctx
        .keys
        .create(&ctx.globex.id, NewApiKey::new("globex"))
        .await
        .unwrap();
    let listed = ctx.keys.list(&ctx.acme.id).await.unwrap();
    let mut expected = created.info().clone();
    expected.last_used_at = listed[0].last_used_at; // set by `verify`
    assert!(expected.last_used_at.is_some());
    assert_eq!(listed, [expected]);
    assert_eq!(listed[0].scopes, ["customers:*", "products:read"]);
    assert!(!format!("{listed:?}").contains(&key[28..]));
    assert_eq!(
        ctx.keys.list(&ctx.globex.id).await.unwrap(),
        [other.info().clone()]
    );

    // Keys of an unregistered tenant are refused by the foreign key.
    let err = ctx
        .keys
        .create(&id("nobody"), NewApiKey::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn api_keys_with_a_wrong_secret_or_unknown_id_are_refused() {
    let ctx = setup().await;
    let created = ctx
        .keys
        .create(&ctx.acme.id, NewApiKey::new("ci"))
        .await
        .unwrap();
    let key = created.secret();

    // Right id, wrong secret (last digit changed).
    let mut wrong = key.to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    assert_eq!(kind(ctx.keys.verify(&wrong).await), AuthError::InvalidKey);
    // Another key's secret with this id.
    let other = ctx
        .keys
        .create(&ctx.acme.id, NewApiKey::new("other"))
        .await
        .unwrap();
    let spliced = format!("hk_{}_{}", created.key_id(), &other.secret()[28..]);
    assert_eq!(kind(ctx.keys.verify(&spliced).await), AuthError::InvalidKey);
    // Unknown id.
    let unknown = format!("hk_{}_{}", "0".repeat(24), &key[28..]);
    assert_eq!(kind(ctx.keys.verify(&unknown).await), AuthError::UnknownKey);
    // Malformed.
    for bad in [
        "",
        "hk_",
        "Bearer x",
        &key[..key.len() - 1],
        &key.to_uppercase(),
    ] {
        assert_eq!(
            kind(ctx.keys.verify(bad).await),
            AuthError::InvalidKey,
            "{bad}"
        );
    }
    // Another pepper: every key is wrong.
    let repeppered = ApiKeys::new(ctx.hidra.clone(), [9u8; 32]).unwrap();
    assert_eq!(kind(repeppered.verify(key).await), AuthError::InvalidKey);
    // The real key still works.
    assert!(ctx.keys.verify(key).await.is_ok());
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn revoked_and_expired_api_keys_are_refused() {
    let ctx = setup().await;
    let revoked = ctx
        .keys
        .create(&ctx.acme.id, NewApiKey::new("revoked"))
        .await
        .unwrap();
    // Another tenant cannot revoke it.
    assert_eq!(
        kind(ctx.keys.revoke(&ctx.globex.id, revoked.key_id()).await),
        AuthError::UnknownKey
    );
    assert!(ctx.keys.verify(revoked.secret()).await.is_ok());
    ctx.keys
        .revoke(&ctx.acme.id, revoked.key_id())
        .await
        .unwrap();
    ctx.keys
        .revoke(&ctx.acme.id, revoked.key_id())
        .await
        .unwrap(); // idempotent
    assert_eq!(
        kind(ctx.keys.verify(revoked.secret()).await),
        AuthError::KeyRevoked
    );
    assert_eq!(
        kind(ctx.keys.revoke(&ctx.acme.id, &"0".repeat(24)).await),
        AuthError::UnknownKey
    );
    assert_eq!(
        kind(ctx.keys.rotate(&ctx.acme.id, revoked.key_id()).await),
        AuthError::KeyRevoked
    );

    let expired = ctx
        .keys
        .create(
            &ctx.acme.id,
            NewApiKey::new("expired").expires_at(chrono::Utc::now() - chrono::Duration::hours(1)),
        )
        .await
        .unwrap();
    assert_eq!(
        kind(ctx.keys.verify(expired.secret()).await),
        AuthError::KeyExpired
    );

    let later = ctx
        .keys
        .create(
            &ctx.acme.id,
            NewApiKey::new("later").expires_in(Duration::from_secs(86400)),
        )
        .await
        .unwrap();
    assert!(ctx.keys.verify(later.secret()).await.is_ok());

    let now = chrono::Utc::now();
    let usable: Vec<bool> = ctx
        .keys
        .list(&ctx.acme.id)
        .await
        .unwrap()
        .iter()
        .map(|k| k.is_usable_at(now))
        .collect();
    assert_eq!(usable, [false, false, true]);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn rotated_api_keys_work_within_their_grace_period_only() {
    let ctx = setup().await;
    let keys = ctx
        .keys
        .clone()
        .with_rotation_grace(Duration::from_secs(3600));
    let old = keys
        .create(
            &ctx.acme.id,
            NewApiKey::new("ci")
                .scope("customers:read")
                .expires_in(Duration::from_secs(30 * 86400)),
        )
        .await
        .unwrap();
    let new = keys.rotate(&ctx.acme.id, old.key_id()).await.unwrap();
    assert_ne!(new.secret(), old.secret());
    assert_eq!(new.info().name, "ci");
    assert_eq!(new.info().scopes, ["customers:read"]);
    assert_eq!(new.info().rotated_from.as_deref(), Some(old.key_id()));
    assert!(new.info().expires_at.is_some());

    // Within the grace period both keys work.
    assert_eq!(
        keys.verify(old.secret()).await.unwrap().tenant(),
        &ctx.acme.id
    );
    assert_eq!(
        keys.verify(new.secret()).await.unwrap().tenant(),
        &ctx.acme.id
    );
    let info = keys.get(&ctx.acme.id, old.key_id()).await.unwrap().unwrap();
    assert!(info.grace_until.is_some());
    // The old key cannot be rotated twice; another tenant cannot rotate it.
    assert_eq!(
        kind(keys.rotate(&ctx.acme.id, old.key_id()).await),
        AuthError::KeyRotated
    );
    assert_eq!(
        kind(keys.rotate(&ctx.globex.id, new.key_id()).await),
        AuthError::UnknownKey
    );

    // After the grace period only the new key works.
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    sqlx::query(
        "UPDATE public.hidra_api_keys SET grace_until = now() - interval '1 second' WHERE key_id = $1",
    )
    .bind(old.key_id())
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    assert_eq!(kind(keys.verify(old.secret()).await), AuthError::KeyRotated);
    assert!(keys.verify(new.secret()).await.is_ok());

    // A zero grace period ends the old key at rotation.
    let at_once = ctx.keys.clone().with_rotation_grace(Duration::ZERO);
    let newer = at_once.rotate(&ctx.acme.id, new.key_id()).await.unwrap();
    assert_eq!(
        kind(at_once.verify(new.secret()).await),
        AuthError::KeyRotated
    );
    assert!(at_once.verify(newer.secret()).await.is_ok());
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn the_database_never_holds_a_key_in_clear() {
    let ctx = setup().await;
    let keys = ctx.keys.clone().with_touch_interval(Duration::ZERO);
    let mut secrets = Vec::new();
    for (tenant, name) in [
        (&ctx.acme.id, "a"),
        (&ctx.acme.id, "b"),
        (&ctx.globex.id, "c"),
    ] {
        let created = keys
            .create(tenant, NewApiKey::new(name).scope("*"))
            .await
            .unwrap();
        keys.verify(created.secret()).await.unwrap();
        secrets.push(created);
    }
    let rotated = keys
        .rotate(&ctx.acme.id, secrets[0].key_id())
        .await
        .unwrap();
    keys.verify(rotated.secret()).await.unwrap();
    keys.revoke(&ctx.acme.id, secrets[1].key_id())
        .await
        .unwrap();
    secrets.push(rotated);

    let dump = dump_everything(&ctx.hidra).await;
    let stored: Vec<&String> = dump
        .iter()
        .filter(|r| r.starts_with("public.hidra_api_keys:"))
        .collect();
    assert_eq!(stored.len(), 4);
    for created in &secrets {
        let key = created.secret();
        let secret = &key[28..];
        let secret_bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        // The secret in any of the encodings it could be stored in, and any
        // 16-character piece of it.
        let mut needles = vec![
            key.to_owned(),
            secret.to_owned(),
            secret.to_uppercase(),
            b64url_encode(&secret_bytes),
        ];
        needles.extend((0..=secret.len() - 16).map(|i| secret[i..i + 16].to_owned()));
        for row in &dump {
            for needle in &needles {
                assert!(
                    !row.contains(needle.as_str()),
                    "a secret (or part of one) is stored in clear: {row}"
                );
            }
        }
    }
    // What is stored per key: a 32-byte keyed hash, which is not the secret.
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    let hashes: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT key_id, hash FROM public.hidra_api_keys")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(hashes.len(), 4);
    for (key_id, hash) in hashes {
        assert_eq!(hash.len(), 32);
        let created = secrets.iter().find(|c| c.key_id() == key_id).unwrap();
        let secret = &created.secret()[28..];
        let secret_bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_ne!(hash, secret_bytes);
        assert_ne!(hash, secret.as_bytes()[..32]);
    }
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn last_used_at_is_written_at_most_once_per_interval() {
    let ctx = setup().await;
    let hourly = ctx
        .keys
        .clone()
        .with_touch_interval(Duration::from_secs(3600));
    let created = hourly
        .create(&ctx.acme.id, NewApiKey::new("ci"))
        .await
        .unwrap();
    assert_eq!(created.info().last_used_at, None);
    let last_used = |keys: ApiKeys| {
        let tenant = ctx.acme.id.clone();
        let key_id = created.key_id().to_owned();
        async move {
            keys.get(&tenant, &key_id)
                .await
                .unwrap()
                .unwrap()
                .last_used_at
        }
    };
    let set_long_ago = || async {
        let mut conn = ctx.hidra.acquire_shared().await.unwrap();
        sqlx::query("UPDATE public.hidra_api_keys SET last_used_at = '2000-01-01T00:00:00Z'")
            .execute(&mut *conn)
            .await
            .unwrap();
    };
    let long_ago: chrono::DateTime<chrono::Utc> = "2000-01-01T00:00:00Z".parse().unwrap();

    // The first use writes.
    hourly.verify(created.secret()).await.unwrap();
    assert!(last_used(hourly.clone()).await.unwrap() > long_ago);

    // Further uses in the same interval do not write (a clone shares the throttle).
    set_long_ago().await;
    for _ in 0..5 {
        hourly.verify(created.secret()).await.unwrap();
        hourly.clone().verify(created.secret()).await.unwrap();
    }
    assert_eq!(last_used(hourly.clone()).await, Some(long_ago));

    // Another process (a fresh throttle) that finds an old value writes …
    let other = ApiKeys::new(ctx.hidra.clone(), PEPPER)
        .unwrap()
        .with_touch_interval(Duration::from_secs(3600));
    other.verify(created.secret()).await.unwrap();
    let written = last_used(other.clone()).await.unwrap();
    assert!(written > long_ago);
    // … and one that finds a recent value does not.
    let third = ApiKeys::new(ctx.hidra.clone(), PEPPER)
        .unwrap()
        .with_touch_interval(Duration::from_secs(3600));
    third.verify(created.secret()).await.unwrap();
    assert_eq!(last_used(third.clone()).await, Some(written));

    // A zero interval writes on every use.
    let always = ctx.keys.clone().with_touch_interval(Duration::ZERO);
    set_long_ago().await;
    always.verify(created.secret()).await.unwrap();
    assert!(last_used(always.clone()).await.unwrap() > long_ago);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn deprovisioning_a_tenant_removes_its_api_keys() {
    let ctx = setup().await;
    let created = ctx
        .keys
        .create(&ctx.globex.id, NewApiKey::new("ci"))
        .await
        .unwrap();
    ctx.hidra
        .deprovision(&ctx.globex.id, Confirmation::of(&ctx.globex.id))
        .await
        .unwrap();
    assert_eq!(
        kind(ctx.keys.verify(created.secret()).await),
        AuthError::UnknownKey
    );
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_key_id_alone_finds_the_tenant_that_owns_the_key() {
    let ctx = setup().await;
    let a = ctx
        .keys
        .create(&ctx.acme.id, NewApiKey::new("ci"))
        .await
        .unwrap();
    let g = ctx
        .keys
        .create(&ctx.globex.id, NewApiKey::new("ci"))
        .await
        .unwrap();
    assert_eq!(ctx.keys.owner(a.key_id()).await.unwrap(), Some(id("acme")));
    assert_eq!(
        ctx.keys.owner(g.key_id()).await.unwrap(),
        Some(id("globex"))
    );
    // From a whole key, through its id.
    let from_key = ApiKeys::key_id_of(a.secret()).unwrap();
    assert_eq!(ctx.keys.owner(from_key).await.unwrap(), Some(id("acme")));

    // Revoked and rotated keys keep their owner.
    ctx.keys.revoke(&ctx.acme.id, a.key_id()).await.unwrap();
    assert_eq!(ctx.keys.owner(a.key_id()).await.unwrap(), Some(id("acme")));
    let rotated = ctx.keys.rotate(&ctx.globex.id, g.key_id()).await.unwrap();
    assert_eq!(
        ctx.keys.owner(g.key_id()).await.unwrap(),
        Some(id("globex"))
    );
    assert_eq!(
        ctx.keys.owner(rotated.key_id()).await.unwrap(),
        Some(id("globex"))
    );

    // No such key, or not even a key id: no owner.
    assert_eq!(
        ctx.keys.owner("0123456789abcdef01234567").await.unwrap(),
        None
    );
    assert_eq!(ctx.keys.owner("not a key id").await.unwrap(), None);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn missing_shared_tables_are_explained() {
    let ctx = setup().await;
    exec(
        &ctx.hidra,
        "DROP TABLE public.hidra_api_keys; DROP TABLE public.hidra_logins",
    )
    .await;
    let err = ctx
        .keys
        .create(&ctx.acme.id, NewApiKey::new("x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ApiKeys::install()"), "{err}");
    assert!(err.is_table_missing(), "{err:?}");
    assert!(
        matches!(
            ctx.keys.owner("0123456789abcdef01234567").await,
            Err(Error::TableMissing { .. })
        ),
        "a lookup without the table says how to create it"
    );
    let err = ctx
        .accounts
        .register(
            &ctx.acme,
            NewUser::new("ada@x.test", "Ada", "correct horse"),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Accounts::install()"), "{err}");
    assert!(err.is_table_missing(), "{err:?}");
    assert!(user_emails(&ctx.hidra, &ctx.acme).await.is_empty());
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn database_per_tenant_users_register_log_in_and_leave_through_the_shared_lookup() {
    let ctx = setup().await;
    let tag = &ctx.db.name()[ctx.db.name().len() - 8..];
    let hidra = hidra::Hidra::builder()
        .schema_sql("auth tables", TENANT_SQL)
        .database_per_tenant(hidra::DatabasePoolConfig::default())
        .database_prefix(format!("a{tag}_"))
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    let solo = hidra
        .provision(hidra::NewTenant::new(id("solo")).strategy(hidra::Strategy::Database))
        .await
        .unwrap();
    let accounts = hidra::auth::Accounts::new(hidra.clone(), ctx.jwt.clone())
        .with_passwords(cheap_passwords());

    accounts
        .register(
            &solo,
            NewUser::new("ann@solo.test", "Ann", "correct horse").role("admin"),
        )
        .await
        .unwrap();
    // The lookup is in the shared database, the user in the tenant's own.
    assert_eq!(
        accounts.tenant_of("ann@solo.test").await.unwrap(),
        Some(id("solo"))
    );
    let login = accounts
        .login("ann@solo.test", "correct horse")
        .await
        .unwrap();
    assert_eq!(login.claims().tenant, id("solo"));
    assert_eq!(
        user_emails(&hidra, &solo).await,
        vec!["ann@solo.test".to_owned()]
    );
    // The email is unique across strategies, both ways.
    let err = ctx
        .accounts
        .register(
            &ctx.acme,
            NewUser::new("ann@solo.test", "Other Ann", "correct horse"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(AuthError::EmailTaken)), "{err:?}");
    ctx.user(&ctx.acme, "bob@acme.test", "Bob", &[]).await;
    let err = accounts
        .register(
            &solo,
            NewUser::new("bob@acme.test", "Bob Two", "correct horse"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(AuthError::EmailTaken)), "{err:?}");
    assert_eq!(
        user_emails(&hidra, &solo).await,
        vec!["ann@solo.test".to_owned()]
    );
    // A user the tenant database refuses gives its email back.
    let err = accounts
        .register(
            &solo,
            NewUser::new("cid@solo.test", "Cid", "correct horse").role("no-such-role"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Auth(AuthError::UnknownRole(_))),
        "{err:?}"
    );
    assert_eq!(accounts.tenant_of("cid@solo.test").await.unwrap(), None);
    // Deleting the user frees the email.
    assert!(accounts.delete_user(&solo, "ann@solo.test").await.unwrap());
    assert_eq!(accounts.tenant_of("ann@solo.test").await.unwrap(), None);
    assert!(user_emails(&hidra, &solo).await.is_empty());

    hidra
        .deprovision(&id("solo"), Confirmation::of(&id("solo")))
        .await
        .unwrap();
    hidra.close().await;
    // The template database outlives the tenants; it is this test's to drop.
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"a{tag}__tpl\" WITH (FORCE)"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
}

/// A process killed between the two phases of a database-per-tenant
/// registration (login row in the shared database, user in the tenant's)
/// leaves a login row without a user id: the next registration of the email
/// and `LoginTable::settle_registrations` complete or undo it, after the
/// grace period only (a registration in flight is left alone).
#[tokio::test]
async fn half_made_database_per_tenant_registrations_are_settled() {
    use hidra::auth::{LoginTable, PENDING_REGISTRATION_GRACE};
    let ctx = setup().await;
    let tag = &ctx.db.name()[ctx.db.name().len() - 8..];
    let hidra = hidra::Hidra::builder()
        .schema_sql("auth tables", TENANT_SQL)
        .database_per_tenant(hidra::DatabasePoolConfig::default())
        .database_prefix(format!("h{tag}_"))
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    let solo = hidra
        .provision(hidra::NewTenant::new(id("solo")).strategy(hidra::Strategy::Database))
        .await
        .unwrap();
    let accounts = hidra::auth::Accounts::new(hidra.clone(), ctx.jwt.clone())
        .with_passwords(cheap_passwords());
    // What a crash leaves: phase one only ("lost"), phase two done but not
    // recorded ("half"), and a registration still in flight ("young").
    let hash = cheap_passwords().hash("correct horse").unwrap();
    let mut tenant_conn = hidra.acquire(&solo).await.unwrap();
    sqlx::query("INSERT INTO users (email, full_name, password_hash) VALUES ($1, 'Half', $2)")
        .bind("half@solo.test")
        .bind(&hash)
        .execute(&mut tenant_conn)
        .await
        .unwrap();
    drop(tenant_conn);
    let mut shared = hidra.acquire_shared().await.unwrap();
    sqlx::query(
        "INSERT INTO public.hidra_logins (email, tenant_id, created_at) VALUES \
         ('lost@solo.test', 'solo', now() - interval '2 minutes'), \
         ('half@solo.test', 'solo', now() - interval '2 minutes'), \
         ('young@solo.test', 'solo', now())",
    )
    .execute(&mut *shared)
    .await
    .unwrap();
    drop(shared);

    let logins = LoginTable::default();
    let mut half = logins
        .half_registered(&hidra, PENDING_REGISTRATION_GRACE)
        .await
        .unwrap();
    half.sort_by(|a, b| a.email.cmp(&b.email));
    let seen: Vec<(&str, bool)> = half
        .iter()
        .map(|h| (h.email.as_str(), h.user_exists))
        .collect();
    assert_eq!(seen, [("half@solo.test", true), ("lost@solo.test", false)]);
    // The lost email is not taken forever: registering it again works.
    assert_eq!(
        kind(accounts.login("lost@solo.test", "correct horse").await),
        AuthError::InvalidCredentials
    );
    accounts
        .register(
            &solo,
            NewUser::new("lost@solo.test", "Lost", "correct horse"),
        )
        .await
        .unwrap();
    accounts
        .login("lost@solo.test", "correct horse")
        .await
        .unwrap();
    // One in flight is not touched.
    assert_eq!(
        kind(
            accounts
                .register(
                    &solo,
                    NewUser::new("young@solo.test", "Young", "correct horse")
                )
                .await
        ),
        AuthError::EmailTaken
    );
    let settled = logins
        .settle_registrations(&hidra, PENDING_REGISTRATION_GRACE)
        .await
        .unwrap();
    assert_eq!((settled.completed, settled.undone), (1, 0));
    assert!(
        logins
            .half_registered(&hidra, PENDING_REGISTRATION_GRACE)
            .await
            .unwrap()
            .is_empty()
    );
    let mut shared = hidra.acquire_shared().await.unwrap();
    let linked: Option<i64> = sqlx::query_scalar(
        "SELECT user_id FROM public.hidra_logins WHERE email = 'half@solo.test'",
    )
    .fetch_one(&mut *shared)
    .await
    .unwrap();
    assert!(linked.is_some());
    drop(shared);
    // Once the young row is old, settling undoes it (no user was written).
    let settled = logins
        .settle_registrations(&hidra, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((settled.completed, settled.undone), (0, 1));
    assert_eq!(accounts.tenant_of("young@solo.test").await.unwrap(), None);
    hidra.close().await;
}
