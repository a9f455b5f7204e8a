//! Writing files so that a reader, a crash or a concurrent writer never sees
//! half of one.
//!
//! Both operations write the bytes to a temporary file with a name no other
//! process or thread can pick (pid, a per-process counter and the clock,
//! created with `O_EXCL`), in the same directory as the target so the final
//! step is a same-filesystem `rename`/`link`:
//!
//! - [`write_atomic`] replaces the target (`rename`): last writer wins.
//! - [`create_once`] publishes the target only if it does not exist yet
//!   (`link` fails with `EEXIST` when another process won) and returns
//!   whichever contents ended up there: first writer wins, everyone agrees.
//!
//! A fixed temporary name (`x.tmp`) is what let a CLI delete the daemon's
//! half-made JWT secret; never use one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Distinguishes temporary names made by threads of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many fresh names [`create_temp`] tries before giving up.
const NAME_ATTEMPTS: u32 = 16;

/// Prefix of every temporary file made here (`.<name>.tmp-…`), so sweepers
/// can recognise debris left by a crash.
pub fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tmp-")
}

/// A unique temporary path next to `target`.
fn temp_name(target: &Path) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{}{}-{n}-{nanos:08x}",
        temp_prefix(target),
        std::process::id()
    );
    target.with_file_name(name)
}

/// Creates a new file next to `target` under a unique name, with `mode`.
fn create_temp(target: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..NAME_ATTEMPTS {
        let tmp = temp_name(target);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// Writes `bytes` to a fresh temporary next to `target` and fsyncs it.
fn write_temp(target: &Path, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    let (tmp, mut file) = create_temp(target, mode)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => Err(discard(&tmp, e)),
    }
}

/// Removes `tmp` after `err`; a failed removal is added to the error.
fn discard(tmp: &Path, err: io::Error) -> io::Error {
    match fs::remove_file(tmp) {
        Ok(()) => err,
        Err(cleanup) => io::Error::new(
            err.kind(),
            format!("{err} (and removing {}: {cleanup})", tmp.display()),
        ),
    }
}

/// Replaces `path` with `bytes` atomically: readers see the old file or the
/// new one, never a mix. The new file gets mode 0644 (before umask).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o644)
}

/// [`write_atomic`] with an explicit file mode.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = write_temp(path, bytes, mode)?;
    fs::rename(&tmp, path).map_err(|e| discard(&tmp, e))
}

/// [`write_atomic`] for contents produced by streaming into the file
/// (`fill` writes and flushes whatever buffering it adds); mode 0644.
pub fn write_atomic_with<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    let (tmp, mut file) = create_temp(path, 0o644)?;
    let filled = fill(&mut file).and_then(|()| file.sync_all());
    drop(file);
    match filled {
        Ok(()) => fs::rename(&tmp, path).map_err(|e| discard(&tmp, e)),
        Err(e) => Err(discard(&tmp, e)),
    }
}

/// Creates `path` holding `bytes` (mode `mode`) unless it already exists,
/// and returns the contents that ended up there: `bytes` if this call won,
/// the winner's otherwise. Safe against any number of concurrent callers
/// in any processes: the file appears fully written or not at all.
///
/// An existing empty file is an error (`InvalidData`), not something to
/// silently agree on.
pub fn create_once(path: &Path, bytes: &[u8], mode: u32) -> io::Result<Vec<u8>> {
    let read_existing = || match fs::read(path) {
        Ok(existing) if existing.is_empty() => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} exists but is empty", path.display()),
        )),
        Ok(existing) => Ok(Some(existing)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    if let Some(existing) = read_existing()? {
        return Ok(existing);
    }
    let tmp = write_temp(path, bytes, mode)?;
    let linked = fs::hard_link(&tmp, path);
    fs::remove_file(&tmp)?;
    match linked {
        Ok(()) => Ok(bytes.to_vec()),
        // Someone else published first, with a complete file: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_existing()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} vanished", path.display()),
            )
        }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Barrier};

    fn entries(dir: &Path) -> io::Result<Vec<String>> {
        let mut names = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("record.json");
        write_atomic(&path, b"one")?;
        write_atomic(&path, b"two")?;
        assert_eq!(fs::read(&path)?, b"two");
        assert_eq!(entries(dir.path())?, ["record.json"]);
        Ok(())
    }

    #[test]
    fn write_atomic_with_streams_and_cleans_up_on_error() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("image.tar");
        write_atomic_with(&path, |f| f.write_all(b"streamed"))?;
        assert_eq!(fs::read(&path)?, b"streamed");
        let failed = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("boom"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&path)?, b"streamed", "the old file stays");
        assert_eq!(entries(dir.path())?, ["image.tar"]);
        Ok(())
    }

    #[test]
    fn write_atomic_mode_sets_mode() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        write_atomic_mode(&path, b"s", 0o600)?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        Ok(())
    }

    #[test]
    fn write_atomic_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no/such/dir/file");
        assert_eq!(
            write_atomic(&path, b"x").map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn temporary_names_are_unique_and_recognisable() {
        let target = Path::new("/d/jwt-secret");
        let a = temp_name(target);
        let b = temp_name(target);
        assert_ne!(a, b);
        for t in [a, b] {
            assert_eq!(t.parent(), Some(Path::new("/d")));
            let name = t.file_name().map(|n| n.to_string_lossy().into_owned());
            assert!(name.is_some_and(|n| n.starts_with(".jwt-secret.tmp-")));
        }
    }

    #[test]
    fn create_once_keeps_the_first() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        assert_eq!(create_once(&path, b"first", 0o600)?, b"first");
        assert_eq!(create_once(&path, b"second", 0o600)?, b"first");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(entries(dir.path())?, ["secret"]);
        Ok(())
    }

    #[test]
    fn create_once_refuses_an_empty_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        fs::write(&path, b"")?;
        assert_eq!(
            create_once(&path, b"x", 0o600).map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidData)
        );
        Ok(())
    }

    #[test]
    fn concurrent_create_once_agrees_on_one_winner() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        for round in 0..20 {
            let path = Arc::new(dir.path().join(format!("secret-{round}")));
            let barrier = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8u8)
                .map(|i| {
                    let (path, barrier) = (Arc::clone(&path), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        create_once(&path, &[b'a' + i; 16], 0o600)
                    })
                })
                .collect();
            let mut seen = Vec::new();
            for t in threads {
                seen.push(
                    t.join()
                        .map_err(|_| io::Error::other("thread panicked"))??,
                );
            }
            let on_disk = fs::read(path.as_path())?;
            assert!(seen.iter().all(|s| *s == on_disk), "round {round}");
        }
        let names = entries(dir.path())?;
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
        Ok(())
    }
}
