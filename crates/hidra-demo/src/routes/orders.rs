//! `/orders`: an order and its items, placed in one transaction with the
//! job that confirms it in the background (see [`crate::jobs`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hidra_axum::{CurrentTenant, RequestConn, RequestTx, RequirePermission};
use serde::{Deserialize, Serialize};
use sqlx::{Executor, Postgres};
use utoipa::ToSchema;

use crate::error::{ApiError, Checks, ErrorBody};
use crate::extract::{Json, PageParams, Paginated, Path, Query};
use crate::permissions::{OrdersRead, OrdersWrite};
use crate::state::AppState;

/// An order with its items.
#[derive(Debug, Serialize, ToSchema)]
pub struct Order {
    /// Its id, unique within the tenant.
    pub id: i64,
    /// The customer who placed it.
    pub customer_id: i64,
    /// `open` when placed.
    pub status: String,
    /// The sum of its items' prices times quantities.
    pub total_cents: i64,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When its confirmation job confirmed it; `null` until then.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// Where its confirmation stands; the job's own status is at
    /// `GET /orders/{id}/confirmation`.
    pub confirmation: Confirmation,
    /// What was ordered.
    pub items: Vec<OrderItem>,
}

/// Where an order's confirmation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Confirmation {
    /// Its confirmation job was enqueued with it and has not confirmed it
    /// yet.
    Pending,
    /// Its confirmation job confirmed it (`confirmed_at`).
    Confirmed,
    /// It has no confirmation job (placed before the demo had them).
    #[serde(rename = "none")]
    NoJob,
}

/// An order's confirmation job, as the job table has it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderConfirmation {
    /// The order.
    pub order_id: i64,
    /// The job's id.
    pub job_id: String,
    /// The job's status: `Pending` (waiting for a worker), `Queued`,
    /// `Running`, `Done`, `Failed` (to be retried, or out of attempts) or
    /// `Killed`.
    pub status: String,
    /// How many times it was attempted.
    pub attempts: i32,
    /// What its last run returned: `true` when that run confirmed the order,
    /// `false` when it already was, or the error; `null` before it ran.
    #[schema(value_type = Option<Object>)]
    pub last_result: Option<serde_json::Value>,
    /// When the order was confirmed; `null` until then.
    pub confirmed_at: Option<DateTime<Utc>>,
}

/// One line of an order.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct OrderItem {
    /// The product ordered.
    pub product_id: i64,
    /// How many units.
    pub quantity: i32,
    /// The unit price when the order was placed.
    pub price_cents: i64,
}

/// An order to place.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// The customer placing it.
    pub customer_id: i64,
    /// At least one item; a product may appear once.
    #[schema(min_items = 1)]
    pub items: Vec<NewOrderItem>,
}

/// One line of an order to place.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrderItem {
    /// The product.
    pub product_id: i64,
    /// How many units, at least 1.
    #[schema(minimum = 1)]
    pub quantity: i32,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: i64,
    customer_id: i64,
    status: String,
    total_cents: i64,
    created_at: DateTime<Utc>,
    confirmed_at: Option<DateTime<Utc>>,
    confirmation_job: Option<String>,
}

impl OrderRow {
    fn with(self, items: Vec<OrderItem>) -> Order {
        Order {
            id: self.id,
            customer_id: self.customer_id,
            status: self.status,
            total_cents: self.total_cents,
            created_at: self.created_at,
            confirmed_at: self.confirmed_at,
            confirmation: match (&self.confirmed_at, &self.confirmation_job) {
                (Some(_), _) => Confirmation::Confirmed,
                (None, Some(_)) => Confirmation::Pending,
                (None, None) => Confirmation::NoJob,
            },
            items,
        }
    }
}

const COLUMNS: &str =
    "id, customer_id, status, total_cents, created_at, confirmed_at, confirmation_job";

/// Places an order: checks the customer, locks the products, takes the units
/// out of stock, writes the order and its items and enqueues its confirmation
/// job, all in the request's transaction. Any refusal rolls everything back,
/// the job included. The answer's `confirmation` is `pending`: a background
/// worker confirms the order shortly after.
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = NewOrder,
    security(("bearer" = [])),
    responses((status = 201, body = Order), (status = 409, body = ErrorBody,
        description = "not enough stock"), (status = 422, body = ErrorBody)))]
pub async fn create(
    _: RequirePermission<OrdersWrite>,
    State(state): State<AppState>,
    mut tx: RequestTx,
    Json(new): Json<NewOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    let mut quantities = BTreeMap::new();
    let mut duplicate = false;
    for item in &new.items {
        duplicate |= quantities.insert(item.product_id, item.quantity).is_some();
    }
    Checks::default()
        .check(
            !new.items.is_empty(),
            "items",
            "must list at least one item",
        )
        .check(!duplicate, "items", "must list each product once")
        .check(
            new.items.iter().all(|i| i.quantity > 0),
            "items",
            "quantities must be at least 1",
        )
        .finish()?;

    let customer: Option<i64> = sqlx::query_scalar("SELECT id FROM customers WHERE id = $1")
        .bind(new.customer_id)
        .fetch_optional(&mut *tx)
        .await?;
    if customer.is_none() {
        return Err(ApiError::field("customer_id", "no such customer"));
    }

    let ids: Vec<i64> = quantities.keys().copied().collect();
    // Locked in id order, so concurrent orders cannot deadlock.
    let products: Vec<(i64, i64, i32)> = sqlx::query_as(
        "SELECT id, price_cents, stock FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    if products.len() != ids.len() {
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !products.iter().any(|p| p.0 == **id))
            .map(ToString::to_string)
            .collect();
        return Err(ApiError::field(
            "items",
            format!("no such product: {}", missing.join(", ")),
        ));
    }
    let mut items = Vec::with_capacity(products.len());
    for (id, price_cents, stock) in products {
        let quantity = quantities[&id];
        if stock < quantity {
            return Err(ApiError::Conflict(format!(
                "product {id} has {stock} units in stock, {quantity} ordered"
            )));
        }
        items.push(OrderItem {
            product_id: id,
            quantity,
            price_cents,
        });
    }
    let total = items
        .iter()
        .try_fold(0i64, |sum, i| {
            i.price_cents
                .checked_mul(i64::from(i.quantity))
                .and_then(|line| sum.checked_add(line))
        })
        .ok_or_else(|| ApiError::field("items", "the order total is too large"))?;

    let quantity_list: Vec<i32> = items.iter().map(|i| i.quantity).collect();
    let prices: Vec<i64> = items.iter().map(|i| i.price_cents).collect();
    sqlx::query(
        "UPDATE products p SET stock = p.stock - q.quantity \
         FROM unnest($1::bigint[], $2::int[]) AS q(id, quantity) WHERE p.id = q.id",
    )
    .bind(&ids)
    .bind(&quantity_list)
    .execute(&mut *tx)
    .await?;
    let mut order: OrderRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO orders (customer_id, total_cents) VALUES ($1, $2) RETURNING {COLUMNS}"
    )))
    .bind(new.customer_id)
    .bind(total)
    .fetch_one(&mut *tx)
    .await?;
    // In the order's transaction: no order, no job; no job, no order.
    let tenant = hidra::context::current()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no current tenant")))?;
    let job =
        crate::jobs::enqueue_confirmation(&state.confirmations, &mut tx, &tenant, order.id).await?;
    sqlx::query("UPDATE orders SET confirmation_job = $1 WHERE id = $2")
        .bind(&job)
        .bind(order.id)
        .execute(&mut *tx)
        .await?;
    order.confirmation_job = Some(job);
    sqlx::query(
        "INSERT INTO order_items (order_id, product_id, quantity, price_cents) \
         SELECT $1, * FROM unnest($2::bigint[], $3::int[], $4::bigint[])",
    )
    .bind(order.id)
    .bind(&ids)
    .bind(&quantity_list)
    .bind(&prices)
    .execute(&mut *tx)
    .await?;
    Ok((StatusCode::CREATED, Json(order.with(items))))
}

async fn items_of<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    order: i64,
) -> Result<Vec<OrderItem>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT product_id, quantity, price_cents FROM order_items \
         WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(order)
    .fetch_all(conn)
    .await?)
}

/// Lists the tenant's orders with their items and confirmation, newest first.
#[utoipa::path(get, path = "/orders", tag = "orders", params(PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = Paginated<Order>), (status = 422, body = ErrorBody)))]
pub async fn list(
    _: RequirePermission<OrdersRead>,
    mut conn: RequestConn,
    Query(params): Query<PageParams>,
) -> Result<Json<Paginated<Order>>, ApiError> {
    let page = params.page()?;
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders ORDER BY id DESC LIMIT $1 OFFSET $2"
    )))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let lines: Vec<(i64, i64, i32, i64)> = sqlx::query_as(
        "SELECT order_id, product_id, quantity, price_cents FROM order_items \
         WHERE order_id = ANY($1) ORDER BY order_id, product_id",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut *conn)
        .await?;
    let orders = rows
        .into_iter()
        .map(|row| {
            let items = lines
                .iter()
                .filter(|l| l.0 == row.id)
                .map(|&(_, product_id, quantity, price_cents)| OrderItem {
                    product_id,
                    quantity,
                    price_cents,
                })
                .collect();
            row.with(items)
        })
        .collect();
    Ok(Json(Paginated::new(orders, page, total)))
}

/// One order with its items and confirmation.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = Order), (status = 404, body = ErrorBody)))]
pub async fn show(
    _: RequirePermission<OrdersRead>,
    mut conn: RequestConn,
    Path(id): Path<i64>,
) -> Result<Json<Order>, ApiError> {
    let row: OrderRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::NotFound("order"))?;
    let items = items_of(&mut conn, id).await?;
    Ok(Json(row.with(items)))
}

/// The status of an order's confirmation job, read from apalis's job table.
/// Only a job of the request's tenant (the same incarnation of it) is
/// answered: an order whose stored job id names another tenant's job is
/// `404`, as is an order without a confirmation job.
#[utoipa::path(get, path = "/orders/{id}/confirmation", tag = "orders",
    params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = OrderConfirmation),
        (status = 404, body = ErrorBody, description = "no such order, or no confirmation job")))]
pub async fn confirmation(
    _: RequirePermission<OrdersRead>,
    State(state): State<AppState>,
    tenant: CurrentTenant,
    mut conn: RequestConn,
    Path(id): Path<i64>,
) -> Result<Json<OrderConfirmation>, ApiError> {
    let (job_id, confirmed_at): (Option<String>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT confirmation_job, confirmed_at FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(ApiError::NotFound("order"))?;
    // The connection goes back before the shared pool is used.
    drop(conn);
    let job_id = job_id.ok_or(ApiError::NotFound("confirmation"))?;
    // Another tenant's job (or an earlier incarnation's) is as unknown as a
    // missing one.
    let job = state
        .confirmations
        .status(&tenant, &job_id)
        .await?
        .ok_or(ApiError::NotFound("confirmation"))?;
    Ok(Json(OrderConfirmation {
        order_id: id,
        job_id,
        status: job.status,
        attempts: job.attempts,
        last_result: job.last_result,
        confirmed_at,
    }))
}
