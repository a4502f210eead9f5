//! `hidra top`: a live view of which tenants load a running service.
//!
//! The counters live in the service's process ([`hidra::Hidra::load`]), so
//! `top` reads them where the service publishes them: the
//! `/health/detailed` report of hidra-axum's health routes. Each refresh
//! shows the tenants holding the most connections now, with rates computed
//! from the previous refresh, and the sum of all the others.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::opt::TopArgs;
use crate::output::{Table, outln};

/// How long one fetch of the report may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The part of `/health/detailed` that `top` shows.
#[derive(Debug, Deserialize)]
struct Report {
    status: String,
    database: Database,
    pool: Pool,
    tenants: Tenants,
}

#[derive(Debug, Deserialize)]
struct Database {
    latency_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Pool {
    size: u32,
    idle: u32,
    max: u32,
}

#[derive(Debug, Deserialize)]
struct Tenants {
    busiest: Vec<Ranked>,
    other: Load,
    other_tenants: usize,
}

#[derive(Debug, Deserialize)]
struct Ranked {
    tenant: String,
    load: Load,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct Load {
    connections: u32,
    connection_seconds: f64,
    waits: u64,
    busy: u64,
    cancelled: u64,
    requests: u64,
    rate_limited: u64,
}

pub(crate) async fn run(args: TopArgs) -> Result<()> {
    let uri: hyper::Uri = args
        .url
        .parse()
        .with_context(|| format!("`{}` is not a URL", args.url))?;
    if uri.scheme_str() != Some("http") {
        bail!(
            "`{}`: only http:// URLs are supported; reach an https service through a local port",
            args.url
        );
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let interval = Duration::from_secs_f64(args.interval);
    let screen = !args.json && std::io::stdout().is_terminal();
    let mut previous: Option<(Instant, HashMap<String, Load>)> = None;
    let mut frame = 0;
    loop {
        let report = fetch(&client, &uri).await?;
        let now = Instant::now();
        if args.json {
            // One report per line, as the service sent it.
            outln!("{}", serde_json::to_string(&report.1)?)?;
        } else {
            if screen {
                // Home and clear, like `top`.
                print!("\x1b[H\x1b[2J");
            }
            show(&args.url, &report.0, previous.as_ref())?;
            std::io::stdout().flush()?;
        }
        let loads = report
            .0
            .tenants
            .busiest
            .iter()
            .map(|r| (r.tenant.clone(), r.load))
            .collect();
        previous = Some((now, loads));
        frame += 1;
        if args.iterations.is_some_and(|n| frame >= n) {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// The report, parsed and as sent.
async fn fetch(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: &hyper::Uri,
) -> Result<(Report, serde_json::Value)> {
    let get = async {
        let response = client.get(uri.clone()).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .with_context(|| format!("{uri} did not answer within {FETCH_TIMEOUT:?}"))?
        .with_context(|| format!("could not read {uri}"))?;
    // 503 still carries the report (the database is down).
    let value: serde_json::Value = serde_json::from_slice(&body).with_context(|| {
        format!(
            "{uri} answered {status} without a JSON report: is it hidra-axum's /health/detailed?"
        )
    })?;
    let report = serde_json::from_value(value.clone()).with_context(|| {
        format!("{uri} answered {status} without per-tenant load: is it hidra-axum's /health/detailed, version 0.1 or later?")
    })?;
    Ok((report, value))
}

fn show(
    url: &str,
    report: &Report,
    previous: Option<&(Instant, HashMap<String, Load>)>,
) -> Result<()> {
    let database = match report.database.latency_ms {
        Some(ms) => format!("database {} ({ms:.1} ms)", report.status),
        None => format!("database {}", report.status),
    };
    outln!(
        "hidra top - {url}  {}\n{database}  pool {}/{} open, {} idle",
        chrono::Utc::now().format("%H:%M:%S"),
        report.pool.size,
        report.pool.max,
        report.pool.idle,
    )?;
    outln!("")?;
    let mut table = Table::new([
        "TENANT",
        "CONNS",
        "CONN/S",
        "REQ/S",
        "WAITS",
        "BUSY",
        "CANCELLED",
        "LIMITED",
    ]);
    for ranked in &report.tenants.busiest {
        let before = previous.and_then(|(at, loads)| Some((at, loads.get(&ranked.tenant)?)));
        table.row(row(&ranked.tenant, &ranked.load, before));
    }
    let label = format!("({} others)", report.tenants.other_tenants);
    let mut other = row(&label, &report.tenants.other, None);
    other[2] = "-".into();
    other[3] = "-".into();
    table.row(other);
    table.print()
}

/// A tenant's line: connections now; connection time per second (the
/// average connections held) and requests per second since the previous
/// refresh; totals of the rest.
fn row(name: &str, load: &Load, before: Option<(&Instant, &Load)>) -> Vec<String> {
    let rate = |f: fn(&Load) -> f64| match before {
        Some((at, old)) => {
            let secs = at.elapsed().as_secs_f64().max(1e-3);
            format!("{:.1}", (f(load) - f(old)).max(0.0) / secs)
        }
        None => "-".into(),
    };
    vec![
        name.to_owned(),
        load.connections.to_string(),
        rate(|l| l.connection_seconds),
        rate(|l| l.requests as f64),
        load.waits.to_string(),
        load.busy.to_string(),
        load.cancelled.to_string(),
        load.rate_limited.to_string(),
    ]
}
