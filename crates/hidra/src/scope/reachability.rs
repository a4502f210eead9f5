//! Failing fast while PostgreSQL is unreachable.
//!
//! When the server is down, every checkout of a pool waits its whole acquire
//! timeout while sqlx retries refused connects, so requests pile up behind
//! each other. [`Reachability`] is a small shared breaker in front of the
//! pool: a checkout that has waited [`SLOW_CHECKOUT`] without a connection,
//! or that timed out, asks it whether the server answers, and it opens one
//! probe connection (at most one at a time, its answer reused for
//! [`PROBE_EVERY`]). If the server does not answer, the checkout fails at once
//! with [`Error::Unavailable`], and so does every later checkout until a probe
//! succeeds again; probes keep running every [`PROBE_EVERY`] in the meantime,
//! so service comes back within about that long after the server does. A
//! merely busy pool never trips it: the probe connects and the checkout keeps
//! waiting for its connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::error::{Error, Result};

/// How long a checkout waits before asking whether the server answers.
pub(crate) const SLOW_CHECKOUT: Duration = Duration::from_millis(300);

/// How long one probe's answer stands.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);

/// How long a probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether the server behind a pool answers, as the last probe found.
#[derive(Debug)]
pub(crate) struct Reachability {
    options: PgConnectOptions,
    /// `state.down_since.is_some()`, readable without the lock: every
    /// checkout asks, and while the server answers nothing else is needed.
    down: AtomicBool,
    state: Mutex<State>,
    /// Held while a probe runs, so that one probe serves every waiter.
    probing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Since when connects have been failing, if they are.
    down_since: Option<Instant>,
    /// When the last probe finished.
    probed_at: Option<Instant>,
}

impl Reachability {
    pub(crate) fn new(options: PgConnectOptions) -> Self {
        Reachability {
            options,
            down: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the last probe found the server unreachable (no lock taken).
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// A checkout got a connection: the server answers.
    pub(crate) fn mark_up(&self) {
        if !self.is_down() {
            return;
        }
        let mut state = self.state();
        self.down.store(false, Ordering::Release);
        if let Some(since) = state.down_since.take() {
            tracing::info!(
                down_for_ms = since.elapsed().as_millis() as u64,
                "PostgreSQL is reachable again"
            );
        }
    }

    /// `Ok` if the server answers, else [`Error::Unavailable`]: from the
    /// last probe if it is recent, else from a new one.
    pub(crate) async fn check(&self) -> Result<()> {
        let fresh = |state: &State| state.probed_at.is_some_and(|at| at.elapsed() < PROBE_EVERY);
        {
            let state = self.state();
            if fresh(&state) {
                return verdict(&state);
            }
        }
        let _probing = self.probing.lock().await;
        {
            // Another waiter may have probed meanwhile.
            let state = self.state();
            if fresh(&state) {
                return verdict(&state);
            }
        }
        let answered = match tokio::time::timeout(PROBE_TIMEOUT, self.options.connect()).await {
            Ok(Ok(conn)) => {
                close(conn).await;
                true
            }
            _ => false,
        };
        let mut state = self.state();
        state.probed_at = Some(Instant::now());
        match (answered, state.down_since) {
            (true, Some(_)) => {
                state.down_since = None;
                self.down.store(false, Ordering::Release);
                tracing::info!("PostgreSQL is reachable again");
            }
            (false, None) => {
                state.down_since = Some(Instant::now());
                self.down.store(true, Ordering::Release);
                tracing::warn!("PostgreSQL does not answer; failing checkouts fast until it does");
            }
            _ => {}
        }
        verdict(&state)
    }
}

fn verdict(state: &State) -> Result<()> {
    match state.down_since {
        None => Ok(()),
        Some(since) => Err(Error::Unavailable {
            down_for: since.elapsed(),
        }),
    }
}

/// Closes a probe connection without waiting on a slow server.
async fn close(conn: sqlx::PgConnection) {
    let _ = tokio::time::timeout(PROBE_TIMEOUT, conn.close()).await;
}
