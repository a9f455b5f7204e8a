//! The monitor's lock file: who writes a log directory, and whether it still
//! does.
//!
//! The monitor holds an exclusive `flock` on `DIR/monitor.lock` for its whole
//! life. The kernel drops the lock when the process dies, however it dies
//! (even SIGKILL), and closing the descriptor, which it had open for writing,
//! raises `IN_CLOSE_WRITE` on the directory: that is what wakes followers
//! waiting for the end of the log.
//!
//! The kernel queues that close event *before* it drops the lock of a
//! process that dies, so a follower woken by it may still see the lock
//! held. A monitor that ends normally therefore unlocks before it closes
//! (see `Drop`), and a follower woken by a close while the lock still looks
//! held re-checks a few times (see `follow.rs`).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

/// Name of the lock file inside a log directory.
pub const MONITOR_LOCK: &str = "monitor.lock";

/// Whether a monitor currently holds the lock of `dir`.
///
/// Takes a shared lock for an instant to find out; a monitor starting at
/// that very instant must therefore retry its own exclusive lock briefly
/// (see [`MonitorLock::acquire`]).
pub fn monitor_alive(dir: &Path) -> io::Result<bool> {
    let file = match File::open(dir.join(MONITOR_LOCK)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        // Free; dropping `file` releases our shared lock.
        Ok(()) => Ok(false),
        Err(Errno::WOULDBLOCK) => Ok(true),
        Err(err) => Err(err.into()),
    }
}

/// The exclusive lock a monitor holds on its log directory. Released when
/// dropped or when the process exits.
#[derive(Debug)]
pub struct MonitorLock {
    file: File,
}

impl Drop for MonitorLock {
    fn drop(&mut self) {
        // Unlock first, so the close event that follows finds the lock free.
        // Should this fail, the kernel still releases the lock at close; a
        // follower then relies on its re-check.
        let unlocked = flock(&self.file, FlockOperation::Unlock);
        debug_assert!(unlocked.is_ok(), "unlock: {unlocked:?}");
    }
}

impl MonitorLock {
    /// Takes the lock of `dir`, creating the lock file if needed (never
    /// truncating it). Returns `Ok(None)` if another process holds it.
    ///
    /// Readers probing with [`monitor_alive`] hold a shared lock for a few
    /// microseconds, so a busy lock is retried for `patience` before we
    /// conclude that another monitor owns the directory.
    pub fn acquire(dir: &Path, patience: std::time::Duration) -> io::Result<Option<Self>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(MONITOR_LOCK))?;
        let deadline = std::time::Instant::now() + patience;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(MonitorLock { file })),
                Err(Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(Errno::WOULDBLOCK) => return Ok(None),
                Err(Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lock_lifecycle() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(!monitor_alive(dir.path())?, "no lock file: nobody");
        let lock = MonitorLock::acquire(dir.path(), Duration::ZERO)?.expect("free");
        assert!(monitor_alive(dir.path())?);
        assert!(
            MonitorLock::acquire(dir.path(), Duration::from_millis(20))?.is_none(),
            "second owner refused"
        );
        drop(lock);
        assert!(!monitor_alive(dir.path())?);
        assert!(dir.path().join(MONITOR_LOCK).exists());
        Ok(())
    }
}
