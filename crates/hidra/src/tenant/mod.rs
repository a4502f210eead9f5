//! Tenant identity and the tenant record: [`TenantId`], [`Tenant`], its
//! [`TenantStatus`] and its [`Placement`] (which strategy isolates it and where
//! its data lives).

mod id;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub(crate) use id::INTERNAL_SCHEMA;
pub use id::{MAX_TENANT_ID_LEN, TenantId};

use crate::error::{Error, Result};
use crate::sql::Ident;

/// Where a tenant is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TenantStatus {
    /// Being created; not usable yet.
    Provisioning,
    /// Serving requests.
    Active,
    /// Kept intact but refused by the web layer.
    Suspended,
    /// Being removed; refused by the web layer.
    Deleting,
}

impl TenantStatus {
    /// The text stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Provisioning => "provisioning",
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleting => "deleting",
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TenantStatus {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "provisioning" => TenantStatus::Provisioning,
            "active" => TenantStatus::Active,
            "suspended" => TenantStatus::Suspended,
            "deleting" => TenantStatus::Deleting,
            other => return Err(format!("unknown tenant status {other:?}")),
        })
    }
}

/// How a tenant's data is isolated from other tenants'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Strategy {
    /// Its own PostgreSQL schema in the shared database, reached through `search_path`.
    #[default]
    Schema,
    /// Rows in shared tables carrying a tenant column, filtered by PostgreSQL
    /// row-level security policies bound to the `hidra.tenant_id` setting.
    RowLevel,
    /// Its own database on the server, reached through a small per-database
    /// pool under a global connection budget.
    Database,
}

impl Strategy {
    /// The text stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Schema => "schema",
            Strategy::RowLevel => "row_level",
            Strategy::Database => "database",
        }
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "schema" => Ok(Strategy::Schema),
            "row_level" => Ok(Strategy::RowLevel),
            "database" => Ok(Strategy::Database),
            other => Err(format!("unknown isolation strategy {other:?}")),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a tenant's data lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Placement {
    /// The isolation strategy.
    pub strategy: Strategy,
    /// The schema holding its tables: its own (schema per tenant), the shared
    /// schema of the row-level tables, or the schema inside its own database.
    pub schema: String,
    /// The tenant's own database, for strategies that have one.
    pub database: Option<String>,
    /// The server holding the data, when tenants are spread over several servers.
    pub server: Option<String>,
}

impl Placement {
    /// Whether the tenant's tables are in the shared database of the control
    /// server, next to the shared tables (the registry, logins, API keys,
    /// job tables): a schema or row-level tenant placed on no registered
    /// server. Only then can one transaction bound to the tenant also write
    /// the shared tables; a tenant in its own database or on a registered
    /// server needs a second connection ([`Hidra::acquire_shared`]) and a
    /// way to recover between the two (see the guide's "Several PostgreSQL
    /// servers").
    ///
    /// [`Hidra::acquire_shared`]: crate::Hidra::acquire_shared
    pub fn shares_control_database(&self) -> bool {
        self.strategy != Strategy::Database && self.server.is_none()
    }

    /// Whether the tenant has tables of its own that tenant migrations
    /// build (a schema of its own, or its own database's): not a row-level
    /// tenant, whose rows are in tables the shared migrations own.
    pub(crate) fn has_own_tables(&self) -> bool {
        self.strategy != Strategy::RowLevel
    }

    /// The schema as a validated identifier.
    pub(crate) fn schema_ident(&self) -> Result<Ident> {
        Ident::new(self.schema.clone(), "tenant schema name")
    }
}

/// A registered tenant, as stored in the registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Lifecycle status.
    pub status: TenantStatus,
    /// Where its data lives.
    pub placement: Placement,
    /// Free-form application data (JSONB).
    pub metadata: serde_json::Value,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When its record last changed.
    pub updated_at: DateTime<Utc>,
}

impl Tenant {
    /// Which incarnation of its id this record is: its registration time in
    /// microseconds. A tenant deleted and registered again under the same id
    /// is a new incarnation, so credentials and cache entries bound to the
    /// old one (JWTs carry it) are refused.
    pub fn incarnation(&self) -> i64 {
        self.created_at.timestamp_micros()
    }

    /// Whether requests may be served for it.
    pub fn is_active(&self) -> bool {
        self.status == TenantStatus::Active
    }

    /// `Ok` if it is active or suspended (neither half-made nor being
    /// deleted), else [`Error::InvalidStatus`] for `action`.
    pub(crate) fn require_settled(&self, action: &'static str) -> Result<()> {
        match self.status {
            TenantStatus::Active | TenantStatus::Suspended => Ok(()),
            status => Err(Error::InvalidStatus {
                id: self.id.clone(),
                status,
                expected: "active or suspended",
                action,
            }),
        }
    }
}

/// What [`Hidra::provision`](crate::Hidra::provision) needs to create a tenant.
#[derive(Clone)]
pub struct NewTenant {
    pub(crate) id: TenantId,
    pub(crate) name: Option<String>,
    pub(crate) metadata: serde_json::Value,
    pub(crate) strategy: Option<Strategy>,
    pub(crate) setup: Option<std::sync::Arc<dyn crate::hidra::DynSeed>>,
    pub(crate) server: Option<crate::servers::ServerChoice>,
}

impl fmt::Debug for NewTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewTenant")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("metadata", &self.metadata)
            .field("strategy", &self.strategy)
            .field("setup", &self.setup.is_some())
            .field("server", &self.server)
            .finish()
    }
}

impl NewTenant {
    /// A tenant with this id; its display name defaults to the id.
    pub fn new(id: TenantId) -> Self {
        NewTenant {
            id,
            name: None,
            metadata: serde_json::Value::Object(Default::default()),
            strategy: None,
            setup: None,
            server: None,
        }
    }

    /// Setup of this tenant alone (its first user, say), run in the
    /// provisioning transaction right after the handle's [`Seed`](crate::Seed):
    /// if it fails, or the process dies before the commit, the tenant does not
    /// exist. The connection is bound to the new tenant like the seed's.
    ///
    /// For a database-per-tenant tenant it runs in the tenant database's own
    /// transaction, after the registry row was written; anything it writes
    /// to the shared database is then not covered by that transaction.
    pub fn setup(mut self, setup: impl crate::Seed) -> Self {
        self.setup = Some(std::sync::Arc::new(setup));
        self
    }

    /// Sets the display name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the free-form metadata stored with the tenant.
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// How to isolate it (default: the handle's default strategy, normally
    /// [`Strategy::Schema`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Places it on the registered server `server` (which must be
    /// [`active`](crate::ServerState::Active) when it is provisioned),
    /// whatever the handle's [`PlacementPolicy`](crate::PlacementPolicy)
    /// would choose.
    pub fn on_server(mut self, server: crate::ServerName) -> Self {
        self.server = Some(crate::servers::ServerChoice::Server(server));
        self
    }

    /// Places it on the control server (the database the handle connects
    /// to), whatever the placement policy would choose.
    pub fn on_control_server(mut self) -> Self {
        self.server = Some(crate::servers::ServerChoice::Control);
        self
    }

    /// The id to create.
    pub fn id(&self) -> &TenantId {
        &self.id
    }

    /// Its metadata, as given to [`metadata`](Self::metadata) (an empty
    /// object by default).
    pub fn metadata_value(&self) -> &serde_json::Value {
        &self.metadata
    }

    /// The strategy asked for, if any.
    pub fn strategy_choice(&self) -> Option<Strategy> {
        self.strategy
    }
}

/// Maps tenant ids to schema names: a prefix plus the id with `-` turned into `_`.
#[derive(Clone, Debug)]
pub(crate) struct SchemaNaming {
    prefix: String,
}

/// Longest allowed schema prefix: with a 50-byte id it keeps every schema name
/// within PostgreSQL's 63-byte limit.
pub(crate) const MAX_PREFIX_BYTES: usize = crate::sql::MAX_IDENT_BYTES - MAX_TENANT_ID_LEN;

impl SchemaNaming {
    pub(crate) fn new(prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        if prefix.len() > MAX_PREFIX_BYTES {
            return Err(Error::InvalidConfig(
                format!(
                    "schema prefix {prefix:?} is longer than {MAX_PREFIX_BYTES} bytes; \
                     with 50-character tenant ids it would exceed PostgreSQL's 63-byte limit"
                )
                .into(),
            ));
        }
        if !prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || prefix.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(Error::InvalidConfig(
                format!("schema prefix {prefix:?} may only contain lowercase ASCII letters, digits and `_`, and not start with a digit").into(),
            ));
        }
        if prefix.starts_with("pg_") || prefix == INTERNAL_SCHEMA || prefix.starts_with("hidra_") {
            return Err(Error::InvalidConfig(
                format!("schema prefix {prefix:?} is reserved").into(),
            ));
        }
        Ok(SchemaNaming { prefix })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The schema of a tenant: always a valid identifier of at most 63 bytes.
    pub(crate) fn schema_for(&self, id: &TenantId) -> Ident {
        Ident::trusted(format!("{}{}", self.prefix, id.schema_suffix()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shared_database_tenants_of_the_control_server_share_it() {
        let on = |strategy, server: Option<&str>| Placement {
            strategy,
            schema: "tenant_a".into(),
            database: None,
            server: server.map(str::to_owned),
        };
        assert!(on(Strategy::Schema, None).shares_control_database());
        assert!(on(Strategy::RowLevel, None).shares_control_database());
        assert!(!on(Strategy::Database, None).shares_control_database());
        assert!(!on(Strategy::Schema, Some("eu-2")).shares_control_database());
        assert!(!on(Strategy::RowLevel, Some("eu-2")).shares_control_database());
    }

    #[test]
    fn schema_names_are_deterministic_and_bounded() {
        let naming = SchemaNaming::new("tenant_").unwrap();
        let a = TenantId::new("acme-corp").unwrap();
        let b = TenantId::new("acme_corp").unwrap();
        assert_eq!(naming.schema_for(&a).as_str(), "tenant_acme_corp");
        assert_eq!(naming.schema_for(&a), naming.schema_for(&b));
        let long = TenantId::new("a".repeat(50)).unwrap();
        assert!(naming.schema_for(&long).as_str().len() <= 63);
        let max = SchemaNaming::new("x".repeat(MAX_PREFIX_BYTES)).unwrap();
        assert_eq!(max.schema_for(&long).as_str().len(), 63);
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["Tenant_", "t-", "t\"", "pg_", "1t_", &"x".repeat(14)] {
            assert!(SchemaNaming::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SchemaNaming::new("").is_ok());
    }

    #[test]
    fn status_round_trips() {
        for s in [
            TenantStatus::Provisioning,
            TenantStatus::Active,
            TenantStatus::Suspended,
            TenantStatus::Deleting,
        ] {
            assert_eq!(s.as_str().parse::<TenantStatus>().unwrap(), s);
        }
        assert!("bogus".parse::<TenantStatus>().is_err());
    }
}
