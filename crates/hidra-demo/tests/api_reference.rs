//! The guide's HTTP API reference is the OpenAPI document rendered: this test
//! fails when they differ. `HIDRA_BLESS=1` rewrites the chapter instead.

use std::path::PathBuf;

const CHAPTER: &str = "docs/src/http-api.md";

#[test]
fn the_guide_reference_is_the_openapi_document() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(CHAPTER);
    let rendered = hidra_demo::reference::markdown();
    if std::env::var("HIDRA_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &rendered).expect("write the chapter");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{CHAPTER} is not the demo's OpenAPI document rendered: run \
         `HIDRA_BLESS=1 cargo test -p hidra-demo --test api_reference` and commit the chapter"
    );
}

/// The limits the API enforces are in the document (schemathesis found them
/// missing once): page sizes, name lengths, the SKU pattern, no negative
/// prices or stock.
#[test]
fn the_document_states_the_limits_the_api_enforces() {
    let reference = hidra_demo::reference::markdown();
    for expected in [
        "| `limit` | query | integer (int64) | no | 1–100 |",
        "| `offset` | query | integer (int64) | no | ≥ 0 |",
        "| `name` | string | yes | 1–200 characters |",
        "| `sku` | string | yes | 1–64 characters; matches `^[A-Za-z0-9_-]{1,64}$` |",
        "| `price_cents` | integer (int64) | yes | ≥ 0 |",
        "| `stock` | integer (int32) | no | ≥ 0 |",
        "| `quantity` | integer (int32) | yes | ≥ 1 |",
        "| `items` | array of NewOrderItem | yes | at least 1 item(s) |",
        "| `tenant` | string | yes | 1–50 characters; matches `^[a-z][a-z0-9_-]{0,49}$` |",
        "| `password` | string (password) | yes | 8–1024 characters |",
    ] {
        assert!(
            reference.contains(expected),
            "the reference lacks {expected:?}:\n{reference}"
        );
    }
}
