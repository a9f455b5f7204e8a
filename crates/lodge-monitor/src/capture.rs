//! `capture.json`: whether console capture is keeping up, for the daemon to
//! show as the instance's `state_error`.
//!
//! The record matters most when the disk is full, which is exactly when a
//! new file (or the atomic write's temporary) cannot be created. So the
//! monitor writes it once at start with a fixed size ([`RECORD_SIZE`]
//! bytes, JSON padded with spaces) and afterwards only overwrites those
//! same bytes in place (`pwrite` at offset 0): blocks already allocated
//! need no free space, on tmpfs and ext4 alike. A reader may rarely see a
//! torn record (the write is one small `pwrite`, not atomic by contract); it
//! then fails to parse and is treated as unknown, never as wrong.
//!
//! Every write here is fallible and its failure is only remembered: the
//! record is an advisory view, and capture must go on without it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Name of the capture record in the log directory.
pub const CAPTURE_JSON: &str = "capture.json";
/// Fixed size of the record on disk.
const RECORD_SIZE: usize = 1024;
/// Longest error text kept per stall, so two stalls always fit.
const MAX_ERROR: usize = 200;

/// Contents of `capture.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureInfo {
    /// Logs whose writes are failing right now; empty when all is well.
    pub stalled: Vec<Stall>,
}

/// One log whose output is being held because writing it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stall {
    /// The log's name: `app` or `vmm`.
    pub source: String,
    /// When its writes started failing (RFC 3339).
    pub since: String,
    /// The write error, e.g. "No space left on device (os error 28)".
    pub error: String,
}

/// Reads `dir/capture.json`: `Ok(None)` when there is none.
pub fn read_capture_info(dir: &Path) -> io::Result<Option<CaptureInfo>> {
    crate::status::read_json(dir, CAPTURE_JSON)
}

/// The monitor's side: keeps the record and rewrites it on every change.
#[derive(Debug)]
pub(crate) struct Capture {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: Option<File>,
    info: CaptureInfo,
    /// Whether the record on disk is out of date (a write failed).
    dirty: bool,
}

impl Capture {
    /// Creates the record (all well) in `dir`. Failing to is not fatal: it
    /// is retried on every change.
    pub(crate) fn create(dir: &Path) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            // At start the disk normally has room; a stale, longer record
            // must not leave its tail behind ours.
            .truncate(true)
            .mode(0o644)
            .open(dir.join(CAPTURE_JSON));
        let capture = Capture {
            inner: Mutex::new(Inner {
                file: None,
                info: CaptureInfo::default(),
                dirty: true,
            }),
        };
        match file {
            Ok(file) => {
                let mut inner = capture.lock();
                inner.file = Some(file);
                inner.store();
            }
            Err(err) => crate::diag::diag(format_args!("cannot create {CAPTURE_JSON}: {err}")),
        }
        capture
    }

    /// Records that writes to `source` fail with `err` (first failure only).
    pub(crate) fn stalled(&self, source: &str, err: &io::Error) {
        let mut inner = self.lock();
        if inner.info.stalled.iter().any(|s| s.source == source) {
            if inner.dirty {
                inner.store();
            }
            return;
        }
        let mut error = err.to_string();
        if error.len() > MAX_ERROR {
            let mut cut = MAX_ERROR;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        inner.info.stalled.push(Stall {
            source: source.to_owned(),
            since: crate::status::rfc3339(SystemTime::now()),
            error,
        });
        inner.store();
    }

    /// Records that writes to `source` succeed again.
    pub(crate) fn resumed(&self, source: &str) {
        let mut inner = self.lock();
        inner.info.stalled.retain(|s| s.source != source);
        inner.store();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn store(&mut self) {
        let Some(file) = &self.file else {
            return;
        };
        let record = match encode(&self.info) {
            Ok(record) => record,
            Err(err) => {
                crate::diag::diag(format_args!("encoding {CAPTURE_JSON}: {err}"));
                return;
            }
        };
        match file.write_all_at(&record, 0) {
            Ok(()) => self.dirty = false,
            Err(err) => {
                if !self.dirty {
                    crate::diag::diag(format_args!("updating {CAPTURE_JSON}: {err}"));
                }
                self.dirty = true;
            }
        }
    }
}

/// The record as stored: JSON, a newline, spaces up to [`RECORD_SIZE`].
fn encode(info: &CaptureInfo) -> io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec(info).map_err(io::Error::other)?;
    json.push(b'\n');
    if json.len() > RECORD_SIZE {
        return Err(io::Error::other("record larger than its slot"));
    }
    json.resize(RECORD_SIZE, b' ');
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keeps_its_size_and_reads_back() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let capture = Capture::create(dir.path());
        let path = dir.path().join(CAPTURE_JSON);
        assert_eq!(std::fs::metadata(&path)?.len(), RECORD_SIZE as u64);
        assert_eq!(read_capture_info(dir.path())?, Some(CaptureInfo::default()));

        let full = io::Error::from_raw_os_error(28);
        capture.stalled("app", &full);
        capture.stalled("app", &full);
        capture.stalled("vmm", &io::Error::other("x".repeat(5000)));
        let info = read_capture_info(dir.path())?.unwrap_or_default();
        assert_eq!(info.stalled.len(), 2);
        assert_eq!(info.stalled[0].source, "app");
        assert!(info.stalled[0].error.contains("No space left"));
        assert_eq!(info.stalled[1].error.len(), MAX_ERROR);
        assert_eq!(std::fs::metadata(&path)?.len(), RECORD_SIZE as u64);

        capture.resumed("app");
        capture.resumed("vmm");
        assert_eq!(read_capture_info(dir.path())?, Some(CaptureInfo::default()));
        assert_eq!(std::fs::metadata(&path)?.len(), RECORD_SIZE as u64);
        Ok(())
    }

    #[test]
    fn an_existing_record_is_overwritten_whole() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(CAPTURE_JSON), vec![b'x'; 3000])?;
        let _capture = Capture::create(dir.path());
        assert_eq!(read_capture_info(dir.path())?, Some(CaptureInfo::default()));
        Ok(())
    }
}
