//! `/customers`: the tenant's customers, full CRUD.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hidra_axum::{RequestConn, RequirePermission};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, Checks, ErrorBody};
use crate::extract::{Json, PageParams, Paginated, Path, Query, looks_like_email};
use crate::permissions::{CustomersRead, CustomersWrite};

/// A customer of the tenant.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Customer {
    /// Its id, unique within the tenant.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its email address.
    pub email: Option<String>,
    /// Its phone number.
    pub phone: Option<String>,
    /// Its postal address.
    pub address: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A customer to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    /// Its name, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Its email address.
    #[schema(format = Email)]
    pub email: Option<String>,
    /// Its phone number.
    pub phone: Option<String>,
    /// Its postal address.
    pub address: Option<String>,
}

/// Changes to a customer: absent fields stay as they are; `null` clears an
/// optional one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerPatch {
    /// A new name, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// A new email address, or `null`.
    #[serde(default, deserialize_with = "super::patch::deserialize")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    /// A new phone number, or `null`.
    #[serde(default, deserialize_with = "super::patch::deserialize")]
    #[schema(value_type = Option<String>)]
    pub phone: Option<Option<String>>,
    /// A new postal address, or `null`.
    #[serde(default, deserialize_with = "super::patch::deserialize")]
    #[schema(value_type = Option<String>)]
    pub address: Option<Option<String>>,
}

/// `?q=` and the page of `GET /customers`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CustomerQuery {
    /// Only customers whose name contains this text (case-insensitive).
    pub q: Option<String>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

fn check_email(checks: &mut Checks, email: Option<&str>) {
    checks
        .check(
            email.is_none_or(looks_like_email),
            "email",
            "must be an email address",
        )
        .no_nul("email", email.unwrap_or_default());
}

const COLUMNS: &str = "id, name, email, phone, address, created_at";

/// Lists the tenant's customers, oldest first.
#[utoipa::path(get, path = "/customers", tag = "customers", params(CustomerQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Paginated<Customer>), (status = 422, body = ErrorBody)))]
pub async fn list(
    _: RequirePermission<CustomersRead>,
    mut conn: RequestConn,
    Query(query): Query<CustomerQuery>,
) -> Result<Json<Paginated<Customer>>, ApiError> {
    let page = PageParams {
        limit: query.limit,
        offset: query.offset,
    }
    .page()?;
    Checks::default()
        .no_nul("q", query.q.as_deref().unwrap_or_default())
        .finish()?;
    let q = query.q.filter(|q| !q.is_empty());
    let filter = "($1::text IS NULL OR strpos(lower(name), lower($1)) > 0)";
    let items: Vec<Customer> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM customers WHERE {filter} ORDER BY id LIMIT $2 OFFSET $3"
    )))
    .bind(&q)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM customers WHERE {filter}"
    )))
    .bind(&q)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Json(Paginated::new(items, page, total)))
}

/// Creates a customer.
#[utoipa::path(post, path = "/customers", tag = "customers", request_body = NewCustomer,
    security(("bearer" = [])),
    responses((status = 201, body = Customer), (status = 422, body = ErrorBody)))]
pub async fn create(
    _: RequirePermission<CustomersWrite>,
    mut conn: RequestConn,
    Json(new): Json<NewCustomer>,
) -> Result<(StatusCode, Json<Customer>), ApiError> {
    let mut checks = Checks::default();
    checks.text("name", &new.name, 200);
    check_email(&mut checks, new.email.as_deref());
    for (field, value) in [("phone", &new.phone), ("address", &new.address)] {
        checks.no_nul(field, value.as_deref().unwrap_or_default());
    }
    checks.finish()?;
    let customer: Customer = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO customers (name, email, phone, address) VALUES ($1, $2, $3, $4) \
         RETURNING {COLUMNS}"
    )))
    .bind(new.name.trim())
    .bind(&new.email)
    .bind(&new.phone)
    .bind(&new.address)
    .fetch_one(&mut *conn)
    .await
    .map_err(ApiError::from_db("customer"))?;
    Ok((StatusCode::CREATED, Json(customer)))
}

/// One customer.
#[utoipa::path(get, path = "/customers/{id}", tag = "customers", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = Customer), (status = 404, body = ErrorBody)))]
pub async fn show(
    _: RequirePermission<CustomersRead>,
    mut conn: RequestConn,
    Path(id): Path<i64>,
) -> Result<Json<Customer>, ApiError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM customers WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("customer"))
}

/// Changes some fields of a customer.
#[utoipa::path(patch, path = "/customers/{id}", tag = "customers", params(("id" = i64, Path)), request_body = CustomerPatch,
    security(("bearer" = [])),
    responses((status = 200, body = Customer), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update(
    _: RequirePermission<CustomersWrite>,
    mut conn: RequestConn,
    Path(id): Path<i64>,
    Json(patch): Json<CustomerPatch>,
) -> Result<Json<Customer>, ApiError> {
    let mut checks = Checks::default();
    if let Some(name) = &patch.name {
        checks.text("name", name, 200);
    }
    check_email(&mut checks, patch.email.clone().flatten().as_deref());
    for (field, value) in [("phone", &patch.phone), ("address", &patch.address)] {
        checks.no_nul(
            field,
            value.clone().flatten().as_deref().unwrap_or_default(),
        );
    }
    checks.finish()?;
    // `$n IS NULL`: keep; else the new value (`set_x` says whether to clear).
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE customers SET \
             name = coalesce($2, name), \
             email = CASE WHEN $3 THEN $4 ELSE email END, \
             phone = CASE WHEN $5 THEN $6 ELSE phone END, \
             address = CASE WHEN $7 THEN $8 ELSE address END \
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(patch.name.as_deref().map(str::trim))
    .bind(patch.email.is_some())
    .bind(patch.email.flatten())
    .bind(patch.phone.is_some())
    .bind(patch.phone.flatten())
    .bind(patch.address.is_some())
    .bind(patch.address.flatten())
    .fetch_optional(&mut *conn)
    .await
    .map_err(ApiError::from_db("customer"))?
    .map(Json)
    .ok_or(ApiError::NotFound("customer"))
}

/// Deletes a customer that has no orders.
#[utoipa::path(delete, path = "/customers/{id}", tag = "customers", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    _: RequirePermission<CustomersWrite>,
    mut conn: RequestConn,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query("DELETE FROM customers WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(ApiError::from_db("customer"))?
        .rows_affected();
    match deleted {
        0 => Err(ApiError::NotFound("customer")),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}
