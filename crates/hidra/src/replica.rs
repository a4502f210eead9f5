//! Reads on a streaming replica: [`Hidra::acquire_read`], read-your-writes
//! with [`Hidra::acquire_read_after`], and the replica's lag.
//!
//! A replica configured with [`HidraBuilder::read_replica`] serves reads of
//! schema and row-level tenants, bound to the tenant exactly as on the primary
//! (the same checkout binding, per-tenant statements and pool cap). It is a
//! physical standby: it holds every tenant, and it refuses writes. When it
//! does not answer, reads go to the primary (failing fast while it stays
//! down, as the primary's pool does), so a replica outage costs the primary
//! load, not errors. Tenants in their own database, and every read behind a
//! transaction pooler, use the primary.
//!
//! A replica lags: a read right after a write may not see it. Read your own
//! writes by taking the primary's WAL position after the commit and asking
//! for a replica that has replayed past it:
//!
//! ```no_run
//! # async fn run(hidra: hidra::Hidra, acme: hidra::Tenant) -> Result<(), Box<dyn std::error::Error>> {
//! let mut tx = hidra.begin(&acme).await?;
//! sqlx::query("INSERT INTO notes (body) VALUES ('hello')").execute(&mut tx).await?;
//! tx.commit().await?;
//! let written = hidra.wal_position().await?;
//! // Later, perhaps in another request that carried `written` along:
//! let mut conn = hidra.acquire_read_after(&acme, written).await?;
//! let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&mut conn).await?;
//! # Ok(()) }
//! ```
//!
//! [`HidraBuilder::read_replica`]: crate::HidraBuilder::read_replica

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::scope::{self, Pool, Pooled, Reachability, TenantConn};
use crate::tenant::Tenant;

/// The default of [`HidraBuilder::replica_wait`](crate::HidraBuilder::replica_wait).
pub(crate) const DEFAULT_REPLICA_WAIT: Duration = Duration::from_secs(1);

/// How often a read-your-writes read asks the replica how far it replayed.
const REPLAY_POLL: Duration = Duration::from_millis(5);

/// The replica's pool and breaker.
pub(crate) struct Replica {
    pub(crate) pool: Pool,
    reach: Reachability,
    wait: Duration,
}

impl Replica {
    pub(crate) fn new(pool: Pool, reach: Reachability, wait: Duration) -> Self {
        Replica { pool, reach, wait }
    }
}

/// A position in PostgreSQL's write-ahead log (a `pg_lsn`, `16/B374D848`):
/// where the primary was after a write, for [`Hidra::acquire_read_after`].
/// Parses from and displays as PostgreSQL's text form, to carry it in a
/// cookie or a header between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalPosition(u64);

impl WalPosition {
    /// The position as one number (bytes of WAL since the start).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for WalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for WalPosition {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || {
            Error::InvalidConfig(
                format!("invalid WAL position {s:?}; expected the form 16/B374D848").into(),
            )
        };
        let (high, low) = s.split_once('/').ok_or_else(invalid)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| invalid())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| invalid())?;
        Ok(WalPosition((u64::from(high) << 32) | u64::from(low)))
    }
}

/// How the read replica is doing, from [`Hidra::replica_status`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// Whether it answered.
    pub reachable: bool,
    /// WAL the primary has written and the replica not yet replayed.
    pub lag_bytes: Option<u64>,
    /// Since the last transaction the replica replayed was committed on the
    /// primary (grows while the primary is idle, too).
    pub replay_age: Option<Duration>,
}

impl ReplicaStatus {
    /// The status in Prometheus' text format: `hidra_replica_up` and, when
    /// known, `hidra_replica_lag_bytes` and `hidra_replica_replay_age_seconds`.
    pub fn to_prometheus(&self) -> String {
        let mut out = format!(
            "# TYPE hidra_replica_up gauge\nhidra_replica_up {}\n",
            u8::from(self.reachable)
        );
        if let Some(lag) = self.lag_bytes {
            out.push_str(&format!(
                "# TYPE hidra_replica_lag_bytes gauge\nhidra_replica_lag_bytes {lag}\n"
            ));
        }
        if let Some(age) = self.replay_age {
            out.push_str(&format!(
                "# TYPE hidra_replica_replay_age_seconds gauge\nhidra_replica_replay_age_seconds {}\n",
                age.as_secs_f64()
            ));
        }
        out
    }
}

impl Hidra {
    /// A connection bound to `tenant` for reading: on the
    /// [read replica](crate::HidraBuilder::read_replica) when one is
    /// configured and answers, else on the primary as
    /// [`acquire`](Hidra::acquire). Writes on a replica connection fail
    /// (`cannot execute … in a read-only transaction`). See the
    /// [module docs](crate::replica) for what it may not see yet.
    pub async fn acquire_read(&self, tenant: &Tenant) -> Result<TenantConn> {
        self.read(tenant, None).await
    }

    /// [`acquire_read`](Hidra::acquire_read) on a replica that has replayed
    /// the WAL up to `position` (from [`wal_position`](Hidra::wal_position)
    /// after a write), so the read sees that write. If the replica does not
    /// get there within [`replica_wait`](crate::HidraBuilder::replica_wait),
    /// the read goes to the primary.
    pub async fn acquire_read_after(
        &self,
        tenant: &Tenant,
        position: WalPosition,
    ) -> Result<TenantConn> {
        self.read(tenant, Some(position)).await
    }

    /// The primary's current WAL position: everything committed before the
    /// call is at or before it (the insert position, which is past any commit
    /// record even when commits do not wait for their flush).
    pub async fn wal_position(&self) -> Result<WalPosition> {
        let mut conn = self.acquire_shared().await?;
        let text: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("reading the primary's WAL position"))?;
        text.parse()
    }

    /// How the read replica is doing; `None` without one.
    pub async fn replica_status(&self) -> Option<ReplicaStatus> {
        let replica = self.inner.conns.replica.as_ref()?;
        let primary = self.wal_position().await.ok();
        let replayed = async {
            let mut conn = scope::acquire_unscoped(&replica.pool, &replica.reach).await?;
            let row: (Option<String>, Option<f64>) = sqlx::query_as(
                "SELECT pg_last_wal_replay_lsn()::text, \
                 extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("reading the replica's replay position"))?;
            Ok::<_, Error>(row)
        };
        let status = match replayed.await {
            Ok((lsn, age)) => {
                let replayed = lsn.and_then(|l| l.parse::<WalPosition>().ok());
                ReplicaStatus {
                    reachable: true,
                    lag_bytes: primary.zip(replayed).map(|(p, r)| p.0.saturating_sub(r.0)),
                    replay_age: age.map(|s| Duration::from_secs_f64(s.max(0.0))),
                }
            }
            Err(_) => ReplicaStatus {
                reachable: false,
                lag_bytes: None,
                replay_age: None,
            },
        };
        Some(status)
    }

    async fn read(&self, tenant: &Tenant, after: Option<WalPosition>) -> Result<TenantConn> {
        let usable = self.inner.conns.replica.as_ref().filter(|_| {
            // The replica is the control server's: its shared database.
            tenant.placement.shares_control_database() && self.inner.conns.pooled.is_none()
        });
        let Some(replica) = usable else {
            return self.acquire(tenant).await;
        };
        // Replayed first: the binding proves the tenant's schema is there,
        // which it is not on a replica still behind its creation.
        if let Some(position) = after {
            let ready = match scope::acquire_unscoped(&replica.pool, &replica.reach).await {
                Ok(mut conn) => replayed(&mut conn, position, replica.wait).await,
                Err(_) => false,
            };
            if !ready {
                return self.acquire(tenant).await;
            }
        }
        let scope = self.scope(tenant)?;
        let share = scope
            .admit(&tenant.id, self.inner.conns.tenant_wait)
            .await?;
        let conn = match scope::acquire_bound(&replica.pool, &replica.reach, &scope).await {
            Ok(conn) => conn,
            // Also a schema the replica has not replayed yet: the primary
            // has it, or refuses a stale record.
            Err(e) => {
                tracing::debug!(tenant = %tenant.id, error = %e, "read replica unavailable; reading from the primary");
                drop(share);
                return self.acquire(tenant).await;
            }
        };
        Ok(TenantConn::new(Pooled::Shared(conn), tenant, Some(scope)).with_share(share))
    }
}

/// Waits up to `wait` for the replica behind `conn` to replay `position`.
async fn replayed(conn: &mut sqlx::PgConnection, position: WalPosition, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let target = position.to_string();
    loop {
        let done: Result<bool, sqlx::Error> =
            sqlx::query_scalar("SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)")
                .bind(&target)
                .fetch_one(&mut *conn)
                .await;
        match done {
            Ok(true) => return true,
            Ok(false) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(REPLAY_POLL).await;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WalPosition;

    #[test]
    fn wal_positions_round_trip_postgres_text() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let p: WalPosition = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        let a: WalPosition = "1/0".parse().unwrap();
        let b: WalPosition = "0/FFFFFFFF".parse().unwrap();
        assert!(a > b);
        assert_eq!(a.as_u64() - b.as_u64(), 1);
        for bad in ["", "16", "x/1", "1/", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<WalPosition>().is_err(), "{bad}");
        }
    }
}
