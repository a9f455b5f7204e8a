//! The two serial ports, the user's console and the host's status channel,
//! and the workload's optional fast console (a virtio-serial port fed by a
//! relay).
//!
//! The console (ttyS0, whatever `/dev/console` points at) carries only what
//! the workload and the kernel write: output post-processing is switched off
//! so a `\n` stays a `\n` and the host's `app.log` holds the workload's bytes
//! unchanged. Status events go to the second port ([`lodge_guest::STATUS_TTY`])
//! in raw mode, one line each. A guest booted without a second port still
//! runs; its status lines are dropped.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use lodge_guest::{StatusEvent, FAST_CONSOLE_FLAG, FAST_CONSOLE_PORT, STATUS_TTY};

use crate::{sys, virtio_ports};

/// The terminal device behind `/dev/console`, e.g. `/dev/ttyS0`.
fn console_device() -> String {
    std::fs::read_to_string("/sys/class/tty/console/active")
        .ok()
        .and_then(|active| active.split_whitespace().last().map(str::to_owned))
        .map(|name| format!("/dev/{name}"))
        .filter(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| "/dev/console".to_owned())
}

fn open_tty(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// The user-visible console, installed as PID 1's stdin/stdout/stderr.
///
/// If a workload makes the console its controlling terminal and exits, the
/// kernel hangs the terminal up and every open descriptor of it fails from
/// then on; [`Console::write`] and [`Console::drain`] then reopen it.
pub struct Console {
    path: String,
    tty: RefCell<Option<File>>,
}

impl Console {
    /// Open the console device, switch off output processing and make it
    /// our standard streams. Never fails: without a console the init still
    /// does its job, it just cannot tell anyone.
    pub fn open() -> Self {
        let console = Self {
            path: console_device(),
            tty: RefCell::new(None),
        };
        console.reopen();
        console
    }

    fn reopen(&self) {
        let tty = open_tty(&self.path)
            .or_else(|_| open_tty("/dev/console"))
            .ok();
        if let Some(tty) = &tty {
            // Not a terminal (or no termios) is fine: bytes pass unchanged.
            let _ = sys::disable_output_processing(tty);
            let _ = sys::install_stdio(tty);
        }
        *self.tty.borrow_mut() = tty;
    }

    /// Retry `op` once on a fresh descriptor if it fails on the old one.
    fn with_tty(&self, op: impl Fn(&File) -> std::io::Result<()>) {
        let failed = self
            .tty
            .borrow()
            .as_ref()
            .is_none_or(|tty| op(tty).is_err());
        if failed {
            self.reopen();
            if let Some(tty) = self.tty.borrow().as_ref() {
                let _ = op(tty);
            }
        }
    }

    /// The console's fd for the workload's standard streams (stderr's fd,
    /// which is the console too, when it could not be opened).
    pub fn raw_fd(&self) -> RawFd {
        self.tty.borrow().as_ref().map_or(2, AsRawFd::as_raw_fd)
    }

    /// A second descriptor of the console, for another thread.
    pub fn try_clone(&self) -> Option<File> {
        self.tty
            .borrow()
            .as_ref()
            .and_then(|tty| tty.try_clone().ok())
    }

    /// Write `text` exactly as given.
    pub fn write(&self, text: &str) {
        self.with_tty(|mut tty| tty.write_all(text.as_bytes()));
    }

    /// Wait until everything written to the console has left the UART.
    pub fn drain(&self) {
        self.with_tty(|tty: &File| sys::drain(&tty.as_raw_fd()));
    }
}

/// The workload's fast console: the virtio-serial port named
/// [`FAST_CONSOLE_PORT`] when the kernel command line asks for it
/// ([`FAST_CONSOLE_FLAG`]). The kernel and lodge-init keep the serial
/// console, so nothing printed before the virtio driver is up is lost; the
/// host merges both into one log.
///
/// The workload does not write to the port itself: its stdout and stderr
/// are a pipe, and a thread of PID 1 relays the pipe to the port. A port
/// can be opened only once, and images commonly reopen `/dev/stdout` (log
/// files linked to it), which works on a pipe. The relay also makes the
/// writes large: the pipe holds [`RELAY_PIPE`] bytes, so a chatty workload
/// fills it in small writes while the relay sends it on in few large ones
/// (the port takes up to 32 KiB per write, one guest exit each, where the
/// UART exits on every byte). stdin is the port itself (reads wait, as on
/// the serial console). Like `docker run` without `-t`, the workload's
/// output is not a terminal.
///
/// Backpressure: the port's writes wait while the host is behind, the
/// relay waits with them, the pipe fills and the workload waits.
/// [`FastConsole::finish`] returns once every byte in the pipe was handed
/// to the port (which the host takes as it is handed over, see the
/// monitor's `blocking`).
pub struct FastConsole {
    port: File,
    /// The pipe's write end, until the workload holds it.
    output: Option<PipeWriter>,
    /// Written to by [`FastConsole::finish`]: relay what is left, then end.
    stop: PipeWriter,
    relay: JoinHandle<()>,
}

/// Bytes the workload may write ahead of the relay.
const RELAY_PIPE: usize = 1 << 20;
/// The relay's read buffer.
const RELAY_BUF: usize = 256 << 10;

impl FastConsole {
    /// Opens the fast console if the command line asks for it, waiting up
    /// to `timeout` for the port (it appears shortly after the virtio
    /// driver loads), and starts the relay. Should the port fail later, the
    /// relay goes on to `fallback` (the serial console). `Err` says why it
    /// could not be used.
    pub fn open_if_asked(
        timeout: Duration,
        fallback: Option<File>,
    ) -> Option<Result<Self, String>> {
        let asked = std::fs::read_to_string("/proc/cmdline")
            .map(|cmdline| {
                cmdline
                    .split_whitespace()
                    .any(|arg| arg == FAST_CONSOLE_FLAG)
            })
            .unwrap_or(false);
        if !asked {
            return None;
        }
        let Some(device) = virtio_ports::find(FAST_CONSOLE_PORT, timeout) else {
            return Some(Err(format!("no port named {FAST_CONSOLE_PORT}")));
        };
        Some(Self::start(&device, fallback).map_err(|err| format!("{}: {err}", device.display())))
    }

    fn start(device: &Path, fallback: Option<File>) -> std::io::Result<Self> {
        let port = open_tty(&device.to_string_lossy())?;
        let (input, output) = std::io::pipe()?;
        // A smaller pipe only makes the relay's writes smaller.
        let _ = sys::set_pipe_size(&input, RELAY_PIPE);
        let (stop_read, stop) = std::io::pipe()?;
        let relay_port = port.try_clone()?;
        let relay = std::thread::Builder::new()
            .name("fast-console".to_owned())
            .spawn(move || relay(input, stop_read, relay_port, fallback))?;
        Ok(Self {
            port,
            output: Some(output),
            stop,
            relay,
        })
    }

    /// The descriptors for the workload's stdin and its stdout and stderr.
    pub fn stdio(&self) -> (RawFd, RawFd) {
        let output = self
            .output
            .as_ref()
            .map_or(self.port.as_raw_fd(), AsRawFd::as_raw_fd);
        (self.port.as_raw_fd(), output)
    }

    /// The workload holds the pipe now: drop our write end, so the pipe
    /// ends when the workload (and whatever inherited it) is gone.
    pub fn started(&mut self) {
        self.output = None;
    }

    /// Everything left in the pipe goes to the port, then the relay ends.
    /// Call once every writer is dead (the relay does not wait for them).
    pub fn finish(mut self) {
        self.output = None;
        match (&self.stop).write_all(b"x") {
            // A broken pipe: the relay already ended (every writer is gone).
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
            // Without the signal the relay still ends at the pipe's end.
            Err(err) => eprintln!("lodge-init: stopping the fast console relay: {err}"),
        }
        if self.relay.join().is_err() {
            eprintln!("lodge-init: the fast console relay panicked");
        }
    }
}

/// Copies the workload's pipe to the port until every writer has closed
/// it or `stop` says so (then it takes what is in the pipe and ends).
fn relay(mut input: PipeReader, stop: PipeReader, port: File, fallback: Option<File>) {
    let mut out = Some(port);
    let mut buf = vec![0u8; RELAY_BUF];
    let mut stopping = false;
    loop {
        if !stopping {
            match sys::poll_readable(&[input.as_raw_fd(), stop.as_raw_fd()], -1) {
                Ok(ready) if ready.get(1) == Some(&true) => {
                    stopping = sys::set_nonblocking(&input).is_ok();
                }
                Ok(_) => {}
                // A read that waits works as well, only without `stop`.
                Err(_) => {}
            }
        }
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock && !stopping => continue,
            Err(_) => return,
        };
        let chunk = &buf[..n];
        if let Some(port) = out.as_mut() {
            match write_all(port, chunk) {
                Ok(()) => continue,
                Err((done, err)) => {
                    out = None;
                    if let Some(mut serial) = fallback.as_ref() {
                        let _ = serial.write_all(
                            format!(
                                "\nlodge-init: the fast console failed ({err}); \
                                 the workload's output goes on here\n"
                            )
                            .as_bytes(),
                        );
                        let _ = serial.write_all(&chunk[done..]);
                    }
                }
            }
        } else if let Some(mut serial) = fallback.as_ref() {
            let _ = serial.write_all(chunk);
        }
    }
}

/// `write_all` that says how much was written before an error.
fn write_all(port: &mut File, mut chunk: &[u8]) -> Result<(), (usize, std::io::Error)> {
    let total = chunk.len();
    while !chunk.is_empty() {
        match port.write(chunk) {
            Ok(0) => {
                return Err((
                    total - chunk.len(),
                    std::io::Error::from(std::io::ErrorKind::WriteZero),
                ))
            }
            Ok(n) => chunk = &chunk[n..],
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err((total - chunk.len(), err)),
        }
    }
    Ok(())
}

/// The host's status channel on the second serial port.
pub struct StatusPort {
    tty: Option<File>,
}

impl StatusPort {
    pub fn open() -> Self {
        let tty = open_tty(STATUS_TTY).ok();
        if let Some(tty) = &tty {
            let _ = sys::make_raw(tty);
        }
        Self { tty }
    }

    pub fn send(&self, event: &StatusEvent) {
        if let Some(mut tty) = self.tty.as_ref() {
            let _ = tty.write_all(event.line().as_bytes());
        }
    }

    /// Wait until everything written has left the UART, so a power-off
    /// right after cannot cut the last line.
    pub fn drain(&self) {
        if let Some(tty) = &self.tty {
            let _ = sys::drain(tty);
        }
    }
}
