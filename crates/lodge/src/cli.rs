//! Command-line surface: clap structs only, no logic. Each verb is handled by
//! the matching file in `cmd/`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "lodge", version, about = "Run OCI container images as virtual machines")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per-VM monitor: run CMD with its stdout/stderr captured into rotating logs
    Supervise(SuperviseArgs),
    /// Print (and follow) an instance's logs, or a log directory with --dir
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Directory that receives app.log (stdout) and vmm.log (stderr); must exist
    #[arg(long)]
    pub log_dir: PathBuf,
    /// Rotate a log once it reaches this size (65536, 64KiB, 50MB, 1GiB)
    #[arg(long, default_value = "50MiB")]
    pub max_size: String,
    /// Rotated segments kept per log
    #[arg(long, default_value_t = 5)]
    pub max_files: usize,
    /// The command to run, after `--`
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Read this log directory directly instead of asking the daemon
    #[arg(long, conflicts_with = "instance")]
    pub dir: Option<PathBuf>,
    /// Which log: app (console), vmm (hypervisor), lodge (lodge's actions; alias hypeman)
    #[arg(long, default_value = "app")]
    pub source: String,
    /// Lines to print from the end, or `all`
    #[arg(long, default_value = "100")]
    pub tail: String,
    /// Keep printing new output as it is written
    #[arg(short, long)]
    pub follow: bool,
    /// Instance id, name or unique id prefix
    #[arg(required_unless_present = "dir")]
    pub instance: Option<String>,
}
