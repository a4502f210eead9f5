//! Logs, request ids and Prometheus metrics.
//!
//! Every request gets an `x-request-id` (the client's, or a new UUID), echoed
//! in the response and carried by a `request` span that also gets the tenant
//! id once the tenant layer has resolved it, so every line logged for a
//! tenant's request names both, including the final access-log line. HTTP
//! metrics use the route template (`/customers/{id}`), never the raw path,
//! and no tenant label: both would make the series count grow without bound.
//! Per-tenant load comes from [`hidra::Hidra::load`], as the top tenants plus
//! one `_other` series.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hidra_axum::CurrentTenant;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{Instrument, Span};

use crate::state::AppState;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the process-wide Prometheus recorder; `None` if one is installed
/// already (then `/metrics` answers 503).
pub fn install_recorder() -> Option<PrometheusHandle> {
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_request_duration_seconds".to_owned()),
            BUCKETS,
        )
        .ok()?
        .install_recorder()
        .ok()
}

/// The span of a request, in its extensions, so that inner layers can add
/// fields to it.
#[derive(Clone, Debug)]
pub struct RequestSpan(pub Span);

/// Opens the request's `request` span (request id, method, path, and the
/// tenant once resolved), logs one line per response and records
/// `http_requests_total` and `http_request_duration_seconds` by method,
/// route template and status.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        tenant = tracing::field::Empty,
    );
    request.extensions_mut().insert(RequestSpan(span.clone()));
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "response"
        );
    });
    let labels = [
        ("method", method),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    response
}

/// Adds the resolved tenant to the request span; runs inside the tenant layer.
pub async fn record_tenant(request: Request, next: Next) -> Response {
    if let (Some(span), Some(tenant)) = (
        request.extensions().get::<RequestSpan>(),
        CurrentTenant::from_extensions(request.extensions()),
    ) {
        span.0.record("tenant", tracing::field::display(&tenant.id));
    }
    next.run(request).await
}

/// How many tenants `/metrics` names by load; the rest share one series.
const TOP_TENANTS: usize = 20;

/// `GET /metrics`: the Prometheus text format, with the pool, each
/// registered server and the tenant cache sampled now, and the per-tenant
/// load of the top tenants.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let pool = state.hidra.pool_status();
    metrics::gauge!("hidra_pool_connections").set(f64::from(pool.size));
    metrics::gauge!("hidra_pool_idle_connections").set(f64::from(pool.idle));
    metrics::gauge!("hidra_pool_max_connections").set(f64::from(pool.max));
    let cache = state.tenants.stats();
    metrics::gauge!("hidra_tenant_cache_entries").set(cache.entries as f64);
    metrics::gauge!("hidra_tenant_cache_hits").set(cache.hits as f64);
    metrics::gauge!("hidra_tenant_cache_misses").set(cache.misses as f64);
    // Each registered server: reachable, latency, pool.
    for server in state
        .hidra
        .server_health(std::time::Duration::from_secs(2))
        .await
        .unwrap_or_default()
    {
        let name = server.name.to_string();
        let up = if server.is_reachable() { 1.0 } else { 0.0 };
        metrics::gauge!("hidra_server_up", "server" => name.clone()).set(up);
        let latency = server.latency.map_or(f64::NAN, |d| d.as_secs_f64());
        metrics::gauge!("hidra_server_latency_seconds", "server" => name.clone()).set(latency);
        metrics::gauge!("hidra_server_tenants", "server" => name.clone())
            .set(server.tenants as f64);
        let pool = server.pool;
        metrics::gauge!("hidra_server_pool_connections", "server" => name.clone())
            .set(f64::from(pool.size));
        metrics::gauge!("hidra_server_pool_idle_connections", "server" => name.clone())
            .set(f64::from(pool.idle));
        metrics::gauge!("hidra_server_pool_max_connections", "server" => name)
            .set(f64::from(pool.max));
    }
    handle.run_upkeep();
    // Per-tenant load: the top tenants and one `_other` series, however
    // many tenants there are.
    let mut body = handle.render();
    body.push_str(&state.hidra.load().top(TOP_TENANTS).to_prometheus());
    if let Some(replica) = state.hidra.replica_status().await {
        body.push_str(&replica.to_prometheus());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The response to a handler that panicked: a bare 500 in the API's error
/// shape (the panic is logged, its message never sent).
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(not a string)");
    tracing::error!(panic = message, "a handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({ "error": "internal_error" })),
    )
        .into_response()
}
