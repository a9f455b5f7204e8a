//! Lifecycle policies the daemon enforces on its own: an instance's expiry
//! (hypeman's `ttl`/`expires_at`: stopped and deleted when it comes) and
//! its restart policy (`never`, `always`, `on_failure`, with a backoff, a
//! cap on consecutive attempts and a run time that resets the count).
//!
//! Both live in the instance record, so they survive daemon restarts: the
//! daemon's supervisor calls [`Manager::enforce_policies`] once a second
//! and acts on whatever is due, whenever it comes back. Decisions are pure
//! functions of the record, the observed state and the time
//! ([`restart_decision`]), unit-tested apart from any VM.
//!
//! A stop through the API counts as the user's choice: it blocks automatic
//! restarts (`blocked_reason: manual_stop`) until the next start. The
//! record knows a manual stop by its `stopped_at`, which only the stop verb
//! sets and every boot clears.

use std::time::{Duration, SystemTime};

use lodge_common::time::rfc3339;

use super::error::{io, Result};
use super::manager::Manager;
use super::observe::observe;
use super::oplog::oplog;
use super::policy::{Blocked, RestartMode, RestartState};
use super::state::{self, State};
use super::store::{self, Metadata};

/// How often the daemon's supervisor looks for due policies.
pub const POLICY_INTERVAL: Duration = Duration::from_secs(1);

/// What the supervisor should do about one instance's restart policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartAction {
    Nothing,
    /// Record the new status (no boot).
    Update(RestartState),
    /// Boot it again, recording the status first.
    Restart(RestartState),
}

/// The restart decision for an instance in `state`, whose program ended
/// with `exit_code` (when it did), at `now`.
pub fn restart_decision(
    meta: &Metadata,
    state: State,
    exit_code: Option<i32>,
    now: SystemTime,
) -> RestartAction {
    let Some(policy) = &meta.restart_policy else {
        return RestartAction::Nothing;
    };
    let current = meta.restart_status.clone().unwrap_or_default();
    match state {
        // Booted since a block: only a user's start does that (the
        // policy's own restarts leave no block), and it clears the slate.
        State::Running | State::Initializing if current.blocked_reason.is_some() => {
            RestartAction::Update(RestartState::default())
        }
        State::Running => {
            // Long enough up: the count starts again.
            let stable = !policy.stable_after.is_zero()
                && meta.started_at.is_some_and(|t| {
                    now.duration_since(t).unwrap_or_default() >= policy.stable_after
                });
            if stable && (current.attempts > 0 || current.blocked_reason.is_some()) {
                return RestartAction::Update(RestartState::default());
            }
            RestartAction::Nothing
        }
        State::Stopped => {
            if current.blocked_reason.is_some() || policy.policy == RestartMode::Never {
                return RestartAction::Nothing;
            }
            if meta.stopped_at.is_some() {
                return RestartAction::Update(RestartState {
                    blocked_reason: Some(Blocked::ManualStop),
                    next_attempt_at: None,
                    ..current
                });
            }
            let failed = exit_code != Some(0);
            if policy.policy == RestartMode::OnFailure && !failed {
                return RestartAction::Nothing;
            }
            if policy.max_attempts > 0 && current.attempts >= policy.max_attempts {
                return RestartAction::Update(RestartState {
                    blocked_reason: Some(Blocked::MaxAttemptsExceeded),
                    next_attempt_at: None,
                    ..current
                });
            }
            let due = current
                .next_attempt_at
                .as_deref()
                .and_then(|t| lodge_common::time::parse_rfc3339(t).ok());
            match due {
                None => RestartAction::Update(RestartState {
                    next_attempt_at: Some(rfc3339(now + policy.backoff)),
                    ..current
                }),
                Some(due) if due <= now => RestartAction::Restart(RestartState {
                    attempts: current.attempts + 1,
                    last_attempt_at: Some(rfc3339(now)),
                    next_attempt_at: None,
                    blocked_reason: None,
                }),
                Some(_) => RestartAction::Nothing,
            }
        }
        _ => RestartAction::Nothing,
    }
}

impl Manager {
    /// One pass of the daemon's supervisor: delete what has expired, boot
    /// again what its restart policy says to. Failures are logged; the
    /// next pass tries again.
    pub async fn enforce_policies(&self) {
        let now = SystemTime::now();
        let all = match self.all() {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!("policies: listing instances: {e}");
                return;
            }
        };
        for meta in all {
            if meta.expires_at.is_some_and(|t| t <= now) {
                tracing::info!("instance {} ({}) expired: deleting it", meta.id, meta.name);
                if let Err(e) = self.delete(&meta.id, true).await {
                    tracing::warn!("deleting expired instance {}: {e}", meta.id);
                }
                continue;
            }
            if meta.restart_policy.is_none() {
                continue;
            }
            if let Err(e) = self.apply_restart_policy(&meta.id, now).await {
                tracing::warn!("restart policy of {}: {e}", meta.id);
            }
        }
    }

    async fn apply_restart_policy(&self, id: &str, now: SystemTime) -> Result<()> {
        let action = {
            let lock = self.lock_for(id);
            let _guard = lock.lock().await;
            let paths = self.paths(id);
            let Ok(mut meta) = store::load(&paths) else {
                return Ok(()); // deleted meanwhile
            };
            let observed = observe(&paths, &meta);
            let st = state::derive(&observed);
            let (code, _) = state::exit_report(&observed);
            let action = restart_decision(&meta, st, code, now);
            let status = match &action {
                RestartAction::Nothing => return Ok(()),
                RestartAction::Update(s) | RestartAction::Restart(s) => s.clone(),
            };
            if let (RestartAction::Update(_), Some(Blocked::MaxAttemptsExceeded)) =
                (&action, status.blocked_reason)
            {
                oplog(&paths, "restart policy: no more attempts");
            }
            meta.restart_status = Some(status);
            store::save(&paths, &meta).map_err(io("writing instance record"))?;
            action
        };
        if let RestartAction::Restart(s) = action {
            oplog(
                &self.paths(id),
                &format!("restart policy: attempt {}", s.attempts),
            );
            self.start(id, None, None).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instances::policy::RestartPolicy;

    fn meta(policy: RestartMode, max: u32) -> Metadata {
        let json = serde_json::json!({
            "id": "i1", "name": "n", "image": "rootfs:/", "created_at": "2026-01-01T00:00:00Z",
            "vcpus": 1, "memory_bytes": 1, "overlay_bytes": 1, "hypervisor": "qemu",
            "entrypoint": [], "cmd": ["x"], "env": {}, "workdir": "/",
            "started_at": "2026-01-01T00:00:00Z",
        });
        let mut m: Metadata = serde_json::from_value(json).expect("record");
        m.restart_policy = Some(RestartPolicy {
            policy,
            backoff: Duration::from_secs(2),
            max_attempts: max,
            stable_after: Duration::from_secs(60),
        });
        m
    }

    fn at(secs: u64) -> SystemTime {
        lodge_common::time::parse_rfc3339("2026-01-01T00:00:00Z").expect("t")
            + Duration::from_secs(secs)
    }

    #[test]
    fn a_failure_is_restarted_after_the_backoff_until_the_cap() {
        let mut m = meta(RestartMode::OnFailure, 2);
        // First sight of the exit: schedule.
        let RestartAction::Update(s) = restart_decision(&m, State::Stopped, Some(1), at(10)) else {
            panic!("expected a schedule")
        };
        assert_eq!(s.next_attempt_at.as_deref(), Some(rfc3339(at(12)).as_str()));
        m.restart_status = Some(s);
        assert_eq!(
            restart_decision(&m, State::Stopped, Some(1), at(11)),
            RestartAction::Nothing
        );
        let RestartAction::Restart(s) = restart_decision(&m, State::Stopped, Some(1), at(12))
        else {
            panic!("expected a restart")
        };
        assert_eq!(s.attempts, 1);
        m.restart_status = Some(RestartState { attempts: 2, ..s });
        let RestartAction::Update(s) = restart_decision(&m, State::Stopped, Some(1), at(20)) else {
            panic!("expected a block")
        };
        assert_eq!(s.blocked_reason, Some(Blocked::MaxAttemptsExceeded));
        m.restart_status = Some(s);
        assert_eq!(
            restart_decision(&m, State::Stopped, Some(1), at(30)),
            RestartAction::Nothing
        );
    }

    #[test]
    fn modes_and_manual_stops() {
        let m = meta(RestartMode::OnFailure, 0);
        assert_eq!(
            restart_decision(&m, State::Stopped, Some(0), at(5)),
            RestartAction::Nothing,
            "a clean exit is no failure"
        );
        let m = meta(RestartMode::Always, 0);
        assert!(matches!(
            restart_decision(&m, State::Stopped, Some(0), at(5)),
            RestartAction::Update(_)
        ));
        let m = meta(RestartMode::Never, 0);
        assert_eq!(
            restart_decision(&m, State::Stopped, Some(1), at(5)),
            RestartAction::Nothing
        );
        let mut m = meta(RestartMode::Always, 0);
        m.stopped_at = Some(at(4));
        let RestartAction::Update(s) = restart_decision(&m, State::Stopped, Some(0), at(5)) else {
            panic!("expected a block")
        };
        assert_eq!(s.blocked_reason, Some(Blocked::ManualStop));
    }

    #[test]
    fn a_start_by_the_user_lifts_a_block() {
        let mut m = meta(RestartMode::Always, 1);
        m.restart_status = Some(RestartState {
            attempts: 1,
            blocked_reason: Some(Blocked::MaxAttemptsExceeded),
            ..RestartState::default()
        });
        assert_eq!(
            restart_decision(&m, State::Initializing, None, at(5)),
            RestartAction::Update(RestartState::default())
        );
    }

    #[test]
    fn a_stable_run_resets_the_count() {
        let mut m = meta(RestartMode::Always, 3);
        m.restart_status = Some(RestartState {
            attempts: 2,
            ..RestartState::default()
        });
        assert_eq!(
            restart_decision(&m, State::Running, None, at(30)),
            RestartAction::Nothing
        );
        assert_eq!(
            restart_decision(&m, State::Running, None, at(61)),
            RestartAction::Update(RestartState::default())
        );
    }
}
