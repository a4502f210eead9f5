//! Tenant migrations: checksums, failure isolation, concurrent runners,
//! resumability, fast provisioning and the warm pool.

mod common;

use std::sync::Arc;

use common::*;
use hidra::{Error, Hidra, HidraBuilder, Migrations, NewTenant, Tenant};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const REFERENCE_SCHEMA: &str = include_str!("../../../bench/reference_schema.sql");
const REFERENCE_MIGRATION: &str = include_str!("../../../bench/reference_migration.sql");

fn v1() -> Migrations {
    Migrations::new().push(
        "counter",
        "CREATE TABLE applied (version int NOT NULL, at timestamptz DEFAULT now());",
    )
}

fn v2() -> Migrations {
    v1().push(
        "loyalty",
        "CREATE TABLE loyalty (id int PRIMARY KEY); INSERT INTO applied (version) VALUES (2);",
    )
}

fn v3() -> Migrations {
    v2().push("points", "ALTER TABLE loyalty ADD COLUMN points int NOT NULL DEFAULT 0; INSERT INTO applied (version) VALUES (3);")
}

async fn hidra_with(ctx: &Ctx, migrations: Migrations, pool: u32) -> Hidra {
    builder_with(migrations, pool)
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap()
}

fn builder_with(migrations: Migrations, pool: u32) -> HidraBuilder {
    Hidra::builder()
        .tenant_migrations(migrations)
        .max_connections(pool)
}

async fn provision_n(h: &Hidra, prefix: &str, n: usize) -> Vec<Tenant> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            h.provision(NewTenant::new(id(&format!("{prefix}{i}"))))
                .await
                .unwrap(),
        );
    }
    out
}

async fn scalar_i64(h: &Hidra, t: &Tenant, sql: &'static str) -> i64 {
    let mut conn = h.acquire(t).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

async fn recorded_version(h: &Hidra, schema: &str) -> Option<i64> {
    let mut conn = h.acquire_shared().await.unwrap();
    sqlx::query_scalar("SELECT version FROM hidra.schema_versions WHERE schema_name = $1")
        .bind(schema)
        .fetch_optional(&mut *conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn provisioning_records_history_and_a_noop_run_changes_nothing() {
    let ctx = setup_with(builder_with(v3(), 4)).await;
    let h = &ctx.hidra;
    let tenants = provision_n(h, "t", 3).await;
    for t in &tenants {
        let n = scalar_i64(h, t, "SELECT count(*) FROM _hidra_migrations").await;
        assert_eq!(n, 3);
        let checksums_ok = {
            let mut conn = h.acquire(t).await.unwrap();
            let rows: Vec<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT version, checksum FROM _hidra_migrations ORDER BY version")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            rows.iter()
                .zip(v3().iter())
                .all(|((v, c), m)| *v == m.version && *c == m.checksum)
        };
        assert!(checksums_ok);
        assert_eq!(recorded_version(h, &t.placement.schema).await, Some(3));
    }
    let summary = h.migrator().run().await.unwrap();
    assert!(summary.is_success(), "{summary}");
    assert_eq!((summary.migrated.len(), summary.current), (0, 3));
    let status = h.migration_status().await.unwrap();
    assert_eq!(status.len(), 3);
    assert!(
        status
            .iter()
            .all(|s| s.version == 3 && s.pending == 0 && s.problem.is_none())
    );
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn pending_migrations_apply_once_and_dry_run_applies_nothing() {
    let ctx = setup_with(builder_with(v1(), 4)).await;
    let tenants = provision_n(&ctx.hidra, "t", 5).await;
    let h3 = hidra_with(&ctx, v3(), 4).await;

    let plan = h3.migrator().dry_run(true).run().await.unwrap();
    assert!(plan.dry_run);
    assert_eq!(plan.migrated.len(), 5);
    assert!(plan.migrated.iter().all(|m| (m.from, m.to) == (1, 3)));
    for t in &tenants {
        assert_eq!(recorded_version(&h3, &t.placement.schema).await, Some(1));
    }
    let status = h3.migration_status().await.unwrap();
    assert!(status.iter().all(|s| s.version == 1 && s.pending == 2));

    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let summary = h3
        .migrator()
        .concurrency(3)
        .on_progress(move |p| sink.lock().unwrap().push((p.done, p.total)))
        .run()
        .await
        .unwrap();
    assert!(summary.is_success(), "{summary}");
    assert_eq!(summary.migrated.len(), 5);
    let mut seen = events.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, (1..=5).map(|d| (d, 5)).collect::<Vec<_>>());
    for t in &tenants {
        assert_eq!(scalar_i64(&h3, t, "SELECT count(*) FROM applied").await, 2);
        assert_eq!(
            scalar_i64(&h3, t, "SELECT max(version) FROM _hidra_migrations").await,
            3
        );
        assert_eq!(recorded_version(&h3, &t.placement.schema).await, Some(3));
    }
    // Run again: nothing to do.
    let again = h3.migrator().run().await.unwrap();
    assert_eq!((again.migrated.len(), again.current), (0, 5));
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn an_edited_migration_is_reported_never_rerun() {
    let ctx = setup_with(builder_with(v2(), 4)).await;
    let tenants = provision_n(&ctx.hidra, "t", 2).await;
    let edited = Migrations::new()
        .push("counter", "CREATE TABLE applied (version bigint NOT NULL);")
        .push("loyalty", "CREATE TABLE loyalty (id int PRIMARY KEY);")
        .push("more", "CREATE TABLE more (id int);");
    let h = hidra_with(&ctx, edited, 4).await;
    let summary = h.migrator().run().await.unwrap();
    assert!(!summary.is_success());
    assert_eq!(summary.migrated.len(), 0);
    assert_eq!(summary.failed.len(), 2);
    for f in &summary.failed {
        match &f.error {
            Error::ChecksumMismatch { detail, .. } => {
                assert!(
                    detail.contains("migration 1 (counter) was edited"),
                    "{detail}"
                )
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
    }
    assert!(
        summary.to_string().contains("checksum mismatch"),
        "{summary}"
    );
    for t in &tenants {
        assert_eq!(recorded_version(&h, &t.placement.schema).await, Some(2));
        let mut conn = h.acquire(t).await.unwrap();
        let more: Option<String> = sqlx::query_scalar("SELECT to_regclass('more')::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(more, None, "nothing may run on a mismatching schema");
    }
    let status = h.migration_status().await.unwrap();
    assert!(status.iter().all(|s| s.problem.is_some()));
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn one_failing_tenant_does_not_stop_the_others_and_a_rerun_finishes_it() {
    let ctx = setup_with(builder_with(v1(), 4)).await;
    let tenants = provision_n(&ctx.hidra, "t", 8).await;
    // A conflicting object in one tenant.
    let mut conn = ctx.hidra.acquire(&tenants[5]).await.unwrap();
    sqlx::raw_sql("CREATE TABLE loyalty (something_else text)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    let h = hidra_with(&ctx, v3(), 4).await;
    let summary = h.migrator().run().await.unwrap();
    assert!(!summary.is_success());
    assert_eq!(summary.migrated.len(), 7);
    assert_eq!(summary.failed.len(), 1);
    let failure = &summary.failed[0];
    assert_eq!(failure.target.tenant.as_ref().unwrap().as_str(), "t5");
    match &failure.error {
        Error::MigrationFailed { migration, .. } => assert_eq!(migration, "2 (loyalty)"),
        other => panic!("{other:?}"),
    }
    assert_eq!(failure.error.sqlstate().as_deref(), Some("42P07"));
    // The failed tenant is untouched: still at 1, nothing half-applied.
    assert_eq!(
        recorded_version(&h, &tenants[5].placement.schema).await,
        Some(1)
    );
    assert_eq!(
        scalar_i64(&h, &tenants[5], "SELECT count(*) FROM applied").await,
        0
    );
    assert_eq!(
        scalar_i64(
            &h,
            &tenants[5],
            "SELECT max(version) FROM _hidra_migrations"
        )
        .await,
        1
    );

    // Fix and re-run: only the failed tenant is migrated.
    let mut conn = h.acquire(&tenants[5]).await.unwrap();
    sqlx::raw_sql("DROP TABLE loyalty")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let rerun = h.migrator().run().await.unwrap();
    assert!(rerun.is_success(), "{rerun}");
    assert_eq!(rerun.migrated.len(), 1);
    assert_eq!(rerun.current, 7);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_runners_apply_each_migration_exactly_once() {
    let ctx = setup_with(builder_with(v1(), 6)).await;
    let tenants = provision_n(&ctx.hidra, "t", 50).await;
    let a = hidra_with(&ctx, v3(), 6).await;
    let b = hidra_with(&ctx, v3(), 6).await;
    let (ra, rb) = tokio::join!(
        a.migrator().concurrency(5).run(),
        b.migrator().concurrency(5).run()
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.is_success(), "{ra}");
    assert!(rb.is_success(), "{rb}");
    // Every tenant was migrated by exactly one runner (the other found it done).
    assert_eq!(ra.migrated.len() + rb.migrated.len(), 50, "{ra}\n{rb}");
    for t in &tenants {
        assert_eq!(
            scalar_i64(&a, t, "SELECT count(*) FROM applied").await,
            2,
            "{}",
            t.id
        );
        assert_eq!(
            scalar_i64(&a, t, "SELECT count(*) FROM _hidra_migrations").await,
            3
        );
    }
    ctx.db.drop_now().await.unwrap();
}

/// Sessions of the test database waiting for a lock.
const WAITING_FOR_A_LOCK: &str = "SELECT count(*) FROM pg_locks l \
     JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE NOT l.granted AND a.datname = current_database()";

/// Client sessions of the test database, besides the observer's own, running
/// a statement or inside a transaction.
const BUSY: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() \
     AND backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'";

#[tokio::test]
async fn a_cancelled_run_leaves_consistent_schemas_and_resumes() {
    let slow = v1().push(
        "slow",
        "CREATE TABLE loyalty (id int PRIMARY KEY); INSERT INTO applied (version) VALUES (2); SELECT pg_sleep(0.05);",
    );
    let ctx = setup_with(builder_with(v1(), 3)).await;
    let tenants = provision_n(&ctx.hidra, "t", 30).await;
    let h = hidra_with(&ctx, slow, 3).await;
    // Three tenants in the middle of the list have their `applied` table
    // locked: the run (two tenants at a time) stops with both runners inside
    // a migration of a locked tenant, after some tenants and before others
    // (at least the third locked one). It is cut off there.
    let locked: Vec<String> = tenants
        .iter()
        .filter(|t| ["t15", "t16", "t17"].contains(&t.id.as_str()))
        .map(|t| format!("{}.applied", t.placement.schema))
        .collect();
    assert_eq!(locked.len(), 3);
    let mut locker = PgConnection::connect_with(&ctx.db.connect_options())
        .await
        .unwrap();
    let mut observer = PgConnection::connect_with(&ctx.db.connect_options())
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "LOCK TABLE {} IN SHARE MODE",
        locked.join(", ")
    )))
    .execute(&mut locker)
    .await
    .unwrap();
    let mut run = Box::pin(h.migrator().concurrency(2).run());
    tokio::select! {
        r = &mut run => panic!("the run finished although three tenants were locked: {r:?}"),
        () = wait_for_count(
            &mut observer,
            "both runners to wait for the locked tenants",
            WAITING_FOR_A_LOCK,
            |n| n == 2,
        ) => {}
    }
    drop(run);
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut locker)
        .await
        .unwrap();
    // Let the statements in flight finish on the server.
    wait_for_count(
        &mut observer,
        "the cut-off migrations to end on the server",
        BUSY,
        |n| n == 0,
    )
    .await;

    let mut done = 0;
    for t in &tenants {
        let recorded = recorded_version(&h, &t.placement.schema).await.unwrap();
        let applied = scalar_i64(&h, t, "SELECT count(*) FROM applied").await;
        let history = scalar_i64(&h, t, "SELECT max(version) FROM _hidra_migrations").await;
        // Each tenant is entirely before or entirely after the migration.
        assert_eq!(recorded, history, "{}", t.id);
        assert_eq!(applied, if recorded == 2 { 1 } else { 0 }, "{}", t.id);
        done += usize::from(recorded == 2);
    }
    assert!(
        done > 0,
        "the run was cut off before any tenant was migrated: did it start with the locked ones?"
    );
    assert!(
        done < 30,
        "the run was not cut off: {done} tenants migrated"
    );

    let resumed = h.migrator().run().await.unwrap();
    assert!(resumed.is_success(), "{resumed}");
    assert_eq!(resumed.migrated.len(), 30 - done);
    assert_eq!(resumed.current, done);
    for t in &tenants {
        assert_eq!(scalar_i64(&h, t, "SELECT count(*) FROM applied").await, 1);
    }
    locker.close().await.unwrap();
    observer.close().await.unwrap();
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_no_transaction_migration_runs_on_its_own() {
    let ctx = setup_with(builder_with(v2(), 4)).await;
    let tenants = provision_n(&ctx.hidra, "t", 3).await;
    let with_index = v2()
        .push(
            "concurrent index",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY loyalty_id_idx ON loyalty (id)",
        )
        .push("after", "INSERT INTO applied (version) VALUES (4);");
    let h = hidra_with(&ctx, with_index, 4).await;
    let summary = h.migrator().run().await.unwrap();
    assert!(summary.is_success(), "{summary}");
    assert_eq!(summary.migrated.len(), 3);
    for t in &tenants {
        assert_eq!(
            scalar_i64(&h, t, "SELECT count(*) FROM pg_indexes WHERE indexname = 'loyalty_id_idx' AND schemaname = current_schema()").await,
            1
        );
        assert_eq!(
            scalar_i64(&h, t, "SELECT count(*) FROM _hidra_migrations").await,
            4
        );
        assert_eq!(recorded_version(&h, &t.placement.schema).await, Some(4));
    }
    // The pool is clean afterwards: no session search_path or lock left.
    let mut conn = h.acquire_shared().await.unwrap();
    // pg_locks is the whole server's: count this test database's only.
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(locks, 0);
    drop(conn);

    // New tenants get it too: provisioning commits them as `provisioning`, the
    // runner applies the rest, then they become active.
    let fresh = h.provision(NewTenant::new(id("fresh"))).await.unwrap();
    assert_eq!(fresh.status, hidra::TenantStatus::Active);
    assert_eq!(
        scalar_i64(&h, &fresh, "SELECT count(*) FROM _hidra_migrations").await,
        4
    );
    assert_eq!(
        scalar_i64(&h, &fresh, "SELECT count(*) FROM applied").await,
        2
    );
    assert_eq!(recorded_version(&h, "tenant_fresh").await, Some(4));

    // And a failure after the first commit undoes everything.
    let broken = hidra_with(
        &ctx,
        v2().push(
            "broken index",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY nope_idx ON no_such_table (id)",
        ),
        4,
    )
    .await;
    let err = broken
        .provision(NewTenant::new(id("doomed")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MigrationFailed { .. }), "{err:?}");
    assert!(!schemas(&h).await.contains(&"tenant_doomed".to_string()));
    assert!(!registry_ids(&h).await.contains(&"doomed".to_string()));
    assert_eq!(recorded_version(&h, "tenant_doomed").await, None);
    ctx.db.drop_now().await.unwrap();
}

/// A description of a schema from the catalog, with its name replaced, that two
/// equal schemas share: tables, columns, types, defaults, constraints, indexes,
/// sequences and views.
async fn describe(h: &Hidra, schema: &str) -> Vec<String> {
    let mut conn = h.acquire_shared().await.unwrap();
    let rows: Vec<String> = sqlx::query_scalar(
        r#"
        SELECT 'table ' || c.relname || ' ' || c.relkind::text
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'v', 'S', 'i', 'p', 'm')
        UNION ALL
        SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || ' notnull=' || a.attnotnull || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v')
        UNION ALL
        SELECT 'constraint ' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1
        UNION ALL
        SELECT 'index ' || indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = $1
        UNION ALL
        SELECT 'sequence ' || sequencename || ' ' || data_type || ' ' || start_value || ' ' || increment_by
          FROM pg_sequences WHERE schemaname = $1
        UNION ALL
        SELECT 'view ' || viewname || ' ' || definition FROM pg_views WHERE schemaname = $1
        "#,
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut rows: Vec<String> = rows
        .into_iter()
        .map(|r| r.replace(schema, "<schema>"))
        .collect();
    rows.sort();
    rows
}

fn reference() -> Migrations {
    Migrations::new()
        .push("reference schema", REFERENCE_SCHEMA)
        .push("reference migration", REFERENCE_MIGRATION)
}

#[tokio::test]
async fn fast_provisioned_schema_equals_migrations_applied_one_by_one() {
    let ctx = setup_with(builder_with(reference(), 4)).await;
    // Fast path: every migration in one batch at provisioning.
    let fast = ctx
        .hidra
        .provision(NewTenant::new(id("fast")))
        .await
        .unwrap();
    // Slow path: provisioned at version 1, then migrated to 2 by the runner.
    let first_only = hidra_with(
        &ctx,
        Migrations::new().push("reference schema", REFERENCE_SCHEMA),
        4,
    )
    .await;
    let slow = first_only
        .provision(NewTenant::new(id("slow")))
        .await
        .unwrap();
    let summary = ctx.hidra.migrator().run().await.unwrap();
    assert_eq!(summary.migrated.len(), 1, "{summary}");
    // From the warm pool.
    let warm = Hidra::builder()
        .tenant_migrations(reference())
        .warm_pool(1)
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    assert_eq!(warm.top_up_spares().await.unwrap(), 1);
    let from_pool = warm.provision(NewTenant::new(id("pooled"))).await.unwrap();
    assert_eq!(warm.warm_pool_status().await.unwrap().spares, 0);

    let a = describe(&ctx.hidra, &fast.placement.schema).await;
    let b = describe(&ctx.hidra, &slow.placement.schema).await;
    let c = describe(&ctx.hidra, &from_pool.placement.schema).await;
    assert!(
        a.len() > 80,
        "the description should cover the whole schema: {a:#?}"
    );
    assert!(a.iter().any(|r| r.contains("loyalty_points")));
    assert!(a.iter().any(|r| r.starts_with("view open_orders")));
    assert_eq!(a, b);
    assert_eq!(a, c);
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn the_warm_pool_is_claimed_once_per_tenant_and_migrated_like_tenants() {
    let ctx = setup_with(builder_with(v2(), 8).warm_pool(3)).await;
    let h = &ctx.hidra;
    assert_eq!(h.top_up_spares().await.unwrap(), 3);
    assert_eq!(h.top_up_spares().await.unwrap(), 0);
    // A new migration: spares are brought up to date by the runner.
    let h3 = Hidra::builder()
        .tenant_migrations(v3())
        .warm_pool(3)
        .max_connections(8)
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    assert_eq!(h3.warm_pool_status().await.unwrap().ready, 0);
    let summary = h3.migrator().run().await.unwrap();
    assert_eq!(summary.migrated.len(), 3, "{summary}");
    assert!(summary.migrated.iter().all(|m| m.target.tenant.is_none()));
    assert_eq!(h3.warm_pool_status().await.unwrap().ready, 3);

    // Concurrent sign-ups each get their own schema.
    let mut tasks = Vec::new();
    for i in 0..5 {
        let h3 = h3.clone();
        tasks.push(tokio::spawn(async move {
            h3.provision(NewTenant::new(id(&format!("s{i}"))))
                .await
                .unwrap()
        }));
    }
    let mut schemas_seen = std::collections::HashSet::new();
    for t in tasks {
        let t = t.await.unwrap();
        assert!(schemas_seen.insert(t.placement.schema.clone()));
        assert_eq!(scalar_i64(&h3, &t, "SELECT count(*) FROM applied").await, 2);
        assert_eq!(recorded_version(&h3, &t.placement.schema).await, Some(3));
    }
    assert_eq!(h3.warm_pool_status().await.unwrap().spares, 0);
    let all = schemas(&h3).await;
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(all.iter().all(|s| s.starts_with("tenant_s")), "{all:?}");
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn shared_migrations_apply_once_in_order_and_detect_edits() {
    let db = hidra::testing::TestDatabase::create().await.unwrap();
    let registry = hidra::RegistryTable::default().ddl();
    let shared = Migrations::new()
        .push("registry", registry.clone())
        .push("lookups", "CREATE TABLE public.plans (name TEXT PRIMARY KEY); INSERT INTO public.plans VALUES ('free');");
    let h = Hidra::builder()
        .shared_migrations(shared.clone())
        .tenant_migrations(v1())
        .connect_with(db.connect_options())
        .await
        .unwrap();
    // Status reads without creating anything.
    let before = h.shared_migration_status().await.unwrap();
    assert_eq!((before.version, before.pending.clone()), (0, vec![1, 2]));
    assert_eq!(before.problem, None);
    let mut conn = h.acquire_shared().await.unwrap();
    let internal: bool = sqlx::query_scalar("SELECT to_regnamespace('hidra') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert!(
        !internal,
        "reading the status must not create hidra's schema"
    );
    // Two processes starting at once: the lock makes one of them apply everything.
    let h2 = h.clone();
    let (a, b) = tokio::join!(h.migrate_shared(), h2.migrate_shared());
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut applied = [a.applied.clone(), b.applied.clone()].concat();
    applied.sort();
    assert_eq!(applied, vec![1, 2]);
    assert_eq!((a.version, b.version), (2, 2));
    // The registry now exists: tenants can be provisioned.
    h.provision(NewTenant::new(id("after-init"))).await.unwrap();
    assert_eq!(h.migrate_shared().await.unwrap().applied, Vec::<i64>::new());

    let edited = Hidra::builder()
        .shared_migrations(
            Migrations::new()
                .push("registry", registry)
                .push("lookups", "CREATE TABLE public.plans (name TEXT);"),
        )
        .connect_with(db.connect_options())
        .await
        .unwrap();
    let after = h.shared_migration_status().await.unwrap();
    assert_eq!(
        (after.version, after.pending, after.problem),
        (2, vec![], None)
    );
    let status = edited.shared_migration_status().await.unwrap();
    assert!(
        status
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("2 (lookups) was edited")),
        "{status:?}"
    );
    let err = edited.migrate_shared().await.unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("2 (lookups) was edited"), "{err}");
    db.drop_now().await.unwrap();
}

#[tokio::test]
async fn deprovisioning_forgets_the_schema_version() {
    let ctx = setup_with(builder_with(v1(), 2)).await;
    let t = ctx
        .hidra
        .provision(NewTenant::new(id("gone")))
        .await
        .unwrap();
    assert_eq!(
        recorded_version(&ctx.hidra, &t.placement.schema).await,
        Some(1)
    );
    ctx.hidra
        .deprovision(&t.id, hidra::Confirmation::of(&t.id))
        .await
        .unwrap();
    assert_eq!(
        recorded_version(&ctx.hidra, &t.placement.schema).await,
        None
    );
    let summary = ctx.hidra.migrator().run().await.unwrap();
    assert_eq!(
        (
            summary.migrated.len(),
            summary.current,
            summary.failed.len()
        ),
        (0, 0, 0)
    );
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_shared_migration_numbered_below_the_applied_ones_is_reported_not_skipped() {
    let db = hidra::testing::TestDatabase::create().await.unwrap();
    let all = Migrations::new()
        .push("one", "CREATE TABLE public.g1 (x INT)")
        .push("two", "CREATE TABLE public.g2 (x INT)")
        .push("three", "CREATE TABLE public.g3 (x INT)");
    let list: Vec<hidra::migrate::Migration> = all.iter().cloned().collect();
    // A branch that shipped 1 and 3 first.
    let gapped = Migrations::from_list(vec![list[0].clone(), list[2].clone()]).unwrap();
    let early = Hidra::builder()
        .shared_migrations(gapped)
        .connect_with(db.connect_options())
        .await
        .unwrap();
    assert_eq!(early.migrate_shared().await.unwrap().applied, vec![1, 3]);
    early.close().await;
    // Then 2 arrives: it would never run, so both calls say so.
    let h = Hidra::builder()
        .shared_migrations(all)
        .connect_with(db.connect_options())
        .await
        .unwrap();
    let status = h.shared_migration_status().await.unwrap();
    assert_eq!((status.version, status.pending.clone()), (3, vec![]));
    assert!(
        status
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("migration 2 (two)")),
        "{status:?}"
    );
    let err = h.migrate_shared().await.unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("migration 2 (two)"), "{err}");
    h.close().await;
    db.drop_now().await.unwrap();
}

#[tokio::test]
async fn the_history_is_written_in_the_tenants_schema_even_if_a_migration_moves_search_path() {
    let migrations = Migrations::new()
        .push("table", "CREATE TABLE a (x INT)")
        .push("wanders", "SET LOCAL search_path TO public");
    let ctx = setup_with(builder_with(migrations.clone(), 2)).await;
    let h = &ctx.hidra;
    h.provision(NewTenant::new(id("wanderer"))).await.unwrap();
    let mut conn = h.acquire_shared().await.unwrap();
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenant_wanderer._hidra_migrations")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(recorded, 2);
    let stray: bool =
        sqlx::query_scalar("SELECT to_regclass('public._hidra_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert!(!stray, "no history outside the tenant's schema");
    drop(conn);
    // One more migration, through the runner: recorded in the same place.
    let h2 = hidra_with(&ctx, migrations.push("more", "CREATE TABLE b (x INT)"), 2).await;
    assert!(h2.migrator().run().await.unwrap().is_success());
    assert_eq!(recorded_version(&h2, "tenant_wanderer").await, Some(3));
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_failed_migration_is_reported_at_its_own_line() {
    let ctx = setup(4).await;
    let broken = v1().push(
        "broken",
        "CREATE TABLE fine (id int);\n-- the next statement is wrong\nSELECT * FROM no_such_table;\n",
    );
    let expect_line_3 = |err: &Error| match err {
        Error::MigrationFailed {
            migration, line, ..
        } => {
            assert_eq!(
                (migration.as_str(), *line),
                ("2 (broken)", Some(3)),
                "{err}"
            );
            assert!(err.to_string().contains("2 (broken), line 3,"), "{err}");
        }
        other => panic!("expected MigrationFailed, got {other:?}"),
    };
    // In the fan-out (a batch of Hidra's statements around the migration)...
    let h1 = hidra_with(&ctx, v1(), 4).await;
    provision_n(&h1, "t", 1).await;
    let h2 = hidra_with(&ctx, broken.clone(), 4).await;
    let summary = h2.migrator().run().await.unwrap();
    assert_eq!(summary.failed.len(), 1, "{summary}");
    expect_line_3(&summary.failed[0].error);
    // ...and in provisioning (after the registry row, in the same batch).
    let err = h2.provision(NewTenant::new(id("fresh"))).await.unwrap_err();
    expect_line_3(&err);
    // A migration set with a no-transaction one runs it on its own.
    let alone = v1().push("alone", "-- no-transaction\n\nSELECT * FROM no_such_table;");
    let h3 = hidra_with(&ctx, alone, 4).await;
    let summary = h3.migrator().run().await.unwrap();
    match &summary.failed[0].error {
        Error::MigrationFailed { line, .. } => assert_eq!(*line, Some(3)),
        other => panic!("expected MigrationFailed, got {other:?}"),
    }
}

/// The history's shape: relations, column storage, indexes.
async fn history_shape(h: &Hidra, schema: &str) -> (bool, i64, Vec<(String, String)>) {
    let mut conn = h.acquire_shared().await.unwrap();
    let table = format!("\"{schema}\"._hidra_migrations");
    let (toast, indexes): (bool, i64) = sqlx::query_as(
        "SELECT c.reltoastrelid <> 0, (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) \
         FROM pg_class c WHERE c.oid = $1::regclass",
    )
    .bind(&table)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT attname::text, attstorage::text FROM pg_attribute \
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attname",
    )
    .bind(&table)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    (toast, indexes, columns)
}

#[tokio::test]
async fn an_internal_schema_without_the_claim_function_gets_it_from_the_next_run() {
    let ctx = setup_with(builder_with(v1(), 2)).await;
    let h = &ctx.hidra;
    let tenants = provision_n(h, "claim", 3).await;
    let mut admin = PgConnection::connect_with(&ctx.db.connect_options())
        .await
        .unwrap();
    sqlx::query("DROP FUNCTION hidra.claim_version(bigint, text, bigint, bigint, bytea)")
        .execute(&mut admin)
        .await
        .unwrap();
    assert!(!h.internal_schema_status().await.unwrap().is_complete());
    let v2 = hidra_with(&ctx, v2(), 2).await;
    let summary = v2.migrator().run().await.unwrap();
    assert!(summary.is_success(), "{summary}");
    assert_eq!(summary.migrated.len(), tenants.len(), "{summary}");
    assert!(h.internal_schema_status().await.unwrap().is_complete());
    for t in &tenants {
        assert_eq!(recorded_version(&v2, &t.placement.schema).await, Some(2));
    }
    v2.close().await;
    ctx.db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_new_history_is_one_relation_and_an_older_one_still_migrates() {
    // The longest description allowed fits the history row uncompressed.
    let long = v1().push(
        "d".repeat(1000),
        "CREATE TABLE loyalty (id int PRIMARY KEY);",
    );
    let ctx = setup_with(builder_with(long.clone(), 4)).await;
    let h = &ctx.hidra;
    // The one-batch path, and the runner's path for a schema without history.
    let fast = h.provision(NewTenant::new(id("fast"))).await.unwrap();
    let expected = vec![
        ("applied_at".to_owned(), "p".to_owned()),
        ("checksum".to_owned(), "p".to_owned()),
        ("description".to_owned(), "p".to_owned()),
        ("duration_ms".to_owned(), "p".to_owned()),
        ("version".to_owned(), "p".to_owned()),
    ];
    assert_eq!(
        history_shape(h, &fast.placement.schema).await,
        (false, 0, expected.clone()),
        "no TOAST table, no index, every column stored PLAIN"
    );
    assert_eq!(
        scalar_i64(
            h,
            &fast,
            "SELECT max(length(description))::bigint FROM _hidra_migrations"
        )
        .await,
        1000
    );

    // A schema made by an earlier version: a keyed, TOASTed history.
    let v1_only = hidra_with(&ctx, v1(), 4).await;
    let old = v1_only.provision(NewTenant::new(id("old"))).await.unwrap();
    {
        let mut conn = h.acquire(&old).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE keep AS SELECT * FROM _hidra_migrations;
             DROP TABLE _hidra_migrations;
             CREATE TABLE _hidra_migrations (
                 version     BIGINT PRIMARY KEY,
                 description TEXT NOT NULL,
                 checksum    BYTEA NOT NULL,
                 applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
                 duration_ms BIGINT NOT NULL
             );
             INSERT INTO _hidra_migrations (version, description, checksum, applied_at, duration_ms)
                 SELECT version, description, checksum, applied_at, duration_ms FROM keep;
             DROP TABLE keep;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let (toast, indexes, _) = history_shape(h, &old.placement.schema).await;
    assert!(toast && indexes == 1);
    let summary = h.migrator().run().await.unwrap();
    assert!(summary.is_success(), "{summary}");
    assert_eq!(
        (summary.migrated.len(), summary.current),
        (1, 1),
        "{summary}"
    );
    assert_eq!(
        scalar_i64(h, &old, "SELECT count(*) FROM _hidra_migrations").await,
        2
    );
    // Its table is left as it was.
    let (toast, indexes, _) = history_shape(h, &old.placement.schema).await;
    assert!(toast && indexes == 1);
    let status = h.migration_status().await.unwrap();
    assert!(
        status.iter().all(|s| s.version == 2 && s.problem.is_none()),
        "{status:?}"
    );
    ctx.db.drop_now().await.unwrap();
}
