//! The server registry against real PostgreSQL: a second server started by
//! the harness is registered, listed with its tenant count, drained, made
//! read-only, activated and removed; bad names, taken names, unreachable
//! servers and servers still holding tenants are refused with typed errors,
//! and a URL's password never shows.

mod common;

use common::*;
use hidra::testing::TempCluster;
use hidra::{Error, NewServer, ServerName, ServerState, ServersTable};

const PASSWORD: &str = "s3cret-pw";

fn name(s: &str) -> ServerName {
    ServerName::new(s).unwrap()
}

/// `url` with a password (the throw-away servers trust every login, so it
/// is accepted and ignored).
fn with_password(url: &str) -> String {
    url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1)
}

/// A port of 127.0.0.1 with nothing listening on it.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The error with all its causes, as a user would see it.
fn chain(err: &Error) -> String {
    let mut text = format!("{err} / {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(" / {cause}"));
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn a_second_server_is_registered_listed_drained_and_removed() {
    let ctx = setup(4).await;
    // Installing again is harmless, the server registry included.
    ctx.hidra.install().await.unwrap();
    let second = TempCluster::start().await.unwrap();
    let servers = ctx.hidra.servers();
    assert!(servers.list().await.unwrap().is_empty());

    let eu = name("eu-1");
    let url = with_password(second.url());
    let added = servers
        .add(NewServer::new(eu.clone(), &url).capacity(100))
        .await
        .unwrap();
    assert_eq!(added.name, eu);
    assert_eq!(added.state, ServerState::Active);
    assert_eq!(added.capacity, Some(100));
    assert_eq!(added.tenants, 0);
    assert_eq!(added.url(), url);
    assert!(!added.redacted_url().contains(PASSWORD));
    assert!(!format!("{added:?}").contains(PASSWORD), "{added:?}");

    let listed = servers.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, eu);
    assert_eq!(listed[0].tenants, 0);
    assert_eq!(listed[0].url(), url);
    assert!(servers.get(&name("nowhere")).await.unwrap().is_none());

    // The server answers the check doctor runs.
    let check = servers.check(&listed[0]).await.unwrap();
    assert!(check.version.starts_with(|c: char| c.is_ascii_digit()));

    // A taken name, even with another URL.
    let err = servers
        .add(NewServer::new(eu.clone(), ctx.db.url()))
        .await
        .unwrap_err();
    assert!(err.is_server_exists(), "{err}");
    assert!(
        err.to_string().contains("server name `eu-1` is taken"),
        "{err}"
    );

    // A bad name never reaches SQL.
    for bad in ["EU-1", "1eu", "eu 1", "eu;drop", ""] {
        let err = ServerName::new(bad).unwrap_err();
        assert!(err.is_invalid_server_name(), "{bad:?}: {err}");
    }
    assert_eq!(servers.list().await.unwrap().len(), 1);

    // Drain, read-only, active again.
    for state in [
        ServerState::Draining,
        ServerState::ReadOnly,
        ServerState::Active,
    ] {
        let changed = servers.set_state(&eu, state).await.unwrap();
        assert_eq!(changed.state, state);
        assert_eq!(servers.get(&eu).await.unwrap().unwrap().state, state);
    }
    let err = servers
        .set_state(&name("nowhere"), ServerState::Draining)
        .await
        .unwrap_err();
    assert!(err.is_server_not_found(), "{err}");

    // A tenant row naming the server (set directly: the data stays on the
    // control server) keeps it from being removed.
    let at_home = |tid: &str| hidra::NewTenant::new(id(tid)).on_control_server();
    let acme = ctx.hidra.provision(at_home("acme")).await.unwrap();
    ctx.hidra.provision(at_home("globex")).await.unwrap();
    set_server(&ctx.hidra, acme.id.as_str(), Some("eu-1")).await;
    assert_eq!(servers.get(&eu).await.unwrap().unwrap().tenants, 1);
    assert_eq!(servers.list().await.unwrap()[0].tenants, 1);
    let err = servers.remove(&eu).await.unwrap_err();
    assert!(err.is_server_in_use(), "{err}");
    assert!(
        matches!(err, Error::ServerInUse { tenants: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("still holds 1 tenant"), "{err}");
    assert!(servers.get(&eu).await.unwrap().is_some());

    // Once no tenant names it, it goes.
    set_server(&ctx.hidra, acme.id.as_str(), None).await;
    servers.remove(&eu).await.unwrap();
    assert!(servers.list().await.unwrap().is_empty());
    assert!(servers.get(&eu).await.unwrap().is_none());
    let err = servers.remove(&eu).await.unwrap_err();
    assert!(err.is_server_not_found(), "{err}");
    let err = (servers.set_state(&eu, ServerState::Active).await).unwrap_err();
    assert!(err.is_server_not_found(), "{err}");
    // Its name is never given to another server: processes that still hold
    // its connections by name would reach the old one.
    let err = servers
        .add(NewServer::new(eu.clone(), &url))
        .await
        .unwrap_err();
    assert!(err.is_server_exists(), "{err}");
    assert!(err.to_string().contains("names are never reused"), "{err}");
    assert!(servers.list().await.unwrap().is_empty());

    second.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_refused_without_showing_its_password() {
    let ctx = setup(2).await;
    let servers = ctx.hidra.servers();
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
        free_port()
    );
    let gone = name("gone");
    let new = NewServer::new(gone.clone(), &url);
    assert!(!format!("{new:?}").contains(PASSWORD));
    let err = servers.add(new).await.unwrap_err();
    assert!(err.is_server_unusable(), "{err}");
    assert!(
        matches!(&err, Error::ServerUnreachable { name, .. } if *name == gone),
        "{err:?}"
    );
    let shown = chain(&err);
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(
        shown.contains("postgres://postgres:***@127.0.0.1:"),
        "{shown}"
    );
    assert!(shown.contains("check that it is running"), "{shown}");
    assert!(servers.get(&gone).await.unwrap().is_none());

    // Not a URL at all.
    let err = servers
        .add(NewServer::new(gone.clone(), "eu-1.internal"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");
    assert!(servers.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_registry_table_that_was_not_created_is_named() {
    let ctx = setup(2).await;
    let ops = hidra::Hidra::builder()
        .servers_table(ServersTable::new("ops.servers").unwrap())
        .connect_with(ctx.db.connect_options())
        .await
        .unwrap();
    let servers = ops.servers();
    let err = servers.list().await.unwrap_err();
    assert!(err.is_table_missing(), "{err}");
    assert!(
        err.to_string().contains("`ops.servers` does not exist"),
        "{err}"
    );
    assert!(err.to_string().contains("Hidra::install()"), "{err}");
    assert!(err.to_string().contains("ServersTable::ddl()"), "{err}");

    // Installing creates the table the handle was given, and then it works
    // like the default one.
    ops.install().await.unwrap();
    servers
        .add(NewServer::new(name("same"), ctx.db.url()))
        .await
        .unwrap();
    assert_eq!(servers.list().await.unwrap().len(), 1);
    assert!(ctx.hidra.servers().list().await.unwrap().is_empty());
}

async fn set_server(hidra: &hidra::Hidra, tenant: &str, server: Option<&str>) {
    let mut conn = hidra.acquire_shared().await.unwrap();
    sqlx::query("UPDATE public.tenants SET server = $2 WHERE id = $1")
        .bind(tenant)
        .bind(server)
        .execute(&mut *conn)
        .await
        .unwrap();
}
