//! Property tests of every built-in resolver on arbitrary header, host,
//! cookie and path text: none panics, a candidate is a valid tenant id or
//! refused by validation, an error is one the resolver documents; and a valid
//! id put in each place resolves to exactly that id.
//!
//! The resolvers are called through `TenantResolver::resolve`, whose
//! `ResolveContext` needs a `TenantCache` over a connected `Hidra`: each test
//! gets a throw-away database (`common::setup`), though only custom domains
//! and well-formed API keys query it.

mod common;

use common::*;
use hidra::TenantId;
use hidra::auth::{ApiKeyTable, ApiKeys, Claims, Jwt, NewApiKey};
use hidra_axum::{
    ApiKeyResolver, CookieResolver, Error, HeaderResolver, JwtResolver, PathPrefixResolver,
    Resolution, ResolveContext, SubdomainResolver, TenantCache, TenantResolver,
};
use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::runtime::Runtime;

const SECRET: &[u8] = b"resolver-properties-secret-0123456789";

/// A runtime, a database and a cache to resolve with.
struct World {
    rt: Runtime,
    ctx: Ctx,
    cache: TenantCache,
}

impl World {
    fn new() -> World {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ctx = rt.block_on(setup(2));
        let cache = TenantCache::new(ctx.hidra.clone());
        World { rt, ctx, cache }
    }

    fn resolve(
        &self,
        resolver: &impl TenantResolver,
        parts: &Parts,
    ) -> Result<Option<Resolution>, Error> {
        let outcome = self
            .rt
            .block_on(resolver.resolve(parts, ResolveContext::new(&self.cache)));
        if let Ok(Some(found)) = &outcome {
            candidate_is_valid_or_refused(found);
        }
        if let Err(error) = &outcome {
            // A refusal, never a 500.
            assert!(
                matches!(
                    error.status(),
                    StatusCode::UNAUTHORIZED
                        | StatusCode::FORBIDDEN
                        | StatusCode::SERVICE_UNAVAILABLE
                ),
                "{resolver:?}: {error:?}"
            );
        }
        outcome
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A request head with `uri` and `headers` (raw value bytes).
fn parts(uri: &str, headers: &[(HeaderName, Vec<u8>)]) -> Parts {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.uri = uri.parse().expect("a valid URI");
    for (name, value) in headers {
        let value = HeaderValue::from_bytes(value).expect("valid header value bytes");
        parts.headers.append(name.clone(), value);
    }
    parts
}

fn candidate_is_valid_or_refused(found: &Resolution) {
    match TenantId::new(found.candidate()) {
        Ok(id) => assert_eq!(id.as_str(), found.candidate()),
        Err(hidra::Error::InvalidTenantId { .. }) => {}
        Err(other) => panic!("validating {found:?} failed with {other:?}"),
    }
}

fn claimed(found: &Resolution) {
    assert!(!found.is_verified(), "{found:?}");
    assert_eq!(found.incarnation(), None);
}

/// Any bytes a header value may hold: tab, visible ASCII, space, obs-text.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        Just(b'\t'),
        0x20u8..0x7f,
        0x80u8..=0xff,
        Just(b';'),
        Just(b'='),
        Just(b'"'),
    ];
    proptest::collection::vec(byte, 0..40)
}

/// Text that looks like a tenant id more often than not.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_-]{0,49}",
        "[ -~]{0,60}",
        any::<String>().prop_map(|s| s.chars().filter(|c| !c.is_control()).take(60).collect()),
    ]
}

/// A valid tenant id.
fn valid_id() -> impl Strategy<Value = TenantId> {
    "[a-z][a-z0-9_-]{0,49}".prop_filter_map("a reserved id", |s| TenantId::new(s).ok())
}

fn x_tenant_id() -> HeaderName {
    HeaderName::from_static("x-tenant-id")
}

#[test]
fn header_resolver_on_any_values() {
    let world = World::new();
    let resolver = HeaderResolver::new();
    let values = proptest::collection::vec(
        prop_oneof![header_bytes(), id_like().prop_map(String::into_bytes)]
            .prop_filter("a valid header value", |v| {
                HeaderValue::from_bytes(v).is_ok()
            }),
        0..4,
    );
    runner(256)
        .run(&values, |values| {
            let headers: Vec<_> = values.iter().map(|v| (x_tenant_id(), v.clone())).collect();
            let parts = parts("/", &headers);
            match (world.resolve(&resolver, &parts), values.split_first()) {
                (Ok(None), None) => {}
                (Err(Error::Conflict), Some((first, rest))) => {
                    prop_assert!(rest.iter().any(|v| v != first));
                }
                (Ok(Some(found)), Some((first, rest))) => {
                    claimed(&found);
                    prop_assert!(rest.iter().all(|v| v == first));
                    match std::str::from_utf8(first) {
                        Ok(text) if text.is_ascii() => {
                            prop_assert_eq!(found.candidate(), text.trim());
                        }
                        _ => prop_assert!(TenantId::new(found.candidate()).is_err()),
                    }
                }
                (outcome, _) => prop_assert!(false, "{outcome:?} for {values:?}"),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_valid_id_in_the_header_resolves_to_it() {
    let world = World::new();
    let strategy = (valid_id(), "[ \t]{0,3}", "[ \t]{0,3}", 1usize..4);
    runner(256)
        .run(&strategy, |(id, before, after, times)| {
            let value = format!("{before}{id}{after}").into_bytes();
            let headers = vec![(x_tenant_id(), value); times];
            let found = world
                .resolve(&HeaderResolver::new(), &parts("/", &headers))
                .unwrap()
                .unwrap();
            prop_assert_eq!(found.candidate(), id.as_str());
            // Under another name, configured.
            let name = HeaderName::from_static("x-org");
            let found = world
                .resolve(
                    &HeaderResolver::named(name.clone()),
                    &parts("/", &[(name, id.as_str().into())]),
                )
                .unwrap()
                .unwrap();
            prop_assert_eq!(found.candidate(), id.as_str());
            Ok(())
        })
        .unwrap();
}

/// A host: label-ish text, dots, ports, brackets, case.
fn host_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_.-]{0,20}(\\.[eE]xample\\.[cC]om)?\\.?(:[0-9]{1,5})?",
        "\\[[0-9a-f:]{0,10}\\](:[0-9]{1,5})?",
        "[ -~]{0,40}",
    ]
}

#[test]
fn subdomain_resolver_on_any_host() {
    let world = World::new();
    let resolver = SubdomainResolver::new("example.com").ignore(["www", "API"]);
    runner(256)
        .run(&host_like(), |host| {
            let parts = parts("/", &[(header::HOST, host.clone().into_bytes())]);
            match world.resolve(&resolver, &parts) {
                Ok(None) => {}
                Ok(Some(found)) => {
                    claimed(&found);
                    let label = found.candidate();
                    prop_assert!(!label.is_empty());
                    prop_assert!(label != "www" && label != "api", "{label}");
                    let normalised = host
                        .trim()
                        .split(':')
                        .next()
                        .unwrap()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    prop_assert_eq!(normalised, format!("{label}.example.com"));
                }
                Err(error) => prop_assert!(false, "{error:?} for {host:?}"),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_valid_id_as_the_subdomain_resolves_to_it() {
    let world = World::new();
    let resolver = SubdomainResolver::new(".Example.COM.").ignore(["www"]);
    let strategy = (
        valid_id().prop_filter("an ignored label", |id| id.as_str() != "www"),
        "(Example|EXAMPLE|example)\\.(com|COM)",
        proptest::option::of(1u16..),
        any::<bool>(),
    );
    runner(256)
        .run(&strategy, |(id, base, port, absolute)| {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let host = format!("{}.{base}{port}", id.as_str().to_ascii_uppercase());
            let parts = if absolute {
                // HTTP/2 sends the host in the URI's authority.
                parts(&format!("https://{host}/x"), &[])
            } else {
                parts("/", &[(header::HOST, host.into_bytes())])
            };
            let found = world.resolve(&resolver, &parts).unwrap().unwrap();
            prop_assert_eq!(found.candidate(), id.as_str());
            Ok(())
        })
        .unwrap();
}

#[test]
fn custom_domains_resolve_to_their_tenant_and_nothing_else() {
    let world = World::new();
    world.rt.block_on(tenant_with(
        &world.ctx.hidra,
        "alpha",
        serde_json::json!({ "domains": ["shop.alpha.test"] }),
    ));
    let resolver = SubdomainResolver::new("example.com").with_custom_domains();
    let host = prop_oneof![
        Just("shop.alpha.test".to_owned()),
        Just("SHOP.Alpha.test.:443".to_owned()),
        host_like(),
    ];
    runner(64)
        .run(&host, |host| {
            let parts = parts("/", &[(header::HOST, host.clone().into_bytes())]);
            let normalised = host
                .trim()
                .split(':')
                .next()
                .unwrap()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            match world.resolve(&resolver, &parts).unwrap() {
                None => prop_assert_ne!(normalised, "shop.alpha.test"),
                Some(found) if normalised == "shop.alpha.test" => {
                    prop_assert_eq!(found.candidate(), "alpha");
                }
                // Under the base domain: the label.
                Some(found) => {
                    prop_assert_eq!(normalised, format!("{}.example.com", found.candidate()));
                }
            }
            Ok(())
        })
        .unwrap();
}

/// A request path (and query) that `Uri` accepts.
fn path_like() -> impl Strategy<Value = String> {
    let segment = "[a-zA-Z0-9._~!$&'()*+,;=:@%-]{0,8}";
    (
        proptest::collection::vec(segment, 0..5),
        prop_oneof![Just("/t"), Just("/tenants"), Just("")],
        proptest::option::of("[a-z0-9=&]{0,10}"),
        any::<bool>(),
    )
        .prop_map(|(segments, head, query, slash)| {
            let mut path = head.to_owned();
            for s in segments {
                path.push('/');
                path.push_str(&s);
            }
            if slash || path.is_empty() {
                path.push('/');
            }
            match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            }
        })
        .prop_filter("a valid URI", |p| p.parse::<Uri>().is_ok())
}

#[test]
fn path_prefix_resolver_on_any_path() {
    let world = World::new();
    let prefixes = ["/t/", "/tenants/"];
    runner(256)
        .run(&(path_like(), 0..prefixes.len()), |(uri, which)| {
            let prefix = prefixes[which];
            let resolver = PathPrefixResolver::prefix(prefix);
            let parts = parts(&uri, &[]);
            let path = parts.uri.path();
            let outcome = world.resolve(&resolver, &parts);
            let Some(rest) = path.strip_prefix(prefix) else {
                prop_assert!(matches!(outcome, Ok(None)), "{outcome:?} for {uri}");
                return Ok(());
            };
            let found = outcome.unwrap().unwrap();
            claimed(&found);
            let (label, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            prop_assert_eq!(found.candidate(), label);
            let stripped = found.uri().expect("the prefix is stripped");
            prop_assert_eq!(stripped.path(), if tail.is_empty() { "/" } else { tail });
            prop_assert_eq!(stripped.query(), parts.uri.query());
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_valid_id_in_the_path_resolves_to_it_and_is_stripped() {
    let world = World::new();
    let strategy = (
        valid_id(),
        "(/[a-z0-9]{1,5}){0,3}",
        proptest::option::of("[a-z]{1,4}=[0-9]{1,3}"),
    );
    runner(256)
        .run(&strategy, |(id, rest, query)| {
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            let parts = parts(&format!("http://example.com/t/{id}{rest}{query}"), &[]);
            let found = world
                .resolve(&PathPrefixResolver::new(), &parts)
                .unwrap()
                .unwrap();
            prop_assert_eq!(found.candidate(), id.as_str());
            let rest = if rest.is_empty() { "/" } else { rest.as_str() };
            let expected = format!("http://example.com{rest}{query}");
            prop_assert_eq!(found.uri().map(|u| u.to_string()), Some(expected));
            Ok(())
        })
        .unwrap();
}

/// The values of the cookie `name`, as the docs describe the cookie syntax.
fn cookie_values(headers: &[Vec<u8>], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter_map(|v| std::str::from_utf8(v).ok().filter(|v| v.is_ascii()))
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| n.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .collect()
}

#[test]
fn cookie_resolver_on_any_cookie_header() {
    let world = World::new();
    let pair = ("(tenant|session|x| tenant )", id_like()).prop_map(|(n, v)| format!("{n}={v}"));
    let header = prop_oneof![
        proptest::collection::vec(pair, 0..4).prop_map(|pairs| pairs.join("; ").into_bytes()),
        header_bytes(),
    ]
    .prop_filter("a valid header value", |v| {
        HeaderValue::from_bytes(v).is_ok()
    });
    runner(256)
        .run(&proptest::collection::vec(header, 0..3), |headers| {
            let with: Vec<_> = headers
                .iter()
                .map(|v| (header::COOKIE, v.clone()))
                .collect();
            let outcome = world.resolve(&CookieResolver::default(), &parts("/", &with));
            let values = cookie_values(&headers, "tenant");
            match (outcome, values.split_first()) {
                (Ok(None), None) => {}
                (Err(Error::Conflict), Some((first, rest))) => {
                    prop_assert!(rest.iter().any(|v| v != first));
                }
                (Ok(Some(found)), Some((first, rest))) => {
                    claimed(&found);
                    prop_assert!(rest.iter().all(|v| v == first));
                    prop_assert_eq!(found.candidate(), first.as_str());
                }
                (outcome, _) => prop_assert!(false, "{outcome:?} for {values:?}"),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_valid_id_in_the_cookie_resolves_to_it() {
    let world = World::new();
    let strategy = (
        valid_id(),
        any::<bool>(),
        "([a-z]{1,5}=[a-z0-9]{0,5}; ){0,3}",
    );
    runner(256)
        .run(&strategy, |(id, quoted, others)| {
            let value = if quoted {
                format!("\"{id}\"")
            } else {
                id.to_string()
            };
            let cookie = format!("{others}tenant={value}; last=1").into_bytes();
            let parts = parts("/", &[(header::COOKIE, cookie)]);
            let found = world
                .resolve(&CookieResolver::default(), &parts)
                .unwrap()
                .unwrap();
            prop_assert_eq!(found.candidate(), id.as_str());
            Ok(())
        })
        .unwrap();
}

#[test]
fn jwt_resolver_on_any_authorization_and_cookie() {
    let world = World::new();
    let resolver = JwtResolver::new(Jwt::hs256(SECRET).unwrap()).with_cookie("session");
    let value = prop_oneof![
        header_bytes(),
        "(Bearer|bearer|Basic) [ -~]{0,60}".prop_map(String::into_bytes),
    ]
    .prop_filter("a valid header value", |v| {
        HeaderValue::from_bytes(v).is_ok()
    });
    let strategy = (
        proptest::option::of(value.clone()),
        proptest::option::of(value),
    );
    runner(256)
        .run(&strategy, |(authorization, session)| {
            let mut headers = Vec::new();
            if let Some(v) = authorization {
                headers.push((header::AUTHORIZATION, v));
            }
            if let Some(v) = session {
                headers.push((header::COOKIE, [b"session=".as_slice(), &v].concat()));
            }
            match world.resolve(&resolver, &parts("/", &headers)) {
                // No token, or one that does not verify.
                Ok(None) | Err(Error::Unauthorized(_)) => {}
                other => prop_assert!(false, "{other:?}"),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_token_resolves_to_exactly_its_tenant() {
    let world = World::new();
    let jwt = Jwt::hs256(SECRET).unwrap();
    let resolver = JwtResolver::new(jwt.clone()).with_cookie("session");
    runner(128)
        .run(&(valid_id(), any::<bool>()), |(id, in_cookie)| {
            let tenant = hidra::testing::tenant_record(id.as_str());
            let token = jwt.issue("7", &tenant, ["member"]).unwrap();
            let header = if in_cookie {
                (header::COOKIE, format!("session={token}").into_bytes())
            } else {
                (
                    header::AUTHORIZATION,
                    format!("Bearer {token}").into_bytes(),
                )
            };
            let found = world
                .resolve(&resolver, &parts("/", &[header]))
                .unwrap()
                .unwrap();
            prop_assert!(found.is_verified());
            prop_assert_eq!(found.candidate(), id.as_str());
            prop_assert_eq!(found.incarnation(), Some(tenant.incarnation()));
            let claims = found.extensions().get::<Claims>().unwrap();
            prop_assert_eq!(&claims.tenant, &id);
            Ok(())
        })
        .unwrap();
}

#[test]
fn api_key_resolver_on_any_key_and_a_created_key() {
    let world = World::new();
    let keys = ApiKeys::new(world.ctx.hidra.clone(), SECRET).unwrap();
    let key = world.rt.block_on(async {
        let mut conn = world.ctx.hidra.acquire_shared().await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(ApiKeyTable::default().ddl()))
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        tenant_with_marker(&world.ctx.hidra, "alpha").await;
        keys.create(&id("alpha"), NewApiKey::new("ci"))
            .await
            .unwrap()
    });
    let resolver = ApiKeyResolver::new(keys);
    let secret = key.secret().to_owned();
    let presented = prop_oneof![
        header_bytes(),
        "hk_[0-9a-f]{24}_[0-9a-f]{64}".prop_map(String::into_bytes),
        "[ \t]{0,2}".prop_map(move |pad| format!("{pad}{secret}{pad}").into_bytes()),
    ]
    .prop_filter("a valid header value", |v| {
        HeaderValue::from_bytes(v).is_ok()
    });
    runner(64)
        .run(&(presented, any::<bool>()), |(presented, as_bearer)| {
            let header = if as_bearer {
                (
                    header::AUTHORIZATION,
                    [b"Bearer ".as_slice(), &presented].concat(),
                )
            } else {
                (HeaderName::from_static("x-api-key"), presented.clone())
            };
            let is_the_key =
                std::str::from_utf8(&presented).is_ok_and(|p| p.trim() == key.secret());
            match world.resolve(&resolver, &parts("/", &[header])) {
                Ok(Some(found)) => {
                    prop_assert!(is_the_key, "{found:?}");
                    prop_assert!(found.is_verified());
                    prop_assert_eq!(found.candidate(), "alpha");
                }
                // No key (an empty bearer token is none), or a wrong one.
                Ok(None) | Err(Error::Unauthorized(_)) => prop_assert!(!is_the_key),
                Err(error) => prop_assert!(false, "{error:?}"),
            }
            Ok(())
        })
        .unwrap();
}
