//! The guide's chapters as doc-tests: `cargo test -p hidra-guide` compiles
//! every Rust sample of `docs/src` and runs those not marked `no_run`, most
//! of them through [`run_with_tenant`] against a throw-away database. The
//! few left `no_run` name servers that do not exist here (a replica's host,
//! an existing application's database).

use std::fmt::Debug;
use std::future::Future;

use hidra::testing::TestDatabase;
use hidra::{Hidra, NewTenant, Tenant, TenantId};

/// Runs a guide sample: a throw-away database, a `Hidra` over it whose
/// tenant schemas start with `ddl`, and the tenant `acme`; the database is
/// dropped afterwards. Panics (failing the doc-test) when the sample fails.
pub fn run_with_tenant<F, Fut, E>(ddl: &str, sample: F)
where
    F: FnOnce(Hidra, Tenant) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Debug,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let db = TestDatabase::create()
            .await
            .expect("a throw-away database (is PostgreSQL running?)");
        let hidra = Hidra::builder()
            .schema_sql("guide", ddl)
            .connect_with(db.connect_options())
            .await
            .expect("connect");
        hidra.install().await.expect("install");
        let acme = hidra
            .provision(NewTenant::new(TenantId::new("acme").expect("an id")))
            .await
            .expect("provision acme");
        sample(hidra.clone(), acme)
            .await
            .expect("the sample failed");
        hidra.close().await;
        db.drop_now().await.expect("drop the throw-away database");
    });
}

#[cfg(doctest)]
#[doc = include_str!("src/background-work.md")]
struct BackgroundWork;

#[cfg(doctest)]
#[doc = include_str!("src/sea-orm.md")]
struct SeaOrm;

#[cfg(doctest)]
#[doc = include_str!("src/across-tenants.md")]
struct AcrossTenants;

#[cfg(doctest)]
#[doc = include_str!("src/getting-started.md")]
struct GettingStarted;

#[cfg(doctest)]
#[doc = include_str!("src/adopting.md")]
struct Adopting;
