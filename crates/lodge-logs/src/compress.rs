//! Compression of rotated segments (`LODGE_LOG_COMPRESS=zstd`): done by
//! the writer's process after rotation, off the capture path, atomically.
//!
//! The work runs in the `zstd` tool, a child process, so the monitor's
//! own memory stays within its budget whatever the segment size; a
//! thread of the writer (small stack) waits for it and does the steps
//! around it, one segment at a time, in rotation order:
//!
//! 1. `zstd -o <segment>.zst.tmp <segment>` (readers never open a `.tmp`);
//! 2. fsync the `.tmp`; if it is not smaller than the segment, drop it and
//!    keep the plain one (incompressible output gains nothing);
//! 3. rename it to `<segment>.zst`, then fsync the directory;
//! 4. remove the plain `<segment>`.
//!
//! Between 3 and 4 both forms exist with the same bytes; readers name a
//! segment by its number and read one form (see `stored`), so they never
//! see a byte twice and, since the `.zst` is complete before the plain
//! file goes, never miss one. A crash anywhere leaves one of: the plain
//! segment and maybe a partial `.tmp`; both forms; the `.zst` alone. The
//! next [`recover`] (when the writer opens) removes a `.tmp` and, where
//! both forms exist, the plain one; a plain segment left over is
//! compressed again when compression is on.
//!
//! Retention deletes segments from the writer's thread while this thread
//! renames: both take one mutex around their file operations, and this
//! thread renames only while the plain segment still exists, so a pruned
//! segment never comes back as an orphan `.zst`. While one segment is
//! being compressed, its `.tmp` is on disk besides the retained segments:
//! disk use may exceed G3's bound by at most one segment for that time.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use crate::segment::{parse_segment_name, segment_name, ZST};
use crate::stored::{tmp_name, zst_name, ZST_TMP};

/// The `zstd` compression level: fast (hundreds of MB/s), and log text
/// still shrinks several times.
const LEVEL: &str = "-3";

/// How rotated segments are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// As written (the default).
    #[default]
    Off,
    /// Compressed with zstd after rotation (`<segment>.zst`).
    Zstd,
}

/// An unknown `LODGE_LOG_COMPRESS` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log compression {0:?} (use zstd or off)")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    /// `zstd`; `off`, `none` or empty for none.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "" | "off" | "none" => Ok(Compression::Off),
            _ => Err(UnknownCompression(s.to_owned())),
        }
    }
}

/// The lock that retention and the compressor's renames share.
pub(crate) type DirLock = Arc<Mutex<()>>;

/// Tidies what an interrupted compression left in `dir` for `base`:
/// removes `.zst.tmp` files, and plain segments that also exist
/// compressed. Returns the first error; continues past it.
pub(crate) fn recover(dir: &Path, base: &str) -> io::Result<()> {
    let mut first_err = None;
    let mut note = |err: io::Error| {
        if err.kind() != io::ErrorKind::NotFound {
            first_err.get_or_insert(err);
        }
    };
    for entry in dir.read_dir()? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(plain) = name.strip_suffix(ZST_TMP) {
            if parse_segment_name(base, plain.as_ref()).is_some() {
                if let Err(err) = fs::remove_file(dir.join(name)) {
                    note(err);
                }
            }
        } else if let Some(plain) = name.strip_suffix(ZST) {
            if parse_segment_name(base, plain.as_ref()).is_some() {
                match fs::remove_file(dir.join(plain)) {
                    Ok(()) => {}
                    Err(err) => note(err),
                }
            }
        }
    }
    match first_err {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Removes every form of segment `seq` (plain, compressed, partial);
/// `NotFound` is no error. The caller holds the [`DirLock`] if any.
pub(crate) fn remove_segment(dir: &Path, base: &str, seq: u64) -> io::Result<()> {
    let mut first_err = None;
    for name in [
        segment_name(base, seq),
        zst_name(base, seq),
        tmp_name(base, seq),
    ] {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                first_err.get_or_insert(err);
            }
        }
    }
    match first_err {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// The thread that compresses rotated segments, in order.
#[derive(Debug)]
pub(crate) struct Compressor {
    tx: Sender<u64>,
    handle: JoinHandle<()>,
    error: Arc<Mutex<Option<io::Error>>>,
}

impl Compressor {
    pub(crate) fn spawn(dir: &Path, base: &'static str, lock: DirLock) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<u64>();
        let error = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&error);
        let dir = dir.to_owned();
        let handle = thread::Builder::new()
            .name("log-compress".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                for seq in rx {
                    if let Err(err) = compress_one(&dir, base, seq, &lock) {
                        slot.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(err);
                    }
                }
            })?;
        Ok(Compressor { tx, handle, error })
    }

    /// Queues segment `seq`. Gives it back if the thread is gone.
    pub(crate) fn send(&self, seq: u64) -> Result<(), u64> {
        self.tx.send(seq).map_err(|err| err.0)
    }

    pub(crate) fn take_error(&self) -> Option<io::Error> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Waits until every queued segment is done.
    pub(crate) fn join(self) -> io::Result<()> {
        drop(self.tx);
        if self.handle.join().is_err() {
            return Err(io::Error::other("log compression thread panicked"));
        }
        match self
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// The steps of the module comment for one segment. A file that vanished
/// under us because retention deleted the segment is no error.
fn compress_one(dir: &Path, base: &str, seq: u64, lock: &DirLock) -> io::Result<()> {
    match compress_steps(dir, base, seq, lock) {
        Err(err)
            if err.kind() == io::ErrorKind::NotFound
                && !dir.join(segment_name(base, seq)).exists() =>
        {
            discard(&dir.join(tmp_name(base, seq)))
        }
        other => other,
    }
}

fn compress_steps(dir: &Path, base: &str, seq: u64, lock: &DirLock) -> io::Result<()> {
    let plain = dir.join(segment_name(base, seq));
    let tmp = dir.join(tmp_name(base, seq));
    let zst = dir.join(zst_name(base, seq));
    let plain_len = match fs::metadata(&plain) {
        Ok(meta) => meta.len(),
        // Deleted by retention (or compressed by an earlier run) already.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let status = Command::new("zstd")
        .args(["-q", "-f", "-T1", LEVEL, "-o"])
        .arg(&tmp)
        .arg("--")
        .arg(&plain)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let status = match status {
        Ok(status) => status,
        Err(err) => {
            return Err(io::Error::new(
                err.kind(),
                format!("cannot run zstd to compress {}: {err}", plain.display()),
            ))
        }
    };
    if !status.success() {
        discard(&tmp)?;
        if !plain.exists() {
            return Ok(());
        }
        return Err(io::Error::other(format!(
            "zstd failed ({status}) on {}",
            plain.display()
        )));
    }
    let file = fs::File::open(&tmp)?;
    file.sync_all()?;
    if file.metadata()?.len() >= plain_len {
        drop(file);
        return discard(&tmp);
    }
    drop(file);
    {
        let _held = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !plain.exists() {
            // Retention took the segment while we compressed it.
            return discard(&tmp);
        }
        fs::rename(&tmp, &zst)?;
    }
    sync_dir(dir)?;
    let _held = lock.lock().unwrap_or_else(PoisonError::into_inner);
    match fs::remove_file(&plain) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

fn discard(tmp: &PathBuf) -> io::Result<()> {
    match fs::remove_file(tmp) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        read_all, read_window, Follow, Follower, MonitorLock, ReadError, RotatingWriter, Source,
        Tail, Window,
    };
    use std::io::Write;
    use std::time::Duration;

    fn numbers(from: u64, to: u64) -> Vec<u8> {
        (from..=to)
            .flat_map(|i| format!("line number {i}\n").into_bytes())
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Everything a reader can ask of a log directory, as bytes.
    fn views(dir: &Path) -> Result<Vec<Vec<u8>>, ReadError> {
        let mut out = vec![read_all(dir, Source::App)?];
        for n in [0u64, 1, 10, 1000, 5000] {
            let mut f = Follower::open(dir, Source::App, Tail::Lines(n), Follow::No)?;
            let mut bytes = Vec::new();
            while let Some(chunk) = f.next_blocking()? {
                bytes.extend(chunk);
            }
            out.push(bytes);
        }
        for tail in [Tail::All, Tail::Lines(7), Tail::Lines(3000)] {
            let lines = read_window(dir, Source::App, Window::default(), tail)?;
            out.push(lines.into_iter().flat_map(|l| l.bytes).collect());
        }
        Ok(out)
    }

    /// The same writes with and without compression: the same files
    /// (compressed where it pays), the same bytes for every reader, and a
    /// follower running through the compressions gets every byte once.
    #[test]
    fn compressed_logs_read_like_plain_ones() -> Result<(), Box<dyn std::error::Error>> {
        let want = numbers(1, 40_000);
        let mut results = Vec::new();
        for compression in [Compression::Off, Compression::Zstd] {
            let dir = tempfile::tempdir()?;
            let lock = MonitorLock::acquire(dir.path(), Duration::ZERO)?.ok_or("locked")?;
            let mut w = RotatingWriter::open(dir.path(), Source::App, 32 * 1024, 1000)?
                .time_index(true)
                .compress(compression);
            let follower =
                Follower::open(dir.path(), Source::App, Tail::All, Follow::UntilWriterExits)?;
            let reader = thread::spawn(move || -> Result<Vec<u8>, ReadError> {
                let mut follower = follower;
                let mut out = Vec::new();
                while let Some(chunk) = follower.next_blocking()? {
                    out.extend(chunk);
                }
                Ok(out)
            });
            for (i, chunk) in want.chunks(997).enumerate() {
                w.write_all(chunk)?;
                if i % 100 == 0 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            w.finish()?;
            drop(lock);
            let followed = reader.join().map_err(|_| "reader panicked")??;
            assert!(followed == want, "follower through {compression:?}");
            let files = names(dir.path());
            let zst = files.iter().filter(|n| n.ends_with(".zst")).count();
            match compression {
                Compression::Off => assert_eq!(zst, 0),
                Compression::Zstd => {
                    assert!(zst >= 15, "{files:?}");
                    assert!(
                        !files.iter().any(|n| n.ends_with(".tmp")
                            || (n.starts_with("app.log.") && !n.ends_with(".zst"))),
                        "{files:?}"
                    );
                }
            }
            let v = views(dir.path())?;
            assert!(v[0] == want);
            results.push(v);
        }
        assert!(
            results[0] == results[1],
            "plain and compressed views differ"
        );
        Ok(())
    }

    /// Every state an interrupted compression can leave behind reads as
    /// the log, and recovery (the writer opening) tidies it to that log.
    #[test]
    fn every_interrupted_state_reads_whole() -> Result<(), Box<dyn std::error::Error>> {
        let want = numbers(1, 3000);
        let base = tempfile::tempdir()?;
        let mut w = RotatingWriter::open(base.path(), Source::App, 8 * 1024, 100)?;
        w.write_all(&want)?;
        w.finish()?;
        let seqs = crate::segment::list_segments(base.path(), "app.log")?;
        assert!(seqs.len() >= 3);
        let mid = seqs[1];
        let plain_name = segment_name("app.log", mid);
        let plain_bytes = fs::read(base.path().join(&plain_name))?;
        type MakeState<'a> = &'a dyn Fn(&Path) -> io::Result<()>;
        let states: [(&str, MakeState); 4] = [
            ("partial tmp", &|d: &Path| {
                fs::write(d.join(tmp_name("app.log", mid)), &plain_bytes[..100])
            }),
            ("both forms", &|d: &Path| {
                crate::stored::tests::zstd_file(d, &zst_name("app.log", mid), &plain_bytes)
            }),
            ("zst only", &|d: &Path| {
                crate::stored::tests::zstd_file(d, &zst_name("app.log", mid), &plain_bytes)?;
                fs::remove_file(d.join(&plain_name))
            }),
            ("zst and a stale tmp", &|d: &Path| {
                crate::stored::tests::zstd_file(d, &zst_name("app.log", mid), &plain_bytes)?;
                fs::remove_file(d.join(&plain_name))?;
                fs::write(d.join(tmp_name("app.log", mid)), b"junk")
            }),
        ];
        for (what, make) in states {
            let dir = tempfile::tempdir()?;
            for name in names(base.path()) {
                fs::copy(base.path().join(&name), dir.path().join(&name))?;
            }
            make(dir.path())?;
            let before = views(dir.path())?;
            assert!(before[0] == want, "{what}: read before recovery");
            for compression in [Compression::Off, Compression::Zstd] {
                let w = RotatingWriter::open(dir.path(), Source::App, 8 * 1024, 100)?
                    .compress(compression);
                w.finish()?;
                let files = names(dir.path());
                assert!(
                    !files.iter().any(|n| n.ends_with(".tmp")),
                    "{what}: {files:?}"
                );
                assert!(views(dir.path())? == before, "{what}: read after recovery");
            }
            let files = names(dir.path());
            assert!(
                !files
                    .iter()
                    .any(|n| n.starts_with("app.log.") && !n.ends_with(".zst")),
                "{what}: all compressed in the end: {files:?}"
            );
        }
        Ok(())
    }

    /// Retention deleting segments while they are being compressed
    /// leaves no orphan `.zst` behind.
    #[test]
    fn retention_during_compression_leaves_no_orphans() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut w =
            RotatingWriter::open(dir.path(), Source::App, 4096, 2)?.compress(Compression::Zstd);
        let want = numbers(1, 20_000);
        w.write_all(&want)?;
        w.finish()?;
        let segs = crate::segment::list_segments(dir.path(), "app.log")?;
        assert_eq!(segs.len(), 2, "{:?}", names(dir.path()));
        let files = names(dir.path());
        assert_eq!(files.len(), 3, "{files:?}");
        let all = read_all(dir.path(), Source::App)?;
        assert!(want.ends_with(&all));
        assert_eq!(all.len(), 2 * 4096 + (want.len() % 4096));
        Ok(())
    }

    #[test]
    fn parses_the_setting() {
        assert_eq!("zstd".parse(), Ok(Compression::Zstd));
        assert_eq!("off".parse(), Ok(Compression::Off));
        assert_eq!("".parse(), Ok(Compression::Off));
        assert!("gzip".parse::<Compression>().is_err());
    }
}
