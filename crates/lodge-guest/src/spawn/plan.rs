//! The words of `spawn`: what a workload's fork+exec is given, how it can
//! fail, and which session a command starts in. A file of its own so that
//! the child code and the public entry points both use them without
//! importing each other.

use std::ffi::CString;
use std::os::fd::RawFd;

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
    /// The console's input side, for stdin.
    pub stdin: RawFd,
    /// The console, for stdout and stderr.
    pub console: RawFd,
    /// Paths to try with execve, in order (the PATH search, done up front).
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

/// The child's step that failed, reported to the parent over a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStep {
    /// Signal state, session or standard streams.
    Session,
    Chroot,
    Workdir,
    User,
    Exec,
}

impl ChildStep {
    pub(super) fn code(self) -> u8 {
        match self {
            ChildStep::Session => 1,
            ChildStep::Chroot => 2,
            ChildStep::Workdir => 3,
            ChildStep::User => 4,
            ChildStep::Exec => 5,
        }
    }

    pub(super) fn from_code(code: u8) -> Option<Self> {
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

/// Result of `spawn`.
#[derive(Debug)]
pub enum Spawned {
    /// The workload was exec'd and runs as this pid.
    Running(libc::pid_t),
    /// The child failed at `step` with `errno` and has been reaped.
    Failed { step: ChildStep, errno: i32 },
}

/// Which session a `prepare`d command runs in: the parent's (the child may
/// call `setsid` itself, as the agent does). Exec'd commands, which get a
/// session of their own, are started by `launch` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    Inherit,
}
