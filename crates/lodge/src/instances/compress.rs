//! Compressing a standby's memory in the background (hypeman's
//! `StandbyInstanceRequest.compression`), and undoing it before the state
//! is used.
//!
//! What is compressed is the state's memory: the guest RAM file when the
//! VM's memory is a file, else the state file (the migration stream). It
//! runs after the standby has answered, after the asked delay, under the
//! instance lock, with the host's `zstd` or `lz4`. A restore (or a
//! snapshot or fork of the standby) that comes meanwhile waits for the
//! lock, then finds the memory compressed and decompresses it first
//! (`zstd -d --sparse` keeps the RAM file's holes): compression trades
//! restore time for disk, which is why it is off unless asked for.
//!
//! The compressor writes `<file>.<ext>.partial`, renamed once complete;
//! only then is the uncompressed file removed. A daemon restart in the
//! middle leaves the state uncompressed (the partial file is dropped).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;

use super::error::{io, Error, Result};
use super::oplog::oplog;
use super::store::{
    self, Compression, CompressionAlgorithm, CompressionState, Metadata, Paths, SavedState,
};

/// A compression asked for with a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionSpec {
    pub algorithm: CompressionAlgorithm,
    pub level: u32,
    pub delay: Duration,
}

impl CompressionSpec {
    /// hypeman's ranges: zstd 1–19 (default 1), lz4 0–9 (default 0).
    pub fn new(
        algorithm: CompressionAlgorithm,
        level: Option<u32>,
        delay: Duration,
    ) -> std::result::Result<Self, String> {
        let (default, range) = match algorithm {
            CompressionAlgorithm::Zstd => (1, 1..=19),
            CompressionAlgorithm::Lz4 => (0, 0..=9),
        };
        let level = level.unwrap_or(default);
        if !range.contains(&level) {
            return Err(format!(
                "compression level {level} is outside {}..={} for {algorithm:?}",
                range.start(),
                range.end()
            ));
        }
        Ok(Self {
            algorithm,
            level,
            delay,
        })
    }
}

/// The file a saved state's compression applies to (relative to the
/// instance directory).
fn target(saved: &SavedState) -> &Path {
    saved.ram_file.as_deref().unwrap_or(&saved.file)
}

fn extension(algorithm: CompressionAlgorithm) -> &'static str {
    match algorithm {
        CompressionAlgorithm::Zstd => "zst",
        CompressionAlgorithm::Lz4 => "lz4",
    }
}

fn compressed_path(file: &Path, algorithm: CompressionAlgorithm) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".");
    name.push(extension(algorithm));
    PathBuf::from(name)
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// The compressor's argv for `from` → `to`.
fn compress_argv(c: &Compression, from: &Path, to: &Path) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = match c.algorithm {
        CompressionAlgorithm::Zstd => vec![
            "zstd".into(),
            "-q".into(),
            "-f".into(),
            "-T0".into(),
            format!("-{}", c.level).into(),
        ],
        // lz4's fastest is -1; hypeman's 0 means that.
        CompressionAlgorithm::Lz4 => vec![
            "lz4".into(),
            "-q".into(),
            "-f".into(),
            format!("-{}", c.level.max(1)).into(),
        ],
    };
    argv.push(from.into());
    if c.algorithm == CompressionAlgorithm::Zstd {
        argv.push("-o".into());
    }
    argv.push(to.into());
    argv
}

/// The decompressor's argv for `from` → `to` (holes kept).
fn decompress_argv(
    algorithm: CompressionAlgorithm,
    from: &Path,
    to: &Path,
) -> Vec<std::ffi::OsString> {
    let tool = match algorithm {
        CompressionAlgorithm::Zstd => "zstd",
        CompressionAlgorithm::Lz4 => "lz4",
    };
    let mut argv: Vec<std::ffi::OsString> = vec![
        tool.into(),
        "-d".into(),
        "-q".into(),
        "-f".into(),
        "--sparse".into(),
        from.into(),
    ];
    if algorithm == CompressionAlgorithm::Zstd {
        argv.push("-o".into());
    }
    argv.push(to.into());
    argv
}

async fn run(argv: &[std::ffi::OsString]) -> std::result::Result<(), String> {
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {:?}: {e}", argv[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed ({}): {}",
            argv[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Starts the background compression of instance `paths`' saved state
/// (recorded as `compressing` by the caller), holding `lock` while it runs.
pub(super) fn spawn(lock: Arc<AsyncMutex<()>>, paths: Paths, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _guard = lock.lock().await;
        if let Err(e) = compress_now(&paths).await {
            tracing::warn!("compressing the state in {}: {e}", paths.dir.display());
        }
    });
}

/// Compresses the saved state if its record still asks for it.
async fn compress_now(paths: &Paths) -> Result<()> {
    let mut meta = store::load(paths).map_err(io("reading instance record"))?;
    let Some(saved) = meta.standby.snapshot.as_mut() else {
        return Ok(());
    };
    let Some(c) = saved.compression.clone() else {
        return Ok(());
    };
    if c.state != CompressionState::Compressing {
        return Ok(());
    }
    let file = paths.dir.join(target(saved));
    let out = compressed_path(&file, c.algorithm);
    let partial = partial_path(&out);
    let started = std::time::Instant::now();
    let result = run(&compress_argv(&c, &file, &partial))
        .await
        .and_then(|()| {
            let uncompressed = allocated_or_len(&file);
            std::fs::File::open(&partial)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::rename(&partial, &out))
                .and_then(|()| std::fs::metadata(&out))
                .map(|m| (uncompressed, m.len()))
                .map_err(|e| format!("keeping the compressed file: {e}"))
        });
    let record = saved.compression.as_mut().ok_or(Error::Task {
        what: "compression",
        source: None,
    })?;
    match result {
        Ok((uncompressed, compressed)) => {
            record.state = CompressionState::Compressed;
            record.uncompressed_bytes = Some(uncompressed);
            record.compressed_bytes = Some(compressed);
            store::save(paths, &meta).map_err(io("writing instance record"))?;
            // Only once the record names the compressed file.
            std::fs::remove_file(&file).map_err(io("removing the uncompressed memory"))?;
            oplog(
                paths,
                &format!(
                    "standby: memory compressed ({:?}) from {} to {} MiB in {} ms",
                    c.algorithm,
                    uncompressed >> 20,
                    compressed >> 20,
                    started.elapsed().as_millis()
                ),
            );
        }
        Err(e) => {
            if let Err(c) = std::fs::remove_file(&partial) {
                if c.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {c}", partial.display());
                }
            }
            record.state = CompressionState::Error;
            record.error = Some(e.clone());
            store::save(paths, &meta).map_err(io("writing instance record"))?;
            oplog(paths, &format!("standby: compression failed: {e}"));
        }
    }
    Ok(())
}

/// Bytes a (possibly sparse) file holds: allocated blocks, or its length.
fn allocated_or_len(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| (m.blocks() * 512).min(m.len()))
}

/// Makes the saved state usable again (call under the instance lock):
/// a compressed memory is decompressed and the record updated; one whose
/// compression never finished (or failed) is simply used as it is.
pub(super) async fn ensure_uncompressed(paths: &Paths, meta: &mut Metadata) -> Result<()> {
    let Some(saved) = meta.standby.snapshot.as_mut() else {
        return Ok(());
    };
    let Some(c) = saved.compression.take() else {
        return Ok(());
    };
    let file = paths.dir.join(target(saved));
    let packed = compressed_path(&file, c.algorithm);
    if c.state == CompressionState::Compressed {
        let started = std::time::Instant::now();
        let partial = partial_path(&file);
        run(&decompress_argv(c.algorithm, &packed, &partial))
            .await
            .map_err(|e| Error::Io {
                context: "decompressing the saved memory".into(),
                source: std::io::Error::other(e),
            })?;
        std::fs::rename(&partial, &file).map_err(io("keeping the decompressed memory"))?;
        oplog(
            paths,
            &format!(
                "restore: memory decompressed in {} ms",
                started.elapsed().as_millis()
            ),
        );
    }
    // Leftovers of an unfinished run go too.
    for leftover in [partial_path(&packed), packed] {
        if let Err(e) = std::fs::remove_file(&leftover) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io(format!("removing {}", leftover.display()))(e));
            }
        }
    }
    store::save(paths, meta).map_err(io("writing instance record"))
}

/// Records that a saved state is to be compressed (before [`spawn`]).
pub(super) fn mark(saved: &mut SavedState, spec: &CompressionSpec) {
    saved.compression = Some(Compression {
        algorithm: spec.algorithm,
        level: spec.level,
        state: CompressionState::Compressing,
        uncompressed_bytes: None,
        compressed_bytes: None,
        error: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_hypemans_ranges() {
        let z = CompressionSpec::new(CompressionAlgorithm::Zstd, None, Duration::ZERO);
        assert_eq!(z.map(|s| s.level), Ok(1));
        let l = CompressionSpec::new(CompressionAlgorithm::Lz4, None, Duration::ZERO);
        assert_eq!(l.map(|s| s.level), Ok(0));
        assert!(
            CompressionSpec::new(CompressionAlgorithm::Zstd, Some(20), Duration::ZERO).is_err()
        );
        assert!(CompressionSpec::new(CompressionAlgorithm::Lz4, Some(10), Duration::ZERO).is_err());
    }

    #[test]
    fn commands_name_their_files() {
        let c = Compression {
            algorithm: CompressionAlgorithm::Lz4,
            level: 0,
            state: CompressionState::Compressing,
            uncompressed_bytes: None,
            compressed_bytes: None,
            error: None,
        };
        let from = Path::new("/d/memory.ram");
        let to = compressed_path(from, c.algorithm);
        assert_eq!(to, Path::new("/d/memory.ram.lz4"));
        let argv = compress_argv(&c, from, &partial_path(&to));
        assert_eq!(
            argv,
            [
                "lz4",
                "-q",
                "-f",
                "-1",
                "/d/memory.ram",
                "/d/memory.ram.lz4.partial"
            ]
        );
        let argv = decompress_argv(CompressionAlgorithm::Zstd, &to, from);
        assert_eq!(
            argv,
            [
                "zstd",
                "-d",
                "-q",
                "-f",
                "--sparse",
                "/d/memory.ram.lz4",
                "-o",
                "/d/memory.ram"
            ]
        );
    }
}
