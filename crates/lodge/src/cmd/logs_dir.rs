//! `lodge logs --dir DIR`: read a log directory directly, no daemon needed.

use std::path::Path;

use anyhow::Result;

use crate::cli::LogsArgs;

pub fn run(_dir: &Path, _args: &LogsArgs) -> Result<u8> {
    anyhow::bail!("logs --dir: not implemented yet")
}
