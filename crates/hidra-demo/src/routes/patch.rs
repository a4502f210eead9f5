//! `Option<Option<T>>` for PATCH bodies: absent = keep, `null` = clear.

use serde::{Deserialize, Deserializer};

/// Deserializes a present field (even `null`) as `Some`.
pub(super) fn deserialize<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}
