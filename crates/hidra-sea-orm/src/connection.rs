//! [`TenantConnection`]: a Hidra connection or transaction you already hold,
//! for SeaORM.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, Statement};
use tokio::sync::Mutex;

use crate::run::{self, TenantExecutor};

/// A [`hidra::TenantConn`] or [`hidra::TenantTx`] (owned or `&mut`, or the
/// `hidra-axum` extractors with feature `axum`) as SeaORM's
/// [`ConnectionTrait`]: every SeaORM statement runs on that connection, as
/// that tenant.
///
/// Use it to run SeaORM code inside the request's transaction that
/// `hidra-axum`'s layer settles:
///
/// ```
/// use hidra_sea_orm::TenantConnection;
/// use sea_orm::ConnectionTrait;
///
/// async fn archive(mut tx: hidra_axum::RequestTx) -> Result<(), axum::http::StatusCode> {
///     let db = TenantConnection::new(&mut tx);
///     db.execute_unprepared("UPDATE orders SET archived = true")
///         .await
///         .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
///     Ok(()) // committed by the layer
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::post(archive);
/// ```
///
/// For SeaORM transactions of its own (`begin`, `transaction`, savepoints),
/// use [`TenantDatabase`](crate::TenantDatabase) or
/// [`TenantTransaction`](crate::TenantTransaction).
pub struct TenantConnection<C> {
    conn: Mutex<C>,
}

impl<C: TenantExecutor> TenantConnection<C> {
    /// Runs SeaORM statements on `conn`.
    pub fn new(conn: C) -> Self {
        TenantConnection {
            conn: Mutex::new(conn),
        }
    }

    /// The connection or transaction back.
    pub fn into_inner(self) -> C {
        self.conn.into_inner()
    }
}

impl<C> std::fmt::Debug for TenantConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConnection").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<C: TenantExecutor> ConnectionTrait for TenantConnection<C> {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        run::execute(self.conn.lock().await.target(), stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        run::execute_unprepared(self.conn.lock().await.target(), sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        run::query_one(self.conn.lock().await.target(), stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        run::query_all(self.conn.lock().await.target(), stmt).await
    }
}
