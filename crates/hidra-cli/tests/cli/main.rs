//! The `hidra` binary, run as a real process against a throw-away database
//! per test: every subcommand's results and its errors.

#![allow(unreachable_pub, missing_docs)]

mod common;

mod adopt;
mod api_key;
mod archive;
mod config;
mod doctor;
mod errors;
mod init;
mod migrate;
mod server;
mod sql;
mod tenant;
mod top;
mod view;
