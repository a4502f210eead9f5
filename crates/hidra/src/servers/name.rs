//! [`ServerName`]: the validated name of a registered PostgreSQL server.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// The longest server name accepted, in characters (and bytes: names are ASCII).
pub const MAX_SERVER_NAME_LEN: usize = 50;

/// The name of a server in the [server registry](crate::Servers): 1 to 50
/// characters of lowercase ASCII letters, digits, `-` and `_`, starting with
/// a letter (`eu-1`, `big_customer`). The registry table's `CHECK`
/// constraint says the same.
///
/// ```
/// use hidra::ServerName;
///
/// let name = ServerName::new("eu-1")?;
/// assert_eq!(name.as_str(), "eu-1");
/// assert!(ServerName::new("EU 1").is_err());
/// # Ok::<(), hidra::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServerName(String);

impl ServerName {
    /// Validates `name`; fails with [`Error::InvalidServerName`].
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        validate(name).map_err(|reason| Error::InvalidServerName {
            name: name.chars().take(80).collect(),
            reason,
        })?;
        Ok(ServerName(name.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(name: &str) -> std::result::Result<(), Cow<'static, str>> {
    let Some(first) = name.chars().next() else {
        return Err("must not be empty".into());
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "character {bad:?} is not allowed (only lowercase ASCII letters, digits, `-` and `_`)"
        )
        .into());
    }
    if name.len() > MAX_SERVER_NAME_LEN {
        return Err(format!(
            "is {} characters long; the limit is {MAX_SERVER_NAME_LEN}",
            name.len()
        )
        .into());
    }
    if !first.is_ascii_lowercase() {
        return Err("must start with a lowercase letter".into());
    }
    Ok(())
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerName({:?})", self.0)
    }
}

impl AsRef<str> for ServerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServerName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ServerName::new(s)
    }
}

impl<'de> Deserialize<'de> for ServerName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        ServerName::new(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for good in [
            "a",
            "eu-1",
            "big_customer",
            &"s".repeat(MAX_SERVER_NAME_LEN),
        ] {
            assert!(ServerName::new(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "1eu",
            "-eu",
            "EU",
            "eu 1",
            "eu.1",
            "eu;drop",
            "é",
            &"s".repeat(MAX_SERVER_NAME_LEN + 1),
        ] {
            let err = ServerName::new(bad).unwrap_err();
            assert!(err.is_invalid_server_name(), "{bad:?}: {err}");
        }
    }
}
