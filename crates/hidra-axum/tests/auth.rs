//! The web side of authentication, through the layer over real HTTP requests
//! (in process) and a real database per test: the JWT and API key resolvers,
//! the 403 conflict rule with verified sources, the `Auth` extractor, the
//! role, permission and scope guards, and the mapping of auth errors.

#![cfg(feature = "auth")]

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::{Ctx, id, send, tenant_with_marker};
use hidra::auth::{ApiKeyTable, ApiKeys, AuthError, Jwt, NewApiKey};
use hidra_axum::{
    ApiKeyResolver, Auth, HeaderResolver, JwtResolver, Permission, PermissionCache,
    RequirePermission, RequireRole, RequireScope, Role, SubdomainResolver, TenantLayer,
};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;

const SECRET: &[u8] = b"test secret, thirty-two bytes or more, not for production";
const OTHER_SECRET: &[u8] = b"another secret, also thirty-two bytes or more long";
const PEPPER: &[u8] = b"test pepper, thirty-two bytes or more, not for production";

/// The roles table of the reference tenant schema, with three roles.
const ROLES_SQL: &str = "
CREATE TABLE roles (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    permissions TEXT[] NOT NULL DEFAULT '{}'
);
INSERT INTO roles (name, permissions) VALUES
    ('admin', '{*}'),
    ('sales', '{customers:*}'),
    ('viewer', '{customers:read}');
";

const UNAUTHORIZED: &str = r#"{"error":"unauthorized"}"#;
const FORBIDDEN: &str = r#"{"error":"forbidden"}"#;
const CONFLICT: &str = r#"{"error":"tenant_conflict"}"#;

struct Admin;
impl Role for Admin {
    const NAME: &'static str = "admin";
}

struct CustomersRead;
impl Permission for CustomersRead {
    const NAME: &'static str = "customers:read";
}

struct CustomersDelete;
impl Permission for CustomersDelete {
    const NAME: &'static str = "customers:delete";
}

struct Export;
impl Permission for Export {
    const NAME: &'static str = "export";
}

async fn me(auth: Auth) -> String {
    match &auth {
        Auth::User(claims) => format!(
            "user {} of {} as {}",
            claims.sub,
            auth.tenant(),
            claims.roles.join(",")
        ),
        Auth::ApiKey(key) => format!("key {} of {}", key.name(), auth.tenant()),
        _ => unreachable!(),
    }
}

async fn maybe_me(auth: Option<Auth>) -> String {
    auth.map_or_else(|| "anonymous".to_owned(), |a| a.subject().to_owned())
}

async fn admin(admin: RequireRole<Admin>) -> String {
    format!("admin {}", admin.sub)
}

async fn customers(_: RequirePermission<CustomersRead>) -> &'static str {
    "customers"
}

async fn delete_customer(_: RequirePermission<CustomersDelete>) -> &'static str {
    "deleted"
}

async fn export(key: RequireScope<Export>) -> String {
    format!("export by {}", key.name())
}

struct Auths {
    ctx: Ctx,
    a: hidra::Tenant,
    b: hidra::Tenant,
    jwt: Jwt,
    keys: ApiKeys,
    permissions: PermissionCache,
    cache: hidra_axum::TenantCache,
    app: Router,
}

/// A database with tenants `a` and `b` (marker rows, roles) and the API key
/// table; an app with the JWT, API key and header resolvers.
async fn setup() -> Auths {
    let ctx = common::setup_with_schema(4, ROLES_SQL).await;
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(ApiKeyTable::default().ddl()))
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let a = tenant_with_marker(&ctx.hidra, "a").await;
    let b = tenant_with_marker(&ctx.hidra, "b").await;

    let jwt = Jwt::hs256(SECRET).unwrap();
    let keys = ApiKeys::new(ctx.hidra.clone(), PEPPER).unwrap();
    let permissions = PermissionCache::new();
    let layer = TenantLayer::new(ctx.hidra.clone())
        .with_resolver(JwtResolver::new(jwt.clone()).with_cookie("session"))
        .with_resolver(ApiKeyResolver::new(keys.clone()))
        .with_resolver(HeaderResolver::new());
    let cache = layer.cache().clone();
    let app = Router::new()
        .route("/me", get(me))
        .route("/maybe-me", get(maybe_me))
        .route("/admin", get(admin))
        .route("/customers", get(customers))
        .route("/customers/delete", post(delete_customer))
        .route("/export", get(export))
        .with_state(permissions.clone())
        .merge(common::routes())
        .layer(layer);
    Auths {
        ctx,
        a,
        b,
        jwt,
        keys,
        permissions,
        cache,
        app,
    }
}

impl Auths {
    fn token(&self, tenant: &str, roles: &[&str]) -> String {
        let record = match tenant {
            "a" => self.a.clone(),
            "b" => self.b.clone(),
            other => hidra::testing::tenant_record(other),
        };
        self.jwt.issue("7", &record, roles.iter().copied()).unwrap()
    }

    async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        common::get(&self.app, uri, headers).await
    }

    async fn get_raw(&self, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
        send(self.app.clone(), common::get_req(uri, headers)).await
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Unpadded base64url, for hand-made tokens.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[test]
fn b64_matches_rfc_4648_vectors() {
    let vectors = [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
    ];
    for (input, expected) in vectors {
        assert_eq!(b64(input.as_bytes()), expected);
    }
    assert_eq!(b64(&[0xfb, 0xff]), "-_8");
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_token_resolves_its_tenant_and_hands_over_its_claims() {
    let t = setup().await;
    let a = t.token("a", &["admin", "viewer"]);

    // Only the token names the tenant.
    let auth = bearer(&a);
    assert_eq!(
        t.get("/marker", &[("authorization", &auth)]).await,
        (StatusCode::OK, "a".into())
    );
    assert_eq!(
        t.get("/me", &[("authorization", &auth)]).await,
        (StatusCode::OK, "user 7 of a as admin,viewer".into())
    );
    // A header that agrees is fine.
    assert_eq!(
        t.get("/whoami", &[("authorization", &auth), ("x-tenant-id", "a")])
            .await,
        (StatusCode::OK, "a".into())
    );
    // From the cookie, when there is no bearer token.
    assert_eq!(
        t.get("/me", &[("cookie", &format!("theme=dark; session={a}"))])
            .await,
        (StatusCode::OK, "user 7 of a as admin,viewer".into())
    );
    // Another scheme is not a token: the header decides, and no one is signed in.
    assert_eq!(
        t.get(
            "/maybe-me",
            &[
                ("authorization", "Basic dXNlcjpwdw=="),
                ("x-tenant-id", "b")
            ]
        )
        .await,
        (StatusCode::OK, "anonymous".into())
    );
}

#[tokio::test]
async fn a_token_of_one_tenant_with_a_header_of_another_is_a_conflict() {
    let t = setup().await;
    let auth = bearer(&t.token("a", &["admin"]));
    for uri in ["/marker", "/me", "/whoami"] {
        assert_eq!(
            t.get(uri, &[("authorization", &auth), ("x-tenant-id", "b")])
                .await,
            (StatusCode::FORBIDDEN, CONFLICT.into()),
            "{uri}"
        );
    }
    // The token's tenant is the one served.
    assert_eq!(
        t.get("/marker", &[("authorization", &auth)]).await,
        (StatusCode::OK, "a".into())
    );
}

#[tokio::test]
async fn bad_tokens_all_get_the_same_401() {
    let t = setup().await;
    let good = t.token("a", &["admin"]);
    let segments: Vec<&str> = good.split('.').collect();
    let payload = |tenant: &str, exp: i64| {
        b64(format!(
            r#"{{"sub":"7","tenant":"{tenant}","roles":["admin"],"iat":{},"exp":{exp}}}"#,
            now()
        )
        .as_bytes())
    };

    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        payload("a", now() + 600)
    );
    let wrong_key = Jwt::hs256(OTHER_SECRET)
        .unwrap()
        .issue("7", &t.a, ["admin"])
        .unwrap();
    let expired = {
        let mut claims = t.jwt.claims("7", &t.a, ["admin"]);
        claims.iat -= 7200;
        claims.exp = now() - 3600;
        t.jwt.sign(&claims).unwrap()
    };
    let tampered = format!(
        "{}.{}.{}",
        segments[0],
        payload("b", now() + 600),
        segments[2]
    );
    let no_tenant = {
        let body =
            b64(format!(r#"{{"sub":"7","iat":{},"exp":{}}}"#, now(), now() + 600).as_bytes());
        format!("{}.{body}.{}", segments[0], segments[2])
    };

    let reference = t.get_raw("/me", &[("authorization", &bearer(&good))]).await;
    assert_eq!(reference.0, StatusCode::OK);

    let mut answers = Vec::new();
    for (what, token) in [
        ("alg none", none.as_str()),
        ("wrong key", &wrong_key),
        ("expired", &expired),
        ("tampered", &tampered),
        ("no tenant claim", &no_tenant),
        ("garbage", "not.a.token"),
    ] {
        let (status, headers, body) = t
            .get_raw(
                "/marker",
                &[("authorization", &bearer(token)), ("x-tenant-id", "a")],
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(body, UNAUTHORIZED, "{what}");
        assert_eq!(
            headers.get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{what}"
        );
        answers.push((what, status, headers, body));
    }
    // Byte for byte, headers included.
    for (what, status, headers, body) in &answers[1..] {
        assert_eq!(
            (status, headers, body),
            (&answers[0].1, &answers[0].2, &answers[0].3),
            "{what} differs from {}",
            answers[0].0
        );
    }
    // And the guards' 401 is the same answer.
    let guard = t.get_raw("/me", &[("x-tenant-id", "a")]).await;
    assert_eq!(
        (&guard.0, &guard.1, &guard.2),
        (&answers[0].1, &answers[0].2, &answers[0].3)
    );
}

/// With credentials required, a logged-out request gets the same 401
/// whether it names an existing tenant, an unknown one or none: nothing to
/// probe for tenants with.
#[tokio::test]
async fn without_a_credential_every_tenant_looks_the_same() {
    let t = setup().await;
    let layer = TenantLayer::new(t.ctx.hidra.clone())
        .with_resolver(JwtResolver::new(t.jwt.clone()))
        .with_resolver(HeaderResolver::new())
        .with_resolver(SubdomainResolver::new("example.test"))
        .with_credentials_required();
    let app = common::routes().layer(layer);
    let answers = [
        common::get_req("/marker", &[("x-tenant-id", "a")]),
        common::get_req("/marker", &[("x-tenant-id", "nobody")]),
        common::get_req("/marker", &[("x-tenant-id", "Not An Id!")]),
        common::get_req("/marker", &[("host", "a.example.test")]),
        common::get_req("/marker", &[("host", "nobody.example.test")]),
        common::get_req("/marker", &[]),
    ];
    let mut seen = Vec::new();
    for req in answers {
        let (status, headers, body) = send(app.clone(), req).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::UNAUTHORIZED, UNAUTHORIZED.as_bytes())
        );
        seen.push((headers, body));
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "byte for byte: {seen:?}"
    );
    // A token still opens its tenant.
    let auth = bearer(&t.token("a", &["admin"]));
    let (status, _, body) =
        send(app, common::get_req("/marker", &[("authorization", &auth)])).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"a"[..]));
}

/// With only a JWT resolver, a logged-out request is told to log in: `401`
/// with `WWW-Authenticate: Bearer`, byte for byte the answer to a bad token,
/// not the `404` of an unknown tenant. A verified token of an unknown tenant
/// still gets that `404`, and a layer without credential resolvers still
/// answers a request naming no tenant with it.
#[tokio::test]
async fn without_a_credential_a_token_only_layer_answers_401() {
    let t = setup().await;
    let jwt_only = common::routes().layer(
        TenantLayer::new(t.ctx.hidra.clone()).with_resolver(JwtResolver::new(t.jwt.clone())),
    );
    let logged_out = send(jwt_only.clone(), common::get_req("/marker", &[])).await;
    assert_eq!(
        (logged_out.0, &logged_out.2[..]),
        (StatusCode::UNAUTHORIZED, UNAUTHORIZED.as_bytes())
    );
    assert_eq!(
        logged_out.1.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let bad_token = send(
        jwt_only.clone(),
        common::get_req("/marker", &[("authorization", "Bearer not.a.token")]),
    )
    .await;
    assert_eq!(logged_out, bad_token);

    let nobody = bearer(&t.token("nobody", &["admin"]));
    let (status, _, body) = send(
        jwt_only.clone(),
        common::get_req("/marker", &[("authorization", &nobody)]),
    )
    .await;
    assert_eq!(
        (status, &body[..]),
        (
            StatusCode::NOT_FOUND,
            &br#"{"error":"tenant_not_found"}"#[..]
        )
    );
    let auth = bearer(&t.token("a", &["admin"]));
    let (status, _, body) = send(
        jwt_only,
        common::get_req("/marker", &[("authorization", &auth)]),
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"a"[..]));

    // Beside a header resolver, a request with neither is told to log in too,
    // while one naming a tenant by header alone passes the layer as before.
    assert_eq!(t.get_raw("/marker", &[]).await, bad_token);
    assert_eq!(
        t.get("/marker", &[("x-tenant-id", "a")]).await,
        (StatusCode::OK, "a".into())
    );

    // No resolver reads credentials: no tenant named is the uniform 404.
    let header_only = common::routes()
        .layer(TenantLayer::new(t.ctx.hidra.clone()).with_resolver(HeaderResolver::new()));
    let (status, headers, body) = send(header_only, common::get_req("/marker", &[])).await;
    assert_eq!(
        (status, &body[..]),
        (
            StatusCode::NOT_FOUND,
            &br#"{"error":"tenant_not_found"}"#[..]
        )
    );
    assert!(headers.get("www-authenticate").is_none());
}

/// The registry's wayne-ent deleted, and a new company signed up as
/// wayne-ent: the old owner's token must not open the new tenant's data.
#[tokio::test]
async fn a_token_of_an_earlier_tenant_under_the_same_id_is_refused() {
    let t = setup().await;
    let old = bearer(&t.token("a", &["admin"]));
    assert_eq!(
        t.get("/marker", &[("authorization", &old)]).await,
        (StatusCode::OK, "a".into())
    );
    t.ctx
        .hidra
        .deprovision(&id("a"), hidra::Confirmation::of(&id("a")))
        .await
        .unwrap();
    let reborn = tenant_with_marker(&t.ctx.hidra, "a").await;
    assert_ne!(reborn.incarnation(), t.a.incarnation());
    t.cache.sync().await.unwrap();
    let (status, headers, body) = t.get_raw("/marker", &[("authorization", &old)]).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::UNAUTHORIZED, UNAUTHORIZED.as_bytes())
    );
    let garbage = t
        .get_raw("/marker", &[("authorization", "Bearer not.a.token")])
        .await;
    assert_eq!(
        (&status, &headers, &body),
        (&garbage.0, &garbage.1, &garbage.2),
        "the same answer as any bad token"
    );
    // A token of the new incarnation works.
    let fresh = bearer(&t.jwt.issue("7", &reborn, ["admin"]).unwrap());
    assert_eq!(
        t.get("/marker", &[("authorization", &fresh)]).await,
        (StatusCode::OK, "a".into())
    );
}

#[tokio::test]
async fn without_credentials_the_layer_passes_and_guards_refuse() {
    let t = setup().await;
    let header = [("x-tenant-id", "a")];
    assert_eq!(
        t.get("/marker", &header).await,
        (StatusCode::OK, "a".into())
    );
    assert_eq!(
        t.get("/maybe-me", &header).await,
        (StatusCode::OK, "anonymous".into())
    );
    for uri in ["/me", "/admin", "/customers", "/export"] {
        assert_eq!(
            t.get(uri, &header).await,
            (StatusCode::UNAUTHORIZED, UNAUTHORIZED.into()),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn require_role() {
    let t = setup().await;
    assert_eq!(
        t.get("/admin", &[("x-tenant-id", "a")]).await,
        (StatusCode::UNAUTHORIZED, UNAUTHORIZED.into())
    );
    let viewer = bearer(&t.token("a", &["viewer"]));
    assert_eq!(
        t.get("/admin", &[("authorization", &viewer)]).await,
        (StatusCode::FORBIDDEN, FORBIDDEN.into())
    );
    let admin = bearer(&t.token("a", &["admin"]));
    assert_eq!(
        t.get("/admin", &[("authorization", &admin)]).await,
        (StatusCode::OK, "admin 7".into())
    );
    // An API key has no roles.
    let key = t.keys.create(&id("a"), NewApiKey::new("ci")).await.unwrap();
    assert_eq!(
        t.get("/admin", &[("x-api-key", key.secret())]).await,
        (StatusCode::FORBIDDEN, FORBIDDEN.into())
    );
}

#[tokio::test]
async fn the_permission_guard_reads_the_tenants_roles() {
    let t = setup().await;
    let post = |auth: String| {
        let app = t.app.clone();
        async move {
            let (status, _, body) = send(
                app,
                common::post_req("/customers/delete", &[("authorization", &auth)]),
            )
            .await;
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let ok = |body: &str| (StatusCode::OK, body.to_owned());
    let forbidden = (StatusCode::FORBIDDEN, FORBIDDEN.to_owned());

    let viewer = bearer(&t.token("a", &["viewer"]));
    assert_eq!(
        t.get("/customers", &[("authorization", &viewer)]).await,
        ok("customers")
    );
    assert_eq!(post(viewer.clone()).await, forbidden);
    // `*` and `customers:*` grant it.
    for role in ["admin", "sales"] {
        let auth = bearer(&t.token("a", &[role]));
        assert_eq!(post(auth.clone()).await, ok("deleted"), "{role}");
        assert_eq!(
            t.get("/customers", &[("authorization", &auth)]).await,
            ok("customers")
        );
    }
    // A role the tenant does not have grants nothing.
    let ghost = bearer(&t.token("a", &["ghost"]));
    assert_eq!(
        t.get("/customers", &[("authorization", &ghost)]).await,
        forbidden
    );

    // Tenant b's roles are its own: give b's viewer the delete permission.
    let mut conn = t.ctx.hidra.acquire(&t.b).await.unwrap();
    sqlx::query("UPDATE roles SET permissions = '{customers:*}' WHERE name = 'viewer'")
        .execute(&mut conn)
        .await
        .unwrap();
    let b_viewer = bearer(&t.token("b", &["viewer"]));
    assert_eq!(post(b_viewer).await, ok("deleted"));
    assert_eq!(
        post(viewer.clone()).await,
        forbidden,
        "a's roles are unchanged"
    );

    // Permissions are cached per tenant; invalidation makes a change visible.
    let mut conn = t.ctx.hidra.acquire(&t.a).await.unwrap();
    sqlx::query("UPDATE roles SET permissions = '{customers:delete}' WHERE name = 'viewer'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(post(viewer.clone()).await, forbidden, "still cached");
    t.permissions.invalidate(&id("a")).await;
    assert_eq!(post(viewer.clone()).await, ok("deleted"));

    // An API key is granted permissions by its scopes.
    let key = t
        .keys
        .create(&id("a"), NewApiKey::new("reader").scope("customers:read"))
        .await
        .unwrap();
    assert_eq!(
        t.get("/customers", &[("x-api-key", key.secret())]).await,
        ok("customers")
    );
    let (status, _, body) = send(
        t.app.clone(),
        common::post_req("/customers/delete", &[("x-api-key", key.secret())]),
    )
    .await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::FORBIDDEN, FORBIDDEN.as_bytes())
    );
}

#[tokio::test]
async fn api_keys_resolve_their_tenant() {
    let t = setup().await;
    let key = t
        .keys
        .create(&id("b"), NewApiKey::new("exporter").scope("export"))
        .await
        .unwrap();
    let secret = key.secret().to_owned();

    // From X-API-Key and from a bearer token, beside the JWT resolver.
    assert_eq!(
        t.get("/marker", &[("x-api-key", &secret)]).await,
        (StatusCode::OK, "b".into())
    );
    assert_eq!(
        t.get("/me", &[("authorization", &bearer(&secret))]).await,
        (StatusCode::OK, "key exporter of b".into())
    );
    assert_eq!(
        t.get("/export", &[("x-api-key", &secret)]).await,
        (StatusCode::OK, "export by exporter".into())
    );
    // Another tenant in the header, or a token of another tenant: conflict.
    assert_eq!(
        t.get("/marker", &[("x-api-key", &secret), ("x-tenant-id", "a")])
            .await,
        (StatusCode::FORBIDDEN, CONFLICT.into())
    );
    let a_token = bearer(&t.token("a", &["admin"]));
    assert_eq!(
        t.get(
            "/marker",
            &[("x-api-key", &secret), ("authorization", &a_token)]
        )
        .await,
        (StatusCode::FORBIDDEN, CONFLICT.into())
    );

    // The scope guard: a key without the scope, and a user, are refused.
    let plain = t
        .keys
        .create(&id("b"), NewApiKey::new("plain"))
        .await
        .unwrap();
    assert_eq!(
        t.get("/export", &[("x-api-key", plain.secret())]).await,
        (StatusCode::FORBIDDEN, FORBIDDEN.into())
    );
    assert_eq!(
        t.get("/export", &[("authorization", &a_token)]).await,
        (StatusCode::FORBIDDEN, FORBIDDEN.into())
    );

    // Wrong secret, unknown id, malformed, revoked: one identical 401.
    let wrong_secret = format!("{}0", &secret[..secret.len() - 1]);
    let wrong_secret = if wrong_secret == secret {
        format!("{}1", &secret[..secret.len() - 1])
    } else {
        wrong_secret
    };
    let unknown = format!("hk_{}_{}", "0".repeat(24), "0".repeat(64));
    let reference = t
        .get_raw("/marker", &[("x-api-key", &unknown), ("x-tenant-id", "b")])
        .await;
    assert_eq!(reference.0, StatusCode::UNAUTHORIZED);
    assert_eq!(reference.2, UNAUTHORIZED);
    t.keys.revoke(&id("b"), plain.key_id()).await.unwrap();
    for (what, presented) in [
        ("wrong secret", wrong_secret.as_str()),
        ("malformed", "hk_nope"),
        ("revoked", plain.secret()),
    ] {
        let answer = t
            .get_raw("/marker", &[("x-api-key", presented), ("x-tenant-id", "b")])
            .await;
        assert_eq!(answer, reference, "{what}");
        let answer = t
            .get_raw("/marker", &[("authorization", &bearer(presented))])
            .await;
        assert_eq!(answer, reference, "{what} as a bearer token");
    }
}

#[tokio::test]
async fn auth_errors_map_to_statuses() {
    async fn answer(error: hidra::Error) -> (StatusCode, String) {
        let res = hidra_axum::Error::from(error).into_response();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }
    for kind in [
        AuthError::InvalidToken,
        AuthError::Expired,
        AuthError::InvalidCredentials,
        AuthError::KeyRevoked,
    ] {
        assert_eq!(
            answer(kind.clone().into()).await,
            (StatusCode::UNAUTHORIZED, UNAUTHORIZED.into()),
            "{kind:?}"
        );
    }
    for kind in [
        AuthError::WrongTenant,
        AuthError::MissingRole("admin".into()),
        AuthError::MissingPermission("x:y".into()),
        AuthError::MissingScope("x".into()),
    ] {
        assert_eq!(
            answer(kind.clone().into()).await,
            (StatusCode::FORBIDDEN, FORBIDDEN.into()),
            "{kind:?}"
        );
    }
    let (status, body) = answer(AuthError::EmailTaken.into()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body.starts_with(r#"{"error":"email_taken","message":"#),
        "{body}"
    );
    for (kind, code) in [
        (AuthError::InvalidEmail, "invalid_email"),
        (
            AuthError::InvalidPassword { min: 12, max: 1024 },
            "invalid_password",
        ),
        (AuthError::UnknownRole("ghost".into()), "unknown_role"),
    ] {
        let (status, body) = answer(kind.into()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], code);
        assert!(json["message"].is_string());
    }
    // Other core errors are internal, and say nothing.
    let (status, body) = answer(hidra::Error::NotFound(id("a"))).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"internal_error"}"#
        )
    );
}

#[tokio::test]
async fn a_tenant_provisioned_again_under_its_old_id_does_not_inherit_cached_permissions() {
    let t = setup().await;
    let c = tenant_with_marker(&t.ctx.hidra, "c").await;
    let delete = |auth: String| {
        let app = t.app.clone();
        async move {
            send(
                app,
                common::post_req("/customers/delete", &[("authorization", &auth)]),
            )
            .await
            .0
        }
    };
    // The first `c` lets its viewers delete; the guard caches that.
    let mut conn = t.ctx.hidra.acquire(&c).await.unwrap();
    sqlx::query("UPDATE roles SET permissions = '{customers:*}' WHERE name = 'viewer'")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let viewer = bearer(&t.jwt.issue("7", &c, ["viewer"]).unwrap());
    assert_eq!(delete(viewer.clone()).await, StatusCode::OK);

    // `c` is deleted and a new tenant takes the id: its viewers only read.
    let cid = id("c");
    t.ctx
        .hidra
        .deprovision(&cid, hidra::Confirmation::of(&cid))
        .await
        .unwrap();
    let again = tenant_with_marker(&t.ctx.hidra, "c").await;
    assert_ne!(again.created_at, c.created_at);
    t.cache.sync().await.unwrap();
    // The old tenant's token does not hold for the new one at all.
    assert_eq!(delete(viewer).await, StatusCode::UNAUTHORIZED);
    let viewer = bearer(&t.jwt.issue("7", &again, ["viewer"]).unwrap());
    assert_eq!(
        t.get("/marker", &[("authorization", &viewer)]).await,
        (StatusCode::OK, "c".into())
    );
    assert_eq!(
        delete(viewer).await,
        StatusCode::FORBIDDEN,
        "the old tenant's cached roles must not apply to the new one"
    );
}
