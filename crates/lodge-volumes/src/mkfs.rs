//! The volume's disk: a sparse raw file formatted by the real `mkfs.ext4`
//! (populated from a directory with `-d` for a volume made from an
//! archive). Unlike an image's root disk it keeps a journal, since guests
//! write it; lazy inode-table and journal initialisation keep the create
//! at milliseconds whatever the size (the file is sparse, so what is not
//! written reads as zeros). No reserved blocks: a volume is all data.

use std::path::Path;
use std::process::Command;

use crate::error::{io, Error, Result};

/// Makes `out` a sparse file of `size` bytes holding an empty ext4, or
/// one populated from `tree`. On failure `out` is removed.
pub fn make(out: &Path, size: u64, tree: Option<&Path>) -> Result<()> {
    let result = (|| {
        let f = std::fs::File::create(out).map_err(io(format!("creating {}", out.display())))?;
        f.set_len(size)
            .map_err(io(format!("sizing {}", out.display())))?;
        drop(f);
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-q", "-F", "-m", "0", "-b", "4096"]).args([
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
        ]);
        if let Some(tree) = tree {
            cmd.arg("-d").arg(tree);
        }
        cmd.arg(out);
        lodge_common::process::die_with_parent(&mut cmd);
        let output = cmd.output().map_err(io("running mkfs.ext4"))?;
        if !output.status.success() {
            return Err(Error::Mkfs {
                path: out.display().to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(())
    })();
    if result.is_err() {
        if let Err(e) = std::fs::remove_file(out) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing the failed disk {}: {e}", out.display());
            }
        }
    }
    result
}

/// Replays the journal of the ext4 at `disk` if a writer left it dirty
/// (a VM stopped by force, an instance deleted while running), so a
/// read-only attachment (mounted `noload`, which never replays it) reads
/// what the writer last committed. Call only while no VM has the disk
/// open. `e2fsck -E journal_only` does nothing to a clean disk.
pub fn replay_journal(disk: &Path) -> Result<()> {
    let mut cmd = Command::new("e2fsck");
    cmd.args(["-E", "journal_only", "-p"]).arg(disk);
    lodge_common::process::die_with_parent(&mut cmd);
    let output = cmd.output().map_err(io("running e2fsck"))?;
    // 0: clean; 1: the journal was replayed (errors corrected).
    match output.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(Error::Mkfs {
            path: disk.display().to_string(),
            stderr: format!(
                "e2fsck -E journal_only: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }),
    }
}

/// The smallest whole number of gigabytes an ext4 holding a tree of
/// `bytes` (whole blocks) and `inodes` needs: content, inode tables and
/// metadata slack, and the journal.
pub fn gb_for(bytes: u64, inodes: u64) -> u64 {
    let need = bytes + bytes / 8 + inodes.saturating_mul(256) + (80 << 20);
    need.div_ceil(crate::rules::GB).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_volume_is_sparse_ext4_with_a_journal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("a,b").join("data.raw");
        std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
        make(&out, 1 << 30, None).expect("mkfs");
        let dump = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&out)
            .output()
            .expect("dumpe2fs");
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(text.contains("has_journal"), "{text}");
        let meta = std::fs::metadata(&out).expect("stat");
        assert_eq!(meta.len(), 1 << 30);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 64 << 20);
    }

    #[test]
    fn a_failed_mkfs_leaves_no_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("data.raw");
        // Too small for any ext4.
        assert!(matches!(make(&out, 4096, None), Err(Error::Mkfs { .. })));
        assert!(!out.exists());
    }

    #[test]
    fn replaying_a_clean_journal_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("data.raw");
        make(&out, 64 << 20, None).expect("mkfs");
        let before = std::fs::read(&out).expect("read");
        replay_journal(&out).expect("clean");
        assert!(before == std::fs::read(&out).expect("read"), "untouched");
        assert!(replay_journal(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn sizes_from_content() {
        assert_eq!(gb_for(0, 0), 1);
        assert_eq!(gb_for(900 << 20, 10), 2);
        assert_eq!(gb_for(3 << 30, 1000), 4);
    }
}
