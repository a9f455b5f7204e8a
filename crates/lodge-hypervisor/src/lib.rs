//! lodge's hypervisor backends behind one narrow interface.
//!
//! - [`config`]: the typed, validated description of one VM ([`VmConfig`]).
//! - [`backend`]: the [`Hypervisor`] trait (command line + lifecycle verbs +
//!   [`Capabilities`]) and the [`Backend`] enum callers hold.
//! - [`qemu`]: the QEMU backend: a pure argument builder and a QMP client.
//! - [`accel`]: choosing KVM or TCG, with a bounded boot self-test.
//!
//! Starting the VMM is not done here: lodge's monitor (`lodge supervise`)
//! runs the argv from [`Hypervisor::vmm_command`] with the console on a pipe
//! it owns. This crate only builds that argv and talks to the running VMM.

pub mod accel;
pub mod backend;
pub mod config;
pub mod qemu;

pub use accel::{AccelError, ProbeOptions, ProbeReason, ProbeResult};
pub use backend::{
    Backend, BackendError, Capabilities, Feature, Hypervisor, HypervisorKind, VmState,
};
pub use config::{
    Accel, ConfigError, DiskConfig, DiskFormat, MachineType, VirtioSerialChannel, VmConfig,
};
pub use qemu::QemuBackend;
