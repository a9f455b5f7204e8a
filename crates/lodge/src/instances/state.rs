//! The instance state machine, derived rather than stored.
//!
//! A state kept in memory or in a file goes stale the moment a VMM dies or the
//! daemon restarts. lodge instead derives the state on every read from facts
//! that cannot lie: whether the monitor still holds its lock, what the guest
//! init reported on its status channel, and the monitor's exit record (read
//! in `observe`, typed by lodge-monitor). The function doing it is pure, so
//! every transition is unit-tested.

use serde::{Deserialize, Serialize};

/// hypeman's state names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum State {
    Created,
    Initializing,
    Running,
    Paused,
    Shutdown,
    Stopped,
    Standby,
    Unknown,
}

impl State {
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "Created" => State::Created,
            "Initializing" => State::Initializing,
            "Running" => State::Running,
            "Paused" => State::Paused,
            "Shutdown" => State::Shutdown,
            "Stopped" => State::Stopped,
            "Standby" => State::Standby,
            "Unknown" => State::Unknown,
            _ => return None,
        })
    }
}

/// How far the guest program got, from the init's status lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GuestProgress {
    #[default]
    NotStarted,
    Started,
    Exited(i32),
    Signaled(i32),
    /// Init failed before the program could run.
    Failed(String),
}

/// The facts the state is derived from.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The monitor (and so the VMM) is alive.
    pub monitor_alive: bool,
    /// The VM has been booted at least once.
    pub ever_started: bool,
    /// lodge paused the VM and has not resumed it.
    pub paused: bool,
    pub guest: GuestProgress,
    /// How the last VMM process ended, once it has.
    pub vmm_exit: Option<lodge_monitor::ExitInfo>,
}

pub fn derive(o: &Observed) -> State {
    if !o.monitor_alive {
        return if o.ever_started {
            State::Stopped
        } else {
            State::Created
        };
    }
    if o.paused {
        return State::Paused;
    }
    match o.guest {
        GuestProgress::NotStarted => State::Initializing,
        GuestProgress::Started => State::Running,
        // The program is done and the VM is powering off.
        GuestProgress::Exited(_) | GuestProgress::Signaled(_) | GuestProgress::Failed(_) => {
            State::Shutdown
        }
    }
}

/// Exit code and message the API reports for a finished program.
pub fn exit_report(o: &Observed) -> (Option<i32>, Option<String>) {
    match &o.guest {
        GuestProgress::Exited(code) => (Some(*code), Some(format!("exited with code {code}"))),
        GuestProgress::Signaled(sig) => (Some(128 + sig), Some(format!("killed by signal {sig}"))),
        GuestProgress::Failed(msg) => (Some(127), Some(msg.clone())),
        GuestProgress::NotStarted | GuestProgress::Started => match &o.vmm_exit {
            // The VM ended without the program reporting an exit: say why.
            Some(e) if !o.monitor_alive => {
                let how = match (e.code, e.signal) {
                    (_, Some(sig)) => format!("was killed by signal {sig}"),
                    (Some(0), None) => "exited".to_string(),
                    (Some(code), None) => format!("exited with code {code}"),
                    (None, None) => "ended".to_string(),
                };
                (
                    None,
                    Some(format!(
                        "the VMM {how} before the program finished (see the vmm log)"
                    )),
                )
            }
            _ => (None, None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(alive: bool, started: bool, paused: bool, guest: GuestProgress) -> Observed {
        Observed {
            monitor_alive: alive,
            ever_started: started,
            paused,
            guest,
            vmm_exit: None,
        }
    }

    #[test]
    fn transitions() {
        use GuestProgress::*;
        assert_eq!(
            derive(&obs(false, false, false, NotStarted)),
            State::Created
        );
        assert_eq!(
            derive(&obs(true, true, false, NotStarted)),
            State::Initializing
        );
        assert_eq!(derive(&obs(true, true, false, Started)), State::Running);
        assert_eq!(derive(&obs(true, true, true, Started)), State::Paused);
        assert_eq!(derive(&obs(true, true, false, Exited(0))), State::Shutdown);
        // A dead VMM is never reported as running, whatever the guest said last.
        assert_eq!(derive(&obs(false, true, false, Started)), State::Stopped);
        assert_eq!(derive(&obs(false, true, true, Started)), State::Stopped);
        assert_eq!(derive(&obs(false, true, false, Exited(3))), State::Stopped);
    }

    #[test]
    fn exit_reports() {
        use GuestProgress::*;
        assert_eq!(exit_report(&obs(false, true, false, Exited(3))).0, Some(3));
        assert_eq!(
            exit_report(&obs(false, true, false, Signaled(9))).0,
            Some(137)
        );
        assert_eq!(exit_report(&obs(true, true, false, Started)), (None, None));
        let mut crashed = obs(false, true, false, Started);
        crashed.vmm_exit = Some(lodge_monitor::ExitInfo {
            code: Some(1),
            signal: None,
            started_at: String::new(),
            finished_at: String::new(),
        });
        let (code, msg) = exit_report(&crashed);
        assert_eq!(code, None);
        assert!(msg.unwrap_or_default().contains("exited with code 1"));
    }
}
