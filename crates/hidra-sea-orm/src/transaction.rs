//! [`TenantTransaction`]: a SeaORM transaction on a Hidra tenant transaction,
//! nested ones as savepoints.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex as SyncMutex, PoisonError};

use sea_orm::{
    AccessMode, ConnectionTrait, DbBackend, DbErr, ExecResult, IsolationLevel, QueryResult,
    Statement, TransactionError, TransactionSession,
};
use tokio::sync::{Mutex, MutexGuard};

use crate::error::finished;
use crate::run::{self, Target};

/// A transaction bound to one tenant, for SeaORM: what
/// [`TenantDatabase::begin`](crate::TenantDatabase) returns, or a
/// [`hidra::TenantTx`] of yours wrapped with [`TenantTransaction::new`].
///
/// It is SeaORM's [`ConnectionTrait`] (entities, `ActiveModel`s, raw
/// statements), [`TransactionTrait`](sea_orm::TransactionTrait) (a nested `begin` or `transaction` is a
/// savepoint) and [`TransactionSession`] (`commit`, `rollback`). Dropped
/// without either, it is rolled back: the outermost one by Hidra (its
/// connection is not reused with the transaction open), a nested one before
/// the transaction's next statement.
///
/// ```no_run
/// use hidra_sea_orm::TenantDatabase;
/// use sea_orm::{ConnectionTrait, TransactionSession, TransactionTrait};
///
/// # async fn run(db: TenantDatabase) -> Result<(), sea_orm::DbErr> {
/// let tx = db.begin().await?;
/// tx.execute_unprepared("UPDATE stock SET count = count - 1").await?;
/// let inner = tx.begin().await?; // SAVEPOINT
/// inner.execute_unprepared("DELETE FROM reservations").await?;
/// inner.rollback().await?; // ROLLBACK TO SAVEPOINT: the update stays
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub struct TenantTransaction {
    shared: Arc<Shared>,
    /// 0 for the outermost transaction, else this savepoint's number.
    savepoint: u64,
    /// Whether `commit` or `rollback` ran (they consume it; `Drop` checks).
    finished: bool,
}

struct Shared {
    tenant: hidra::TenantId,
    state: Mutex<State>,
    /// The outermost transaction (0) or savepoint dropped unfinished, kept
    /// apart from `state` so that `Drop` can always record it.
    abandoned: SyncMutex<Option<u64>>,
}

struct State {
    /// `None` once the outermost transaction has ended.
    tx: Option<hidra::TenantTx>,
    /// The savepoints open now, innermost last.
    open: Vec<u64>,
    /// The number of the next savepoint.
    next: u64,
}

impl TenantTransaction {
    /// Wraps a transaction of Hidra's for SeaORM.
    pub fn new(tx: hidra::TenantTx) -> Self {
        TenantTransaction {
            shared: Arc::new(Shared {
                tenant: tx.tenant().clone(),
                state: Mutex::new(State {
                    tx: Some(tx),
                    open: Vec::new(),
                    next: 1,
                }),
                abandoned: SyncMutex::new(None),
            }),
            savepoint: 0,
            finished: false,
        }
    }

    /// The tenant this transaction is bound to.
    pub fn tenant(&self) -> &hidra::TenantId {
        &self.shared.tenant
    }

    /// Sets the isolation level and access mode, before any statement of the
    /// outermost transaction.
    pub(crate) async fn configure(
        &self,
        isolation: Option<IsolationLevel>,
        access: Option<AccessMode>,
    ) -> Result<(), DbErr> {
        let mut settings = Vec::new();
        settings.extend(isolation.map(|level| format!("ISOLATION LEVEL {level}")));
        settings.extend(access.map(|mode| mode.to_string()));
        if settings.is_empty() {
            return Ok(());
        }
        if self.savepoint != 0 {
            return Err(DbErr::Custom(
                "a nested transaction is a savepoint and inherits the isolation level and \
                 access mode of the outermost one; set them there"
                    .to_owned(),
            ));
        }
        let sql = format!("SET TRANSACTION {}", settings.join(", "));
        self.execute_unprepared(&sql).await.map(drop)
    }

    /// The transaction, with what dropped savepoints left behind rolled back;
    /// fails if this transaction (or the one it is nested in) has ended.
    async fn state(&self) -> Result<MutexGuard<'_, State>, DbErr> {
        let mut state = self.shared.state.lock().await;
        let abandoned = self
            .shared
            .abandoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match abandoned {
            Some(0) => state.tx = None,
            Some(savepoint) if state.open.contains(&savepoint) => {
                rollback_to(&mut state, savepoint).await?;
            }
            _ => {}
        }
        let alive =
            state.tx.is_some() && (self.savepoint == 0 || state.open.contains(&self.savepoint));
        if alive { Ok(state) } else { Err(finished()) }
    }

    /// Begins a savepoint inside this transaction.
    async fn nested(&self) -> Result<TenantTransaction, DbErr> {
        let mut state = self.state().await?;
        let savepoint = state.next;
        state.next += 1;
        let sql = format!("SAVEPOINT hidra_savepoint_{savepoint}");
        run::execute_unprepared(target(&mut state), &sql).await?;
        state.open.push(savepoint);
        Ok(TenantTransaction {
            shared: Arc::clone(&self.shared),
            savepoint,
            finished: false,
        })
    }

    /// Commits (the outermost transaction) or releases (a savepoint).
    async fn finish(mut self, commit: bool) -> Result<(), DbErr> {
        self.finished = true;
        let mut state = self.state().await?;
        if self.savepoint == 0 {
            let tx = state.tx.take().ok_or_else(finished)?;
            state.open.clear();
            let done = if commit {
                tx.commit().await
            } else {
                tx.rollback().await
            };
            return done.map_err(crate::error::checkout_err);
        }
        if commit {
            let sql = format!("RELEASE SAVEPOINT hidra_savepoint_{}", self.savepoint);
            run::execute_unprepared(target(&mut state), &sql).await?;
            truncate(&mut state, self.savepoint);
            Ok(())
        } else {
            rollback_to(&mut state, self.savepoint).await
        }
    }

    /// A nested transaction (a savepoint); isolation level and access mode
    /// belong to the outermost one.
    async fn open(
        &self,
        isolation: Option<IsolationLevel>,
        access: Option<AccessMode>,
    ) -> Result<TenantTransaction, DbErr> {
        let nested = self.nested().await?;
        nested.configure(isolation, access).await?;
        Ok(nested)
    }

    /// Runs `callback` in this transaction and commits it if the callback
    /// succeeds, else rolls it back.
    pub(crate) async fn run<F, T, E>(self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c TenantTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        match callback(&self).await {
            Ok(value) => {
                self.commit().await.map_err(TransactionError::Connection)?;
                Ok(value)
            }
            Err(e) => {
                self.rollback()
                    .await
                    .map_err(TransactionError::Connection)?;
                Err(TransactionError::Transaction(e))
            }
        }
    }
}

fn target<'a>(state: &'a mut MutexGuard<'_, State>) -> Target<'a> {
    Target::Tx(
        state
            .tx
            .as_mut()
            .expect("State::tx is checked by TenantTransaction::state"),
    )
}

/// Forgets `savepoint` and every savepoint begun inside it.
fn truncate(state: &mut State, savepoint: u64) {
    if let Some(at) = state.open.iter().position(|s| *s == savepoint) {
        state.open.truncate(at);
    }
}

async fn rollback_to(state: &mut MutexGuard<'_, State>, savepoint: u64) -> Result<(), DbErr> {
    let sql = format!(
        "ROLLBACK TO SAVEPOINT hidra_savepoint_{savepoint}; \
         RELEASE SAVEPOINT hidra_savepoint_{savepoint}"
    );
    run::execute_unprepared(target(state), &sql).await?;
    truncate(state, savepoint);
    Ok(())
}

impl Drop for TenantTransaction {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut abandoned = self
            .shared
            .abandoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Savepoints nest in the order they were begun: rolling back the
        // outermost abandoned one rolls back the others with it.
        *abandoned = Some(abandoned.map_or(self.savepoint, |s| s.min(self.savepoint)));
        if self.savepoint == 0 {
            // Ends the transaction now if no statement runs: Hidra rolls back
            // a dropped `TenantTx` before its connection is reused.
            if let Ok(mut state) = self.shared.state.try_lock() {
                state.tx = None;
            }
        }
    }
}

impl std::fmt::Debug for TenantTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTransaction")
            .field("tenant", &self.shared.tenant)
            .field("savepoint", &self.savepoint)
            .finish()
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for TenantTransaction {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        run::execute(target(&mut self.state().await?), stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        run::execute_unprepared(target(&mut self.state().await?), sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        run::query_one(target(&mut self.state().await?), stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        run::query_all(target(&mut self.state().await?), stmt).await
    }
}

#[async_trait::async_trait]
impl TransactionSession for TenantTransaction {
    async fn commit(self) -> Result<(), DbErr> {
        self.finish(true).await
    }

    async fn rollback(self) -> Result<(), DbErr> {
        self.finish(false).await
    }
}

/// Implements SeaORM's `TransactionTrait` for `$ty` from its
/// `open(isolation, access) -> Result<TenantTransaction, DbErr>`.
macro_rules! impl_transaction_trait {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl sea_orm::TransactionTrait for $ty {
            type Transaction = $crate::TenantTransaction;

            async fn begin(&self) -> Result<$crate::TenantTransaction, sea_orm::DbErr> {
                self.open(None, None).await
            }

            async fn begin_with_config(
                &self,
                isolation_level: Option<sea_orm::IsolationLevel>,
                access_mode: Option<sea_orm::AccessMode>,
            ) -> Result<$crate::TenantTransaction, sea_orm::DbErr> {
                self.open(isolation_level, access_mode).await
            }

            async fn begin_with_options(
                &self,
                options: sea_orm::TransactionOptions,
            ) -> Result<$crate::TenantTransaction, sea_orm::DbErr> {
                self.open(options.isolation_level, options.access_mode)
                    .await
            }

            async fn transaction<F, T, E>(
                &self,
                callback: F,
            ) -> Result<T, sea_orm::TransactionError<E>>
            where
                F: for<'c> FnOnce(
                        &'c $crate::TenantTransaction,
                    ) -> std::pin::Pin<
                        Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'c>,
                    > + Send,
                T: Send,
                E: std::fmt::Display + std::fmt::Debug + Send,
            {
                self.transaction_with_config(callback, None, None).await
            }

            async fn transaction_with_config<F, T, E>(
                &self,
                callback: F,
                isolation_level: Option<sea_orm::IsolationLevel>,
                access_mode: Option<sea_orm::AccessMode>,
            ) -> Result<T, sea_orm::TransactionError<E>>
            where
                F: for<'c> FnOnce(
                        &'c $crate::TenantTransaction,
                    ) -> std::pin::Pin<
                        Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'c>,
                    > + Send,
                T: Send,
                E: std::fmt::Display + std::fmt::Debug + Send,
            {
                let tx = self
                    .open(isolation_level, access_mode)
                    .await
                    .map_err(sea_orm::TransactionError::Connection)?;
                tx.run(callback).await
            }
        }
    };
}
pub(crate) use impl_transaction_trait;

impl_transaction_trait!(TenantTransaction);
