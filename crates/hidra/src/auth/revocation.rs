//! Per-user token versions: [`Revocations`] refuses the tokens of a user
//! whose sessions were ended, in every process within about the time a
//! `NOTIFY` takes.
//!
//! Every login row of the [`LoginTable`] keeps a `token_version`, and every
//! token [`Accounts::login`](super::Accounts::login) issues carries it (the
//! `tver` claim). [`Accounts`](super::Accounts) bumps the version when a
//! user is deactivated, re-roled, given a new password or logged out
//! everywhere, and deletes the row with the user, so that every token issued
//! before stops verifying. The current versions are cached per process; the
//! login table's trigger announces each change on [`LOGIN_CHANGES_CHANNEL`],
//! and a listener drops the cached version at once. While the listener is
//! disconnected, a cached version lives at most its TTL (default 60 s), and
//! the cache is cleared when it is back.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::SqlStr;
use tokio::sync::{OnceCell, watch};

use super::{AuthError, Claims, LoginTable, refuse};
use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::sql;
use crate::tenant::TenantId;

/// The channel on which the [`LoginTable`]'s trigger announces every changed
/// or deleted login row, as `"<tenant id> <user id>"`.
pub const LOGIN_CHANGES_CHANNEL: &str = "hidra_login_changes";

/// How long a cached version is trusted when no notification arrives (the
/// bound while the listener is disconnected).
const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// Listener reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The current token version of each user, cached and invalidated through
/// `NOTIFY`. Built by
/// [`Accounts::revocations`](super::Accounts::revocations); cheap to clone
/// (clones share the cache and the listener).
///
/// Every login row keeps a `token_version`, and every token
/// [`Accounts::login`](super::Accounts::login) issues carries it (`tver`).
/// `Accounts` bumps it when a user is deactivated, re-roled, given a new
/// password or logged out everywhere, and deletes the row with the user, so
/// every token issued before stops verifying. The login table's trigger
/// announces each change on [`LOGIN_CHANGES_CHANNEL`]; a listener drops the
/// cached version at once. While the listener is disconnected a cached
/// version lives at most its TTL (60 s), and the cache is cleared when it is
/// back.
///
/// ```no_run
/// # async fn run(accounts: hidra::auth::Accounts, token: &str) -> hidra::Result<()> {
/// let claims = accounts.jwt().verify(token)?;
/// // Refused with `AuthError::TokenRevoked` once the user was logged out
/// // everywhere, deactivated, re-roled, deleted or given a new password.
/// accounts.revocations().check(&claims).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    hidra: Hidra,
    lookup: SqlStr,
    /// `None` for a user without a login row (deleted).
    versions: moka::sync::Cache<(TenantId, i64), Option<i64>>,
    /// Bumped on every invalidation: a lookup that raced with one does not
    /// store what it read.
    generation: AtomicU64,
    listener: OnceCell<()>,
    /// Dropped with the last clone, which stops the listener.
    alive: watch::Sender<()>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("cached", &self.inner.versions.entry_count())
            .finish_non_exhaustive()
    }
}

impl Revocations {
    pub(crate) fn new(hidra: Hidra, logins: &LoginTable) -> Self {
        Self::with_ttl(hidra, logins, DEFAULT_TTL)
    }

    pub(crate) fn with_ttl(hidra: Hidra, logins: &LoginTable, ttl: Duration) -> Self {
        Revocations {
            inner: Arc::new(Inner {
                hidra,
                lookup: sql::template(
                    "SELECT token_version FROM {t} WHERE tenant_id = $1 AND user_id = $2",
                )
                .table("t", logins.table())
                .finish(),
                versions: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(ttl)
                    .build(),
                generation: AtomicU64::new(0),
                listener: OnceCell::new(),
                alive: watch::channel(()).0,
            }),
        }
    }

    /// `Ok` if `claims` carry the current token version of their user, else
    /// [`AuthError::TokenRevoked`] (also for a token without a version, or
    /// whose subject is not a user id).
    pub async fn check(&self, claims: &Claims) -> Result<()> {
        let (Ok(user), Some(version)) = (claims.sub.parse::<i64>(), claims.token_version) else {
            return refuse(AuthError::TokenRevoked);
        };
        match self.current(&claims.tenant, user).await? {
            Some(current) if current == version => Ok(()),
            _ => {
                tracing::debug!(tenant = %claims.tenant, user, "refused a revoked token");
                refuse(AuthError::TokenRevoked)
            }
        }
    }

    /// The current token version of `user` in `tenant`, `None` when the user
    /// has no login row. A cache hit costs no query.
    pub async fn current(&self, tenant: &TenantId, user: i64) -> Result<Option<i64>> {
        let key = (tenant.clone(), user);
        if let Some(version) = self.inner.versions.get(&key) {
            return Ok(version);
        }
        self.start_listener().await;
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let mut conn = self.inner.hidra.acquire_shared().await?;
        let version: Option<i64> = sqlx::query_scalar(self.inner.lookup.clone())
            .bind(tenant.as_str())
            .bind(user)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db("reading a user's token version"))?;
        if self.inner.generation.load(Ordering::SeqCst) == generation {
            self.inner.versions.insert(key, version);
        }
        Ok(version)
    }

    /// Drops the cached version of `user` (after a change made in this
    /// process, which must not wait for its notification).
    pub(crate) fn forget(&self, tenant: &TenantId, user: i64) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        self.inner.versions.invalidate(&(tenant.clone(), user));
    }

    /// Drops every cached version (the next check of each user reads it).
    pub fn clear(&self) {
        self.inner.invalidate_all();
    }

    /// Starts the listener once, and waits for its first connection attempt
    /// so that nothing is cached before a change to it can be heard.
    async fn start_listener(&self) {
        self.inner
            .listener
            .get_or_init(|| async {
                let (connected_tx, mut connected) = watch::channel(false);
                let inner = Arc::downgrade(&self.inner);
                let mut alive = self.inner.alive.subscribe();
                tokio::spawn(async move {
                    tokio::select! {
                        () = listen(inner, connected_tx) => {}
                        _ = alive.changed() => {}
                    }
                });
                let _ = connected.wait_for(|attempted| *attempted).await;
            })
            .await;
    }
}

impl Inner {
    fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.versions.invalidate_all();
    }

    fn apply(&self, payload: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let parsed = payload
            .split_once(' ')
            .and_then(|(t, u)| Some((TenantId::new(t).ok()?, u.parse::<i64>().ok()?)));
        match parsed {
            Some(key) => self.versions.invalidate(&key),
            None => {
                tracing::debug!(
                    payload,
                    "unrecognised login notification; clearing versions"
                );
                self.versions.invalidate_all();
            }
        }
    }
}

/// The listener loop, until the [`Revocations`] are dropped: reconnects with
/// backoff, and clears the cache after every (re)connection, since changes
/// may have gone unheard meanwhile.
async fn listen(inner: std::sync::Weak<Inner>, attempted: watch::Sender<bool>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(hidra) = inner.upgrade().map(|i| i.hidra.clone()) else {
            return;
        };
        let connected = hidra.listener(LOGIN_CHANGES_CHANNEL).await;
        drop(hidra);
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot listen for login changes; cached token versions live up to their TTL"
                );
                attempted.send_replace(true);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        match inner.upgrade() {
            Some(inner) => inner.invalidate_all(),
            None => return,
        }
        attempted.send_replace(true);
        loop {
            let received = listener.try_recv().await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            match received {
                Ok(Some(notification)) => inner.apply(notification.payload()),
                // Reconnected by itself: notifications may have been lost.
                Ok(None) => inner.invalidate_all(),
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "login listener failed; clearing token versions and reconnecting"
                    );
                    inner.invalidate_all();
                    break;
                }
            }
        }
    }
}
