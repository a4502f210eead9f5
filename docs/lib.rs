//! The guide's chapters as doc-tests: `cargo test -p hidra-guide` compiles
//! every Rust sample of `docs/src` (and runs those not marked `no_run`).

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
