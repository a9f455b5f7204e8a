//! The contract between the lodge host and its guest init, `lodge-init`.
//!
//! Host and guest are built from this one crate so that they can never
//! disagree about the wire formats. The contract has three parts:
//!
//! 1. **Disks** ([`SERIAL_ROOT`], [`SERIAL_OVERLAY`], [`SERIAL_CONFIG`]): the
//!    host attaches virtio-blk disks whose serial numbers name their role;
//!    the guest finds them through `/sys/block/vd*/serial`, never by order.
//! 2. **Configuration** ([`GuestConfig`]): what to run, as JSON on a raw
//!    config disk ([`GuestConfig::encode`] / [`GuestConfig::decode`]),
//!    including the guest's network ([`network`]), if it has one.
//! 3. **Status** ([`StatusEvent`]): one-line events the guest writes to the
//!    second serial port ([`STATUS_TTY`]), so that the first port, the
//!    user's console, carries only what the workload and the kernel wrote.
//! 4. **Agent protocol** ([`protocol`]): the framed, multiplexed protocol
//!    the host daemon speaks with the guest agent (exec, copy, stat) over a
//!    virtio-serial port named [`protocol::AGENT_PORT`].
//!
//! [`env`] holds the rule for environment variable names and repeated keys
//! that both sides apply.
//!
//! The library depends on serde only (plus serde_json, thiserror, and
//! rustix for the copy unpacker's fd-relative file calls) so the host
//! daemon can use it without pulling in anything of the guest binary.

pub mod config;
pub mod env;
pub mod network;
pub mod protocol;
pub mod status;
pub mod volumes;

/// The agent protocol under its earlier name, for the host crates that
/// import `lodge_guest::agent::...`.
pub use protocol as agent;

pub use config::{
    ConfigError, GuestConfig, UserSpec, CONFIG_IMAGE_ALIGN, CONFIG_IMAGE_MIN, DEFAULT_WORKDIR,
};
pub use network::{MacAddr, MacParseError, NetworkConfig, NetworkError};
pub use status::{parse_status_line, StatusEvent, STATUS_PREFIX};
pub use volumes::{serial_for_slot, VolumeMount};

/// Serial of the read-only image disk (ext4 or erofs) that becomes the lower
/// layer of the guest's root.
pub const SERIAL_ROOT: &str = "lodge-root";

/// Serial of the writable disk (ext4, formatted by the host with `mkfs.ext4`)
/// holding the overlay's upper and work directories.
pub const SERIAL_OVERLAY: &str = "lodge-overlay";

/// Serial of the raw configuration disk written by [`GuestConfig::encode`].
pub const SERIAL_CONFIG: &str = "lodge-config";

/// The guest device the status lines are written to: the second serial port.
/// The host wires it to a file with `-chardev file,...,append=on`.
pub const STATUS_TTY: &str = "/dev/ttyS1";

/// Kernel command-line flag asking `lodge-init` to give the workload the
/// fast console, the virtio-serial port named [`FAST_CONSOLE_PORT`] (the
/// host merges it into the same console log), instead of the serial console.
pub const FAST_CONSOLE_FLAG: &str = "lodge.console=virtio";

/// The virtio-serial port name of the workload's fast console, as the guest
/// sees it in `/sys/class/virtio-ports/*/name` (its device is
/// `/dev/vportNpM`, numbered in probe order).
pub const FAST_CONSOLE_PORT: &str = "org.lodge.console";

/// Kernel command-line flag asking `lodge-init` to prove the guest boots:
/// it prints [`SELFTEST_OK`] on the console and powers off at once.
pub const SELFTEST_FLAG: &str = "lodge.selftest";

/// The exact line (without its newline) printed on the console (ttyS0) when
/// the kernel was booted with [`SELFTEST_FLAG`].
pub const SELFTEST_OK: &str = "lodge-selftest: ok";
