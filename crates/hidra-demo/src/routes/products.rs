//! `/products`: the tenant's catalogue, full CRUD.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hidra_axum::{RequestConn, RequirePermission};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, Checks, ErrorBody};
use crate::extract::{Json, PageParams, Paginated, Path, Query};
use crate::permissions::{ProductsRead, ProductsWrite};

/// A product of the tenant's catalogue.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Product {
    /// Its id, unique within the tenant.
    pub id: i64,
    /// Its stock-keeping unit, unique within the tenant.
    pub sku: String,
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price_cents: i64,
    /// Units in stock.
    pub stock: i32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A product to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// 1 to 64 letters, digits, `-` or `_`; unique within the tenant.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub sku: String,
    /// Its name, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Its price in cents, not negative.
    #[schema(minimum = 0)]
    pub price_cents: i64,
    /// Units in stock, not negative (default 0).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub stock: i32,
}

/// Changes to a product: absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    /// A new SKU: 1 to 64 letters, digits, `-` or `_`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub sku: Option<String>,
    /// A new name, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// A new price in cents, not negative.
    #[schema(minimum = 0)]
    pub price_cents: Option<i64>,
    /// A new stock level, not negative.
    #[schema(minimum = 0)]
    pub stock: Option<i32>,
}

fn check(
    checks: &mut Checks,
    sku: Option<&str>,
    name: Option<&str>,
    price: Option<i64>,
    stock: Option<i32>,
) {
    if let Some(sku) = sku {
        checks.check(
            (1..=64).contains(&sku.len())
                && sku
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "sku",
            "must be 1 to 64 letters, digits, '-' or '_'",
        );
    }
    if let Some(name) = name {
        checks.text("name", name, 200);
    }
    checks.check(
        price.is_none_or(|p| p >= 0),
        "price_cents",
        "must not be negative",
    );
    checks.check(
        stock.is_none_or(|s| s >= 0),
        "stock",
        "must not be negative",
    );
}

const COLUMNS: &str = "id, sku, name, price_cents, stock, created_at";

/// Lists the tenant's products, oldest first.
#[utoipa::path(get, path = "/products", tag = "products", params(PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = Paginated<Product>), (status = 422, body = ErrorBody)))]
pub async fn list(
    _: RequirePermission<ProductsRead>,
    mut conn: RequestConn,
    Query(params): Query<PageParams>,
) -> Result<Json<Paginated<Product>>, ApiError> {
    let page = params.page()?;
    let items: Vec<Product> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products ORDER BY id LIMIT $1 OFFSET $2"
    )))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Json(Paginated::new(items, page, total)))
}

/// Creates a product.
#[utoipa::path(post, path = "/products", tag = "products", request_body = NewProduct,
    security(("bearer" = [])),
    responses((status = 201, body = Product), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    _: RequirePermission<ProductsWrite>,
    mut conn: RequestConn,
    Json(new): Json<NewProduct>,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    let mut checks = Checks::default();
    check(
        &mut checks,
        Some(&new.sku),
        Some(&new.name),
        Some(new.price_cents),
        Some(new.stock),
    );
    checks.finish()?;
    let product: Product = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ($1, $2, $3, $4) \
         RETURNING {COLUMNS}"
    )))
    .bind(&new.sku)
    .bind(new.name.trim())
    .bind(new.price_cents)
    .bind(new.stock)
    .fetch_one(&mut *conn)
    .await
    .map_err(ApiError::from_db("product"))?;
    Ok((StatusCode::CREATED, Json(product)))
}

/// One product.
#[utoipa::path(get, path = "/products/{id}", tag = "products", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = Product), (status = 404, body = ErrorBody)))]
pub async fn show(
    _: RequirePermission<ProductsRead>,
    mut conn: RequestConn,
    Path(id): Path<i64>,
) -> Result<Json<Product>, ApiError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("product"))
}

/// Changes some fields of a product.
#[utoipa::path(patch, path = "/products/{id}", tag = "products", params(("id" = i64, Path)), request_body = ProductPatch,
    security(("bearer" = [])),
    responses((status = 200, body = Product), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    _: RequirePermission<ProductsWrite>,
    mut conn: RequestConn,
    Path(id): Path<i64>,
    Json(patch): Json<ProductPatch>,
) -> Result<Json<Product>, ApiError> {
    let mut checks = Checks::default();
    check(
        &mut checks,
        patch.sku.as_deref(),
        patch.name.as_deref(),
        patch.price_cents,
        patch.stock,
    );
    checks.finish()?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE products SET sku = coalesce($2, sku), name = coalesce($3, name), \
             price_cents = coalesce($4, price_cents), stock = coalesce($5, stock) \
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(&patch.sku)
    .bind(patch.name.as_deref().map(str::trim))
    .bind(patch.price_cents)
    .bind(patch.stock)
    .fetch_optional(&mut *conn)
    .await
    .map_err(ApiError::from_db("product"))?
    .map(Json)
    .ok_or(ApiError::NotFound("product"))
}

/// Deletes a product that no order refers to.
#[utoipa::path(delete, path = "/products/{id}", tag = "products", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    _: RequirePermission<ProductsWrite>,
    mut conn: RequestConn,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query("DELETE FROM products WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(ApiError::from_db("product"))?
        .rows_affected();
    match deleted {
        0 => Err(ApiError::NotFound("product")),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}
