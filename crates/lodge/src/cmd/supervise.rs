//! `lodge supervise`: the per-VM monitor (see the lodge-monitor crate).

use anyhow::Result;

use crate::cli::SuperviseArgs;

pub fn run(_args: SuperviseArgs) -> Result<u8> {
    anyhow::bail!("supervise: not implemented yet")
}
