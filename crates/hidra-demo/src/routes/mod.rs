//! The API's routes.

pub mod account;
pub mod admin;
pub mod api_keys;
pub mod customers;
pub mod orders;
mod patch;
pub mod products;
pub mod users;

use axum::Router;
use axum::routing::{delete, get, post};

use crate::state::AppState;

/// The tenant-scoped routes: they need a tenant and (through their guards) a
/// signed-in user of it.
pub fn tenant_routes() -> Router<AppState> {
    Router::new()
        .route("/me", get(account::me))
        .route("/logout-everywhere", post(account::logout_everywhere))
        .route("/users", get(users::list).post(users::create))
        .route(
            "/users/{id}",
            get(users::show).patch(users::update).delete(users::delete),
        )
        .route("/api-keys", get(api_keys::list).post(api_keys::create))
        .route("/api-keys/{key_id}", delete(api_keys::revoke))
        .route("/api-keys/{key_id}/rotate", post(api_keys::rotate))
        .route("/customers", get(customers::list).post(customers::create))
        .route(
            "/customers/{id}",
            get(customers::show)
                .patch(customers::update)
                .delete(customers::delete),
        )
        .route("/products", get(products::list).post(products::create))
        .route(
            "/products/{id}",
            get(products::show)
                .patch(products::update)
                .delete(products::delete),
        )
        .route("/orders", get(orders::list).post(orders::create))
        .route("/orders/{id}", get(orders::show))
        .route("/orders/{id}/confirmation", get(orders::confirmation))
}

/// The public routes: no tenant.
pub fn public_routes() -> Router<AppState> {
    Router::new()
        .route("/signup", post(account::signup))
        .route("/login", post(account::login))
}
