//! Copying in and out of the guest, stat, and the raw-channel measurements.
//!
//! Both copy directions are streams of entries (header, contents, end), so
//! a file of any size is streamed in [`DATA_CHUNK`] pieces and never held
//! whole. Walking and unpacking follow [`lodge_guest::protocol::tree`], the
//! same code `lodge cp` uses on the host: entry paths are checked, nothing
//! is written through a symlink, modes and times are kept. The
//! destination's parent must exist, as in `docker cp`.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use lodge_guest::protocol::blocks::{BlockBuf, BlockReader, BLOCK};
use lodge_guest::protocol::paths::base_name;
use lodge_guest::protocol::tree::{check_parent, Unpacker, Walk};
use lodge_guest::protocol::{Event, Kind, PathInfo, DATA_CHUNK};

use crate::sys;

use super::session::Input;
use super::wire::{InputCredit, StreamOut};

fn text(e: &std::io::Error) -> String {
    sys::errno_text_of(e)
}

fn error(out: &StreamOut, message: String, path: &str) {
    out.event(&Event::Error {
        message,
        path: path.to_owned(),
    });
}

/// `stat` as hypeman answers it: a missing path is `exists: false`, other
/// failures carry the error.
pub fn stat(path: &str, follow_links: bool) -> PathInfo {
    let md = if follow_links {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    };
    match md {
        Ok(md) => {
            let is_symlink = md.file_type().is_symlink();
            PathInfo {
                exists: true,
                error: None,
                is_dir: Some(md.is_dir()),
                is_file: Some(md.is_file()),
                is_symlink: Some(is_symlink),
                link_target: if is_symlink {
                    fs::read_link(path)
                        .ok()
                        .map(|t| t.to_string_lossy().into_owned())
                } else {
                    None
                },
                mode: Some(md.mode() & 0o777),
                size: Some(md.len()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PathInfo::default(),
        Err(e) => PathInfo {
            exists: false,
            error: Some(format!("stat {path}: {}", text(&e))),
            ..PathInfo::default()
        },
    }
}

/// Receive a `CopyTo` stream into `path`.
pub fn copy_to(out: &StreamOut, path: &str, input: Receiver<Input>) {
    if let Err(message) = receive(out, path, input) {
        error(out, message, path);
    }
}

fn receive(out: &StreamOut, path: &str, input: Receiver<Input>) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "destination must be an absolute path, got {path:?}"
        ));
    }
    check_parent(Path::new(path))?;
    // The host sends owners only in archive mode.
    let mut unpacker = Unpacker::new(PathBuf::from(path), true).with_block_io();
    let mut credit = InputCredit::new();
    for item in input {
        match item {
            Input::Entry(header) => unpacker.begin(header)?,
            Input::Data(data) => {
                unpacker.write(&data)?;
                credit.consumed(out, data.len());
            }
            Input::EntryEnd => unpacker.end()?,
            Input::Eof => {
                let bytes = unpacker.finish()?;
                out.event(&Event::Result { bytes });
                return Ok(());
            }
        }
    }
    // Cancelled, or the host went away: nothing to report to.
    Ok(())
}

/// Send `path` as a `CopyFrom` stream.
pub fn copy_from(out: &StreamOut, path: &str, follow_links: bool) {
    let walk = match Walk::new(Path::new(path), base_name(path), follow_links) {
        Ok(w) => w,
        Err((_, e)) => return error(out, format!("stat {path}: {}", text(&e)), path),
    };
    let mut walk = walk.peekable();
    // Large files are read in blocks bypassing the page cache (see
    // `protocol::blocks`); the block buffer is made once per copy.
    let mut blocks: Option<BlockBuf> = None;
    while let Some(item) = walk.next() {
        let found = match item {
            Ok(f) => f,
            Err((p, e)) => {
                let shown = p.display().to_string();
                return error(out, format!("{shown}: {}", text(&e)), &shown);
            }
        };
        let size = found.header.size;
        out.event(&Event::Header(found.header));
        if found.is_file {
            let shown = found.full.display().to_string();
            let file = match File::open(&found.full) {
                Ok(f) => f,
                Err(e) => return error(out, format!("open {shown}: {}", text(&e)), &shown),
            };
            let direct = size >= BLOCK as u64;
            let mut reader = BlockReader::new(file, blocks.take().unwrap_or_default(), direct);
            loop {
                match reader.next_block() {
                    Ok([]) => break,
                    Ok(bytes) => {
                        if !out.data(Kind::Data, bytes) {
                            return;
                        }
                    }
                    Err(e) => return error(out, format!("read {shown}: {}", text(&e)), &shown),
                }
            }
            blocks = Some(reader.into_buf());
        }
        out.event(&Event::End {
            last: walk.peek().is_none(),
        });
    }
}

/// Take `Data` until `Eof` and throw it away (the raw host-to-guest rate).
pub fn discard(out: &StreamOut, input: Receiver<Input>) {
    let mut bytes = 0u64;
    let mut credit = InputCredit::new();
    for item in input {
        match item {
            Input::Data(data) => {
                bytes += data.len() as u64;
                credit.consumed(out, data.len());
            }
            Input::Eof => {
                out.event(&Event::Result { bytes });
                return;
            }
            Input::Entry(_) | Input::EntryEnd => {}
        }
    }
}

/// Send `bytes` zero bytes (the raw guest-to-host rate).
pub fn generate(out: &StreamOut, bytes: u64) {
    let buf = vec![0u8; DATA_CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(DATA_CHUNK as u64) as usize;
        if !out.data(Kind::Data, &buf[..n]) {
            return;
        }
        left -= n as u64;
    }
    out.event(&Event::End { last: true });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stat_reports_like_hypeman() {
        let dir = std::env::temp_dir().join(format!("lodge-agent-stat-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("f"), "12345").expect("write");
        fs::set_permissions(dir.join("f"), fs::Permissions::from_mode(0o640)).expect("chmod");
        let _ = fs::remove_file(dir.join("l"));
        std::os::unix::fs::symlink("f", dir.join("l")).expect("symlink");
        let f = stat(&dir.join("f").to_string_lossy(), false);
        assert!(f.exists);
        assert_eq!(
            (f.is_file, f.is_dir, f.mode, f.size),
            (Some(true), Some(false), Some(0o640), Some(5))
        );
        let l = stat(&dir.join("l").to_string_lossy(), false);
        assert_eq!(
            (l.is_symlink, l.link_target.as_deref()),
            (Some(true), Some("f"))
        );
        let followed = stat(&dir.join("l").to_string_lossy(), true);
        assert_eq!(
            (followed.is_file, followed.is_symlink),
            (Some(true), Some(false))
        );
        let missing = stat(&dir.join("nope").to_string_lossy(), false);
        assert_eq!(missing, PathInfo::default());
        let _ = fs::remove_dir_all(&dir);
    }
}
