//! `hidra`: the command line of the Hidra multi-tenancy toolkit.
//!
//! A thin binary over the `hidra` library: every command parses and checks
//! its input, connects, calls the library and prints the result. Failures are
//! one `error: …` line on standard error and exit code 1; usage mistakes
//! found by the parser exit with 2. Run `hidra --help` for the commands.

mod cmd;
mod config;
mod db;
mod opt;
mod output;
mod progress;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::config::Settings;
use crate::opt::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                output::one_line(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        // Talks to the service, not the database: no settings needed.
        Command::Top(args) => return cmd::top::run(args).await,
        command => command,
    };
    let settings = Settings::resolve(&cli.global)?;
    match command {
        Command::Init => cmd::init::run(&settings).await,
        Command::Tenant(command) => cmd::tenant::run(&settings, command).await,
        Command::Migrate(args) => cmd::migrate::run(&settings, args).await,
        Command::ApiKey(command) => cmd::api_key::run(&settings, command).await,
        Command::Server(command) => cmd::server::run(&settings, command).await,
        Command::Doctor { json, repair } => cmd::doctor::run(&settings, json, repair).await,
        Command::Sql(args) => cmd::sql::run(&settings, args).await,
        Command::Adopt(args) => cmd::adopt::run(&settings, args).await,
        Command::View(command) => cmd::view::run(&settings, command).await,
        Command::Top(args) => cmd::top::run(args).await,
    }
}
