//! An instance's own disks: the writable overlay disk and the raw config
//! disk. (Read-only root disks, from an image or a `--rootfs` directory, are
//! built by `lodge_images::disk`, the one place that knows how.)
//!
//! The overlay is made by the real `mkfs.ext4` on a sparse file, with lazy
//! inode-table and journal initialisation so that creating it costs
//! milliseconds whatever its size.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("running mkfs.ext4")]
    Spawn(#[source] std::io::Error),
    #[error("mkfs.ext4 failed for {path}: {stderr}")]
    Mkfs { path: PathBuf, stderr: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Root(#[from] lodge_images::disk::DiskError),
}

/// Creates an empty (sparse) ext4 disk of `size` bytes for the guest's writes.
pub fn empty_ext4(out: &Path, size: u64) -> Result<(), DiskError> {
    let write_err = |source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    };
    let f = std::fs::File::create(out).map_err(write_err)?;
    f.set_len(size).map_err(write_err)?;
    drop(f);
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "lodge-overlay"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(out)
        .output()
        .map_err(DiskError::Spawn)?;
    if !output.status.success() {
        let _ = std::fs::remove_file(out);
        return Err(DiskError::Mkfs {
            path: out.to_path_buf(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Writes a raw disk image holding exactly `bytes` (already block-padded).
pub fn raw_image(out: &Path, bytes: &[u8]) -> Result<(), DiskError> {
    std::fs::write(out, bytes).map_err(|source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_is_a_real_ext4_at_an_awkward_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("my disks,1").join("overlay.ext4");
        std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
        empty_ext4(&out, 64 << 20).expect("mkfs");
        let dump = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&out)
            .output()
            .expect("dumpe2fs");
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(text.contains("lodge-overlay"), "{text}");
        // Sparse: almost nothing is allocated for a 64 MiB disk.
        let meta = std::fs::metadata(&out).expect("stat");
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 16 << 20);
    }
}
