//! Every error of the instance manager, typed down to its cause.
//!
//! Causes keep their own types (`#[from]`/`#[source]`): a spec that is
//! invalid says which rule it broke ([`SpecError`]), a backend failure is the
//! hypervisor crate's [`BackendError`], an image failure keeps lodge-images'
//! error class. The API maps each variant to an HTTP status in one place
//! (`api/error.rs`). When undoing a failed create fails as well, both are
//! kept ([`CreateFailed`]) rather than the cleanup being dropped.

use std::process::ExitStatus;

use lodge_hypervisor::BackendError;

use super::naming::NameError;
use super::spec::SpecError;
use super::state::State;
use crate::disks::DiskError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("instance {0:?} not found")]
    NotFound(String),
    #[error("{0:?} matches more than one instance; use more of the id")]
    Ambiguous(String),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("an instance named {0:?} already exists")]
    NameTaken(String),
    /// The create request breaks a rule; says which.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// The image could not be found, pulled or leased.
    #[error(transparent)]
    Image(#[from] lodge_images::Error),
    #[error("instance {id} is {state:?}: {action} needs it {needs}")]
    WrongState {
        id: String,
        state: State,
        action: &'static str,
        needs: &'static str,
    },
    #[error("{0}")]
    Disk(#[from] DiskError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The hypervisor backend refused or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The VM's monitor could not be started or did not stop the VMM.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// A blocking task of an operation panicked or was cancelled.
    #[error("the {what} task failed")]
    Task {
        what: &'static str,
        #[source]
        source: Option<tokio::task::JoinError>,
    },
    /// A restored fork runs, but its guest kept its source's address.
    #[error("instance {id} runs, but its guest could not take its own address: {reason}")]
    Readdress { id: String, reason: String },
    #[error("instance {0} has no snapshot schedule")]
    NoSchedule(String),
    /// A scheduled run found the instance in a state it cannot snapshot.
    #[error("skipped: the instance is {0:?}")]
    ScheduleSkipped(State),
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),
    #[error("this instance already has a snapshot named {0:?}")]
    SnapshotNameTaken(String),
    /// A snapshot request that cannot be honoured as asked.
    #[error("{0}")]
    BadSnapshotRequest(String),
    /// The instance's record names a saved state whose file is gone.
    #[error("the saved state of instance {id} is missing ({path})")]
    StateFileMissing { id: String, path: String },
    /// The request asked for a network and this daemon runs without one.
    #[error("networking is off in this daemon (LODGE_NETWORK=off, or not run as root): create the instance with network.enabled=false, or start the daemon as root with networking on")]
    NetworkDisabled,
    /// Setting up or tearing down the instance's network failed.
    #[error(transparent)]
    Network(#[from] lodge_net::NetError),
    /// A create or start would take more than the effective limit of a
    /// resource (see `resources`).
    #[error("insufficient {resource}: {message}")]
    InsufficientResources {
        resource: &'static str,
        message: String,
    },
    /// A setting from the environment is invalid.
    #[error("{0}")]
    BadConfig(String),
    /// A volume could not be found, or an attachment breaks its rules.
    #[error(transparent)]
    Volume(#[from] lodge_volumes::Error),
    #[error("volume {volume:?} is not attached to instance {instance}")]
    NotAttached { volume: String, instance: String },
    /// The guest agent could not be asked to (un)mount a volume.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// The guest would not (un)mount a volume; `message` is the guest's,
    /// bounded and stripped of control characters.
    #[error("the guest could not {action} the volume at {mount_path}: {message}")]
    GuestVolume {
        action: &'static str,
        mount_path: String,
        message: String,
    },
    /// A detach refused because the guest still uses the volume.
    #[error("{0}; stop what uses it (or stop the instance) and detach again")]
    VolumeBusy(String),
    /// Hot-plugging or unplugging a disk failed; the attachment is unchanged.
    #[error("hot-plugging the volume's disk: {0}")]
    Hotplug(#[source] BackendError),
    /// An operation failed and undoing its partial work failed too.
    #[error(transparent)]
    CreateFailed(Box<CreateFailed>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with what was being done.
pub(super) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Starting or stopping a VM's monitor process.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("creating the monitor's error file")]
    ErrorFile(#[source] std::io::Error),
    #[error("starting the monitor")]
    Spawn(#[source] std::io::Error),
    #[error("the monitor exited at once ({status}): {stderr}")]
    ExitedAtOnce { status: ExitStatus, stderr: String },
    #[error("the monitor did not start within 10s")]
    StartTimeout,
    #[error("the VMM did not stop")]
    VmmDidNotStop,
}

/// A create that failed (`run`) and whose cleanup failed too (`cleanup`),
/// in the spirit of youki's `CreateContainerError(run, cleanup)`: the
/// caller sees why the create failed and what it left behind.
#[derive(Debug)]
pub struct CreateFailed {
    pub run: Error,
    pub cleanup: Vec<Error>,
}

impl std::fmt::Display for CreateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.run)?;
        let mut source = std::error::Error::source(&self.run);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        f.write_str("; cleaning up also failed")?;
        for (i, e) in self.cleanup.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{e}")?;
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for CreateFailed {}

impl Error {
    /// `run`, or `run` with the cleanup errors when there are any.
    pub(super) fn with_cleanup(run: Error, cleanup: Vec<Error>) -> Error {
        if cleanup.is_empty() {
            return run;
        }
        for e in &cleanup {
            tracing::warn!("cleaning up after a failed create: {e}");
        }
        Error::CreateFailed(Box::new(CreateFailed { run, cleanup }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_errors_are_kept_beside_the_cause() {
        let run = Error::Monitor(MonitorError::StartTimeout);
        assert!(matches!(
            Error::with_cleanup(run, Vec::new()),
            Error::Monitor(_)
        ));
        let run = Error::Monitor(MonitorError::StartTimeout);
        let cleanup = vec![io("removing /x")(std::io::Error::other("busy"))];
        let err = Error::with_cleanup(run, cleanup);
        assert_eq!(
            err.to_string(),
            "the monitor did not start within 10s; cleaning up also failed: removing /x: busy"
        );
        match err {
            Error::CreateFailed(c) => assert!(matches!(c.run, Error::Monitor(_))),
            other => panic!("unexpected {other:?}"),
        }
    }
}
