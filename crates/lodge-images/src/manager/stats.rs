//! Counters of finished pulls and fetched bytes, for the daemon's
//! `/metrics`. Plain atomics bumped where a pull ends or a chunk arrives
//! and read as one snapshot on scrape, so the image crate needs no
//! metrics library and a scrape takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters kept by an `Images` since it was opened.
#[derive(Debug, Default)]
pub(super) struct Counters {
    ready: AtomicU64,
    failed: AtomicU64,
    fetched: AtomicU64,
}

/// A snapshot of the pull counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullStats {
    /// Pulls (and archive imports) that ended with a ready image.
    pub ready: u64,
    /// Pulls that ended failed.
    pub failed: u64,
    /// Layer bytes fetched from registries (cached blobs not counted).
    pub bytes_fetched: u64,
}

impl Counters {
    pub(super) fn finished(&self, ok: bool) {
        let c = if ok { &self.ready } else { &self.failed };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn fetched(&self, n: u64) {
        self.fetched.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> PullStats {
        PullStats {
            ready: self.ready.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes_fetched: self.fetched.load(Ordering::Relaxed),
        }
    }
}
