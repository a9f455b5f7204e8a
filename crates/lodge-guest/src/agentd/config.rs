//! What PID 1 tells the agent when it starts it: the one thing the init
//! needs to know of the agent, so it lives apart from the agent's code.

use serde::{Deserialize, Serialize};

/// What PID 1 tells the agent, as JSON in its second argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Directory to chroot into: the workload's root.
    pub root: String,
    /// The workload's environment (`KEY=VALUE`), the base of every exec's.
    pub env: Vec<String>,
    /// The workload's working directory, the default for exec.
    pub workdir: String,
    /// `(uid, gid)` commands run as; `None` is root.
    pub user: Option<(u32, u32)>,
}
