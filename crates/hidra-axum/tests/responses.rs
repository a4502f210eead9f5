//! What clients see: uniform refusals that reveal no tenant, 403 on
//! conflicting sources, extractor rejections as responses, and what handlers
//! see: the tracing span and the task-local tenant.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use common::*;
use hidra_axum::{Error, Resolution, ResolveContext, TenantLayer, TenantResolver};
use serde_json::json;

/// Stands in for a verified credential (a JWT claim): `x-token: <tenant>`.
#[derive(Debug)]
struct FakeToken;

impl TenantResolver for FakeToken {
    async fn resolve(
        &self,
        parts: &http::request::Parts,
        _cx: ResolveContext<'_>,
    ) -> Result<Option<Resolution>, Error> {
        let found = parts
            .headers
            .get("x-token")
            .map(|v| Resolution::verified(v.to_str().unwrap()));
        Ok(found)
    }
}

#[tokio::test]
async fn missing_malformed_unknown_and_inactive_tenants_look_the_same() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "held").await;
    ctx.hidra.suspend(&id("held")).await.unwrap();
    tenant_with_marker(&ctx.hidra, "leaving").await;
    // A tenant caught mid-removal, as the lifecycle leaves it while deleting.
    let mut conn = ctx.hidra.acquire_shared().await.unwrap();
    sqlx::query("UPDATE tenants SET status = 'deleting' WHERE id = 'leaving'")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let layer = TenantLayer::new(ctx.hidra.clone());
    let app = routes().layer(layer);
    let reads_before = ctx.store.gets();
    let too_long = "a".repeat(51);

    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("missing", vec![]),
        ("empty", vec![("x-tenant-id", "")]),
        (
            "malformed",
            vec![("x-tenant-id", "Robert'); DROP TABLE tenants;--")],
        ),
        ("uppercase", vec![("x-tenant-id", "ALPHA")]),
        ("reserved", vec![("x-tenant-id", "pg_catalog")]),
        ("too long", vec![("x-tenant-id", too_long.as_str())]),
        ("unknown", vec![("x-tenant-id", "nobody")]),
        ("suspended", vec![("x-tenant-id", "held")]),
        ("deleting", vec![("x-tenant-id", "leaving")]),
    ];
    let mut answers = Vec::new();
    for (what, headers) in &cases {
        for uri in ["/marker", "/whoami", "/does-not-exist"] {
            let (status, headers, body) = send(app.clone(), get_req(uri, headers)).await;
            answers.push((what, uri, status, headers, body));
        }
    }
    let (_, _, status, headers, body) = &answers[0];
    assert_eq!(*status, StatusCode::NOT_FOUND);
    assert_eq!(&body[..], br#"{"error":"tenant_not_found"}"#);
    for (what, uri, s, h, b) in &answers {
        assert_eq!(s, status, "{what} {uri}");
        assert_eq!(b, body, "{what} {uri}");
        assert_eq!(h, headers, "{what} {uri}");
    }
    // And the active tenant is served.
    assert_eq!(
        get(&app, "/whoami", &[("x-tenant-id", "alpha")]).await,
        (StatusCode::OK, "alpha".into())
    );
    // The registry was never queried for an id that failed validation: only
    // alpha, nobody, held and leaving were looked up (each once, then cached).
    assert_eq!(ctx.store.gets() - reads_before, 4);
}

#[tokio::test]
async fn the_uniform_answer_is_configurable() {
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "held").await;
    ctx.hidra.suspend(&id("held")).await.unwrap();
    let app = routes().layer(
        TenantLayer::new(ctx.hidra.clone())
            .with_not_found(StatusCode::UNAUTHORIZED, &json!({ "error": "nope" })),
    );
    let missing = send(app.clone(), get_req("/whoami", &[])).await;
    let held = send(app.clone(), get_req("/whoami", &[("x-tenant-id", "held")])).await;
    assert_eq!(missing.0, StatusCode::UNAUTHORIZED);
    assert_eq!(&missing.2[..], br#"{"error":"nope"}"#);
    assert_eq!(missing, held);
}

#[tokio::test]
async fn sources_that_disagree_with_a_verified_one_get_403() {
    let ctx = setup(4).await;
    tenant_with_marker(&ctx.hidra, "acme").await;
    tenant_with_marker(&ctx.hidra, "globex").await;
    for layer in [
        TenantLayer::new(ctx.hidra.clone())
            .with_resolver(hidra_axum::HeaderResolver::new())
            .with_resolver(FakeToken),
        TenantLayer::new(ctx.hidra.clone())
            .with_resolver(FakeToken)
            .with_resolver(hidra_axum::HeaderResolver::new()),
    ] {
        let app = routes().layer(layer);
        let before = ctx.store.gets();
        let (status, body) = get(
            &app,
            "/marker",
            &[("x-tenant-id", "acme"), ("x-token", "globex")],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body, r#"{"error":"tenant_conflict"}"#);
        // Refused before any lookup: the answer does not depend on which
        // tenants exist.
        let (status, _) = get(
            &app,
            "/marker",
            &[("x-tenant-id", "acme"), ("x-token", "nobody")],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(ctx.store.gets(), before);
        // Agreement, or the verified source alone, is served.
        assert_eq!(
            get(
                &app,
                "/marker",
                &[("x-tenant-id", "globex"), ("x-token", "globex")]
            )
            .await,
            (StatusCode::OK, "globex".into())
        );
        assert_eq!(
            get(&app, "/marker", &[("x-token", "acme")]).await,
            (StatusCode::OK, "acme".into())
        );
    }
}

#[tokio::test]
async fn extractors_without_the_layer_reject_with_a_clear_message() {
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = routes();
    for uri in ["/whoami", "/marker", "/marker-tx"] {
        let (status, body) = get(&app, uri, &[("x-tenant-id", "alpha")]).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "internal_error");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("no tenant in request extensions: is `TenantLayer` installed"),
            "{body}"
        );
    }
    // `Option<Tenant>` is simply `None`.
    assert_eq!(
        get(&app, "/maybe", &[("x-tenant-id", "alpha")]).await,
        (StatusCode::OK, "no tenant".into())
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_without_its_text() {
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = routes().layer(TenantLayer::new(ctx.hidra.clone()));
    assert_eq!(
        get(&app, "/marker", &[("x-tenant-id", "alpha")]).await.0,
        StatusCode::OK
    );
    ctx.hidra.close().await;
    // alpha is cached: resolution still works, the connection does not.
    let (status, body) = get(&app, "/marker", &[("x-tenant-id", "alpha")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, r#"{"error":"service_unavailable"}"#);
    // An id not cached needs the registry, which is unreachable.
    let (status, body) = get(&app, "/marker", &[("x-tenant-id", "beta")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, r#"{"error":"service_unavailable"}"#);
}

/// Span (or event) fields by name.
type Fields = HashMap<String, String>;

/// Records the `tenant` and `request_id` fields of the spans in which events
/// are emitted.
#[derive(Clone, Default)]
struct SpanFields {
    spans: Arc<Mutex<HashMap<u64, Fields>>>,
    events: Arc<Mutex<Vec<(String, Fields)>>>,
}

struct Visitor<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanFields
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = HashMap::new();
        attrs.record(&mut Visitor(&mut fields));
        self.spans.lock().unwrap().insert(id.into_u64(), fields);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut spans = self.spans.lock().unwrap();
        let fields = spans.entry(id.into_u64()).or_default();
        values.record(&mut Visitor(fields));
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = HashMap::new();
        event.record(&mut Visitor(&mut message));
        let Some(text) = message.get("message").cloned() else {
            return;
        };
        let mut fields = HashMap::new();
        if let Some(scope) = ctx.event_scope(event) {
            let spans = self.spans.lock().unwrap();
            for span in scope.from_root() {
                if let Some(f) = spans.get(&span.id().into_u64()) {
                    fields.extend(f.clone());
                }
            }
        }
        self.events.lock().unwrap().push((text, fields));
    }
}

async fn traced(tenant: hidra_axum::CurrentTenant) -> String {
    tracing::info!("handling {}", tenant.id);
    tenant.id.to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn handlers_run_in_a_span_with_the_tenant_and_request_id_and_in_its_context() {
    use tracing_subscriber::layer::SubscriberExt;

    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    tenant_with_marker(&ctx.hidra, "beta").await;
    let fields = SpanFields::default();
    let subscriber = tracing_subscriber::registry().with(fields.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = routes()
        .route("/traced", axum::routing::get(traced))
        .layer(TenantLayer::new(ctx.hidra.clone()));
    // Twice each: the first request waits for the registry, the second
    // finds the record cached (the layer's path without any `.await`).
    for _ in 0..2 {
        get(
            &app,
            "/traced",
            &[("x-tenant-id", "alpha"), ("x-request-id", "req-1")],
        )
        .await;
        get(&app, "/traced", &[("x-tenant-id", "beta")]).await;
    }

    let events = fields.events.lock().unwrap().clone();
    let of = |message: &str| -> Vec<_> {
        events
            .iter()
            .filter(|(m, _)| m == message)
            .map(|(_, fields)| fields.clone())
            .collect()
    };
    let alpha = of("handling alpha");
    assert_eq!(alpha.len(), 2, "{events:?}");
    for fields in &alpha {
        assert_eq!(fields.get("tenant").map(String::as_str), Some("alpha"));
        assert_eq!(fields.get("request_id").map(String::as_str), Some("req-1"));
    }
    let beta = of("handling beta");
    assert_eq!(beta.len(), 2, "{events:?}");
    for fields in &beta {
        assert_eq!(fields.get("tenant").map(String::as_str), Some("beta"));
        assert_eq!(fields.get("request_id"), None);
    }

    // The task-local current tenant is set for the handler, and only there.
    assert_eq!(
        get(&app, "/current", &[("x-tenant-id", "beta")]).await,
        (StatusCode::OK, "beta".into())
    );
    assert!(hidra::context::current().is_none());
}

/// A handler's query error through `?`: text PostgreSQL cannot store is a
/// 422 that says so (never the database's own text), any other failure a
/// bare 500.
#[tokio::test]
async fn query_errors_through_question_mark_are_classified() {
    async fn store(
        mut conn: hidra_axum::RequestConn,
        axum::extract::Path(what): axum::extract::Path<String>,
    ) -> Result<&'static str, Error> {
        let text = if what == "nul" { "a\u{0}b" } else { "fine" };
        let sql = if what == "broken" {
            "SELECT nope FROM marker WHERE tenant = $1"
        } else {
            "SELECT $1::text"
        };
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(text)
            .execute(&mut conn)
            .await?;
        Ok("stored")
    }
    let ctx = setup(2).await;
    tenant_with_marker(&ctx.hidra, "alpha").await;
    let app = axum::Router::new()
        .route("/store/{what}", axum::routing::get(store))
        .layer(TenantLayer::new(ctx.hidra.clone()));
    let h = [("x-tenant-id", "alpha")];
    assert_eq!(
        get(&app, "/store/plain", &h).await,
        (StatusCode::OK, "stored".into())
    );
    let (status, body) = get(&app, "/store/nul", &h).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "invalid_text");
    assert!(body["message"].as_str().unwrap().contains("NUL"), "{body}");
    assert_eq!(
        get(&app, "/store/broken", &h).await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"internal_error"}"#.into()
        )
    );
}
