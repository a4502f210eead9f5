//! Who loads the system: per-tenant counters of connection use.
//!
//! Every tenant checkout ([`Hidra::acquire`](crate::Hidra::acquire),
//! [`Hidra::begin`](crate::Hidra::begin)) counts towards its tenant: the
//! connections it holds now, the connection time it held, how often it had
//! to wait for its share of the pool or was refused at its cap, and how many
//! of its statements were cancelled (a `statement_timeout`). The web layer
//! adds requests and rate-limit refusals. The counters are a few atomics per
//! tenant, updated without locks on the request path.
//!
//! Reading them is bounded whatever the number of tenants:
//! [`TenantLoads::top`] returns the `n` heaviest tenants and sums every other
//! one into a single [`LoadReport::other`] bucket, and
//! [`LoadReport::to_prometheus`] renders exactly that, never one series per
//! tenant.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use serde::Serialize;

use crate::tenant::TenantId;

/// The label value of the bucket that sums the tenants outside the top `n`.
/// Tenant ids start with a letter, so it can never be one.
pub const OTHER_TENANTS: &str = "_other";

/// Nanoseconds since the first use in this process: a clock that fits an
/// atomic.
pub(crate) fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let nanos = EPOCH.get_or_init(Instant::now).elapsed().as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// The live counters of one tenant.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    held: AtomicU32,
    /// Connection time of the connections given back.
    held_nanos: AtomicU64,
    /// The sum of the checkout times ([`now_nanos`]) of the connections held
    /// now, so that their time so far is `held × now − open_since`.
    open_since: AtomicU64,
    checkouts: AtomicU64,
    waits: AtomicU64,
    busy: AtomicU64,
    cancelled: AtomicU64,
    requests: AtomicU64,
    rate_limited: AtomicU64,
}

impl Counters {
    /// A connection taken (after a wait for the tenant's share, or not);
    /// returns its checkout time, for [`returned`](Self::returned).
    pub(crate) fn checked_out(&self, waited: bool) -> u64 {
        let now = now_nanos();
        self.checkouts.fetch_add(1, Ordering::Relaxed);
        self.open_since.fetch_add(now, Ordering::Relaxed);
        self.held.fetch_add(1, Ordering::Relaxed);
        if waited {
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
        now
    }

    /// A connection taken at `since` given back.
    pub(crate) fn returned(&self, since: u64) {
        self.held_nanos
            .fetch_add(now_nanos().saturating_sub(since), Ordering::Relaxed);
        self.held.fetch_sub(1, Ordering::Relaxed);
        self.open_since.fetch_sub(since, Ordering::Relaxed);
    }

    /// A checkout refused at the tenant's cap (after waiting for it).
    pub(crate) fn refused(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `error` if the server cancelled the statement (SQLSTATE
    /// `57014`: `statement_timeout`, or a cancel request).
    pub(crate) fn saw(&self, error: &sqlx::Error) {
        if error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "57014")
        {
            self.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> TenantLoad {
        // Read without a lock: a checkout racing with the read may skew the
        // open part by its own few nanoseconds, never more.
        let held = self.held.load(Ordering::Relaxed);
        let open =
            (u64::from(held) * now_nanos()).saturating_sub(self.open_since.load(Ordering::Relaxed));
        TenantLoad {
            connections: held,
            connection_seconds: (self.held_nanos.load(Ordering::Relaxed) + open) as f64 / 1e9,
            checkouts: self.checkouts.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }
}

/// One tenant's load (or the sum over several), as counted since the process
/// started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TenantLoad {
    /// Connections it holds now.
    pub connections: u32,
    /// Connection time it held, including the connections it holds now.
    pub connection_seconds: f64,
    /// Connections and transactions it checked out.
    pub checkouts: u64,
    /// Checkouts that had to wait for its share of the pool (including the
    /// refused ones).
    pub waits: u64,
    /// Checkouts refused after waiting at its cap
    /// ([`Error::TenantBusy`](crate::Error::TenantBusy)).
    pub busy: u64,
    /// Statements the server cancelled (its `statement_timeout`).
    pub cancelled: u64,
    /// Requests the web layer served it.
    pub requests: u64,
    /// Requests the web layer refused at its rate limit.
    pub rate_limited: u64,
}

impl TenantLoad {
    fn add(&mut self, other: &TenantLoad) {
        self.connections += other.connections;
        self.connection_seconds += other.connection_seconds;
        self.checkouts += other.checkouts;
        self.waits += other.waits;
        self.busy += other.busy;
        self.cancelled += other.cancelled;
        self.requests += other.requests;
        self.rate_limited += other.rate_limited;
    }
}

/// The heaviest tenants and the sum of all the others; see
/// [`TenantLoads::top`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LoadReport {
    /// The top tenants, heaviest first.
    pub top: Vec<(TenantId, TenantLoad)>,
    /// Every other tenant's load, summed.
    pub other: TenantLoad,
    /// How many tenants `other` sums.
    pub other_tenants: usize,
}

/// The metrics of [`LoadReport::to_prometheus`]: name, type, help, value.
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TenantLoad) -> f64,
);

const METRICS: &[Metric] = &[
    (
        "hidra_tenant_connections",
        "gauge",
        "Connections the tenant holds now.",
        |l| f64::from(l.connections),
    ),
    (
        "hidra_tenant_connection_seconds_total",
        "counter",
        "Connection time the tenant held, in seconds.",
        |l| l.connection_seconds,
    ),
    (
        "hidra_tenant_checkouts_total",
        "counter",
        "Connections and transactions the tenant checked out.",
        |l| l.checkouts as f64,
    ),
    (
        "hidra_tenant_waits_total",
        "counter",
        "Checkouts that waited for the tenant's share of the pool.",
        |l| l.waits as f64,
    ),
    (
        "hidra_tenant_busy_total",
        "counter",
        "Checkouts refused at the tenant's cap.",
        |l| l.busy as f64,
    ),
    (
        "hidra_tenant_cancelled_statements_total",
        "counter",
        "Statements of the tenant the server cancelled (statement_timeout).",
        |l| l.cancelled as f64,
    ),
    (
        "hidra_tenant_requests_total",
        "counter",
        "Requests served to the tenant.",
        |l| l.requests as f64,
    ),
    (
        "hidra_tenant_rate_limited_total",
        "counter",
        "Requests of the tenant refused at its rate limit.",
        |l| l.rate_limited as f64,
    ),
];

impl LoadReport {
    /// The report in Prometheus' text format: each metric has one series per
    /// top tenant (`tenant="<id>"`) and one for the rest
    /// (`tenant="_other"`, [`OTHER_TENANTS`]), so `n + 1` series at most
    /// however many tenants there are. Append it to the application's own
    /// `/metrics` output.
    ///
    /// A tenant entering the top moves its counts out of `_other`, which
    /// Prometheus reads as a counter reset of `_other`; rank by the long-run
    /// total ([`TenantLoads::top`]) so that the top set changes rarely.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in METRICS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (id, load) in &self.top {
                // Tenant ids are `[a-z0-9_-]`: nothing to escape.
                let _ = writeln!(out, "{name}{{tenant=\"{id}\"}} {}", value(load));
            }
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{OTHER_TENANTS}\"}} {}",
                value(&self.other)
            );
        }
        out
    }
}

/// The per-tenant load counters of a [`Hidra`](crate::Hidra) handle
/// ([`Hidra::load`](crate::Hidra::load)); cheap to clone, shared by clones of
/// the handle.
#[derive(Clone)]
pub struct TenantLoads {
    /// Tells this handle's per-thread copies from another's (clones share it).
    id: u64,
    tenants: Arc<RwLock<HashMap<TenantId, Arc<Counters>>>>,
}

impl Default for TenantLoads {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TenantLoads {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            tenants: Arc::default(),
        }
    }
}

/// Most counter handles a thread keeps a copy of, per [`TenantLoads`].
const LOCAL_CAPACITY: usize = 16_384;

/// Most [`TenantLoads`] a thread keeps copies for (a process may serve
/// several `Hidra` handles, one per database, on the same threads).
const LOCAL_HANDLES: usize = 4;

/// One [`TenantLoads`]' counter handles copied on a thread, by tenant.
type Copies = HashMap<TenantId, Arc<Counters>>;

thread_local! {
    /// This thread's copies of [`TenantLoads`]' counter handles, by the
    /// handle's id: counting a request then takes no lock, and touches no
    /// memory other threads write but the tenant's own counter.
    static LOCAL: RefCell<Vec<(u64, Copies)>> = RefCell::default();
}

impl fmt::Debug for TenantLoads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantLoads")
            .field("tenants", &self.read().len())
            .finish()
    }
}

/// The order of [`TenantLoads::rank`].
#[derive(Clone, Copy)]
enum Rank {
    /// Connection time held, then requests.
    Total,
    /// Connections held now, then connection time.
    Now,
}

impl TenantLoads {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TenantId, Arc<Counters>>> {
        self.tenants.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters of `id`, created on first use.
    pub(crate) fn counters(&self, id: &TenantId) -> Arc<Counters> {
        if let Some(counters) = self.read().get(id) {
            return Arc::clone(counters);
        }
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(tenants.entry(id.clone()).or_default())
    }

    /// Counts a request served to `id` (the web layer calls it).
    pub fn record_request(&self, id: &TenantId) {
        let counted = LOCAL.try_with(|local| {
            let mut local = local.borrow_mut();
            let at = match local.iter().position(|(owner, _)| *owner == self.id) {
                Some(at) => at,
                None => {
                    if local.len() >= LOCAL_HANDLES {
                        local.remove(0);
                    }
                    local.push((self.id, Copies::new()));
                    local.len() - 1
                }
            };
            let copies = &mut local[at].1;
            if copies.len() >= LOCAL_CAPACITY {
                copies.clear();
            }
            // `get` first: `entry` would clone the id on every request.
            let counters = match copies.get(id) {
                Some(counters) => counters,
                None => copies
                    .entry(id.clone())
                    .or_insert_with(|| self.counters(id)),
            };
            counters.requests.fetch_add(1, Ordering::Relaxed);
        });
        if counted.is_err() {
            // This thread is exiting: no copies.
            self.counters(id).requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request of `id` refused at its rate limit (the web layer
    /// calls it).
    pub fn record_rate_limited(&self, id: &TenantId) {
        self.counters(id)
            .rate_limited
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The load of one tenant, if it was ever counted.
    pub fn get(&self, id: &TenantId) -> Option<TenantLoad> {
        self.read().get(id).map(|c| c.snapshot())
    }

    /// The `n` tenants that held connections longest since the process
    /// started (then most requests), and the sum of all others. This order
    /// changes slowly, which suits metrics.
    pub fn top(&self, n: usize) -> LoadReport {
        self.rank(n, Rank::Total)
    }

    /// The `n` tenants holding the most connections right now (then the
    /// longest connection time), and the sum of all others: who is loading
    /// the pool at this moment.
    pub fn busiest(&self, n: usize) -> LoadReport {
        self.rank(n, Rank::Now)
    }

    fn rank(&self, n: usize, rank: Rank) -> LoadReport {
        let mut all: Vec<(TenantId, TenantLoad)> = self
            .read()
            .iter()
            .map(|(id, c)| (id.clone(), c.snapshot()))
            .collect();
        let key = |l: &TenantLoad| match rank {
            Rank::Total => (l.connection_seconds, l.requests as f64),
            Rank::Now => (f64::from(l.connections), l.connection_seconds),
        };
        all.sort_by(|(a_id, a), (b_id, b)| {
            key(b)
                .partial_cmp(&key(a))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a_id.cmp(b_id))
        });
        let rest = all.split_off(n.min(all.len()));
        let mut other = TenantLoad::default();
        for (_, load) in &rest {
            other.add(load);
        }
        LoadReport {
            top: all,
            other,
            other_tenants: rest.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn requests_count_into_their_own_handle_whichever_thread_counts_them() {
        let (a, b) = (TenantLoads::default(), TenantLoads::default());
        let clone = a.clone();
        let t = id("t");
        // One thread alternating between handles, then other threads.
        for _ in 0..3 {
            a.record_request(&t);
            b.record_request(&t);
            clone.record_request(&t);
        }
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..100).for_each(|_| a.record_request(&t)));
            }
        });
        assert_eq!(a.get(&t).unwrap().requests, 406);
        assert_eq!(b.get(&t).unwrap().requests, 3);
        assert!(a.get(&id("never")).is_none());
    }

    #[test]
    fn more_handles_than_a_thread_keeps_copies_for_still_count_into_their_own() {
        let handles: Vec<TenantLoads> = (0..LOCAL_HANDLES + 2)
            .map(|_| TenantLoads::default())
            .collect();
        let t = id("t");
        for _ in 0..10 {
            for h in &handles {
                h.record_request(&t);
            }
        }
        for h in &handles {
            assert_eq!(h.get(&t).unwrap().requests, 10);
        }
    }

    #[test]
    fn the_top_sums_the_rest_into_one_bucket() {
        let loads = TenantLoads::default();
        for i in 0..1000u32 {
            let c = loads.counters(&id(&format!("t{i}")));
            c.held_nanos
                .store(u64::from(i) * 1_000_000, Ordering::Relaxed);
            c.requests.store(1, Ordering::Relaxed);
        }
        let report = loads.top(10);
        let ids: Vec<_> = report.top.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids[..3], ["t999", "t998", "t997"]);
        assert_eq!(report.top.len(), 10);
        assert_eq!(report.other_tenants, 990);
        assert_eq!(report.other.requests, 990);
        let total: f64 = report
            .top
            .iter()
            .map(|(_, l)| l.connection_seconds)
            .sum::<f64>()
            + report.other.connection_seconds;
        assert!((total - (0..1000).map(f64::from).sum::<f64>() / 1000.0).abs() < 1e-6);
    }

    #[test]
    fn busiest_ranks_by_connections_held_now() {
        let loads = TenantLoads::default();
        loads
            .counters(&id("old"))
            .held_nanos
            .store(9_000_000_000, Ordering::Relaxed);
        let now = loads.counters(&id("now"));
        let since = now.checked_out(true);
        let report = loads.busiest(1);
        assert_eq!(report.top[0].0.as_str(), "now");
        assert_eq!(report.top[0].1.connections, 1);
        assert_eq!(report.top[0].1.waits, 1);
        assert_eq!(loads.top(1).top[0].0.as_str(), "old");
        // Time held so far counts before the connection comes back.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let open = loads.get(&id("now")).unwrap().connection_seconds;
        assert!(open >= 0.005, "{open}");
        now.returned(since);
        let done = loads.get(&id("now")).unwrap();
        assert_eq!(done.connections, 0);
        assert!(done.connection_seconds >= open, "{done:?}");
    }

    #[test]
    fn prometheus_output_has_at_most_n_plus_one_series_per_metric() {
        let loads = TenantLoads::default();
        for i in 0..1000 {
            loads.record_request(&id(&format!("t{i}")));
        }
        let text = loads.top(5).to_prometheus();
        for (name, ..) in METRICS {
            let series = text
                .lines()
                .filter(|l| l.starts_with(&format!("{name}{{")))
                .count();
            assert_eq!(series, 6, "{name}");
        }
        assert!(text.contains("hidra_tenant_requests_total{tenant=\"_other\"} 995"));
    }
}
