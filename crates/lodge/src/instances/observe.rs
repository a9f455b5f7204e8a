//! Observing an instance: the facts its state is derived from, read from
//! what other processes leave behind.
//!
//! - the monitor's lock on `logs/monitor.lock` (alive or not);
//! - the guest init's status lines, which the VMM appends to `status.log`;
//! - the monitor's `exit.json`, read through lodge-monitor's own reader.
//!
//! Nothing here changes anything, so reads never need the instance lock.

use std::path::Path;

use super::state::{GuestProgress, Observed};
use super::store::{Metadata, Paths};

/// The facts about instance `meta` living in `paths`.
pub fn observe(paths: &Paths, meta: &Metadata) -> Observed {
    let logs = paths.logs();
    Observed {
        monitor_alive: monitor_alive(&logs),
        ever_started: meta.started_at.is_some(),
        paused: meta.paused,
        guest: read_guest_progress(&paths.status_file()),
        vmm_exit: read_vmm_exit(&logs),
    }
}

/// Whether a monitor currently owns the log directory (an unreadable lock
/// counts as no monitor: nothing can be controlled through it anyway).
pub fn monitor_alive(log_dir: &Path) -> bool {
    lodge_logs::monitor_alive(log_dir).unwrap_or(false)
}

/// How the last VMM process ended, once it has; an unreadable record is
/// logged and treated as none.
fn read_vmm_exit(log_dir: &Path) -> Option<lodge_monitor::ExitInfo> {
    lodge_monitor::read_exit_info(log_dir).unwrap_or_else(|e| {
        tracing::warn!("reading the exit record in {}: {e}", log_dir.display());
        None
    })
}

/// The last thing guest init reported on its status channel.
pub fn read_guest_progress(status_file: &Path) -> GuestProgress {
    let Ok(text) = std::fs::read(status_file) else {
        return GuestProgress::NotStarted;
    };
    progress_of(&String::from_utf8_lossy(&text))
}

/// The progress the last status line in `text` reports (garbage lines,
/// e.g. from a guest writing to the port itself, are skipped).
fn progress_of(text: &str) -> GuestProgress {
    let mut progress = GuestProgress::NotStarted;
    for line in text.lines() {
        let Some(event) = lodge_guest::parse_status_line(line.trim_end_matches('\r')) else {
            continue;
        };
        progress = match event {
            lodge_guest::StatusEvent::Started { .. } => GuestProgress::Started,
            lodge_guest::StatusEvent::Exited { code } => GuestProgress::Exited(code),
            lodge_guest::StatusEvent::Signaled { signal } => GuestProgress::Signaled(signal),
            lodge_guest::StatusEvent::Error(msg) => GuestProgress::Failed(msg),
        };
    }
    progress
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_status_file_means_not_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            read_guest_progress(&dir.path().join("status.log")),
            GuestProgress::NotStarted
        );
        assert!(!monitor_alive(dir.path()));
        assert_eq!(read_vmm_exit(dir.path()), None);
    }

    #[test]
    fn empty_or_garbage_status_means_not_started() {
        assert_eq!(progress_of(""), GuestProgress::NotStarted);
        assert_eq!(progress_of("hello\r\nworld\n"), GuestProgress::NotStarted);
    }

    #[test]
    fn the_last_status_line_wins() {
        use lodge_guest::StatusEvent;
        let started = StatusEvent::Started { pid: 7 }.line();
        let exited = StatusEvent::Exited { code: 3 }.line();
        assert_eq!(progress_of(&started), GuestProgress::Started);
        assert_eq!(
            progress_of(&format!("{started}noise\r\n{exited}")),
            GuestProgress::Exited(3)
        );
        let failed = StatusEvent::Error("no /bin/sh".into()).line();
        assert_eq!(
            progress_of(&failed),
            GuestProgress::Failed("no /bin/sh".into())
        );
    }
}
