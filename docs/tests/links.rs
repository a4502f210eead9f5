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
            && text.contains("```rust")
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
