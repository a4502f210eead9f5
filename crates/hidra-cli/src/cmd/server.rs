//! `hidra server add|list|drain|read-only|activate|remove`

use anyhow::Result;
use hidra::{NewServer, Server, ServerName, ServerState, Servers};
use serde::Serialize;

use crate::config::Settings;
use crate::db::{self, Needs};
use crate::opt::ServerCommand;
use crate::output::{self, Table, note, outln};

/// A server as JSON: its URL always redacted.
#[derive(Debug, Serialize)]
struct ServerJson {
    name: String,
    url: String,
    state: ServerState,
    capacity: Option<u32>,
    tenants: u64,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<&Server> for ServerJson {
    fn from(s: &Server) -> Self {
        ServerJson {
            name: s.name.to_string(),
            url: s.redacted_url(),
            state: s.state,
            capacity: s.capacity,
            tenants: s.tenants,
            created_at: s.created_at,
        }
    }
}

pub(crate) async fn run(settings: &Settings, command: ServerCommand) -> Result<()> {
    match command {
        ServerCommand::Add {
            name,
            url,
            capacity,
            json,
        } => add(settings, &name, url, capacity, json).await,
        ServerCommand::List { json } => list(settings, json).await,
        ServerCommand::Drain { name } => set_state(settings, &name, ServerState::Draining).await,
        ServerCommand::ReadOnly { name } => set_state(settings, &name, ServerState::ReadOnly).await,
        ServerCommand::Activate { name } => set_state(settings, &name, ServerState::Active).await,
        ServerCommand::Remove { name } => {
            let name = ServerName::new(&name)?;
            registry(settings).await?.remove(&name).await?;
            outln!("removed server `{name}` from the registry")
        }
    }
}

/// The server registry of the configured database.
async fn registry(settings: &Settings) -> Result<Servers> {
    Ok(db::connect(settings, Needs::default())
        .await?
        .hidra
        .servers())
}

async fn add(
    settings: &Settings,
    name: &str,
    url: String,
    capacity: Option<u32>,
    json: bool,
) -> Result<()> {
    let mut new = NewServer::new(ServerName::new(name)?, url);
    if let Some(capacity) = capacity {
        new = new.capacity(capacity);
    }
    let server = registry(settings).await?.add(new).await?;
    if json {
        return output::json(&ServerJson::from(&server));
    }
    outln!(
        "registered server `{}` at {} ({}{})",
        server.name,
        server.redacted_url(),
        server.state,
        server
            .capacity
            .map(|c| format!(", capacity {c} tenants"))
            .unwrap_or_default()
    )
}

async fn list(settings: &Settings, json: bool) -> Result<()> {
    let servers = registry(settings).await?.list().await?;
    if json {
        return output::json(&servers.iter().map(ServerJson::from).collect::<Vec<_>>());
    }
    if servers.is_empty() {
        note!(
            "no servers registered: every tenant is on the control server \
             (add one with `hidra server add NAME URL`)"
        );
        return Ok(());
    }
    let mut table = Table::new(["NAME", "STATE", "TENANTS", "CAPACITY", "URL", "CREATED"]);
    for s in &servers {
        table.row(vec![
            s.name.to_string(),
            s.state.to_string(),
            s.tenants.to_string(),
            s.capacity.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            s.redacted_url(),
            output::time(&s.created_at),
        ]);
    }
    table.print()
}

async fn set_state(settings: &Settings, name: &str, state: ServerState) -> Result<()> {
    let name = ServerName::new(name)?;
    let server = registry(settings).await?.set_state(&name, state).await?;
    outln!(
        "server `{}` is {} ({})",
        server.name,
        server.state,
        output::plural(server.tenants as usize, "tenant", "tenants")
    )
}
