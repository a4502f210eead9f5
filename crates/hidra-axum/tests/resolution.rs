//! Each resolver, the chain order, path prefix stripping, custom domains and
//! excluded routes, through the layer against a real database.

mod common;

use axum::http::StatusCode;
use common::*;
use hidra_axum::{
    CookieResolver, Error, HeaderResolver, PathPrefixResolver, Resolution, ResolveContext,
    SubdomainResolver, TenantLayer, TenantResolver,
};
use serde_json::json;
use tower::Layer;

#[tokio::test]
async fn header_resolver_reads_x_tenant_id_by_default() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "beta").await;
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()));

    assert_eq!(
        get(&app, "/whoami", &[("x-tenant-id", "alpha")]).await,
        (StatusCode::OK, "alpha".into())
    );
    assert_eq!(
        get(&app, "/marker", &[("X-Tenant-ID", "beta")]).await,
        (StatusCode::OK, "beta".into())
    );
    assert_eq!(
        get(&app, "/marker-tx", &[("x-tenant-id", "alpha")]).await,
        (StatusCode::OK, "alpha".into())
    );
    // Another header name, configured.
    let app = routes().layer(
        TenantLayer::new(ctx.hidra.clone())
            .with_resolver(HeaderResolver::named("x-org".parse().unwrap())),
    );
    assert_eq!(
        get(&app, "/whoami", &[("x-org", "beta")]).await,
        (StatusCode::OK, "beta".into())
    );
    assert_eq!(
        get(&app, "/whoami", &[("x-tenant-id", "beta")]).await.0,
        StatusCode::NOT_FOUND
    );
    // The same header twice with different ids names two tenants.
    assert_eq!(
        get(&app, "/whoami", &[("x-org", "alpha"), ("x-org", "beta")])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&app, "/whoami", &[("x-org", "alpha"), ("x-org", "alpha")]).await,
        (StatusCode::OK, "alpha".into())
    );
}

#[tokio::test]
async fn subdomain_resolver_reads_the_label_before_the_base_domain() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "beta").await;
    tenant_with_marker(&ctx.hidra, "www").await;
    let app = routes().layer(
        TenantLayer::new(ctx.hidra.clone())
            .with_resolver(SubdomainResolver::new("example.com").ignore(["www"])),
    );

    assert_eq!(
        get(&app, "/marker", &[("host", "alpha.example.com")]).await,
        (StatusCode::OK, "alpha".into())
    );
    assert_eq!(
        get(&app, "/marker", &[("host", "Beta.Example.com:8080")]).await,
        (StatusCode::OK, "beta".into())
    );
    // An absolute URI (as HTTP/2 sends it) carries the host too.
    assert_eq!(
        get(&app, "http://alpha.example.com/whoami", &[]).await,
        (StatusCode::OK, "alpha".into())
    );
    // Ignored labels, the bare base domain, nested labels and other hosts
    // give no tenant (even though a tenant `www` exists).
    for host in [
        "www.example.com",
        "example.com",
        "a.alpha.example.com",
        "alpha.example.org",
    ] {
        assert_eq!(
            get(&app, "/whoami", &[("host", host)]).await.0,
            StatusCode::NOT_FOUND,
            "{host}"
        );
    }
}

#[tokio::test]
async fn custom_domains_are_looked_up_in_the_registry_and_cached() {
    let ctx = setup(4).await;
    let alpha = tenant_with(
        &ctx.hidra,
        "alpha",
        json!({ "domains": ["shop.alpha.test", "alpha.test"] }),
    )
    .await;
    tenant_with(&ctx.hidra, "beta", json!({ "domains": ["beta.test"] })).await;
    let layer = TenantLayer::new(ctx.hidra.clone())
        .with_resolver(SubdomainResolver::new("example.com").with_custom_domains());
    let cache = layer.cache().clone();
    let app = routes().layer(layer);

    assert_eq!(
        get(&app, "/marker", &[("host", "shop.alpha.test")]).await,
        (StatusCode::OK, "alpha".into())
    );
    assert_eq!(
        get(&app, "/marker", &[("host", "BETA.test:443")]).await,
        (StatusCode::OK, "beta".into())
    );
    // Subdomains of the base domain still work alongside.
    assert_eq!(
        get(&app, "/marker", &[("host", "alpha.example.com")]).await,
        (StatusCode::OK, "alpha".into())
    );
    assert_eq!(
        get(&app, "/whoami", &[("host", "nobody.test")]).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(ctx.store.domain_lookups(), 3);

    // Known and unknown hosts are now cached: no more lookups.
    for host in ["shop.alpha.test", "beta.test", "nobody.test"] {
        get(&app, "/whoami", &[("host", host)]).await;
    }
    assert_eq!(ctx.store.domain_lookups(), 3);

    // A registry change (a new domain for alpha) reaches the cache.
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    sqlx::query("UPDATE tenants SET metadata = $2 WHERE id = $1")
        .bind("alpha")
        .bind(json!({ "domains": ["nobody.test"] }))
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    cache.sync().await.unwrap();
    assert_eq!(
        get(&app, "/whoami", &[("host", "nobody.test")]).await,
        (StatusCode::OK, "alpha".into())
    );
    assert_eq!(
        get(&app, "/whoami", &[("host", "shop.alpha.test")]).await.0,
        StatusCode::NOT_FOUND
    );
    let _ = alpha;
}

#[tokio::test]
async fn store_finds_tenants_by_domain_and_refuses_shared_domains() {
    let ctx = setup(2).await;
    tenant_with(&ctx.hidra, "alpha", json!({ "domains": ["alpha.test"] })).await;
    tenant_with(&ctx.hidra, "beta", json!({ "domains": "beta.test" })).await;
    tenant_with(&ctx.hidra, "gamma", json!({})).await;
    let store = ctx.hidra.store();
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();

    let found = store.find_by_domain(&mut conn, "alpha.test").await.unwrap();
    assert_eq!(found.map(|t| t.id), Some(id("alpha")));
    assert!(
        store
            .find_by_domain(&mut conn, "ALPHA.test")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_by_domain(&mut conn, "gamma.test")
            .await
            .unwrap()
            .is_none()
    );
    // Only an array of domains counts.
    assert!(
        store
            .find_by_domain(&mut conn, "beta.test")
            .await
            .unwrap()
            .is_none()
    );

    tenant_with(&ctx.hidra, "delta", json!({ "domains": ["alpha.test"] })).await;
    let err = store
        .find_by_domain(&mut conn, "alpha.test")
        .await
        .unwrap_err();
    assert!(matches!(err, hidra::Error::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("`alpha`") && err.to_string().contains("`delta`"));
}

#[tokio::test]
async fn path_prefix_is_stripped_before_routing() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "beta").await;
    let app = TenantLayer::new(ctx.hidra.clone())
        .with_resolver(PathPrefixResolver::new())
        .layer(routes());

    assert_eq!(
        get(&app, "/t/alpha/whoami", &[]).await,
        (StatusCode::OK, "alpha".into())
    );
    assert_eq!(
        get(&app, "/t/beta/marker", &[]).await,
        (StatusCode::OK, "beta".into())
    );
    // The route sees the stripped path and query; OriginalUri keeps the full one.
    assert_eq!(
        get(&app, "/t/alpha/path/a/b?x=1", &[]).await,
        (
            StatusCode::OK,
            "/path/a/b?x=1 <- /t/alpha/path/a/b?x=1".into()
        )
    );
    // No prefix, an empty or malformed segment: no tenant.
    for uri in [
        "/whoami",
        "/t//whoami",
        "/t/Alpha/whoami",
        "/t/al%70ha/whoami",
    ] {
        assert_eq!(get(&app, uri, &[]).await.0, StatusCode::NOT_FOUND, "{uri}");
    }

    // Another prefix.
    let app = TenantLayer::new(ctx.hidra.clone())
        .with_resolver(PathPrefixResolver::prefix("/orgs/"))
        .layer(routes());
    assert_eq!(
        get(&app, "/orgs/beta/whoami", &[]).await,
        (StatusCode::OK, "beta".into())
    );
    assert_eq!(
        get(&app, "/t/beta/whoami", &[]).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn cookie_resolver_reads_its_cookie() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = routes()
        .layer(TenantLayer::new(ctx.hidra.clone()).with_resolver(CookieResolver::new("org")));
    assert_eq!(
        get(&app, "/marker", &[("cookie", "theme=dark; org=alpha; x=y")]).await,
        (StatusCode::OK, "alpha".into())
    );
    assert_eq!(
        get(
            &app,
            "/marker",
            &[("cookie", "theme=dark"), ("cookie", "org=alpha")]
        )
        .await,
        (StatusCode::OK, "alpha".into())
    );
    assert_eq!(
        get(&app, "/marker", &[("cookie", "tenant=alpha")]).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/marker", &[("cookie", "org=alpha; org=beta")])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn first_candidate_of_the_chain_wins() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "beta").await;
    let both = [("x-tenant-id", "alpha"), ("cookie", "tenant=beta")];

    let header_first = routes().layer(
        TenantLayer::new(ctx.hidra.clone())
            .with_resolver(HeaderResolver::new())
            .with_resolver(CookieResolver::default()),
    );
    assert_eq!(
        get(&header_first, "/marker", &both).await,
        (StatusCode::OK, "alpha".into())
    );
    // A resolver that finds nothing passes the turn.
    assert_eq!(
        get(&header_first, "/marker", &[("cookie", "tenant=beta")]).await,
        (StatusCode::OK, "beta".into())
    );

    let cookie_first = routes().layer(
        TenantLayer::new(ctx.hidra.clone())
            .with_resolver(CookieResolver::default())
            .with_resolver(HeaderResolver::new()),
    );
    assert_eq!(
        get(&cookie_first, "/marker", &both).await,
        (StatusCode::OK, "beta".into())
    );
    assert_eq!(
        get(&cookie_first, "/marker", &[("x-tenant-id", "alpha")]).await,
        (StatusCode::OK, "alpha".into())
    );
}

/// A custom resolver: a "verified" source (as the JWT and API-key resolvers
/// will be), here a header standing in for a checked credential.
#[derive(Debug)]
struct FakeToken;

impl TenantResolver for FakeToken {
    async fn resolve(
        &self,
        parts: &http::request::Parts,
        _cx: ResolveContext<'_>,
    ) -> Result<Option<Resolution>, Error> {
        match parts.headers.get("x-token").map(|v| v.to_str().unwrap()) {
            None => Ok(None),
            Some("invalid") => Err(Error::Unauthorized("bad token".into())),
            Some(tenant) => Ok(Some(Resolution::verified(tenant))),
        }
    }
}

#[tokio::test]
async fn a_custom_verified_resolver_takes_part_in_the_chain() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "beta").await;
    let app = routes().layer(
        TenantLayer::new(ctx.hidra.clone())
            .with_resolver(HeaderResolver::new())
            .with_resolver(FakeToken),
    );
    assert_eq!(
        get(&app, "/marker", &[("x-token", "beta")]).await,
        (StatusCode::OK, "beta".into())
    );
    assert_eq!(
        get(
            &app,
            "/marker",
            &[("x-token", "beta"), ("x-tenant-id", "beta")]
        )
        .await,
        (StatusCode::OK, "beta".into())
    );
    let (status, body) = get(&app, "/marker", &[("x-token", "invalid")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, r#"{"error":"unauthorized"}"#);
}

#[tokio::test]
async fn excluded_routes_need_no_tenant() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()).with_excluded("/public/"));

    assert_eq!(
        get(&app, "/public/maybe", &[]).await,
        (StatusCode::OK, "no tenant".into())
    );
    // Excluded routes are not resolved at all, and cost no registry read.
    let before = ctx.store.gets();
    assert_eq!(
        get(&app, "/public/maybe", &[("x-tenant-id", "alpha")]).await,
        (StatusCode::OK, "no tenant".into())
    );
    assert_eq!(ctx.store.gets(), before);
    // Other routes still need one.
    assert_eq!(get(&app, "/maybe", &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&app, "/maybe", &[("x-tenant-id", "alpha")]).await,
        (StatusCode::OK, "tenant alpha".into())
    );
    // A prefix covers whole path segments only.
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()).with_excluded("/may"));
    assert_eq!(get(&app, "/maybe", &[]).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_inner_layer_cannot_replace_the_tenant_of_an_outer_one() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "beta").await;
    // Outer layer: `x-outer`; inner layer: the default `X-Tenant-ID`.
    let inner = TenantLayer::new(ctx.hidra.clone());
    let outer = TenantLayer::new(ctx.hidra.clone())
        .with_resolver(HeaderResolver::named("x-outer".parse().unwrap()));
    let app = routes().layer(inner).layer(outer);

    assert_eq!(
        get(&app, "/marker", &[("x-outer", "alpha")]).await,
        (StatusCode::OK, "alpha".into()),
        "the inner layer keeps the outer tenant"
    );
    assert_eq!(
        get(
            &app,
            "/marker",
            &[("x-outer", "alpha"), ("x-tenant-id", "alpha")]
        )
        .await,
        (StatusCode::OK, "alpha".into())
    );
    let (status, body) = get(
        &app,
        "/marker",
        &[("x-outer", "alpha"), ("x-tenant-id", "beta")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body, json!({ "error": "tenant_conflict" }).to_string());
}
