//! The per-VM monitor behind `lodge supervise`: runs one command (the VMM)
//! with its stdout and stderr on pipes, and is the only writer of the log
//! directory it captures them into. With `status_fd` it also owns the
//! guest's status channel: the VMM gets the write end of a third pipe as
//! that descriptor (QEMU's second serial port writes there), and the
//! monitor keeps a bounded `status.log` of it plus the last status line in
//! `guest-status.json` (see `guest_status`), so a guest flooding its status
//! port can neither fill the disk nor hide its real exit line. With
//! `console_fd` the VMM gets a fourth pipe, the workload's fast (virtio)
//! console, which the monitor merges into `app.log` with stdout at line
//! boundaries (see `merge`) and keeps blocking for the VMM (see
//! `blocking`). Both logs keep a time index beside each segment (see
//! `lodge_logs::times`).
//!
//! It is plain synchronous std code with a handful of threads (signals
//! and child status on the main thread, one console pump for stdout and
//! the fast console, one pump per other pipe, a short-lived watch of the
//! fast console's flags) and no async
//! runtime, so it starts fast and stays within its memory budget. The
//! sequence:
//!
//! 1. validate everything (directory, limits, command on `PATH`), creating
//!    nothing; any failure is a one-line error and exit code 2;
//! 2. take the exclusive lock `DIR/monitor.lock` for the whole life of the
//!    process (a second monitor for the same directory is refused before it
//!    starts anything), open the live logs for appending, drop a stale
//!    `exit.json`, start `guest-status.json` afresh;
//! 3. start the command in its own process group with stdin on /dev/null,
//!    so a terminal's Ctrl-C reaches it only through us and with
//!    `PR_SET_PDEATHSIG` so it dies with us if we are killed, and record
//!    `monitor.json`;
//! 4. forward SIGTERM, SIGINT, SIGHUP and SIGQUIT to the command's process
//!    group until it exits;
//! 5. wait for every pipe to reach end of file (everything the command and
//!    its children wrote, the guest's last status line), fsync, write
//!    `exit.json`, release the lock, and
//!    exit with the command's code (128 + signal if it was killed).
//!
//! It needs no terminal and no open stdout: started detached (`setsid`,
//! stdio on /dev/null) it behaves the same, and the VM and its logs outlive
//! the daemon that started it.
//!
//! It never panics on I/O once the command runs: a failing log write is
//! waited out (see `pump`) and reported in `capture.json` (see `capture`),
//! and diagnostics go through [`diag`], which ignores a failing stderr
//! (the daemon's `monitor.err` sits on the same disk as the logs).

mod blocking;
mod capture;
mod diag;
mod guest_status;
mod merge;
mod pump;
mod slot;
pub mod status;
mod validate;

use diag::diag;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use lodge_logs::Compression;
use lodge_logs::{MonitorLock, RotatingWriter, Source, WriterError, MONITOR_LOCK};
use rustix::process::{kill_process_group, Pid, Signal};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

pub use capture::{read_capture_info, CaptureInfo, Stall, CAPTURE_JSON};
pub use guest_status::{
    read_guest_status, GuestStatus, GUEST_STATUS_JSON, STATUS_LOG, STATUS_MAX_FILES,
    STATUS_MAX_SIZE,
};
pub use status::{
    process_start_ticks, read_exit_info, read_monitor_info, ExitInfo, MonitorInfo, EXIT_JSON,
    MONITOR_JSON,
};

/// Pipe capacity asked for each of the child's outputs: a burst of console
/// output fits without the child blocking while a rotation happens.
const PIPE_SIZE: usize = 1 << 20;
/// How long to retry a lock that a reader is probing at this very instant.
const LOCK_PATIENCE: Duration = Duration::from_millis(500);

/// What to supervise and where its output goes.
#[derive(Debug, Clone)]
pub struct Config {
    /// Existing, writable directory receiving `app.log` and `vmm.log`.
    pub log_dir: PathBuf,
    /// Rotate a log when it reaches this many bytes (> 0).
    pub max_size: u64,
    /// Rotated segments kept per log (>= 1).
    pub max_files: usize,
    /// Program and arguments.
    pub command: Vec<OsString>,
    /// Give the command the write end of a pipe as this descriptor (>= 3)
    /// and keep what it writes there as the guest's status channel: a
    /// bounded `status.log` and the derived `guest-status.json`.
    pub status_fd: Option<i32>,
    /// Give the command the write end of another pipe as this descriptor
    /// (>= 3, not `status_fd`): the workload's fast console, merged into
    /// `app.log` with the command's stdout at line boundaries (see
    /// `merge`).
    pub console_fd: Option<i32>,
    /// How rotated segments of `app.log` and `vmm.log` are stored
    /// (`LODGE_LOG_COMPRESS`): compressed by a `zstd` child process after
    /// rotation, so the monitor's memory is unchanged.
    pub compression: Compression,
}

/// Why the monitor could not run the command. All of these happen before
/// the command starts, except `Spawn`, `Status` and `Signals`.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The log directory does not exist.
    #[error("log directory {} does not exist", .0.display())]
    NoDirectory(PathBuf),
    /// The log directory path names something else.
    #[error("log directory {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The log directory could not be inspected.
    #[error("cannot use log directory {}", path.display())]
    DirUnusable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Files cannot be created in the log directory.
    #[error("log directory {} is not writable", path.display())]
    DirNotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `max_size` was zero.
    #[error("--max-size must be greater than zero")]
    ZeroMaxSize,
    /// `max_files` was zero.
    #[error("--max-files must be at least 1")]
    ZeroMaxFiles,
    /// `status_fd` was one of the command's stdio or negative.
    #[error("--status-fd must be 3 or more, got {0}")]
    StatusFd(i32),
    /// `console_fd` was one of the command's stdio, negative, or the
    /// status channel's.
    #[error("--console-fd must be 3 or more and differ from --status-fd, got {0}")]
    ConsoleFd(i32),
    /// The command line was empty.
    #[error("no command given (put it after `--`)")]
    NoCommand,
    /// The program is not an executable file, nor on `PATH`.
    #[error("command not found: {0}")]
    CommandNotFound(String),
    /// Compression is on but the `zstd` tool is not on `PATH`.
    #[error("LODGE_LOG_COMPRESS=zstd needs the zstd tool on PATH")]
    NoZstd,
    /// Another live monitor holds the directory's lock.
    #[error("another monitor is already running for {}", .0.display())]
    Busy(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A live log could not be opened.
    #[error(transparent)]
    Log(#[from] WriterError),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] io::Error),
    /// The command could not be started.
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The status channel's pipe could not be made.
    #[error("cannot make the status channel's pipe")]
    StatusPipe(#[source] io::Error),
    /// The fast console's pipe could not be made.
    #[error("cannot make the fast console's pipe")]
    ConsolePipe(#[source] io::Error),
    /// A status file could not be written.
    #[error("cannot write {}", path.display())]
    Status {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Runs the monitor to the end and returns the exit code to exit with.
pub fn run(config: &Config) -> Result<u8, MonitorError> {
    validate::validate(config)?;
    let dir = config.log_dir.as_path();

    let lock_path = dir.join(MONITOR_LOCK);
    let _lock = MonitorLock::acquire(dir, LOCK_PATIENCE)
        .map_err(|source| MonitorError::Lock {
            path: lock_path.clone(),
            source,
        })?
        .ok_or_else(|| MonitorError::Busy(dir.to_owned()))?;
    // Both logs keep a time index beside each segment (for --since and
    // --timestamps); the bytes of the logs are untouched by it.
    let app = RotatingWriter::open(dir, Source::App, config.max_size, config.max_files)?
        .time_index(true)
        .compress(config.compression);
    let vmm = RotatingWriter::open(dir, Source::Vmm, config.max_size, config.max_files)?
        .time_index(true)
        .compress(config.compression);
    let status_err = |name: &str| {
        let path = dir.join(name);
        move |source| MonitorError::Status { path, source }
    };
    status::remove_if_present(dir, EXIT_JSON).map_err(status_err(EXIT_JSON))?;
    let status_channel = match config.status_fd {
        Some(fd) => Some(StatusChannel::open(dir, fd)?),
        None => None,
    };
    let fast_console = match config.console_fd {
        Some(fd) => Some(
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map(|(read, write)| (fd, read, write))
                .map_err(|err| MonitorError::ConsolePipe(err.into()))?,
        ),
        None => None,
    };

    // Handlers first, so a child that dies at once is still noticed.
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD]).map_err(MonitorError::Signals)?;
    let mut inherit = Vec::new();
    if let Some(channel) = &status_channel {
        inherit.push((channel.write.as_raw_fd(), channel.fd));
    }
    if let Some((fd, _, write)) = &fast_console {
        inherit.push((write.as_raw_fd(), *fd));
    }
    let mut child = spawn(&config.command, &inherit)?;
    // The child holds the fast console's write end now; our copy only
    // keeps it blocking (see `blocking`) and is dropped soon, so its end of
    // file is the VMM's exit.
    let (fast_console, keeper) = match fast_console {
        Some((_, read, write)) => match blocking::Keeper::start(write) {
            Ok(keeper) => (Some(read), Some(keeper)),
            Err(err) => {
                diag(format_args!("cannot watch the fast console: {err}"));
                (Some(read), None)
            }
        },
        None => (None, None),
    };
    let started_at = SystemTime::now();
    let child_pid = child.id();

    let info = MonitorInfo {
        pid: std::process::id(),
        child_pid,
        started_at: status::rfc3339(started_at),
        // The child is ours and unreaped, so its /proc entry is there; if
        // it cannot be read the daemon just cannot vouch for an orphan.
        child_start_ticks: process_start_ticks(child_pid).ok().flatten(),
        monitor_start_ticks: process_start_ticks(std::process::id()).ok().flatten(),
    };
    if let Err(err) = status::write_atomic(dir, MONITOR_JSON, &info) {
        // The daemon could not find the child: do not leave it running.
        kill_group(&child, Signal::KILL);
        if let Err(wait) = child.wait() {
            diag(format_args!("reaping the command: {wait}"));
        }
        return Err(status_err(MONITOR_JSON)(err));
    }

    let capture = Arc::new(capture::Capture::create(dir));
    // Only the child may hold the write end now: its end of file is the
    // VMM's exit.
    let status_pump = status_channel.map(|channel| channel.pump(Arc::clone(&capture)));
    let pumps = match (child.stdout.take(), child.stderr.take()) {
        (Some(stdout), Some(stderr)) => {
            for pipe in [stdout.as_fd(), stderr.as_fd()] {
                if let Err(err) = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_SIZE) {
                    // Only a smaller burst fits before the child waits.
                    diag(format_args!("enlarging a pipe: {err}"));
                }
            }
            if let Some(read) = &fast_console {
                if let Err(err) = rustix::pipe::fcntl_setpipe_size(read, PIPE_SIZE) {
                    diag(format_args!("enlarging a pipe: {err}"));
                }
            }
            let names = |pipe, log| pump::Names { pipe, log };
            let mut consoles = vec![("serial", std::os::fd::OwnedFd::from(stdout))];
            consoles.extend(fast_console.map(|read| ("fast", read)));
            let first_fast_byte = keeper.as_ref().map(blocking::Keeper::stopper);
            [
                merge::spawn(consoles, app, Arc::clone(&capture), first_fast_byte),
                pump::spawn(
                    names("stderr", "vmm"),
                    stderr,
                    vmm,
                    Arc::clone(&capture),
                    |_| {},
                ),
            ]
        }
        _ => unreachable_pipes(),
    };

    let status = wait_forwarding(&mut child, &mut signals);
    let finished_at = SystemTime::now();
    if let Some(keeper) = keeper {
        keeper.finish();
    }

    // Everything the command (and anything it left behind holding the
    // pipes) wrote is on disk, and the guest's last status line on record,
    // before the exit is recorded.
    for pump in pumps.into_iter().chain(status_pump) {
        match pump {
            Ok(handle) => match handle.join() {
                Ok(writer) => {
                    if let Err(err) = writer.finish() {
                        diag(format_args!("flushing a log: {err}"));
                    }
                }
                Err(_) => diag(format_args!("a log pump panicked")),
            },
            Err(err) => diag(format_args!("cannot start a log pump: {err}")),
        }
    }

    let exit = match status {
        Ok(status) => ExitInfo {
            code: status.code(),
            signal: status.signal(),
            started_at: status::rfc3339(started_at),
            finished_at: status::rfc3339(finished_at),
        },
        Err(err) => {
            diag(format_args!("waiting for the command: {err}"));
            ExitInfo {
                code: None,
                signal: None,
                started_at: status::rfc3339(started_at),
                finished_at: status::rfc3339(finished_at),
            }
        }
    };
    if let Err(err) = status::write_atomic(dir, EXIT_JSON, &exit) {
        diag(format_args!(
            "cannot write {}: {err}",
            dir.join(EXIT_JSON).display()
        ));
    }
    Ok(exit.shell_code())
}

/// The guest's status channel: a pipe whose write end the command gets as
/// descriptor `fd`, read by its own pump into `status.log` (bounded: see
/// [`STATUS_MAX_SIZE`]), with the last status line kept in
/// `guest-status.json` (see `guest_status`).
struct StatusChannel {
    fd: i32,
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    log: RotatingWriter,
    record: crate::slot::Slot,
}

impl StatusChannel {
    fn open(dir: &std::path::Path, fd: i32) -> Result<Self, MonitorError> {
        let log = RotatingWriter::open_named(dir, STATUS_LOG, STATUS_MAX_SIZE, STATUS_MAX_FILES)?;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|err| MonitorError::StatusPipe(err.into()))?;
        Ok(StatusChannel {
            fd,
            read,
            write,
            log,
            record: guest_status::create_record(dir),
        })
    }

    /// Starts the pump; drops our copy of the write end.
    fn pump(
        self,
        capture: Arc<capture::Capture>,
    ) -> io::Result<std::thread::JoinHandle<RotatingWriter>> {
        let StatusChannel {
            read,
            write,
            log,
            mut record,
            ..
        } = self;
        drop(write);
        let mut scanner = guest_status::Scanner::default();
        pump::spawn(
            pump::Names {
                pipe: "status",
                log: "status",
            },
            std::fs::File::from(read),
            log,
            capture,
            move |bytes| {
                if scanner.feed(bytes) || record.dirty() {
                    record.store(scanner.status());
                }
            },
        )
    }
}

fn unreachable_pipes() -> [io::Result<std::thread::JoinHandle<RotatingWriter>>; 2] {
    // `spawn` always asks for both pipes; keep the types honest anyway.
    let err = || Err(io::Error::other("child pipes missing"));
    [err(), err()]
}

fn spawn(
    command: &[OsString],
    inherit: &[(std::os::fd::RawFd, std::os::fd::RawFd)],
) -> Result<Child, MonitorError> {
    let (program, args) = command.split_first().ok_or(MonitorError::NoCommand)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if !inherit.is_empty() {
        inherit_as(&mut cmd, inherit);
    }
    // The VMM must not outlive its monitor (killed, crashed): nobody else
    // would collect its output or exit status. The monitor spawns from its
    // main thread, which lives as long as the monitor.
    lodge_common::process::die_with_parent(&mut cmd)
        .spawn()
        .map_err(|source| MonitorError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })
}

/// Most descriptors handed to the child at once.
const MAX_INHERIT: usize = 4;

/// Makes the child get each `from` as descriptor `to`, open across exec.
/// Every `from` is first duplicated above the targets, so a `from` that
/// happens to equal another pair's `to` is not overwritten before use.
#[allow(unsafe_code)]
fn inherit_as(cmd: &mut Command, pairs: &[(std::os::fd::RawFd, std::os::fd::RawFd)]) {
    let mut fixed = [(-1, -1); MAX_INHERIT];
    let count = pairs.len().min(MAX_INHERIT);
    fixed[..count].copy_from_slice(&pairs[..count]);
    let floor = pairs.iter().map(|&(_, to)| to).max().unwrap_or(2) + 1;
    // SAFETY: the closure runs between fork and exec and makes only the
    // async-signal-safe fcntl and dup2 calls on a fixed array: no
    // allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            let mut temps = [-1; MAX_INHERIT];
            for (temp, &(from, _)) in temps.iter_mut().zip(&fixed[..count]) {
                *temp = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, floor);
                if *temp == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (&temp, &(_, to)) in temps.iter().zip(&fixed[..count]) {
                // dup2 clears FD_CLOEXEC on the target; the temporaries
                // keep it and vanish at exec.
                if libc::dup2(temp, to) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Forwards termination signals to the child's process group until the
/// child exits; returns its status.
fn wait_forwarding(
    child: &mut Child,
    signals: &mut Signals,
) -> io::Result<std::process::ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    for signal in signals.forever() {
        if signal == SIGCHLD {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            continue;
        }
        if let Some(signal) = Signal::from_named_raw(signal) {
            kill_group(child, signal);
        }
    }
    // `forever` only ends if the handlers are closed, which we never do.
    child.wait()
}

fn kill_group(child: &Child, signal: Signal) {
    // The child leads its own group (`process_group(0)`), so its pid is the
    // group id; it cannot be reused while the child is unreaped.
    if let Some(pgid) = Pid::from_raw(child.id() as i32) {
        match kill_process_group(pgid, signal) {
            // Already gone: nothing left to signal.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(err) => diag(format_args!("signalling the command: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With both channels, the command gets the status pipe as 3 and the
    /// fast console as 4 (whatever descriptors the monitor's ends had), and
    /// the fast console lands in app.log after what stdout wrote before it.
    #[test]
    fn the_fast_console_is_merged_into_app_log() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let config = Config {
            log_dir: dir.path().to_owned(),
            max_size: 1 << 20,
            max_files: 2,
            command: [
                "sh",
                "-c",
                "echo serial; echo fast >&4; echo 'lodge-init: exited code=0' >&3; \
                 echo more-serial; printf 'fast-end\\n' >&4",
            ]
            .iter()
            .map(OsString::from)
            .collect(),
            status_fd: Some(3),
            console_fd: Some(4),
            compression: Compression::Off,
        };
        assert_eq!(run(&config)?, 0);
        let app = std::fs::read_to_string(dir.path().join("app.log"))?;
        let lines: Vec<&str> = app.lines().collect();
        assert_eq!(lines.len(), 4, "{app:?}");
        assert_eq!(lines[0], "serial");
        let pos = |l: &str| lines.iter().position(|x| *x == l);
        assert!(pos("fast") < pos("fast-end"), "{app:?}");
        assert!(pos("serial") < pos("more-serial"), "{app:?}");
        let status = std::fs::read_to_string(dir.path().join(STATUS_LOG))?;
        assert_eq!(status, "lodge-init: exited code=0\n");
        assert!(matches!(
            run(&Config {
                console_fd: Some(3),
                compression: Compression::Off,
                ..config
            }),
            Err(MonitorError::ConsoleFd(3))
        ));
        Ok(())
    }

    /// The whole status route with a real pipe: the command writes init's
    /// lines and a flood to its descriptor 3; the log stays within its
    /// bound, the record holds the last real line, and nothing is left
    /// behind holding the pipe.
    #[test]
    fn the_status_channel_is_bounded_and_its_last_line_kept(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let script = "echo 'lodge-init: started pid=1' >&3; \
                      yes | head -c 3000000 >&3; \
                      printf 'lodge-init: exi' >&3; sleep 0.1; \
                      echo 'ted code=3' >&3; exit 3";
        let config = Config {
            log_dir: dir.path().to_owned(),
            max_size: 1 << 20,
            max_files: 2,
            command: ["sh", "-c", script].iter().map(OsString::from).collect(),
            status_fd: Some(3),
            console_fd: None,
            compression: Compression::Off,
        };
        assert_eq!(run(&config)?, 3);
        let status = read_guest_status(dir.path())?.unwrap_or_default();
        assert_eq!(
            status.event(),
            Some(lodge_guest::StatusEvent::Exited { code: 3 })
        );
        let mut status_bytes = 0;
        for entry in std::fs::read_dir(dir.path())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("status.log") {
                status_bytes += entry.metadata()?.len();
            }
        }
        let bound = STATUS_MAX_SIZE * (STATUS_MAX_FILES as u64 + 1);
        assert!(
            status_bytes <= bound,
            "{status_bytes} bytes of status kept, bound {bound}"
        );
        let live = std::fs::read_to_string(dir.path().join(STATUS_LOG))?;
        assert!(live.ends_with("lodge-init: exited code=3\n"), "{live:?}");

        // Without --status-fd the command gets no descriptor 3.
        let config = Config {
            status_fd: None,
            command: ["sh", "-c", "exec 2>/dev/null; echo x >&3 || exit 9"]
                .iter()
                .map(OsString::from)
                .collect(),
            ..config
        };
        assert_eq!(run(&config)?, 9);
        assert!(matches!(
            run(&Config {
                status_fd: Some(2),
                ..config
            }),
            Err(MonitorError::StatusFd(2))
        ));
        Ok(())
    }
}
