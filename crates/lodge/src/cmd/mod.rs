//! One file per verb (or group of small verbs): turns parsed arguments into
//! calls and an exit code.

mod logs_dir;
mod supervise;

use anyhow::Result;

use crate::cli::{Cli, Command};

/// Exit code for bad usage or input (what clap itself uses).
pub const EXIT_USAGE: u8 = 2;

pub fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Supervise(args) => supervise::run(args),
        Command::Logs(args) => match &args.dir {
            Some(dir) => logs_dir::run(dir, &args),
            None => anyhow::bail!("logs for an instance: being wired up"),
        },
        _ => anyhow::bail!("this verb is being wired up"),
    }
}

