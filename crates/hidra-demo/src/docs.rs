//! The OpenAPI description of the API, served at `/docs/openapi.json`, and
//! the Swagger UI that renders it at `/docs`.
//!
//! The UI's scripts and styles are compiled into the binary and served from
//! `/docs/`: the page loads nothing from the internet, so it renders in an
//! air-gapped deployment too.

use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::routes::{account, admin, api_keys, customers, orders, products, users};
use crate::state::AppState;

/// The API's OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Hidra demo SaaS API",
        description = "A multi-tenant API built with Hidra: every company (tenant) has its own \
            PostgreSQL schema. Sign up or log in to get a bearer token; the token names the \
            tenant. Machine clients send an API key (`X-API-Key: hk_…`) instead. An `X-Tenant-ID` header or a `<tenant>.<base domain>` host may name it too, \
            but must agree with the token (else 403)."
    ),
    paths(
        account::signup, account::login, account::me,
        users::list, users::create, users::show, users::update, users::delete,
        api_keys::list, api_keys::create, api_keys::rotate, api_keys::revoke,
        customers::list, customers::create, customers::show, customers::update, customers::delete,
        products::list, products::create, products::show, products::update, products::delete,
        orders::create, orders::list, orders::show, orders::confirmation,
        admin::list, admin::show, admin::update, admin::delete, admin::suspend, admin::activate,
        admin::regenerate_keys, admin::export,
    ),
    modifiers(&Bearer),
    tags(
        (name = "account", description = "Sign-up, login, the current user"),
        (name = "users", description = "The tenant's users (admins only)"),
        (name = "api-keys", description = "Keys for machine clients, sent as `X-API-Key` (admins only)"),
        (name = "customers", description = "The tenant's customers"),
        (name = "products", description = "The tenant's catalogue"),
        (name = "orders", description = "Orders, placed in one transaction with their confirmation job, \
            which a background worker runs"),
        (name = "admin", description = "The operator's tenant management, with the operator token \
            (`HIDRA_DEMO_ADMIN_TOKEN`) as bearer; no tenant's credential is accepted"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// `/docs` (redirects to `/docs/`, the UI), its assets under `/docs/`, and
/// `/docs/openapi.json`.
pub fn router() -> Router<AppState> {
    let ui = SwaggerUi::new("/docs")
        .url("/docs/openapi.json", ApiDoc::openapi())
        // The validator badge would send the document to swagger.io.
        .config(Config::default().validator_url("none"));
    Router::new().merge(ui)
}
