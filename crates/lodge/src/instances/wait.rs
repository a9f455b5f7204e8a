//! Waiting for an instance to reach a state (hypeman's
//! `GET /instances/{id}/wait`).
//!
//! The state is derived from files other processes write (see `state`),
//! so there is no event to subscribe to: the wait re-derives it at a short
//! fixed interval, which costs one small read per step and answers within
//! [`STEP`] of the change. It holds no instance lock, so verbs proceed
//! while clients wait. An instance in `Unknown` (a VMM without its
//! monitor) ends the wait early: it cannot reach another state by itself.

use std::time::{Duration, Instant};

use super::error::Result;
use super::manager::Manager;
use super::state::State;

/// How often the state is derived again while waiting.
const STEP: Duration = Duration::from_millis(50);

/// The default wait (hypeman's).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest wait a client may ask for (hypeman's cap).
pub const MAX_WAIT: Duration = Duration::from_secs(5 * 60);

/// How a wait ended: hypeman's `WaitForStateResponse`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct WaitOutcome {
    /// The state when the wait ended.
    pub state: State,
    /// The timeout expired before the state was reached.
    pub timed_out: bool,
    /// Why the instance is `Unknown`, or what else is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_error: Option<String>,
}

impl Manager {
    /// Waits up to `timeout` (capped at [`MAX_WAIT`]) for instance `key`
    /// to be in `target`. A deleted instance ends the wait with NotFound.
    pub async fn wait(&self, key: &str, target: State, timeout: Duration) -> Result<WaitOutcome> {
        let id = self.resolve(key)?;
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        loop {
            let inst = self.get(&id).await?;
            let reached = inst.state == target;
            if reached || inst.state == State::Unknown || Instant::now() >= deadline {
                return Ok(WaitOutcome {
                    state: inst.state,
                    timed_out: !reached && inst.state != State::Unknown,
                    state_error: inst.state_error,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(STEP.min(left)).await;
        }
    }
}
