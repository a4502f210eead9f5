//! The troubleshooting chapter lists every variant of every error enum.

use std::path::Path;

/// The variants of `pub enum <name>` in `file`: the lines indented by four
/// spaces that start with a capital letter, between the enum's braces.
fn variants(file: &str, name: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = std::fs::read_to_string(root.join(file)).unwrap();
    let start = source
        .find(&format!("pub enum {name} {{"))
        .unwrap_or_else(|| panic!("no enum {name} in {file}"));
    source[start..]
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with('}'))
        .filter_map(|line| {
            let rest = line.strip_prefix("    ")?;
            rest.starts_with(|c: char| c.is_ascii_uppercase()).then(|| {
                rest.split(|c: char| !c.is_alphanumeric())
                    .next()
                    .unwrap()
                    .to_owned()
            })
        })
        .collect()
}

#[test]
fn every_error_variant_is_in_the_troubleshooting_chapter() {
    let chapter = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/troubleshooting.md"),
    )
    .unwrap();
    let enums = [
        ("hidra::Error", "crates/hidra/src/error.rs", "Error"),
        (
            "hidra::auth::AuthError",
            "crates/hidra/src/auth/mod.rs",
            "AuthError",
        ),
        (
            "hidra_axum::Error",
            "crates/hidra-axum/src/error.rs",
            "Error",
        ),
        (
            "hidra_apalis::Error",
            "crates/hidra-apalis/src/error.rs",
            "Error",
        ),
    ];
    let mut missing = Vec::new();
    for (title, file, name) in enums {
        let heading = format!("## `{title}`");
        let section = chapter
            .split_once(&heading)
            .unwrap_or_else(|| panic!("no section {heading}"))
            .1;
        let section = section.split("\n## ").next().unwrap();
        let found = variants(file, name);
        assert!(
            found.len() > 5,
            "{title}: only {found:?} found; did the enum move?"
        );
        for variant in found {
            if !section.contains(&format!("| `{variant}` |")) {
                missing.push(format!("{title}::{variant}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/src/troubleshooting.md: {missing:?}"
    );
}
