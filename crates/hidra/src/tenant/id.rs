use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// The longest tenant id accepted, in characters (and bytes: ids are ASCII).
pub const MAX_TENANT_ID_LEN: usize = 50;

/// Schema names hidra keeps for itself; no tenant id may be one of them.
pub(crate) const INTERNAL_SCHEMA: &str = "hidra";

/// A validated tenant identifier.
///
/// # Rules
///
/// A tenant id is 1 to 50 characters of lowercase ASCII letters (`a`–`z`),
/// digits (`0`–`9`), `-` and `_`, and starts with a letter. These ids are
/// refused as reserved: `public`, `information_schema`, anything starting with
/// `pg_` (PostgreSQL's own schemas), and `hidra` or anything starting with
/// `hidra_` (hidra's internal schemas).
///
/// Validation happens once, in [`TenantId::new`] (also used by [`FromStr`] and
/// serde); a `TenantId` value is therefore always safe to derive a schema name
/// from. No SQL is ever run for an input that failed validation.
///
/// ```
/// use hidra::TenantId;
///
/// let id = TenantId::new("acme-corp")?;
/// assert_eq!(id.as_str(), "acme-corp");
/// assert!(TenantId::new("Acme").is_err());
/// assert!(TenantId::new("pg_catalog").is_err());
/// # Ok::<(), hidra::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// Validates `id` against the [rules](TenantId#rules).
    pub fn new(id: impl AsRef<str>) -> Result<Self> {
        let id = id.as_ref();
        validate(id).map_err(|reason| Error::InvalidTenantId {
            id: truncate_for_display(id),
            reason,
        })?;
        Ok(TenantId(id.to_owned()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id with `-` replaced by `_`, the suffix of its schema name.
    pub(crate) fn schema_suffix(&self) -> String {
        self.0.replace('-', "_")
    }
}

fn validate(id: &str) -> std::result::Result<(), Cow<'static, str>> {
    let first = match id.chars().next() {
        None => return Err("must not be empty".into()),
        Some(c) => c,
    };
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        let what = if bad.is_ascii_uppercase() {
            "uppercase letters are not allowed; use lowercase".to_owned()
        } else if !bad.is_ascii() {
            "non-ASCII characters are not allowed".to_owned()
        } else if bad.is_ascii_whitespace() {
            "whitespace is not allowed".to_owned()
        } else {
            format!("character {bad:?} is not allowed")
        };
        return Err(format!("{what} (only lowercase ASCII letters, digits, `-` and `_`)").into());
    }
    if id.len() > MAX_TENANT_ID_LEN {
        return Err(format!(
            "is {} characters long; the limit is {MAX_TENANT_ID_LEN}",
            id.len()
        )
        .into());
    }
    if !first.is_ascii_lowercase() {
        return Err("must start with a lowercase letter".into());
    }
    let normalized = id.replace('-', "_");
    if normalized == "public" || normalized == "information_schema" || normalized.starts_with("pg_")
    {
        return Err("is reserved by PostgreSQL".into());
    }
    if normalized == INTERNAL_SCHEMA || normalized.starts_with("hidra_") {
        return Err("is reserved for hidra's internal schemas".into());
    }
    Ok(())
}

/// Keeps error messages bounded when someone sends a megabyte of garbage.
fn truncate_for_display(id: &str) -> String {
    const SHOWN: usize = 80;
    if id.chars().count() <= SHOWN {
        id.to_owned()
    } else {
        let mut s: String = id.chars().take(SHOWN).collect();
        s.push('…');
        s
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({:?})", self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        TenantId::new(s)
    }
}

impl TryFrom<String> for TenantId {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        TenantId::new(s)
    }
}

impl TryFrom<&str> for TenantId {
    type Error = Error;

    fn try_from(s: &str) -> Result<Self> {
        TenantId::new(s)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the input, an accepted id keeps the rules its schema
        /// name relies on, and parses back to itself.
        #[test]
        fn any_input_is_refused_or_safe(input in any::<String>()) {
            if let Ok(id) = TenantId::new(&input) {
                let s = id.as_str();
                prop_assert!(s.len() <= MAX_TENANT_ID_LEN);
                prop_assert!(s.starts_with(|c: char| c.is_ascii_lowercase()));
                prop_assert!(s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_')));
                let normalized = s.replace('-', "_");
                prop_assert!(!normalized.starts_with("pg_"));
                prop_assert!(normalized != "hidra" && !normalized.starts_with("hidra_"));
                let schema = format!("tenant_{}", id.schema_suffix());
                let valid = crate::sql::Ident::new(schema, "schema").is_ok();
                prop_assert!(valid);
                prop_assert_eq!(TenantId::new(s).unwrap(), id.clone());
            }
        }

        /// Ids of the documented alphabet are accepted unless reserved.
        #[test]
        fn well_formed_ids_are_accepted(input in "[a-z][a-z0-9_-]{0,49}") {
            // Reserved names are compared with `-` read as `_`, as schema
            // names are made.
            let normalized = input.replace('-', "_");
            let reserved = normalized == "public"
                || normalized == "information_schema"
                || normalized.starts_with("pg_")
                || normalized == "hidra"
                || normalized.starts_with("hidra_");
            prop_assert_eq!(TenantId::new(&input).is_ok(), !reserved, "{}", input);
        }
    }

    fn reason(id: &str) -> String {
        match TenantId::new(id) {
            Err(Error::InvalidTenantId { reason, .. }) => reason.into_owned(),
            other => panic!("{id:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn accepts_valid_ids() {
        for ok in [
            "a",
            "acme",
            "acme-corp",
            "acme_corp",
            "a1",
            "x-1-y_2",
            &"a".repeat(50),
        ] {
            assert_eq!(TenantId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_with_the_rule_broken() {
        assert!(reason("").contains("empty"));
        assert!(reason("Acme").contains("uppercase"));
        assert!(reason("ac me").contains("whitespace"));
        assert!(reason("acme'").contains("'\\''"));
        assert!(reason("acme\"").contains("'\"'"));
        assert!(
            reason("a;DROP TABLE x").contains("';'")
                || reason("a;DROP TABLE x").contains("uppercase")
        );
        assert!(reason("acmé").contains("non-ASCII"));
        assert!(reason(&"a".repeat(51)).contains("limit is 50"));
        assert!(reason("1acme").contains("start with a lowercase letter"));
        assert!(reason("-acme").contains("start with a lowercase letter"));
        assert!(reason("public").contains("reserved"));
        assert!(reason("information_schema").contains("reserved"));
        assert!(reason("information-schema").contains("reserved"));
        assert!(reason("pg_catalog").contains("reserved"));
        assert!(reason("pg-temp").contains("reserved"));
        assert!(reason("hidra").contains("reserved"));
        assert!(reason("hidra_template").contains("reserved"));
        assert!(reason("hidra-x").contains("reserved"));
        assert!(reason("pg-x").contains("reserved"));
        // Only `hidra` and `hidra_…` are hidra's: `hidrax` is a tenant.
        assert!(TenantId::new("hidrax").is_ok());
    }

    #[test]
    fn schema_suffix_replaces_hyphens() {
        assert_eq!(
            TenantId::new("acme-corp").unwrap().schema_suffix(),
            "acme_corp"
        );
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"ACME\"").is_err());
    }

    #[test]
    fn long_garbage_is_truncated_in_errors() {
        let err = TenantId::new("X".repeat(10_000)).unwrap_err().to_string();
        assert!(err.len() < 400, "{err}");
    }
}
