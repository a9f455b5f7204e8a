//! A small JSON record kept in a fixed-size slot that is overwritten in
//! place: `capture.json` and `guest-status.json`.
//!
//! These records matter most when the disk is full, which is exactly when a
//! new file (or the atomic write's temporary) cannot be created. So each is
//! written once at start with a fixed size (JSON, a newline, spaces) and
//! afterwards only overwritten at offset 0: blocks already allocated need
//! no free space, on tmpfs and ext4 alike, and no fsync is needed per
//! change. A reader may rarely see a torn record (one small `pwrite` is not
//! atomic by contract); it then fails to parse and is treated as unknown,
//! never as wrong.
//!
//! Every write is fallible and its failure only remembered and reported
//! once: the records are advisory, and capture must go on without them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use serde::Serialize;

use crate::diag::diag;

/// One record file and whether the copy on disk is out of date.
#[derive(Debug)]
pub(crate) struct Slot {
    name: &'static str,
    size: usize,
    file: Option<File>,
    /// The record on disk is out of date (a write failed).
    dirty: bool,
}

impl Slot {
    /// Creates `dir/name` holding `initial`, replacing a record from an
    /// earlier run (at start the disk normally has room; a stale, longer
    /// record must not leave its tail behind ours). Failing to is
    /// reported, not fatal.
    pub(crate) fn create<T: Serialize>(
        dir: &Path,
        name: &'static str,
        size: usize,
        initial: &T,
    ) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(dir.join(name));
        let mut slot = Slot {
            name,
            size,
            file: None,
            dirty: false,
        };
        match file {
            Ok(file) => {
                slot.file = Some(file);
                slot.store(initial);
            }
            Err(err) => diag(format_args!("cannot create {name}: {err}")),
        }
        slot
    }

    /// Overwrites the record with `value`; a failure is remembered and
    /// reported once, and the next store tries again.
    pub(crate) fn store<T: Serialize>(&mut self, value: &T) {
        let Some(file) = &self.file else {
            return;
        };
        let result = encode(value, self.size).and_then(|bytes| file.write_all_at(&bytes, 0));
        match result {
            Ok(()) => self.dirty = false,
            Err(err) => {
                if !self.dirty {
                    diag(format_args!("updating {}: {err}", self.name));
                }
                self.dirty = true;
            }
        }
    }

    /// Whether the last store failed.
    pub(crate) fn dirty(&self) -> bool {
        self.dirty
    }
}

/// The record as stored: JSON, a newline, spaces up to `size`.
pub(crate) fn encode<T: Serialize>(value: &T, size: usize) -> io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec(value).map_err(io::Error::other)?;
    json.push(b'\n');
    if json.len() > size {
        return Err(io::Error::other("record larger than its slot"));
    }
    json.resize(size, b' ');
    Ok(json)
}
