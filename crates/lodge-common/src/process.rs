//! Children that cannot outlive the process that started them.
//!
//! A helper process lodge starts for itself (the accelerator probe's QEMU,
//! the VMM under its monitor) must end when its parent ends, however the
//! parent ends: a clean shutdown can kill it, but SIGKILL, a panic or an
//! unhandled SIGTERM cannot. [`die_with_parent`] asks the kernel to send the
//! child SIGKILL when its parent dies (`PR_SET_PDEATHSIG`), set between fork
//! and exec, and then checks that the parent is still the process that
//! forked it: if the parent died before the `prctl`, the child was already
//! re-parented and the signal would never come, so the spawn fails instead.
//!
//! Caveat (kernel semantics): the signal fires when the *thread* that
//! forked the child exits, not the whole process. Spawn from a thread that
//! lives as long as the parent (the main thread, a runtime worker), not from
//! a short-lived helper thread.
//!
//! [`limit_cpu_seconds`] gives a child its own deadline in CPU time
//! (`RLIMIT_CPU`): the kernel kills it once it has burnt that much CPU, even
//! if nobody is left to kill it.

#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{getpid, getppid, set_parent_process_death_signal, Signal};

/// Makes the child get SIGKILL when the calling thread (see the module
/// doc) exits; the spawn fails with `ESRCH` if the parent is already gone
/// when the child starts.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = getpid();
    // SAFETY: the closure runs between fork and exec and only makes raw
    // system calls (prctl, getppid): no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            if getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc_esrch()));
            }
            Ok(())
        })
    }
}

/// Limits the child to `seconds` of CPU time (soft and hard `RLIMIT_CPU`):
/// at the limit the kernel sends SIGKILL (the soft limit's SIGXCPU is moot
/// when both are equal).
pub fn limit_cpu_seconds(cmd: &mut Command, seconds: u64) -> &mut Command {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let limit = Rlimit {
        current: Some(seconds),
        maximum: Some(seconds),
    };
    // SAFETY: the closure runs between fork and exec and only makes the
    // setrlimit system call.
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::Cpu, limit)?;
            Ok(())
        })
    }
}

/// `ESRCH` without a libc dependency.
fn libc_esrch() -> i32 {
    rustix::io::Errno::SRCH.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    fn alive(pid: u32) -> bool {
        // A zombie still has a /proc entry; look at its state too.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    #[test]
    fn child_dies_with_its_parent() -> io::Result<()> {
        // A thread plays the parent: PDEATHSIG follows the forking thread.
        let child_pid = std::thread::spawn(|| -> io::Result<u32> {
            let mut cmd = Command::new("sleep");
            cmd.arg("30").stdin(Stdio::null());
            die_with_parent(&mut cmd);
            let child = cmd.spawn()?;
            Ok(child.id())
        })
        .join()
        .map_err(|_| io::Error::other("thread panicked"))??;
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(child_pid) {
            assert!(
                Instant::now() < deadline,
                "child {child_pid} outlived its parent thread"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    #[test]
    fn child_lives_while_parent_lives() -> io::Result<()> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        die_with_parent(&mut cmd);
        let status = cmd.status()?;
        assert_eq!(status.code(), Some(7));
        Ok(())
    }

    #[test]
    fn cpu_limit_kills_a_spinning_child() -> io::Result<()> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "while :; do :; done"]);
        limit_cpu_seconds(&mut cmd, 1);
        let started = Instant::now();
        let status = cmd.status()?;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(20));
        Ok(())
    }
}
