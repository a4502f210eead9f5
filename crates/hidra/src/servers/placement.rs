//! Placement: which server a new tenant goes to.
//!
//! A [`NewTenant`] may name its server ([`NewTenant::on_server`],
//! [`NewTenant::on_control_server`]); otherwise the handle's
//! [`PlacementPolicy`] chooses among the *candidates*: the control server
//! (unless the policy leaves it out) and every registered server that is
//! [`active`](super::ServerState::Active), each with how many tenants it
//! holds and its capacity hint. The default policy, [`FewestTenants`], takes
//! the candidate with the fewest tenants that still has room.
//!
//! What the policy sees is at most [`LOADS_TTL`] old (one query per that
//! long, counting every tenant row), and each placement this process makes
//! is counted at once. Whatever it chose, the provisioning transaction
//! takes a share lock on the chosen server's row and checks it is still
//! active, so a server drained or removed meanwhile is never used.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{ServerName, ServerState};
use crate::error::{Error, Result};
use crate::hidra::Hidra;
use crate::tenant::NewTenant;

/// How long the tenant counts placement decides on are reused.
pub const LOADS_TTL: Duration = Duration::from_secs(2);

/// A server a new tenant may go to, as a [`PlacementPolicy`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Candidate {
    /// The registered server, or `None` for the control server.
    pub server: Option<ServerName>,
    /// How many tenants it holds.
    pub tenants: u64,
    /// Its capacity hint, if it has one (the control server has none).
    pub capacity: Option<u32>,
}

impl Candidate {
    /// Whether it is the control server.
    pub fn is_control(&self) -> bool {
        self.server.is_none()
    }

    /// Whether it holds fewer tenants than its capacity hint (always, without one).
    pub fn has_room(&self) -> bool {
        self.capacity.is_none_or(|c| self.tenants < u64::from(c))
    }
}

/// Chooses the server of a new tenant that names none.
///
/// ```
/// use hidra::{Candidate, NewTenant, PlacementPolicy};
///
/// /// Enterprise tenants go to the registered server `big`, if it is active.
/// struct ByPlan;
///
/// impl PlacementPolicy for ByPlan {
///     fn choose(&self, tenant: &NewTenant, candidates: &[Candidate]) -> Option<usize> {
///         let big = candidates
///             .iter()
///             .position(|c| c.server.as_ref().is_some_and(|s| s.as_str() == "big"));
///         if tenant.metadata_value()["plan"] == "enterprise" && big.is_some() {
///             return big;
///         }
///         hidra::FewestTenants::default().choose(tenant, candidates)
///     }
/// }
/// ```
pub trait PlacementPolicy: Send + Sync + 'static {
    /// The index in `candidates` of the server `tenant` goes to, or `None`
    /// if none fits (provisioning then fails with
    /// [`Error::NoServerAvailable`]). `candidates` holds the control server
    /// first, then the active registered servers by name.
    fn choose(&self, tenant: &NewTenant, candidates: &[Candidate]) -> Option<usize>;
}

/// The default [`PlacementPolicy`]: the candidate with the fewest tenants
/// that has room (ties go to the first: the control server, then by name).
#[derive(Clone, Debug)]
pub struct FewestTenants {
    control: bool,
}

impl Default for FewestTenants {
    fn default() -> Self {
        FewestTenants { control: true }
    }
}

impl FewestTenants {
    /// Leaves the control server out: new tenants go to registered servers
    /// only (the control server keeps the registry and the tenants it has).
    pub fn excluding_control() -> Self {
        FewestTenants { control: false }
    }
}

impl PlacementPolicy for FewestTenants {
    fn choose(&self, _: &NewTenant, candidates: &[Candidate]) -> Option<usize> {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| self.control || !c.is_control())
            .filter(|(_, c)| c.has_room())
            .min_by_key(|(i, c)| (c.tenants, *i))
            .map(|(i, _)| i)
    }
}

/// What placement chooses from: the candidates, and whether any server is
/// registered at all (with none, every tenant stays on the control server
/// without asking the policy).
#[derive(Clone, Debug)]
struct Candidates {
    registered: bool,
    list: Vec<Candidate>,
}

/// The candidates, as last read, for [`LOADS_TTL`].
#[derive(Debug, Default)]
pub(crate) struct LoadCache {
    read: Mutex<Option<(Instant, Candidates)>>,
}

impl LoadCache {
    fn fresh(&self) -> Option<Candidates> {
        let read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        read.as_ref()
            .filter(|(at, _)| at.elapsed() < LOADS_TTL)
            .map(|(_, c)| c.clone())
    }

    fn store(&self, candidates: Candidates) {
        *self.read.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), candidates));
    }

    /// Counts one more tenant on `server`.
    fn placed(&self, server: Option<&ServerName>) {
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, candidates)) = read.as_mut()
            && let Some(c) = (candidates.list.iter_mut()).find(|c| c.server.as_ref() == server)
        {
            c.tenants += 1;
        }
    }

    /// Forgets what was read: a server's state changed.
    pub(crate) fn clear(&self) {
        *self.read.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Where a new tenant was asked to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ServerChoice {
    Control,
    Server(ServerName),
}

impl Hidra {
    /// The server `new` goes to (`None`: the control server): the one it
    /// names, else the placement policy's choice.
    pub(crate) async fn place(&self, new: &NewTenant) -> Result<Option<ServerName>> {
        match &new.server {
            Some(ServerChoice::Control) => return Ok(None),
            Some(ServerChoice::Server(name)) => return Ok(Some(name.clone())),
            None => {}
        }
        let pools = &self.inner.conns.servers;
        let candidates = match pools.loads.fresh() {
            Some(candidates) => candidates,
            None => {
                let candidates = self.candidates().await?;
                pools.loads.store(candidates.clone());
                candidates
            }
        };
        // Nothing registered: today's single server, without asking a policy.
        if !candidates.registered {
            return Ok(None);
        }
        let candidates = candidates.list;
        let chosen = pools
            .placement
            .choose(new, &candidates)
            .and_then(|i| candidates.get(i))
            .ok_or_else(|| Error::NoServerAvailable {
                candidates: candidates.len(),
            })?;
        pools.loads.placed(chosen.server.as_ref());
        Ok(chosen.server.clone())
    }

    /// The control server and the active registered servers, with their
    /// tenant counts.
    async fn candidates(&self) -> Result<Candidates> {
        let servers = self.servers();
        let (registered, control) = match servers.list_with_control_count().await {
            Ok(listed) => listed,
            // A deployment installed before the server registry existed
            // has no servers: every tenant stays on the control server.
            Err(Error::TableMissing { table, .. })
                if table == servers.table().table().to_string() =>
            {
                return Ok(Candidates {
                    registered: false,
                    list: Vec::new(),
                });
            }
            Err(e) => return Err(e),
        };
        let any = !registered.is_empty();
        let mut candidates = vec![Candidate {
            server: None,
            tenants: control,
            capacity: None,
        }];
        candidates.extend(
            registered
                .into_iter()
                .filter(|s| s.state == ServerState::Active)
                .map(|s| Candidate {
                    server: Some(s.name),
                    tenants: s.tenants,
                    capacity: s.capacity,
                }),
        );
        Ok(Candidates {
            registered: any,
            list: candidates,
        })
    }
}
