//! Starting an exec'd command without copying the agent: `clone` with
//! `CLONE_VM | CLONE_VFORK`, as glibc's `posix_spawn` does, instead of the
//! `fork` that std's `Command` falls back to whenever a `pre_exec` hook or a
//! user switch is asked for.
//!
//! Why: the agent is multi-threaded, and a fork copies its page tables and
//! turns every page it then writes into a copy-on-write fault, in the child
//! until exec and in the agent's running threads after. Under software
//! emulation each of those faults is emulated kernel work; sharing the
//! address space costs none of it. `CLONE_VFORK` suspends the calling
//! thread until the child has exec'd or exited, so a failure is reported
//! through shared memory rather than a close-on-exec pipe.
//!
//! What the child does is what std's `Command` plus the old `pre_exec`
//! hook did, in the same order, with the same errors: the three standard
//! streams, the group and user switch, the working directory, every signal
//! back to its default with an empty mask, a new session (and the terminal
//! as its controlling one), then glibc's `execvp` search of the command's
//! own `PATH` (including its `/bin/sh` retry of a file without a magic
//! number).
//!
//! Safety argument (the child shares memory with the agent's other threads,
//! which keep running):
//!
//! - every signal is blocked in the calling thread across the clone, so no
//!   handler of the agent ever runs on the child's stack; the child resets
//!   every disposition to the default (its handler table is its own: no
//!   `CLONE_SIGHAND`) before it unblocks anything;
//! - the child runs on a stack of its own (a mapping with a guard page,
//!   held under a lock while a child uses it) and touches only data the
//!   parent prepared and keeps alive until the clone returns: no allocation,
//!   no lock, no panic path, no thread-local but `errno` (the suspended
//!   caller's, which it re-reads only after its own calls);
//! - it makes raw system calls only for the credentials: glibc's `setuid`
//!   would broadcast the change to every thread it knows, which are the
//!   agent's; the kernel's call changes only the calling task, the child;
//! - it leaves by `execve` or `_exit`, never by returning into the agent.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use super::child::{null_terminated, reset_signals};

/// glibc's default search path when the environment has no `PATH`
/// (`_CS_PATH`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// glibc's `execvp` refuses a file name this long or longer.
const NAME_MAX: usize = 255;

/// A `PATH` entry this long or longer is skipped by glibc's `execvp`.
const PATH_MAX: usize = 4096;

/// The shell glibc's `execvp` hands a file without a magic number to.
const SHELL: &std::ffi::CStr = c"/bin/sh";

/// Bytes of the child's stack; the child runs a few small frames only.
const STACK_BYTES: usize = 64 << 10;

/// Everything the child needs, prepared by the parent so the child
/// allocates nothing.
pub struct CommandPlan {
    /// The fds to install as stdin, stdout and stderr.
    pub stdio: [RawFd; 3],
    /// `(uid, gid)` to switch to; `None` stays as the agent is.
    pub ids: Option<(libc::uid_t, libc::gid_t)>,
    pub cwd: CString,
    /// Make stdin the new session's controlling terminal.
    pub terminal: bool,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// What to execve, in order: the `PATH` search done up front.
    candidates: Vec<CString>,
    /// The error the search fails with before trying anything
    /// (`ENAMETOOLONG`), as glibc's `execvp`.
    refused: i32,
}

impl CommandPlan {
    /// A plan for `argv` (its first element is the program) with the
    /// environment `env` (`KEY=VALUE`). A NUL byte anywhere is
    /// `InvalidInput`, as std's `Command` reports it.
    pub fn new(
        argv: &[String],
        env: &[String],
        cwd: &str,
        stdio: [RawFd; 3],
        ids: Option<(libc::uid_t, libc::gid_t)>,
        terminal: bool,
    ) -> io::Result<CommandPlan> {
        let nul = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "nul byte found in provided data",
            )
        };
        let cstrings = |items: &[String]| -> io::Result<Vec<CString>> {
            items
                .iter()
                .map(|s| CString::new(s.as_str()).map_err(|_| nul()))
                .collect()
        };
        let program = argv.first().map(String::as_str).unwrap_or_default();
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let as_root = match ids {
            Some((uid, _)) => uid == 0,
            None => rustix::process::geteuid().is_root(),
        };
        let (candidates, refused) = match search(program, path) {
            Ok(c) if as_root => {
                let (c, refused) = skip_missing(c);
                (cstrings(&c)?, refused)
            }
            Ok(c) => (cstrings(&c)?, 0),
            Err(errno) => (Vec::new(), errno),
        };
        Ok(CommandPlan {
            stdio,
            ids,
            cwd: CString::new(cwd).map_err(|_| nul())?,
            terminal,
            argv: cstrings(argv)?,
            envp: cstrings(env)?,
            candidates,
            refused,
        })
    }
}

/// The files glibc's `execvp` tries for `program` in `path`, in order, or
/// the errno it fails with before trying any.
pub fn search(program: &str, path: &str) -> Result<Vec<String>, i32> {
    if program.is_empty() {
        return Err(libc::ENOENT);
    }
    if program.contains('/') {
        return Ok(vec![program.to_owned()]);
    }
    if program.len() >= NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    let entries: Vec<&str> = path.split(':').collect();
    let mut out = Vec::with_capacity(entries.len());
    for (i, dir) in entries.iter().enumerate() {
        if dir.len() >= PATH_MAX {
            // glibc skips it without moving past its ':', so an entry
            // follows as if empty: the current directory.
            if i + 1 < entries.len() {
                out.push(program.to_owned());
            }
            continue;
        }
        if dir.is_empty() {
            out.push(program.to_owned());
        } else {
            out.push(format!("{dir}/{program}"));
        }
    }
    Ok(out)
}

/// `candidates` without the leading absolute ones that do not exist, and
/// when none is left, the errno the last of them gave (else 0).
///
/// Why: on the guest's kernel (6.1) a failed `execve` sets up a whole new
/// address space before it looks the file up, so the usual search of
/// `/usr/local/sbin:…:/bin` for a command in `/bin` cost five of them
/// (~0.23 ms of an exec under TCG); a lookup costs a few microseconds.
/// Only for a child that runs as root, in the agent's own root, and only a
/// prefix of absolute names: root's lookup fails with ENOENT or ENOTDIR
/// exactly where the child's `execve` would, `execvp` goes on past those
/// without remembering them, and a later candidate it tries sets the
/// final errno as before. (Another user may meet EACCES on the way, which
/// `execvp` does remember, so its search is left whole.)
fn skip_missing(candidates: Vec<String>) -> (Vec<String>, i32) {
    let mut last = 0;
    let mut skip = 0;
    for candidate in &candidates {
        if !candidate.starts_with('/') {
            break;
        }
        match std::fs::metadata(candidate).map_err(|e| e.raw_os_error()) {
            Err(Some(errno @ (libc::ENOENT | libc::ENOTDIR))) => {
                last = errno;
                skip += 1;
            }
            _ => break,
        }
    }
    let rest = candidates.into_iter().skip(skip).collect::<Vec<_>>();
    let refused = if rest.is_empty() { last } else { 0 };
    (rest, refused)
}

/// The child's stack: a mapping with a guard page below it, made once and
/// reused, held under the lock while a child runs on it.
struct Stack {
    base: usize,
    len: usize,
}

static STACK: Mutex<Option<Stack>> = Mutex::new(None);

fn map_stack() -> io::Result<Stack> {
    // SAFETY: sysconf takes an integer.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let len = STACK_BYTES + page;
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the lowest page of the mapping just made; a stack overflow
    // then faults instead of writing below the mapping.
    if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } < 0 {
        let err = io::Error::last_os_error();
        // SAFETY: unmapping the mapping made above, which nothing uses.
        if unsafe { libc::munmap(base, len) } < 0 {
            eprintln!(
                "lodge-agent: unmap a spawn stack: {}",
                io::Error::last_os_error()
            );
        }
        return Err(err);
    }
    Ok(Stack {
        base: base as usize,
        len,
    })
}

/// What the child reads (all prepared by the parent) and writes (its
/// errno, when it cannot exec).
struct ChildArgs<'a> {
    plan: &'a CommandPlan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// Per candidate, the argv of the `/bin/sh` retry.
    script_argv: &'a [Vec<*const libc::c_char>],
    last_signal: libc::c_int,
    failed: AtomicI32,
}

/// Start the command `plan` describes. Returns its pid once it has exec'd;
/// an error is the errno of the child's step that failed (the child is
/// reaped then).
pub fn launch(plan: &CommandPlan) -> io::Result<libc::pid_t> {
    let argv = null_terminated(&plan.argv);
    let envp = null_terminated(&plan.envp);
    let script_argv: Vec<Vec<*const libc::c_char>> = plan
        .candidates
        .iter()
        .map(|c| {
            let mut v = Vec::with_capacity(argv.len() + 2);
            v.push(SHELL.as_ptr());
            v.push(c.as_ptr());
            v.extend(argv.iter().skip(1));
            if argv.len() <= 1 {
                v.push(std::ptr::null());
            }
            v
        })
        .collect();
    let args = ChildArgs {
        plan,
        argv: &argv,
        envp: &envp,
        script_argv: &script_argv,
        last_signal: libc::SIGRTMAX(),
        failed: AtomicI32::new(0),
    };

    let mut stack = STACK.lock().unwrap_or_else(|p| p.into_inner());
    if stack.is_none() {
        *stack = Some(map_stack()?);
    }
    let Some(region) = stack.as_ref() else {
        return Err(io::Error::from_raw_os_error(libc::ENOMEM));
    };
    // The top of the mapping, 16-byte aligned as the ABI wants.
    let top = ((region.base + region.len) & !15) as *mut libc::c_void;

    // Every signal, in the kernel's own set (glibc's `sigfillset` leaves
    // out the two it keeps for itself).
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: blocking every signal with the raw call touches only this
    // thread's mask, restored below; both sets are locals of the kernel's
    // size.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            KERNEL_SIGSET_BYTES,
        );
    }
    // SAFETY: see the module's safety argument. `args` and everything it
    // points to live on this frame until clone returns, which with
    // CLONE_VFORK is after the child exec'd or exited; `top` is the top of
    // a stack no one else uses while the lock is held.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&args as *const ChildArgs).cast_mut().cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restoring this thread's own mask saved above.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old as *const u64,
            std::ptr::null_mut::<u64>(),
            KERNEL_SIGSET_BYTES,
        );
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    match args.failed.load(Ordering::SeqCst) {
        0 => Ok(pid),
        errno => {
            crate::sys::wait_for(pid)?;
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// Bytes of the kernel's signal set.
const KERNEL_SIGSET_BYTES: usize = 8;

/// The errno of the last failed call (the suspended caller's slot, shared).
fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// A raw system call's result: the errno when it failed.
fn raw(ret: libc::c_long) -> Result<(), i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// The child: set up and exec, or record why not and exit.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive until we exec or
    // exit (the parent is suspended until then).
    let args = unsafe { &*(arg as *const ChildArgs) };
    let errno = match setup(args) {
        Ok(()) => exec(args),
        Err(errno) => errno,
    };
    args.failed
        .store(if errno == 0 { libc::EIO } else { errno }, Ordering::SeqCst);
    // SAFETY: leaving without running any of the agent's cleanup.
    unsafe { libc::_exit(127) }
}

/// Everything before the exec, in std's order and then the old hook's.
fn setup(args: &ChildArgs) -> Result<(), i32> {
    let plan = args.plan;
    // SAFETY (whole block): plain system calls on integers and on the
    // NUL-terminated `cwd` the parent keeps alive.
    unsafe {
        for (target, from) in plan.stdio.iter().enumerate() {
            loop {
                if libc::dup2(*from, target as libc::c_int) >= 0 {
                    break;
                }
                if errno() != libc::EINTR {
                    return Err(errno());
                }
            }
        }
        if let Some((uid, gid)) = plan.ids {
            raw(libc::syscall(libc::SYS_setgid, gid))?;
            if libc::syscall(libc::SYS_getuid) == 0 {
                // As std: a root parent's extra groups are dropped; a
                // failure here is not one (std ignores it too).
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            }
            raw(libc::syscall(libc::SYS_setuid, uid))?;
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            return Err(errno());
        }
    }
    reset_signals(args.last_signal)?;
    // SAFETY: setsid and ioctl(TIOCSCTTY) take integers only.
    unsafe {
        if libc::setsid() < 0 {
            return Err(errno());
        }
        if plan.terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// glibc's `execvp` over the prepared candidates; returns the errno it
/// would leave.
fn exec(args: &ChildArgs) -> i32 {
    let plan = args.plan;
    if plan.refused != 0 {
        return plan.refused;
    }
    let mut saw_eacces = false;
    let mut last = libc::ENOENT;
    for (candidate, script) in plan.candidates.iter().zip(args.script_argv) {
        // SAFETY: NUL-terminated strings and NULL-terminated arrays the
        // parent keeps alive.
        unsafe {
            libc::execve(candidate.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
            last = errno();
            if last == libc::ENOEXEC {
                libc::execve(SHELL.as_ptr(), script.as_ptr(), args.envp.as_ptr());
                last = errno();
            }
        }
        match last {
            libc::EACCES => saw_eacces = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return last,
        }
    }
    if saw_eacces {
        libc::EACCES
    } else {
        last
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use super::*;

    /// Run `argv` with `env` through `launch`, stdin empty; its stdout and
    /// exit status, or the launch's errno.
    fn run(
        argv: &[&str],
        env: &[&str],
        cwd: &str,
    ) -> Result<(String, crate::sys::ExitStatus), i32> {
        let (in_r, in_w) = std::io::pipe().expect("pipe");
        let (mut out_r, out_w) = std::io::pipe().expect("pipe");
        drop(in_w);
        let plan = CommandPlan::new(
            &strings(argv),
            &strings(env),
            cwd,
            [in_r.as_raw_fd(), out_w.as_raw_fd(), out_w.as_raw_fd()],
            None,
            false,
        )
        .expect("plan");
        let pid = launch(&plan).map_err(|e| e.raw_os_error().expect("errno"))?;
        drop((in_r, out_w));
        let mut out = String::new();
        out_r.read_to_string(&mut out).expect("read");
        Ok((out, crate::sys::wait_for(pid).expect("wait")))
    }

    #[test]
    fn a_launched_command_gets_its_session_signals_cwd_and_env() {
        let (out, status) = run(
            &["sh", "-c", "cat /proc/self/status; echo sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$; pwd; echo $B$A; exit 3"],
            &["PATH=/usr/bin:/bin", "A=1", "B=2"],
            "/tmp",
        )
        .expect("launch");
        assert_eq!(status, crate::sys::ExitStatus::Code(3));
        assert!(out.contains("SigBlk:\t0000000000000000\n"), "{out}");
        assert!(out.contains("SigIgn:\t0000000000000000\n"), "{out}");
        let ids = out.lines().find(|l| l.starts_with("sid=")).expect("ids");
        let (sid, pid) = ids.split_once(' ').expect("two");
        assert_eq!(
            sid.trim_start_matches("sid="),
            pid.trim_start_matches("pid=")
        );
        assert!(out.contains("\n/tmp\n21\n"), "{out}");
    }

    #[test]
    fn launch_failures_carry_the_exec_errno() {
        assert_eq!(
            run(&["no-such-program"], &["PATH=/bin"], "/").err(),
            Some(libc::ENOENT)
        );
        assert_eq!(run(&["/no/such"], &[], "/").err(), Some(libc::ENOENT));
        assert_eq!(run(&["/etc/passwd"], &[], "/").err(), Some(libc::EACCES));
        assert_eq!(
            run(&["true"], &[], "/no/such/dir").err(),
            Some(libc::ENOENT)
        );
        // Without PATH, glibc's default search path.
        let (_, status) = run(&["true"], &[], "/").expect("true");
        assert_eq!(status, crate::sys::ExitStatus::Code(0));
    }

    #[test]
    fn a_file_without_a_magic_number_runs_in_the_shell() {
        let dir = std::env::temp_dir().join(format!("lodge-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let script = dir.join("script");
        std::fs::write(&script, "echo from-sh \"$1\"\n").expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let dir_text = dir.to_string_lossy().into_owned();
        let path = format!("PATH=/nonexistent:{dir_text}:/bin");
        let result = run(&["script", "arg"], &[path.as_str()], "/");
        std::fs::remove_dir_all(&dir).expect("rm");
        let (out, status) = result.expect("launch");
        assert_eq!(status, crate::sys::ExitStatus::Code(0));
        assert_eq!(out, "from-sh arg\n");
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn missing_leading_candidates_are_skipped() {
        let (rest, refused) = skip_missing(strings(&[
            "/no/such/sh",
            "/etc/passwd/sh",
            "relative/sh",
            "/no/such/x",
        ]));
        assert_eq!(
            (rest, refused),
            (strings(&["relative/sh", "/no/such/x"]), 0)
        );
        let (rest, refused) = skip_missing(strings(&["/no/such/sh", "/bin/sh", "/x/sh"]));
        assert_eq!((rest, refused), (strings(&["/bin/sh", "/x/sh"]), 0));
        // None left: the last one's errno, as execvp would end.
        assert_eq!(
            skip_missing(strings(&["/no/such/sh", "/etc/passwd/sh"])),
            (Vec::new(), libc::ENOTDIR)
        );
        assert_eq!(
            skip_missing(strings(&["/etc/passwd/sh", "/no/such/sh"])),
            (Vec::new(), libc::ENOENT)
        );
        // Something that exists but cannot run stays for execve to refuse.
        let (rest, _) = skip_missing(strings(&["/etc/passwd"]));
        assert_eq!(rest, strings(&["/etc/passwd"]));
    }

    #[test]
    fn a_search_through_missing_directories_ends_as_before() {
        // Whether or not the search was shortened (it is for root).
        assert_eq!(
            run(&["no-such-program"], &["PATH=/no/such:/etc/passwd"], "/").err(),
            Some(libc::ENOTDIR)
        );
        assert_eq!(
            run(&["no-such-program"], &["PATH=/etc/passwd:/no/such"], "/").err(),
            Some(libc::ENOENT)
        );
        let (out, status) = run(
            &["sh", "-c", "echo ok"],
            &["PATH=/no/such:/usr/local/sbin:/bin"],
            "/",
        )
        .expect("sh");
        assert_eq!(
            (out.as_str(), status),
            ("ok\n", crate::sys::ExitStatus::Code(0))
        );
    }

    #[test]
    fn the_search_follows_glibc() {
        assert_eq!(
            search("sh", "/usr/bin:/bin/::/opt"),
            Ok(strings(&["/usr/bin/sh", "/bin//sh", "sh", "/opt/sh"]))
        );
        assert_eq!(search("./run", "/bin"), Ok(strings(&["./run"])));
        assert_eq!(search("", "/bin"), Err(libc::ENOENT));
        assert_eq!(search(&"x".repeat(255), "/bin"), Err(libc::ENAMETOOLONG));
        let long = "/".repeat(PATH_MAX);
        assert_eq!(
            search("x", &format!("{long}:/bin")),
            Ok(strings(&["x", "/bin/x"]))
        );
        assert_eq!(search("x", &long), Ok(Vec::new()));
    }
}
