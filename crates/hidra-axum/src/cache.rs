//! The in-process registry cache: [`TenantCache`].
//!
//! Every request under [`TenantLayer`](crate::TenantLayer) needs its tenant's
//! record. Reading the registry each time would add a database round trip to
//! every request, so records are cached in process with
//! [moka](https://docs.rs/moka):
//!
//! - **Bounded**: at most [`max_capacity`](TenantCacheBuilder::max_capacity)
//!   entries (default 10,000), least recently used out first.
//! - **TTL**: an entry lives at most [`ttl`](TenantCacheBuilder::ttl) (default
//!   60 s). Unknown ids are cached too, for
//!   [`negative_ttl`](TenantCacheBuilder::negative_ttl) (default 5 s), so that
//!   a flood of requests for one unknown id costs one query, not one per
//!   request. Concurrent misses for one id are coalesced into one query.
//! - **Invalidated by the registry**: the registry's trigger announces every
//!   changed tenant id on [`hidra::CHANGES_CHANNEL`]. A background task LISTENs
//!   there (started on first use, on the runtime that first uses the cache; the
//!   first lookup waits for its first connection attempt, so nothing is cached
//!   before it can be invalidated) and drops the entry of every id it hears, so
//!   a suspension or deletion made by *any* process serving the database is
//!   seen here within the notification delay, not after the TTL. If the
//!   listener loses its connection, the whole cache is cleared once it is back
//!   (notifications sent meanwhile are lost). While it is disconnected, entries
//!   live at most their TTL.
//! - A hit costs no database round trip, and usually not even a shared
//!   lock: each thread keeps its own copy of the records it served (valid
//!   until the entry's TTL, and dropped as a whole at any invalidation), so
//!   the common request reads a thread-local map.
//!
//! A lookup that raced with a change (the record was read just before the
//! change committed, and the notification arrived before the stale record was
//! stored) is detected and the stale entry dropped.
//!
//! [`TenantCache::sync`] waits until every registry change committed before
//! the call has reached this cache: use it after changing a tenant in process
//! when the very next request must see the change (and in tests).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hidra::{Hidra, Tenant, TenantId};
use moka::Expiry;
use moka::future::Cache;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Payload prefix of the barrier notifications sent by [`TenantCache::sync`];
/// `!` never starts a tenant id, so they cannot be mistaken for one.
const BARRIER_PREFIX: &str = "!sync:";

/// Listener reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// At most this long between reconnection attempts: a registry change made
/// right after the database comes back reaches the cache within about this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The cached registry, shared by every clone of a [`TenantLayer`](crate::TenantLayer).
///
/// Cheap to clone: clones share the entries, the counters and the listener.
///
/// ```no_run
/// use std::time::Duration;
/// use hidra_axum::{TenantCache, TenantLayer};
///
/// # async fn run(hidra: hidra::Hidra) -> Result<(), Box<dyn std::error::Error>> {
/// let cache = TenantCache::builder(hidra.clone())
///     .max_capacity(50_000)
///     .ttl(Duration::from_secs(300))
///     .negative_ttl(Duration::from_secs(2))
///     .build();
/// let layer = TenantLayer::new(hidra.clone()).with_cache(cache.clone());
///
/// // Later, after changing a tenant in this process:
/// hidra.suspend(&hidra::TenantId::new("acme")?).await?;
/// cache.sync().await?; // the next request sees the suspension
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantCache {
    handle: Arc<Handle>,
}

/// The owner of the listener task: dropping the last cache clone stops it.
struct Handle {
    state: Arc<State>,
    listener: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get() {
            task.abort();
        }
    }
}

struct State {
    hidra: Hidra,
    /// Tells this cache's per-thread copies from another cache's.
    id: u64,
    ttl: Duration,
    /// Most records each thread keeps a copy of.
    front_capacity: usize,
    tenants: Cache<TenantId, Slot<Arc<Tenant>>>,
    domains: Cache<String, Slot<TenantId>>,
    /// Bumped before every invalidation, to detect lookups that raced with one.
    generation: AtomicU64,
    hits: Striped,
    misses: AtomicU64,
    /// This cache's barrier namespace, so other processes' barriers are ignored.
    instance: u64,
    /// Barriers handed out by `sync`.
    issued: AtomicU64,
    /// The highest barrier the listener has passed.
    passed: watch::Sender<u64>,
    /// Whether the listener's first connection attempt is over (lookups wait
    /// for it, so that nothing is cached before the listener could hear a
    /// change to it).
    started: AtomicBool,
    started_tx: watch::Sender<bool>,
}

/// A counter every thread bumps, one cache line per stripe: threads on
/// different cores count a hit without taking a line from each other.
#[derive(Default)]
struct Striped([CachePadded<AtomicU64>; STRIPES]);

const STRIPES: usize = 8;

impl Striped {
    fn add(&self) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        }
        let stripe = STRIPE.try_with(|s| *s).unwrap_or(0);
        self.0[stripe].fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// One cached lookup: the value (or its absence) and the generation at which
/// the lookup started.
#[derive(Clone)]
struct Slot<V> {
    value: Option<V>,
    started: u64,
    /// When it was read (its TTL runs from then).
    loaded: Instant,
}

/// Expiry of cache entries: the TTL for found values, the negative TTL for
/// absent ones.
struct Ttl {
    found: Duration,
    absent: Duration,
}

impl<K, V> Expiry<K, Slot<V>> for Ttl {
    fn expire_after_create(&self, _key: &K, value: &Slot<V>, _now: Instant) -> Option<Duration> {
        Some(if value.value.is_some() {
            self.found
        } else {
            self.absent
        })
    }
}

/// Configures a [`TenantCache`].
#[derive(Debug)]
#[must_use]
pub struct TenantCacheBuilder {
    hidra: Hidra,
    max_capacity: u64,
    ttl: Duration,
    negative_ttl: Duration,
}

impl TenantCacheBuilder {
    /// Most tenants kept (default 10,000); custom-domain mappings are bounded
    /// by the same number.
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = entries;
        self
    }

    /// How long a found tenant is kept (default 60 s). Changes announced by
    /// the registry drop entries sooner.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long an unknown id is remembered as unknown (default 5 s).
    /// Registering that id drops the entry at once.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Builds the cache. Its listener starts on first use.
    pub fn build(self) -> TenantCache {
        let expiry = || Ttl {
            found: self.ttl,
            absent: self.negative_ttl,
        };
        let state = State {
            tenants: Cache::builder()
                .name("hidra-tenants")
                .max_capacity(self.max_capacity)
                .expire_after(expiry())
                .build(),
            domains: Cache::builder()
                .name("hidra-domains")
                .max_capacity(self.max_capacity)
                .expire_after(expiry())
                .build(),
            hidra: self.hidra,
            id: front::next_cache_id(),
            ttl: self.ttl,
            front_capacity: usize::try_from(self.max_capacity)
                .unwrap_or(usize::MAX)
                .min(front::MAX_ENTRIES),
            generation: AtomicU64::new(0),
            hits: Striped::default(),
            misses: AtomicU64::new(0),
            instance: RandomState::new().hash_one(std::process::id()),
            issued: AtomicU64::new(0),
            passed: watch::Sender::new(0),
            started: AtomicBool::new(false),
            started_tx: watch::Sender::new(false),
        };
        TenantCache {
            handle: Arc::new(Handle {
                state: Arc::new(state),
                listener: OnceLock::new(),
            }),
        }
    }
}

/// Counters of a [`TenantCache`], for health and metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Cached tenants, found or not (approximate: expired entries are removed lazily).
    pub entries: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that read the registry.
    pub misses: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 before the first lookup.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

impl fmt::Debug for TenantCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantCache")
            .field("stats", &self.stats())
            .field(
                "started",
                &self.handle.state.started.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl TenantCache {
    /// A cache with the default settings (see [`builder`](Self::builder)).
    pub fn new(hidra: Hidra) -> Self {
        Self::builder(hidra).build()
    }

    /// Starts configuring a cache over `hidra`'s registry.
    pub fn builder(hidra: Hidra) -> TenantCacheBuilder {
        TenantCacheBuilder {
            hidra,
            max_capacity: 10_000,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
        }
    }

    /// The handle whose registry this cache reads.
    pub fn hidra(&self) -> &Hidra {
        &self.handle.state.hidra
    }

    /// The tenant with this id (any status), from the cache or the registry;
    /// `None` if it is not registered.
    pub async fn get(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>> {
        if let Some(tenant) = self.get_now(id) {
            return Ok(Some(tenant));
        }
        // This thread's copies were just looked at (there are none before
        // the listener runs, which `get_now` checks).
        self.ensure_listener().await;
        let state = &*self.handle.state;
        // Read before the lookup: a copy taken under it is dropped by the
        // next invalidation, even one racing with this lookup.
        let generation = state.generation.load(Ordering::SeqCst);
        if let Some(slot) = state.tenants.get(id).await {
            state.hits.add();
            if let Some(tenant) = &slot.value {
                let expires = slot.loaded + state.ttl;
                front::put(state.id, generation, tenant, expires, state.front_capacity);
            }
            return Ok(slot.value);
        }
        state.misses.fetch_add(1, Ordering::Relaxed);
        // Boxed: the registry read is a large future, and keeping it out of
        // line keeps the hit path (and every future awaiting it) small.
        Box::pin(self.load(id)).await
    }

    /// The hit path of [`get`](Self::get), without waiting: this thread's
    /// copy of a record that no change has invalidated since, if it has one
    /// (the web layer's requests take it without an `.await`).
    pub(crate) fn get_now(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        let state = &*self.handle.state;
        // Copies are trusted only while the change listener runs.
        if !state.started.load(Ordering::Acquire) {
            return None;
        }
        let generation = state.generation.load(Ordering::SeqCst);
        let tenant = front::get(state.id, generation, id)?;
        state.hits.add();
        Some(tenant)
    }

    /// The miss path of [`get`](Self::get): reads the registry, coalescing
    /// concurrent misses for one id.
    async fn load(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>> {
        let state = &*self.handle.state;
        let fetch = async { Ok(state.hidra.tenant(id).await?.map(Arc::new)) };
        self.load_slot(&state.tenants, id.clone(), fetch).await
    }

    /// Fills `cache[key]` with what `fetch` reads, coalescing concurrent
    /// misses; a value read while a change was announced is served to its
    /// request, which raced with the change, but not kept (it may be stale).
    async fn load_slot<K, V>(
        &self,
        cache: &Cache<K, Slot<V>>,
        key: K,
        fetch: impl Future<Output = hidra::Result<Option<V>>>,
    ) -> Result<Option<V>>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let generation = &self.handle.state.generation;
        let load = async {
            let started = generation.load(Ordering::SeqCst);
            let value = fetch.await?;
            let loaded = Instant::now();
            Ok::<_, hidra::Error>(Slot {
                value,
                started,
                loaded,
            })
        };
        let entry = cache
            .entry(key.clone())
            .or_try_insert_with(load)
            .await
            .map_err(Error::Registry)?;
        if entry.is_fresh() && entry.value().started != generation.load(Ordering::SeqCst) {
            cache.invalidate(&key).await;
        }
        Ok(entry.into_value().value)
    }

    /// The tenant whose `metadata.domains` lists `host` (lowercase, no port),
    /// from the cache or the registry (see
    /// [`TenantStore::find_by_domain`](hidra::TenantStore::find_by_domain)).
    pub async fn tenant_for_domain(&self, host: &str) -> Result<Option<TenantId>> {
        self.ensure_listener().await;
        let state = &*self.handle.state;
        if let Some(slot) = state.domains.get(host).await {
            return Ok(slot.value);
        }
        Box::pin(self.load_domain(host)).await
    }

    /// The miss path of [`tenant_for_domain`](Self::tenant_for_domain).
    async fn load_domain(&self, host: &str) -> Result<Option<TenantId>> {
        let state = &*self.handle.state;
        let fetch = async {
            let mut conn = state.hidra.acquire_shared().await?;
            let found = state.hidra.store().find_by_domain(&mut conn, host).await?;
            Ok(found.map(|t| t.id))
        };
        self.load_slot(&state.domains, host.to_owned(), fetch).await
    }

    /// Drops the entry of `id` (and every custom-domain mapping).
    pub async fn invalidate(&self, id: &TenantId) {
        self.handle.state.invalidate(id).await;
    }

    /// Drops every entry.
    pub fn invalidate_all(&self) {
        self.handle.state.invalidate_all();
    }

    /// Waits until every registry change committed before this call has been
    /// applied to this cache.
    ///
    /// It sends a barrier notification on [`hidra::CHANGES_CHANNEL`] and waits
    /// for the listener to hear it: PostgreSQL delivers notifications in commit
    /// order, so every earlier change has been heard by then. If the listener
    /// reconnects meanwhile, the cache is cleared, which also satisfies the
    /// barrier. Waits for as long as the listener cannot connect: wrap it in
    /// a timeout if that matters.
    pub async fn sync(&self) -> Result<()> {
        self.ensure_listener().await;
        let state = &*self.handle.state;
        let mut passed = state.passed.subscribe();
        let barrier = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let mut conn = state
            .hidra
            .acquire_shared()
            .await
            .map_err(Error::db("sending a cache barrier"))?;
        sqlx_notify(
            &mut conn,
            &format!("{BARRIER_PREFIX}{}:{barrier}", state.instance),
        )
        .await
        .map_err(Error::db("sending a cache barrier"))?;
        drop(conn);
        // The sender lives in `state`, which `self` keeps alive: this cannot
        // fail, only wait.
        let _ = passed.wait_for(|p| *p >= barrier).await;
        Ok(())
    }

    /// Entry count, hits and misses. Counts the live entries (one pass over
    /// them): moka's own `entry_count` lags until its housekeeping runs, and
    /// read 0 right after the first requests.
    pub fn stats(&self) -> CacheStats {
        let state = &*self.handle.state;
        CacheStats {
            entries: state.tenants.iter().count() as u64,
            hits: state.hits.sum(),
            misses: state.misses.load(Ordering::Relaxed),
        }
    }

    /// Starts the listener task once, on the current runtime, and waits for
    /// its first connection attempt.
    async fn ensure_listener(&self) {
        let state = &self.handle.state;
        if state.started.load(Ordering::Acquire) {
            return;
        }
        let _ = self.handle.listener.get_or_init(|| {
            let state = Arc::clone(state);
            tokio::spawn(state.supervise()).abort_handle()
        });
        // The sender lives in `state`: this only waits.
        let _ = state.started_tx.subscribe().wait_for(|s| *s).await;
    }
}

async fn sqlx_notify(
    conn: &mut hidra::sqlx::PgConnection,
    payload: &str,
) -> std::result::Result<(), hidra::Error> {
    hidra::sqlx::query("SELECT pg_notify($1, $2)")
        .bind(hidra::CHANGES_CHANNEL)
        .bind(payload)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|source| hidra::Error::Database {
            context: "sending a notification",
            source,
        })
}

impl State {
    /// Bumps the generation before (so that a load racing with this is not
    /// kept) and after (so that a per-thread copy of what a lookup read from
    /// moka meanwhile is dropped) the entries go.
    async fn invalidate(&self, id: &TenantId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.tenants.invalidate(id).await;
        // A change of a tenant may change its domains: mappings are few and
        // cheap to reload.
        self.domains.invalidate_all();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.tenants.invalidate_all();
        self.domains.invalidate_all();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn mark_started(&self) {
        if !self.started.swap(true, Ordering::AcqRel) {
            self.started_tx.send_replace(true);
        }
    }

    /// After (re)connecting the listener: anything may have changed unheard.
    fn resynced(&self) {
        let issued = self.issued.load(Ordering::SeqCst);
        self.invalidate_all();
        self.passed.send_if_modified(|p| {
            let before = *p;
            *p = before.max(issued);
            *p != before
        });
    }

    async fn apply(&self, payload: &str) {
        if let Some(barrier) = payload.strip_prefix(BARRIER_PREFIX) {
            let mine = barrier
                .split_once(':')
                .filter(|(instance, _)| instance.parse() == Ok(self.instance))
                .and_then(|(_, n)| n.parse::<u64>().ok());
            if let Some(n) = mine {
                self.passed.send_if_modified(|p| {
                    let before = *p;
                    *p = before.max(n);
                    *p != before
                });
            }
            return;
        }
        match TenantId::new(payload) {
            Ok(id) => {
                tracing::debug!(tenant = %id, "registry change heard; dropping the cached record");
                self.invalidate(&id).await;
            }
            Err(_) => {
                tracing::debug!(
                    payload,
                    "unrecognised registry notification; clearing the tenant cache"
                );
                self.invalidate_all();
            }
        }
    }

    /// The listener loop: runs until the cache is dropped.
    /// Runs the listener for the life of the cache, restarting it should it
    /// ever panic (the cache is cleared then: notifications may have been lost).
    async fn supervise(self: Arc<Self>) {
        use futures_util::FutureExt;
        loop {
            let run = std::panic::AssertUnwindSafe(Arc::clone(&self).listen());
            if run.catch_unwind().await.is_err() {
                tracing::error!(
                    "the registry listener panicked; clearing the cache and restarting it"
                );
            }
            self.invalidate_all();
            self.mark_started();
            tokio::time::sleep(BACKOFF_MIN).await;
        }
    }

    async fn listen(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut listener = match self.hidra.changes_listener().await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot listen for registry changes; cached tenants live up to their TTL"
                    );
                    self.mark_started();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            self.resynced();
            self.mark_started();
            tracing::debug!("listening for registry changes");
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => self.apply(notification.payload()).await,
                    Ok(None) => {
                        tracing::debug!("registry listener reconnected; clearing the tenant cache");
                        self.resynced();
                    }
                    Err(error) => {
                        tracing::warn!(
                            error = &error as &dyn std::error::Error,
                            "registry listener failed; clearing the tenant cache and reconnecting"
                        );
                        self.invalidate_all();
                        break;
                    }
                }
            }
        }
    }
}

/// Per-thread copies of found records: the hit path of [`TenantCache::get`]
/// without moka's shared structures (its hashing, locks and housekeeping
/// queue), which every request on every core would otherwise touch.
///
/// A copy is served only while the cache's invalidation generation is the
/// one it was taken under and its entry's TTL has not run out; any
/// invalidation (a registry change heard, a reconnect, an explicit call)
/// bumps the generation, and each thread drops all its copies at its next
/// lookup. Absent tenants are not copied (their negative entries stay in
/// moka).
mod front {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use hidra::{Tenant, TenantId};

    /// Most copies per thread, whatever the cache's capacity.
    pub(super) const MAX_ENTRIES: usize = 16_384;

    static NEXT_CACHE: AtomicU64 = AtomicU64::new(1);

    /// A new cache's id.
    pub(super) fn next_cache_id() -> u64 {
        NEXT_CACHE.fetch_add(1, Ordering::Relaxed)
    }

    #[derive(Default)]
    struct Front {
        /// The cache these copies are of (0: none yet).
        cache: u64,
        /// The generation they were taken under.
        generation: u64,
        entries: HashMap<TenantId, (Arc<Tenant>, Instant)>,
    }

    thread_local! {
        static FRONT: RefCell<Front> = RefCell::new(Front::default());
    }

    /// This thread's copy of `id` in cache `cache`, if it is still valid at
    /// `generation`.
    pub(super) fn get(cache: u64, generation: u64, id: &TenantId) -> Option<Arc<Tenant>> {
        FRONT
            .try_with(|front| {
                let front = front.borrow();
                if front.cache != cache || front.generation != generation {
                    return None;
                }
                let (tenant, expires) = front.entries.get(id)?;
                (Instant::now() < *expires).then(|| Arc::clone(tenant))
            })
            .ok()
            .flatten()
    }

    /// Keeps a copy of `tenant`, read from cache `cache` under `generation`,
    /// until `expires`; a copy from an older generation than this thread's
    /// is not kept.
    pub(super) fn put(
        cache: u64,
        generation: u64,
        tenant: &Arc<Tenant>,
        expires: Instant,
        capacity: usize,
    ) {
        let _ = FRONT.try_with(|front| {
            let mut front = front.borrow_mut();
            if front.cache != cache || generation > front.generation {
                front.entries.clear();
                front.cache = cache;
                front.generation = generation;
            } else if generation < front.generation {
                return;
            }
            if front.entries.len() >= capacity {
                front.entries.clear();
            }
            if capacity > 0 {
                front
                    .entries
                    .insert(tenant.id.clone(), (Arc::clone(tenant), expires));
            }
        });
    }
}
