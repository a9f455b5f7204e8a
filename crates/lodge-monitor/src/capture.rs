//! `capture.json`: whether console capture is keeping up, for the daemon to
//! show as the instance's `state_error`.
//!
//! It matters most when the disk is full, so it lives in a fixed-size slot
//! overwritten in place (see `slot`).

use std::io;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::slot::Slot;

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
    slot: Slot,
    info: CaptureInfo,
}

impl Capture {
    /// Creates the record (all well) in `dir`. Failing to is not fatal: it
    /// is retried on every change.
    pub(crate) fn create(dir: &Path) -> Self {
        let info = CaptureInfo::default();
        Capture {
            inner: Mutex::new(Inner {
                slot: Slot::create(dir, CAPTURE_JSON, RECORD_SIZE, &info),
                info,
            }),
        }
    }

    /// Records that writes to `source` fail with `err` (first failure only).
    pub(crate) fn stalled(&self, source: &str, err: &io::Error) {
        let mut inner = self.lock();
        if inner.info.stalled.iter().any(|s| s.source == source) {
            if inner.slot.dirty() {
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
        self.slot.store(&self.info);
    }
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
