//! The two small JSON files through which the monitor talks to the daemon:
//! `monitor.json` (who is running, written once the child started) and
//! `exit.json` (how the child ended, written after its output was saved).
//!
//! Both are written with lodge-common's atomic write (unique temporary
//! name, fsync, rename), so a reader sees either no file or a whole one.
//! Times use lodge-common's RFC 3339 format (UTC, milliseconds). Readers
//! (the daemon) use [`read_monitor_info`] and [`read_exit_info`], so the
//! format has one owner: the writer's own types.

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Name of the file describing the running monitor.
pub const MONITOR_JSON: &str = "monitor.json";
/// Name of the file recording how the command ended.
pub const EXIT_JSON: &str = "exit.json";

/// Contents of `monitor.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// The monitor's own pid (holder of `monitor.lock`).
    pub pid: u32,
    /// The supervised command; also its process group id.
    pub child_pid: u32,
    /// When the command was started.
    pub started_at: String,
    /// The command's start time in clock ticks after boot (field 22 of
    /// `/proc/PID/stat`): with `child_pid` it names the process for good,
    /// so a reused pid is never taken for it. Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_start_ticks: Option<u64>,
    /// The same for the monitor itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_start_ticks: Option<u64>,
}

/// Contents of `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, if the command exited.
    pub code: Option<i32>,
    /// Signal number, if the command was killed by one.
    pub signal: Option<i32>,
    /// When the command was started.
    pub started_at: String,
    /// When the command ended.
    pub finished_at: String,
}

impl ExitInfo {
    /// The exit code a shell would report: the code, or 128 + signal.
    pub fn shell_code(&self) -> u8 {
        match (self.code, self.signal) {
            // Exit codes are 0..=255 on Linux; the mask documents the truncation.
            (Some(code), _) => (code & 0xff) as u8,
            (None, Some(signal)) => (128 + (signal & 0x7f)) as u8,
            (None, None) => 1,
        }
    }
}

/// Reads `dir/monitor.json`: `Ok(None)` when there is none (the monitor
/// has not started its command yet, or never ran).
pub fn read_monitor_info(dir: &Path) -> io::Result<Option<MonitorInfo>> {
    read_json(dir, MONITOR_JSON)
}

/// Reads `dir/exit.json`: `Ok(None)` while the command runs or never ran.
pub fn read_exit_info(dir: &Path) -> io::Result<Option<ExitInfo>> {
    read_json(dir, EXIT_JSON)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> io::Result<Option<T>> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {err}", path.display()),
        )
    })
}

/// The start time of process `pid` in clock ticks after boot (field 22 of
/// `/proc/PID/stat`), or `None` if there is no such process. A zombie
/// counts as gone: it runs nothing and holds nothing.
pub fn process_start_ticks(pid: u32) -> io::Result<Option<u64>> {
    let text = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat"));
    // The command name is in parentheses and may hold anything, so count
    // fields from its closing parenthesis: state is field 3, starttime 22.
    let rest = text.rsplit_once(") ").ok_or_else(bad)?.1;
    let mut fields = rest.split_ascii_whitespace();
    if fields.next() == Some("Z") {
        return Ok(None);
    }
    let start = fields.nth(22 - 4).ok_or_else(bad)?;
    start.parse().map(Some).map_err(|_| bad())
}

pub(crate) fn rfc3339(time: SystemTime) -> String {
    lodge_common::time::rfc3339(time)
}

/// Writes `value` as `dir/name` atomically (temporary file + rename).
pub(crate) fn write_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let mut json = serde_json::to_vec(value).map_err(io::Error::other)?;
    json.push(b'\n');
    lodge_common::fsutil::write_atomic(&dir.join(name), &json)
}

/// Removes `dir/name` if present.
pub(crate) fn remove_if_present(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(name)) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes() {
        let exit = |code, signal| ExitInfo {
            code,
            signal,
            started_at: String::new(),
            finished_at: String::new(),
        };
        assert_eq!(exit(Some(0), None).shell_code(), 0);
        assert_eq!(exit(Some(3), None).shell_code(), 3);
        assert_eq!(exit(None, Some(9)).shell_code(), 137);
        assert_eq!(exit(None, Some(15)).shell_code(), 143);
    }

    #[test]
    fn atomic_write_replaces() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let info = MonitorInfo {
            pid: 1,
            child_pid: 2,
            started_at: rfc3339(SystemTime::UNIX_EPOCH),
            child_start_ticks: None,
            monitor_start_ticks: None,
        };
        write_atomic(dir.path(), MONITOR_JSON, &info)?;
        write_atomic(dir.path(), MONITOR_JSON, &info)?;
        let text = fs::read_to_string(dir.path().join(MONITOR_JSON))?;
        assert_eq!(
            text,
            "{\"pid\":1,\"child_pid\":2,\"started_at\":\"1970-01-01T00:00:00.000Z\"}\n"
        );
        assert_eq!(fs::read_dir(dir.path())?.count(), 1, "no temporary left");
        Ok(())
    }

    #[test]
    fn start_ticks_name_a_live_process() -> io::Result<()> {
        let me = std::process::id();
        let a = process_start_ticks(me)?;
        assert!(a.is_some());
        assert_eq!(process_start_ticks(me)?, a, "stable");
        let mut child = std::process::Command::new("true").spawn()?;
        let pid = child.id();
        // Exited but unreaped: a zombie, which counts as gone.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(process_start_ticks(pid)?, None);
        child.wait()?;
        assert_eq!(process_start_ticks(pid)?, None);
        Ok(())
    }

    #[test]
    fn readers_see_none_a_record_or_invalid_data() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(read_monitor_info(dir.path())?, None);
        assert_eq!(read_exit_info(dir.path())?, None);
        let exit = ExitInfo {
            code: Some(3),
            signal: None,
            started_at: rfc3339(SystemTime::UNIX_EPOCH),
            finished_at: rfc3339(SystemTime::UNIX_EPOCH),
        };
        write_atomic(dir.path(), EXIT_JSON, &exit)?;
        assert_eq!(read_exit_info(dir.path())?, Some(exit));
        fs::write(dir.path().join(MONITOR_JSON), b"{not json")?;
        let err = read_monitor_info(dir.path()).expect_err("garbage");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        Ok(())
    }
}
