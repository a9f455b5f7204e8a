//! Terminals: the serial ports' modes (PID 1) and the pseudo-terminals of
//! interactive execs (the agent).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt::check;

/// Put a terminal in raw mode (no echo, no line editing, no output
/// processing) so status lines reach the host byte for byte.
pub fn make_raw(fd: &impl AsRawFd) -> io::Result<()> {
    update_termios(fd, |t| {
        // SAFETY: `t` points to an initialised termios.
        unsafe { libc::cfmakeraw(t) }
    })
}

/// Turn off output post-processing (the `\n` to `\r\n` mapping) so what the
/// workload writes reaches the console log unchanged; input stays cooked.
pub fn disable_output_processing(fd: &impl AsRawFd) -> io::Result<()> {
    update_termios(fd, |t| t.c_oflag &= !libc::OPOST)
}

fn update_termios(fd: &impl AsRawFd, change: impl FnOnce(&mut libc::termios)) -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid out-pointer.
    check(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) })?;
    change(&mut t);
    // SAFETY: `t` is a valid termios obtained from tcgetattr.
    check(unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) })?;
    Ok(())
}

/// `tcdrain(3)`: wait until all output written to the terminal was sent.
pub fn drain(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: tcdrain takes a plain fd.
    check(unsafe { libc::tcdrain(fd.as_raw_fd()) })?;
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
