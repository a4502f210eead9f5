//! Migration files: `hidra::Migrations::from_dir` on a directory of fuzzed
//! file names and contents, and `Migrations::push` on fuzzed SQL.
//!
//! Loading never panics: it yields the migrations sqlx's file format
//! describes (`<version>_<description>.sql`, `.up.sql` kept and `.down.sql`
//! left out, other names ignored, `-- no-transaction` on the first line),
//! or an `InvalidConfig` error. What is loaded has the file's version,
//! description, SQL, no-transaction flag and the same checksum `push`
//! computes for that SQL; pushing one more migration numbers it next.

#![no_main]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hidra::Migrations;
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;

const MARKER: &str = "-- no-transaction";

#[derive(Arbitrary, Debug)]
enum Version<'a> {
    Number(i64),
    Text(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Suffix<'a> {
    Sql,
    Up,
    Down,
    Other(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Name<'a> {
    /// `<version>_<description><suffix>`
    Shaped {
        version: Version<'a>,
        description: &'a str,
        suffix: Suffix<'a>,
    },
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
enum Content<'a> {
    Sql(&'a str),
    NoTransaction(&'a str),
    Bytes(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    files: Vec<(Name<'a>, Content<'a>)>,
    next: (&'a str, &'a str),
}

/// Panics the library had (see `fuzz/README.md`; fixed in 5680ea2, they are
/// errors now), which inputs reaching them can still be left out for, to
/// fuzz an older commit past them: `FUZZ_SKIP_KNOWN` lists them,
/// comma-separated, or is `all`.
///
/// - `nonpositive`: `from_dir` on a version of 0 or less;
/// - `duplicate`: `from_dir` on two migrations of one version;
/// - `overflow`: `push` after version `i64::MAX`.
fn skip_known(panic: &str) -> bool {
    static SKIP: OnceLock<Vec<String>> = OnceLock::new();
    let skip = SKIP.get_or_init(|| {
        let list = std::env::var("FUZZ_SKIP_KNOWN").unwrap_or_default();
        list.split(',').map(|s| s.trim().to_owned()).collect()
    });
    skip.iter().any(|s| s == panic || s == "all")
}

fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn name_bytes(name: &Name<'_>) -> Vec<u8> {
    match name {
        Name::Shaped {
            version,
            description,
            suffix,
        } => {
            let version = match version {
                Version::Number(n) => n.to_string(),
                Version::Text(t) => (*t).to_owned(),
            };
            let suffix = match suffix {
                Suffix::Sql => ".sql",
                Suffix::Up => ".up.sql",
                Suffix::Down => ".down.sql",
                Suffix::Other(s) => s,
            };
            format!("{version}_{description}{suffix}").into_bytes()
        }
        Name::Raw(bytes) => bytes.to_vec(),
    }
}

fn content_bytes(content: &Content<'_>) -> Vec<u8> {
    match content {
        Content::Sql(sql) => sql.as_bytes().to_vec(),
        Content::NoTransaction(sql) => format!("{MARKER}\n{sql}").into_bytes(),
        Content::Bytes(bytes) => bytes.to_vec(),
    }
}

/// A name that is one file in a directory on Linux.
fn usable(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

/// What one file should load as, by sqlx's file format: `None` when it is
/// not a migration file, `Err` when loading must fail.
#[derive(Debug, PartialEq)]
struct Expected {
    version: i64,
    /// 0 simple, 1 up, 2 down (sqlx's order within a version).
    kind: u8,
    description: String,
    sql: String,
}

fn expected(name: &[u8], content: &[u8]) -> Option<Result<Expected, ()>> {
    let name = String::from_utf8_lossy(name);
    let (version, rest) = name.split_once('_')?;
    if !rest.ends_with(".sql") {
        return None;
    }
    let Ok(version) = version.parse::<i64>() else {
        return Some(Err(()));
    };
    let (kind, suffix) = if rest.ends_with(".up.sql") {
        (1, ".up.sql")
    } else if rest.ends_with(".down.sql") {
        (2, ".down.sql")
    } else {
        (0, ".sql")
    };
    let Ok(sql) = String::from_utf8(content.to_vec()) else {
        return Some(Err(()));
    };
    Some(Ok(Expected {
        version,
        kind,
        description: rest.trim_end_matches(suffix).replace('_', " "),
        sql,
    }))
}

fn check_push(description: &str, sql: &str) {
    let one = Migrations::new().push(description, sql);
    let m = one.iter().next().expect("one migration");
    assert_eq!((one.len(), one.latest(), m.version), (1, 1, 1));
    assert_eq!(m.description, description);
    assert_eq!(m.sql, sql);
    assert_eq!(m.no_tx, sql.starts_with(MARKER));
    assert_eq!(m.checksum.len(), 48, "SHA-384");
}

fuzz_target!(|input: Input<'_>| {
    let mut files = BTreeMap::new();
    for (name, content) in input.files.iter().take(8) {
        let content = content_bytes(content);
        if let Ok(sql) = std::str::from_utf8(&content) {
            check_push("fuzzed", sql);
        }
        let name = name_bytes(name);
        if usable(&name) {
            files.insert(name, content);
        }
    }
    check_push(input.next.0, input.next.1);

    let mut want = Vec::new();
    let mut must_fail = false;
    for (name, content) in &files {
        match expected(name, content) {
            None => {}
            Some(Ok(m)) => want.push(m),
            Some(Err(())) => must_fail = true,
        }
    }
    want.sort_by_key(|m| (m.version, m.kind));
    want.retain(|m| m.kind != 2);
    let distinct = want.windows(2).all(|w| w[0].version < w[1].version);
    let positive = want.iter().all(|m| m.version > 0);
    if !must_fail
        && (!positive && skip_known("nonpositive") || !distinct && skip_known("duplicate"))
    {
        return;
    }

    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, content) in &files {
        std::fs::write(dir.path().join(OsStr::from_bytes(name)), content).expect("writing a file");
    }
    let loaded = rt().block_on(Migrations::from_dir(dir.path()));

    let migrations = match loaded {
        Ok(migrations) => migrations,
        Err(hidra::Error::InvalidConfig(message)) => {
            // Only a bad name or content, or versions that are not positive
            // and distinct, may fail.
            assert!(
                must_fail || !distinct || !positive,
                "{message} for {files:?}"
            );
            return;
        }
        Err(other) => panic!("from_dir failed with another kind of error: {other:?}"),
    };
    assert!(!must_fail, "loaded {migrations:?} from {files:?}");
    let got: Vec<_> = migrations.iter().collect();
    assert_eq!(got.len(), want.len(), "{got:?} from {files:?}");
    for (m, w) in got.iter().zip(&want) {
        assert_eq!(m.version, w.version);
        assert_eq!(m.description, w.description);
        assert_eq!(m.sql, w.sql);
        assert_eq!(m.no_tx, w.sql.starts_with(MARKER));
        let pushed = Migrations::new().push(&w.description, &w.sql);
        let checksum = &pushed.iter().next().expect("one migration").checksum;
        assert_eq!(&m.checksum, checksum, "sqlx and push checksum alike");
    }
    assert!(got.windows(2).all(|w| w[0].version < w[1].version));
    assert_eq!(migrations.latest(), got.last().map_or(0, |m| m.version));

    if migrations.latest() == i64::MAX && skip_known("overflow") {
        return;
    }
    // `try_push` (what `push` panics with, as documented): no version after
    // `i64::MAX` is an error, anything else numbers the next one.
    match migrations.clone().try_push(input.next.0, input.next.1) {
        Ok(more) => {
            assert_eq!(more.len(), migrations.len() + 1);
            assert_eq!(Some(more.latest()), migrations.latest().checked_add(1));
        }
        Err(hidra::Error::InvalidConfig(_)) => assert_eq!(migrations.latest(), i64::MAX),
        Err(other) => panic!("try_push failed with another kind of error: {other:?}"),
    }
});
