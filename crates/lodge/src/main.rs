//! The one `lodge` binary: CLI verbs, the API daemon (`serve`) and the per-VM
//! monitor (`supervise`) all live here so a host needs exactly one executable.
//!
//! `main` only parses arguments and dispatches. The monitor and the
//! directory-reading `logs --dir` run without a tokio runtime: they must stay
//! small (the monitor's resident memory is budgeted at 4 MiB) and start fast.

mod accel;
mod agent;
mod api;
mod auth;
mod cli;
mod client;
mod cmd;
mod config;
mod devices;
mod disks;
mod ingress;
mod instances;
mod metrics;
mod sizes;
mod tags;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = match cmd::fast_path(&args) {
        Some(result) => result,
        None => cmd::dispatch(cli::Cli::parse_from(args)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("lodge: {err:#}");
            ExitCode::from(cmd::EXIT_USAGE)
        }
    }
}
