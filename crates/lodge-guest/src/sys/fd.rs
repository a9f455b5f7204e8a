//! Calls on plain file descriptors: waiting for input, blocking mode, the
//! standard streams.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::cvt::check;

/// `poll(2)` for readability on `fds`; returns which ones are readable (or
/// hung up). `timeout_ms < 0` waits forever.
pub fn poll_readable(fds: &[RawFd], timeout_ms: libc::c_int) -> io::Result<Vec<bool>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: the pointer and length describe `pollfds`, which is live.
    let ret = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(err);
    }
    Ok(pollfds.iter().map(|p| p.revents != 0).collect())
}

/// `F_SETPIPE_SZ`: make the pipe `fd` hold `bytes` (rounded up to pages).
pub fn set_pipe_size(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: fcntl on an open fd with an integer argument.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) })?;
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

/// Make `fd` the process's standard input, output and error.
pub fn install_stdio(fd: &impl AsRawFd) -> io::Result<()> {
    for target in 0..3 {
        if fd.as_raw_fd() != target {
            // SAFETY: dup2 on an open fd and a small target number.
            check(unsafe { libc::dup2(fd.as_raw_fd(), target) })?;
        }
    }
    Ok(())
}
