//! The permissions the routes require, as types for
//! [`RequirePermission`](hidra_axum::RequirePermission).
//!
//! Each tenant's `roles` table grants them (see
//! `migrations/tenant/0002_roles.sql`): `admin` has `*`, `member` reads and
//! writes customers, products and orders, `viewer` only reads them.

use hidra_axum::Permission;

macro_rules! permissions {
    ($($(#[$doc:meta])* $ty:ident = $name:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty;

        impl Permission for $ty {
            const NAME: &'static str = $name;
        }
    )*};
}

permissions! {
    /// Read customers.
    CustomersRead = "customers:read";
    /// Create, change and delete customers.
    CustomersWrite = "customers:write";
    /// Read products.
    ProductsRead = "products:read";
    /// Create, change and delete products.
    ProductsWrite = "products:write";
    /// Read orders.
    OrdersRead = "orders:read";
    /// Place orders.
    OrdersWrite = "orders:write";
    /// Manage the tenant's users and their roles.
    UsersManage = "users:manage";
}

/// The permissions an API key may be given (user management is for people).
pub const FOR_KEYS: &[&str] = &[
    CustomersRead::NAME,
    CustomersWrite::NAME,
    ProductsRead::NAME,
    ProductsWrite::NAME,
    OrdersRead::NAME,
    OrdersWrite::NAME,
];
