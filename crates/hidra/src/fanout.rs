//! The same work for many tenants: reports across tenants, fleet maintenance.
//!
//! [`Hidra::fan_out`] selects the tenants (every active one, paged through
//! the registry, or the ids you name) and runs a closure with a connection
//! bound to each, a bounded number at a time. Results stream back as they
//! finish, each with its tenant's id; one tenant's failure is its own result
//! and does not stop the others.
//!
//! ```no_run
//! use futures_util::TryStreamExt;
//!
//! # async fn run(hidra: hidra::Hidra) -> Result<(), hidra::Error> {
//! let mut counts = hidra.fan_out().concurrency(8).run(|mut conn| async move {
//!     sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders")
//!         .fetch_one(&mut conn)
//!         .await
//! });
//! while let Some(done) = counts.try_next().await? {
//!     match done.result {
//!         Ok(n) => println!("{}: {n} orders", done.tenant),
//!         Err(e) => eprintln!("{}: {e}", done.tenant),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! [`FanOut::query`] runs one SQL statement and returns its rows as text with
//! the columns' names and types, as `hidra sql --all-tenants` prints them.

use std::future::Future;
use std::sync::Arc;

use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sqlx::postgres::PgRow;
use sqlx::{Column as _, Either, Executor, Row, Statement as _, TypeInfo, ValueRef};

use crate::error::{BoxError, Error, Result};
use crate::hidra::Hidra;
use crate::scope::TenantConn;
use crate::store::ListTenants;
use crate::tenant::{Tenant, TenantId, TenantStatus};

/// How many tenants run at once unless [`FanOut::concurrency`] says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Registry page size while listing the active tenants.
const PAGE: u32 = 500;

/// Work for many tenants, built by [`Hidra::fan_out`].
#[derive(Debug, Clone)]
#[must_use = "a fan-out does nothing until `run` or `query` is called and the stream polled"]
pub struct FanOut {
    hidra: Hidra,
    chosen: Option<Vec<TenantId>>,
    concurrency: usize,
}

/// One tenant's result.
#[derive(Debug)]
#[non_exhaustive]
pub struct TenantResult<T> {
    /// The tenant.
    pub tenant: TenantId,
    /// What the work returned, or why it could not run
    /// ([`Error::NotFound`], a checkout error, [`Error::TenantWork`]).
    pub result: Result<T>,
}

/// What one SQL statement returned for one tenant, values as PostgreSQL's
/// text output (`NULL` as `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rows {
    /// The result's columns, in order.
    pub columns: Vec<Column>,
    /// The rows; each has one value per column.
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows the statement inserted, updated or deleted.
    pub rows_affected: u64,
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its PostgreSQL type, as sqlx names it (`INT8`, `TEXT`, `NUMERIC`, …).
    pub type_name: String,
}

impl Hidra {
    /// Work for every active tenant, or the ones
    /// [`FanOut::tenants`] names; see [the module docs](crate::fanout).
    pub fn fan_out(&self) -> FanOut {
        FanOut {
            hidra: self.clone(),
            chosen: None,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl FanOut {
    /// Runs for these tenants only (in any status; an unknown id is a
    /// [`Error::NotFound`] result), instead of every active one.
    pub fn tenants<I: IntoIterator<Item = TenantId>>(mut self, ids: I) -> Self {
        self.chosen = Some(ids.into_iter().collect());
        self
    }

    /// How many tenants run at once (at least 1; default
    /// [`DEFAULT_CONCURRENCY`]). Each holds one pooled connection.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Runs `work` with a connection bound to each tenant. The stream yields
    /// each tenant's [`TenantResult`] as it finishes; it fails (and ends)
    /// only if the registry cannot be listed.
    pub fn run<F, Fut, T, E>(self, work: F) -> BoxStream<'static, Result<TenantResult<T>>>
    where
        F: Fn(TenantConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Into<BoxError>,
    {
        let work = Arc::new(work);
        let hidra = self.hidra.clone();
        self.selection()
            .map_ok(move |pending| {
                let (hidra, work) = (hidra.clone(), Arc::clone(&work));
                async move { pending.run(&hidra, &*work).await }
            })
            .try_buffer_unordered(self.concurrency)
            .boxed()
    }

    /// Runs one SQL statement for each tenant and returns its rows as text;
    /// see [`FanOut::run`] for the stream. A statement that cannot be
    /// prepared (several statements, a syntax error) fails for each tenant.
    pub fn query(self, sql: impl Into<String>) -> BoxStream<'static, Result<TenantResult<Rows>>> {
        let sql: Arc<str> = sql.into().into();
        let pooled = self.hidra.is_pooled();
        self.run(move |mut conn| {
            let sql = Arc::clone(&sql);
            async move { text_rows(&mut conn, &sql, pooled).await }
        })
    }

    /// The tenants to run for, as they are found.
    fn selection(&self) -> BoxStream<'static, Result<Pending>> {
        match &self.chosen {
            Some(ids) => {
                stream::iter(ids.clone().into_iter().map(|id| Ok(Pending::Id(id)))).boxed()
            }
            None => active_tenants(self.hidra.clone())
                .map_ok(Pending::Record)
                .boxed(),
        }
    }
}

/// A tenant to run for: a record from the registry listing, or an id still
/// to be looked up.
enum Pending {
    Record(Tenant),
    Id(TenantId),
}

impl Pending {
    async fn run<F, Fut, T, E>(self, hidra: &Hidra, work: &F) -> Result<TenantResult<T>>
    where
        F: Fn(TenantConn) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<BoxError>,
    {
        let (tenant, record) = match self {
            Pending::Record(t) => (t.id.clone(), Ok(Some(t))),
            Pending::Id(id) => {
                let record = hidra.tenant(&id).await;
                (id, record)
            }
        };
        let result = async {
            let record = record?.ok_or_else(|| Error::NotFound(tenant.clone()))?;
            let conn = hidra.acquire(&record).await?;
            work(conn).await.map_err(|source| Error::TenantWork {
                id: tenant.clone(),
                source: source.into(),
            })
        }
        .await;
        Ok(TenantResult { tenant, result })
    }
}

/// Every active tenant, a registry page at a time.
fn active_tenants(hidra: Hidra) -> BoxStream<'static, Result<Tenant>> {
    // `None` once the last page was read.
    let start = Some(None::<TenantId>);
    stream::try_unfold(start, move |cursor| {
        let hidra = hidra.clone();
        async move {
            let Some(after) = cursor else {
                return Ok::<_, Error>(None);
            };
            let mut page = ListTenants::first(PAGE).status(TenantStatus::Active);
            page.after = after;
            let page = hidra.list(&page).await?;
            let next = page.next.map(Some);
            Ok(Some((
                stream::iter(page.items.into_iter().map(Ok::<_, Error>)),
                next,
            )))
        }
    })
    .try_flatten()
    .boxed()
}

/// Runs `sql` on `conn` and returns its rows as text. The simple query
/// protocol returns every value as PostgreSQL's text output, whatever its
/// type; the statement is prepared first (where a pooler allows) so that the
/// columns are known even without rows and several statements are refused.
async fn text_rows(conn: &mut TenantConn, sql: &str, pooled: bool) -> Result<Rows, sqlx::Error> {
    let mut columns = Vec::new();
    if !pooled {
        let prepared = (&mut *conn).prepare(crate::sql::trusted(sql)).await?;
        columns = prepared.columns().iter().map(column).collect();
    }
    let mut out = Rows {
        columns,
        rows: Vec::new(),
        rows_affected: 0,
    };
    let mut results = sqlx::raw_sql(crate::sql::trusted(sql)).fetch_many(&mut *conn);
    while let Some(item) = results.try_next().await? {
        match item {
            Either::Left(done) => out.rows_affected += done.rows_affected(),
            Either::Right(row) => {
                if out.columns.is_empty() {
                    out.columns = row.columns().iter().map(column).collect();
                }
                out.rows.push(text_values(&row)?);
            }
        }
    }
    Ok(out)
}

fn column(c: &sqlx::postgres::PgColumn) -> Column {
    Column {
        name: c.name().to_owned(),
        type_name: c.type_info().name().to_owned(),
    }
}

fn text_values(row: &PgRow) -> Result<Vec<Option<String>>, sqlx::Error> {
    (0..row.len())
        .map(|i| -> Result<Option<String>, sqlx::Error> {
            let value = row.try_get_raw(i)?;
            if value.is_null() {
                return Ok(None);
            }
            value
                .as_str()
                .map(|s| Some(s.to_owned()))
                .map_err(sqlx::Error::Decode)
        })
        .collect()
}
