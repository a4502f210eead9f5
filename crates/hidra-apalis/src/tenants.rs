//! The workers' view of the registry: tenant records cached in process.
//!
//! Every job needs its tenant's record, to check its status and to bind its
//! connections. Records are kept in a bounded [moka](https://docs.rs/moka)
//! cache for at most a TTL (default 10 s), and dropped as soon as the
//! registry announces a change to them on [`hidra::CHANGES_CHANNEL`]: a
//! suspension or deletion made by any process is seen by the workers within
//! the notification delay. A background task listens (started by the first
//! lookup, which waits for its first connection attempt, so nothing is cached
//! that it could not hear change); when it loses its connection, the cache is
//! cleared once it is back. A lookup that raced with a change is served but
//! not kept.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hidra::{Hidra, Tenant, TenantId};
use moka::sync::Cache;
use tokio::sync::OnceCell;

use crate::error::Result;

/// Most records kept.
const CAPACITY: u64 = 10_000;

/// Longest wait between attempts to (re)connect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The cache; shared by every clone of a [`TenantJobs`](crate::TenantJobs).
pub(crate) struct Tenants {
    state: Arc<State>,
    /// The listener task, aborted when the last clone goes.
    listener: OnceCell<tokio::task::AbortHandle>,
}

struct State {
    hidra: Hidra,
    records: Cache<TenantId, Option<Arc<Tenant>>>,
    /// Bumped by every invalidation: a lookup that started before one does
    /// not store what it read. Held while storing, so that no invalidation
    /// slips between the check and the store.
    generation: Mutex<u64>,
}

impl Tenants {
    pub(crate) fn new(hidra: Hidra, ttl: Duration) -> Self {
        Tenants {
            state: Arc::new(State {
                hidra,
                records: Cache::builder()
                    .name("hidra-apalis-tenants")
                    .max_capacity(CAPACITY)
                    .time_to_live(ttl)
                    .build(),
                generation: Mutex::new(0),
            }),
            listener: OnceCell::new(),
        }
    }

    /// The tenant with this id (any status), or `None` if it is not
    /// registered.
    pub(crate) async fn get(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>> {
        self.listen().await;
        let state = &self.state;
        if let Some(found) = state.records.get(id) {
            return Ok(found);
        }
        let started = *state.lock();
        let found = state.hidra.tenant(id).await?.map(Arc::new);
        let generation = state.lock();
        if *generation == started {
            state.records.insert(id.clone(), found.clone());
        }
        Ok(found)
    }

    /// Drops `id`'s record.
    pub(crate) fn invalidate(&self, id: &TenantId) {
        self.state.invalidate(Some(id));
    }

    /// Starts the listener once, and waits for its first connection attempt.
    async fn listen(&self) {
        self.listener
            .get_or_init(|| async {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(Arc::clone(&self.state).listen(tx));
                let _ = rx.await;
                task.abort_handle()
            })
            .await;
    }
}

impl Drop for Tenants {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get() {
            task.abort();
        }
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops `id`'s record, or every record.
    fn invalidate(&self, id: Option<&TenantId>) {
        let mut generation = self.lock();
        *generation += 1;
        match id {
            Some(id) => self.records.invalidate(id),
            None => self.records.invalidate_all(),
        }
    }

    /// Applies registry notifications for as long as the cache lives;
    /// `started` is told after the first connection attempt.
    async fn listen(self: Arc<Self>, started: tokio::sync::oneshot::Sender<()>) {
        let mut started = Some(started);
        let mut backoff = Duration::from_millis(100);
        loop {
            let listener = self.hidra.changes_listener().await;
            // Whatever changed while nobody listened is unknown.
            self.invalidate(None);
            if let Some(tx) = started.take() {
                let _ = tx.send(());
            }
            let mut listener = match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "cannot listen for registry changes; job tenants are cached up to their TTL"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                match listener.try_recv().await {
                    Ok(Some(change)) => match TenantId::new(change.payload()) {
                        Ok(id) => self.invalidate(Some(&id)),
                        // Other listeners' barriers start with `!`.
                        Err(_) if change.payload().starts_with('!') => {}
                        Err(_) => self.invalidate(None),
                    },
                    // Reconnected: notifications may have been lost.
                    Ok(None) => self.invalidate(None),
                    Err(error) => {
                        tracing::warn!(
                            error = &error as &dyn std::error::Error,
                            "registry listener failed; reconnecting"
                        );
                        break;
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants")
            .field("cached", &self.state.records.entry_count())
            .field("listening", &self.listener.initialized())
            .finish()
    }
}
