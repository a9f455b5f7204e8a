//! lodge's hypervisor backends behind one narrow interface.
//!
//! The dependency arrows point one way: [`hypervisor`] (the trait and its
//! neutral types) and [`config`] (the generic VM description) know no
//! backend; each backend module ([`qemu`], [`cloud_hypervisor`]) implements them; [`dispatch`] is
//! the only module that names every backend and picks one by
//! [`HypervisorKind`].
//!
//! - [`config`]: the typed, validated description of one VM ([`VmConfig`]).
//! - [`hypervisor`]: the [`Hypervisor`] trait (command line + lifecycle verbs
//!   + [`Capabilities`]) and [`BackendError`].
//! - [`dispatch`]: the [`Backend`] enum callers hold and [`Backends`], the
//!   configured backends of one daemon.
//! - [`qemu`]: the QEMU backend: a pure argument builder, a QMP client and
//!   the QEMU-only [`QemuOptions`] (machine type, accelerator, TCG's
//!   translation cache).
//! - [`cloud_hypervisor`]: the Cloud Hypervisor backend: a pure argument
//!   builder and a client of its REST API.
//! - [`accel`]: choosing KVM or TCG for QEMU, with a bounded boot self-test.
//!
//! Starting the VMM is not done here: lodge's monitor (`lodge supervise`)
//! runs the argv from [`Hypervisor::vmm_command`] with the console on a pipe
//! it owns. This crate only builds that argv and talks to the running VMM.

pub mod accel;
pub mod cloud_hypervisor;
pub mod config;
pub mod dispatch;
pub mod hypervisor;
pub mod qemu;

pub use accel::{AccelError, ProbeOptions, ProbeReason, ProbeResult};
pub use cloud_hypervisor::CloudHypervisorBackend;
pub use config::{ConfigError, DiskConfig, DiskFormat, NicConfig, VirtioSerialChannel, VmConfig};
pub use dispatch::{Backend, Backends};
pub use hypervisor::{
    BackendError, Capabilities, Feature, Hypervisor, HypervisorKind, ParseHypervisorKindError,
    SnapshotIdentity, VmState,
};
pub use qemu::{Accel, MachineType, QemuBackend, QemuOptions, DEFAULT_TCG_TB_SIZE_MIB};
