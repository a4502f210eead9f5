//! Tenants spread over several PostgreSQL servers: three throw-away clusters
//! started by the harness are registered; tenants are placed on them by the
//! default policy and by an explicit choice, for every strategy; their
//! connections reach their own server (checked on the servers themselves);
//! provisioning is all or nothing across two servers, also when its future
//! is cancelled; deprovisioning leaves nothing on the server; a fan-out
//! migration with one server stopped migrates the others, names the stopped
//! server's tenants, and a rerun finishes them.

mod common;

use std::time::Duration;

use common::*;
use hidra::testing::TempCluster;
use hidra::{
    BoxError, Error, FewestTenants, Hidra, Migrations, NewServer, NewTenant, Seed, ServerName,
    ServerState, Strategy, Tenant,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const NOTES_V1: &str = "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);";
const NOTES_V2: &str = "ALTER TABLE notes ADD COLUMN pinned BOOLEAN NOT NULL DEFAULT false;";

fn name(s: &str) -> ServerName {
    ServerName::new(s).unwrap()
}

struct Fleet {
    ctx: Ctx,
    servers: Vec<(ServerName, TempCluster)>,
}

impl Fleet {
    fn cluster(&self, server: &str) -> &TempCluster {
        &self
            .servers
            .iter()
            .find(|(n, _)| n.as_str() == server)
            .unwrap()
            .1
    }

    async fn admin(&self, server: &str) -> PgConnection {
        PgConnection::connect(self.cluster(server).url())
            .await
            .unwrap()
    }

    /// Whether `schema` exists on `server` (`None`: the control server).
    async fn has_schema(&self, server: Option<&str>, schema: &str) -> bool {
        let mut conn = match server {
            Some(s) => self.admin(s).await,
            None => PgConnection::connect(self.ctx.db.url()).await.unwrap(),
        };
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    async fn has_database(&self, server: &str, database: &str) -> bool {
        let mut conn = self.admin(server).await;
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}

/// A control database, and three registered servers (`s1`, `s2`, `s3`),
/// each with the row-level tables and an ordinary role to serve them.
async fn fleet(builder: hidra::HidraBuilder) -> Fleet {
    let ctx = setup_with(builder).await;
    let mut servers = Vec::new();
    for n in ["s1", "s2", "s3"] {
        let (cluster, url) = hidra_test_support::app_server(&format!(
            "CREATE TABLE public.notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);
             {}",
            hidra::rls::tenant_table_sql("public.notes").unwrap()
        ))
        .await;
        ctx.hidra
            .servers()
            .add(NewServer::new(name(n), url))
            .await
            .unwrap();
        servers.push((name(n), cluster));
    }
    Fleet { ctx, servers }
}

/// A prefix for tenant databases no other test uses: databases on the
/// shared control server are global.
fn database_prefix() -> String {
    format!("so{:08x}_", rand::random::<u32>())
}

/// A schema tenant `tid` on `server` with `notes` notes.
async fn schema_tenant_with_notes(hidra: &Hidra, tid: &str, server: &str, notes: i64) -> Tenant {
    let t = hidra
        .provision(NewTenant::new(id(tid)).on_server(name(server)))
        .await
        .unwrap();
    let mut conn = hidra.acquire(&t).await.unwrap();
    sqlx::query("INSERT INTO notes (body) SELECT 'n' || g FROM generate_series(1, $1) g")
        .bind(notes)
        .execute(&mut conn)
        .await
        .unwrap();
    t
}

fn builder() -> hidra::HidraBuilder {
    Hidra::builder()
        .database_prefix(database_prefix())
        .tenant_migrations(Migrations::new().push("notes", NOTES_V1))
        .max_connections(4)
        .placement(FewestTenants::excluding_control())
}

/// Writes a note through the tenant's own connection and transaction, and
/// reads both back.
async fn write_and_read(hidra: &Hidra, tenant: &Tenant, body: &str) -> Vec<String> {
    let mut conn = hidra.acquire(tenant).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ($1)")
        .bind(format!("{body} (conn)"))
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let mut tx = hidra.begin(tenant).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ($1)")
        .bind(format!("{body} (tx)"))
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = hidra.acquire(tenant).await.unwrap();
    sqlx::query_scalar("SELECT body FROM notes ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// The note bodies `server` holds for a tenant, read on the server itself.
async fn notes_on(fleet: &Fleet, server: &str, tenant: &Tenant) -> Vec<String> {
    try_notes_on(fleet, server, tenant).await.unwrap()
}

/// [`notes_on`], or the error of a server without the tenant's table.
async fn try_notes_on(
    fleet: &Fleet,
    server: &str,
    tenant: &Tenant,
) -> Result<Vec<String>, sqlx::Error> {
    let p = &tenant.placement;
    let mut conn = match &p.database {
        Some(db) => {
            let base = fleet.cluster(server).url().rsplit_once('/').unwrap().0;
            let url = format!("{base}/{db}");
            PgConnection::connect(&url).await.unwrap()
        }
        None => fleet.admin(server).await,
    };
    let (table, filter) = match p.strategy {
        Strategy::RowLevel => (
            "public.notes".to_owned(),
            format!(" WHERE tenant_id = '{}'", tenant.id),
        ),
        _ => (format!("\"{}\".notes", p.schema), String::new()),
    };
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT body FROM {table}{filter} ORDER BY id"
    )))
    .fetch_all(&mut conn)
    .await
}

#[tokio::test]
async fn tenants_are_placed_over_three_servers_and_served_there() {
    let fleet = fleet(builder()).await;
    let hidra = &fleet.ctx.hidra;

    // The default policy spreads schema tenants evenly.
    let mut placed = Vec::new();
    for i in 0..6 {
        let t = hidra
            .provision(NewTenant::new(id(&format!("spread-{i}"))))
            .await
            .unwrap();
        placed.push(t);
    }
    for server in ["s1", "s2", "s3"] {
        let on: Vec<_> = placed
            .iter()
            .filter(|t| t.placement.server.as_deref() == Some(server))
            .collect();
        assert_eq!(on.len(), 2, "{server}: {placed:?}");
        for t in on {
            assert!(fleet.has_schema(Some(server), &t.placement.schema).await);
            assert!(!fleet.has_schema(None, &t.placement.schema).await);
        }
    }
    let counts: Vec<(String, u64)> = (hidra.servers().list().await.unwrap())
        .into_iter()
        .map(|s| (s.name.to_string(), s.tenants))
        .collect();
    assert_eq!(
        counts,
        [("s1".into(), 2), ("s2".into(), 2), ("s3".into(), 2)]
    );

    // An explicit choice wins over the policy, for every strategy; each
    // tenant's reads and writes land on its own server.
    for (strategy, server) in [
        (Strategy::Schema, "s2"),
        (Strategy::Database, "s3"),
        (Strategy::RowLevel, "s1"),
        (Strategy::RowLevel, "s2"),
    ] {
        let tid = format!("{strategy}-on-{server}").replace('_', "-");
        let t = hidra
            .provision(
                NewTenant::new(id(&tid))
                    .strategy(strategy)
                    .on_server(name(server)),
            )
            .await
            .unwrap();
        assert_eq!(t.placement.server.as_deref(), Some(server));
        assert_eq!(t.placement.strategy, strategy);
        let seen = write_and_read(hidra, &t, &tid).await;
        assert_eq!(seen, [format!("{tid} (conn)"), format!("{tid} (tx)")]);
        assert_eq!(notes_on(&fleet, server, &t).await, seen, "{tid}");
        // No other server holds its notes.
        for other in ["s1", "s2", "s3"].into_iter().filter(|s| *s != server) {
            match strategy {
                Strategy::Database => assert!(
                    !fleet
                        .has_database(other, t.placement.database.as_deref().unwrap())
                        .await
                ),
                Strategy::Schema => {
                    assert!(!fleet.has_schema(Some(other), &t.placement.schema).await)
                }
                _ => assert!(
                    notes_on(&fleet, other, &t).await.is_empty(),
                    "{tid} on {other}"
                ),
            }
        }
    }

    // A tenant on the control server still works as before.
    let home = hidra
        .provision(NewTenant::new(id("at-home")).on_control_server())
        .await
        .unwrap();
    assert_eq!(home.placement.server, None);
    assert_eq!(write_and_read(hidra, &home, "home").await.len(), 2);
    assert!(fleet.has_schema(None, &home.placement.schema).await);
}

#[tokio::test]
async fn servers_that_take_no_tenants_are_refused_and_deprovisioning_cleans_up() {
    let fleet = fleet(builder()).await;
    let hidra = &fleet.ctx.hidra;
    let servers = hidra.servers();
    servers
        .set_state(&name("s1"), ServerState::Draining)
        .await
        .unwrap();
    let err = hidra
        .provision(NewTenant::new(id("to-drained")).on_server(name("s1")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ServerNotActive { name, state: ServerState::Draining } if name.as_str() == "s1"),
        "{err:?}"
    );
    assert!(err.is_no_server());
    assert!(hidra.tenant(&id("to-drained")).await.unwrap().is_none());
    assert!(!fleet.has_schema(Some("s1"), "tenant_to_drained").await);

    // An unknown server is named.
    let err = hidra
        .provision(NewTenant::new(id("to-nowhere")).on_server(name("s9")))
        .await
        .unwrap_err();
    assert!(err.is_server_not_found(), "{err:?}");
    assert!(hidra.tenant(&id("to-nowhere")).await.unwrap().is_none());

    // Every active server full: the policy finds no room.
    for n in ["s2", "s3"] {
        servers
            .set_state(&name(n), ServerState::ReadOnly)
            .await
            .unwrap();
    }
    tokio::time::sleep(hidra::LOADS_TTL).await;
    let err = hidra
        .provision(NewTenant::new(id("no-room")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoServerAvailable { .. }), "{err:?}");
    for n in ["s1", "s2", "s3"] {
        servers
            .set_state(&name(n), ServerState::Active)
            .await
            .unwrap();
    }

    // Deprovisioning removes the data on the tenant's server, then its row.
    let schema = hidra
        .provision(NewTenant::new(id("gone-schema")).on_server(name("s2")))
        .await
        .unwrap();
    let database = hidra
        .provision(
            NewTenant::new(id("gone-db"))
                .strategy(Strategy::Database)
                .on_server(name("s3")),
        )
        .await
        .unwrap();
    let rows = hidra
        .provision(
            NewTenant::new(id("gone-rows"))
                .strategy(Strategy::RowLevel)
                .on_server(name("s1")),
        )
        .await
        .unwrap();
    write_and_read(hidra, &rows, "row").await;
    let db_name = database.placement.database.clone().unwrap();
    assert!(fleet.has_schema(Some("s2"), "tenant_gone_schema").await);
    assert!(fleet.has_database("s3", &db_name).await);
    for t in [&schema, &database, &rows] {
        hidra
            .deprovision(&t.id, hidra::Confirmation::of(&t.id))
            .await
            .unwrap();
        assert!(hidra.tenant(&t.id).await.unwrap().is_none());
    }
    assert!(!fleet.has_schema(Some("s2"), "tenant_gone_schema").await);
    assert!(!fleet.has_database("s3", &db_name).await);
    assert!(notes_on(&fleet, "s1", &rows).await.is_empty());
    assert_eq!(
        servers.get(&name("s2")).await.unwrap().unwrap().tenants,
        0,
        "the row is gone too"
    );
}

/// A seed that tells the test it started, then never finishes.
struct Hang(tokio::sync::mpsc::UnboundedSender<()>);

impl Seed for Hang {
    async fn seed(&self, conn: &mut PgConnection, _: &Tenant) -> Result<(), BoxError> {
        sqlx::query("INSERT INTO notes (body) VALUES ('seeded')")
            .execute(&mut *conn)
            .await?;
        let _ = self.0.send(());
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test]
async fn a_provisioning_cancelled_between_the_two_servers_leaves_nothing() {
    let fleet = fleet(builder()).await;
    let hidra = fleet.ctx.hidra.clone();
    for strategy in [Strategy::Schema, Strategy::Database, Strategy::RowLevel] {
        let tid = id(&format!("cut-{}", strategy.to_string().replace('_', "-")));
        let (tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let provision = hidra.provision(
            NewTenant::new(tid.clone())
                .strategy(strategy)
                .on_server(name("s2"))
                .setup(Hang(tx)),
        );
        tokio::select! {
            _ = provision => panic!("the seed never finishes"),
            _ = started.recv() => {}
        }
        // Cancelled with the registry row committed and the data half built
        // on s2: the row is undone by the task the provisioning left behind.
        wait_for(&format!("{tid} to be unregistered"), || async {
            hidra.tenant(&tid).await.unwrap().is_none().then_some(())
        })
        .await;
        let schema = format!("tenant_{}", tid.as_str().replace('-', "_"));
        assert!(!fleet.has_schema(Some("s2"), &schema).await, "{schema}");
        assert!(!fleet.has_database("s2", &schema).await, "{schema}");
        let mut conn = fleet.admin("s2").await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM public.notes")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows, 0);
        assert!(hidra.abandoned_provisionings().await.unwrap().is_empty());
        // The id is free again.
        hidra
            .provision(
                NewTenant::new(tid.clone())
                    .strategy(strategy)
                    .on_server(name("s2")),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_schema_already_on_the_server_is_never_dropped_by_an_undo() {
    let fleet = fleet(builder()).await;
    let hidra = &fleet.ctx.hidra;
    // A schema named like the tenant, not Hidra's, with data in it.
    let mut s2 = fleet.admin("s2").await;
    sqlx::raw_sql(
        "CREATE SCHEMA tenant_stray; CREATE TABLE tenant_stray.keep (v TEXT);
         INSERT INTO tenant_stray.keep VALUES ('precious')",
    )
    .execute(&mut s2)
    .await
    .unwrap();
    let still_there = |mut conn: PgConnection| async move {
        let kept: Vec<String> = sqlx::query_scalar("SELECT v FROM tenant_stray.keep")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(kept, ["precious"]);
    };

    // Provisioning there fails, and its undo removes the row only.
    let err = hidra
        .provision(NewTenant::new(id("stray")).on_server(name("s2")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SchemaTaken { .. }), "{err:?}");
    assert!(hidra.tenant(&id("stray")).await.unwrap().is_none());
    still_there(fleet.admin("s2").await).await;

    // A killed provisioning of that id, found by repair: the stray schema
    // has no bookkeeping row of Hidra's, so only the row goes.
    let mut control = PgConnection::connect(fleet.ctx.db.url()).await.unwrap();
    sqlx::query(
        "INSERT INTO tenants (id, name, status, strategy, schema_name, server) \
         VALUES ('stray', 'stray', 'provisioning', 'schema', 'tenant_stray', 's2')",
    )
    .execute(&mut control)
    .await
    .unwrap();
    assert_eq!(
        hidra.repair_provisioning().await.unwrap(),
        vec![id("stray")]
    );
    assert!(hidra.tenant(&id("stray")).await.unwrap().is_none());
    still_there(s2).await;
}

#[tokio::test]
async fn an_abandoned_provisioning_is_found_and_repaired() {
    let fleet = fleet(builder()).await;
    let hidra = &fleet.ctx.hidra;
    // What a process killed after building the tenant on s3 leaves: a
    // `provisioning` row nobody holds the lock of, and the schema on s3.
    let t = hidra
        .provision(NewTenant::new(id("killed")).on_server(name("s3")))
        .await
        .unwrap();
    let mut control = PgConnection::connect(fleet.ctx.db.url()).await.unwrap();
    sqlx::query("UPDATE tenants SET status = 'provisioning' WHERE id = $1")
        .bind(t.id.as_str())
        .execute(&mut control)
        .await
        .unwrap();
    // A provisioning in progress (its lock held) is not touched.
    let mut holder = PgConnection::connect(fleet.ctx.db.url()).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
        .bind(0x6869_6470_i32)
        .bind(t.id.as_str())
        .execute(&mut holder)
        .await
        .unwrap();
    assert!(hidra.abandoned_provisionings().await.unwrap().is_empty());
    assert!(hidra.repair_provisioning().await.unwrap().is_empty());
    assert!(fleet.has_schema(Some("s3"), "tenant_killed").await);
    holder.close().await.unwrap();

    // The lock goes when the holder's backend has exited, a moment after
    // the close.
    let abandoned = wait_for("the holder's lock to go", || async {
        let abandoned = hidra.abandoned_provisionings().await.unwrap();
        (!abandoned.is_empty()).then_some(abandoned)
    })
    .await;
    assert_eq!(abandoned.len(), 1);
    assert_eq!(abandoned[0].id, t.id);
    assert_eq!(
        hidra.repair_provisioning().await.unwrap(),
        vec![t.id.clone()]
    );
    assert!(hidra.tenant(&t.id).await.unwrap().is_none());
    assert!(!fleet.has_schema(Some("s3"), "tenant_killed").await);
    assert!(hidra.repair_provisioning().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_fan_out_with_one_server_stopped_migrates_the_others_and_a_rerun_finishes() {
    let mut fleet = fleet(builder()).await;
    let hidra = &fleet.ctx.hidra;
    let mut tenants = Vec::new();
    for i in 0..6 {
        tenants.push(
            hidra
                .provision(NewTenant::new(id(&format!("fan-{i}"))))
                .await
                .unwrap(),
        );
    }
    tenants.push(
        hidra
            .provision(
                NewTenant::new(id("fan-db"))
                    .strategy(Strategy::Database)
                    .on_server(name("s2")),
            )
            .await
            .unwrap(),
    );
    let v2 = Hidra::builder()
        .tenant_migrations(
            Migrations::new()
                .push("notes", NOTES_V1)
                .push("pinned", NOTES_V2),
        )
        .max_connections(4)
        .connect_with(fleet.ctx.db.connect_options())
        .await
        .unwrap();
    let on_s2: Vec<String> = tenants
        .iter()
        .filter(|t| t.placement.server.as_deref() == Some("s2"))
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(on_s2.len(), 3, "{tenants:?}");

    fleet.servers[1].1.pause().await.unwrap();
    let summary = v2.migrator().concurrency(2).run().await.unwrap();
    assert!(!summary.is_success());
    let mut failed: Vec<String> = summary
        .failed
        .iter()
        .map(|f| f.target.tenant.as_ref().unwrap().to_string())
        .collect();
    failed.sort();
    let mut expected = on_s2.clone();
    expected.sort();
    assert_eq!(failed, expected, "{summary}");
    assert!(
        summary
            .failed
            .iter()
            .all(|f| f.target.server.as_deref() == Some("s2") && f.error.is_server_failed()),
        "{summary}"
    );
    assert_eq!(summary.migrated.len(), 4, "{summary}");

    fleet.servers[1].1.resume().await.unwrap();
    // Checkouts fail fast until the handle's next probe finds s2 back
    // (within about a quarter second): rerun until then.
    let rerun = wait_for("a rerun to finish the tenants of s2", || async {
        let rerun = v2.migrator().concurrency(2).run().await.unwrap();
        if !rerun.is_success() {
            assert_eq!(rerun.migrated.len(), 0, "{rerun}");
        }
        rerun.is_success().then_some(rerun)
    })
    .await;
    assert_eq!(rerun.migrated.len(), 3, "{rerun}");
    for t in &tenants {
        let mut conn = v2.acquire(t).await.unwrap();
        let pinned: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE NOT pinned")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(pinned, 0, "{}", t.id);
    }
    v2.close().await;
}

/// What the child process of
/// [`a_provisioning_killed_with_sigkill_is_repaired_by_doctor`] is told.
const CHILD_URL: &str = "HIDRA_TEST_CHILD_CONTROL_URL";
const CHILD_STOP_AT: &str = "HIDRA_TEST_CHILD_STOP_AT";

/// Stops the whole process when provisioning reports its data committed on
/// the tenant's server: it prints `READY` and blocks the runtime's thread
/// until the parent kills it.
struct StopWhenCommitted;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StopWhenCommitted {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0.contains("tenant data committed on its server") {
            println!("READY");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[tokio::test]
#[ignore = "the child process of a_provisioning_killed_with_sigkill_is_repaired_by_doctor"]
async fn child_provisions_until_killed() {
    use tracing_subscriber::layer::SubscriberExt;
    let url = std::env::var(CHILD_URL).expect("run by the parent test");
    let stop_at = std::env::var(CHILD_STOP_AT).unwrap();
    let hidra = builder().connect(&url).await.unwrap();
    let tid = id(&format!("killed-{stop_at}"));
    let new = NewTenant::new(tid).on_server(name("s1"));
    if stop_at == "seed" {
        // Killed inside the transaction on s1, the row committed.
        let (tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let provision = hidra.provision(new.setup(Hang(tx)));
        tokio::select! {
            _ = provision => unreachable!("the seed never finishes"),
            _ = started.recv() => println!("READY"),
        }
        std::future::pending::<()>().await;
    } else {
        // Killed after the data committed on s1, before the row is active.
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with(StopWhenCommitted);
        tracing::subscriber::set_global_default(subscriber).unwrap();
        hidra.provision(new).await.unwrap();
        unreachable!("stopped before the provisioning finished");
    }
}

#[tokio::test]
async fn a_provisioning_killed_with_sigkill_is_repaired_by_doctor() {
    let fleet = fleet(builder()).await;
    let hidra = &fleet.ctx.hidra;
    for stop_at in ["seed", "committed"] {
        hidra_test_support::ChildTest::until_ready(
            "child_provisions_until_killed",
            &[(CHILD_URL, fleet.ctx.db.url()), (CHILD_STOP_AT, stop_at)],
        )
        .await
        .kill(); // SIGKILL

        let tid = id(&format!("killed-{stop_at}"));
        let schema = format!("tenant_killed_{stop_at}");
        let t = hidra
            .tenant(&tid)
            .await
            .unwrap()
            .expect("the row was committed first");
        assert_eq!(t.status, hidra::TenantStatus::Provisioning);
        assert_eq!(
            fleet.has_schema(Some("s1"), &schema).await,
            stop_at == "committed",
            "{stop_at}"
        );
        // The killed session's lock goes once its server notices.
        wait_for(&format!("{stop_at}: {tid} to be abandoned"), || async {
            let abandoned = hidra.abandoned_provisionings().await.unwrap();
            abandoned.iter().any(|a| a.id == tid).then_some(())
        })
        .await;
        assert_eq!(
            hidra.repair_provisioning().await.unwrap(),
            vec![tid.clone()]
        );
        assert!(hidra.tenant(&tid).await.unwrap().is_none());
        assert!(!fleet.has_schema(Some("s1"), &schema).await, "{stop_at}");
    }
}

/// Counts notes for `tenant` until `stop`, re-reading its record after a
/// failure; returns how many reads succeeded and the longest time it went
/// without an answer.
async fn keep_reading(
    hidra: Hidra,
    tid: hidra::TenantId,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, Duration) {
    let mut tenant = hidra.tenant(&tid).await.unwrap().unwrap();
    let (mut reads, mut longest) = (0, Duration::ZERO);
    let mut last = std::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let read = async {
            let mut conn = hidra.acquire(&tenant).await?;
            let n = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes")
                .fetch_one(&mut conn)
                .await?;
            Ok::<_, BoxError>(n)
        };
        match read.await {
            Ok(_) => {
                reads += 1;
                longest = longest.max(last.elapsed());
                last = std::time::Instant::now();
            }
            Err(_) => tenant = hidra.tenant(&tid).await.unwrap().unwrap(),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (reads, longest)
}

#[tokio::test]
async fn a_tenant_moves_between_servers_under_reads_and_writes() {
    let prefix = database_prefix();
    let fleet = fleet(builder().database_prefix(&prefix)).await;
    let hidra = &fleet.ctx.hidra;
    for (tid, strategy, from, to) in [
        ("mover", Strategy::Schema, Some("s1"), Some("s2")),
        ("db-mover", Strategy::Database, Some("s3"), None),
        ("home-mover", Strategy::Schema, None, Some("s3")),
    ] {
        let new = NewTenant::new(id(tid)).strategy(strategy);
        let new = match from {
            Some(s) => new.on_server(name(s)),
            None => new.on_control_server(),
        };
        let t = hidra.provision(new).await.unwrap();
        let before = t.clone();
        let mut conn = hidra.acquire(&t).await.unwrap();
        sqlx::query(
            "INSERT INTO notes (body) SELECT 'seed ' || g FROM generate_series(1, 20000) g",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        drop(conn);

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = tokio::spawn(keep_writing(
            hidra.clone(),
            t.id.clone(),
            "INSERT INTO notes (body) VALUES ($1)",
            stop.clone(),
        ));
        let reader = tokio::spawn(keep_reading(hidra.clone(), t.id.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let to_name = to.map(name);
        let progress = std::sync::Mutex::new(Vec::new());
        let moved = hidra
            .move_to_server_with(&t.id, to_name.as_ref(), |p| {
                progress.lock().unwrap().push((p.table.clone(), p.rows));
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (acked, _failures) = writer.await.unwrap();
        let (reads, longest) = reader.await.unwrap();

        assert_eq!(moved.tenant.placement.server.as_deref(), to, "{tid}");
        assert_eq!(moved.from.as_deref(), from);
        assert!(moved.rows >= 20_000, "{tid}: {moved:?}");
        assert!(moved.write_freeze <= moved.elapsed);
        let progress = progress.into_inner().unwrap();
        assert_eq!(progress.len(), 1, "{progress:?}");
        assert_eq!(progress[0].0, "notes");
        assert!(
            !acked.is_empty() && reads > 0,
            "{tid}: {} writes, {reads} reads",
            acked.len()
        );
        // Readers were answered throughout (the copy holds writers only).
        assert!(longest < Duration::from_secs(10), "{tid}: {longest:?}");

        // Every acknowledged write is on the new server, every seed row too,
        // and the ids go on from where they were.
        let t = hidra.tenant(&t.id).await.unwrap().unwrap();
        assert_eq!(t.placement.server.as_deref(), to);
        let mut conn = hidra.acquire(&t).await.unwrap();
        let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM notes WHERE body LIKE 'w%'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let bodies: std::collections::HashSet<String> = bodies.into_iter().collect();
        let missing: Vec<_> = acked.iter().filter(|b| !bodies.contains(*b)).collect();
        assert!(
            missing.is_empty(),
            "{tid}: acknowledged {missing:?} missing"
        );
        let seeds: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE body LIKE 'seed %'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(seeds, 20_000);
        let next: i64 =
            sqlx::query_scalar("INSERT INTO notes (body) VALUES ('after') RETURNING id")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        let max: i64 = sqlx::query_scalar("SELECT max(id) FROM notes WHERE body <> 'after'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(next > max, "{tid}: id {next} after {max}");
        drop(conn);

        // A record read before the move reaches the tenant where it is now.
        let mut stale = hidra.acquire(&before).await.unwrap();
        sqlx::query("INSERT INTO notes (body) VALUES ('stale session')")
            .execute(&mut stale)
            .await
            .unwrap();
        drop(stale);
        let mut stale = hidra.begin(&before).await.unwrap();
        sqlx::query("INSERT INTO notes (body) VALUES ('stale transaction')")
            .execute(&mut stale)
            .await
            .unwrap();
        stale.commit().await.unwrap();
        let mut conn = hidra.acquire(&t).await.unwrap();
        let late: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE body LIKE 'stale %'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(late, 2, "{tid}");
        drop(conn);

        // Nothing is left on the source.
        match (strategy, from) {
            (Strategy::Database, Some(s)) => assert!(
                !fleet
                    .has_database(s, t.placement.database.as_deref().unwrap())
                    .await
            ),
            (_, source) => assert!(!fleet.has_schema(source, &t.placement.schema).await),
        }
        // Databases on the shared control server outlive the test's own.
        hidra
            .deprovision(&t.id, hidra::Confirmation::of(&t.id))
            .await
            .unwrap();
    }
    hidra.close().await;
    let mut control = PgConnection::connect(fleet.ctx.db.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{prefix}_tpl\" WITH (FORCE)"
    )))
    .execute(&mut control)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_move_that_fails_at_any_step_leaves_the_tenant_where_it_was() {
    let mut fleet = fleet(
        Hidra::builder()
            .tenant_migrations(Migrations::new().push(
                "notes",
                "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL UNIQUE);",
            ))
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .placement(FewestTenants::excluding_control()),
    )
    .await;
    let hidra = fleet.ctx.hidra.clone();
    let t = schema_tenant_with_notes(&hidra, "stays", "s1", 500).await;
    let still_works = |hidra: Hidra| async move {
        let t = hidra.tenant(&id("stays")).await.unwrap().unwrap();
        assert_eq!(t.placement.server.as_deref(), Some("s1"));
        let mut conn = hidra.acquire(&t).await.unwrap();
        sqlx::query("INSERT INTO notes (body) VALUES (gen_random_uuid()::text)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };

    // The target stopped.
    fleet.servers[2].1.pause().await.unwrap();
    let err = hidra
        .move_to_server(&t.id, Some(&name("s3")))
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    assert_eq!(still_works(hidra.clone()).await, 501);
    fleet.servers[2].1.resume().await.unwrap();

    // A target that is not active.
    hidra
        .servers()
        .set_state(&name("s3"), ServerState::Draining)
        .await
        .unwrap();
    let err = hidra
        .move_to_server(&t.id, Some(&name("s3")))
        .await
        .unwrap_err();
    assert!(err.is_no_server(), "{err:?}");
    assert!(!fleet.has_schema(Some("s3"), "tenant_stays").await);
    assert_eq!(still_works(hidra.clone()).await, 502);

    // A constraint violated on the target: the source drifted (a duplicate
    // the migrations forbid), so the copy fails there.
    let mut s1 = fleet.admin("s1").await;
    sqlx::raw_sql(
        "ALTER TABLE tenant_stays.notes DROP CONSTRAINT notes_body_key;
         INSERT INTO tenant_stays.notes (body) VALUES ('n1')",
    )
    .execute(&mut s1)
    .await
    .unwrap();
    let err = hidra
        .move_to_server(&t.id, Some(&name("s2")))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("23505"), "{err:?}");
    assert!(!fleet.has_schema(Some("s2"), "tenant_stays").await);
    assert_eq!(still_works(hidra.clone()).await, 504);

    // The source stopped.
    fleet.servers[0].1.pause().await.unwrap();
    let err = hidra
        .move_to_server(&t.id, Some(&name("s2")))
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    fleet.servers[0].1.resume().await.unwrap();
    assert!(!fleet.has_schema(Some("s2"), "tenant_stays").await);
    let t = hidra.tenant(&t.id).await.unwrap().unwrap();
    wait_for("s1 to come back", || async {
        hidra.acquire(&t).await.ok().map(drop)
    })
    .await;
    assert_eq!(still_works(hidra.clone()).await, 505);
    // A row-level tenant's failed move: `a_row_level_tenant_moves_between_servers`.
}

/// Exports `tenant` into `dir` and imports the archive as `as_id` onto
/// `server`; returns the archive's path and the import.
async fn export_and_import(
    hidra: &Hidra,
    tenant: &hidra::TenantId,
    dir: &std::path::Path,
    as_id: &str,
    server: &str,
) -> (std::path::PathBuf, hidra::archive::ImportSummary) {
    use hidra::archive::{ExportOptions, ImportOptions};
    let path = dir.join(format!("{tenant}.tar"));
    let file = tokio::fs::File::create(&path).await.unwrap();
    hidra
        .export_tenant(tenant, file, ExportOptions::new())
        .await
        .unwrap();
    let options = ImportOptions::new()
        .as_id(id(as_id))
        .on_server(name(server));
    let imported = hidra.import_tenant(&path, options).await.unwrap();
    assert_eq!(imported.tenant.placement.server.as_deref(), Some(server));
    (path, imported)
}

/// An archive imports onto a named server (built on the control server,
/// then moved there); a server that takes no tenants, or a row-level
/// import, is refused with nothing created.
#[tokio::test]
async fn an_archive_is_imported_onto_a_server() {
    use hidra::archive::ImportOptions;
    let fleet = fleet(builder().database_prefix(database_prefix())).await;
    let hidra = &fleet.ctx.hidra;
    let db = hidra
        .provision(
            NewTenant::new(id("db-exported"))
                .strategy(Strategy::Database)
                .on_server(name("s2")),
        )
        .await
        .unwrap();
    let t = schema_tenant_with_notes(hidra, "exported", "s1", 500).await;
    let dir = std::env::temp_dir().join(format!("hidra-so-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();

    let (path, imported) = export_and_import(hidra, &t.id, &dir, "imported", "s3").await;
    assert_eq!(imported.rows, 500);
    assert!(fleet.has_schema(Some("s3"), "tenant_imported").await);
    assert!(!fleet.has_schema(None, "tenant_imported").await);
    let mut conn = hidra.acquire(&imported.tenant).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 500);
    drop(conn);

    // A database tenant's archive, from s2 onto s3.
    let (_, db_copy) = export_and_import(hidra, &db.id, &dir, "db-copy", "s3").await;
    assert_eq!(db_copy.tenant.placement.strategy, Strategy::Database);
    let database = db_copy.tenant.placement.database.clone().unwrap();
    assert!(fleet.has_database("s3", &database).await);
    hidra.acquire(&db_copy.tenant).await.unwrap();

    hidra
        .servers()
        .set_state(&name("s2"), ServerState::Draining)
        .await
        .unwrap();
    let refused = [
        ImportOptions::new()
            .as_id(id("nowhere"))
            .on_server(name("s2")),
        ImportOptions::new()
            .as_id(id("nowhere"))
            .strategy(Strategy::RowLevel)
            .on_server(name("s3")),
    ];
    for options in refused {
        let err = hidra.import_tenant(&path, options).await.unwrap_err();
        assert!(!err.to_string().is_empty());
        assert!(hidra.tenant(&id("nowhere")).await.unwrap().is_none());
        assert!(!fleet.has_schema(None, "tenant_nowhere").await);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The pattern the guide gives for shared data: shared tables (here
/// `plans`) live on the control server; a tenant there sees them through its
/// `search_path`, a tenant on a registered server does not (its server holds
/// no shared data) and reads them through `acquire_shared`, as every tenant
/// may.
#[tokio::test]
async fn shared_tables_stay_on_the_control_server_and_are_read_through_a_shared_connection() {
    let fleet = fleet(builder()).await;
    let hidra = &fleet.ctx.hidra;
    let mut control = PgConnection::connect(fleet.ctx.db.url()).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE public.plans (id TEXT PRIMARY KEY, seats INT NOT NULL);
         INSERT INTO public.plans VALUES ('pro', 25);",
    )
    .execute(&mut control)
    .await
    .unwrap();
    let away = hidra
        .provision(NewTenant::new(id("away")).on_server(name("s2")))
        .await
        .unwrap();
    let home = hidra
        .provision(NewTenant::new(id("home")).on_control_server())
        .await
        .unwrap();
    let seats = "SELECT seats FROM plans WHERE id = 'pro'";

    // On the control server the shared schema is in the tenant's path.
    let mut conn = hidra.acquire(&home).await.unwrap();
    let n: i32 = sqlx::query_scalar(seats)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 25);
    drop(conn);

    // On s2 it is not: the table is not there, and no copy answers.
    let mut conn = hidra.acquire(&away).await.unwrap();
    let err = sqlx::query_scalar::<_, i32>(seats)
        .fetch_one(&mut conn)
        .await
        .unwrap_err();
    let code = err.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("42P01"), "{err}");
    // The tenant's own tables answer on the same connection.
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(notes, 0);
    drop(conn);

    // Tenant-scoped code reads shared data with a second connection, which
    // is on the control server wherever the tenant is; the registry too.
    let mut shared = hidra.acquire_shared().await.unwrap();
    let n: i32 = sqlx::query_scalar(seats)
        .fetch_one(&mut *shared)
        .await
        .unwrap();
    assert_eq!(n, 25);
    drop(shared);
    let record = hidra.tenant(&away.id).await.unwrap().unwrap();
    assert_eq!(record.placement.server.as_deref(), Some("s2"));
    let mut s2 = fleet.admin("s2").await;
    let copies: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname = 'plans' AND relkind = 'r'",
    )
    .fetch_one(&mut s2)
    .await
    .unwrap();
    assert_eq!(copies, 0);
}

/// The tables of users and their roles the accounts of a tenant use.
const AUTH_TABLES: &str = "
CREATE TABLE roles (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                    permissions TEXT[] NOT NULL DEFAULT '{}');
CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE,
                    full_name TEXT NOT NULL, password_hash TEXT NOT NULL,
                    is_active BOOLEAN NOT NULL DEFAULT TRUE);
CREATE TABLE user_roles (user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                         role_id BIGINT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
                         PRIMARY KEY (user_id, role_id));
";

/// Registers its prepared user inside the provisioning transaction, then
/// fails the provisioning if told to.
struct FirstUser {
    accounts: hidra::auth::Accounts,
    user: hidra::auth::PreparedUser,
    fail_after: bool,
}

impl Seed for FirstUser {
    async fn seed(&self, conn: &mut PgConnection, tenant: &Tenant) -> Result<(), BoxError> {
        self.accounts.register_in(conn, tenant, &self.user).await?;
        if self.fail_after {
            return Err("the seed fails after registering".into());
        }
        Ok(())
    }
}

/// Users of tenants on a registered server live there; their login rows
/// stay on the control server. A user registered in a provisioning
/// transaction that fails leaves its email free; one that commits can log
/// in and gets a token at once.
#[tokio::test]
async fn accounts_of_tenants_on_servers_keep_their_login_rows_on_the_control_server() {
    let fleet = fleet(
        builder().tenant_migrations(
            Migrations::new()
                .push("notes", NOTES_V1)
                .push("users", AUTH_TABLES),
        ),
    )
    .await;
    let hidra = &fleet.ctx.hidra;
    let jwt = hidra::auth::Jwt::hs256("0123456789abcdef0123456789abcdef").unwrap();
    let accounts = hidra::auth::Accounts::new(hidra.clone(), jwt);
    accounts.install().await.unwrap();
    let user = |email: &str| hidra::auth::NewUser::new(email, "Boss", "correct horse battery");

    let failed = hidra
        .provision(
            NewTenant::new(id("fails"))
                .on_server(name("s1"))
                .setup(FirstUser {
                    accounts: accounts.clone(),
                    user: accounts.prepare(user("boss@shared.test")).await.unwrap(),
                    fail_after: true,
                }),
        )
        .await;
    assert!(failed.is_err());
    assert!(
        accounts
            .tenant_of("boss@shared.test")
            .await
            .unwrap()
            .is_none()
    );

    let t = hidra
        .provision(
            NewTenant::new(id("signs-up"))
                .on_server(name("s1"))
                .setup(FirstUser {
                    accounts: accounts.clone(),
                    user: accounts.prepare(user("boss@shared.test")).await.unwrap(),
                    fail_after: false,
                }),
        )
        .await
        .unwrap();
    assert_eq!(t.placement.server.as_deref(), Some("s1"));
    let login = accounts
        .login("boss@shared.test", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(login.user().tenant, t.id);
    let token = accounts.issue_token(&t, login.user()).await.unwrap();
    assert!(token.is_some());

    // A second user, registered after provisioning, and the user rows are
    // on the server, not on the control server.
    accounts
        .register(&t, user("clerk@shared.test"))
        .await
        .unwrap();
    let mut s1 = fleet.admin("s1").await;
    let users: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT email FROM \"{}\".users ORDER BY email",
        t.placement.schema
    )))
    .fetch_all(&mut s1)
    .await
    .unwrap();
    assert_eq!(users, ["boss@shared.test", "clerk@shared.test"]);
    assert_eq!(accounts.user_count(&t.id).await.unwrap(), 2);
    assert!(accounts.delete_user(&t, "clerk@shared.test").await.unwrap());
    assert!(
        accounts
            .tenant_of("clerk@shared.test")
            .await
            .unwrap()
            .is_none()
    );
}

/// A strategy move of a tenant on a registered server would build the new
/// copy on the control server from nothing: it is refused, and the tenant
/// stays where it is with every row.
#[tokio::test]
async fn a_strategy_move_of_a_tenant_on_a_server_is_refused() {
    let fleet = fleet(builder()).await;
    let hidra = &fleet.ctx.hidra;
    let t = schema_tenant_with_notes(hidra, "stays", "s2", 50).await;
    for to in [Strategy::Database, Strategy::RowLevel] {
        let e = hidra.move_tenant(&t.id, to).await.unwrap_err();
        assert!(matches!(e, Error::MoveRefused { .. }), "{to:?}: {e}");
        assert!(e.to_string().contains("move_to_server"), "{e}");
    }
    let now = hidra.tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(now.placement, t.placement);
    assert_eq!(notes_on(&fleet, "s2", &now).await.len(), 50);
}

/// The row-level tenant's notes as the server holds them (superuser: no
/// policy in the way).
async fn row_level_notes(fleet: &Fleet, server: &str, tid: &str) -> Vec<String> {
    let mut conn = fleet.admin(server).await;
    sqlx::query_scalar("SELECT body FROM public.notes WHERE tenant_id = $1 ORDER BY id")
        .bind(tid)
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// A row-level tenant moves between servers under writes: every
/// acknowledged write reaches the new server, nothing is left on the old
/// one, and a record read before the move binds the tenant where it is
/// now. A move whose ids are taken on the target fails and leaves the
/// tenant where it was, working.
#[tokio::test]
async fn a_row_level_tenant_moves_between_servers() {
    let fleet = fleet(builder()).await;
    let hidra = &fleet.ctx.hidra;
    let new = |tid: &str, server: &str| {
        NewTenant::new(id(tid))
            .strategy(Strategy::RowLevel)
            .on_server(name(server))
    };
    let t = hidra.provision(new("rows", "s1")).await.unwrap();
    let other = hidra.provision(new("neighbour", "s2")).await.unwrap();
    for (tenant, n) in [(&t, 300), (&other, 10)] {
        let mut tx = hidra.begin(tenant).await.unwrap();
        sqlx::query("INSERT INTO notes (body) SELECT 'seed ' || g FROM generate_series(1, $1) g")
            .bind(n)
            .execute(&mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    // s2's ids 1..10 are taken by its own tenant: the copy fails there.
    let e = hidra
        .move_to_server(&t.id, Some(&name("s2")))
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("23505"), "{e:?}");
    let now = hidra.tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(now.placement.server.as_deref(), Some("s1"));
    assert_eq!(row_level_notes(&fleet, "s1", "rows").await.len(), 300);
    assert!(row_level_notes(&fleet, "s2", "rows").await.is_empty());
    write_and_read(hidra, &now, "still on s1").await;

    // With ids that do not collide (s3 is empty), under three writers.
    let insert = "INSERT INTO notes (body) VALUES ($1)";
    let (moved, acked) = while_writing(
        hidra,
        &t.id,
        insert,
        3,
        hidra.move_to_server(&t.id, Some(&name("s3"))),
    )
    .await;
    let moved = moved.unwrap();
    assert_eq!(moved.tenant.placement.server.as_deref(), Some("s3"));
    assert!(moved.rows >= 301, "{moved:?}");
    let on_s3 = row_level_notes(&fleet, "s3", "rows").await;
    assert!(acked.iter().flatten().count() > 10, "{acked:?}");
    for body in acked.iter().flatten() {
        assert!(on_s3.contains(body), "acknowledged {body} is missing on s3");
    }
    assert!(row_level_notes(&fleet, "s1", "rows").await.is_empty());
    assert_eq!(row_level_notes(&fleet, "s2", "neighbour").await.len(), 10);

    // The record read before the moves: refused on s1, bound on s3.
    let mut tx = hidra.begin(&t).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ('stale transaction')")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = hidra.acquire(&t).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ('stale session')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let on_s3 = row_level_notes(&fleet, "s3", "rows").await;
    assert!(on_s3.contains(&"stale transaction".to_owned()));
    assert!(on_s3.contains(&"stale session".to_owned()));
    assert!(row_level_notes(&fleet, "s1", "rows").await.is_empty());

    // Deprovisioned: a record of it binds nothing on its server.
    hidra
        .deprovision(&other.id, hidra::Confirmation::of(&other.id))
        .await
        .unwrap();
    assert!(hidra.acquire(&other).await.unwrap_err().is_not_found());
    assert!(hidra.begin(&other).await.unwrap_err().is_not_found());
    assert!(row_level_notes(&fleet, "s2", "neighbour").await.is_empty());
}

/// A union view on the control server reads the schemas there: a schema
/// tenant on a registered server is left out, and the reason says why.
#[tokio::test]
async fn a_union_view_leaves_out_tenants_on_other_servers() {
    let fleet = fleet(builder().placement(FewestTenants::default())).await;
    let hidra = &fleet.ctx.hidra;
    let home = hidra
        .provision(NewTenant::new(id("home")).on_control_server())
        .await
        .unwrap();
    write_and_read(hidra, &home, "at home").await;
    let away = schema_tenant_with_notes(hidra, "away", "s1", 3).await;
    let view = hidra.create_union_view("notes").await.unwrap();
    assert_eq!(view.tenants, 1);
    assert_eq!(view.left_out_tenants.len(), 1, "{view:?}");
    assert_eq!(view.left_out_tenants[0].0, away.id);
    assert!(
        view.left_out_tenants[0].1.contains("registered server"),
        "{view:?}"
    );
    let mut conn = hidra.acquire_shared().await.unwrap();
    let tenants: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tenant_id FROM hidra_reports.all_notes")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(tenants, ["home"]);
}
