//! Moving a tenant to another server: [`Hidra::move_to_server`].
//!
//! The rows are copied with the tenant's tables locked against writes on its
//! current server (`LOCK … IN SHARE MODE`: readers go on, writers wait), so
//! the tenant stays readable throughout and no write can slip in behind the
//! copy:
//!
//! 1. on the source, one transaction locks the tenant's tables;
//! 2. on the target, one transaction builds the tenant (its schema with
//!    every migration, or its database from the template there), streams
//!    every table's rows in with binary `COPY`, checks each table's row
//!    count against the source's, sets the sequences past the copied ids,
//!    and commits;
//! 3. on the control server, the registry row names the new server (after
//!    share-locking the target's row and checking it is still `active`), and
//!    the change is announced, so every process's cache drops the old record;
//! 4. the source transaction drops the old copy and commits, which releases
//!    the writers that waited: their statements fail (the tables are gone),
//!    and retried they reach the new server.
//!
//! A failure before 3 (either server stopped, a constraint violated on the
//! target, a count that does not match) drops what was built on the target
//! and rolls the source back: the tenant stays where it was, working. A
//! failure in 4 leaves the old copy behind, unreachable (the registry no
//! longer names it); the error says so.
//!
//! The write freeze lasts from 1 to 4, so it grows with the tenant's size
//! (measured by `bench-servers`). A move with a logical-replication catch-up
//! (a `FOR TABLES IN SCHEMA` publication, then a short freeze) would keep it
//! short for large tenants; it is not built.
//!
//! A row-level tenant moves its rows only: the source first takes the
//! tenant's advisory lock (waiting for its transactions, holding back new
//! ones) and locks the row-level tables in share mode, the copy goes through
//! a temporary table on the target (row-level security refuses `COPY FROM`)
//! and records the tenant in that server's `hidra.row_level_tenants`, and
//! step 4 deletes its rows and that record on the source.

use std::time::{Duration, Instant};

use sqlx::Connection;

use super::ServerName;
use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::tenant::{Tenant, TenantId};

/// What [`Hidra::move_to_server`] did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerMove {
    /// The tenant, as registered now.
    pub tenant: Tenant,
    /// The server it left (`None`: the control server).
    pub from: Option<String>,
    /// The server it is on now (`None`: the control server).
    pub to: Option<String>,
    /// Rows copied, over all its tables.
    pub rows: u64,
    /// Tables copied.
    pub tables: usize,
    /// How long its writes waited at most: from locking the source's tables
    /// to dropping them.
    pub write_freeze: Duration,
    /// How long the whole move took.
    pub elapsed: Duration,
}

/// One table copied, for [`Hidra::move_to_server_with`]'s progress callback.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MoveProgress {
    /// The table just copied.
    pub table: String,
    /// Its rows.
    pub rows: u64,
    /// Tables copied so far.
    pub done: usize,
    /// Tables in all.
    pub total: usize,
}

impl Hidra {
    /// Moves tenant `id` to the registered server `to` (`None`: the control
    /// server), keeping every row and its ids. The tenant stays readable; its
    /// writes wait while its tables are copied; a failure before the registry
    /// row is switched leaves it where it was (the guide's "Several
    /// PostgreSQL servers" has every step).
    ///
    /// Every strategy moves. A row-level tenant's rows keep their ids, so
    /// the target's row-level tables must not hold those ids already (a
    /// unique violation fails the move; keys that include the tenant column
    /// never collide). The tenant must be active or suspended, and
    /// the target `active` ([`Error::ServerNotActive`]). The copy is built at
    /// the latest tenant migration: migrate the tenant first.
    ///
    /// ```no_run
    /// # async fn run(hidra: hidra::Hidra) -> hidra::Result<()> {
    /// use hidra::{ServerName, TenantId};
    ///
    /// let moved = hidra
    ///     .move_to_server(&TenantId::new("acme")?, Some(&ServerName::new("eu-2")?))
    ///     .await?;
    /// println!("{} rows, writes held {:?}", moved.rows, moved.write_freeze);
    /// # Ok(()) }
    /// ```
    pub async fn move_to_server(
        &self,
        id: &TenantId,
        to: Option<&ServerName>,
    ) -> Result<ServerMove> {
        self.move_to_server_with(id, to, |_| {}).await
    }

    /// [`move_to_server`](Self::move_to_server), calling `progress` after
    /// each table is copied.
    pub async fn move_to_server_with(
        &self,
        id: &TenantId,
        to: Option<&ServerName>,
        progress: impl Fn(&MoveProgress) + Send + Sync,
    ) -> Result<ServerMove> {
        let started = Instant::now();
        let mut conn = self.acquire_shared().await?;
        self.ensure_internal(&mut conn).await?;
        let tenant = (self.inner.registry.store.get(&mut conn, id).await?)
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        drop(conn);
        tenant.require_settled("moving to another server")?;
        let from = tenant.placement.server.clone();
        let to_name = to.map(ToString::to_string);
        if from == to_name {
            return Ok(ServerMove {
                tenant,
                from,
                to: to_name,
                rows: 0,
                tables: 0,
                write_freeze: Duration::ZERO,
                elapsed: started.elapsed(),
            });
        }
        if let Some(to) = to {
            // Before copying anything; checked again, locked, at the switch.
            self.check_active_server(to).await?;
        }
        let source_home = self.home(&tenant).await?;
        let target_home = self.home_of(to_name.as_deref()).await?;
        let mut moved_placement = tenant.placement.clone();
        moved_placement.server = to_name.clone();
        let moved_record = Tenant {
            placement: moved_placement.clone(),
            ..tenant.clone()
        };

        // 1. The source, locked against writes until the end.
        let mut source = self.tables_conn_at(&source_home, &tenant).await?;
        sqlx::raw_sql("BEGIN")
            .execute(&mut *source)
            .await
            .map_err(Error::db("beginning the move on the source"))?;
        let frozen = Instant::now();
        let copied = async {
            let tables = self.freeze_tables(&mut source, &tenant).await?;
            // 2. The copy, committed on the target.
            let built = self
                .copy_to_home(&target_home, &tenant, &mut source, &tables, &progress)
                .await;
            match built {
                Ok(rows) => Ok((rows, tables)),
                // A schema or database of that name that was there before
                // is not ours to drop.
                Err(e @ Error::SchemaTaken { .. }) => Err(e),
                Err(e) => {
                    if let Err(undo) = self.drop_data(&moved_record).await {
                        tracing::error!(tenant = %id, error = %undo, "could not drop the half-made copy of a failed move");
                    }
                    Err(e)
                }
            }
        }
        .await;
        let (rows, tables) = match copied {
            Ok((rows, tables)) => (rows, tables),
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *source).await;
                return Err(e);
            }
        };

        // 3. The switch, on the control server.
        let switched = self.switch_server(&tenant, &moved_placement, to).await;
        let moved = match switched {
            Ok(moved) => moved,
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *source).await;
                if let Err(undo) = self.drop_data(&moved_record).await {
                    tracing::error!(tenant = %id, error = %undo, "could not drop the copy of a move that failed to switch");
                }
                return Err(e);
            }
        };

        // 4. The old copy goes.
        let cleaned = self.drop_moved_source(&tenant, &tables, &mut source).await;
        let write_freeze = frozen.elapsed();
        drop(source);
        if let Err(e) = cleaned {
            tracing::error!(tenant = %id, error = %e, "moved, but the old copy could not be dropped");
            return Err(e);
        }
        tracing::info!(
            tenant = %id,
            from = from.as_deref().unwrap_or("control"),
            to = to_name.as_deref().unwrap_or("control"),
            rows,
            write_freeze_ms = write_freeze.as_millis() as u64,
            "moved tenant to another server"
        );
        Ok(ServerMove {
            tenant: moved,
            from,
            to: to_name,
            rows,
            tables: tables.len(),
            write_freeze,
            elapsed: started.elapsed(),
        })
    }

    /// Names `to` in the tenant's registry row, if `to` is still active.
    async fn switch_server(
        &self,
        tenant: &Tenant,
        placement: &crate::Placement,
        to: Option<&ServerName>,
    ) -> Result<Tenant> {
        let mut conn = self.acquire_shared().await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the switch"))?;
        if let Some(to) = to {
            self.lock_active_server(&mut tx, to).await?;
        }
        let moved = (self.inner.registry.store)
            .update_placement(&mut tx, &tenant.id, placement)
            .await?
            .ok_or_else(|| Error::NotFound(tenant.id.clone()))?;
        tx.commit()
            .await
            .map_err(Error::db("committing the switch"))?;
        Ok(moved)
    }
}
