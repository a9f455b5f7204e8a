//! Whether the host can give a device to a VM as it stands, and QEMU's
//! argument for it.
//!
//! VFIO passthrough needs, in order: an IOMMU group for the device (the
//! host has an IOMMU and it is on), the device bound to `vfio-pci`, the
//! group's character device `/dev/vfio/<group>`, and every other device
//! of the group bound to `vfio-pci` too (or to no driver): the kernel
//! hands out whole groups. hypeman rebinds drivers itself; lodge does not
//! (an API call that unloads a host driver is too much power for a
//! client), so each missing piece is refused with an error naming it.

use std::path::Path;

use crate::devices::error::{Error, Result};
use crate::devices::pci::{PciAddress, PciDevice, Sysfs, VFIO_DRIVER};

/// Checks every requirement above for the device registered as `name` at
/// `addr`; the device as sysfs shows it when all hold.
pub fn check(sys: &Sysfs, dev_root: &Path, name: &str, addr: &PciAddress) -> Result<PciDevice> {
    let dev = sys
        .device(addr)?
        .ok_or_else(|| Error::NoSuchPci(addr.to_string()))?;
    let Some(group) = dev.iommu_group else {
        return Err(Error::NoIommuGroup {
            device: name.to_string(),
            address: addr.to_string(),
            why: if sys.has_iommu() {
                "the host's IOMMU does not cover it".to_string()
            } else {
                format!(
                    "the host has no IOMMU enabled ({} is empty); enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on or amd_iommu=on",
                    sys.iommu_groups_dir().display()
                )
            },
        });
    };
    if !dev.bound_to_vfio() {
        return Err(Error::NotBoundToVfio {
            device: name.to_string(),
            address: addr.to_string(),
            driver: dev.driver.clone().unwrap_or_else(|| "no driver".into()),
        });
    }
    let node = dev_root.join("vfio").join(group.to_string());
    if !node.exists() {
        return Err(Error::NoVfioNode {
            device: name.to_string(),
            address: addr.to_string(),
            node: node.display().to_string(),
        });
    }
    for other in sys.group_members(group)? {
        if &other == addr {
            continue;
        }
        let driver = sys.device(&other)?.and_then(|d| d.driver);
        if let Some(driver) = driver.filter(|d| d != VFIO_DRIVER) {
            return Err(Error::GroupNotViable {
                device: name.to_string(),
                address: addr.to_string(),
                group,
                other: other.to_string(),
                driver,
            });
        }
    }
    Ok(dev)
}

/// QEMU's `-device` value for passing `addr` through. The address is
/// validated, so it holds no `,` that could add options.
pub fn qemu_device_arg(addr: &PciAddress) -> String {
    format!("{VFIO_DRIVER},host={addr}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::error::ErrorKind;
    use crate::devices::pci::fake;

    const NIC: (&str, &str, &str) = ("0x8086", "0x10fb", "0x020000");

    fn addr(s: &str) -> PciAddress {
        PciAddress::parse(s).expect("address")
    }

    #[test]
    fn each_missing_piece_is_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("sys");
        let dev = tmp.path().join("dev");
        std::fs::create_dir_all(dev.join("vfio")).expect("dev");
        fake::add(&root, "0000:01:00.0", NIC, Some("ixgbe"), None);
        fake::add(&root, "0000:02:00.0", NIC, Some("ixgbe"), Some(3));
        fake::add(&root, "0000:03:00.0", NIC, Some("vfio-pci"), Some(4));
        fake::add(&root, "0000:04:00.0", NIC, Some("vfio-pci"), Some(5));
        fake::add(&root, "0000:04:00.1", NIC, Some("ixgbe"), None);
        // 04:00.1 shares group 5 with 04:00.0.
        std::os::unix::fs::symlink(
            root.join("devices/pci0000:00/0000:04:00.1"),
            root.join("kernel/iommu_groups/5/devices/0000:04:00.1"),
        )
        .expect("member");
        fake::add(&root, "0000:05:00.0", NIC, Some("vfio-pci"), Some(6));
        for g in [5, 6] {
            std::fs::write(dev.join("vfio").join(g.to_string()), b"").expect("node");
        }
        let sys = Sysfs::new(&root);
        let err = |a: &str| check(&sys, &dev, "nic", &addr(a)).expect_err(a);

        let e = err("0000:01:00.0");
        assert!(matches!(e, Error::NoIommuGroup { .. }), "{e}");
        assert!(e.to_string().contains("no IOMMU"), "{e}");
        assert_eq!(e.kind(), ErrorKind::NotReady);
        let e = err("0000:02:00.0");
        assert!(matches!(e, Error::NotBoundToVfio { .. }), "{e}");
        assert!(e.to_string().contains("ixgbe, not vfio-pci"), "{e}");
        let e = err("0000:03:00.0");
        assert!(matches!(e, Error::NoVfioNode { .. }), "{e}");
        let e = err("0000:04:00.0");
        assert!(
            matches!(e, Error::GroupNotViable { ref other, .. } if other == "0000:04:00.1"),
            "{e}"
        );
        assert!(matches!(err("0000:09:00.0"), Error::NoSuchPci(_)));

        let ok = check(&sys, &dev, "nic", &addr("0000:05:00.0")).expect("ready");
        assert_eq!(ok.iommu_group, Some(6));
        assert_eq!(qemu_device_arg(&ok.address), "vfio-pci,host=0000:05:00.0");
    }
}
