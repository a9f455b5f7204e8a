//! lodge's own per-instance log (`logs/lodge.log`): one timestamped line per
//! action lodge took (created, started, stopping, stopped). Failing to write
//! it never fails the action; it is logged instead.

use std::path::Path;

use super::store::Paths;

/// Appends one line to the instance's `lodge` log.
pub fn oplog(paths: &Paths, msg: &str) {
    let line = format!("{} {msg}\n", lodge_common::time::now_rfc3339());
    if let Err(e) = append_oplog(&paths.logs(), line.as_bytes()) {
        tracing::warn!("writing the lodge log of {}: {e}", paths.dir.display());
    }
}

fn append_oplog(dir: &Path, line: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = lodge_logs::RotatingWriter::open(dir, lodge_logs::Source::Lodge, 10 << 20, 2)
        .map_err(std::io::Error::other)?;
    w.write_all(line)?;
    w.finish()
}
