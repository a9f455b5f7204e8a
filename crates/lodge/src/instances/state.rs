//! The instance state machine, derived rather than stored.
//!
//! A state kept in memory or in a file goes stale the moment a VMM dies or the
//! daemon restarts. lodge instead derives the state on every read from facts
//! that cannot lie: whether the monitor still holds its lock, what the guest
//! init reported on its status channel, and the monitor's exit record (read
//! in `observe`, typed by lodge-monitor). The function doing it is pure, so
//! every transition is unit-tested.
//!
//! The status channel is written by the guest, and the workload runs as
//! root in there: it can print any status line it likes. So a line is only
//! believed as far as the host can confirm it. The program's end ("exited",
//! "killed", init's "error") moves the instance out of Running only once
//! the VMM has ended too; while the VMM runs, such a line changes nothing.
//! The host's own facts (monitor lock, VMM exit, an orphan VMM) always win.

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
    /// The crash the last VMM run reported in its own log (its exit code
    /// may not say so: Cloud Hypervisor exits 0 after a vCPU failure).
    pub vmm_crash: Option<String>,
    /// The pid of a VMM still running although its monitor is gone.
    pub orphan_vmm: Option<u32>,
    /// The live monitor's report on console capture (a full disk).
    pub capture: Option<lodge_monitor::CaptureInfo>,
    /// A saved VM state is recorded: with no VMM, the instance sleeps.
    pub standby: bool,
    /// Why the last restore failed, if it did.
    pub restore_error: Option<String>,
}

pub fn derive(o: &Observed) -> State {
    if !o.monitor_alive {
        if o.orphan_vmm.is_some() {
            // Not Stopped (a VMM runs and holds its disks), not Running
            // (nothing captures or controls it): see `state_error`.
            return State::Unknown;
        }
        if o.standby {
            return State::Standby;
        }
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
        // An end reported while the VMM still runs is not believed (see the
        // module doc): the VM is running until the host sees it end.
        GuestProgress::Started
        | GuestProgress::Exited(_)
        | GuestProgress::Signaled(_)
        | GuestProgress::Failed(_) => State::Running,
    }
}

/// What is wrong with the instance beyond its state, for the API's
/// `state_error`: a VMM left without its monitor, or console capture held
/// up by a failing disk.
pub fn state_error(o: &Observed) -> Option<String> {
    if !o.monitor_alive {
        return o
            .orphan_vmm
            .map(|pid| {
                format!(
                    "the VMM (pid {pid}) is running without its monitor: its console is not \
                     captured and it cannot be controlled; stop or delete the instance to end it"
                )
            })
            .or_else(|| {
                o.vmm_crash
                    .as_ref()
                    .map(|line| format!("the VMM crashed: {line}"))
            })
            .or_else(|| {
                o.restore_error
                    .as_ref()
                    .map(|e| format!("the last restore failed: {e}"))
            });
    }
    let stalls = &o.capture.as_ref()?.stalled;
    let first = stalls.first()?;
    let logs: Vec<&str> = stalls.iter().map(|s| s.source.as_str()).collect();
    Some(format!(
        "console capture stalled since {} ({} log: {}); the output is held, the guest \
         waits, and nothing is lost once writing succeeds again",
        first.since,
        logs.join(", "),
        first.error
    ))
}

/// Exit code and message the API reports for a finished program.
pub fn exit_report(o: &Observed) -> (Option<i32>, Option<String>) {
    match &o.guest {
        GuestProgress::Exited(code) => (Some(*code), Some(format!("exited with code {code}"))),
        GuestProgress::Signaled(sig) => (Some(128 + sig), Some(format!("killed by signal {sig}"))),
        GuestProgress::Failed(msg) => (Some(127), Some(msg.clone())),
        GuestProgress::NotStarted | GuestProgress::Started => match &o.vmm_exit {
            // The VM ended without the program reporting an exit: say why.
            Some(_) if !o.monitor_alive && o.vmm_crash.is_some() => (
                None,
                Some("the VM crashed before the program finished (see the vmm log)".to_string()),
            ),
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
            vmm_crash: None,
            orphan_vmm: None,
            capture: None,
            standby: false,
            restore_error: None,
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
        assert_eq!(derive(&obs(true, true, false, Exited(0))), State::Running);
        // A dead VMM is never reported as running, whatever the guest said last.
        assert_eq!(derive(&obs(false, true, false, Started)), State::Stopped);
        assert_eq!(derive(&obs(false, true, true, Started)), State::Stopped);
        assert_eq!(derive(&obs(false, true, false, Exited(3))), State::Stopped);
    }

    /// A root workload can print any status line on the status port; a
    /// claimed end is not believed while the host sees the VMM running.
    #[test]
    fn forged_status_lines_cannot_end_a_running_vm() {
        use GuestProgress::*;
        for forged in [Exited(0), Signaled(9), Failed("forged".into())] {
            let o = obs(true, true, false, forged.clone());
            assert_eq!(derive(&o), State::Running, "{forged:?} while the VMM runs");
            assert_eq!(state_error(&o), None);
            // Paused by lodge stays paused whatever the guest says.
            assert_eq!(
                derive(&obs(true, true, true, forged.clone())),
                State::Paused
            );
            // Once the VMM has really ended, the report is the guest's own.
            let mut ended = obs(false, true, false, forged.clone());
            ended.vmm_exit = Some(lodge_monitor::ExitInfo {
                code: Some(0),
                signal: None,
                started_at: String::new(),
                finished_at: String::new(),
            });
            assert_eq!(derive(&ended), State::Stopped);
        }
        // The view only reports an exit code for a stopped VM.
        assert_eq!(
            derive(&obs(true, true, false, Exited(3))),
            State::Running,
            "no Shutdown, so no exit code, while QEMU runs"
        );
    }

    #[test]
    fn an_orphan_vmm_is_unknown_and_said_so() {
        use GuestProgress::*;
        let mut o = obs(false, true, false, Started);
        o.orphan_vmm = Some(4242);
        assert_eq!(derive(&o), State::Unknown);
        let msg = state_error(&o).unwrap_or_default();
        assert!(
            msg.contains("pid 4242") && msg.contains("without its monitor"),
            "{msg}"
        );
        // A live monitor is the truth; an orphan cannot be claimed then.
        o.monitor_alive = true;
        assert_eq!(derive(&o), State::Running);
        assert_eq!(state_error(&o), None);
    }

    #[test]
    fn a_capture_stall_is_a_state_error() {
        use GuestProgress::*;
        let mut o = obs(true, true, false, Started);
        o.capture = Some(lodge_monitor::CaptureInfo::default());
        assert_eq!(state_error(&o), None);
        o.capture = Some(lodge_monitor::CaptureInfo {
            stalled: vec![lodge_monitor::Stall {
                source: "app".into(),
                since: "2026-01-01T00:00:00.000Z".into(),
                error: "No space left on device (os error 28)".into(),
            }],
        });
        assert_eq!(derive(&o), State::Running);
        let msg = state_error(&o).unwrap_or_default();
        assert!(
            msg.contains("No space left") && msg.contains("app log"),
            "{msg}"
        );
        // A dead monitor's last record is stale.
        o.monitor_alive = false;
        assert_eq!(state_error(&o), None);
    }

    #[test]
    fn a_saved_state_without_a_vmm_is_standby() {
        use GuestProgress::*;
        let mut o = obs(false, true, false, Started);
        o.standby = true;
        assert_eq!(derive(&o), State::Standby);
        assert_eq!(state_error(&o), None);
        // A failed restore leaves it in standby and says why.
        o.restore_error = Some("loading the state failed".into());
        assert_eq!(derive(&o), State::Standby);
        let msg = state_error(&o).unwrap_or_default();
        assert!(msg.contains("last restore failed"), "{msg}");
        // Saving or loading: the VMM runs, its state wins.
        o.monitor_alive = true;
        o.paused = true;
        assert_eq!(derive(&o), State::Paused);
        o.paused = false;
        assert_eq!(derive(&o), State::Running);
        // An orphan VMM is never hidden behind a saved state.
        o.monitor_alive = false;
        o.orphan_vmm = Some(7);
        assert_eq!(derive(&o), State::Unknown);
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

    /// A VMM that exited 0 but logged a vCPU failure (Cloud Hypervisor)
    /// is reported as crashed, not as a clean end.
    #[test]
    fn a_crash_in_the_vmm_log_is_reported_as_a_crash() {
        let mut o = obs(false, true, false, GuestProgress::NotStarted);
        o.vmm_exit = Some(lodge_monitor::ExitInfo {
            code: Some(0),
            signal: None,
            started_at: String::new(),
            finished_at: String::new(),
        });
        assert_eq!(
            exit_report(&o).1.as_deref(),
            Some("the VMM exited before the program finished (see the vmm log)")
        );
        assert_eq!(state_error(&o), None);
        o.vmm_crash = Some("ERROR:vmm/src/cpu.rs -- VCPU generated error".into());
        assert_eq!(derive(&o), State::Stopped);
        assert_eq!(
            state_error(&o).as_deref(),
            Some("the VMM crashed: ERROR:vmm/src/cpu.rs -- VCPU generated error")
        );
        assert_eq!(
            exit_report(&o),
            (
                None,
                Some("the VM crashed before the program finished (see the vmm log)".into())
            )
        );
    }
}
