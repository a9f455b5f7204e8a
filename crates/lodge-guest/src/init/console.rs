//! The two serial ports, the user's console and the host's status channel,
//! and the workload's optional fast (virtio) console.
//!
//! The console (ttyS0, whatever `/dev/console` points at) carries only what
//! the workload and the kernel write: output post-processing is switched off
//! so a `\n` stays a `\n` and the host's `app.log` holds the workload's bytes
//! unchanged. Status events go to the second port ([`lodge_guest::STATUS_TTY`])
//! in raw mode, one line each. A guest booted without a second port still
//! runs; its status lines are dropped.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use std::time::{Duration, Instant};

use lodge_guest::{StatusEvent, FAST_CONSOLE_DEVICE, FAST_CONSOLE_FLAG, STATUS_TTY};

use crate::sys;

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

    /// Write `text` exactly as given.
    pub fn write(&self, text: &str) {
        self.with_tty(|mut tty| tty.write_all(text.as_bytes()));
    }

    /// Wait until everything written to the console has left the UART.
    pub fn drain(&self) {
        self.with_tty(|tty: &File| sys::drain(&tty.as_raw_fd()));
    }
}

/// The workload's fast console: the virtio console ([`FAST_CONSOLE_DEVICE`])
/// when the kernel command line asks for it ([`FAST_CONSOLE_FLAG`]). The
/// kernel and lodge-init keep the serial console, so nothing printed before
/// the virtio driver is up is lost; the host merges both into one log.
///
/// Output processing is off as on the serial console. The virtio console
/// hands each write to the host and waits until the host took it, so when
/// the host's pipe is full the workload waits; [`FastConsole::drain`]
/// returning means every byte left the guest.
pub struct FastConsole {
    tty: File,
}

impl FastConsole {
    /// Opens the fast console if the command line asks for it, waiting up
    /// to `timeout` for the device (the port appears shortly after the
    /// virtio driver loads). `Err` says why it could not be used.
    pub fn open_if_asked(timeout: Duration) -> Option<Result<Self, String>> {
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
        let deadline = Instant::now() + timeout;
        loop {
            match open_tty(FAST_CONSOLE_DEVICE) {
                Ok(tty) => {
                    // Not a terminal is fine: bytes pass unchanged.
                    let _ = sys::disable_output_processing(&tty);
                    return Some(Ok(Self { tty }));
                }
                Err(err) if Instant::now() >= deadline => {
                    return Some(Err(format!("{FAST_CONSOLE_DEVICE}: {err}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// The descriptor for the workload's standard streams.
    pub fn raw_fd(&self) -> RawFd {
        self.tty.as_raw_fd()
    }

    /// Wait until everything written has left the guest.
    pub fn drain(&self) {
        let _ = sys::drain(&self.tty);
    }
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
