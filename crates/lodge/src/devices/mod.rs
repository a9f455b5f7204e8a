//! Host PCI devices for passthrough (hypeman's `/devices`).
//!
//! Three layers, so that what touches the host is small and testable
//! against a fake sysfs tree (a temp dir):
//!
//! - [`pci`]: the PCI address (parsed strictly before any path is built
//!   from it) and what sysfs says about one device or all of them: ids,
//!   class, driver, IOMMU group. Read-only: lodge never binds or unbinds a
//!   host driver;
//! - [`passthrough`]: whether a device can be given to a VM (an IOMMU
//!   group, bound to `vfio-pci`, `/dev/vfio/<group>` present, every device
//!   of its group held by vfio) and QEMU's `-device vfio-pci,host=…`
//!   argument for it;
//! - [`manager`]: the registry of devices an operator registered (one JSON
//!   record per device under `<data dir>/devices/`), with typed errors.
//!
//! Who a device is attached to is not stored here: the instance records
//! are the one source of truth, read through a callback, as for volumes.

pub mod error;
pub mod manager;
pub mod passthrough;
pub mod pci;

pub use error::{Error, ErrorKind};
pub use manager::{Device, Devices, RegisterRequest, UsersFn};
pub use pci::{PciDevice, Sysfs};
