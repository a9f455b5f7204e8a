//! Everything that runs in a child between fork and exec, and the fork
//! itself: the only place in `lodge-init` that code runs in a forked copy
//! of the process.
//!
//! The child side may run after a fork of a multi-threaded process (the
//! agent), so it touches only data prepared by the parent and makes only
//! async-signal-safe calls: `rt_sigaction`, `sigprocmask`, `setsid`, `dup2`,
//! `chroot`, `chdir`, `mkdir`, `setgroups`, `setgid`, `setuid`, `ioctl`,
//! `execve`, `write` and `_exit`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::sys;

use super::plan::{ChildStep, ExecPlan, Session, Spawned};

/// The highest signal number, asked of the C library in the parent (the
/// child must not call anything that might not be async-signal-safe).
fn last_signal() -> libc::c_int {
    libc::SIGRTMAX()
}

/// The kernel's `struct sigaction` with every field zero: `SIG_DFL`, no
/// flags, no restorer, an empty mask. Four words cover its layout on every
/// Linux architecture that has `rt_sigaction` this way (the kernel reads
/// only its own size of it).
const DEFAULT_ACTION: [u64; 4] = [0; 4];

/// Bytes of the kernel's signal set, the last argument of `rt_sigaction`.
const KERNEL_SIGSET_BYTES: usize = 8;

/// Give the calling (child) process the signal state a freshly started
/// program expects, as runc and systemd do: every disposition back to its
/// default, then an empty mask. The order matters: unblocking first could
/// deliver a pending signal to a handler inherited from the parent.
///
/// Only exec resets *handled* signals by itself; *ignored* ones survive it,
/// and the Rust runtime ignores SIGPIPE in every lodge-init process.
///
/// The dispositions are set with the raw `rt_sigaction` system call, since
/// the C library refuses to touch the signals it reserves for itself (32
/// and 33 in glibc), which a parent may still have ignored. A failure
/// there (SIGKILL, SIGSTOP) is skipped: those are never ignored anyway.
/// Returns the errno of a failed `sigprocmask`.
pub(super) fn reset_signals(last: libc::c_int) -> Result<(), i32> {
    // SAFETY: rt_sigaction and sigprocmask are plain system calls, safe
    // between fork and exec; `DEFAULT_ACTION` outlives the calls, the old
    // action is not asked for, and `empty` is a local set initialised by
    // sigemptyset before use.
    unsafe {
        for signal in 1..=last {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                DEFAULT_ACTION.as_ptr(),
                std::ptr::null_mut::<libc::c_void>(),
                KERNEL_SIGSET_BYTES,
            );
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Have `cmd`'s child reset its signal state just before exec (in the
/// parent's session: [`Session::Inherit`] is the only one).
pub fn install_pre_exec(cmd: &mut Command, session: Session) {
    let Session::Inherit = session;
    let last = last_signal();
    let hook = move || -> io::Result<()> {
        reset_signals(last).map_err(io::Error::from_raw_os_error)?;
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec; it captures
    // only a copied integer and makes only async-signal-safe
    // calls (see `reset_signals`), touching no memory shared with threads
    // of the parent.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Fork, set up the child as described by `plan` and exec it. Returns once
/// the exec succeeded (the close-on-exec pipe reads EOF) or failed.
pub fn fork_exec(plan: &ExecPlan) -> io::Result<Spawned> {
    let argv = null_terminated(&plan.argv);
    let envp = null_terminated(&plan.envp);
    let last = last_signal();
    let mut pipe_fds = [0 as libc::c_int; 2];
    // SAFETY: `pipe_fds` has room for the two fds pipe2 writes.
    sys::check(unsafe { libc::pipe2(pipe_fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh fds that nothing else owns.
    let (read_end, write_end) = unsafe {
        (
            OwnedFd::from_raw_fd(pipe_fds[0]),
            OwnedFd::from_raw_fd(pipe_fds[1]),
        )
    };

    // SAFETY: the child makes only async-signal-safe calls on data
    // prepared above (see `child`), so it is sound even if the parent had
    // other threads.
    let pid = sys::check(unsafe { libc::fork() })?;
    if pid == 0 {
        let (step, errno) = child(plan, last, &argv, &envp);
        let mut report = [0u8; 5];
        report[0] = step.code();
        report[1..].copy_from_slice(&errno.to_le_bytes());
        // SAFETY: writing a stack buffer to our pipe end, then leaving
        // without running any parent cleanup (atexit handlers, buffers).
        unsafe {
            libc::write(write_end.as_raw_fd(), report.as_ptr().cast(), report.len());
            libc::_exit(127)
        }
    }
    drop(write_end);

    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: the buffer slice is writable and owned by `report`.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    if got == 0 {
        return Ok(Spawned::Running(pid));
    }
    sys::wait_for(pid)?;
    let step = ChildStep::from_code(report[0]).unwrap_or(ChildStep::Exec);
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    Ok(Spawned::Failed { step, errno })
}

/// The `argv`/`envp` shape exec wants: the strings' pointers, then NULL.
pub(super) fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child half of [`fork_exec`]; returns only on failure.
fn child(
    plan: &ExecPlan,
    last: libc::c_int,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> (ChildStep, i32) {
    if let Err(errno) = reset_signals(last) {
        return (ChildStep::Session, errno);
    }
    // SAFETY (whole block): only async-signal-safe syscalls on pointers
    // to NUL-terminated strings and arrays owned by `plan` and the caller,
    // all alive until exec or _exit.
    unsafe {
        if libc::setsid() < 0 {
            return (ChildStep::Session, errno());
        }
        for (from, target) in [(plan.stdin, 0), (plan.console, 1), (plan.console, 2)] {
            if libc::dup2(from, target) < 0 {
                return (ChildStep::Session, errno());
            }
        }
        // No TIOCSCTTY on purpose: when a session leader with a controlling
        // serial terminal exits, the kernel hangs the terminal up, and that
        // discards output still queued for the UART, the workload's last
        // bytes. Like `docker run` without -t, the workload has no
        // controlling terminal.

        if libc::chroot(plan.root.as_ptr()) < 0 || libc::chdir(c"/".as_ptr()) < 0 {
            return (ChildStep::Chroot, errno());
        }
        for prefix in &plan.workdir_prefixes {
            // Existing components (EEXIST) are expected; a real problem
            // shows up as the chdir below failing.
            libc::mkdir(prefix.as_ptr(), 0o755);
        }
        if libc::chdir(plan.workdir.as_ptr()) < 0 {
            return (ChildStep::Workdir, errno());
        }
        if let Some((uid, gid)) = plan.ids {
            if libc::setgroups(0, std::ptr::null()) < 0
                || libc::setgid(gid) < 0
                || libc::setuid(uid) < 0
            {
                return (ChildStep::User, errno());
            }
        }

        // The PATH search: try every candidate like execvp, but with the
        // workload's PATH; remember a permission error so that "found but
        // not executable" wins over "not found", as in shells and Go.
        let mut saw_eacces = false;
        let mut last = libc::ENOENT;
        for candidate in &plan.candidates {
            libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr());
            last = errno();
            match last {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => {}
                _ => return (ChildStep::Exec, last),
            }
        }
        (
            ChildStep::Exec,
            if saw_eacces { libc::EACCES } else { last },
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Ignore SIGPIPE and SIGUSR2 and block SIGUSR1 in `cmd`'s child, in a
    /// hook that runs before any installed later.
    pub fn spoil_signals_before_exec(cmd: &mut Command) {
        // SAFETY: signal and sigprocmask are async-signal-safe; the set is
        // a local value initialised by sigemptyset.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                libc::signal(libc::SIGUSR2, libc::SIG_IGN);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
    }
}
