//! Property tests of migration parsing: `Migrations::push` on any SQL, and
//! `Migrations::from_dir` on directories of sqlx-format files
//! (`<version>_<description>.sql`, `.up.sql`, `.down.sql`, the
//! `-- no-transaction` first line). No database is needed.
//!
//! The generated directories keep versions positive and distinct; the tests
//! at the end cover what lies outside that (once panics, found by
//! `fuzz/fuzz_targets/migration_file.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use hidra::Migrations;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sha2::{Digest, Sha384};

const MARKER: &str = "-- no-transaction";

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "hidra-migration-properties-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(files: &[(String, Vec<u8>)]) -> hidra::Result<Migrations> {
    let dir = TempDir::new();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(Migrations::from_dir(dir.path()))
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// SQL, with the no-transaction marker in front about half the time.
fn sql() -> impl Strategy<Value = String> {
    let body = prop_oneof![
        "[ -~\n\t]{0,80}",
        any::<String>(),
        Just("CREATE INDEX CONCURRENTLY i ON t (x)".to_owned()),
    ];
    (
        prop_oneof![
            Just(""),
            Just("-- no-transaction\n"),
            Just("-- no-transaction"),
            Just(" -- no-transaction\n"),
            Just("-- No-Transaction\n"),
        ],
        body,
    )
        .prop_map(|(head, body)| format!("{head}{body}"))
}

proptest! {
    /// One pushed migration is version 1 with exactly its SQL, the
    /// no-transaction flag of its first line and SHA-384 as its checksum.
    #[test]
    fn push_keeps_the_sql_and_reads_the_marker(description in any::<String>(), sql in sql()) {
        let set = Migrations::new().push(description.clone(), sql.clone());
        let m = set.iter().next().unwrap();
        prop_assert_eq!((set.len(), set.latest(), m.version), (1, 1, 1));
        prop_assert_eq!(&m.description, &description);
        prop_assert_eq!(&m.sql, &sql);
        prop_assert_eq!(m.no_tx, sql.starts_with(MARKER));
        let digest = Sha384::digest(sql.as_bytes());
        prop_assert_eq!(m.checksum.as_slice(), digest.as_slice());
    }

    /// Pushes number migrations 1, 2, 3, … in order.
    #[test]
    fn pushes_number_in_order(sqls in proptest::collection::vec(sql(), 0..8)) {
        let set = sqls
            .iter()
            .fold(Migrations::new(), |set, sql| set.push("step", sql.clone()));
        prop_assert_eq!(set.len(), sqls.len());
        prop_assert_eq!(set.latest(), sqls.len() as i64);
        let versions: Vec<i64> = set.iter().map(|m| m.version).collect();
        prop_assert_eq!(versions, (1..=sqls.len() as i64).collect::<Vec<_>>());
    }
}

/// One generated migration file.
#[derive(Clone, Debug)]
enum Kind {
    Simple,
    Up,
    Down,
}

impl Kind {
    fn suffix(&self) -> &'static str {
        match self {
            Kind::Simple => ".sql",
            Kind::Up => ".up.sql",
            Kind::Down => ".down.sql",
        }
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Simple), Just(Kind::Up), Just(Kind::Down)]
}

/// Files whose names are not migrations (ignored by the loader).
fn other_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("README.md".to_owned()),
        Just("notes.sql".to_owned()),
        Just("1_init.sql.bak".to_owned()),
        "[a-z]{1,8}\\.(txt|md)",
    ]
}

#[test]
fn a_directory_loads_as_its_files_say() {
    // Distinct positive versions, each with a kind, a description and SQL;
    // plus files that are not migrations.
    let files = (
        proptest::collection::btree_map(
            prop_oneof![1i64..1000, Just(i64::MAX - 1), 1i64..],
            (kind(), "[a-zA-Z0-9_ -]{0,20}", sql()),
            0..6,
        ),
        proptest::collection::vec((other_name(), "[ -~]{0,20}"), 0..3),
        any::<bool>(),
    );
    runner(128)
        .run(&files, |(migrations, others, pad)| {
            let mut files: Vec<(String, Vec<u8>)> = Vec::new();
            for (version, (kind, description, sql)) in &migrations {
                // `007_x.sql` is version 7, as sqlx reads it.
                let version = if pad {
                    format!("00{version}")
                } else {
                    version.to_string()
                };
                let name = format!("{version}_{description}{}", kind.suffix());
                files.push((name, sql.clone().into_bytes()));
            }
            for (name, content) in others {
                files.push((name, content.into_bytes()));
            }
            let loaded = load(&files).unwrap();

            let want: BTreeMap<i64, _> = migrations
                .into_iter()
                .filter(|(_, (kind, _, _))| !matches!(kind, Kind::Down))
                .collect();
            prop_assert_eq!(loaded.len(), want.len());
            for (m, (version, (_, description, sql))) in loaded.iter().zip(&want) {
                prop_assert_eq!(m.version, *version);
                prop_assert_eq!(&m.description, &description.replace('_', " "));
                prop_assert_eq!(&m.sql, sql);
                prop_assert_eq!(m.no_tx, sql.starts_with(MARKER));
                let pushed = Migrations::new().push(description.clone(), sql.clone());
                prop_assert_eq!(&m.checksum, &pushed.iter().next().unwrap().checksum);
            }
            prop_assert_eq!(loaded.latest(), want.keys().last().copied().unwrap_or(0));
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_bad_version_or_content_is_an_error() {
    let bad = prop_oneof![
        // Not an integer version.
        (
            "[a-z][a-z0-9]{0,5}|[0-9]+[a-z]+|99999999999999999999",
            sql()
        )
            .prop_map(|(v, sql)| (format!("{v}_x.sql"), sql.into_bytes())),
        // Not UTF-8.
        proptest::collection::vec(any::<u8>(), 1..40)
            .prop_filter("valid UTF-8", |b| std::str::from_utf8(b).is_err())
            .prop_map(|b| ("1_x.sql".to_owned(), b)),
    ];
    runner(64)
        .run(&bad, |file| {
            match load(&[
                file.clone(),
                ("2_fine.sql".to_owned(), b"SELECT 1".to_vec()),
            ]) {
                // sqlx's loader refuses it, or Hidra's checks do.
                Err(hidra::Error::MigrationSource { .. } | hidra::Error::InvalidConfig(_)) => {}
                other => prop_assert!(false, "{other:?} for {file:?}"),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn pushing_after_loading_numbers_next() {
    let versions = proptest::collection::btree_set(1i64..10_000, 0..5);
    runner(64)
        .run(&versions, |versions| {
            let files: Vec<_> = versions
                .iter()
                .map(|v| (format!("{v}_step.sql"), b"SELECT 1".to_vec()))
                .collect();
            let loaded = load(&files).unwrap();
            let more = loaded.clone().push("next", "SELECT 2");
            prop_assert_eq!(more.latest(), versions.last().copied().unwrap_or(0) + 1);
            prop_assert_eq!(more.len(), versions.len() + 1);
            Ok(())
        })
        .unwrap();
}

// Once panics, found by the `migration_file` fuzz target (reproducers in
// `fuzz/artifacts/migration_file/`): sqlx's directory loader checks neither
// that versions are positive nor that they are distinct, and `push` added 1
// to the last version unchecked.

#[test]
fn a_version_of_zero_is_an_error() {
    let loaded = load(&[("0_init.sql".to_owned(), b"SELECT 1".to_vec())]);
    assert!(
        matches!(loaded, Err(hidra::Error::InvalidConfig(_))),
        "{loaded:?}"
    );
}

#[test]
fn two_migrations_of_one_version_are_an_error() {
    let loaded = load(&[
        ("1_a.sql".to_owned(), b"SELECT 1".to_vec()),
        ("1_b.sql".to_owned(), b"SELECT 2".to_vec()),
    ]);
    assert!(
        matches!(loaded, Err(hidra::Error::InvalidConfig(_))),
        "{loaded:?}"
    );
}

#[test]
fn pushing_after_the_largest_version_is_an_error() {
    let loaded = load(&[(format!("{}_last.sql", i64::MAX), b"SELECT 1".to_vec())]).unwrap();
    let pushed = loaded.clone().try_push("next", "SELECT 2");
    assert!(
        matches!(&pushed, Err(hidra::Error::InvalidConfig(m)) if m.contains("number it yourself")),
        "{pushed:?}"
    );
    // `push` panics with the same message, as documented.
    let panicked = std::panic::catch_unwind(|| loaded.push("next", "SELECT 2"));
    assert!(panicked.is_err());
}
