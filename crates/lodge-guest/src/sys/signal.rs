//! Signals taken over through signalfd: PID 1's forwarded and reaping
//! signals, the agent's SIGIO from its port.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt::check;

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully and
    // sigaddset only fails for invalid signal numbers, which callers avoid.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Block `signals` for the process and return a non-blocking signalfd that
/// delivers them. PID 1 gets no default action for most signals, but
/// blocked ones are still queued, so nothing sent early is lost.
pub fn block_into_signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let set = sigset(signals);
    // SAFETY: `set` is an initialised sigset; the old mask is not wanted.
    let ret = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    check(ret)?;
    // SAFETY: -1 asks for a new fd; `set` is initialised.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: signalfd returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Read the next pending signal number from a signalfd, `None` when none.
pub fn read_signal(fd: &OwnedFd) -> io::Result<Option<libc::c_int>> {
    // SAFETY: signalfd_siginfo is plain data and all-zero is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: the buffer is `size` writable bytes owned by `info`.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(err),
        };
    }
    if n as usize != size {
        return Ok(None);
    }
    Ok(libc::c_int::try_from(info.ssi_signo).ok())
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
