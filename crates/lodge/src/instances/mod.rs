//! Instances: create, boot, stop, start, delete, and what state each is in.
//!
//! The manager owns no VM process: each VM runs under its own detached
//! monitor (`lodge supervise`), which outlives the daemon. The manager only
//! writes records, prepares disks, starts monitors and talks to VMMs over
//! their control sockets; the state it reports is derived from the files and
//! locks those processes leave (see `state`). Operations on one instance are
//! serialised by a per-instance lock; different instances proceed in parallel.
//!
//! One file per verb family, so a new verb has an obvious home and the
//! imports only point downwards (no two files import each other):
//!
//! - `manager`: the [`Manager`] struct, resolving keys, locks, reads;
//! - `create`: the create verb (claim the name, prepare disks, first boot);
//! - `lifecycle`: boot, stop, start, delete;
//! - `spec`: the typed create request and its pure validation;
//! - `volumes`: a create's volume attachments, and attaching or detaching
//!   a volume later (hot-plugged into a running VM);
//! - `observe`: the facts the state is derived from (monitor lock, guest
//!   status channel, the monitor's exit record);
//! - `admission`: the vCPU and memory limits and the boots in flight;
//! - `resources`: host capacity, what instances hold, and the admission of
//!   creates and starts;
//! - `stats`: what a running VM costs the host (CPU, memory, network);
//! - `health`, `health_checks`: workload health checks (policy, status,
//!   probes) and their scheduling;
//! - `policies`: TTL expiry and restart policies, enforced by the
//!   daemon's supervisor (`policy`: their types and value syntax);
//! - `auto_standby`: hypeman's auto-standby policy and the pure idle
//!   decision; `auto_standby_watch`: the daemon task that observes
//!   (ingress record, conntrack), decides and puts idle instances in
//!   standby, and the status and hold verbs;
//! - `update`: what can change on an instance without its VM (tags);
//! - `net`: the default network as the daemon set it up, each instance's
//!   lease and TAP, and the reaper of leftovers;
//! - `monitor`: starting a VM's monitor and stopping its VMM through the
//!   hypervisor backend the instance was created with;
//! - `standby`: standby and restore (save the VM's state beside its
//!   disks and let the VMM exit; start it again from that state), and
//!   finishing or undoing one a daemon crash cut short;
//! - `snapshots`: snapshots kept apart from their instance (disks, and
//!   for kind Standby the saved state), restored into it; `diskcopy`
//!   copies their files (reflink, else sparse); `snapshot_store` reads
//!   and shapes their records;
//! - `fork`: new instances copied from an instance or a snapshot;
//! - `schedule`: snapshot schedules and the daemon task that runs them;
//! - `compress`: compressing a standby's memory in the background;
//! - `wait`: waiting for an instance to reach a state;
//! - `reclaim`: memory reclaim through the VMs' balloons, and its hold;
//! - `error`: every error of this module; `state`, `store`, `naming`,
//!   `view`, `oplog`: the state machine, records, identity, API view and
//!   lodge's own per-instance log.

mod admission;
pub mod auto_standby;
mod auto_standby_watch;
mod compress;
mod create;
mod diskcopy;
pub mod error;
mod fork;
pub mod health;
mod health_checks;
mod lifecycle;
mod manager;
mod monitor;
pub mod naming;
pub mod net;
mod observe;
mod oplog;
pub mod policies;
pub mod policy;
pub mod reclaim;
mod resources;
pub mod schedule;
mod snapshot_store;
pub mod snapshots;
pub mod spec;
mod standby;
pub mod state;
mod stats;
pub mod store;
mod update;
mod view;
mod volumes;
pub mod wait;

pub use compress::CompressionSpec;
pub use error::Error;
pub use fork::ForkRequest;
pub use manager::{image_users, volume_users, AgentEndpoint, Manager};
pub use observe::observe;
pub use resources::{DiskBreakdown, ResourceAllocation, ResourceStatus, Resources};
pub use spec::{CreateRequest, RootRequest, RunOverrides, VolumeRequest};
pub use state::State;
pub use stats::InstanceStats;
pub use update::InstanceUpdate;
pub use view::{Instance, InstanceNetwork, VolumeMount};
