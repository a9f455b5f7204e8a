//! Observing an instance: the facts its state is derived from, read from
//! what other processes leave behind.
//!
//! - the monitor's lock on `logs/monitor.lock` (alive or not);
//! - the guest init's last status line, which the monitor keeps in
//!   `logs/guest-status.json` (it reads the status port itself and bounds
//!   what it keeps of it); VMs started before that have the VMM append
//!   the port to `status.log` instead, read as below;
//! - the monitor's `exit.json`, `monitor.json` and `capture.json`, read
//!   through lodge-monitor's own readers;
//! - whether the VMM named in `monitor.json` (pid *and* start time, never a
//!   name) still runs although its monitor is gone: an orphan.
//!
//! Everything the guest controls is read with a bound: the old `status.log` can be
//! written at will by a root workload (`yes > /dev/ttyS1` grew it by 32 MB
//! in 90 s), so only its first [`STATUS_HEAD`] and last [`STATUS_TAIL`]
//! bytes are read, whatever its size. Init reports "started" (or its setup
//! error) first and the program's end last, so those two windows hold every
//! line that matters.
//!
//! Nothing here changes anything, so reads never need the instance lock;
//! the one exception, [`kill_orphan_vmm`], is called by the verbs that end
//! a VM, under the lock.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use super::state::{GuestProgress, Observed};
use super::store::{Metadata, Paths};

/// Bytes read from the start of `status.log` (init's first lines).
const STATUS_HEAD: u64 = 4 * 1024;
/// Bytes read from the end of `status.log` (the latest lines).
const STATUS_TAIL: u64 = 64 * 1024;
/// How long a killed orphan VMM may take to be gone.
const ORPHAN_KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The facts about instance `meta` living in `paths`.
pub fn observe(paths: &Paths, meta: &Metadata) -> Observed {
    let logs = paths.logs();
    let alive = monitor_alive(&logs);
    let vmm_exit = read_vmm_exit(&logs);
    Observed {
        monitor_alive: alive,
        ever_started: meta.started_at.is_some(),
        paused: meta.paused,
        guest: match guest_progress(&logs, &paths.status_file()) {
            // Restored from a state saved while the program ran: the
            // monitor of this VMM never saw the start line.
            GuestProgress::NotStarted if alive && meta.standby.resumed => GuestProgress::Started,
            progress => progress,
        },
        vmm_crash: match (&vmm_exit, alive) {
            (Some(exit), false) => vmm_crash(&logs, meta.hypervisor, exit),
            _ => None,
        },
        vmm_exit,
        orphan_vmm: if alive { None } else { orphan_vmm(&logs) },
        capture: if alive { read_capture(&logs) } else { None },
        standby: meta.standby.snapshot.is_some(),
        restore_error: meta.standby.error.clone(),
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

/// Lines of `vmm.log` read for a crash report: the VMM's last words.
const CRASH_LINES: u64 = 200;

/// The crash the last VMM run reported in its own log although its exit
/// code does not say so (Cloud Hypervisor exits 0 after a vCPU failure),
/// for hypervisors whose log says it (see
/// [`lodge_hypervisor::dispatch::crash_in_vmm_log`]). Only that run's lines
/// count: those the time index places at or after its start in
/// `exit.json`, the last [`CRASH_LINES`] of them. The VMM's log is the
/// host's (the guest cannot write to it).
fn vmm_crash(
    log_dir: &Path,
    kind: lodge_hypervisor::HypervisorKind,
    exit: &lodge_monitor::ExitInfo,
) -> Option<String> {
    if !lodge_hypervisor::dispatch::vmm_log_reports_crashes(kind) {
        return None;
    }
    let since = match lodge_common::time::parse_rfc3339(&exit.started_at) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("exit record in {}: {e}", log_dir.display());
            return None;
        }
    };
    let window = lodge_logs::Window {
        since: Some(since),
        until: None,
    };
    let lines = match lodge_logs::read_window(
        log_dir,
        lodge_logs::Source::Vmm,
        window,
        lodge_logs::Tail::Lines(CRASH_LINES),
    ) {
        Ok(lines) => lines,
        Err(e) => {
            tracing::warn!("reading the vmm log in {}: {e}", log_dir.display());
            return None;
        }
    };
    let text: Vec<u8> = lines.into_iter().flat_map(|l| l.bytes).collect();
    lodge_hypervisor::dispatch::crash_in_vmm_log(kind, &String::from_utf8_lossy(&text))
}

/// The monitor's report on console capture. A torn record (read while the
/// monitor rewrites it in place) is rare and harmless: it counts as none.
fn read_capture(log_dir: &Path) -> Option<lodge_monitor::CaptureInfo> {
    lodge_monitor::read_capture_info(log_dir).unwrap_or_else(|e| {
        tracing::debug!("reading the capture record in {}: {e}", log_dir.display());
        None
    })
}

/// The pid of the VMM recorded in `log_dir/monitor.json` if that very
/// process (same pid and start time) still runs although no monitor holds
/// the directory: killed monitor, the VMM left behind. A record without a
/// start time (older monitors) cannot vouch for a pid, so it names none.
pub fn orphan_vmm(log_dir: &Path) -> Option<u32> {
    if monitor_alive(log_dir) {
        return None;
    }
    let info = match lodge_monitor::read_monitor_info(log_dir) {
        Ok(info) => info?,
        Err(e) => {
            tracing::warn!("reading the monitor record in {}: {e}", log_dir.display());
            return None;
        }
    };
    let ticks = info.child_start_ticks?;
    match lodge_monitor::process_start_ticks(info.child_pid) {
        Ok(Some(now)) if now == ticks => Some(info.child_pid),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("inspecting pid {}: {e}", info.child_pid);
            None
        }
    }
}

/// Kills the orphan VMM of `log_dir`, if there is one, and waits until it
/// is gone. Returns whether there was one. The process is pinned with a
/// pidfd before its start time is checked, so the signal can only reach the
/// process the record names, even if its pid was reused meanwhile.
pub async fn kill_orphan_vmm(log_dir: &Path) -> io::Result<bool> {
    let Some(pid) = orphan_vmm(log_dir) else {
        return Ok(false);
    };
    let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(false);
    };
    let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    // Same process as in the record, now that it cannot change under us?
    if orphan_vmm(log_dir) != Some(pid) {
        return Ok(false);
    }
    tracing::warn!(
        "killing VMM pid {pid} in {}: its monitor is gone",
        log_dir.display()
    );
    // The VMM leads its own process group (the monitor starts it so);
    // while the leader lives, the group id is its own.
    match kill_process_group(raw, Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => tracing::warn!("killing process group {pid}: {e}"),
    }
    match pidfd_send_signal(&pidfd, Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => return Err(e.into()),
    }
    let deadline = Instant::now() + ORPHAN_KILL_TIMEOUT;
    while orphan_vmm(log_dir) == Some(pid) {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "VMM pid {pid} is still running after SIGKILL"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}

/// The last thing guest init reported on its status channel: the monitor's
/// record in `log_dir` if there is one, else a bounded read of the
/// `status_file` a VM started by an older lodge has (see the module doc).
fn guest_progress(log_dir: &Path, status_file: &Path) -> GuestProgress {
    match lodge_monitor::read_guest_status(log_dir) {
        Ok(Some(status)) => status
            .event()
            .map_or(GuestProgress::NotStarted, progress_of_event),
        Ok(None) => read_guest_progress(status_file),
        Err(e) => {
            // Torn on every retry, or unreadable: the host's own facts
            // (monitor lock, VMM exit) still decide the state.
            tracing::debug!("reading the guest status in {}: {e}", log_dir.display());
            GuestProgress::NotStarted
        }
    }
}

/// The last thing guest init reported on its status channel, from a
/// bounded read of `status_file` (see the module doc).
pub fn read_guest_progress(status_file: &Path) -> GuestProgress {
    match read_head_and_tail(status_file, STATUS_HEAD, STATUS_TAIL) {
        Ok(Some(w)) => progress_of_windows(&w.head, w.tail.as_deref()),
        Ok(None) => GuestProgress::NotStarted,
        Err(e) => {
            tracing::warn!("reading {}: {e}", status_file.display());
            GuestProgress::NotStarted
        }
    }
}

/// The bounded view of a file that [`read_head_and_tail`] reads.
#[derive(Debug)]
struct Windows {
    /// The first bytes (the whole file when it is short).
    head: Vec<u8>,
    /// The last bytes, when the file is longer than both windows together.
    tail: Option<Vec<u8>>,
}

/// The first `head` bytes of `path`, and, if the file is longer than
/// `head + tail`, its last `tail` bytes separately (`None` when the head
/// already holds the whole file). `Ok(None)` when there is no file.
fn read_head_and_tail(path: &Path, head: u64, tail: u64) -> io::Result<Option<Windows>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len <= head + tail {
        let mut all = Vec::new();
        // The file may grow meanwhile: still read no more than the bound.
        file.take(head + tail).read_to_end(&mut all)?;
        return Ok(Some(Windows {
            head: all,
            tail: None,
        }));
    }
    let mut first = Vec::new();
    (&mut file).take(head).read_to_end(&mut first)?;
    file.seek(SeekFrom::Start(len - tail))?;
    let mut last = Vec::new();
    file.take(tail).read_to_end(&mut last)?;
    Ok(Some(Windows {
        head: first,
        tail: Some(last),
    }))
}

/// Progress from the head of the status file and, when the file was too
/// long to read whole, its tail. Only whole lines count: the tail's first
/// line was cut by the window (its start is not the start of a line) and a
/// last line without its newline may still be being written.
fn progress_of_windows(head: &[u8], tail: Option<&[u8]>) -> GuestProgress {
    let from_head = progress_of(whole_lines(head));
    let Some(tail) = tail else {
        return from_head;
    };
    let tail = match tail.iter().position(|&b| b == b'\n') {
        Some(i) => &tail[i + 1..],
        None => &[][..],
    };
    match progress_of(whole_lines(tail)) {
        GuestProgress::NotStarted => from_head,
        later => later,
    }
}

/// `bytes` up to and including its last newline.
fn whole_lines(bytes: &[u8]) -> &[u8] {
    match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &[],
    }
}

/// The progress the last status line in `text` reports (garbage lines,
/// e.g. from a guest writing to the port itself, are skipped).
fn progress_of(text: &[u8]) -> GuestProgress {
    let mut progress = GuestProgress::NotStarted;
    for line in text.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let Some(event) = lodge_guest::parse_status_line(line.trim_end_matches('\r')) else {
            continue;
        };
        progress = progress_of_event(event);
    }
    progress
}

fn progress_of_event(event: lodge_guest::StatusEvent) -> GuestProgress {
    match event {
        lodge_guest::StatusEvent::Started { .. } => GuestProgress::Started,
        lodge_guest::StatusEvent::Exited { code } => GuestProgress::Exited(code),
        lodge_guest::StatusEvent::Signaled { signal } => GuestProgress::Signaled(signal),
        lodge_guest::StatusEvent::Error(msg) => GuestProgress::Failed(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_guest::StatusEvent;
    use std::io::Write;

    fn progress_of_str(text: &str) -> GuestProgress {
        progress_of(whole_lines(text.as_bytes()))
    }

    #[test]
    fn missing_status_file_means_not_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            read_guest_progress(&dir.path().join("status.log")),
            GuestProgress::NotStarted
        );
        assert!(!monitor_alive(dir.path()));
        assert_eq!(read_vmm_exit(dir.path()), None);
        assert_eq!(orphan_vmm(dir.path()), None);
        assert_eq!(read_capture(dir.path()), None);
    }

    /// The monitor's record is the source when there is one; a VM started
    /// before it (no record) is read from its old status file.
    #[test]
    fn the_monitor_record_wins_over_the_old_status_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs)?;
        let file = dir.path().join("status.log");
        std::fs::write(&file, StatusEvent::Exited { code: 5 }.line())?;
        assert_eq!(guest_progress(&logs, &file), GuestProgress::Exited(5));

        let record = |last: Option<StatusEvent>| {
            let status = lodge_monitor::GuestStatus {
                last: last.map(|e| e.to_string()),
            };
            let json = serde_json::to_vec(&status).map_err(io::Error::other)?;
            std::fs::write(logs.join(lodge_monitor::GUEST_STATUS_JSON), json)
        };
        record(None)?;
        assert_eq!(guest_progress(&logs, &file), GuestProgress::NotStarted);
        record(Some(StatusEvent::Exited { code: 7 }))?;
        assert_eq!(guest_progress(&logs, &file), GuestProgress::Exited(7));
        record(Some(StatusEvent::Error("no /bin/sh".into())))?;
        assert_eq!(
            guest_progress(&logs, &file),
            GuestProgress::Failed("no /bin/sh".into())
        );
        Ok(())
    }

    #[test]
    fn empty_or_garbage_status_means_not_started() {
        assert_eq!(progress_of_str(""), GuestProgress::NotStarted);
        assert_eq!(
            progress_of_str("hello\r\nworld\n"),
            GuestProgress::NotStarted
        );
    }

    #[test]
    fn the_last_status_line_wins() {
        let started = StatusEvent::Started { pid: 7 }.line();
        let exited = StatusEvent::Exited { code: 3 }.line();
        assert_eq!(progress_of_str(&started), GuestProgress::Started);
        assert_eq!(
            progress_of_str(&format!("{started}noise\r\n{exited}")),
            GuestProgress::Exited(3)
        );
        let failed = StatusEvent::Error("no /bin/sh".into()).line();
        assert_eq!(
            progress_of_str(&failed),
            GuestProgress::Failed("no /bin/sh".into())
        );
        // A line still being written does not count yet.
        let partial = exited.trim_end();
        assert_eq!(
            progress_of_str(&format!("{started}{partial}")),
            GuestProgress::Started
        );
    }

    /// `yes > /dev/ttyS1` for 32 MB: still read fast and in bounded memory,
    /// and the lines that matter (init's first and last) are found.
    #[test]
    fn a_huge_status_file_is_read_within_bounds() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("status.log");
        let mut file = File::create(&path)?;
        file.write_all(StatusEvent::Started { pid: 1 }.line().as_bytes())?;
        let flood = "y\n".repeat(1 << 20);
        for _ in 0..16 {
            file.write_all(flood.as_bytes())?;
        }
        let w = read_head_and_tail(&path, STATUS_HEAD, STATUS_TAIL)?
            .ok_or_else(|| io::Error::other("no file"))?;
        assert_eq!(w.head.len() as u64, STATUS_HEAD);
        assert_eq!(w.tail.map(|t| t.len() as u64), Some(STATUS_TAIL));

        // Bounded by bytes read, not by time (a time bound flakes on a
        // loaded machine): this thread's read(2) count, before and after.
        let rchar = || -> io::Result<u64> {
            let io = std::fs::read_to_string("/proc/thread-self/io")?;
            io.lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::other("no rchar"))
        };
        let before = rchar()?;
        for _ in 0..100 {
            assert_eq!(read_guest_progress(&path), GuestProgress::Started);
        }
        let per_read = (rchar()? - before) / 100;
        assert!(per_read > 0, "reads are counted");
        assert!(
            per_read <= STATUS_HEAD + STATUS_TAIL + 4096,
            "{per_read} bytes read per look at a 32 MB status file"
        );

        file.write_all(StatusEvent::Exited { code: 4 }.line().as_bytes())?;
        assert_eq!(read_guest_progress(&path), GuestProgress::Exited(4));
        // A flood longer than the tail window after the last line pushes it
        // out of view; the head's report stands (the price of the bound).
        file.write_all(&vec![b'x'; 3 * STATUS_TAIL as usize])?;
        file.write_all(b"\n")?;
        assert_eq!(read_guest_progress(&path), GuestProgress::Started);
        Ok(())
    }

    #[test]
    fn a_cut_line_at_the_window_start_is_not_believed() {
        let forged = StatusEvent::Exited { code: 0 }.line();
        let started = StatusEvent::Started { pid: 1 }.line();
        // The tail window starts in the middle of a guest line whose end
        // looks like a status line: it must not count.
        let tail = format!("garbage{forged}y\n");
        assert_eq!(
            progress_of_windows(started.as_bytes(), Some(tail.as_bytes())),
            GuestProgress::Started
        );
        let tail = format!("cut\n{forged}");
        assert_eq!(
            progress_of_windows(started.as_bytes(), Some(tail.as_bytes())),
            GuestProgress::Exited(0)
        );
    }

    fn write_monitor_record(dir: &Path, child: u32, ticks: Option<u64>) -> io::Result<()> {
        let info = lodge_monitor::MonitorInfo {
            pid: std::process::id(),
            child_pid: child,
            started_at: String::new(),
            child_start_ticks: ticks,
            monitor_start_ticks: None,
        };
        let json = serde_json::to_vec(&info).map_err(io::Error::other)?;
        std::fs::write(dir.join(lodge_monitor::MONITOR_JSON), json)
    }

    #[tokio::test]
    async fn an_orphan_is_found_by_pid_and_start_time_and_killed() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut vmm = std::process::Command::new("sleep").arg("600").spawn()?;
        let pid = vmm.id();
        let ticks = lodge_monitor::process_start_ticks(pid)?;
        assert!(ticks.is_some());

        // A record from before start times were kept: no claim.
        write_monitor_record(dir.path(), pid, None)?;
        assert_eq!(orphan_vmm(dir.path()), None);
        // Same pid, another start time (a reused pid): not ours.
        write_monitor_record(dir.path(), pid, ticks.map(|t| t + 1))?;
        assert_eq!(orphan_vmm(dir.path()), None);
        assert!(!kill_orphan_vmm(dir.path()).await?);
        assert_eq!(vmm.try_wait()?, None, "a stranger is never killed");

        write_monitor_record(dir.path(), pid, ticks)?;
        assert_eq!(orphan_vmm(dir.path()), Some(pid));
        assert!(kill_orphan_vmm(dir.path()).await?);
        let status = vmm.wait()?;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert_eq!(orphan_vmm(dir.path()), None);
        Ok(())
    }
}
