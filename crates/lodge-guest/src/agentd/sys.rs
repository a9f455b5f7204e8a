//! The few Linux calls the agent needs that neither std nor the init's
//! `sys` module wraps: its own session, chroot, SIGIO on the port,
//! pseudo-terminals, and the pre-exec hook that gives each command its own
//! session (and controlling terminal). All of the agent's `unsafe` is here.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `setsid(2)`: a session (and process group) of our own, so signals the
/// workload sends to its process group never reach the agent.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })?;
    Ok(())
}

/// `chroot(2)` into `root`, then `chdir("/")`.
pub fn chroot(root: &str) -> io::Result<()> {
    let root = CString::new(root)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in root"))?;
    // SAFETY: `root` is a valid NUL-terminated string.
    check(unsafe { libc::chroot(root.as_ptr()) })?;
    std::env::set_current_dir("/")
}

/// Ask for SIGIO on `fd` (virtio-serial sends it when the host side
/// connects or disconnects, and when data arrives).
pub fn request_sigio(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on an open fd with integer arguments.
    unsafe {
        check(libc::fcntl(fd, libc::F_SETOWN, libc::getpid()))?;
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC))?;
    }
    Ok(())
}

/// Make `fd` non-blocking.
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on an open fd with integer arguments.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: if rows == 0 { 24 } else { rows },
        ws_col: if cols == 0 { 80 } else { cols },
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A new pseudo-terminal `(master, slave)` of the given size, both
/// close-on-exec (the slave reaches the command through `dup2`).
pub fn openpty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let size = winsize(rows, cols);
    // SAFETY: valid out-pointers for the two fds; null name and termios
    // ask for defaults; `size` outlives the call.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    })?;
    // SAFETY: openpty returned two fresh fds that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on an open fd with integer arguments.
        check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok((master, slave))
}

/// Set a terminal's window size; the kernel sends SIGWINCH to its
/// foreground process group.
pub fn set_winsize(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = winsize(rows, cols);
    // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) })?;
    Ok(())
}

/// Make the spawned command a session leader (so its whole process group
/// can be killed), with its stdin as controlling terminal when `tty`.
pub fn new_session_on_exec(cmd: &mut Command, tty: bool) {
    // SAFETY: the hook runs in the forked child before exec and makes only
    // async-signal-safe syscalls (setsid, ioctl) on no shared memory.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
