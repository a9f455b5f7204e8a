//! Traffic an instance received through lodge's ingress, as a tiny file in
//! the instance directory.
//!
//! The ingress process writes it (it outlives daemon restarts, so the
//! record must too) and the daemon's auto-standby reads it to tell an idle
//! instance from one serving a long-lived connection. A file rather than a
//! socket keeps the two processes independent: either may be restarted
//! while the other runs. One line, `<open connections> <last activity in
//! unix ms>`, replaced atomically.

use std::io;
use std::path::Path;

/// What the ingress last recorded for one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activity {
    /// Connections open through the ingress to the instance right now.
    pub open: u32,
    /// When a connection last opened, closed or moved bytes (unix ms).
    pub last_active_unix_ms: u64,
}

impl Activity {
    /// The record at `path`; `None` when there is none (never proxied to)
    /// or it does not parse (a torn or foreign file counts as no record).
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replace the record at `path` (write beside it, then rename).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(
            &tmp,
            format!("{} {}\n", self.open, self.last_active_unix_ms),
        )?;
        std::fs::rename(&tmp, path).inspect_err(|_| {
            if let Err(e) = std::fs::remove_file(&tmp) {
                // Nothing more to do than leave the stray file.
                let _ignored = e;
            }
        })
    }

    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_ascii_whitespace();
        let open = parts.next()?.parse().ok()?;
        let last_active_unix_ms = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Self {
            open,
            last_active_unix_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_garbage_is_no_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ingress-activity");
        assert_eq!(Activity::read(&path).expect("read"), None);
        let a = Activity {
            open: 3,
            last_active_unix_ms: 1_780_000_000_123,
        };
        a.write(&path).expect("write");
        assert_eq!(Activity::read(&path).expect("read"), Some(a));
        std::fs::write(&path, "3 x\n").expect("write");
        assert_eq!(Activity::read(&path).expect("read"), None);
        std::fs::write(&path, "1 2 3\n").expect("write");
        assert_eq!(Activity::read(&path).expect("read"), None);
    }
}
