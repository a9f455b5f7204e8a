//! Disk images for a VM: the read-only root disk built from a directory tree,
//! the writable overlay disk, and the raw config disk.
//!
//! Both ext4 disks are made by the real `mkfs.ext4` (`-d` populates a file
//! system from a directory without mounting anything, so this needs no loop
//! devices). The root disk has no journal because it is never written.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("rootfs {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("reading {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
}

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;

/// Bytes and entries a tree needs, rounded to blocks.
fn measure(dir: &Path) -> Result<(u64, u64), DiskError> {
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| DiskError::Walk {
            path: d.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| DiskError::Walk {
                path: d.clone(),
                source,
            })?;
            let meta = entry
                .path()
                .symlink_metadata()
                .map_err(|source| DiskError::Walk {
                    path: entry.path(),
                    source,
                })?;
            entries += 1;
            bytes += meta.len().div_ceil(BLOCK) * BLOCK + BLOCK;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, entries))
}

fn mkfs(args: &[&std::ffi::OsStr], out: &Path) -> Result<(), DiskError> {
    let output = Command::new("mkfs.ext4")
        .args(args)
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

/// Builds a read-only ext4 image of `src` at `out`, sized to fit.
pub fn ext4_from_dir(src: &Path, out: &Path) -> Result<(), DiskError> {
    if !src.is_dir() {
        return Err(DiskError::NotADirectory(src.to_path_buf()));
    }
    let (bytes, entries) = measure(src)?;
    // Metadata (inode tables, bitmaps, directories) plus slack for mkfs.
    let size = (bytes + bytes / 5 + 16 * MIB).div_ceil(MIB) * MIB;
    let inodes = (entries + entries / 5 + 256).to_string();
    let size_blocks = (size / BLOCK).to_string();
    let f = std::fs::File::create(out).map_err(|source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    f.set_len(size).map_err(|source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    drop(f);
    mkfs(
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-O".as_ref(),
            "^has_journal".as_ref(),
            "-N".as_ref(),
            inodes.as_ref(),
            "-b".as_ref(),
            "4096".as_ref(),
            "-L".as_ref(),
            "lodge-root".as_ref(),
            "-d".as_ref(),
            src.as_os_str(),
            out.as_os_str(),
            size_blocks.as_ref(),
        ],
        out,
    )
}

/// Creates an empty (sparse) ext4 disk of `size` bytes for the guest's writes.
pub fn empty_ext4(out: &Path, size: u64) -> Result<(), DiskError> {
    let f = std::fs::File::create(out).map_err(|source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    f.set_len(size).map_err(|source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    drop(f);
    mkfs(
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-L".as_ref(),
            "lodge-overlay".as_ref(),
            out.as_os_str(),
        ],
        out,
    )
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
    fn builds_a_real_ext4_from_a_tree_with_awkward_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src dir,1");
        std::fs::create_dir_all(src.join("a b/c")).expect("mkdir");
        std::fs::write(src.join("a b/c/file,x"), vec![7u8; 100_000]).expect("write");
        let out = tmp.path().join("root,1.ext4");
        ext4_from_dir(&src, &out).expect("mkfs");
        // e2fsprogs can read the file back out of the image.
        let dump = Command::new("debugfs")
            .args(["-R", "stat \"/a b/c/file,x\""])
            .arg(&out)
            .output()
            .expect("debugfs");
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(text.contains("Size: 100000"), "{text}");
    }

    #[test]
    fn missing_source_is_refused_and_nothing_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("x.ext4");
        assert!(matches!(
            ext4_from_dir(&tmp.path().join("nope"), &out),
            Err(DiskError::NotADirectory(_))
        ));
        assert!(!out.exists());
    }
}
