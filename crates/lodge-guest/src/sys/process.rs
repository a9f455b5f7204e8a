//! Calls on processes that already exist: signalling, reaping, sessions.
//! (Creating them is `spawn`'s job.)
#![allow(unsafe_code)]

use std::io;

use super::cvt::check;

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// `setsid(2)`: a session (and process group) of our own, so signals sent
/// to the process group we came from never reach us.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })?;
    Ok(())
}

/// How a child ended, from `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    fn from_wait(status: libc::c_int) -> Self {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        }
    }
}

/// Reap one exited child without blocking: `Ok(None)` when children exist
/// but none has exited, `Err` with `ECHILD` when there are no children.
pub fn reap_one() -> io::Result<Option<(libc::pid_t, ExitStatus)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid out-pointer for the call.
    let pid = check(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) })?;
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some((pid, ExitStatus::from_wait(status))))
}

/// Wait for a specific child, blocking.
pub fn wait_for(pid: libc::pid_t) -> io::Result<ExitStatus> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the call.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(ExitStatus::from_wait(status))
}
