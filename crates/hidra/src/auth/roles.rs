//! Permissions per role, from the tenant's `roles.permissions`.

use std::collections::HashMap;

use sqlx::{Executor, Postgres};

use crate::error::{Error, Result};

/// Whether a `granted` permission covers the `wanted` one.
///
/// Permissions are free-form strings, conventionally `resource:action`
/// (`customers:read`). Two wildcards are understood in granted permissions:
/// `*` grants everything, and a trailing `:*` grants every permission with
/// that prefix (`customers:*` grants `customers:read` and
/// `customers:export:csv`, not `customers` alone). Everything else must match
/// exactly. API key scopes follow the same rules.
///
/// ```
/// use hidra::auth::grants;
///
/// assert!(grants("customers:read", "customers:read"));
/// assert!(grants("customers:*", "customers:delete"));
/// assert!(grants("*", "anything"));
/// assert!(!grants("customers:read", "customers:write"));
/// assert!(!grants("customers:*", "customers"));
/// ```
pub fn grants(granted: &str, wanted: &str) -> bool {
    if granted == "*" || granted == wanted {
        return true;
    }
    match granted.strip_suffix('*') {
        Some(prefix) if prefix.ends_with(':') => {
            wanted.len() > prefix.len() && wanted.starts_with(prefix)
        }
        _ => false,
    }
}

/// The permissions of every role of one tenant, as stored in its `roles`
/// table (`name TEXT`, `permissions TEXT[]`).
///
/// Load it with [`RolePermissions::load`] on a connection bound to the tenant
/// and keep it for a while (roles change rarely); check with
/// [`Claims::can`](super::Claims::can) or [`allows`](RolePermissions::allows).
///
/// ```
/// use hidra::auth::RolePermissions;
///
/// let perms = RolePermissions::new()
///     .with_role("admin", ["*"])
///     .with_role("sales", ["customers:*", "products:read"]);
/// let roles = vec!["sales".to_owned()];
/// assert!(perms.allows(&roles, "customers:write"));
/// assert!(!perms.allows(&roles, "products:write"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolePermissions {
    roles: HashMap<String, Vec<String>>,
}

impl RolePermissions {
    /// No roles.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `role` with `permissions`.
    pub fn with_role<I, S>(mut self, role: impl Into<String>, permissions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles.insert(
            role.into(),
            permissions.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Reads every role of the tenant whose schema `conn` is bound to (a
    /// [`TenantConn`](crate::TenantConn) or [`TenantTx`](crate::TenantTx)).
    pub async fn load<'c>(conn: impl Executor<'c, Database = Postgres>) -> Result<Self> {
        let rows: Vec<(String, Vec<String>)> =
            sqlx::query_as("SELECT name, permissions FROM roles")
                .fetch_all(conn)
                .await
                .map_err(Error::db("reading the tenant's roles"))?;
        Ok(RolePermissions {
            roles: rows.into_iter().collect(),
        })
    }

    /// The permissions of `role`, if the role exists.
    pub fn permissions(&self, role: &str) -> Option<&[String]> {
        self.roles.get(role).map(Vec::as_slice)
    }

    /// Whether any of `roles` grants `permission` (unknown roles grant nothing).
    pub fn allows(&self, roles: &[String], permission: &str) -> bool {
        roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .any(|granted| grants(granted, permission))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(grants("a:b", "a:b"));
        assert!(!grants("a:b", "a:bc"));
        assert!(grants("a:*", "a:b"));
        assert!(grants("a:*", "a:b:c"));
        assert!(!grants("a:*", "a:"));
        assert!(!grants("a:*", "a"));
        assert!(!grants("a:*", "ab:c"));
        assert!(!grants("a*", "ab"));
        assert!(grants("*", ""));
        assert!(!grants("", "a"));
    }

    #[test]
    fn roles_combine() {
        let perms = RolePermissions::new()
            .with_role("a", ["x:read"])
            .with_role("b", ["y:*"]);
        let both = vec!["a".to_owned(), "b".to_owned(), "ghost".to_owned()];
        assert!(perms.allows(&both, "x:read"));
        assert!(perms.allows(&both, "y:write"));
        assert!(!perms.allows(&both, "x:write"));
        assert!(!perms.allows(&[], "x:read"));
        assert_eq!(perms.permissions("a"), Some(&["x:read".to_owned()][..]));
        assert_eq!(perms.permissions("ghost"), None);
    }
}
