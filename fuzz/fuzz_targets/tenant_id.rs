//! `hidra::TenantId` parsing on arbitrary bytes.
//!
//! Every way of building an id (`new`, `FromStr`, `TryFrom`, serde) agrees;
//! an accepted id keeps the rules its schema name relies on and round-trips;
//! a refused one is an `InvalidTenantId` with a bounded message.

#![no_main]

use std::str::FromStr;

use hidra::{Ident, MAX_TENANT_ID_LEN, TenantId};
use libfuzzer_sys::fuzz_target;

/// PostgreSQL's identifier limit, in bytes.
const MAX_IDENT_BYTES: usize = 63;

/// The default schema prefix (`HidraBuilder::schema_prefix`).
const DEFAULT_PREFIX: &str = "tenant_";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;
    let parsed = TenantId::new(text);

    let same = |other: Option<TenantId>| assert_eq!(other, parsed.as_ref().ok().cloned());
    same(TenantId::from_str(text).ok());
    same(TenantId::try_from(text).ok());
    same(TenantId::try_from(text.to_owned()).ok());
    let json = serde_json::to_string(text).expect("a string serialises");
    same(serde_json::from_str::<TenantId>(&json).ok());

    match parsed {
        Ok(id) => {
            let s = id.as_str();
            assert_eq!(s, text, "an id is kept as given");
            assert!(!s.is_empty() && s.len() <= MAX_TENANT_ID_LEN, "{s:?}");
            assert!(s.as_bytes()[0].is_ascii_lowercase(), "{s:?}");
            assert!(
                s.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_')),
                "{s:?}"
            );
            let normalized = s.replace('-', "_");
            assert!(
                normalized != "public"
                    && normalized != "information_schema"
                    && !normalized.starts_with("pg_")
                    && normalized != "hidra"
                    && !normalized.starts_with("hidra_"),
                "reserved id accepted: {s:?}"
            );
            let schema = format!("{DEFAULT_PREFIX}{normalized}");
            assert!(schema.len() <= MAX_IDENT_BYTES, "{schema:?}");
            Ident::new(schema, "schema name").expect("the schema name is an identifier");

            assert_eq!(id.to_string(), s);
            assert_eq!(format!("{id:?}"), format!("TenantId({s:?})"));
            let json = serde_json::to_string(&id).expect("an id serialises");
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<TenantId>(&json).ok(), Some(id));
        }
        Err(hidra::Error::InvalidTenantId { id: shown, reason }) => {
            // The refused input is shown truncated to 80 characters plus `…`.
            assert!(shown.chars().count() <= 81, "{} characters", shown.len());
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("TenantId::new failed with another kind of error: {other:?}"),
    }
});
