//! IP and MAC leases that never collide, even between processes.
//!
//! A lease is a file `<leases dir>/<ip>` holding the instance id. It is
//! written to a private temporary name first and then hard-linked into place:
//! `link(2)` fails with `EEXIST` when the name is taken, so exactly one of
//! any number of concurrent allocators (threads or processes) wins each
//! address, and a lease file is never seen half-written. No lock file, no
//! daemon-held state: the directory *is* the state, so [`Allocator::leases`]
//! rebuilds it after a restart and a crash can at worst leave a stray
//! temporary file (a dot-file, never read as a lease).
//!
//! The MAC is derived from the IP (`02:4c:` + the four address bytes):
//! `02` marks a locally administered unicast address, `4c` ("L") marks
//! lodge, and since IPs are unique within the subnet so are MACs, with no
//! second registry to keep in step.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Subnet;
use crate::error::NetError;

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// lodge's MAC for a guest address: `02:4c:a:b:c:d`.
    pub fn for_ip(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        MacAddr([0x02, 0x4c, a, b, c, d])
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| format!("{s:?} is not a MAC address"))?;
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address"));
        }
        Ok(MacAddr(out))
    }
}

/// One instance's address on the default network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub instance_id: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// Hands out guest addresses of one subnet from a lease directory.
#[derive(Clone, Debug)]
pub struct Allocator {
    dir: PathBuf,
    subnet: Subnet,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Allocator {
    /// Uses (and creates) `dir`, e.g. `<data>/network/leases`.
    pub fn open(dir: impl Into<PathBuf>, subnet: Subnet) -> Result<Self, NetError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .map_err(|e| NetError::io(format!("create lease dir {}", dir.display()), e))?;
        Ok(Allocator { dir, subnet })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The instance's lease: its existing one if it has one, else the lowest
    /// free guest address. [`NetError::SubnetFull`] when none is left.
    pub fn allocate(&self, instance_id: &str) -> Result<Lease, NetError> {
        check_id(instance_id)?;
        let existing = self.leases()?;
        if let Some(lease) = existing.iter().find(|l| l.instance_id == instance_id) {
            return Ok(lease.clone());
        }
        let taken: HashSet<Ipv4Addr> = existing.iter().map(|l| l.ip).collect();

        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&tmp, format!("{instance_id}\n"))
            .map_err(|e| NetError::io(format!("write {}", tmp.display()), e))?;
        let result = self.claim_first_free(&tmp, &taken, instance_id);
        if let Err(e) = fs::remove_file(&tmp) {
            // Harmless (temporaries are never read as leases), so the lease
            // stands; but say so.
            tracing::warn!("removing lease temporary {}: {e}", tmp.display());
        }
        result
    }

    fn claim_first_free(
        &self,
        tmp: &Path,
        taken: &HashSet<Ipv4Addr>,
        instance_id: &str,
    ) -> Result<Lease, NetError> {
        for ip in self
            .subnet
            .guest_addresses()
            .filter(|ip| !taken.contains(ip))
        {
            let path = self.dir.join(ip.to_string());
            match fs::hard_link(tmp, &path) {
                Ok(()) => {
                    return Ok(Lease {
                        instance_id: instance_id.to_string(),
                        ip,
                        mac: MacAddr::for_ip(ip),
                    })
                }
                // Someone else won this one between our listing and now.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(NetError::io(format!("claim {}", path.display()), e)),
            }
        }
        Err(NetError::SubnetFull {
            subnet: self.subnet.to_string(),
        })
    }

    /// Drops every lease of `instance_id`; returns what was released.
    pub fn release(&self, instance_id: &str) -> Result<Vec<Lease>, NetError> {
        let mut released = Vec::new();
        for lease in self.leases()? {
            if lease.instance_id != instance_id {
                continue;
            }
            let path = self.dir.join(lease.ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => released.push(lease),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(NetError::io(format!("remove {}", path.display()), e)),
            }
        }
        Ok(released)
    }

    /// All current leases in this subnet, ordered by address. Files that are
    /// not leases (temporaries, other subnets' addresses) are ignored.
    pub fn leases(&self) -> Result<Vec<Lease>, NetError> {
        let list_err = |e| NetError::io(format!("list {}", self.dir.display()), e);
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(list_err)? {
            let entry = entry.map_err(list_err)?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            if !self.subnet.is_guest_address(ip) {
                continue;
            }
            let text = match fs::read_to_string(entry.path()) {
                Ok(t) => t,
                // Released while we listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(NetError::io(format!("read {}", entry.path().display()), e)),
            };
            let instance_id = text.trim().to_string();
            if instance_id.is_empty() {
                continue;
            }
            out.push(Lease {
                instance_id,
                ip,
                mac: MacAddr::for_ip(ip),
            });
        }
        out.sort_by_key(|l| l.ip);
        Ok(out)
    }
}

fn check_id(id: &str) -> Result<(), NetError> {
    if id.is_empty() || id.len() > 255 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NetError::InvalidInstanceId(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn subnet(s: &str) -> Subnet {
        s.parse().expect("subnet")
    }

    #[test]
    fn mac_for_ip() {
        let mac = MacAddr::for_ip(Ipv4Addr::new(10, 100, 1, 2));
        assert_eq!(mac.to_string(), "02:4c:0a:64:01:02");
        assert_eq!("02:4c:0a:64:01:02".parse::<MacAddr>(), Ok(mac));
        assert!("02:4c:0a:64:01".parse::<MacAddr>().is_err());
        assert!("02:4c:0a:64:01:02:03".parse::<MacAddr>().is_err());
        assert!("02:4c:0a:64:01:zz".parse::<MacAddr>().is_err());
    }

    #[test]
    fn allocate_release_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Allocator::open(dir.path().join("leases"), subnet("10.100.0.0/16")).expect("open");
        let l1 = a.allocate("one").expect("one");
        assert_eq!(l1.ip, Ipv4Addr::new(10, 100, 0, 2));
        assert_eq!(l1.mac, MacAddr::for_ip(l1.ip));
        let l2 = a.allocate("two").expect("two");
        assert_eq!(l2.ip, Ipv4Addr::new(10, 100, 0, 3));
        // Idempotent per instance.
        assert_eq!(a.allocate("one").expect("again"), l1);
        // A new allocator over the same dir sees the same state.
        let b = Allocator::open(a.dir(), a.subnet()).expect("reopen");
        assert_eq!(b.leases().expect("leases"), vec![l1.clone(), l2.clone()]);
        assert_eq!(b.release("one").expect("release"), vec![l1.clone()]);
        assert!(b.release("one").expect("release twice").is_empty());
        // The freed address is reused.
        assert_eq!(a.allocate("three").expect("three").ip, l1.ip);
        // No temporaries left behind.
        let names: Vec<String> = fs::read_dir(a.dir())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        for bad in ["", "a b", "a\nb"] {
            assert!(matches!(
                a.allocate(bad),
                Err(NetError::InvalidInstanceId(_))
            ));
        }
    }

    #[test]
    fn subnet_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        // /29: 8 addresses less network, gateway, broadcast = 5 guests.
        let a = Allocator::open(dir.path(), subnet("192.168.50.0/29")).expect("open");
        let ips: Vec<Ipv4Addr> = (0..5)
            .map(|i| a.allocate(&format!("i{i}")).expect("alloc").ip)
            .collect();
        assert_eq!(ips.first(), Some(&Ipv4Addr::new(192, 168, 50, 2)));
        assert_eq!(ips.last(), Some(&Ipv4Addr::new(192, 168, 50, 6)));
        let err = a.allocate("i5").expect_err("full");
        assert!(matches!(err, NetError::SubnetFull { .. }), "{err}");
        assert!(err.to_string().contains("192.168.50.0/29"));
        a.release("i2").expect("release");
        assert_eq!(a.allocate("i5").expect("after release").ip, ips[2]);
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Arc::new(Allocator::open(dir.path(), subnet("10.100.0.0/16")).expect("open"));
        let threads: Vec<_> = (0..200)
            .map(|i| {
                let a = Arc::clone(&a);
                std::thread::spawn(move || a.allocate(&format!("inst{i}")))
            })
            .collect();
        let mut ips = HashSet::new();
        for t in threads {
            let lease = t.join().expect("thread").expect("allocate");
            assert!(ips.insert(lease.ip), "duplicate {}", lease.ip);
        }
        assert_eq!(ips.len(), 200);
        let leases = a.leases().expect("leases");
        assert_eq!(leases.len(), 200);
        // Every lease names a distinct instance.
        let ids: HashSet<_> = leases.iter().map(|l| l.instance_id.clone()).collect();
        assert_eq!(ids.len(), 200);
    }
}
