//! Every built-in resolver of `hidra-axum` on a request head built from
//! arbitrary URI, header, host and cookie bytes.
//!
//! `HeaderResolver`, `SubdomainResolver` (plain and `with_custom_domains`),
//! `PathPrefixResolver`, `CookieResolver` (default and fuzzed names and
//! prefixes), `JwtResolver` (bearer and cookie) and `ApiKeyResolver` run
//! through their public `TenantResolver::resolve`, over a `TenantCache` of a
//! `Hidra` connected once to the test server (see `hidra_fuzz::env`). None may
//! panic; a candidate either is a valid `TenantId` or fails validation with
//! `InvalidTenantId`; an error is one of the kinds the resolver documents,
//! answered with 401, 403 or 503. Each resolver's result is also checked
//! against what its docs promise for that request, and a valid id taken from
//! the input, put in each place of an otherwise empty request, must resolve
//! to exactly that id.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hidra::TenantId;
use hidra::auth::{ApiKeys, Claims, Jwt};
use hidra_axum::{
    ApiKeyResolver, CookieResolver, Error, HeaderResolver, JwtResolver, PathPrefixResolver,
    Resolution, ResolveContext, SubdomainResolver, TenantResolver,
};
use hidra_fuzz::{CUSTOM_DOMAINS, env};
use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"hidra-fuzz-secret-hidra-fuzz-secret";
const SESSION_COOKIE: &str = "session";

#[derive(Arbitrary, Debug)]
enum Name<'a> {
    TenantId,
    Host,
    Cookie,
    Authorization,
    ApiKey,
    Other(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
enum TokenPlace {
    Nowhere,
    Bearer,
    Cookie,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    uri: &'a [u8],
    headers: Vec<(Name<'a>, &'a [u8])>,
    /// Where to add a valid token for `id` (or `acme`).
    token: TokenPlace,
    base_domain: &'a str,
    ignored: Vec<&'a str>,
    path_prefix: &'a str,
    cookie_name: &'a str,
    /// Put in each place of a clean request when it is a valid id.
    id: &'a str,
}

struct Fixed {
    jwt: Jwt,
    keys: ApiKeys,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| Fixed {
        jwt: Jwt::hs256(SECRET).expect("a long enough secret"),
        keys: ApiKeys::new(env().hidra.clone(), SECRET).expect("a long enough pepper"),
    })
}

fn header_name(name: &Name<'_>) -> Option<HeaderName> {
    Some(match name {
        Name::TenantId => HeaderName::from_static("x-tenant-id"),
        Name::Host => header::HOST,
        Name::Cookie => header::COOKIE,
        Name::Authorization => header::AUTHORIZATION,
        Name::ApiKey => HeaderName::from_static("x-api-key"),
        Name::Other(bytes) => HeaderName::from_bytes(bytes).ok()?,
    })
}

fn token_for(id: &TenantId) -> String {
    let tenant = hidra::testing::tenant_record(id.as_str());
    fixed()
        .jwt
        .issue("7", &tenant, ["member"])
        .expect("an HS256 Jwt issues")
}

fn request(input: &Input<'_>) -> Parts {
    let mut parts = http::Request::new(()).into_parts().0;
    if let Ok(uri) = Uri::try_from(input.uri) {
        parts.uri = uri;
    }
    for (name, value) in &input.headers {
        if let (Some(name), Ok(value)) = (header_name(name), HeaderValue::from_bytes(value)) {
            parts.headers.append(name, value);
        }
    }
    let id = TenantId::new(input.id).unwrap_or_else(|_| TenantId::new("acme").expect("valid"));
    let token = token_for(&id);
    match input.token {
        TokenPlace::Nowhere => {}
        TokenPlace::Bearer => {
            let value = HeaderValue::try_from(format!("Bearer {token}")).expect("ASCII");
            parts.headers.append(header::AUTHORIZATION, value);
        }
        TokenPlace::Cookie => {
            let value = HeaderValue::try_from(format!("{SESSION_COOKIE}={token}")).expect("ASCII");
            parts.headers.append(header::COOKIE, value);
        }
    }
    parts
}

type Outcome = Result<Option<Resolution>, Error>;

async fn run(resolver: &dyn TenantResolver, parts: &Parts) -> Outcome {
    let env = env();
    let outcome = resolver
        .resolve(parts, ResolveContext::new(&env.cache))
        .await;
    if let Ok(Some(found)) = &outcome {
        candidate(resolver, found);
    }
    if let Err(error) = &outcome {
        let status = error.status();
        assert!(
            matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{resolver:?} failed with {error:?}, answered with {status}"
        );
    }
    outcome
}

/// A candidate is a valid id or refused as one.
fn candidate(resolver: &dyn TenantResolver, found: &Resolution) -> Option<TenantId> {
    match TenantId::new(found.candidate()) {
        Ok(id) => {
            assert_eq!(id.as_str(), found.candidate());
            Some(id)
        }
        Err(hidra::Error::InvalidTenantId { .. }) => None,
        Err(other) => panic!("{resolver:?}: validating {found:?} failed with {other:?}"),
    }
}

fn claimed(found: &Resolution) {
    assert!(!found.is_verified(), "{found:?}");
    assert_eq!(found.incarnation(), None, "{found:?}");
}

/// The host a request names, as the `SubdomainResolver` docs describe it:
/// the URI's authority, else the `Host` header, port removed, lowercased,
/// trailing dots removed.
fn host_of(parts: &Parts) -> Option<String> {
    let raw = match parts.uri.authority() {
        Some(authority) => authority.host().to_owned(),
        None => {
            let value = parts.headers.get(header::HOST)?.to_str().ok()?.trim();
            match value.strip_prefix('[') {
                Some(rest) => format!("[{}]", rest.split(']').next()?),
                None => value.split(':').next()?.to_owned(),
            }
        }
    };
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

fn check_header(parts: &Parts, outcome: &Outcome) {
    let values: Vec<&HeaderValue> = parts.headers.get_all("x-tenant-id").iter().collect();
    match (outcome, values.split_first()) {
        (Ok(None), None) => {}
        (Err(Error::Conflict), Some((first, rest))) if rest.iter().any(|v| v != first) => {}
        (Ok(Some(found)), Some((first, rest))) if rest.iter().all(|v| v == first) => {
            claimed(found);
            match first.to_str() {
                Ok(text) => assert_eq!(found.candidate(), text.trim()),
                Err(_) => assert!(TenantId::new(found.candidate()).is_err(), "{found:?}"),
            }
        }
        (outcome, _) => panic!("HeaderResolver gave {outcome:?} for {values:?}"),
    }
}

fn check_subdomain(parts: &Parts, base: &str, ignored: &[&str], plain: &Outcome, custom: &Outcome) {
    let suffix = format!(".{}", base.trim().trim_matches('.').to_ascii_lowercase());
    let host = host_of(parts);
    match plain {
        Ok(None) => {}
        Ok(Some(found)) => {
            claimed(found);
            let label = found.candidate();
            assert!(!label.is_empty(), "{found:?}");
            assert!(
                !ignored.iter().any(|i| i.to_ascii_lowercase() == label),
                "ignored label {label:?} resolved"
            );
            assert_eq!(
                host.as_deref(),
                Some(format!("{label}{suffix}").as_str()),
                "{found:?}"
            );
        }
        Err(error) => panic!("SubdomainResolver failed with {error:?}"),
    }
    match (plain, custom) {
        // Under the base domain, custom domains change nothing.
        (Ok(Some(_)), custom) => assert_eq!(custom.as_ref().ok(), plain.as_ref().ok()),
        (_, Ok(None) | Err(Error::Registry(_))) => {}
        (_, Ok(Some(found))) => {
            claimed(found);
            let host = host.expect("a custom domain needs a host");
            assert!(
                CUSTOM_DOMAINS.contains(&(host.as_str(), found.candidate())),
                "{host:?} resolved to {found:?}"
            );
        }
        (_, Err(error)) => panic!("SubdomainResolver (custom domains) failed with {error:?}"),
    }
}

/// The prefix as `PathPrefixResolver::prefix` normalises it.
fn normalised_prefix(prefix: &str) -> String {
    match prefix.trim_matches('/') {
        "" => "/".to_owned(),
        p => format!("/{p}/"),
    }
}

fn check_path(parts: &Parts, prefix: &str, outcome: &Outcome) {
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix(prefix) else {
        assert!(matches!(outcome, Ok(None)), "{outcome:?} for {path:?}");
        return;
    };
    let found = match outcome {
        Ok(Some(found)) => found,
        other => panic!("PathPrefixResolver({prefix:?}) gave {other:?} for {path:?}"),
    };
    claimed(found);
    let (label, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    assert_eq!(found.candidate(), label);
    let uri = found
        .uri()
        .unwrap_or_else(|| panic!("{path:?}: the prefix was not stripped from the URI"));
    assert_eq!(uri.path(), if tail.is_empty() { "/" } else { tail });
    assert_eq!(uri.query(), parts.uri.query());
    assert_eq!(uri.scheme(), parts.uri.scheme());
    assert_eq!(uri.authority(), parts.uri.authority());
}

/// The values of the cookie `name` in every `Cookie` header, as
/// `CookieResolver` reads them.
fn cookie_values<'a>(parts: &'a Parts, name: &str) -> Vec<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| n.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .collect()
}

fn check_cookie(parts: &Parts, name: &str, outcome: &Outcome) {
    let values = cookie_values(parts, name);
    match (outcome, values.split_first()) {
        (Ok(None), None) => {}
        (Err(Error::Conflict), Some((first, rest))) if rest.iter().any(|v| v != first) => {}
        (Ok(Some(found)), Some((first, rest))) if rest.iter().all(|v| v == first) => {
            claimed(found);
            assert_eq!(found.candidate(), *first);
        }
        (outcome, _) => panic!("CookieResolver({name:?}) gave {outcome:?} for {values:?}"),
    }
}

fn check_verified(name: &str, outcome: &Outcome) {
    match outcome {
        Ok(None) | Err(Error::Unauthorized(_)) => {}
        Ok(Some(found)) => {
            assert!(found.is_verified(), "{name}: {found:?}");
            let claims = found
                .extensions()
                .get::<Claims>()
                .unwrap_or_else(|| panic!("{name}: no claims in {found:?}"));
            assert_eq!(claims.tenant.as_str(), found.candidate());
            assert_eq!(found.incarnation(), Some(claims.tenant_incarnation));
        }
        Err(error) => panic!("{name} failed with {error:?}"),
    }
}

/// A valid id put in each place of a clean request resolves to exactly it.
async fn placed(id: &TenantId) {
    let clean = |uri: &str, headers: &[(HeaderName, String)]| {
        let mut parts = http::Request::new(()).into_parts().0;
        parts.uri = uri.parse().expect("a valid URI");
        for (name, value) in headers {
            let value = HeaderValue::try_from(value.as_str()).expect("ASCII");
            parts.headers.append(name.clone(), value);
        }
        parts
    };
    let exactly = |outcome: Outcome, place: &str| {
        let found = outcome
            .unwrap_or_else(|e| panic!("{id:?} in the {place}: {e:?}"))
            .unwrap_or_else(|| panic!("{id:?} in the {place}: nothing resolved"));
        assert_eq!(found.candidate(), id.as_str(), "{place}");
        found
    };
    let s = id.as_str();

    let parts = clean(
        "/",
        &[(HeaderName::from_static("x-tenant-id"), format!(" {s} "))],
    );
    exactly(run(&HeaderResolver::new(), &parts).await, "header");

    let parts = clean("/", &[(header::HOST, format!("{s}.Example.com:8080"))]);
    exactly(
        run(&SubdomainResolver::new("example.com"), &parts).await,
        "host",
    );
    let parts = clean(&format!("https://{s}.example.com/x"), &[]);
    exactly(
        run(&SubdomainResolver::new("example.com"), &parts).await,
        "authority",
    );

    let parts = clean(&format!("/t/{s}/items/7?page=2"), &[]);
    let found = exactly(run(&PathPrefixResolver::new(), &parts).await, "path");
    assert_eq!(
        found.uri().map(|u| u.to_string()).as_deref(),
        Some("/items/7?page=2")
    );

    let parts = clean(
        "/",
        &[(header::COOKIE, format!("a=1; tenant=\"{s}\"; b=2"))],
    );
    exactly(run(&CookieResolver::default(), &parts).await, "cookie");

    let token = token_for(id);
    let jwt = JwtResolver::new(fixed().jwt.clone()).with_cookie(SESSION_COOKIE);
    let parts = clean("/", &[(header::AUTHORIZATION, format!("Bearer {token}"))]);
    let found = exactly(run(&jwt, &parts).await, "bearer token");
    assert!(found.is_verified());
    let parts = clean(
        "/",
        &[(header::COOKIE, format!("{SESSION_COOKIE}={token}"))],
    );
    exactly(run(&jwt, &parts).await, "session cookie");
}

fuzz_target!(|input: Input<'_>| {
    let parts = request(&input);
    let fixed = fixed();
    env().rt.block_on(async {
        let outcome = run(&HeaderResolver::new(), &parts).await;
        check_header(&parts, &outcome);

        for base in ["example.com", input.base_domain] {
            let plain = SubdomainResolver::new(base).ignore(input.ignored.iter().copied());
            let custom = plain.clone().with_custom_domains();
            let plain = run(&plain, &parts).await;
            let custom = run(&custom, &parts).await;
            check_subdomain(&parts, base, &input.ignored, &plain, &custom);
        }

        for (resolver, prefix) in [
            (PathPrefixResolver::new(), "/t/".to_owned()),
            (
                PathPrefixResolver::prefix(input.path_prefix),
                normalised_prefix(input.path_prefix),
            ),
        ] {
            let outcome = run(&resolver, &parts).await;
            check_path(&parts, &prefix, &outcome);
        }

        for name in ["tenant", input.cookie_name] {
            let outcome = run(&CookieResolver::new(name), &parts).await;
            check_cookie(&parts, name, &outcome);
        }

        let jwt = JwtResolver::new(fixed.jwt.clone()).with_cookie(SESSION_COOKIE);
        check_verified("JwtResolver", &run(&jwt, &parts).await);

        match run(&ApiKeyResolver::new(fixed.keys.clone()), &parts).await {
            // No key exists: nothing verifies. A well-formed key reaches the
            // server, which has no key table: 503.
            Ok(None) | Err(Error::Unauthorized(_) | Error::Database { .. }) => {}
            other => panic!("ApiKeyResolver gave {other:?}"),
        }

        if let Ok(id) = TenantId::new(input.id) {
            placed(&id).await;
        }
    });
});
