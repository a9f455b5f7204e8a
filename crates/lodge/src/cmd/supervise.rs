//! `lodge supervise`: the per-VM monitor (see the lodge-monitor crate).
//!
//! Turns the raw flags into a validated `lodge_monitor::Config`; every
//! error here or in the monitor's own checks becomes one `lodge: ...` line
//! and exit code 2 before anything is created.

use anyhow::{anyhow, Result};
use lodge_logs::ByteSize;

use crate::cli::SuperviseArgs;

pub fn run(args: SuperviseArgs) -> Result<u8> {
    let max_size: ByteSize = args
        .max_size
        .parse()
        .map_err(|err| anyhow!("invalid --max-size {:?}: {err}", args.max_size))?;
    let max_files: usize = args.max_files.parse().map_err(|_| {
        anyhow!(
            "invalid --max-files {:?}: expected a whole number",
            args.max_files
        )
    })?;
    let config = lodge_monitor::Config {
        log_dir: args.log_dir,
        max_size: max_size.as_u64(),
        max_files,
        command: args.command,
    };
    Ok(lodge_monitor::run(&config)?)
}
