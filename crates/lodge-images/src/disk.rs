//! The read-only root disk made from an unpacked image tree.
//!
//! ext4 comes from the real `mkfs.ext4 -d`, which populates a new file
//! system from a directory without mounting anything (no loop devices, no
//! root needed beyond reading the tree), keeping owners, modes, hard links,
//! device nodes and extended attributes. The disk has no journal since it is
//! never written, and is sized to fit: measured content plus metadata slack,
//! grown and retried once if mkfs still runs out of room. erofs
//! (`mkfs.erofs`) is the alternative where the guest kernel has it: smaller
//! and faster to build, read-only by design.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFormat {
    #[default]
    Ext4,
    Erofs,
}

impl DiskFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ext4" => Some(DiskFormat::Ext4),
            "erofs" => Some(DiskFormat::Erofs),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("reading {path}: {source}")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {tool}: {source}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed for {path}: {stderr}")]
    Mkfs {
        tool: &'static str,
        path: PathBuf,
        stderr: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;

/// Bytes (whole blocks) and inodes a tree needs; hard links count once.
pub fn measure(dir: &Path) -> Result<(u64, u64), DiskError> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    let walk = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Walk { path, source }
    };
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(walk(&d))? {
            let entry = entry.map_err(walk(&d))?;
            let meta = entry
                .path()
                .symlink_metadata()
                .map_err(walk(&entry.path()))?;
            // Directory entries themselves take room in their parent.
            bytes += 64;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            inodes += 1;
            bytes += meta.len().div_ceil(BLOCK) * BLOCK;
            if meta.is_dir() {
                bytes += BLOCK;
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// Builds a read-only disk of `src` at `out` (replaced if present).
pub fn build(format: DiskFormat, src: &Path, out: &Path) -> Result<(), DiskError> {
    if !src.is_dir() {
        return Err(DiskError::NotADirectory(src.to_path_buf()));
    }
    let _ = std::fs::remove_file(out);
    let result = match format {
        DiskFormat::Ext4 => ext4(src, out),
        DiskFormat::Erofs => erofs(src, out),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

/// A sparse ext4 image of `src` with no journal, labelled `lodge-root`.
pub fn ext4(src: &Path, out: &Path) -> Result<(), DiskError> {
    let (bytes, inodes) = measure(src)?;
    // Inode tables, bitmaps, group descriptors and mkfs's reserves.
    let mut size = (bytes + bytes / 8 + inodes * 256 + 8 * MIB).div_ceil(MIB) * MIB;
    let inode_count = (inodes + inodes / 8 + 128).to_string();
    let mut last = None;
    for _ in 0..3 {
        match mkfs_ext4(src, out, size, &inode_count) {
            Ok(()) => return Ok(()),
            Err(DiskError::Mkfs { stderr, .. })
                if stderr.contains("Could not allocate") || stderr.contains("No space left") =>
            {
                // The estimate was short (huge directories, xattrs): grow.
                last = Some(stderr);
                size = size * 3 / 2;
            }
            Err(e) => return Err(e),
        }
    }
    Err(DiskError::Mkfs {
        tool: "mkfs.ext4",
        path: out.to_path_buf(),
        stderr: last.unwrap_or_default(),
    })
}

fn mkfs_ext4(src: &Path, out: &Path, size: u64, inodes: &str) -> Result<(), DiskError> {
    let f = std::fs::File::create(out).map_err(|source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    f.set_len(size).map_err(|source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    drop(f);
    let blocks = (size / BLOCK).to_string();
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args([
        "-q",
        "-F",
        "-O",
        "^has_journal",
        "-m",
        "0",
        "-N",
        inodes,
        "-b",
        "4096",
    ])
    .args(["-E", "root_owner=0:0", "-L", "lodge-root"])
    .arg("-d")
    .arg(src)
    .arg(out)
    .arg(blocks);
    run_mkfs("mkfs.ext4", cmd, out)
}

/// Runs the mkfs `tool` (`cmd`) that writes `out`; a failure carries its
/// stderr. The child is set to be killed if lodge dies while it runs: a
/// daemon killed mid-pull must not leave a mkfs writing into its data dir.
/// Safe with `output()`: the spawning thread waits for the child, so it
/// cannot exit (and fire the signal) first.
fn run_mkfs(tool: &'static str, mut cmd: Command, out: &Path) -> Result<(), DiskError> {
    lodge_common::process::die_with_parent(&mut cmd);
    let output = cmd
        .output()
        .map_err(|source| DiskError::Spawn { tool, source })?;
    if !output.status.success() {
        return Err(DiskError::Mkfs {
            tool,
            path: out.to_path_buf(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// An erofs image of `src` (owners kept as they are in the tree).
pub fn erofs(src: &Path, out: &Path) -> Result<(), DiskError> {
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg("--quiet").arg(out).arg(src);
    run_mkfs("mkfs.erofs", cmd, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_holds_the_tree_and_hard_links_count_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src dir,1");
        std::fs::create_dir_all(src.join("a b/c")).expect("mkdir");
        std::fs::write(src.join("a b/c/file,x"), vec![7u8; 100_000]).expect("write");
        std::fs::hard_link(src.join("a b/c/file,x"), src.join("linked")).expect("link");
        let (bytes, inodes) = measure(&src).expect("measure");
        assert_eq!(inodes, 3, "two dirs and one file");
        assert!(bytes < 200_000, "hard link counted once: {bytes}");
        let out = tmp.path().join("root,1.ext4");
        build(DiskFormat::Ext4, &src, &out).expect("mkfs");
        let dump = Command::new("debugfs")
            .args(["-R", "stat /linked"])
            .arg(&out)
            .output()
            .expect("debugfs");
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(
            text.contains("Size: 100000") && text.contains("Links: 2"),
            "{text}"
        );
    }

    #[test]
    fn missing_source_writes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("x.ext4");
        assert!(matches!(
            build(DiskFormat::Ext4, &tmp.path().join("nope"), &out),
            Err(DiskError::NotADirectory(_))
        ));
        assert!(!out.exists());
    }
}
