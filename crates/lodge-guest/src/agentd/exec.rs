//! One exec session: start the command, stream its stdin in and its output
//! out, enforce the timeout, report how it ended.
//!
//! The command gets the workload's environment overlaid with the request's,
//! the workload's user, its own session (so the whole process group can be
//! killed on timeout or cancel), default signal dispositions and an empty
//! signal mask (see `spawn::launch`, which starts it without copying the
//! agent), and either three pipes or a fresh
//! pseudo-terminal (then stdout and stderr are one stream, as in docker).
//!
//! Output ends when the command's pipes reach end-of-file. A command may
//! leave a background process holding them open, so once the command has
//! exited each pump drains what is already buffered and stops, instead of
//! waiting for a reader that may never close.
//!
//! The session's own thread does that work: it polls the output pipes (or
//! the terminal) and a pidfd of the command, so an exec costs one thread
//! besides stdin's, not three more (a thread start is dear on the guest's
//! emulated CPU). Without pidfds (a kernel before 5.3) a pump thread per
//! stream and an exit pipe do the same.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lodge_guest::protocol::{Event, ExecStart, Kind, DATA_CHUNK};

use crate::spawn::{self, CommandPlan};
use crate::sys;

use super::config::AgentConfig;
use super::session::{fatal, Input, SessionControl};
use super::wire::{InputCredit, StreamOut};

/// Exit code reported when the timeout killed the command (as `timeout(1)`).
pub const TIMEOUT_CODE: i32 = 124;

/// Resize and cancel for a running exec.
#[derive(Default)]
pub struct Control {
    /// Process group (= pid) of the command once started, else 0.
    pgid: AtomicI32,
    cancelled: AtomicBool,
    /// The terminal's master side, for resizes.
    master: Mutex<Option<Arc<OwnedFd>>>,
}

impl Control {
    fn kill(&self) {
        let pgid = self.pgid.load(Ordering::SeqCst);
        if pgid > 0 {
            let _ = sys::kill(-pgid, libc::SIGKILL);
        }
    }
}

impl SessionControl for Control {
    fn resize(&self, rows: u16, cols: u16) {
        let master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(master) = master.as_ref() {
            let _ = sys::set_winsize(master.as_ref(), rows, cols);
        }
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.kill();
    }
}

/// `base` overlaid with `extra` (`KEY=VALUE`; a later key wins, keeping the
/// first position), plus `TERM` for a terminal when unset.
pub fn merge_env(base: &[String], extra: &[String], tty: bool) -> Vec<String> {
    let mut env = lodge_guest::env::collapse(base.iter().chain(extra));
    if tty && !env.iter().any(|e| lodge_guest::env::key(e) == "TERM") {
        env.push("TERM=xterm".to_owned());
    }
    env
}

/// The `Started` event, sent once and before anything else of the
/// command's: at once for a terminal (the host holds resizes until then),
/// else with its first output or its end, so that a short command's start,
/// exit and close reach the host in one port write.
#[derive(Clone)]
struct Starting {
    out: StreamOut,
    pid: u32,
    sent: Arc<AtomicBool>,
}

impl Starting {
    fn announce(&self) {
        if !self.sent.swap(true, Ordering::SeqCst) {
            self.out.event(&Event::Started { pid: self.pid });
        }
    }

    /// Forward output (announcing the start first); false when the host
    /// no longer takes this stream.
    fn data(&self, kind: Kind, bytes: &[u8]) -> bool {
        self.announce();
        self.out.data(kind, bytes)
    }
}

fn failed(out: &StreamOut, message: String, code: i32) {
    out.event(&Event::Failed { message, code });
}

/// Run one exec to completion (the session's thread).
pub fn run(
    config: &AgentConfig,
    out: &StreamOut,
    start: ExecStart,
    input: Receiver<Input>,
    ctl: Arc<Control>,
) {
    let Some(program) = start.command.first().filter(|p| !p.is_empty()) else {
        return failed(out, "no command given: the command is empty".into(), 127);
    };
    let cwd = start.cwd.clone().unwrap_or_else(|| config.workdir.clone());
    if !cwd.starts_with('/') {
        return failed(
            out,
            format!("working directory must be absolute, got {cwd:?}"),
            126,
        );
    }
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return failed(
                out,
                format!("chdir to working directory {cwd:?}: not a directory"),
                126,
            )
        }
        Err(e) => {
            return failed(
                out,
                format!(
                    "chdir to working directory {cwd:?}: {}",
                    sys::errno_text_of(&e)
                ),
                126,
            )
        }
    }

    // The environment as std's `Command` built it before: one entry per
    // key, sorted by key.
    let merged = merge_env(&config.env, &start.env, start.tty);
    let env: std::collections::BTreeMap<&str, &str> = merged
        .iter()
        .map(|e| e.split_once('=').unwrap_or((e.as_str(), "")))
        .collect();
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();

    // Set up the streams: a terminal, or three pipes. `theirs` are the
    // command's ends, closed here once it runs.
    let mut master: Option<Arc<OwnedFd>> = None;
    let theirs: Vec<OwnedFd>;
    let stdio: [RawFd; 3];
    let mut ours: Vec<OwnedFd> = Vec::new();
    if start.tty {
        let (m, slave) = match sys::openpty(start.rows, start.cols) {
            Ok(pair) => pair,
            Err(e) => return failed(out, format!("open a terminal: {e}"), 126),
        };
        stdio = [slave.as_raw_fd(); 3];
        theirs = vec![slave];
        master = Some(Arc::new(m));
    } else {
        let pipes = (std::io::pipe(), std::io::pipe(), std::io::pipe());
        let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = match pipes {
            (Ok(i), Ok(o), Ok(e)) => (i, o, e),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                // As std's `Command` reported it: the spawn failed.
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                let (message, code) = spawn::exec_failure(program, errno);
                return failed(out, message, code);
            }
        };
        stdio = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        theirs = vec![in_r.into(), out_w.into(), err_w.into()];
        ours = vec![in_w.into(), out_r.into(), err_r.into()];
    }

    let spawned = CommandPlan::new(&start.command, &env, &cwd, stdio, config.user, start.tty)
        .and_then(|plan| spawn::launch(&plan));
    // The command holds its ends now; ours must go so that a pipe (or the
    // terminal's master) reads end-of-file once the command's are closed.
    drop(theirs);
    let pid = match spawned {
        Ok(pid) => pid,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            let (message, code) = spawn::exec_failure(program, errno);
            return failed(out, message, code);
        }
    };
    ctl.pgid.store(pid, Ordering::SeqCst);
    if ctl.cancelled.load(Ordering::SeqCst) {
        ctl.kill();
    }
    *ctl.master.lock().unwrap_or_else(|p| p.into_inner()) = master.clone();
    let starting = Starting {
        out: out.clone(),
        pid: u32::try_from(pid).unwrap_or_default(),
        sent: Arc::new(AtomicBool::new(false)),
    };
    if start.tty {
        starting.announce();
    }

    // The outputs to forward, the session's own thread polling them.
    let mut outputs: Vec<(OwnedFd, Kind)> = Vec::new();
    let stdin_sink: Option<Box<dyn Write + Send>> = match &master {
        Some(m) => {
            let Ok(reader) = m.try_clone() else {
                ctl.kill();
                let _ = sys::wait_for(pid);
                return failed(out, "duplicate the terminal".into(), 126);
            };
            outputs.push((reader, Kind::Stdout));
            m.try_clone()
                .ok()
                .map(|w| Box::new(File::from(w)) as Box<dyn Write + Send>)
        }
        None => {
            let mut ours = ours.into_iter();
            let stdin = ours.next();
            outputs.extend(ours.zip([Kind::Stdout, Kind::Stderr]));
            stdin.map(|i| Box::new(File::from(i)) as Box<dyn Write + Send>)
        }
    };
    // A non-interactive exec's end of input comes right behind its
    // request: then the pipe is closed here and no stdin thread starts.
    let first = input.try_recv().ok();
    if !start.tty && matches!(first, Some(Input::Eof)) {
        drop(stdin_sink);
    } else {
        spawn_stdin(stdin_sink, first, input, out.clone(), start.tty);
    }

    // The timeout: a timer thread kills the group unless the command ends
    // first (dropping `done` wakes it).
    let timed_out = Arc::new(AtomicBool::new(false));
    let (done, timer_rx) = channel::<()>();
    if let Some(secs) = start.timeout_secs.filter(|s| *s > 0) {
        let control = ctl.clone();
        let timed_out = timed_out.clone();
        let _ = std::thread::Builder::new()
            .name("timeout".into())
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) =
                    timer_rx.recv_timeout(Duration::from_secs(u64::from(secs)))
                {
                    timed_out.store(true, Ordering::SeqCst);
                    control.kill();
                }
            });
    }

    let pidfd = match rustix::process::Pid::from_raw(pid) {
        Some(p) => rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
            .map_err(std::io::Error::from),
        None => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
    };
    let status = match pidfd {
        Ok(pidfd) => {
            forward_until_exit(outputs, &starting, &pidfd);
            sys::wait_for(pid)
        }
        Err(_) => match std::io::pipe() {
            Ok((exit_rx, exit_tx)) => {
                // The exit notice for the pumps: the write end is dropped
                // on exit.
                let exit_rx: Arc<OwnedFd> = Arc::new(exit_rx.into());
                let pumps: Vec<JoinHandle<()>> = outputs
                    .into_iter()
                    .map(|(fd, kind)| spawn_pump(fd, kind, &starting, &exit_rx))
                    .collect();
                let status = sys::wait_for(pid);
                drop(exit_tx);
                for pump in pumps {
                    let _ = pump.join();
                }
                status
            }
            Err(e) => {
                ctl.kill();
                let _ = sys::wait_for(pid);
                starting.announce();
                return failed(out, format!("create a pipe: {e}"), 126);
            }
        },
    };
    drop(done);
    *ctl.master.lock().unwrap_or_else(|p| p.into_inner()) = None;

    let event = match status {
        Ok(_) if timed_out.load(Ordering::SeqCst) => Event::Exit {
            code: TIMEOUT_CODE,
            signal: Some(libc::SIGKILL),
            timed_out: true,
        },
        Ok(sys::ExitStatus::Code(code)) => Event::Exit {
            code,
            signal: None,
            timed_out: false,
        },
        Ok(sys::ExitStatus::Signal(signal)) => Event::Exit {
            code: 128 + signal,
            signal: Some(signal),
            timed_out: false,
        },
        Err(e) => Event::Failed {
            message: format!("wait for the command: {e}"),
            code: 255,
        },
    };
    starting.announce();
    out.event(&event);
}

/// Forward the outputs until each reaches end-of-file, or until the
/// command has exited (its pidfd is readable) and nothing is left
/// buffered; returns once the command has exited, so it can be reaped.
fn forward_until_exit(outputs: Vec<(OwnedFd, Kind)>, out: &Starting, pidfd: &OwnedFd) {
    let mut open: Vec<(File, Kind)> = outputs
        .into_iter()
        .map(|(fd, kind)| (File::from(fd), kind))
        .collect();
    let mut buf = vec![0u8; DATA_CHUNK];
    let mut exited = false;
    while !exited {
        let mut fds: Vec<std::os::fd::RawFd> = open.iter().map(|(f, _)| f.as_raw_fd()).collect();
        fds.push(pidfd.as_raw_fd());
        let ready = match sys::poll_readable(&fds, -1) {
            Ok(r) => r,
            // Cannot poll: wait for the exit, dropping the output.
            Err(_) => return,
        };
        exited = ready[open.len()];
        if exited {
            // Take only what is buffered now: a background process may
            // hold the pipes open for ever.
            open.retain(|(f, _)| sys::set_nonblocking(f).is_ok());
        }
        let mut i = 0;
        while i < open.len() {
            if (ready[i] || exited) && !drain(&mut open[i], out, &mut buf, exited) {
                open.remove(i);
                continue;
            }
            i += 1;
        }
    }
}

/// Read from one output and send it on: once when `until_empty` is false
/// (it polled readable), else until nothing is buffered. False when this
/// output is finished: end-of-file, an error (EIO: the terminal's other
/// side closed; WouldBlock after the exit: all is sent), or a stream the
/// host no longer takes.
fn drain(output: &mut (File, Kind), out: &Starting, buf: &mut [u8], until_empty: bool) -> bool {
    let (file, kind) = output;
    loop {
        match file.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                if !out.data(*kind, &buf[..n]) {
                    return false;
                }
                if !until_empty {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Forward one output stream until end-of-file, or until the command has
/// exited and nothing is left buffered.
fn spawn_pump(fd: OwnedFd, kind: Kind, out: &Starting, exited: &Arc<OwnedFd>) -> JoinHandle<()> {
    let out = out.clone();
    let exited = exited.clone();
    let run = move || {
        let mut file = File::from(fd);
        let mut buf = vec![0u8; DATA_CHUNK];
        let mut draining = false;
        loop {
            if !draining {
                let ready = sys::poll_readable(&[file.as_raw_fd(), exited.as_raw_fd()], -1)
                    .unwrap_or_else(|_| vec![true, false]);
                if !ready[0] && ready[1] {
                    draining = true;
                    if sys::set_nonblocking(&file).is_err() {
                        return;
                    }
                }
                if !ready[0] && !ready[1] {
                    continue;
                }
            }
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if !out.data(kind, &buf[..n]) {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // WouldBlock while draining: all that was written is sent.
                // EIO: the terminal's other side is closed.
                Err(_) => return,
            }
        }
    };
    std::thread::Builder::new()
        .name("pump".into())
        .spawn(run)
        .unwrap_or_else(|e| fatal(&format!("start a thread: {e}")))
}

/// Feed the command's stdin from the host's `Data`, returning credit as it
/// goes; end-of-input closes a pipe (a terminal stays open).
fn spawn_stdin(
    sink: Option<Box<dyn Write + Send>>,
    first: Option<Input>,
    input: Receiver<Input>,
    out: StreamOut,
    tty: bool,
) {
    let run = move || {
        let mut sink = sink;
        let mut credit = InputCredit::new();
        for item in first.into_iter().chain(input) {
            match item {
                Input::Data(bytes) => {
                    if let Some(s) = sink.as_mut() {
                        if s.write_all(&bytes).is_err() {
                            // The command closed its stdin: keep taking
                            // input so the host is not left without credit.
                            sink = None;
                        }
                    }
                    credit.consumed(&out, bytes.len());
                }
                Input::Eof if !tty => sink = None,
                Input::Eof | Input::Entry(_) | Input::EntryEnd => {}
            }
        }
    };
    let _ = std::thread::Builder::new().name("stdin".into()).spawn(run);
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;
    use lodge_guest::protocol::Decoder;

    /// One poll loop forwards both outputs, in order per stream, and
    /// returns at the command's exit though a background process it left
    /// still holds the pipes open.
    #[test]
    fn output_is_forwarded_until_the_command_exits() {
        let (mut frames, port) = std::io::pipe().expect("pipe");
        let wire = super::super::wire::Wire::start(File::from(OwnedFd::from(port))).expect("wire");
        let out = StreamOut::new(
            7,
            wire.epoch(),
            wire.clone(),
            super::super::wire::Window::new(1 << 20),
        );
        let mut child = Command::new("sh")
            .args([
                "-c",
                "printf out; printf err >&2; printf more; sleep 5 & exit 3",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let outputs = vec![
            (
                OwnedFd::from(child.stdout.take().expect("stdout")),
                Kind::Stdout,
            ),
            (
                OwnedFd::from(child.stderr.take().expect("stderr")),
                Kind::Stderr,
            ),
        ];
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_child(&child),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("pidfd");
        let t0 = std::time::Instant::now();
        let starting = Starting {
            out: out.clone(),
            pid: 0,
            sent: Arc::new(AtomicBool::new(true)),
        };
        forward_until_exit(outputs, &starting, &pidfd);
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "waited for the background process"
        );
        assert_eq!(child.wait().expect("wait").code(), Some(3));
        drop((starting, out, wire));
        let mut bytes = Vec::new();
        frames.read_to_end(&mut bytes).expect("frames");
        let mut decoder = Decoder::new();
        decoder.push(&bytes);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(f) = decoder.next_frame() {
            assert_eq!(f.stream, 7);
            match f.kind {
                Kind::Stdout => stdout.extend(f.payload),
                Kind::Stderr => stderr.extend(f.payload),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(stdout, b"outmore");
        assert_eq!(stderr, b"err");
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn request_env_overrides_the_workloads() {
        let base = strings(&["PATH=/bin", "HOME=/root", "A=1"]);
        assert_eq!(
            merge_env(&base, &strings(&["A=2", "B=3"]), false),
            strings(&["PATH=/bin", "HOME=/root", "A=2", "B=3"])
        );
        assert_eq!(
            merge_env(&base, &[], true),
            strings(&["PATH=/bin", "HOME=/root", "A=1", "TERM=xterm"])
        );
        assert_eq!(
            merge_env(&base, &strings(&["TERM=dumb"]), true),
            strings(&["PATH=/bin", "HOME=/root", "A=1", "TERM=dumb"])
        );
    }
}
