//! Provisionings on the control server killed with SIGKILL after their row
//! was committed `provisioning`: a tenant database being seeded, and a
//! schema whose `-- no-transaction` migration has run. While the process
//! lives, its provisioning is not abandoned (repair leaves it alone); once
//! it is gone, `abandoned_provisionings` names it and `repair_provisioning`
//! removes its database or schema and its row.

use hidra::testing::TestDatabase;
use hidra::{
    BoxError, Confirmation, Hidra, HidraBuilder, Migrations, NewTenant, Seed, Strategy, Tenant,
};
use hidra_test_support::{ChildTest, id, wait_for};
use sqlx::{Connection, PgConnection};

const CHILD_URL: &str = "HIDRA_CRASH_CHILD_URL";
const CHILD_CASE: &str = "HIDRA_CRASH_CHILD_CASE";
const CHILD_TAG: &str = "HIDRA_CRASH_CHILD_TAG";

/// Both processes' configuration: a tenant table, and for `no-tx` a
/// migration that cannot run in the provisioning transaction.
fn builder(case: &str, tag: &str) -> HidraBuilder {
    let mut migrations = Migrations::new().push(
        "notes",
        "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT)",
    );
    if case == "no-tx" {
        migrations = migrations.push(
            "notes_body",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY notes_body ON notes (body)",
        );
    }
    Hidra::builder()
        .tenant_migrations(migrations)
        .database_prefix(format!("c{tag}_"))
}

fn tenant_of(case: &str) -> hidra::TenantId {
    id(&format!("killed-{case}"))
}

/// A seed that writes a row, says so, and never finishes.
struct Hang;

impl Seed for Hang {
    async fn seed(&self, conn: &mut PgConnection, _: &Tenant) -> Result<(), BoxError> {
        sqlx::query("INSERT INTO notes (body) VALUES ('seeded')")
            .execute(&mut *conn)
            .await?;
        println!("READY");
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test]
#[ignore = "the child process of a_killed_provisioning_is_repaired_once_its_process_is_gone"]
async fn child_provisions_until_killed() {
    let url = std::env::var(CHILD_URL).expect("run by the parent test");
    let case = std::env::var(CHILD_CASE).unwrap();
    let tag = std::env::var(CHILD_TAG).unwrap();
    let hidra = builder(&case, &tag).connect(&url).await.unwrap();
    let mut new = NewTenant::new(tenant_of(&case)).setup(Hang);
    if case == "database" {
        new = new.strategy(Strategy::Database);
    }
    hidra.provision(new).await.unwrap();
    unreachable!("the seed never finishes");
}

async fn exists(conn: &mut PgConnection, case: &str, name: &str) -> bool {
    let query = match case {
        "database" => "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        _ => "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
    };
    sqlx::query_scalar(query)
        .bind(name)
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_killed_provisioning_is_repaired_once_its_process_is_gone() {
    for case in ["database", "no-tx"] {
        let db = TestDatabase::create().await.unwrap();
        let tag = db.name()[db.name().len() - 8..].to_owned();
        let hidra = builder(case, &tag)
            .connect_with(db.connect_options())
            .await
            .unwrap();
        hidra.install().await.unwrap();
        let mut su = PgConnection::connect(db.url()).await.unwrap();
        let tid = tenant_of(case);

        let mut child = ChildTest::until_ready(
            "child_provisions_until_killed",
            &[(CHILD_URL, db.url()), (CHILD_CASE, case), (CHILD_TAG, &tag)],
        )
        .await;

        // In progress: committed `provisioning`, its data there, and not
        // abandoned (the child holds its lock), so repair leaves it alone.
        let t = hidra.tenant(&tid).await.unwrap().expect("row committed");
        assert_eq!(t.status, hidra::TenantStatus::Provisioning, "{case}");
        let name = t
            .placement
            .database
            .clone()
            .unwrap_or(t.placement.schema.clone());
        assert!(exists(&mut su, case, &name).await, "{case}: {name} built");
        assert!(
            hidra.abandoned_provisionings().await.unwrap().is_empty(),
            "{case}"
        );
        assert!(
            hidra.repair_provisioning().await.unwrap().is_empty(),
            "{case}"
        );
        assert!(hidra.tenant(&tid).await.unwrap().is_some(), "{case}");

        child.kill(); // SIGKILL

        // Its lock goes when the server notices the connection closed.
        let abandoned = wait_for("the killed provisioning to be abandoned", || async {
            let found = hidra.abandoned_provisionings().await.unwrap();
            (!found.is_empty()).then_some(found)
        })
        .await;
        assert_eq!(abandoned.len(), 1, "{case}");
        assert_eq!(abandoned[0].id, tid, "{case}");
        let repaired = hidra.repair_provisioning().await.unwrap();
        assert_eq!(repaired, vec![tid.clone()], "{case}");
        assert!(hidra.tenant(&tid).await.unwrap().is_none(), "{case}");
        assert!(
            !exists(&mut su, case, &name).await,
            "{case}: {name} dropped"
        );
        assert!(hidra.abandoned_provisionings().await.unwrap().is_empty());

        // The id is free again: the same sign-up now succeeds.
        let mut again = NewTenant::new(tid.clone());
        if case == "database" {
            again = again.strategy(Strategy::Database);
        }
        let t = hidra.provision(again).await.unwrap();
        assert!(t.is_active(), "{case}");
        hidra
            .deprovision(&tid, Confirmation::of(&tid))
            .await
            .unwrap();
        drop(su);
        hidra.close().await;
        db.drop_now().await.unwrap();
    }
}
