//! Running SeaORM statements on a Hidra tenant connection or transaction.
//!
//! Every statement goes through the scoped types' [`sqlx::Executor`], so it is
//! a prepared statement of the tenant's own (see `hidra`'s per-tenant
//! statements): SeaORM code inherits the checkout binding, the cancellation and
//! panic rules and the mixed-migration-version safety of `TenantConn`.

use sea_orm::sea_query::Values;
use sea_orm::{DbErr, ExecResult, QueryResult, RuntimeErr, Statement};
use sea_query_sqlx::SqlxValues;
use sqlx::{AssertSqlSafe, Postgres};

/// The executor a statement runs on: a tenant connection or transaction.
#[doc(hidden)]
#[derive(Debug)]
pub enum Target<'a> {
    /// A connection bound to the tenant.
    Conn(&'a mut hidra::TenantConn),
    /// A transaction bound to the tenant.
    Tx(&'a mut hidra::TenantTx),
}

/// A Hidra type SeaORM statements can run on: [`hidra::TenantConn`],
/// [`hidra::TenantTx`], `&mut` either, and (feature `axum`) the
/// `hidra-axum` extractors of the same names.
pub trait TenantExecutor: Send {
    /// Where the next statement runs.
    #[doc(hidden)]
    fn target(&mut self) -> Target<'_>;
}

impl TenantExecutor for hidra::TenantConn {
    fn target(&mut self) -> Target<'_> {
        Target::Conn(self)
    }
}

impl TenantExecutor for hidra::TenantTx {
    fn target(&mut self) -> Target<'_> {
        Target::Tx(self)
    }
}

impl<T: TenantExecutor> TenantExecutor for &mut T {
    fn target(&mut self) -> Target<'_> {
        (**self).target()
    }
}

#[cfg(feature = "axum")]
impl TenantExecutor for hidra_axum::RequestConn {
    fn target(&mut self) -> Target<'_> {
        Target::Conn(self)
    }
}

#[cfg(feature = "axum")]
impl TenantExecutor for hidra_axum::RequestTx {
    fn target(&mut self) -> Target<'_> {
        Target::Tx(self)
    }
}

type Query = sqlx::query::Query<'static, Postgres, SqlxValues>;

/// The sqlx query of a SeaORM statement: its SQL and its bound values,
/// moved, not copied.
fn query(stmt: Statement) -> Query {
    let values = stmt.values.unwrap_or(Values(Vec::new()));
    sqlx::query_with(AssertSqlSafe(stmt.sql), SqlxValues(values))
}

/// Runs `$query.$method(executor)` on whichever executor `$target` is.
macro_rules! on_target {
    ($target:expr, $query:expr, $method:ident) => {
        match $target {
            Target::Conn(c) => $query.$method(c).await,
            Target::Tx(t) => $query.$method(t).await,
        }
    };
}

pub(crate) async fn execute(target: Target<'_>, stmt: Statement) -> Result<ExecResult, DbErr> {
    on_target!(target, query(stmt), execute)
        .map(Into::into)
        .map_err(exec_err)
}

pub(crate) async fn execute_unprepared(target: Target<'_>, sql: &str) -> Result<ExecResult, DbErr> {
    let raw = sqlx::raw_sql(AssertSqlSafe(sql));
    on_target!(target, raw, execute)
        .map(Into::into)
        .map_err(exec_err)
}

pub(crate) async fn query_one(
    target: Target<'_>,
    stmt: Statement,
) -> Result<Option<QueryResult>, DbErr> {
    on_target!(target, query(stmt), fetch_optional)
        .map(|row| row.map(Into::into))
        .map_err(query_err)
}

pub(crate) async fn query_all(
    target: Target<'_>,
    stmt: Statement,
) -> Result<Vec<QueryResult>, DbErr> {
    on_target!(target, query(stmt), fetch_all)
        .map(|rows| rows.into_iter().map(Into::into).collect())
        .map_err(query_err)
}

/// Kept as sqlx errors, so `DbErr::sql_err()` still finds unique and
/// foreign-key violations.
fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(e.into()))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e.into()))
}
