//! The [`Devices`] registry: register a host PCI device by address, list,
//! get (by id or name), delete, and what the host offers.
//!
//! One JSON record per device, `<dir>/<id>.json`, written atomically; the
//! live facts (driver, IOMMU group) are read from sysfs at each view, so a
//! device rebound on the host shows as it is now. Registrations and
//! deletes run under one lock, so two registrations of one address or name
//! cannot both pass the check. Who uses a device comes from the instance
//! records through [`UsersFn`] (as for volumes); a delete is refused while
//! any instance names the device.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::devices::error::{io, Error, Result};
use crate::devices::passthrough;
use crate::devices::pci::{PciAddress, PciDevice, Sysfs};

/// The instances that name device `id`, from their records; an error means
/// they could not be read (the device is then taken as busy).
pub type UsersFn = Arc<dyn Fn(&str) -> Result<Vec<String>, String> + Send + Sync>;

/// What lodge remembers about a registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    pub name: String,
    pub pci_address: String,
    pub vendor_id: String,
    pub device_id: String,
    /// hypeman's `DeviceType`: `gpu` or `pci`.
    #[serde(rename = "type")]
    pub kind: String,
    /// At registration (shown when the device has since left the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_group: Option<u32>,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A registered device as it stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub record: DeviceRecord,
    /// What sysfs says now (`None`: the device is gone from the host).
    pub live: Option<PciDevice>,
    /// The instances that name it.
    pub attached_to: Vec<String>,
}

impl Device {
    pub fn bound_to_vfio(&self) -> bool {
        self.live.as_ref().is_some_and(PciDevice::bound_to_vfio)
    }

    pub fn iommu_group(&self) -> Option<u32> {
        match &self.live {
            Some(d) => d.iommu_group,
            None => self.record.iommu_group,
        }
    }
}

/// What a registration asks for.
#[derive(Debug, Clone, Default)]
pub struct RegisterRequest {
    pub pci_address: String,
    pub name: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// The registry.
pub struct Devices {
    dir: PathBuf,
    sys: Sysfs,
    dev_root: PathBuf,
    users: UsersFn,
    lock: Mutex<()>,
}

impl Devices {
    /// Opens (creating if needed) the registry at `dir`, reading the host
    /// through `sys` and `dev_root` (`/sys` and `/dev` outside tests).
    pub fn open(dir: &Path, sys: Sysfs, dev_root: &Path, users: UsersFn) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Devices {
            dir: dir.to_path_buf(),
            sys,
            dev_root: dev_root.to_path_buf(),
            users,
            lock: Mutex::new(()),
        })
    }

    /// The host's PCI devices (hypeman's `list_available`).
    pub fn available(&self) -> Result<Vec<PciDevice>> {
        self.sys.devices()
    }

    fn records(&self) -> Result<Vec<DeviceRecord>> {
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(&self.dir).map_err(io(format!("listing {}", self.dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {}", self.dir.display())))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !crate::instances::naming::is_id_like(id) {
                continue;
            }
            let path = entry.path();
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Deleted while listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
            };
            let rec: DeviceRecord = serde_json::from_slice(&bytes).map_err(|e| Error::Io {
                context: format!("{}: {e}", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            })?;
            out.push(rec);
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn resolve(&self, key: &str) -> Result<DeviceRecord> {
        let all = self.records()?;
        all.iter()
            .find(|r| r.id == key)
            .or_else(|| all.iter().find(|r| r.name == key))
            .cloned()
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    fn users_of(&self, id: &str) -> Result<Vec<String>> {
        (self.users)(id).map_err(|e| Error::Io {
            context: format!("reading the users of device {id}: {e}"),
            source: std::io::Error::other(e),
        })
    }

    fn view(&self, record: DeviceRecord) -> Result<Device> {
        // A record written by hand with a bad address shows as gone.
        let live = match PciAddress::parse(&record.pci_address) {
            Ok(addr) => self.sys.device(&addr)?,
            Err(_) => None,
        };
        let attached_to = self.users_of(&record.id)?;
        Ok(Device {
            record,
            live,
            attached_to,
        })
    }

    pub fn list(&self) -> Result<Vec<Device>> {
        self.records()?.into_iter().map(|r| self.view(r)).collect()
    }

    pub fn get(&self, key: &str) -> Result<Device> {
        self.view(self.resolve(key)?)
    }

    /// Registers the device at `req.pci_address`: the address must be
    /// well-formed and present on the host, the name (default
    /// `pci-<address>`) follow instance names' rules and be free, and the
    /// address not be registered already.
    pub fn register(&self, req: RegisterRequest) -> Result<Device> {
        let addr = PciAddress::parse(req.pci_address.trim())?;
        let name = match req.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => addr.default_name(),
        };
        crate::instances::naming::Name::parse(&name)
            .map_err(|e| Error::InvalidName(e.to_string()))?;
        crate::tags::validate(&req.tags).map_err(|e| Error::InvalidTags(e.to_string()))?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let all = self.records()?;
        if let Some(r) = all.iter().find(|r| r.pci_address == addr.as_str()) {
            return Err(Error::AddressTaken {
                address: addr.to_string(),
                id: r.id.clone(),
            });
        }
        if all.iter().any(|r| r.name == name || r.id == name) {
            return Err(Error::NameTaken(name));
        }
        let dev = self
            .sys
            .device(&addr)?
            .ok_or_else(|| Error::NoSuchPci(addr.to_string()))?;
        let record = DeviceRecord {
            id: crate::instances::naming::new_id(),
            name,
            pci_address: addr.to_string(),
            vendor_id: dev.vendor_id.clone(),
            device_id: dev.device_id.clone(),
            kind: if dev.is_gpu() { "gpu" } else { "pci" }.to_string(),
            iommu_group: dev.iommu_group,
            created_at: lodge_common::time::now_rfc3339(),
            tags: req.tags,
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Io {
            context: format!("encoding device {}", record.id),
            source: std::io::Error::other(e),
        })?;
        let path = self.dir.join(format!("{}.json", record.id));
        lodge_common::fsutil::write_atomic(&path, &json)
            .map_err(io(format!("writing {}", path.display())))?;
        Ok(Device {
            record,
            live: Some(dev),
            attached_to: Vec::new(),
        })
    }

    /// Unregisters a device; refused while an instance names it.
    pub fn delete(&self, key: &str) -> Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let record = self.resolve(key)?;
        let users = self.users_of(&record.id)?;
        if !users.is_empty() {
            return Err(Error::InUse {
                device: record.id,
                instances: users.join(", "),
            });
        }
        let path = self.dir.join(format!("{}.json", record.id));
        std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))
    }

    /// Resolves `key` and checks the host can pass it through now (see
    /// [`passthrough::check`]) and that no instance holds it: the device
    /// and QEMU's `-device` value for it.
    pub fn plan_attach(&self, key: &str) -> Result<(Device, String)> {
        let device = self.get(key)?;
        if let Some(user) = device.attached_to.first() {
            return Err(Error::Busy {
                device: device.record.name.clone(),
                instance: user.clone(),
            });
        }
        let addr = PciAddress::parse(&device.record.pci_address)?;
        passthrough::check(&self.sys, &self.dev_root, &device.record.name, &addr)?;
        Ok((device, passthrough::qemu_device_arg(&addr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::error::ErrorKind;
    use crate::devices::pci::fake;

    struct Fixture {
        _tmp: tempfile::TempDir,
        devices: Devices,
        users: Arc<Mutex<Vec<String>>>,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("sys");
        fake::add(
            &root,
            "0000:00:02.0",
            ("0x10de", "0x2230", "0x030000"),
            Some("nvidia"),
            None,
        );
        fake::add(
            &root,
            "0000:00:03.0",
            ("0x1af4", "0x1041", "0x020000"),
            Some("virtio-pci"),
            None,
        );
        let users = Arc::new(Mutex::new(Vec::new()));
        let u = users.clone();
        let users_fn: UsersFn =
            Arc::new(move |_id: &str| Ok(u.lock().map_err(|e| e.to_string())?.clone()));
        let devices = Devices::open(
            &tmp.path().join("store"),
            Sysfs::new(&root),
            &tmp.path().join("dev"),
            users_fn,
        )
        .expect("open");
        Fixture {
            _tmp: tmp,
            devices,
            users,
        }
    }

    fn req(addr: &str, name: Option<&str>) -> RegisterRequest {
        RegisterRequest {
            pci_address: addr.to_string(),
            name: name.map(str::to_string),
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn register_get_list_delete() {
        let f = fixture();
        let gpu = f
            .devices
            .register(req("0000:00:02.0", None))
            .expect("register");
        assert_eq!(gpu.record.name, "pci-0000-00-02-0");
        assert_eq!(gpu.record.kind, "gpu");
        assert_eq!(gpu.record.vendor_id, "10de");
        assert!(!gpu.bound_to_vfio());
        let nic = f
            .devices
            .register(req("0000:00:03.0", Some("nic")))
            .expect("register");
        assert_eq!(nic.record.kind, "pci");
        assert_eq!(
            f.devices.get("nic").expect("by name").record.id,
            nic.record.id
        );
        assert_eq!(
            f.devices.get(&gpu.record.id).expect("by id").record.name,
            gpu.record.name
        );
        assert_eq!(f.devices.list().expect("list").len(), 2);
        f.devices.delete("nic").expect("delete");
        assert_eq!(
            f.devices.get("nic").expect_err("gone").kind(),
            ErrorKind::NotFound
        );
        assert_eq!(f.devices.list().expect("list").len(), 1);
    }

    #[test]
    fn bad_and_conflicting_registrations_are_refused() {
        let f = fixture();
        let kind = |r: RegisterRequest| f.devices.register(r).expect_err("refused").kind();
        assert_eq!(kind(req("../../etc/passwd", None)), ErrorKind::Invalid);
        assert_eq!(
            kind(req("0000:00:02.0", Some("Bad_Name"))),
            ErrorKind::Invalid
        );
        assert_eq!(kind(req("0000:00:09.0", None)), ErrorKind::NotFound);
        f.devices
            .register(req("0000:00:02.0", Some("gpu")))
            .expect("first");
        assert_eq!(
            kind(req("0000:00:02.0", Some("other"))),
            ErrorKind::Conflict
        );
        assert_eq!(kind(req("0000:00:03.0", Some("gpu"))), ErrorKind::Conflict);
        let mut tags = BTreeMap::new();
        tags.insert("bad key".to_string(), "v".to_string());
        let mut r = req("0000:00:03.0", None);
        r.tags = tags;
        assert_eq!(kind(r), ErrorKind::Invalid);
        assert_eq!(f.devices.list().expect("list").len(), 1);
    }

    #[test]
    fn a_device_in_use_is_not_deleted_nor_attached_twice() {
        let f = fixture();
        f.devices
            .register(req("0000:00:02.0", Some("gpu")))
            .expect("register");
        f.users.lock().expect("lock").push("inst1".to_string());
        let e = f.devices.delete("gpu").expect_err("in use");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.to_string().contains("inst1"), "{e}");
        let e = f.devices.plan_attach("gpu").expect_err("busy");
        assert!(matches!(e, Error::Busy { .. }), "{e}");
        assert_eq!(
            f.devices.get("gpu").expect("get").attached_to,
            vec!["inst1"]
        );
        f.users.lock().expect("lock").clear();
        // Free, but this fake host has no IOMMU: refused, naming it.
        let e = f.devices.plan_attach("gpu").expect_err("no iommu");
        assert_eq!(e.kind(), ErrorKind::NotReady);
        assert!(e.to_string().contains("no IOMMU"), "{e}");
        f.devices.delete("gpu").expect("delete");
    }
}
