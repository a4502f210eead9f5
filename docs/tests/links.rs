//! The guide's links between chapters point at chapters that exist, and
//! every chapter is in the summary.

use std::path::Path;

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The targets of the Markdown links `](target)` in `text`.
fn links(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .collect()
}

#[test]
fn every_link_between_chapters_resolves_and_every_chapter_is_listed() {
    let summary = std::fs::read_to_string(src().join("SUMMARY.md")).unwrap();
    let mut broken = Vec::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.ends_with(".md") {
            continue;
        }
        if name != "SUMMARY.md" && !summary.contains(&format!("]({name})")) {
            broken.push(format!("{name} is not in SUMMARY.md"));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for target in links(&text) {
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            if !src().join(file).is_file() {
                broken.push(format!("{name}: ({target}) does not exist"));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

/// Whether `text` has a Rust sample of its own: a fenced block marked `rust`
/// that is not an mdBook `{{#include}}` of a workspace source (those are
/// compiled with their crate).
fn has_own_rust_sample(text: &str) -> bool {
    text.split("```rust").skip(1).any(|rest| {
        let body = rest.split_once('\n').map_or("", |(_, b)| b);
        let body = body.split("```").next().unwrap_or_default();
        !body.trim_start().starts_with("{{#include")
    })
}

/// Every chapter with Rust samples is compiled as doc-tests (`lib.rs`
/// includes it), so no sample can rot unnoticed.
#[test]
fn every_chapter_with_rust_samples_is_a_doc_test() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("lib.rs")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        if name.ends_with(".md")
            && has_own_rust_sample(&text)
            && !lib.contains(&format!("include_str!(\"src/{name}\")"))
        {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "add these chapters to docs/lib.rs: {missing:?}"
    );
}

/// An included sample names a file of the workspace and an anchor in it.
#[test]
fn included_samples_exist() {
    let mut broken = Vec::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for rest in text.split("{{#include ").skip(1) {
            let target = rest.split("}}").next().unwrap_or_default();
            let (file, anchor) = target.split_once(':').unwrap_or((target, ""));
            let source = std::fs::read_to_string(src().join(file)).unwrap_or_default();
            if source.is_empty()
                || (!anchor.is_empty() && !source.contains(&format!("ANCHOR: {anchor}")))
            {
                broken.push(format!("{}: {target}", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn samples_are_told_apart() {
    assert!(has_own_rust_sample("x\n```rust\nfn main() {}\n```\n"));
    assert!(!has_own_rust_sample(
        "```rust,ignore\n{{#include a.rs:b}}\n```\n"
    ));
    assert!(!has_own_rust_sample("```toml\n[a]\n```\n"));
}
