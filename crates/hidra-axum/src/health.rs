//! Health routes, mountable in one line: [`router`] or [`Health`].
//!
//! | route              | answers |
//! |--------------------|---------|
//! | `/health`          | `200 {"status":"ok"}`: the process is up |
//! | `/health/live`     | `200 {"status":"ok"}`: the process is up (liveness probe) |
//! | `/health/ready`    | `200 {"status":"ready"}` when the database answers within the timeout (default 2 s), else `503 {"status":"unavailable"}` (readiness probe) |
//! | `/health/detailed` | the database check with its latency, the pool's size and idle connections, each registered server's state, tenant count, latency and pool ([`Hidra::server_health`](hidra::Hidra::server_health)), the registry cache's size and hit rate, and the tenants holding the most connections now ([`Hidra::load`](hidra::Hidra::load)), as JSON; `503` when the control database does not answer, `"status": "degraded"` (still `200`) when only a registered server does not |
//!
//! The probes need no tenant: layer the tenant routes, then merge the health
//! router beside them, as below. [`Router::layer`](axum::Router::layer)
//! applies to the routes added before it, so the health routes are served
//! without the tenant layer and no request to them needs a tenant. Hand
//! [`Health`] the layer's [`cache`](crate::TenantLayer::cache), so that
//! `/health/detailed` reports the cache the requests go through.
//! [`TenantLayer::with_excluded`](crate::TenantLayer::with_excluded) is for
//! a layer that must wrap the whole router instead, as with a
//! [`PathPrefixResolver`](crate::PathPrefixResolver), which rewrites the path
//! before routing.
//!
//! `/health/detailed` tells how busy the service is: serve it on an internal
//! listener or behind authentication if that matters. No database error text
//! is ever part of a response.
//!
//! ```no_run
//! use axum::Router;
//! use hidra_axum::{TenantLayer, health::Health};
//!
//! # fn run(hidra: hidra::Hidra, api: Router) {
//! let tenants = TenantLayer::new(hidra.clone());
//! let health = Health::new(hidra).with_cache(tenants.cache().clone()).router();
//! let app: Router = Router::new()
//!     .merge(api.layer(tenants)) // the tenant routes, behind the layer
//!     .merge(health); // public: no tenant needed
//! # }
//! ```

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hidra::Hidra;
use http::StatusCode;
use serde_json::json;

use crate::cache::TenantCache;

/// The health routes for `hidra`, without cache figures; see [`Health`] for
/// more.
pub fn router<S>(hidra: Hidra) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Health::new(hidra).router()
}

/// Configures the health routes.
#[derive(Clone, Debug)]
#[must_use]
pub struct Health {
    hidra: Hidra,
    cache: Option<TenantCache>,
    timeout: Duration,
    top: usize,
}

impl Health {
    /// Health routes for `hidra`.
    pub fn new(hidra: Hidra) -> Self {
        Health {
            hidra,
            cache: None,
            timeout: Duration::from_secs(2),
            top: 10,
        }
    }

    /// Reports this cache's size and hit rate in `/health/detailed`: pass
    /// the tenant layer's ([`TenantLayer::cache`](crate::TenantLayer::cache)),
    /// or the figures describe a cache no request uses.
    pub fn with_cache(mut self, cache: TenantCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// How long the database may take to answer (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many tenants `/health/detailed` lists by connections held
    /// (default 10); the rest are summed in one `other` entry.
    pub fn with_top_tenants(mut self, n: usize) -> Self {
        self.top = n;
        self
    }

    /// The router, to `merge` into the application's beside (not under) the
    /// tenant layer.
    pub fn router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/health", get(up))
            .route("/health/live", get(up))
            .route("/health/ready", get(ready))
            .route("/health/detailed", get(detailed))
            .with_state(self)
    }

    /// Runs `SELECT 1` on a shared connection within the timeout; returns the
    /// round-trip time.
    async fn ping(&self) -> Option<Duration> {
        let started = Instant::now();
        let check = async {
            let mut conn = self.hidra.acquire_shared().await?;
            hidra::sqlx::query("SELECT 1")
                .execute(&mut *conn)
                .await
                .map_err(|source| hidra::Error::Database {
                    context: "checking the database",
                    source,
                })
        };
        match tokio::time::timeout(self.timeout, check).await {
            Ok(Ok(_)) => Some(started.elapsed()),
            Ok(Err(error)) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "health check: database unavailable"
                );
                None
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.timeout.as_millis() as u64,
                    "health check: database did not answer in time"
                );
                None
            }
        }
    }
}

async fn up() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(health): State<Health>) -> Response {
    match health.ping().await {
        Some(_) => Json(json!({ "status": "ready" })).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable" })),
        )
            .into_response(),
    }
}

async fn detailed(State(health): State<Health>) -> Response {
    let latency = health.ping().await;
    let pool = health.hidra.pool_status();
    let cache = health.cache.as_ref().map(|cache| {
        let stats = cache.stats();
        json!({
            "entries": stats.entries,
            "hits": stats.hits,
            "misses": stats.misses,
            "hit_rate": stats.hit_rate(),
        })
    });
    let replica = health.hidra.replica_status().await.map(|r| {
        json!({
            "reachable": r.reachable,
            "lag_bytes": r.lag_bytes,
            "replay_age_seconds": r.replay_age.map(|d| d.as_secs_f64()),
        })
    });
    // A registry without the servers table (never installed) has none.
    let servers = health
        .hidra
        .server_health(health.timeout)
        .await
        .unwrap_or_default();
    let servers_down = servers.iter().any(|s| !s.is_reachable());
    let servers: Vec<_> = servers
        .iter()
        .map(|s| {
            json!({
                "name": s.name.as_str(),
                "state": s.state.as_str(),
                "tenants": s.tenants,
                "reachable": s.is_reachable(),
                "latency_ms": s.latency.map(|d| d.as_secs_f64() * 1000.0),
                "pool": { "size": s.pool.size, "idle": s.pool.idle, "max": s.pool.max },
            })
        })
        .collect();
    let budget = health.hidra.server_budget();
    let load = health.hidra.load().busiest(health.top);
    let top: Vec<_> = load
        .top
        .iter()
        .map(|(id, load)| json!({ "tenant": id, "load": load }))
        .collect();
    let body = json!({
        "status": match (latency.is_some(), servers_down) {
            (false, _) => "unavailable",
            (true, true) => "degraded",
            (true, false) => "ok",
        },
        "tenants": {
            "busiest": top,
            "other": load.other,
            "other_tenants": load.other_tenants,
        },
        "database": {
            "reachable": latency.is_some(),
            "latency_ms": latency.map(|d| d.as_secs_f64() * 1000.0),
        },
        "pool": { "size": pool.size, "idle": pool.idle, "max": pool.max },
        "servers": servers,
        "server_connections": { "open": budget.open, "budget": budget.budget },
        "cache": cache,
        "replica": replica,
    });
    let status = if latency.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
