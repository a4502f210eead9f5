//! Adopting an existing application (`hidra::adopt`): a realistic
//! single-tenant database (13 tables with foreign keys, serial, identity and
//! standalone sequences, a view, a function, an enum, an extension type,
//! 100,083 rows) adopted as one tenant's schema, and split by its
//! `company_id` into one tenant per company. Afterwards the application's
//! queries through `TenantConn` return exactly what they returned before;
//! a second adoption, an interrupted split and everything that cannot be
//! adopted are handled before anything changes.

mod common;

use std::time::Instant;

use common::id;
use hidra::adopt::{AdoptSchema, AdoptSplit};
use hidra::auth::LoginTable;
use hidra::testing::TestDatabase;
use hidra::{Error, Hidra, Migrations, Tenant};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The shared reference table, and the extension the application uses.
const SHARED_DDL: &str = "
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TABLE plans (id SERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE);
";

/// The application's own objects, with or without the company column.
fn app_ddl(with_company: bool) -> String {
    let ddl = "
CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'cancelled');
CREATE SEQUENCE invoice_numbers START 1000;
CREATE TABLE categories (id BIGSERIAL PRIMARY KEY, @ name TEXT NOT NULL);
CREATE TABLE suppliers (id BIGSERIAL PRIMARY KEY, @ name TEXT NOT NULL);
CREATE TABLE products (id BIGSERIAL PRIMARY KEY, @ category_id BIGINT NOT NULL REFERENCES categories (id),
    supplier_id BIGINT REFERENCES suppliers (id), name TEXT NOT NULL, price_cents INT NOT NULL);
CREATE TABLE inventory (product_id BIGINT PRIMARY KEY REFERENCES products (id), @ quantity INT NOT NULL);
CREATE TABLE users (id BIGSERIAL PRIMARY KEY, @ email TEXT NOT NULL UNIQUE, full_name TEXT NOT NULL);
CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, @ plan_id INT NOT NULL REFERENCES plans (id),
    name TEXT NOT NULL, email CITEXT);
CREATE TABLE addresses (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, @
    customer_id BIGINT NOT NULL REFERENCES customers (id), city TEXT NOT NULL);
CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, @ customer_id BIGINT NOT NULL REFERENCES customers (id),
    status order_status NOT NULL DEFAULT 'pending',
    invoice_no BIGINT NOT NULL DEFAULT nextval('invoice_numbers'), placed_at TIMESTAMPTZ NOT NULL);
CREATE TABLE order_items (id BIGSERIAL PRIMARY KEY, @ order_id BIGINT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id BIGINT NOT NULL REFERENCES products (id), quantity INT NOT NULL, price_cents INT NOT NULL);
CREATE INDEX order_items_order_id ON order_items (order_id);
CREATE TABLE payments (id BIGSERIAL PRIMARY KEY, @ order_id BIGINT NOT NULL REFERENCES orders (id),
    amount_cents BIGINT NOT NULL);
CREATE TABLE shipments (id BIGSERIAL PRIMARY KEY, @ order_id BIGINT NOT NULL REFERENCES orders (id),
    address_id BIGINT NOT NULL REFERENCES addresses (id), shipped_at TIMESTAMPTZ);
CREATE TABLE reviews (id BIGSERIAL PRIMARY KEY, @ product_id BIGINT NOT NULL REFERENCES products (id),
    customer_id BIGINT NOT NULL REFERENCES customers (id), stars INT NOT NULL CHECK (stars BETWEEN 1 AND 5));
CREATE FUNCTION order_total(o BIGINT) RETURNS BIGINT LANGUAGE sql STABLE
    AS $$ SELECT coalesce(sum(quantity * price_cents), 0)::bigint FROM order_items WHERE order_id = o $$;
CREATE VIEW order_totals AS
    SELECT o.id AS order_id, o.customer_id, o.status, sum(i.quantity * i.price_cents)::bigint AS total_cents
    FROM orders o JOIN order_items i ON i.order_id = o.id GROUP BY o.id;
";
    ddl.replace(
        "@",
        if with_company {
            "company_id INT NOT NULL,"
        } else {
            ""
        },
    )
}

/// The tables that carry `company_id`.
const APP_TABLES: [&str; 12] = [
    "categories",
    "suppliers",
    "products",
    "inventory",
    "users",
    "customers",
    "addresses",
    "orders",
    "order_items",
    "payments",
    "shipments",
    "reviews",
];

/// 100,083 rows; row `i` of every table belongs to company `1 + (i - 1) % 4`,
/// and every reference stays within its company.
const DATA: &str = "
INSERT INTO plans (name) VALUES ('free'), ('pro'), ('enterprise');
INSERT INTO categories (company_id, name) SELECT 1 + (i - 1) % 4, 'category ' || i FROM generate_series(1, 40) i;
INSERT INTO suppliers (company_id, name) SELECT 1 + (i - 1) % 4, 'supplier ' || i FROM generate_series(1, 40) i;
INSERT INTO products (company_id, category_id, supplier_id, name, price_cents)
    SELECT 1 + (i - 1) % 4, 1 + (i - 1) % 40, CASE WHEN i % 7 = 0 THEN NULL ELSE 1 + (i - 1) % 40 END,
           'product ' || i, 100 + i % 900 FROM generate_series(1, 2000) i;
INSERT INTO inventory (product_id, company_id, quantity) SELECT i, 1 + (i - 1) % 4, i % 50 FROM generate_series(1, 2000) i;
INSERT INTO users (company_id, email, full_name)
    SELECT 1 + (i - 1) % 4, ' User' || i || '@Example.TEST', 'User ' || i FROM generate_series(1, 400) i;
INSERT INTO customers (company_id, plan_id, name, email)
    SELECT 1 + (i - 1) % 4, 1 + i % 3, 'customer ' || i, 'Customer' || i || '@example.test' FROM generate_series(1, 10000) i;
INSERT INTO addresses (company_id, customer_id, city) SELECT 1 + (i - 1) % 4, i, 'city ' || i % 97 FROM generate_series(1, 10000) i;
INSERT INTO orders (company_id, customer_id, status, placed_at)
    SELECT 1 + (i - 1) % 4, 1 + (i - 1) % 10000, (ARRAY['pending', 'paid', 'shipped', 'cancelled'])[1 + i % 3 + i % 2]::order_status,
           timestamptz '2024-01-01 00:00:00+00' + i * interval '7 minutes' FROM generate_series(1, 20000) i;
INSERT INTO order_items (company_id, order_id, product_id, quantity, price_cents)
    SELECT 1 + (i - 1) % 4, 1 + (i - 1) % 20000, 1 + (i - 1) % 2000, 1 + i % 5, 100 + i % 900 FROM generate_series(1, 40000) i;
INSERT INTO payments (company_id, order_id, amount_cents) SELECT 1 + (i - 1) % 4, i, 1000 + i FROM generate_series(1, 10000) i;
INSERT INTO shipments (company_id, order_id, address_id, shipped_at)
    SELECT 1 + (i - 1) % 4, i, 1 + (i - 1) % 10000, CASE WHEN i % 3 = 0 THEN NULL ELSE timestamptz '2024-02-01 00:00:00+00' + i * interval '1 hour' END
    FROM generate_series(1, 5000) i;
INSERT INTO reviews (company_id, product_id, customer_id, stars)
    SELECT 1 + (i - 1) % 4, 1 + (i - 1) % 2000, 1 + (i - 1) % 10000, 1 + i % 5 FROM generate_series(1, 600) i;
";

/// Rows of `DATA`, and the rows of each company in the split tables.
const ROWS: i64 = 100_083;
const COMPANIES: i64 = 4;

/// The application's queries; `t` is each one's main table, `{scope}` a
/// condition on it (all rows, or one company's before a split).
const QUERIES: [&str; 8] = [
    "SELECT t.status::text AS status, count(*) AS n, sum(order_total(t.id)) AS total FROM orders t WHERE {scope} GROUP BY 1 ORDER BY 1",
    "SELECT v.* FROM order_totals v JOIN orders t ON t.id = v.order_id WHERE {scope} ORDER BY v.order_id DESC LIMIT 200",
    "SELECT t.name, c.name AS category, s.name AS supplier, i.quantity FROM products t \
     JOIN categories c ON c.id = t.category_id LEFT JOIN suppliers s ON s.id = t.supplier_id \
     JOIN inventory i ON i.product_id = t.id WHERE {scope} ORDER BY t.id LIMIT 300",
    "SELECT t.id, t.name, t.email, p.name AS plan, a.city FROM customers t JOIN plans p ON p.id = t.plan_id \
     JOIN addresses a ON a.customer_id = t.id WHERE {scope} ORDER BY t.id DESC LIMIT 300",
    "SELECT count(*) AS n, sum(amount_cents) AS total FROM payments t WHERE {scope}",
    "SELECT t.stars, count(*) FROM reviews t WHERE {scope} GROUP BY 1 ORDER BY 1",
    "SELECT date_trunc('month', t.shipped_at) AS month, count(*) FROM shipments t WHERE {scope} GROUP BY 1 ORDER BY 1",
    "SELECT t.email, t.full_name FROM users t WHERE {scope} ORDER BY t.id LIMIT 50",
];

/// Each query's rows as one JSON text.
async fn run_queries<C>(conn: &mut C, scope: &str) -> Vec<String>
where
    for<'c> &'c mut C: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let mut out = Vec::new();
    for q in QUERIES {
        let sql = format!(
            "SELECT coalesce(json_agg(q), '[]'::json)::text FROM ({}) q",
            q.replace("{scope}", scope)
        );
        let text: String = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        out.push(text);
    }
    out
}

async fn fixture(with_data: bool) -> (TestDatabase, PgConnection) {
    let db = TestDatabase::create().await.unwrap();
    let mut admin = PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let mut sql = format!("{SHARED_DDL}{}", app_ddl(true));
    if with_data {
        sql.push_str(DATA);
    }
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .unwrap();
    (db, admin)
}

async fn connect(db: &TestDatabase, migrations: Migrations) -> Hidra {
    let hidra = Hidra::builder()
        .tenant_migrations(migrations)
        .max_connections(4)
        .connect_with(db.connect_options())
        .await
        .unwrap();
    hidra.install().await.unwrap();
    hidra
}

async fn scalar<T>(conn: &mut PgConnection, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Row counts of the application's tables in `schema`.
async fn counts(conn: &mut PgConnection, schema: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for t in APP_TABLES {
        out.push(scalar(conn, &format!("SELECT count(*) FROM {schema}.{t}")).await);
    }
    out
}

/// Tables, views, sequences, routines and types per schema, and the
/// registry's ids: what "nothing changed" compares.
async fn catalog(conn: &mut PgConnection) -> String {
    scalar(
        conn,
        "SELECT concat_ws(' | ',
            (SELECT string_agg(n.nspname || '.' || c.relname, ',' ORDER BY n.nspname, c.relname) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'),
            (SELECT string_agg(p.oid::regprocedure::text, ',' ORDER BY p.oid::regprocedure::text) FROM pg_proc p
             WHERE p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)),
            (SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace),
            (SELECT coalesce(string_agg(id, ',' ORDER BY id), '-') FROM public.tenants))",
    )
    .await
}

fn problems(err: Error) -> Vec<String> {
    assert!(err.is_adopt_refused() && !err.is_retryable(), "{err}");
    match err {
        Error::AdoptRefused { problems, .. } => problems,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn mentions(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "no problem mentions {needle:?}: {problems:#?}"
    );
}

/// Tenant migrations whose first version is what the single-tenant schema
/// is, and a second one to apply after the adoption.
fn schema_migrations() -> Migrations {
    Migrations::new().push("app", app_ddl(true)).push(
        "loyalty",
        "ALTER TABLE customers ADD COLUMN loyalty_points INT NOT NULL DEFAULT 0",
    )
}

#[tokio::test]
async fn a_single_tenant_schema_becomes_the_first_tenant_without_copying_a_row() {
    let (db, mut admin) = fixture(true).await;
    let before = run_queries(&mut admin, "true").await;
    let counts_before = counts(&mut admin, "public").await;
    assert_eq!(counts_before.iter().sum::<i64>() + 3, ROWS);
    let file_before: i64 = scalar(
        &mut admin,
        "SELECT relfilenode::int8 FROM pg_class WHERE oid = 'public.order_items'::regclass",
    )
    .await;
    let hidra = connect(&db, schema_migrations()).await;

    let started = Instant::now();
    let adopted = hidra
        .adopt_schema(
            AdoptSchema::new(id("acme"))
                .baseline(1)
                .keep(["plans"])
                .name("Acme"),
        )
        .await
        .unwrap();
    eprintln!(
        "adopted {ROWS} rows ({} objects moved) in {:?}",
        adopted.moved.len(),
        started.elapsed()
    );
    let tenant = adopted.tenant.clone();
    assert!(tenant.is_active());
    assert_eq!(tenant.name, "Acme");
    assert_eq!(tenant.placement.schema, "tenant_acme");
    assert_eq!(adopted.baseline, 1);
    // 12 tables, the view, the function, the enum, the standalone sequence.
    assert_eq!(adopted.moved.len(), 16, "{:#?}", adopted.moved);
    assert!(adopted.kept.iter().any(|k| k == "table public.plans"));
    assert!(adopted.extension_objects > 0, "citext stays in public");

    // Moved, not copied: the same files, nothing of the application left
    // in public but the shared table (and the registries of tenants and
    // servers).
    let file_after: i64 = scalar(
        &mut admin,
        "SELECT relfilenode::int8 FROM pg_class WHERE oid = 'tenant_acme.order_items'::regclass",
    )
    .await;
    assert_eq!(file_before, file_after);
    let public: String = scalar(
        &mut admin,
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class \
         WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'v', 'S')",
    )
    .await;
    assert_eq!(public, "hidra_servers,plans,plans_id_seq,tenants");
    assert_eq!(counts(&mut admin, "tenant_acme").await, counts_before);

    // The application's queries, through the tenant's connection, see
    // exactly what they saw before.
    let mut conn = hidra.acquire(&tenant).await.unwrap();
    assert_eq!(run_queries(&mut conn, "true").await, before);
    // Sequences go on where they were.
    let (order, invoice, status): (i64, i64, String) = sqlx::query_as(
        "INSERT INTO orders (company_id, customer_id, placed_at) VALUES (1, 1, now()) \
         RETURNING id, invoice_no, status::text",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        (order, invoice, status.as_str()),
        (20_001, 21_000, "pending")
    );
    drop(conn);

    // The baseline: version 1 applied, version 2 pending, then applied.
    let history: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM tenant_acme._hidra_migrations ORDER BY version")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(history, [1]);
    let status = hidra.migration_status().await.unwrap();
    assert_eq!((status[0].version, status[0].pending), (1, 1));
    let summary = hidra.migrator().run().await.unwrap();
    assert!(summary.is_success(), "{summary}");
    assert_eq!(summary.migrated.len(), 1);
    assert_eq!((summary.migrated[0].from, summary.migrated[0].to), (1, 2));
    let loyalty: i64 = scalar(
        &mut admin,
        "SELECT sum(loyalty_points)::int8 FROM tenant_acme.customers",
    )
    .await;
    assert_eq!(loyalty, 0);
    // A tenant provisioned now gets the same tables from the migrations.
    let globex = hidra
        .provision(hidra::NewTenant::new(id("globex")))
        .await
        .unwrap();
    let mut conn = hidra.acquire(&globex).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
    drop(conn);

    // A second adoption is refused before anything changes.
    let snapshot = catalog(&mut admin).await;
    let again = hidra
        .adopt_schema(AdoptSchema::new(id("acme")).baseline(1))
        .await
        .unwrap_err();
    assert!(again.is_already_exists(), "{again}");
    let other = hidra
        .adopt_schema(AdoptSchema::new(id("initech")).baseline(1).keep(["plans"]))
        .await
        .unwrap_err();
    mentions(&problems(other), "has no tables to adopt");
    assert_eq!(catalog(&mut admin).await, snapshot);
}

#[tokio::test]
async fn what_cannot_move_is_refused_before_anything_changes() {
    let (db, mut admin) = fixture(false).await;
    sqlx::raw_sql(
        "CREATE SCHEMA reporting;
         CREATE VIEW reporting.daily AS SELECT count(*) AS n FROM public.orders;
         CREATE TABLE audit (id SERIAL PRIMARY KEY, order_id BIGINT REFERENCES orders (id));
         CREATE FUNCTION pinned() RETURNS INT LANGUAGE sql SET search_path = public AS 'SELECT 1';
         CREATE TEXT SEARCH CONFIGURATION product_search (COPY = english);
         CREATE SCHEMA legacy;
         CREATE EXTENSION pgcrypto SCHEMA legacy;
         CREATE TABLE legacy.notes (id SERIAL PRIMARY KEY, digest BYTEA DEFAULT legacy.digest('x', 'sha256'));",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let hidra = connect(&db, schema_migrations()).await;
    let snapshot = catalog(&mut admin).await;

    let found = problems(
        hidra
            .adopt_schema(AdoptSchema::new(id("acme")).baseline(1).keep([
                "plans",
                "audit",
                "no_such_table",
            ]))
            .await
            .unwrap_err(),
    );
    mentions(&found, "view reporting.daily");
    mentions(&found, "outside schema `public`");
    mentions(
        &found,
        "table public.audit stays shared but depends on table public.orders",
    );
    mentions(&found, "function public.pinned() sets its own search_path");
    mentions(
        &found,
        "text search configuration public.product_search cannot be moved",
    );
    mentions(&found, "no table `no_such_table`");
    assert_eq!(catalog(&mut admin).await, snapshot);

    // An extension in a schema no tenant searches cannot stay behind.
    let found = problems(
        hidra
            .adopt_schema(
                AdoptSchema::new(id("acme"))
                    .from_schema("legacy")
                    .baseline(0)
                    .keep(["notes"]),
            )
            .await
            .unwrap_err(),
    );
    mentions(&found, "holds objects of an extension");
    // Nor can tables kept shared there.
    mentions(
        &found,
        "which is not a shared schema, so tenants would not find them",
    );
    // A baseline is required, and must be one of the migrations.
    let found = problems(
        hidra
            .adopt_schema(AdoptSchema::new(id("acme")))
            .await
            .unwrap_err(),
    );
    mentions(&found, "no baseline given");
    let found = problems(
        hidra
            .adopt_schema(AdoptSchema::new(id("acme")).baseline(7))
            .await
            .unwrap_err(),
    );
    mentions(&found, "the baseline 7 is not one of");
    assert_eq!(catalog(&mut admin).await, snapshot);
}

/// The fixture with data, and [`with_logins`].
async fn split_setup() -> (TestDatabase, PgConnection, Hidra) {
    let (db, admin) = fixture(true).await;
    let hidra = with_logins(&db).await;
    (db, admin, hidra)
}

/// [`connect`] with the split's tenant migrations, and the login table.
async fn with_logins(db: &TestDatabase) -> Hidra {
    let hidra = connect(db, Migrations::new().push("app", app_ddl(false))).await;
    let mut conn = hidra.acquire_shared().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(LoginTable::default().ddl()))
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    hidra
}

fn split() -> AdoptSplit {
    AdoptSplit::new("company_id", APP_TABLES)
        .id_prefix("company-")
        .logins("users", "email")
}

/// Each company's query results and row counts before the split.
async fn per_company(admin: &mut PgConnection) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for c in 1..=COMPANIES {
        out.push(run_queries(admin, &format!("t.company_id = {c}")).await);
    }
    out
}

async fn tenant(hidra: &Hidra, c: i64) -> Tenant {
    hidra
        .tenant(&id(&format!("company-{c}")))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn shared_tables_split_by_company_become_one_tenant_each() {
    let (_db, mut admin, hidra) = split_setup().await;
    let before = per_company(&mut admin).await;

    let started = Instant::now();
    let report = hidra.adopt_split(split()).await.unwrap();
    eprintln!(
        "split {} rows in {:?}\n{report}",
        ROWS - 3,
        started.elapsed()
    );
    assert!(report.is_verified(), "{report}");
    assert_eq!(report.tenants.len(), COMPANIES as usize);
    assert_eq!(report.created(), COMPANIES as usize);
    let moved: i64 = report
        .tenants
        .iter()
        .flat_map(|t| t.tables.iter().map(|r| r.after))
        .sum();
    assert_eq!(moved, ROWS - 3);
    assert!(report.tenants.iter().all(|t| t.logins == 100));

    for c in 1..=COMPANIES {
        let tenant = tenant(&hidra, c).await;
        assert!(tenant.is_active());
        let mut conn = hidra.acquire(&tenant).await.unwrap();
        assert_eq!(
            run_queries(&mut conn, "true").await,
            before[c as usize - 1],
            "company {c}"
        );
        // Sequences are past the copied ids; foreign keys hold.
        let (inserted, invoice): (i64, i64) = sqlx::query_as(
            "INSERT INTO orders (customer_id, placed_at) VALUES ($1, now()) RETURNING id, invoice_no",
        )
        .bind(c)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        // Company `c`'s last order is 19,996 + c, its invoice 20,995 + c
        // (from the standalone sequence `invoice_numbers`).
        assert_eq!(inserted, 19_997 + c, "ids go on after the company's last");
        assert_eq!(
            invoice,
            20_996 + c,
            "invoices go on after the company's last"
        );
        let foreign = sqlx::query(
            "INSERT INTO order_items (order_id, product_id, quantity, price_cents) VALUES ($1, $2, 1, 1)",
        )
        .bind(c % COMPANIES + 1)
        .bind(c)
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(
            foreign
                .as_database_error()
                .and_then(|e| e.code())
                .as_deref(),
            Some("23503"),
            "that order belongs to another company"
        );
    }
    // The login lookup: emails trimmed and lowercased, with the user's id.
    let login: (String, i64) = sqlx::query_as(
        "SELECT tenant_id, user_id FROM public.hidra_logins WHERE email = 'user6@example.test'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(login, ("company-2".to_owned(), 6));
    // The shared tables are left for the user to compare and drop.
    assert_eq!(
        scalar::<i64>(&mut admin, "SELECT count(*) FROM public.orders").await,
        20_000
    );

    // Running it again creates nothing and verifies everything.
    let again = hidra.adopt_split(split()).await.unwrap();
    assert_eq!(again.created(), 0);
    assert!(again.tenants.iter().all(|t| t.earlier));
    assert!(!again.is_verified(), "one order more per tenant now");
    assert!(again.tenants.iter().all(|t| {
        t.tables
            .iter()
            .all(|r| r.before == r.after || (r.table == "orders" && r.after == r.before + 1))
    }));
}

#[tokio::test]
async fn an_interrupted_split_is_finished_by_running_it_again() {
    let (_db, mut admin, hidra) = split_setup().await;
    let before = per_company(&mut admin).await;

    // Cut off once two tenants are committed, in the middle of the third.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let interrupted = split().on_progress(move |p| {
        if p.done == 2
            && let Some(tx) = tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    });
    tokio::select! {
        biased;
        _ = rx => {}
        result = hidra.adopt_split(interrupted) => panic!("the split finished uninterrupted: {result:?}"),
    }
    let registered: i64 = scalar(&mut admin, "SELECT count(*) FROM public.tenants").await;
    assert!((2..COMPANIES).contains(&registered), "{registered} tenants");

    let report = hidra.adopt_split(split()).await.unwrap();
    assert!(report.is_verified(), "{report}");
    assert_eq!(report.tenants.len(), COMPANIES as usize);
    assert_eq!(report.created() as i64, COMPANIES - registered);
    // Every row once, every tenant once, every login once.
    let tenants: i64 = scalar(&mut admin, "SELECT count(*) FROM public.tenants").await;
    assert_eq!(tenants, COMPANIES);
    let schemas: i64 = scalar(
        &mut admin,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'",
    )
    .await;
    assert_eq!(schemas, COMPANIES);
    let logins: i64 = scalar(&mut admin, "SELECT count(*) FROM public.hidra_logins").await;
    assert_eq!(logins, 400);
    for c in 1..=COMPANIES {
        let tenant = tenant(&hidra, c).await;
        let mut conn = hidra.acquire(&tenant).await.unwrap();
        assert_eq!(run_queries(&mut conn, "true").await, before[c as usize - 1]);
    }
}

#[tokio::test]
async fn a_split_refuses_what_it_cannot_split_before_anything_changes() {
    let (db, mut admin) = fixture(false).await;
    sqlx::raw_sql(
        "INSERT INTO plans (name) VALUES ('free');
         INSERT INTO users (company_id, email, full_name) VALUES (1, 'ada@a.test', 'Ada'), (2, ' ADA@a.test', 'Ada too');
         INSERT INTO customers (company_id, plan_id, name) VALUES (1, 1, 'one'), (2, 1, 'two');
         INSERT INTO orders (company_id, customer_id, placed_at) VALUES (1, 2, now());",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let hidra = with_logins(&db).await;
    let snapshot = catalog(&mut admin).await;

    // Values that are no tenant ids, a table without the column.
    let found = problems(
        hidra
            .adopt_split(AdoptSplit::new("company_id", ["customers", "plans"]))
            .await
            .unwrap_err(),
    );
    mentions(&found, "table `public.plans` has no column `company_id`");
    let found = problems(
        hidra
            .adopt_split(AdoptSplit::new("company_id", ["customers"]))
            .await
            .unwrap_err(),
    );
    mentions(&found, "do not make valid tenant ids");
    // An email two companies share, an order of company 1 for a customer
    // of company 2.
    let found = problems(hidra.adopt_split(split()).await.unwrap_err());
    mentions(&found, "emails used by more than one user (ada@a.test)");
    let found = problems(
        hidra
            .adopt_split(AdoptSplit::new("company_id", APP_TABLES).id_prefix("company-"))
            .await
            .unwrap_err(),
    );
    mentions(
        &found,
        "1 rows of `orders` reference rows of `customers` with another `company_id`",
    );
    // Tenant migrations without a column the shared table has.
    let lossy = connect(
        &db,
        Migrations::new().push(
            "app",
            app_ddl(false).replace("name TEXT NOT NULL, email CITEXT", "name TEXT NOT NULL"),
        ),
    )
    .await;
    let found = problems(
        lossy
            .adopt_split(AdoptSplit::new("company_id", ["customers"]).id_prefix("c"))
            .await
            .unwrap_err(),
    );
    mentions(&found, "table `customers` lacks column(s) email");
    assert_eq!(catalog(&mut admin).await, snapshot);
}
