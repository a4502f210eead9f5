//! Prints the recommended DDL of the tenant registry table, for the default names
//! or for a table given as the first argument (`schema.table`):
//!
//! ```sh
//! cargo run -p hidra --example registry_ddl -- app.tenants > registry.sql
//! ```

fn main() -> Result<(), hidra::Error> {
    let registry = match std::env::args().nth(1) {
        Some(table) => hidra::RegistryTable::new(&table)?,
        None => hidra::RegistryTable::default(),
    };
    print!("{}", registry.ddl());
    Ok(())
}
