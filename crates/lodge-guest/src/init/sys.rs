//! Thin, safe wrappers over the Linux calls a PID 1 needs and std lacks.
//!
//! All of `lodge-init`'s `unsafe` lives here, one small function per call,
//! each block with its `SAFETY:` note, so the rest of the init is plain
//! Rust. The workload is started with a hand-rolled fork+exec
//! ([`spawn`]) rather than `std::process::Command` because the init needs
//! things `Command` does not give: chroot before the user switch, the exact
//! environment order docker produces, a `PATH` search inside the chroot
//! with the workload's own `PATH`, and a precise report of which step of
//! the exec failed. The child side touches only data prepared by the parent
//! and makes only async-signal-safe calls.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in string"))
}

/// `mount(2)`.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstring(source)?;
    let target = cstring(target)?;
    let fstype = cstring(fstype)?;
    let data = data.map(cstring).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: every pointer is a valid NUL-terminated string (or null for
    // `data`, which mount accepts) that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    })?;
    Ok(())
}

/// `umount2(2)`.
pub fn umount(target: &str, flags: libc::c_int) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: `target` is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })?;
    Ok(())
}

/// Load a kernel module from an open `.ko` file (`finit_module(2)`).
pub fn finit_module(file: &impl AsRawFd) -> io::Result<()> {
    let params = c"";
    // SAFETY: the fd is open for the duration of the call and `params` is a
    // valid empty C string; flags 0 asks for no special behaviour.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// Power the machine off. Returns only if the kernel refused.
pub fn power_off() -> io::Error {
    // SAFETY: reboot with a valid command; on success it does not return.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

/// Make Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
pub fn disable_ctrl_alt_del() -> io::Result<()> {
    // SAFETY: reboot with a valid command that only flips a kernel flag.
    check(unsafe { libc::reboot(libc::RB_DISABLE_CAD) })?;
    Ok(())
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// How a child ended, from `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
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
    let status = if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    };
    Ok(Some((pid, status)))
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
    Ok(if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    })
}

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

/// Everything the child needs to become the workload, prepared by the
/// parent so the child allocates nothing.
pub struct ExecPlan {
    /// Directory to chroot into.
    pub root: CString,
    /// Each prefix of the working directory, shortest first, to create.
    pub workdir_prefixes: Vec<CString>,
    pub workdir: CString,
    /// `(uid, gid)` to switch to; `None` stays root.
    pub ids: Option<(libc::uid_t, libc::gid_t)>,
    /// The console, for stdin, stdout and stderr.
    pub console: RawFd,
    /// Paths to try with execve, in order (the PATH search, done up front).
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

/// The child's step that failed, reported to the parent over a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStep {
    Session,
    Chroot,
    Workdir,
    User,
    Exec,
}

impl ChildStep {
    fn code(self) -> u8 {
        match self {
            ChildStep::Session => 1,
            ChildStep::Chroot => 2,
            ChildStep::Workdir => 3,
            ChildStep::User => 4,
            ChildStep::Exec => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => ChildStep::Session,
            2 => ChildStep::Chroot,
            3 => ChildStep::Workdir,
            4 => ChildStep::User,
            5 => ChildStep::Exec,
            _ => return None,
        })
    }
}

/// Result of [`spawn`].
#[derive(Debug)]
pub enum Spawned {
    /// The workload was exec'd and runs as this pid.
    Running(libc::pid_t),
    /// The child failed at `step` with `errno` and has been reaped.
    Failed { step: ChildStep, errno: i32 },
}

/// Fork, set up the child as described by `plan` and exec it. Returns once
/// the exec succeeded (the close-on-exec pipe reads EOF) or failed.
pub fn spawn(plan: &ExecPlan) -> io::Result<Spawned> {
    let argv = null_terminated(&plan.argv);
    let envp = null_terminated(&plan.envp);
    let mut pipe_fds = [0 as RawFd; 2];
    // SAFETY: `pipe_fds` has room for the two fds pipe2 writes.
    check(unsafe { libc::pipe2(pipe_fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh fds that nothing else owns.
    let (read_end, write_end) = unsafe {
        (
            OwnedFd::from_raw_fd(pipe_fds[0]),
            OwnedFd::from_raw_fd(pipe_fds[1]),
        )
    };

    // SAFETY: PID 1 is single-threaded, so the child may run any code; it
    // still only makes async-signal-safe calls on data prepared above.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        let (step, errno) = child(plan, &argv, &envp);
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
    wait_for(pid)?;
    let step = ChildStep::from_code(report[0]).unwrap_or(ChildStep::Exec);
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    Ok(Spawned::Failed { step, errno })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
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

/// The child half of [`spawn`]; returns only on failure.
fn child(
    plan: &ExecPlan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> (ChildStep, i32) {
    let empty = sigset(&[]);
    // SAFETY (whole function): only async-signal-safe syscalls on pointers
    // to NUL-terminated strings and arrays owned by `plan` and the caller,
    // all alive until exec or _exit.
    unsafe {
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0
            || libc::setsid() < 0
        {
            return (ChildStep::Session, errno());
        }
        for target in 0..3 {
            if libc::dup2(plan.console, target) < 0 {
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

/// The `strerror` text of an errno, lowercased like Go's error strings.
pub fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text
        .split_once(" (os error")
        .map_or(text.as_str(), |(head, _)| head);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("errno {errno}"),
    }
}

/// [`errno_text`] for an `io::Error`, falling back to its own text.
pub fn errno_text_of(err: &io::Error) -> String {
    err.raw_os_error()
        .map_or_else(|| err.to_string(), errno_text)
}
