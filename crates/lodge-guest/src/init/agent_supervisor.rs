//! PID 1's side of the guest agent: start it before the workload, reap it,
//! and start it again if it dies abnormally.
//!
//! The agent is this same binary run as `agent CONFIG` (see `agentd`). It
//! exits with success when the VM has no agent port, and is then left
//! alone; any other end is a crash (or a workload that killed it), and it
//! is restarted, at most once per [`RESTART_INTERVAL`] so a crash loop
//! cannot eat the guest. It starts through `spawn` like every child, so
//! it does not inherit the signals PID 1 blocks for its signalfd.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::agentd::AgentConfig;
use crate::spawn::{self, Session};
use crate::sys::ExitStatus;

/// Least time between two starts of the agent.
pub const RESTART_INTERVAL: Duration = Duration::from_secs(1);

/// The agent process as PID 1 sees it.
pub struct AgentSupervisor {
    config: String,
    pid: Option<libc::pid_t>,
    started: Instant,
    restart_at: Option<Instant>,
}

impl AgentSupervisor {
    /// Start the agent now. A failure to start is not fatal: the workload
    /// runs anyway, only exec and copy are unavailable.
    pub fn start(config: &AgentConfig) -> AgentSupervisor {
        let mut agent = AgentSupervisor {
            config: serde_json::to_string(config).unwrap_or_default(),
            pid: None,
            started: Instant::now(),
            restart_at: None,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        self.started = Instant::now();
        self.restart_at = None;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("agent")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // The agent calls setsid itself.
        spawn::prepare(&mut cmd, Session::Inherit);
        let spawned = cmd.spawn();
        self.pid = match spawned {
            // PID 1 reaps it through waitpid(-1); the handle is not needed.
            Ok(child) => libc::pid_t::try_from(child.id()).ok(),
            Err(e) => {
                eprintln!("lodge-init: start the guest agent: {e}");
                None
            }
        };
    }

    /// Note a reaped child; true if it was the agent.
    pub fn reaped(&mut self, pid: libc::pid_t, status: ExitStatus) -> bool {
        if self.pid != Some(pid) {
            return false;
        }
        self.pid = None;
        if status != ExitStatus::Code(0) {
            self.restart_at = Some(self.started + RESTART_INTERVAL);
        }
        true
    }

    /// Milliseconds until a pending restart is due, for the wait timeout.
    pub fn timeout_ms(&self) -> Option<libc::c_int> {
        let at = self.restart_at?;
        let left = at.saturating_duration_since(Instant::now());
        Some(libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX))
    }

    /// Restart the agent if that is due.
    pub fn tick(&mut self) {
        if self.restart_at.is_some_and(|at| Instant::now() >= at) {
            self.spawn();
        }
    }
}
