//! Shared setup for the auth tests: test keys, a throw-away database with the
//! registry and the shared auth tables, and tenants whose schema has the
//! `users`, `roles` and `user_roles` tables of the reference schema.
//!
//! The PEM files beside this module are **test keys**, generated for these
//! tests only (`openssl genpkey`); they protect nothing.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use hidra::auth::{Accounts, ApiKeys, AuthError, Jwt, NewUser, Passwords, User};
use hidra::testing::TestDatabase;
use hidra::{Error, Hidra, NewTenant, Tenant};
// Each test binary uses some of them.
#[allow(unused_imports)]
pub use hidra_test_support::{b64url_decode, b64url_encode, id, setup_with};

/// The auth tables of the reference tenant schema, and three roles.
pub const TENANT_SQL: &str = "
CREATE TABLE roles (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    permissions TEXT[] NOT NULL DEFAULT '{}'
);
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    full_name     TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE user_roles (
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role_id BIGINT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, role_id)
);
INSERT INTO roles (name, permissions) VALUES
    ('admin', '{*}'),
    ('sales', '{customers:*,products:read}'),
    ('viewer', '{customers:read}');
";

/// An HS256 secret for tests.
pub const SECRET: &[u8] = b"test secret, thirty-two bytes or more, not for production";

/// An API key pepper for tests.
pub const PEPPER: &[u8] = b"test pepper, thirty-two bytes or more, not for production";

/// The path of a test key file beside this module.
pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("auth_common")
        .join(name)
}

/// The bytes of a test key file.
pub fn key(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("read test key")
}

/// The refusal kind of an error, or a panic naming what came instead.
pub fn kind<T: std::fmt::Debug>(result: hidra::Result<T>) -> AuthError {
    match result {
        Err(Error::Auth(kind)) => kind,
        other => panic!("expected an auth refusal, got {other:?}"),
    }
}

pub struct Ctx {
    pub db: TestDatabase,
    pub hidra: Hidra,
    pub acme: Tenant,
    pub globex: Tenant,
    pub jwt: Jwt,
    pub accounts: Accounts,
    pub keys: ApiKeys,
}

/// Cheap argon2 parameters: these tests check behaviour, not cost.
pub fn cheap_passwords() -> Passwords {
    Passwords::with_params(256, 1, 1).unwrap()
}

/// A fresh database with the registry, the login and API key tables, and two
/// tenants, `acme` and `globex`.
pub async fn setup() -> Ctx {
    let hidra_test_support::Ctx { db, hidra } = setup_with(
        Hidra::builder()
            .schema_sql("auth tables", TENANT_SQL)
            .max_connections(4),
    )
    .await;
    let jwt = Jwt::hs256(SECRET).unwrap();
    let accounts = Accounts::new(hidra.clone(), jwt.clone()).with_passwords(cheap_passwords());
    let keys = ApiKeys::new(hidra.clone(), PEPPER).unwrap();
    accounts.install().await.expect("install the login tables");
    keys.install().await.expect("install the API key table");
    let acme = hidra.provision(NewTenant::new(id("acme"))).await.unwrap();
    let globex = hidra.provision(NewTenant::new(id("globex"))).await.unwrap();
    Ctx {
        db,
        hidra,
        acme,
        globex,
        jwt,
        accounts,
        keys,
    }
}

/// Emails in a tenant's `users` table.
pub async fn user_emails(hidra: &Hidra, tenant: &Tenant) -> Vec<String> {
    let mut conn = hidra.acquire(tenant).await.unwrap();
    sqlx::query_scalar("SELECT email FROM users ORDER BY email")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// Number of `user_roles` rows of a tenant.
pub async fn user_role_count(hidra: &Hidra, tenant: &Tenant) -> i64 {
    let mut conn = hidra.acquire(tenant).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM user_roles")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// `(email, tenant_id)` rows of the login lookup.
pub async fn lookup_rows(hidra: &Hidra) -> Vec<(String, String)> {
    let mut conn = hidra.acquire_shared().await.unwrap();
    sqlx::query_as("SELECT email, tenant_id FROM public.hidra_logins ORDER BY email")
        .fetch_all(&mut *conn)
        .await
        .unwrap()
}

/// Runs one statement on a shared connection.
pub async fn exec(hidra: &Hidra, sql: &'static str) {
    let mut conn = hidra.acquire_shared().await.unwrap();
    sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
}

/// Every row of every table of the database (all schemas but the system
/// ones), as JSON text: what an attacker with a dump would see.
pub async fn dump_everything(hidra: &Hidra) -> Vec<String> {
    let mut conn = hidra.acquire_shared().await.unwrap();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' \
         AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(
        tables.iter().any(|(_, t)| t == "hidra_api_keys"),
        "{tables:?}"
    );
    let mut rows = Vec::new();
    for (schema, table) in tables {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let sql = format!(
            "SELECT row_to_json(t)::text FROM {}.{} t",
            quote(&schema),
            quote(&table)
        );
        let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        rows.extend(found.into_iter().map(|r| format!("{schema}.{table}: {r}")));
    }
    rows
}

impl Ctx {
    /// Registers `email` in `tenant` with the password `correct horse`.
    pub async fn user(&self, tenant: &Tenant, email: &str, name: &str, roles: &[&str]) -> User {
        self.accounts
            .register(
                tenant,
                NewUser::new(email, name, "correct horse").roles(roles.iter().copied()),
            )
            .await
            .unwrap()
    }
}
