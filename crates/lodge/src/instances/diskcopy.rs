//! Copying disk images and memory files for snapshots and forks: a
//! reflink (`FICLONE`, shared extents, instant) where the filesystem can,
//! else a sparse copy that reads only the data extents (`SEEK_DATA` /
//! `SEEK_HOLE`) and leaves holes as holes, so a 1 GiB overlay holding
//! 20 MiB costs 20 MiB of reads and writes, not 1 GiB.
//!
//! The copy goes to a temporary name beside the target, is fsynced and
//! renamed, so a crash leaves the old target or the whole new one.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use rustix::fs::{seek, SeekFrom as RSeek};

/// How a file was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    Sparse,
}

/// Copies `src` to `dst` (replacing it), by reflink when possible, else
/// sparsely. Returns how.
pub fn copy_file(src: &Path, dst: &Path) -> io::Result<CopyKind> {
    let tmp = dst.with_file_name(format!(
        ".{}.copying",
        dst.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let result = copy_to(src, &tmp);
    match result {
        Ok(kind) => {
            std::fs::rename(&tmp, dst)?;
            Ok(kind)
        }
        Err(e) => {
            if let Err(c) = std::fs::remove_file(&tmp) {
                if c.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {c}", tmp.display());
                }
            }
            Err(e)
        }
    }
}

fn copy_to(src: &Path, dst: &Path) -> io::Result<CopyKind> {
    let from = File::open(src)?;
    let len = from.metadata()?.len();
    let mut to = File::create(dst)?;
    let kind = match rustix::fs::ioctl_ficlone(&to, &from) {
        Ok(()) => CopyKind::Reflink,
        Err(_) => {
            sparse_copy(&from, &mut to, len)?;
            CopyKind::Sparse
        }
    };
    to.sync_all()?;
    Ok(kind)
}

/// Copies the data extents of `from` (of length `len`) into the empty
/// `to`, and gives `to` the same length (the holes stay holes).
fn sparse_copy(from: &File, to: &mut File, len: u64) -> io::Result<()> {
    to.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(from, RSeek::Data(pos)) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: all of it is data.
            Err(rustix::io::Errno::INVAL) if pos == 0 => 0,
            Err(e) => return Err(e.into()),
        };
        let hole = match seek(from, RSeek::Hole(data)) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        let mut reader = from;
        reader.seek(SeekFrom::Start(data))?;
        to.seek(SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = reader.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            write_data(to, &buf[..n])?;
            left -= n as u64;
        }
        pos = hole;
    }
    Ok(())
}

/// Writes `chunk`, skipping whole zero blocks (they stay holes).
fn write_data(to: &mut File, chunk: &[u8]) -> io::Result<()> {
    const BLOCK: usize = 4096;
    for block in chunk.chunks(BLOCK) {
        if block.iter().all(|&b| b == 0) {
            to.seek(SeekFrom::Current(block.len() as i64))?;
        } else {
            to.write_all(block)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_sparse_file_is_copied_whole_and_stays_sparse() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("disk.raw");
        let mut f = File::create(&src)?;
        f.set_len(64 << 20)?;
        f.seek(SeekFrom::Start(10 << 20))?;
        f.write_all(&[7u8; 8192])?;
        f.seek(SeekFrom::Start((64 << 20) - 3))?;
        f.write_all(b"end")?;
        f.sync_all()?;
        let dst = dir.path().join("copy.raw");
        std::fs::write(&dst, b"old contents")?;
        copy_file(&src, &dst)?;
        assert_eq!(std::fs::read(&src)?, std::fs::read(&dst)?);
        let meta = std::fs::metadata(&dst)?;
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            meta.blocks() * 512 < 4 << 20,
            "the copy allocated {} bytes",
            meta.blocks() * 512
        );
        assert!(!dir.path().join(".copy.raw.copying").exists());
        Ok(())
    }

    #[test]
    fn a_missing_source_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dst = dir.path().join("copy.raw");
        assert!(copy_file(&dir.path().join("nope"), &dst).is_err());
        assert!(!dst.exists());
        assert!(!dir.path().join(".copy.raw.copying").exists());
    }
}
