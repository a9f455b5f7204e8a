//! Starting processes: the one way `lodge-init` creates a child, for the
//! workload (PID 1), the guest agent (PID 1) and every exec (the agent).
//!
//! Two entry points share one child-side setup:
//!
//! - [`spawn`], a hand-rolled fork+exec for the workload, because PID 1
//!   needs what `std::process::Command` does not give: chroot before the
//!   user switch, the exact environment order docker produces, a `PATH`
//!   search inside the chroot with the workload's own `PATH`, and a precise
//!   report of which step of the exec failed ([`ChildStep`]).
//! - [`launch`], for the agent's exec'd commands: a `CLONE_VM |
//!   CLONE_VFORK` spawn that does what std's `Command` did for them (the
//!   agent is multi-threaded, and a fork of it is dear under emulation;
//!   see [`launch`]'s module for why and for its safety argument).
//! - [`prepare`], for children started with `std::process::Command` (the
//!   agent itself), where std's pipes, user switch and wait are worth
//!   keeping: it adds the same signal reset and the session setup.
//!
//! Either way the new program starts as docker, runc and systemd start
//! theirs: every signal disposition at its default and no signal blocked.
//! Without that, a workload would inherit the SIGPIPE the Rust runtime
//! ignores, and `yes | head` would never end. All the code that runs
//! between fork and exec, and its `unsafe`, is in [`child`] and
//! [`launch`].

mod child;
mod launch;
mod plan;

use std::io;
use std::process::Command;

use crate::sys;

pub use launch::{launch, CommandPlan};
pub use plan::{ChildStep, ExecPlan, Session, Spawned};

/// Fork, set up the child as described by `plan` and exec it. Returns once
/// the exec succeeded or failed (then the child has been reaped).
pub fn spawn(plan: &ExecPlan) -> io::Result<Spawned> {
    child::fork_exec(plan)
}

/// Make `cmd` start its child with default signal dispositions, an empty
/// signal mask and the given session.
pub fn prepare(cmd: &mut Command, session: Session) {
    child::install_pre_exec(cmd, session);
}

/// The message and exit code for a failed exec, in docker's words (127 not
/// found, 126 not runnable).
pub fn exec_failure(program: &str, errno: i32) -> (String, i32) {
    match errno {
        libc::ENOENT | libc::ENOTDIR if !program.contains('/') => (
            format!("exec: \"{program}\": executable file not found in $PATH"),
            127,
        ),
        libc::ENOENT | libc::ENOTDIR => (
            format!("exec: \"{program}\": {}", sys::errno_text(errno)),
            127,
        ),
        _ => (
            format!("exec: \"{program}\": {}", sys::errno_text(errno)),
            126,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn exec_failures_read_like_docker() {
        assert_eq!(
            exec_failure("foo", libc::ENOENT),
            (
                "exec: \"foo\": executable file not found in $PATH".into(),
                127
            )
        );
        assert_eq!(
            exec_failure("/foo", libc::ENOENT),
            ("exec: \"/foo\": no such file or directory".into(), 127)
        );
        assert_eq!(
            exec_failure("/etc/passwd", libc::EACCES),
            ("exec: \"/etc/passwd\": permission denied".into(), 126)
        );
        assert_eq!(
            exec_failure("/bin/x", libc::ENOEXEC),
            ("exec: \"/bin/x\": exec format error".into(), 126)
        );
    }

    /// The `SigBlk`, `SigIgn` lines of a `/proc/PID/status` text.
    fn ignored_and_blocked(status: &str) -> Vec<String> {
        status
            .lines()
            .filter(|l| l.starts_with("SigIgn:") || l.starts_with("SigBlk:"))
            .map(str::to_owned)
            .collect()
    }

    fn clean() -> Vec<String> {
        vec![
            "SigBlk:\t0000000000000000".to_owned(),
            "SigIgn:\t0000000000000000".to_owned(),
        ]
    }

    #[test]
    fn a_prepared_command_starts_with_default_signals() {
        // The test process itself ignores SIGPIPE (the Rust runtime does);
        // std resets that one, so the test ignores and blocks more in the
        // child first, in a hook that runs before `prepare`'s.
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/status");
        child::tests::spoil_signals_before_exec(&mut cmd);
        prepare(&mut cmd, Session::Inherit);
        let out = cmd.output().expect("run cat");
        assert!(out.status.success());
        let status = String::from_utf8_lossy(&out.stdout);
        assert_eq!(ignored_and_blocked(&status), clean(), "{status}");
    }

    #[test]
    fn a_spawned_workload_starts_with_default_signals() {
        let cat = ["/bin/cat", "/usr/bin/cat"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("cat is installed");
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let c = |s: &str| CString::new(s).expect("no nul");
        let plan = ExecPlan {
            root: c("/"),
            workdir_prefixes: Vec::new(),
            workdir: c("/"),
            ids: None,
            stdin: writer.as_raw_fd(),
            console: writer.as_raw_fd(),
            candidates: vec![c(cat)],
            argv: vec![c("cat"), c("/proc/self/status")],
            envp: Vec::new(),
        };
        let pid = match spawn(&plan).expect("fork") {
            Spawned::Running(pid) => pid,
            Spawned::Failed {
                step: ChildStep::Chroot,
                errno: libc::EPERM,
            } => {
                eprintln!("skipped: chroot needs root");
                return;
            }
            Spawned::Failed { step, errno } => panic!("{step:?}: {}", sys::errno_text(errno)),
        };
        drop(writer);
        let mut status = String::new();
        reader.read_to_string(&mut status).expect("read");
        assert_eq!(sys::wait_for(pid).expect("wait"), sys::ExitStatus::Code(0));
        // The test process ignores SIGPIPE; the workload must not.
        assert_eq!(ignored_and_blocked(&status), clean(), "{status}");
    }
}
