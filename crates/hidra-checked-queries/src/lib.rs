//! sqlx's compile-time checked queries on Hidra tenant connections.
//!
//! The queries below are `query!`/`query_as!` macros: at build time sqlx
//! checks each one against a database and derives its types. A tenant's
//! tables exist only in tenant schemas, so the check runs against the
//! *template schema*, the tenant migrations applied to a schema of no tenant:
//!
//! ```sh
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/notes_dev   # any database of yours
//! hidra --tenant-migrations crates/hidra-checked-queries/migrations/tenant migrate template
//! # prints …/notes_dev?options=-c%20search_path%3Dhidra_template
//! cd crates/hidra-checked-queries
//! DATABASE_URL='<the printed URL>' cargo sqlx prepare
//! ```
//!
//! `cargo sqlx prepare` writes `.sqlx/`, committed here, so the crate builds
//! without any database (`SQLX_OFFLINE=true`, which this workspace's
//! `.cargo/config.toml` sets). At run time the same unqualified SQL runs on a
//! [`TenantConn`], bound to the tenant's schema: the checked query is the
//! query that runs, in every tenant.
//!
//! `cargo run -p hidra-checked-queries` runs the example.

use chrono::{DateTime, Utc};
use hidra::{Migrations, TenantConn};

/// The tenant migrations, embedded.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/tenant");

/// The tenant migrations, for `Hidra::builder().tenant_migrations(…)`.
pub fn migrations() -> Migrations {
    Migrations::from_sqlx(&MIGRATIONS)
}

/// A note of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Its id, unique within the tenant.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// Its text, if any.
    pub body: Option<String>,
    /// Whether it is shown first.
    pub pinned: bool,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

// ANCHOR: add_note
/// Writes a note in the connection's tenant.
pub async fn add_note(
    conn: &mut TenantConn,
    title: &str,
    body: Option<&str>,
) -> sqlx::Result<Note> {
    sqlx::query_as!(
        Note,
        "INSERT INTO notes (title, body) VALUES ($1, $2) \
         RETURNING id, title, body, pinned, created_at",
        title,
        body
    )
    .fetch_one(conn)
    .await
}
// ANCHOR_END: add_note

/// Pins or unpins a note; `false` when the tenant has no note `id`.
pub async fn pin(conn: &mut TenantConn, id: i64, pinned: bool) -> sqlx::Result<bool> {
    let done = sqlx::query!("UPDATE notes SET pinned = $2 WHERE id = $1", id, pinned)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The tenant's notes, pinned first, then newest first.
pub async fn notes(conn: &mut TenantConn) -> sqlx::Result<Vec<Note>> {
    sqlx::query_as!(
        Note,
        "SELECT id, title, body, pinned, created_at FROM notes \
         ORDER BY pinned DESC, created_at DESC, id DESC"
    )
    .fetch_all(conn)
    .await
}

/// How many notes the tenant has, and how many are pinned.
pub async fn counts(conn: &mut TenantConn) -> sqlx::Result<(i64, i64)> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "total!", count(*) FILTER (WHERE pinned) AS "pinned!" FROM notes"#
    )
    .fetch_one(conn)
    .await?;
    Ok((row.total, row.pinned))
}
