//! Per-instance traffic bookkeeping of the proxy, published as
//! `lodge_common::activity::Activity` records for auto-standby.
//!
//! A guard is taken for each proxied exchange (an HTTP request until its
//! response body ends, an upgraded tunnel, an L4 connection); the record is
//! rewritten when the instance turns busy (first guard) or idle (last guard
//! dropped), and otherwise at most once per [`TOUCH_EVERY`] while guards
//! come and go or bytes flow, so a busy instance costs one small file write
//! a second, not one per request or chunk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lodge_common::activity::Activity;

/// The longest a flowing stream goes without its record being refreshed.
pub const TOUCH_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Entry {
    open: u32,
    last_written_ms: u64,
}

/// The counts of every instance, shared by all connections.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<Mutex<HashMap<PathBuf, Entry>>>,
}

impl Tracker {
    /// Counts one more open exchange on the instance whose record is at
    /// `path` until the guard is dropped.
    pub fn open(&self, path: PathBuf) -> Guard {
        self.update(&path, |e| {
            e.open += 1;
            e.open == 1
        });
        Guard {
            tracker: self.clone(),
            path,
        }
    }

    /// Applies `change` and rewrites the record when the instance turns
    /// busy or idle (`open` crosses zero), or when `force` is off and the
    /// record is older than [`TOUCH_EVERY`]. Counts in between are left
    /// for the next write: what readers decide on is "any open" and "last
    /// active", and a busy proxy then writes about once a second, not per
    /// request. The write happens under the lock: two writers in one
    /// process would share the record's temporary file.
    fn update(&self, path: &PathBuf, change: impl FnOnce(&mut Entry) -> bool) {
        let now = now_ms();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before inserting: a touch per body frame must not
        // allocate a key each time.
        if !map.contains_key(path) {
            map.insert(path.clone(), Entry::default());
        }
        let Some(entry) = map.get_mut(path) else {
            return;
        };
        let crossed = change(entry);
        let stale = now.saturating_sub(entry.last_written_ms) >= TOUCH_EVERY.as_millis() as u64;
        if !crossed && !stale {
            return;
        }
        entry.last_written_ms = now;
        let record = Activity {
            open: entry.open,
            last_active_unix_ms: now,
        };
        if entry.open == 0 {
            map.remove(path);
        }
        // The directory is gone with its instance: nothing to record.
        if path.parent().is_some_and(|d| d.is_dir()) {
            if let Err(e) = record.write(path) {
                tracing::warn!("recording ingress activity in {}: {e}", path.display());
            }
        }
    }
}

/// One open exchange; see [`Tracker::open`].
pub struct Guard {
    tracker: Tracker,
    path: PathBuf,
}

impl Guard {
    /// Bytes moved: refresh the record if it is older than a second.
    pub fn touch(&self) {
        self.tracker.update(&self.path, |_| false);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.tracker.update(&self.path, |e| {
            e.open = e.open.saturating_sub(1);
            e.open == 0
        });
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_the_record_follows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ingress-activity");
        let t = Tracker::default();
        let a = t.open(path.clone());
        assert_eq!(
            Activity::read(&path).expect("read").map(|r| r.open),
            Some(1)
        );
        let b = t.open(path.clone());
        a.touch();
        drop(a);
        // Still busy: not rewritten within the second.
        assert_eq!(
            Activity::read(&path).expect("read").map(|r| r.open),
            Some(1)
        );
        drop(b);
        let last = Activity::read(&path).expect("read").expect("record");
        assert_eq!(last.open, 0);
        assert!(last.last_active_unix_ms > 0);
    }

    #[test]
    fn a_missing_instance_directory_is_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gone/ingress-activity");
        let t = Tracker::default();
        drop(t.open(path.clone()));
        assert!(!path.exists());
    }
}
