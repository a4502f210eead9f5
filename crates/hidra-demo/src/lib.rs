//! The Hidra demo: a multi-tenant SaaS API on axum and PostgreSQL.
//!
//! Companies sign up (`POST /signup`): each becomes a tenant with its own
//! PostgreSQL schema, migrated and seeded with its roles, and a first admin.
//! Users log in (`POST /login`) and get a JWT naming their tenant; with it
//! they manage users (admins), customers, products and orders, and never see
//! another company's data. Machine clients use per-tenant API keys
//! (`/api-keys`). Health probes at `/health`, OpenAPI docs at `/docs`,
//! Prometheus metrics at `/metrics`.
//!
//! ```sh
//! cargo run -p hidra-demo
//! ```
//!
//! Without `DATABASE_URL` it needs no setup: it uses the PostgreSQL on
//! 127.0.0.1:5432 (or starts a throw-away one from the installed server
//! binaries), works in a fresh database dropped when it stops, and creates two
//! demo tenants. With `DATABASE_URL` it uses that database and creates demo
//! data only with `--demo-data`.
//!
//! The binary is `src/main.rs`; [`run`] is the whole application, so tests can
//! start it in process too.

pub mod demo_data;
pub mod docs;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod observability;
pub mod permissions;
pub mod reference;
pub mod routes;
pub mod state;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use hidra::auth::{Accounts, ApiKeys, Jwt, Limit, LoginLimits};
use hidra::testing::{PgServer, TempCluster, TestDatabase};
use hidra::{FewestTenants, Hidra, Migrations, NewServer, ServerName};
use hidra_apalis::TenantJobs;
use hidra_axum::{
    ApiKeyResolver, HeaderResolver, JwtResolver, PermissionCache, SubdomainResolver, TenantLayer,
};
use sqlx::postgres::PgConnectOptions;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::observability::REQUEST_ID;
use crate::routes::admin::AdminToken;
use crate::state::AppState;

/// The tenant schema: the reference schema of Hidra's benchmarks and the
/// tenant's roles.
static TENANT_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/tenant");

/// How the demo runs: flags, or the environment variables named.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "hidra-demo", version, about)]
pub struct Config {
    /// The database to use. Unset: a fresh throw-away database (dropped on
    /// exit) on 127.0.0.1:5432 (or HIDRA_LOCAL_PG_URL), or on a throw-away
    /// server started for the run when none answers there, with demo data.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The address to listen on.
    #[arg(long, env = "HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// The port to listen on (0: any free port).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Create the demo tenants (acme, globex) even though DATABASE_URL is set
    /// (environment: 1, true or yes).
    #[arg(long, env = "HIDRA_DEMO_DATA", action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new())]
    pub demo_data: bool,

    /// Requests to `<tenant>.<base domain>` resolve to that tenant.
    #[arg(long, env = "HIDRA_BASE_DOMAIN", default_value = "localhost")]
    pub base_domain: String,

    /// The HS256 secret of the tokens (at least 32 bytes). Unset: a random one
    /// per run, so tokens do not survive a restart.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// The pepper of the API key hashes (at least 32 bytes; the `hidra api-key`
    /// commands read the same variable). Unset: a random one per run, so keys
    /// do not survive a restart.
    #[arg(long, env = "HIDRA_API_KEY_PEPPER", hide_env_values = true)]
    pub api_key_pepper: Option<String>,

    /// Token lifetime, in seconds.
    #[arg(long, env = "HIDRA_TOKEN_TTL", default_value_t = 3600)]
    pub token_ttl: u64,

    /// Spare tenant schemas kept ready, so that a sign-up is a rename.
    #[arg(long, env = "HIDRA_WARM_POOL", default_value_t = 0)]
    pub warm_pool: usize,

    /// Database connections of the shared pool.
    #[arg(long, env = "HIDRA_MAX_CONNECTIONS", default_value_t = 20)]
    pub max_connections: u32,

    /// Failed logins per account in 15 minutes before it is locked for the
    /// rest of the window (429); a client address gets ten times as many.
    #[arg(long, env = "HIDRA_LOGIN_FAILURES", default_value_t = 10)]
    pub login_failures: u32,

    /// Tenant traffic through this transaction-pooling proxy (PgBouncer in
    /// transaction mode) to the same database; DATABASE_URL (or the
    /// throw-away database) stays the direct connection for the registry,
    /// sign-up, migrations and change notifications.
    #[arg(long, env = "HIDRA_POOLER_URL", hide_env_values = true)]
    pub pooler_url: Option<String>,

    /// Sign-ups per client address and hour.
    #[arg(long, env = "HIDRA_SIGNUPS_PER_HOUR", default_value_t = 10)]
    pub sign_ups_per_hour: u32,

    /// Login and sign-up attempts per second and client address, in this
    /// process (bursts of twice as many).
    #[arg(long, env = "HIDRA_AUTH_RATE", default_value_t = 10)]
    pub auth_rate: u32,

    /// Browser origins allowed to call the API (CORS), comma-separated, such
    /// as `https://app.example.com,http://localhost:5173`. Unset: none, so a
    /// page of another origin cannot read the API's answers.
    #[arg(
        long,
        env = "HIDRA_DEMO_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGINS"
    )]
    pub cors_origins: Vec<String>,

    /// The operator token of the tenant admin API (`/admin/tenants`, sent as
    /// `Authorization: Bearer <token>`; at least 32 characters). Unset: the
    /// admin API is off, except with demo data, where a random token is made
    /// for the run and printed.
    #[arg(long, env = "HIDRA_DEMO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Start this many more throw-away PostgreSQL servers from the installed
    /// binaries, register them (`local-1`, `local-2`, …) and place new
    /// tenants on them, the one with the fewest tenants first; the registry,
    /// logins and API keys stay on the first server. Without DATABASE_URL
    /// only: their data goes when the demo stops.
    #[arg(long, env = "HIDRA_DEMO_SERVERS", default_value_t = 0)]
    pub servers: usize,
}

/// Where the data lives.
struct Database {
    options: PgConnectOptions,
    /// The throw-away database of the zero-setup mode, dropped on exit.
    throwaway: Option<TestDatabase>,
    /// The throw-away servers of `--servers`, stopped on exit.
    servers: Vec<TempCluster>,
}

async fn open_database(config: &Config) -> anyhow::Result<Database> {
    if let Some(url) = config
        .database_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        let options = url
            .parse()
            .context("DATABASE_URL is not a valid PostgreSQL URL")?;
        anyhow::ensure!(
            config.servers == 0,
            "--servers starts throw-away servers, whose tenants would outlive them in DATABASE_URL's \
             registry: unset DATABASE_URL, or register servers of your own with `hidra server add`"
        );
        return Ok(Database {
            options,
            throwaway: None,
            servers: Vec::new(),
        });
    }
    let server = PgServer::get().await?;
    if server.is_temporary() {
        tracing::info!(
            "no PostgreSQL answered at the local address: started a throw-away server for this run"
        );
    }
    let db = TestDatabase::create_with_prefix("hidra_demo").await?;
    tracing::info!(
        database = db.name(),
        "DATABASE_URL is unset: working in a fresh throw-away database, dropped on exit"
    );
    let mut servers = Vec::with_capacity(config.servers);
    for _ in 0..config.servers {
        let cluster = TempCluster::start()
            .await
            .context("starting a throw-away server for --servers")?;
        servers.push(cluster);
    }
    Ok(Database {
        options: db.connect_options(),
        throwaway: Some(db),
        servers,
    })
}

/// Registers the throw-away servers of `--servers` as `local-1`, `local-2`, …
async fn register_servers(hidra: &Hidra, servers: &[TempCluster]) -> anyhow::Result<()> {
    for (i, cluster) in servers.iter().enumerate() {
        let name = ServerName::new(format!("local-{}", i + 1))?;
        hidra
            .servers()
            .add(NewServer::new(name.clone(), cluster.url()))
            .await
            .with_context(|| format!("registering server {name}"))?;
        tracing::info!(server = %name, url = cluster.url(), "registered a throw-away server");
    }
    Ok(())
}

/// Creates the shared tables (registry, logins, attempts, API keys, apalis's
/// job tables) if missing and brings every tenant to the latest migration.
async fn prepare(
    hidra: &Hidra,
    accounts: &Accounts,
    api_keys: &ApiKeys,
    jobs: &TenantJobs,
) -> anyhow::Result<()> {
    hidra.install().await.context("creating the registry")?;
    jobs.install()
        .await
        .context("creating the background job tables")?;
    accounts
        .install()
        .await
        .context("creating the login tables")?;
    api_keys
        .install()
        .await
        .context("creating the API key table")?;
    hidra.migrate_shared().await?;
    let summary = hidra.migrator().run().await?;
    anyhow::ensure!(
        summary.is_success(),
        "some tenants could not be migrated: {summary:?}"
    );
    Ok(())
}

/// 32 random bytes, hex-encoded.
fn random_secret() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The brute-force limits of login and sign-up, per client IP address.
fn limits(config: &Config) -> anyhow::Result<LoginLimits> {
    let rate = NonZeroU32::new(config.auth_rate).context("HIDRA_AUTH_RATE must be at least 1")?;
    let burst = rate.saturating_mul(NonZeroU32::new(2).expect("non-zero"));
    let window = Duration::from_secs(15 * 60);
    Ok(LoginLimits::new()
        .per_account(Limit::new(config.login_failures, window))
        .per_client(Limit::new(config.login_failures.saturating_mul(10), window))
        .sign_ups(Limit::new(
            config.sign_ups_per_hour,
            Duration::from_secs(3600),
        ))
        .rate(rate, burst))
}

/// The operator token of the admin API: the configured one, or with demo
/// data a random one for the run (`make_one`), or none (the API is off).
fn admin_token(config: &Config, make_one: bool) -> anyhow::Result<Option<AdminToken>> {
    match config
        .admin_token
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    {
        Some(token) => Ok(Some(AdminToken::new(token).map_err(anyhow::Error::msg)?)),
        None if make_one => Ok(Some(
            AdminToken::new(&random_secret()).map_err(anyhow::Error::msg)?,
        )),
        None => {
            tracing::info!("HIDRA_DEMO_ADMIN_TOKEN is unset: the tenant admin API is off");
            Ok(None)
        }
    }
}

fn jwt(config: &Config) -> anyhow::Result<Jwt> {
    let secret = config.jwt_secret.clone().unwrap_or_else(|| {
        tracing::warn!("JWT_SECRET is unset: using a random secret, tokens end with this run");
        random_secret()
    });
    Ok(Jwt::hs256(secret)
        .context("JWT_SECRET is not usable")?
        .with_ttl(Duration::from_secs(config.token_ttl)))
}

/// The CORS policy: the `origins` listed may call the API from a browser,
/// with a token or an API key (the API uses no cookies); any other origin
/// gets no `Access-Control-Allow-Origin`, and its browser keeps the answer
/// from it.
pub fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let origins = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| {
            // An origin is `scheme://host[:port]`: a path or a trailing slash
            // would never match what browsers send.
            let host = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
                .filter(|h| !h.is_empty() && !h.contains(['/', '*']));
            host.and_then(|_| HeaderValue::from_str(o).ok())
                .with_context(|| {
                    format!(
                        "HIDRA_DEMO_CORS_ORIGINS: `{o}` is not an origin; write scheme://host[:port], \
                         e.g. https://app.example.com (no path, no trailing slash, no wildcard)"
                    )
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-tenant-id"),
            REQUEST_ID,
        ])
        .expose_headers([REQUEST_ID, header::RETRY_AFTER])
        .max_age(Duration::from_secs(3600)))
}

/// The application: routes, tenant layer, logs, request ids, metrics, CORS
/// (see [`cors`]) and gzip compression of the answers of clients that accept
/// it.
pub fn app(
    state: AppState,
    jwt: Jwt,
    base_domain: &str,
    cors: CorsLayer,
    admin: Option<AdminToken>,
) -> Router {
    // Tokens of users whose sessions ended (logged out everywhere,
    // deactivated, re-roled, deleted) are refused in every process.
    let jwt = JwtResolver::new(jwt).with_revocations(state.accounts.revocations().clone());
    // Tenant from the token or API key; a header or subdomain may name it
    // too, but must agree with them (else 403).
    let tenants = TenantLayer::new(state.hidra.clone())
        .with_cache(state.tenants.clone())
        .with_resolver(jwt)
        .with_resolver(ApiKeyResolver::new(state.api_keys.clone()))
        .with_resolver(HeaderResolver::new())
        .with_resolver(SubdomainResolver::new(base_domain))
        // Every tenant route needs a credential: without one, the answer is
        // 401 whatever tenant the request names (no probing for tenants).
        .with_credentials_required();
    // The probes report the cache the layer resolves tenants through: taken
    // from the layer, it cannot be another than the one requests use.
    let health = hidra_axum::health::Health::new(state.hidra.clone())
        .with_cache(tenants.cache().clone())
        .router();
    Router::new()
        .merge(
            routes::tenant_routes()
                .layer(axum::middleware::from_fn(observability::record_tenant))
                .layer(tenants),
        )
        .merge(routes::public_routes())
        .merge(admin.map(routes::admin::routes).unwrap_or_default())
        .merge(docs::router())
        .route("/metrics", get(observability::metrics))
        .route("/", get(index))
        .merge(health)
        .with_state(state)
        .layer(CatchPanicLayer::custom(observability::panic_response))
        .layer(axum::middleware::from_fn(observability::observe))
        .layer(CompressionLayer::new())
        // Outside the tenant layer: a preflight carries no credential, and is
        // answered here before that layer would refuse it.
        .layer(cors)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

async fn index() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "name": "Hidra demo SaaS API",
        "docs": "/docs",
        "openapi": "/docs/openapi.json",
        "health": "/health",
        "metrics": "/metrics",
        "signup": "POST /signup",
        "login": "POST /login",
    }))
}

/// Runs the demo until `shutdown` completes, then finishes the requests in
/// flight, closes the pool and drops the throw-away database, if any.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Settings are checked before anything is created.
    let cors = cors(&config.cors_origins)?;
    admin_token(&config, true)?;
    let database = open_database(&config).await?;
    let demo_data = config.demo_data || database.throwaway.is_some();
    let result = serve(&config, &database, demo_data, cors, shutdown).await;
    for cluster in database.servers {
        if let Err(e) = cluster.stop().await {
            tracing::warn!(error = %e, "could not stop a throw-away server");
        }
    }
    if let Some(db) = database.throwaway {
        let name = db.name().to_owned();
        match db.drop_now().await {
            Ok(()) => tracing::info!(database = %name, "dropped the throw-away database"),
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "could not drop the throw-away database")
            }
        }
    }
    result
}

async fn serve(
    config: &Config,
    database: &Database,
    demo_data: bool,
    cors: CorsLayer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut builder = Hidra::builder()
        .tenant_migrations(Migrations::from_sqlx(&TENANT_MIGRATIONS))
        .warm_pool(config.warm_pool)
        .max_connections(config.max_connections);
    if let Some(url) = config
        .pooler_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        tracing::info!("tenant traffic goes through the transaction pooler");
        builder = builder.transaction_pooler(url);
    }
    if !database.servers.is_empty() {
        builder = builder.placement(FewestTenants::excluding_control());
    }
    let hidra = builder
        .connect_with(database.options.clone())
        .await
        .context("connecting to PostgreSQL")?;
    let jwt = jwt(config)?;
    let admin = admin_token(config, demo_data)?;
    let accounts = Accounts::new(hidra.clone(), jwt.clone()).with_limits(limits(config)?);
    let pepper = config.api_key_pepper.clone().unwrap_or_else(|| {
        tracing::warn!(
            "HIDRA_API_KEY_PEPPER is unset: using a random pepper, API keys end with this run"
        );
        random_secret()
    });
    let api_keys =
        ApiKeys::new(hidra.clone(), pepper).context("HIDRA_API_KEY_PEPPER is not usable")?;
    let jobs = TenantJobs::new(&hidra);
    prepare(&hidra, &accounts, &api_keys, &jobs).await?;
    register_servers(&hidra, &database.servers).await?;
    let confirmations = jobs::confirmations(&jobs);
    let warm_pool = (config.warm_pool > 0).then(|| hidra.spawn_warm_pool(Duration::from_secs(5)));
    if demo_data {
        let created = demo_data::seed(&hidra, &accounts, &confirmations).await?;
        tracing::info!(created, "demo tenants ready");
    }
    let state = AppState {
        tenants: hidra_axum::TenantCache::new(hidra.clone()),
        permissions: PermissionCache::new(),
        metrics: observability::install_recorder(),
        accounts,
        api_keys,
        hidra: hidra.clone(),
        jobs: jobs.clone(),
        confirmations: confirmations.clone(),
    };
    let app = app(state, jwt, &config.base_domain, cors, admin.clone());

    let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.bind, config.port))
        .await
        .with_context(|| format!("listening on {}:{}", config.bind, config.port))?;
    // Confirms orders in the background until the server stops.
    let worker = jobs::spawn_worker(&jobs, &confirmations);
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base}");
    for (i, cluster) in database.servers.iter().enumerate() {
        println!("server local-{}: {}", i + 1, cluster.url());
    }
    print_welcome(&base, demo_data, admin.as_ref());

    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving HTTP")?;
    tracing::info!("stopped accepting requests; in-flight requests finished");
    // After the requests: the jobs they enqueued may still be confirmed.
    worker.stop().await;
    tracing::info!("stopped the order confirmation worker");
    if let Some(task) = warm_pool {
        task.abort();
    }
    jobs.pool().close().await;
    hidra.close().await;
    Ok(())
}

fn print_welcome(base: &str, demo_data: bool, admin: Option<&AdminToken>) {
    println!(
        "\nHidra demo SaaS API. Docs: {base}/docs  Health: {base}/health  Metrics: {base}/metrics\n"
    );
    if demo_data {
        println!("Demo tenants (password '{}'):", demo_data::PASSWORD);
        for (tenant, email) in demo_data::logins() {
            println!("  {tenant:<8} {email}");
        }
        println!("\nTry:\n");
        println!(
            "  TOKEN=$(curl -s {base}/login -H 'content-type: application/json' \\\n      -d '{{\"email\":\"admin@acme.test\",\"password\":\"{}\"}}' | sed 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/')",
            demo_data::PASSWORD
        );
        println!("  curl -s {base}/customers -H \"Authorization: Bearer $TOKEN\"");
        println!(
            "  curl -s {base}/customers -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"name\":\"Daffy Duck\"}}'"
        );
        println!(
            "  curl -s -i {base}/customers -H \"Authorization: Bearer $TOKEN\" -H 'X-Tenant-ID: globex'   # 403: not your tenant"
        );
    }
    println!(
        "  curl -s {base}/signup -H 'content-type: application/json' \\\n      -d '{{\"tenant\":\"initech\",\"company\":\"Initech\",\"email\":\"bill@initech.test\",\"full_name\":\"Bill\",\"password\":\"tps-reports\"}}'"
    );
    if let Some(token) = admin {
        println!("\nTenant admin API (operator token of this run):\n");
        println!(
            "  curl -s {base}/admin/tenants -H 'Authorization: Bearer {}'",
            token.expose()
        );
    }
    println!(
        "\nCtrl-C stops it{}.",
        if demo_data {
            " and drops its throw-away database when it made one"
        } else {
            ""
        }
    );
}
