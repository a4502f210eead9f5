//! `hidra::auth::Jwt::verify` and `verify_for` on three kinds of input:
//!
//! - any text as a token;
//! - arbitrary header and claims bytes, signed with the right key, so that
//!   the header and claim parsing behind the signature check is reached;
//! - a claim set built field by field (any JSON type in each claim, times
//!   around now, extra claims, another HMAC algorithm, `crit`, …), signed
//!   with the right key, under three configurations (default, issuer and
//!   audience required, another tenant claim name).
//!
//! Verification never panics and fails only with `Error::Auth`. What it
//! accepts is live (not expired, not issued or valid in the future beyond the
//! leeway), signs and verifies back to the same claims, and passes
//! `verify_for` for exactly its own tenant record. For a claim set, a token
//! that breaks a documented rule is refused and a well-formed one is accepted
//! with exactly its claims.

#![no_main]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::TimeDelta;
use hidra::TenantId;
use hidra::auth::{AuthError, Claims, Jwt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const SECRET: &[u8] = b"hidra-fuzz-secret-hidra-fuzz-secret";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "api";
/// `Jwt`'s default leeway, in seconds.
const LEEWAY: i64 = 30;
/// Margin kept around every time boundary, for the clock moving on.
const MARGIN: i64 = 5;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Config {
    Default,
    IssuerAudience,
    TenantClaim,
}

#[derive(Arbitrary, Debug)]
enum Json<'a> {
    Absent,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Strs(Vec<&'a str>),
    Object(&'a str, &'a str),
}

#[derive(Arbitrary, Debug)]
enum Time<'a> {
    /// Seconds from now.
    Offset(i32),
    Other(Json<'a>),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
}

#[derive(Arbitrary, Debug)]
struct ClaimSet<'a> {
    sub: Json<'a>,
    tenant: Json<'a>,
    tinc: Json<'a>,
    roles: Json<'a>,
    iat: Time<'a>,
    exp: Time<'a>,
    nbf: Time<'a>,
    iss: Json<'a>,
    aud: Json<'a>,
    extra: Vec<(&'a str, Json<'a>)>,
    alg: Alg,
    crit: Option<Vec<&'a str>>,
    kid: Option<&'a str>,
}

#[derive(Arbitrary, Debug)]
enum Token<'a> {
    Raw(&'a str),
    Signed { header: &'a [u8], claims: &'a [u8] },
    Claims(Box<ClaimSet<'a>>),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    config: Config,
    token: Token<'a>,
}

fn jwt(config: Config) -> &'static Jwt {
    static JWTS: OnceLock<[Jwt; 3]> = OnceLock::new();
    let jwts = JWTS.get_or_init(|| {
        let base = Jwt::hs256(SECRET).expect("a long enough secret");
        [
            base.clone(),
            base.clone().with_issuer(ISSUER).with_audience(AUDIENCE),
            base.with_tenant_claim("org").expect("a free claim name"),
        ]
    });
    &jwts[config as usize]
}

fn tenant_claim(config: Config) -> &'static str {
    match config {
        Config::TenantClaim => "org",
        _ => "tenant",
    }
}

fn now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_secs()).expect("before year 292e9")
}

fn value(json: &Json<'_>) -> Option<Value> {
    Some(match json {
        Json::Absent => return None,
        Json::Null => Value::Null,
        Json::Bool(b) => json!(b),
        Json::Int(n) => json!(n),
        Json::Float(f) => json!(f),
        Json::Str(s) => json!(s),
        Json::Strs(items) => json!(items),
        Json::Object(k, v) => {
            let mut object = Map::new();
            object.insert((*k).to_owned(), json!(v));
            Value::Object(object)
        }
    })
}

fn time_value(time: &Time<'_>, now: i64) -> Option<Value> {
    match time {
        Time::Offset(offset) => Some(json!(now + i64::from(*offset))),
        Time::Other(json) => value(json),
    }
}

/// Encodes `set` and signs it with the right secret.
fn sign(config: Config, set: &ClaimSet<'_>, now: i64) -> String {
    let mut map = Map::new();
    for (name, json) in &set.extra {
        if let Some(v) = value(json) {
            map.insert((*name).to_owned(), v);
        }
    }
    let named = [
        ("sub", value(&set.sub)),
        (tenant_claim(config), value(&set.tenant)),
        ("tinc", value(&set.tinc)),
        ("roles", value(&set.roles)),
        ("iat", time_value(&set.iat, now)),
        ("exp", time_value(&set.exp, now)),
        ("nbf", time_value(&set.nbf, now)),
        ("iss", value(&set.iss)),
        ("aud", value(&set.aud)),
    ];
    for (name, v) in named {
        match v {
            Some(v) => map.insert(name.to_owned(), v),
            None => map.remove(name),
        };
    }
    let mut header = Header::new(match set.alg {
        Alg::Hs256 => Algorithm::HS256,
        Alg::Hs384 => Algorithm::HS384,
        Alg::Hs512 => Algorithm::HS512,
    });
    header.crit = set
        .crit
        .as_ref()
        .map(|c| c.iter().map(|s| (*s).to_owned()).collect());
    header.kid = set.kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &map, &EncodingKey::from_secret(SECRET)).expect("HMAC signs")
}

/// Header and claims bytes, base64url-encoded and signed with HS256.
fn sign_bytes(header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET);
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HMAC signs");
    format!("{message}.{signature}")
}

fn offset(time: &Time<'_>) -> Option<i64> {
    match time {
        Time::Offset(o) => Some(i64::from(*o)),
        Time::Other(_) => None,
    }
}

/// What the docs say of `set`: `Some(false)` when it breaks a rule,
/// `Some(true)` when it is well-formed, `None` in between (left to the
/// general checks).
fn expected(config: Config, set: &ClaimSet<'_>, now: i64) -> Option<bool> {
    let valid_tenant = matches!(set.tenant, Json::Str(s) if TenantId::new(s).is_ok());
    let past = |t: &Time<'_>, by: i64| offset(t).is_some_and(|o| o < -by);
    let future = |t: &Time<'_>, by: i64| offset(t).is_some_and(|o| o > by);
    let breaks = set.alg != Alg::Hs256
        || set.crit.is_some()
        || !valid_tenant
        || !matches!(set.sub, Json::Str(_))
        || past(&set.exp, LEEWAY + MARGIN)
        || future(&set.nbf, LEEWAY + MARGIN)
        || future(&set.iat, LEEWAY + MARGIN);
    if breaks {
        return Some(false);
    }
    let named = [
        "sub",
        tenant_claim(config),
        "tinc",
        "roles",
        "iat",
        "exp",
        "nbf",
        "iss",
        "aud",
    ];
    let (iss_ok, aud_ok) = match config {
        Config::IssuerAudience => (
            matches!(set.iss, Json::Str(ISSUER)),
            matches!(set.aud, Json::Str(AUDIENCE)),
        ),
        _ => (
            matches!(set.iss, Json::Absent | Json::Str(_)),
            matches!(set.aud, Json::Absent),
        ),
    };
    let well_formed = matches!(set.tinc, Json::Int(_))
        && matches!(set.roles, Json::Absent | Json::Null | Json::Strs(_))
        && offset(&set.iat).is_some_and(|o| o <= 0)
        && offset(&set.exp).is_some_and(|o| o > MARGIN)
        // NumericDates before 1970 are refused (jsonwebtoken reads them as u64).
        && (matches!(set.nbf, Time::Other(Json::Absent))
            || past(&set.nbf, MARGIN) && offset(&set.nbf).is_some_and(|o| now + o >= 0))
        && iss_ok
        && aud_ok
        && set.extra.iter().all(|(name, _)| !named.contains(name));
    well_formed.then_some(true)
}

/// The claims a well-formed `set` must verify to.
fn claims_of(config: Config, set: &ClaimSet<'_>, token: &Claims) {
    let (Json::Str(sub), Json::Str(tenant), Json::Int(tinc)) = (&set.sub, &set.tenant, &set.tinc)
    else {
        unreachable!("checked by `expected`")
    };
    assert_eq!(token.sub, *sub);
    assert_eq!(token.tenant.as_str(), *tenant);
    assert_eq!(token.tenant_incarnation, *tinc);
    let roles: Vec<&str> = match &set.roles {
        Json::Strs(roles) => roles.clone(),
        _ => Vec::new(),
    };
    assert_eq!(token.roles, roles);
    assert_eq!(
        token.iss.as_deref(),
        match set.iss {
            Json::Str(iss) => Some(iss),
            _ => None,
        }
    );
    let aud = matches!(config, Config::IssuerAudience).then_some(AUDIENCE);
    assert_eq!(token.aud.as_deref(), aud);
}

/// What holds of any accepted token.
fn accepted(config: Config, claims: &Claims, token: &str) {
    let jwt = jwt(config);
    let now = now();
    assert!(claims.exp >= now - LEEWAY - MARGIN, "expired: {claims:?}");
    assert!(
        claims.iat <= now + LEEWAY + MARGIN,
        "issued ahead: {claims:?}"
    );
    if let Some(nbf) = claims.nbf {
        assert!(nbf <= now + LEEWAY + MARGIN, "not yet valid: {claims:?}");
    }
    let again = jwt.sign(claims).expect("an HS256 Jwt signs");
    assert_eq!(jwt.verify(&again).as_ref().ok(), Some(claims), "{again}");

    // Bound to exactly its tenant's incarnation: the record of that id
    // created at that microsecond, not one a microsecond later.
    let mut record = hidra::testing::tenant_record(claims.tenant.as_str());
    for _ in 0..2 {
        let verdict = jwt.verify_for(token, &record);
        if claims.tenant_incarnation == record.incarnation() {
            assert_eq!(verdict.as_ref().ok(), Some(claims));
        } else {
            assert!(
                matches!(verdict, Err(hidra::Error::Auth(AuthError::WrongTenant))),
                "{verdict:?}"
            );
        }
        record.created_at += TimeDelta::microseconds(1);
    }
    let other = if claims.tenant.as_str() == "other" {
        "another"
    } else {
        "other"
    };
    let verdict = jwt.verify_for(token, &hidra::testing::tenant_record(other));
    assert!(
        matches!(verdict, Err(hidra::Error::Auth(AuthError::WrongTenant))),
        "{verdict:?}"
    );
}

fuzz_target!(|input: Input<'_>| {
    let config = input.config;
    let jwt = jwt(config);
    let now = now();
    let (token, expected) = match &input.token {
        Token::Raw(text) => ((*text).to_owned(), None),
        Token::Signed { header, claims } => (sign_bytes(header, claims), None),
        Token::Claims(set) => (sign(config, set, now), expected(config, set, now)),
    };
    let verdict = jwt.verify(&token);
    match &verdict {
        Ok(claims) => accepted(config, claims, &token),
        Err(hidra::Error::Auth(_)) => {}
        Err(other) => panic!("verify failed with another kind of error: {other:?}"),
    }
    match (expected, &verdict) {
        (Some(false), Ok(claims)) => panic!("accepted a token that breaks a rule: {claims:?}"),
        (Some(true), Err(e)) => panic!("refused a well-formed token: {e:?}"),
        (Some(true), Ok(claims)) => {
            let Token::Claims(set) = &input.token else {
                unreachable!()
            };
            claims_of(config, set, claims);
        }
        _ => {}
    }
});
