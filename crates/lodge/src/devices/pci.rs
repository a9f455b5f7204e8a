//! PCI addresses and what sysfs says about a device.
//!
//! A [`PciAddress`] is parsed strictly (`DDDD:BB:DD.F`, hex, device ≤ 1f,
//! function ≤ 7) and only then joined to a sysfs path, so no client string
//! ever names a host file. Reads are of a few fixed attribute files
//! (`vendor`, `device`, `class`), each bounded, and of two symlinks'
//! names (`driver`, `iommu_group`); nothing is ever written. The sysfs
//! root is a parameter ([`Sysfs`]) so tests build a fake tree.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::devices::error::{io, Error, Result};

/// A validated PCI address, lowercase: `0000:a2:00.0`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress(String);

impl PciAddress {
    /// `DDDD:BB:DD.F` in hex (either case; kept lowercase as sysfs names
    /// it), the device number at most `1f` and the function at most 7.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::InvalidAddress(s.to_string());
        let b = s.as_bytes();
        if b.len() != 12 || b[4] != b':' || b[7] != b':' || b[10] != b'.' {
            return Err(bad());
        }
        let hex = [0usize, 1, 2, 3, 5, 6, 8, 9];
        if !hex.iter().all(|&i| b[i].is_ascii_hexdigit()) {
            return Err(bad());
        }
        let dev = u8::from_str_radix(&s[8..10], 16).map_err(|_| bad())?;
        if dev > 0x1f || !(b'0'..=b'7').contains(&b[11]) {
            return Err(bad());
        }
        Ok(PciAddress(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// hypeman's default device name: `pci-0000-a2-00-0`.
    pub fn default_name(&self) -> String {
        format!("pci-{}", self.0.replace([':', '.'], "-"))
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What sysfs says about one PCI device now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    pub address: PciAddress,
    /// 4 lowercase hex digits, no `0x` (hypeman's form).
    pub vendor_id: String,
    pub device_id: String,
    /// The 24-bit class code (`0x030000` is a VGA controller).
    pub class: u32,
    /// The bound driver's name, if any.
    pub driver: Option<String>,
    /// The IOMMU group, if the host has an IOMMU.
    pub iommu_group: Option<u32>,
}

impl PciDevice {
    /// A display controller (class 0x03): hypeman's `gpu` type.
    pub fn is_gpu(&self) -> bool {
        self.class >> 16 == 0x03
    }

    pub fn bound_to_vfio(&self) -> bool {
        self.driver.as_deref() == Some(VFIO_DRIVER)
    }
}

/// The driver a device needs for passthrough.
pub const VFIO_DRIVER: &str = "vfio-pci";

/// A sysfs tree (`/sys` on a host, a temp dir in tests).
#[derive(Debug, Clone)]
pub struct Sysfs {
    pub root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            root: PathBuf::from("/sys"),
        }
    }
}

/// Longest attribute file read (they hold one short line).
const MAX_ATTR: u64 = 64;

impl Sysfs {
    #[cfg(test)]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    fn devices_dir(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    /// `<root>/kernel/iommu_groups`.
    pub fn iommu_groups_dir(&self) -> PathBuf {
        self.root.join("kernel/iommu_groups")
    }

    /// The device at `addr`, or `None` when the host has none there.
    pub fn device(&self, addr: &PciAddress) -> Result<Option<PciDevice>> {
        let dir = self.devices_dir().join(addr.as_str());
        let vendor = match read_attr(&dir.join("vendor")) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("reading {}/vendor", dir.display()))(e)),
        };
        let attr = |name: &str| {
            read_attr(&dir.join(name)).map_err(io(format!("reading {}/{name}", dir.display())))
        };
        let device = attr("device")?;
        let class = attr("class")?;
        let parse_hex = |what: &str, v: &str| {
            u32::from_str_radix(v.trim_start_matches("0x"), 16).map_err(|_| Error::Io {
                context: format!("{}/{what}: {v:?} is not hex", dir.display()),
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            })
        };
        let vendor_id = format!("{:04x}", parse_hex("vendor", &vendor)?);
        let device_id = format!("{:04x}", parse_hex("device", &device)?);
        let class = parse_hex("class", &class)?;
        let driver = link_name(&dir.join("driver"))
            .map_err(io(format!("reading {}/driver", dir.display())))?;
        let iommu_group = link_name(&dir.join("iommu_group"))
            .map_err(io(format!("reading {}/iommu_group", dir.display())))?
            .and_then(|g| g.parse().ok());
        Ok(Some(PciDevice {
            address: addr.clone(),
            vendor_id,
            device_id,
            class,
            driver,
            iommu_group,
        }))
    }

    /// Every PCI device of the host, by address (entries whose name is not
    /// a PCI address are skipped).
    pub fn devices(&self) -> Result<Vec<PciDevice>> {
        let dir = self.devices_dir();
        let addrs = match list_addresses(&dir) {
            Ok(a) => a,
            // No PCI bus at all (some VMs, containers): nothing to offer.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("listing {}", dir.display()))(e)),
        };
        let mut out = Vec::new();
        for addr in addrs {
            // Removed while listing (hot-unplug): skipped.
            if let Some(d) = self.device(&addr)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The addresses of IOMMU group `group`'s devices.
    pub fn group_members(&self, group: u32) -> Result<Vec<PciAddress>> {
        let dir = self
            .iommu_groups_dir()
            .join(group.to_string())
            .join("devices");
        list_addresses(&dir).map_err(io(format!("listing {}", dir.display())))
    }

    /// Whether the host has any IOMMU group at all.
    pub fn has_iommu(&self) -> bool {
        std::fs::read_dir(self.iommu_groups_dir())
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }
}

/// The PCI addresses named in `dir`, sorted.
fn list_addresses(dir: &Path) -> std::io::Result<Vec<PciAddress>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(addr) = entry
            .file_name()
            .to_str()
            .and_then(|n| PciAddress::parse(n).ok())
        {
            out.push(addr);
        }
    }
    out.sort();
    Ok(out)
}

/// One short attribute file, trimmed.
fn read_attr(path: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(path)?
        .take(MAX_ATTR)
        .read_to_string(&mut s)?;
    Ok(s.trim().to_string())
}

/// The last component of a symlink's target (`driver` → `vfio-pci`), or
/// `None` when there is no link.
fn link_name(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_link(path) {
        Ok(target) => Ok(target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Builds fake sysfs trees for tests (here and in the other modules').
#[cfg(test)]
pub mod fake {
    use std::path::Path;

    /// Adds a device to the fake tree under `root`.
    pub fn add(
        root: &Path,
        addr: &str,
        ids: (&str, &str, &str),
        driver: Option<&str>,
        group: Option<u32>,
    ) {
        let real = root.join("devices/pci0000:00").join(addr);
        std::fs::create_dir_all(&real).expect("mkdir");
        std::fs::write(real.join("vendor"), format!("{}\n", ids.0)).expect("vendor");
        std::fs::write(real.join("device"), format!("{}\n", ids.1)).expect("device");
        std::fs::write(real.join("class"), format!("{}\n", ids.2)).expect("class");
        if let Some(d) = driver {
            let ddir = root.join("bus/pci/drivers").join(d);
            std::fs::create_dir_all(&ddir).expect("driver dir");
            std::os::unix::fs::symlink(&ddir, real.join("driver")).expect("driver link");
        }
        if let Some(g) = group {
            let gdir = root.join("kernel/iommu_groups").join(g.to_string());
            std::fs::create_dir_all(gdir.join("devices")).expect("group dir");
            std::os::unix::fs::symlink(&gdir, real.join("iommu_group")).expect("group link");
            std::os::unix::fs::symlink(&real, gdir.join("devices").join(addr))
                .expect("member link");
        }
        let bus = root.join("bus/pci/devices");
        std::fs::create_dir_all(&bus).expect("bus dir");
        std::os::unix::fs::symlink(&real, bus.join(addr)).expect("bus link");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_parsed_strictly() {
        for ok in [
            "0000:00:00.0",
            "0000:a2:00.0",
            "FFFF:FF:1F.7",
            "0001:3b:1a.3",
        ] {
            let a = PciAddress::parse(ok).expect(ok);
            assert_eq!(a.as_str(), ok.to_ascii_lowercase());
        }
        for bad in [
            "",
            "00:00.0",
            "0000:00:00",
            "0000:00:20.0",
            "0000:00:00.8",
            "0000:0g:00.0",
            "0000-00-00.0",
            "0000:00:00.0 ",
            "../../../etc",
            "0000:00:00.0/../../x",
            "0000:00:00.0,x",
            "+000:00:00.0",
            "0000:00:0\u{e9}.0",
        ] {
            assert!(PciAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
        let a = PciAddress::parse("0000:A2:00.0").expect("parse");
        assert_eq!(a.default_name(), "pci-0000-a2-00-0");
    }

    #[test]
    fn devices_are_read_from_a_fake_tree() {
        let tmp = tempfile::tempdir().expect("tmp");
        fake::add(
            tmp.path(),
            "0000:00:02.0",
            ("0x10de", "0x2230", "0x030000"),
            Some("vfio-pci"),
            Some(7),
        );
        fake::add(
            tmp.path(),
            "0000:00:01.0",
            ("0x1af4", "0x1041", "0x020000"),
            None,
            None,
        );
        // Not an address: skipped.
        std::fs::create_dir_all(tmp.path().join("bus/pci/devices/junk")).expect("junk");
        let sys = Sysfs::new(tmp.path());
        let all = sys.devices().expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].address.as_str(), "0000:00:01.0");
        assert_eq!(all[0].driver, None);
        assert_eq!(all[0].iommu_group, None);
        assert!(!all[0].is_gpu());
        let gpu = &all[1];
        assert_eq!(
            (gpu.vendor_id.as_str(), gpu.device_id.as_str()),
            ("10de", "2230")
        );
        assert!(gpu.is_gpu() && gpu.bound_to_vfio());
        assert_eq!(gpu.iommu_group, Some(7));
        assert_eq!(
            sys.group_members(7).expect("members"),
            vec![gpu.address.clone()]
        );
        assert!(sys.has_iommu());
        let missing = PciAddress::parse("0000:00:09.0").expect("parse");
        assert_eq!(sys.device(&missing).expect("read"), None);
        // No PCI bus at all.
        assert!(Sysfs::new(tmp.path().join("none"))
            .devices()
            .expect("empty")
            .is_empty());
    }
}
