//! API key parsing: `hidra::auth::ApiKeys::key_id_of` on arbitrary text,
//! against the documented shape `hk_<24 lowercase hex>_<64 lowercase hex>`,
//! and `ApiKeys::verify` refusing what does not parse with `InvalidKey`
//! (before any database access; see `hidra_fuzz::env` for the handle).
//!
//! Inputs are any text, keys assembled from fuzzed pieces, and real-shaped
//! keys with one character changed.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hidra::auth::{ApiKeys, AuthError};
use hidra_fuzz::env;
use libfuzzer_sys::fuzz_target;

const PEPPER: &[u8] = b"hidra-fuzz-pepper-hidra-fuzz-pepper";

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Raw(&'a str),
    Pieces {
        prefix: &'a str,
        id: &'a str,
        separator: &'a str,
        secret: &'a str,
    },
    Changed {
        id: [u8; 12],
        secret: [u8; 32],
        at: u8,
        to: char,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key id of `presented` if it has the documented shape.
fn documented(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix("hk_")?;
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (id, tail) = (rest.get(..24)?, rest.get(24..)?);
    let secret = tail.strip_prefix('_')?;
    (lower_hex(id) && secret.len() == 64 && lower_hex(secret)).then_some(id)
}

fn keys() -> &'static ApiKeys {
    static KEYS: OnceLock<ApiKeys> = OnceLock::new();
    KEYS.get_or_init(|| ApiKeys::new(env().hidra.clone(), PEPPER).expect("a long enough pepper"))
}

fuzz_target!(|input: Input<'_>| {
    let (presented, original) = match input {
        Input::Raw(text) => (text.to_owned(), None),
        Input::Pieces {
            prefix,
            id,
            separator,
            secret,
        } => (format!("{prefix}{id}{separator}{secret}"), None),
        Input::Changed { id, secret, at, to } => {
            let key = format!("hk_{}_{}", hex(&id), hex(&secret));
            let at = usize::from(at) % key.chars().count();
            let changed: String = key
                .chars()
                .enumerate()
                .map(|(i, c)| if i == at { to } else { c })
                .collect();
            assert_eq!(ApiKeys::key_id_of(&key), Some(hex(&id).as_str()));
            (changed, Some((hex(&id), at)))
        }
    };

    let parsed = ApiKeys::key_id_of(&presented);
    assert_eq!(parsed, documented(&presented), "{presented:?}");
    if let Some(id) = parsed {
        assert_eq!(presented.get(3..27), Some(id));
    }
    // A real key with one character changed: refused, or another key id
    // when the change is in the id (positions 3..27), the same when it is
    // in the secret (whose check needs the database).
    if let Some((id, at)) = original
        && parsed.is_some()
    {
        if (3..27).contains(&at) && presented.get(at..=at) != id.get(at - 3..=at - 3) {
            assert_ne!(parsed, Some(id.as_str()), "{presented:?}");
        } else if at >= 27 {
            assert_eq!(parsed, Some(id.as_str()), "{presented:?}");
        }
    }

    let verdict = env().rt.block_on(keys().verify(&presented));
    match (parsed, &verdict) {
        (None, Err(hidra::Error::Auth(AuthError::InvalidKey))) => {}
        // Well-formed: looked up on a server without the key table.
        (
            Some(_),
            Err(hidra::Error::InvalidConfig(_) | hidra::Error::Auth(AuthError::UnknownKey)),
        ) => {}
        (parsed, verdict) => panic!("{presented:?} parsed as {parsed:?}, verified to {verdict:?}"),
    }
});
