//! Checks done before the monitor creates anything: a bad flag must leave
//! the log directory exactly as it was and exit with a one-line error.
//!
//! The command is looked up on `PATH` here (as `execvp` would) rather than
//! learned from a failed spawn, because the spawn comes after the directory
//! lock is taken: spawning first would start a second VMM on the same disk
//! whenever another monitor already owns the directory.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::{Config, MonitorError};

/// Search path when `PATH` is unset, as glibc's `execvp` uses.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub(crate) fn validate(config: &Config) -> Result<(), MonitorError> {
    if config.max_size == 0 {
        return Err(MonitorError::ZeroMaxSize);
    }
    if config.max_files == 0 {
        return Err(MonitorError::ZeroMaxFiles);
    }
    if let Some(fd) = config.status_fd {
        if fd < 3 {
            return Err(MonitorError::StatusFd(fd));
        }
    }
    if let Some(fd) = config.console_fd {
        if fd < 3 || Some(fd) == config.status_fd {
            return Err(MonitorError::ConsoleFd(fd));
        }
    }
    let Some(program) = config.command.first() else {
        return Err(MonitorError::NoCommand);
    };
    check_dir(&config.log_dir)?;
    if resolve(program).is_none() {
        return Err(MonitorError::CommandNotFound(
            program.to_string_lossy().into_owned(),
        ));
    }
    if config.compression == lodge_logs::Compression::Zstd && resolve(OsStr::new("zstd")).is_none()
    {
        return Err(MonitorError::NoZstd);
    }
    Ok(())
}

fn check_dir(dir: &Path) -> Result<(), MonitorError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(MonitorError::NotADirectory(dir.to_owned())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(MonitorError::NoDirectory(dir.to_owned()))
        }
        Err(source) => {
            return Err(MonitorError::DirUnusable {
                path: dir.to_owned(),
                source,
            })
        }
    }
    probe_writable(dir).map_err(|source| MonitorError::DirNotWritable {
        path: dir.to_owned(),
        source,
    })
}

/// Creates a file in `dir` to see whether we may. `access(2)` is not enough:
/// root passes it even on a read-only mount. An `O_TMPFILE` file has no name,
/// so nothing appears in the directory; filesystems without `O_TMPFILE` get
/// a named probe that is removed at once.
fn probe_writable(dir: &Path) -> io::Result<()> {
    let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o600)) {
        Ok(_fd) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
            let probe = dir.join(format!(".lodge-write-probe.{}", std::process::id()));
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)?;
            fs::remove_file(&probe)
        }
        Err(err) => Err(err.into()),
    }
}

/// Where `execvp` would find `program`, if anywhere.
fn resolve(program: &OsStr) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        assert!(resolve(OsStr::new("sh")).is_some());
        assert!(resolve(OsStr::new("/bin/sh")).is_some());
        assert!(resolve(OsStr::new("lodge-no-such-command")).is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain");
        fs::write(&plain, b"").expect("write");
        assert!(resolve(plain.as_os_str()).is_none(), "not executable");
        assert!(resolve(OsStr::new("/")).is_none(), "a directory");
        assert!(resolve(OsStr::new("")).is_none());
    }

    #[test]
    fn writable_probe_leaves_nothing() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        probe_writable(dir.path())?;
        assert_eq!(fs::read_dir(dir.path())?.count(), 0);
        Ok(())
    }
}
