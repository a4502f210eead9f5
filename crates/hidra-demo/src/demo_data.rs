//! The two demo tenants and their sample data.

use hidra::auth::{Accounts, NewUser};
use hidra::{Hidra, NewTenant, TenantId};
use hidra_apalis::TenantQueue;

use crate::jobs::ConfirmOrder;

/// The password of every demo user.
pub const PASSWORD: &str = "demo-password";

/// A demo tenant: id, company, admin email, customers, products.
struct DemoTenant {
    id: &'static str,
    company: &'static str,
    admin: &'static str,
    customers: &'static [(&'static str, &'static str)],
    products: &'static [(&'static str, &'static str, i64, i32)],
}

const TENANTS: &[DemoTenant] = &[
    DemoTenant {
        id: "acme",
        company: "Acme Corp",
        admin: "admin@acme.test",
        customers: &[
            ("Wile E. Coyote", "wile@desert.test"),
            ("Road Runner", "meep@desert.test"),
            ("Marvin the Martian", "marvin@mars.test"),
        ],
        products: &[
            ("ACME-ROCKET", "Rocket skates", 4_999, 10),
            ("ACME-ANVIL", "Anvil, 100 lb", 2_500, 40),
            ("ACME-MAGNET", "Giant magnet", 1_299, 25),
        ],
    },
    DemoTenant {
        id: "globex",
        company: "Globex",
        admin: "admin@globex.test",
        customers: &[
            ("Hank Scorpio", "hank@globex.test"),
            ("Homer Simpson", "homer@springfield.test"),
            ("Frank Grimes", "grimey@springfield.test"),
        ],
        products: &[
            ("GX-DOOMSDAY", "Doomsday device", 999_999, 1),
            ("GX-HAMMOCK", "Hammock", 8_900, 12),
            ("GX-FLAMETHROWER", "Flamethrower", 29_900, 3),
        ],
    },
];

/// The demo tenants' ids and admin emails, for the startup message.
pub fn logins() -> impl Iterator<Item = (&'static str, &'static str)> {
    TENANTS.iter().map(|t| (t.id, t.admin))
}

/// Creates the demo tenants that do not exist yet, each with its admin
/// (`admin@<tenant>.test`, password [`PASSWORD`]), customers, products and
/// one order (whose confirmation job it enqueues in `confirmations`). Returns
/// how many it created.
pub async fn seed(
    hidra: &Hidra,
    accounts: &Accounts,
    confirmations: &TenantQueue<ConfirmOrder>,
) -> anyhow::Result<usize> {
    let mut created = 0;
    for demo in TENANTS {
        let id = TenantId::new(demo.id)?;
        if hidra.exists(&id).await? {
            continue;
        }
        let tenant = hidra
            .provision(NewTenant::new(id).name(demo.company))
            .await?;
        accounts
            .register(
                &tenant,
                NewUser::new(demo.admin, "Demo Admin", PASSWORD).role("admin"),
            )
            .await?;
        let mut tx = hidra.begin(&tenant).await?;
        for (name, email) in demo.customers {
            sqlx::query("INSERT INTO customers (name, email) VALUES ($1, $2)")
                .bind(name)
                .bind(email)
                .execute(&mut tx)
                .await?;
        }
        for (sku, name, price, stock) in demo.products {
            sqlx::query(
                "INSERT INTO products (sku, name, price_cents, stock) VALUES ($1, $2, $3, $4)",
            )
            .bind(sku)
            .bind(name)
            .bind(price)
            .bind(stock)
            .execute(&mut tx)
            .await?;
        }
        // One order: two of the first product for the first customer, with
        // its confirmation job (run once the server's worker starts).
        let order_id: i64 = sqlx::query_scalar(
            "WITH o AS (INSERT INTO orders (customer_id, total_cents) \
                 SELECT (SELECT min(id) FROM customers), price_cents * 2 \
                 FROM products ORDER BY id LIMIT 1 RETURNING id), \
             i AS (INSERT INTO order_items (order_id, product_id, quantity, price_cents) \
                 SELECT o.id, p.id, 2, p.price_cents FROM o, \
                 (SELECT id, price_cents FROM products ORDER BY id LIMIT 1) p) \
             SELECT id FROM o",
        )
        .fetch_one(&mut tx)
        .await?;
        let job =
            crate::jobs::enqueue_confirmation(confirmations, &mut tx, &tenant, order_id).await?;
        sqlx::query("UPDATE orders SET confirmation_job = $1 WHERE id = $2")
            .bind(job)
            .bind(order_id)
            .execute(&mut tx)
            .await?;
        sqlx::query(
            "UPDATE products SET stock = stock - 2 WHERE id = (SELECT min(id) FROM products)",
        )
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        tracing::info!(tenant = %demo.id, "created demo tenant");
        created += 1;
    }
    Ok(created)
}
