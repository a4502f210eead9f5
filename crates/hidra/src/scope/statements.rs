//! Per-tenant statements: how [`TenantConn`](super::TenantConn) and
//! [`TenantTx`](super::TenantTx) run sqlx queries.
//!
//! sqlx caches prepared statements per connection by SQL text, and PostgreSQL
//! plans a prepared statement under the `search_path` it was prepared with. A
//! statement shared by every tenant on a pooled connection is therefore
//! re-analysed each time the connection moves to another tenant, and fails
//! with "cached plan must not change result type" when the two tenants' tables
//! differ, as they do while a migration rolls out over the fleet.
//!
//! So every tenant gets statements of its own. The scoped types implement
//! [`sqlx::Executor`] and give each prepared statement the application's SQL
//! followed by a comment naming the tenant's schema:
//!
//! ```text
//! SELECT * FROM customers WHERE id = $1
//! /* hidra:tenant_acme */
//! ```
//!
//! The comment changes nothing PostgreSQL runs, and it is appended, so error
//! positions still point into the application's text. Tagged texts are kept
//! per tenant: running a statement costs one hash lookup, not a format and an
//! allocation. Statements that are never cached run as they are: simple
//! queries (no arguments, `raw_sql`) and unnamed ones (`persistent(false)`).
//! Row-level tenants share one schema and one `search_path`, so they share
//! statements too (their policies read the tenant at run time).
//!
//! # When a tenant's own schema changes under its statements
//!
//! After an `ALTER TABLE` in a tenant's schema, a cached `SELECT *` of that
//! tenant fails once with the same result-type error. Outside a transaction
//! the connection's cached statements are dropped and the statement is run
//! again (up to three times, should the table change again meanwhile). Inside a transaction (a [`TenantTx`](super::TenantTx)) it cannot be
//! retried, since the failed statement aborted the transaction: the error is a
//! [`StaleStatement`], the cached statements are dropped, and the next attempt
//! of the transaction succeeds. Streams (`fetch`, `fetch_many`) return a
//! [`StaleStatement`] too, and the statements are dropped before the
//! connection's next statement.
//!
//! # Behind a transaction pooler
//!
//! In [transaction-pooler mode](crate::HidraBuilder::transaction_pooler)
//! nothing is cached: every statement is unnamed (a proxy like PgBouncer 1.18
//! hands each transaction another server connection, where a named statement
//! would be missing or another client's), and a `TenantConn` wraps each
//! statement in a transaction that binds the tenant with `SET LOCAL`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryFutureExt};
use sqlx::error::{BoxDynError, DatabaseError, ErrorKind};
use sqlx::postgres::{PgArguments, PgDatabaseError, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, PgConnection, Postgres, SqlStr, Statement as _};

use crate::sql::{self, Ident};

/// How many tagged texts one tenant keeps before starting over: far more
/// than the distinct statements of a typical application. Past it (dynamic
/// SQL), texts are rebuilt, which costs a format each.
const TEXTS_PER_TENANT: usize = 1024;

/// How many times a statement found stale outside a transaction is run again
/// with fresh statements before the error is returned.
const STALE_RETRIES: usize = 3;

/// One tenant's (or one row-level schema's) statement texts.
pub(crate) struct Statements {
    /// What every statement of the tenant ends with.
    tag: Box<str>,
    /// Application SQL → the same SQL with the tag.
    texts: RwLock<HashMap<Arc<str>, Arc<str>>>,
}

impl Statements {
    pub(crate) fn new(schema: &Ident) -> Self {
        Statements {
            tag: sql::statement_tag(schema).into_boxed_str(),
            texts: RwLock::new(HashMap::new()),
        }
    }

    /// `sql` as this tenant's own statement.
    fn tagged(&self, sql: SqlStr) -> SqlStr {
        let text = sql.as_str();
        if text.ends_with(&*self.tag) {
            return sql;
        }
        if let Some(tagged) = self
            .texts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(text)
        {
            return sql::shared(tagged.clone());
        }
        let tagged: Arc<str> = sql::with_tag(text, &self.tag).into();
        let mut texts = self.texts.write().unwrap_or_else(PoisonError::into_inner);
        if texts.len() >= TEXTS_PER_TENANT {
            texts.clear();
        }
        texts.insert(Arc::from(text), tagged.clone());
        sql::shared(tagged)
    }
}

impl fmt::Debug for Statements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statements")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// A statement taken apart from the query that carried it, with its text
/// made the tenant's own.
#[derive(Clone)]
struct Statement {
    sql: SqlStr,
    arguments: Option<PgArguments>,
    prepared: Option<PgStatement>,
    persistent: bool,
}

impl Statement {
    fn take<'q, E: Execute<'q, Postgres>>(
        mut query: E,
        statements: Option<&Statements>,
        pooler: Pooler<'_>,
    ) -> Result<Self, sqlx::Error> {
        let prepared = query.statement().cloned();
        let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
        let persistent = query.persistent();
        let sql = query.sql();
        if pooler.is_pooled() {
            // Unnamed: planned for this execution, on this server connection.
            return Ok(Statement {
                sql,
                arguments,
                prepared: None,
                persistent: false,
            });
        }
        match statements {
            // Only cached (named) statements are shared between tenants.
            Some(statements) if persistent && arguments.is_some() => {
                let sql = statements.tagged(sql);
                // A statement prepared for another tenant keeps neither its
                // text nor its columns here.
                let prepared = prepared.filter(|p| p.sql().as_str() == sql.as_str());
                Ok(Statement {
                    sql,
                    arguments,
                    prepared,
                    persistent,
                })
            }
            _ => Ok(Statement {
                sql,
                arguments,
                prepared,
                persistent,
            }),
        }
    }
}

impl<'q> Execute<'q, Postgres> for Statement {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.prepared.as_ref()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        Ok(self.arguments.take())
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// Whether, and how, a scoped connection goes through a transaction pooler.
#[derive(Clone, Copy)]
pub(crate) enum Pooler<'a> {
    /// A direct connection: per-tenant cached statements.
    No,
    /// Inside a transaction bound with `SET LOCAL`: unnamed statements.
    InTransaction,
    /// A bare connection: each statement unnamed, inside a transaction this
    /// statement (`BEGIN; SET LOCAL …`) opens.
    OwnTransaction(&'a SqlStr),
}

impl Pooler<'_> {
    fn is_pooled(self) -> bool {
        !matches!(self, Pooler::No)
    }
}

/// Runs `run` inside a transaction `begin` opens, committing if it succeeded.
async fn in_own_transaction<T>(
    conn: &mut PgConnection,
    begin: SqlStr,
    run: impl for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    sqlx::raw_sql(begin).execute(&mut *conn).await?;
    let done = run(&mut *conn).await;
    let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = sqlx::raw_sql(end).execute(&mut *conn).await;
    let done = done?;
    ended?;
    Ok(done)
}

fn pooler_unsupported(what: &str) -> sqlx::Error {
    sqlx::Error::Configuration(
        format!(
            "{what} is not available in transaction-pooler mode: it needs a named statement, \
             which a transaction pooler may run on another server connection"
        )
        .into(),
    )
}

/// A scoped connection, as the [`Executor`] impls of the scoped types see it.
pub(crate) struct Scoped<'a> {
    pub(crate) conn: &'a mut PgConnection,
    /// `None` where the connection serves one tenant only (its own database).
    pub(crate) statements: Option<&'a Statements>,
    /// Inside a transaction a failed statement cannot be retried.
    pub(crate) in_transaction: bool,
    pub(crate) pooler: Pooler<'a>,
    /// Set when a stream returned a [`StaleStatement`]: the cached
    /// statements are dropped before the next statement.
    pub(crate) stale: &'a AtomicBool,
    /// Set while a statement runs: one cut off leaves replies unread (and
    /// its query perhaps still running), so the connection is settled before
    /// it goes back to the pool. `None` where a drop settles it anyway.
    pub(crate) unfinished: Option<&'a AtomicBool>,
    /// The tenant's load counters, which count cancelled statements.
    pub(crate) load: Option<&'a super::Counters>,
}

/// Marks a statement under way on `flag`.
fn start(flag: Option<&AtomicBool>) {
    if let Some(flag) = flag {
        flag.store(true, Ordering::Release);
    }
}

/// Marks the statement on `flag` finished: the server has answered it whole
/// (an error too ends with the server ready), so nothing runs any more.
fn finish(flag: Option<&AtomicBool>) {
    if let Some(flag) = flag {
        flag.store(false, Ordering::Release);
    }
}

/// Whether `e` is PostgreSQL refusing a cached statement whose result shape
/// changed (`0A000` raised while revalidating a cached plan).
fn is_stale(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<PgDatabaseError>())
        .is_some_and(|d| d.code() == "0A000" && d.routine() == Some("RevalidateCachedQuery"))
}

/// Whether `e` is a statement refused because its transaction had failed.
fn is_in_failed_transaction(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "25P02")
}

impl<'a> Scoped<'a> {
    /// Drops the connection's cached statements if a stream found one stale.
    async fn clear_if_stale(
        conn: &mut PgConnection,
        stale: &AtomicBool,
    ) -> Result<(), sqlx::Error> {
        if stale.swap(false, Ordering::AcqRel) {
            sqlx::Connection::clear_cached_statements(conn).await?;
        }
        Ok(())
    }

    /// Runs `stmt` through `run`, retrying once with fresh statements when a
    /// cached one went stale outside a transaction.
    fn retrying<T, F>(
        self,
        stmt: Result<Statement, sqlx::Error>,
        run: F,
    ) -> BoxFuture<'a, Result<T, sqlx::Error>>
    where
        T: Send + 'a,
        F: for<'c> Fn(&'c mut PgConnection, Statement) -> BoxFuture<'c, Result<T, sqlx::Error>>
            + Send
            + Sync
            + 'a,
    {
        let Scoped {
            conn,
            in_transaction,
            stale,
            pooler,
            unfinished,
            load,
            ..
        } = self;
        Box::pin(async move {
            let stmt = stmt?;
            start(unfinished);
            let done = Self::run_retrying(conn, stmt, in_transaction, stale, pooler, run).await;
            finish(unfinished);
            if let (Err(e), Some(load)) = (&done, load) {
                load.saw(e);
            }
            done
        })
    }

    /// The body of [`retrying`](Self::retrying).
    async fn run_retrying<T, F>(
        conn: &mut PgConnection,
        stmt: Statement,
        in_transaction: bool,
        stale: &AtomicBool,
        pooler: Pooler<'_>,
        run: F,
    ) -> Result<T, sqlx::Error>
    where
        F: for<'c> Fn(&'c mut PgConnection, Statement) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        {
            match pooler {
                Pooler::No => {}
                // Nothing is cached, so nothing goes stale.
                Pooler::InTransaction => return run(conn, stmt).await,
                Pooler::OwnTransaction(begin) => {
                    return in_own_transaction(conn, begin.clone(), |c| run(c, stmt)).await;
                }
            }
            Self::clear_if_stale(conn, stale).await?;
            let again = (!in_transaction).then(|| stmt.clone());
            let error = match run(conn, stmt).await {
                Err(e) if is_stale(&e) => e,
                done => return done,
            };
            if let Err(e) = sqlx::Connection::clear_cached_statements(conn).await {
                tracing::debug!(error = %e, "dropping stale statements failed; retrying later");
                stale.store(true, Ordering::Release);
            }
            let Some(again) = again else {
                return Err(StaleStatement::wrap(error));
            };
            // The table may change again between the new statement's parse
            // and its execution (DDL running alongside): a few more tries.
            let mut tries = STALE_RETRIES;
            loop {
                match run(conn, again.clone()).await {
                    // A raw `BEGIN` of the application's: treat it as a transaction.
                    Err(e) if is_in_failed_transaction(&e) => {
                        return Err(StaleStatement::wrap(error));
                    }
                    Err(e) if is_stale(&e) && tries > 1 => {
                        tries -= 1;
                        if sqlx::Connection::clear_cached_statements(conn)
                            .await
                            .is_err()
                        {
                            stale.store(true, Ordering::Release);
                        }
                    }
                    Err(e) if is_stale(&e) => {
                        stale.store(true, Ordering::Release);
                        return Err(StaleStatement::wrap(e));
                    }
                    done => return done,
                }
            }
        }
    }

    pub(crate) fn fetch_many<'q, E>(
        self,
        query: E,
    ) -> BoxStream<'a, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let Scoped {
            conn,
            statements,
            stale,
            pooler,
            unfinished,
            load,
            ..
        } = self;
        let stmt = Statement::take(query, statements, pooler);
        start(unfinished);
        // Finished when the stream ends; one dropped early stays unfinished.
        let end = futures_util::stream::poll_fn(move |_| {
            finish(unfinished);
            std::task::Poll::Ready(None)
        });
        if let Pooler::OwnTransaction(begin) = pooler {
            // The transaction must end before the connection is handed
            // back: read the stream whole inside it.
            let begin = begin.clone();
            return async move {
                let stmt = stmt?;
                let items: Vec<_> = in_own_transaction(conn, begin, |c| {
                    Box::pin(async move { Ok(c.fetch_many(stmt).collect::<Vec<_>>().await) })
                })
                .await?;
                Ok::<_, sqlx::Error>(futures_util::stream::iter(items))
            }
            .try_flatten_stream()
            .chain(end)
            .boxed();
        }
        async move {
            let stmt = stmt?;
            Self::clear_if_stale(conn, stale).await?;
            Ok::<_, sqlx::Error>((conn, stmt))
        }
        .map_ok(move |(conn, stmt)| {
            conn.fetch_many(stmt).map(move |item| {
                item.map_err(|e| {
                    if let Some(load) = load {
                        load.saw(&e);
                    }
                    if is_stale(&e) {
                        stale.store(true, Ordering::Release);
                        StaleStatement::wrap(e)
                    } else {
                        e
                    }
                })
            })
        })
        .try_flatten_stream()
        .chain(end)
        .boxed()
    }

    pub(crate) fn fetch_optional<'q, E>(
        self,
        query: E,
    ) -> BoxFuture<'a, Result<Option<PgRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let stmt = Statement::take(query, self.statements, self.pooler);
        self.retrying(stmt, |conn, stmt| conn.fetch_optional(stmt))
    }

    pub(crate) fn fetch_all<'q, E>(self, query: E) -> BoxFuture<'a, Result<Vec<PgRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let stmt = Statement::take(query, self.statements, self.pooler);
        self.retrying(stmt, |conn, stmt| conn.fetch_all(stmt))
    }

    pub(crate) fn execute<'q, E>(
        self,
        query: E,
    ) -> BoxFuture<'a, Result<PgQueryResult, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let stmt = Statement::take(query, self.statements, self.pooler);
        self.retrying(stmt, |conn, stmt| conn.execute(stmt))
    }

    pub(crate) fn prepare_with(
        self,
        sql: SqlStr,
        parameters: &'a [PgTypeInfo],
    ) -> BoxFuture<'a, Result<PgStatement, sqlx::Error>> {
        if self.pooler.is_pooled() {
            return Box::pin(async { Err(pooler_unsupported("preparing a statement")) });
        }
        let sql = match self.statements {
            Some(statements) => statements.tagged(sql),
            None => sql,
        };
        self.conn.prepare_with(sql, parameters)
    }

    pub(crate) fn describe(
        self,
        sql: SqlStr,
    ) -> BoxFuture<'a, Result<sqlx::Describe<Postgres>, sqlx::Error>> {
        if self.pooler.is_pooled() {
            return Box::pin(async { Err(pooler_unsupported("describing a statement")) });
        }
        let sql = match self.statements {
            Some(statements) => statements.tagged(sql),
            None => sql,
        };
        self.conn.describe(sql)
    }
}

/// Implements [`sqlx::Executor`] for `&mut $ty` by handing every method to
/// `$target` (an expression of `$this: &mut $ty`): the scoped types hand them
/// to their [`Scoped`] view, the web layer's extractors to the core types they
/// wrap. Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_scoped_executor {
    ($ty:ty, $this:ident => $target:expr) => {
        impl<'c> $crate::sqlx::Executor<'c> for &'c mut $ty {
            type Database = $crate::sqlx::Postgres;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> $crate::__private::BoxStream<
                'e,
                Result<
                    $crate::sqlx::Either<
                        $crate::sqlx::postgres::PgQueryResult,
                        $crate::sqlx::postgres::PgRow,
                    >,
                    $crate::sqlx::Error,
                >,
            >
            where
                'c: 'e,
                E: 'q + $crate::sqlx::Execute<'q, $crate::sqlx::Postgres>,
            {
                #[allow(unused_imports)]
                use $crate::sqlx::Executor as _;
                let $this = self;
                $target.fetch_many(query)
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> $crate::__private::BoxFuture<
                'e,
                Result<Option<$crate::sqlx::postgres::PgRow>, $crate::sqlx::Error>,
            >
            where
                'c: 'e,
                E: 'q + $crate::sqlx::Execute<'q, $crate::sqlx::Postgres>,
            {
                #[allow(unused_imports)]
                use $crate::sqlx::Executor as _;
                let $this = self;
                $target.fetch_optional(query)
            }

            fn fetch_all<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> $crate::__private::BoxFuture<
                'e,
                Result<Vec<$crate::sqlx::postgres::PgRow>, $crate::sqlx::Error>,
            >
            where
                'c: 'e,
                E: 'q + $crate::sqlx::Execute<'q, $crate::sqlx::Postgres>,
            {
                #[allow(unused_imports)]
                use $crate::sqlx::Executor as _;
                let $this = self;
                $target.fetch_all(query)
            }

            fn execute<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> $crate::__private::BoxFuture<
                'e,
                Result<$crate::sqlx::postgres::PgQueryResult, $crate::sqlx::Error>,
            >
            where
                'c: 'e,
                E: 'q + $crate::sqlx::Execute<'q, $crate::sqlx::Postgres>,
            {
                #[allow(unused_imports)]
                use $crate::sqlx::Executor as _;
                let $this = self;
                $target.execute(query)
            }

            fn prepare_with<'e>(
                self,
                sql: $crate::sqlx::SqlStr,
                parameters: &'e [$crate::sqlx::postgres::PgTypeInfo],
            ) -> $crate::__private::BoxFuture<
                'e,
                Result<$crate::sqlx::postgres::PgStatement, $crate::sqlx::Error>,
            >
            where
                'c: 'e,
            {
                #[allow(unused_imports)]
                use $crate::sqlx::Executor as _;
                let $this = self;
                $target.prepare_with(sql, parameters)
            }

            fn describe<'e>(
                self,
                sql: $crate::sqlx::SqlStr,
            ) -> $crate::__private::BoxFuture<
                'e,
                Result<$crate::sqlx::Describe<$crate::sqlx::Postgres>, $crate::sqlx::Error>,
            >
            where
                'c: 'e,
            {
                #[allow(unused_imports)]
                use $crate::sqlx::Executor as _;
                let $this = self;
                $target.describe(sql)
            }
        }
    };
}

/// A tenant's schema changed under one of its cached statements where the
/// statement could not simply be run again: inside a transaction (the failed
/// statement aborted it) or in a stream.
///
/// PostgreSQL refused the statement with "cached plan must not change result
/// type" (for example a `SELECT *` after a column was added). The connection's
/// cached statements have been dropped, so running the transaction (or the
/// stream) again succeeds. It reaches the application as a
/// [`sqlx::Error::Database`]; find it with [`StaleStatement::find`]:
///
/// ```
/// fn should_retry(e: &sqlx::Error) -> bool {
///     hidra::StaleStatement::find(e).is_some()
/// }
/// # let _ = should_retry;
/// ```
#[derive(Debug)]
pub struct StaleStatement {
    source: Box<dyn DatabaseError>,
}

impl StaleStatement {
    fn wrap(e: sqlx::Error) -> sqlx::Error {
        match e {
            sqlx::Error::Database(source) => {
                sqlx::Error::Database(Box::new(StaleStatement { source }))
            }
            other => other,
        }
    }

    /// The stale-statement error inside `e`, if that is what `e` is.
    pub fn find(e: &sqlx::Error) -> Option<&StaleStatement> {
        e.as_database_error()?.try_downcast_ref::<StaleStatement>()
    }
}

impl fmt::Display for StaleStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the tenant's schema changed under a cached statement inside a transaction or stream \
             (cached plan must not change result type); the cached statements were dropped: \
             roll back and run it again",
        )
    }
}

impl StdError for StaleStatement {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_error())
    }
}

impl DatabaseError for StaleStatement {
    fn message(&self) -> &str {
        self.source.message()
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.source.code()
    }

    fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_tagged_once_and_reused() {
        let s = Statements::new(&Ident::trusted("tenant_acme".into()));
        let a = s.tagged(sqlx::SqlSafeStr::into_sql_str("SELECT 1 WHERE $1"));
        assert_eq!(a.as_str(), "SELECT 1 WHERE $1\n/* hidra:tenant_acme */");
        // Already this tenant's: unchanged.
        assert_eq!(s.tagged(a.clone()).as_str(), a.as_str());
        let b = s.tagged(sqlx::SqlSafeStr::into_sql_str("SELECT 1 WHERE $1"));
        assert!(
            std::ptr::eq(a.as_str(), b.as_str()),
            "the cached text is shared"
        );
        let other = Statements::new(&Ident::trusted("tenant_b".into()));
        assert_eq!(
            other.tagged(a).as_str(),
            "SELECT 1 WHERE $1\n/* hidra:tenant_acme */\n/* hidra:tenant_b */"
        );
    }

    #[test]
    fn texts_stay_bounded() {
        let s = Statements::new(&Ident::trusted("t".into()));
        for i in 0..(TEXTS_PER_TENANT * 3) {
            s.tagged(sql::owned(format!("SELECT {i}")));
        }
        assert!(s.texts.read().unwrap().len() <= TEXTS_PER_TENANT);
    }
}
