//! Two tenants writing notes through compile-time checked queries.
//!
//! `cargo run -p hidra-checked-queries`: with `DATABASE_URL` unset it works in
//! a throw-away database (dropped at the end) on the local PostgreSQL.

use hidra::testing::TestDatabase;
use hidra::{Hidra, NewTenant, TenantId};
use hidra_checked_queries::{add_note, counts, migrations, notes, pin};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let throwaway;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            throwaway = TestDatabase::create_with_prefix("hidra_notes").await?;
            throwaway.url().to_owned()
        }
    };
    let hidra = Hidra::builder()
        .tenant_migrations(migrations())
        .connect(&url)
        .await?;
    hidra.install().await?;
    for (id, titles) in [
        ("acme", ["Call Wile E.", "Order more rockets"]),
        ("globex", ["Quarterly plan", "Hammock"]),
    ] {
        let id = TenantId::new(id)?;
        let tenant = match hidra.tenant(&id).await? {
            Some(t) => t,
            None => hidra.provision(NewTenant::new(id.clone())).await?,
        };
        let mut conn = hidra.acquire(&tenant).await?;
        let first = add_note(&mut conn, titles[0], Some("written by the example")).await?;
        add_note(&mut conn, titles[1], None).await?;
        pin(&mut conn, first.id, true).await?;
        let (total, pinned) = counts(&mut conn).await?;
        println!("{id}: {total} notes, {pinned} pinned");
        for note in notes(&mut conn).await? {
            let mark = if note.pinned { "*" } else { " " };
            println!("  {mark} #{} {}", note.id, note.title);
        }
    }
    hidra.close().await;
    Ok(())
}
