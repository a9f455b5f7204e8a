//! The guest's network, set up by PID 1 before the guest agent or the
//! workload start, so that the workload's first connection already has an
//! address and a route.
//!
//! Steps: bring `lo` up (always, as every Linux system expects); with a
//! network section, wait for the NIC whose MAC the host assigned (the
//! virtio-net module loaded with the others), set its MTU, bring it up, add
//! the address and the default route (all by rtnetlink, see `netlink`).
//! These link steps need only the config, so they run on a thread of their
//! own ([`Links`]) while PID 1 mounts the root, keeping them off the boot's
//! critical path. Once the root is up, [`write_files`] writes `/etc/hosts`
//! and, when resolvers are given, `/etc/resolv.conf` into it. Any failure
//! stops the boot: a workload that expects a network must not start
//! without one.
//!
//! The files are written through the overlay: to a fresh temporary file in
//! the root's `etc`, renamed over the old one. A rename replaces a symlink
//! (images often link `resolv.conf` to `/run/...`) instead of following it,
//! so nothing outside the new root is ever written.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lodge_guest::{MacAddr, NetworkConfig};

use super::error::{Context, Error, Result};
use crate::netlink::Rtnl;

/// Where the kernel lists network interfaces.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// How often the interfaces are re-scanned while waiting for the NIC.
const POLL: Duration = Duration::from_millis(5);

/// The link half of the setup, started on its own thread so that it runs
/// while PID 1 assembles the root; [`Links::wait`] collects its outcome.
pub enum Links {
    Running(JoinHandle<Result<()>>),
    /// The thread could not be started.
    Failed(Error),
}

impl Links {
    /// Start bringing up loopback and, with `network`, the guest's NIC.
    pub fn start(network: Option<NetworkConfig>, nic_timeout: Duration) -> Self {
        let spawned = std::thread::Builder::new()
            .name("network".into())
            .spawn(move || configure_links(network.as_ref(), nic_timeout));
        match spawned {
            Ok(handle) => Self::Running(handle),
            Err(e) => Self::Failed(Error::new(format!(
                "start the network thread: {}",
                crate::sys::errno_text_of(&e)
            ))),
        }
    }

    /// Wait for the links to be configured.
    pub fn wait(self) -> Result<()> {
        match self {
            Self::Running(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(Error::new("the network thread panicked".to_owned()))),
            Self::Failed(e) => Err(e),
        }
    }
}

/// Bring up loopback and, with `network`, the guest's NIC: address, then
/// MTU and up, then the default route. With `arp_notify` on and the
/// address in place before the link comes up, the kernel announces the
/// address (gratuitous ARP) as the link comes up: a host that already tried
/// to reach the guest and holds a failed neighbour entry for it learns the
/// MAC at once instead of after its ~3 s retry (measured: reachability came
/// ~0.5 s after the program started, all of it the host's ARP timer).
fn configure_links(network: Option<&NetworkConfig>, nic_timeout: Duration) -> Result<()> {
    let mut rtnl = Rtnl::open().context(|| "open rtnetlink socket".to_owned())?;
    let lo = ifindex(Path::new(SYS_CLASS_NET), "lo").context(|| "find lo".to_owned())?;
    rtnl.link_up(lo, None)
        .context(|| "bring up lo".to_owned())?;
    let Some(net) = network else {
        return Ok(());
    };
    let (name, index) = wait_for_nic(net.mac, nic_timeout)?;
    let notify = format!("/proc/sys/net/ipv4/conf/{name}/arp_notify");
    std::fs::write(&notify, "1").context(|| format!("write {notify}"))?;
    rtnl.add_address(index, net.ip, net.prefix_len)
        .context(|| format!("add address {}/{} to {name}", net.ip, net.prefix_len))?;
    rtnl.link_up(index, net.mtu).context(|| match net.mtu {
        Some(mtu) => format!("set mtu {mtu} and bring up {name}"),
        None => format!("bring up {name}"),
    })?;
    rtnl.add_default_route(index, net.gateway)
        .context(|| format!("add default route via {} dev {name}", net.gateway))?;
    Ok(())
}

/// Write `/etc/hosts` and, when resolvers are given, `/etc/resolv.conf`
/// under `root`; nothing without a network section.
pub fn write_files(network: Option<&NetworkConfig>, root: &Path) -> Result<()> {
    let Some(net) = network else {
        return Ok(());
    };
    write_etc(root, "hosts", &net.hosts())?;
    if let Some(resolv) = net.resolv_conf() {
        write_etc(root, "resolv.conf", &resolv)?;
    }
    Ok(())
}

/// Poll until the interface with `mac` shows up; its name and index.
fn wait_for_nic(mac: MacAddr, timeout: Duration) -> Result<(String, u32)> {
    let sys = Path::new(SYS_CLASS_NET);
    let start = Instant::now();
    loop {
        let found = scan(sys);
        if let Some((name, _)) = found.iter().find(|(_, m)| *m == Some(mac)) {
            let index = ifindex(sys, name).context(|| format!("read ifindex of {name}"))?;
            return Ok((name.clone(), index));
        }
        if start.elapsed() >= timeout {
            let seen: Vec<String> = found
                .iter()
                .map(|(name, mac)| match mac {
                    Some(mac) => format!("{name} {mac}"),
                    None => name.clone(),
                })
                .collect();
            return Err(Error::new(format!(
                "no network interface with mac {mac} appeared within {}s (found: {})",
                timeout.as_secs(),
                seen.join(", ")
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// Every interface under `sys_class_net` with its MAC, if it has one.
fn scan(sys_class_net: &Path) -> Vec<(String, Option<MacAddr>)> {
    let Ok(entries) = fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut found: Vec<(String, Option<MacAddr>)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let mac = fs::read_to_string(entry.path().join("address"))
                .ok()
                .and_then(|text| text.trim().parse().ok());
            Some((name, mac))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn ifindex(sys_class_net: &Path, name: &str) -> io::Result<u32> {
    let text = fs::read_to_string(sys_class_net.join(name).join("ifindex"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "ifindex is not a number"))
}

/// Replace `root/etc/name` with `contents` (mode 0644), never following a
/// symlink out of `root`: `etc` must be a real directory (it is created
/// when missing), and the file goes in by rename, which replaces a symlink
/// at `name` rather than writing where it points.
fn write_etc(root: &Path, name: &str, contents: &str) -> Result<()> {
    let etc = root.join("etc");
    let target = etc.join(name);
    let shown = || format!("write {}", target.display());
    match fs::symlink_metadata(&etc) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::new(format!(
                "{}: {} is not a directory",
                shown(),
                etc.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(&etc).context(|| format!("create {}", etc.display()))?;
            fs::set_permissions(&etc, fs::Permissions::from_mode(0o755))
                .context(|| format!("chmod {}", etc.display()))?;
        }
        Err(e) => return Err(e).context(shown),
    }
    let temp: PathBuf = etc.join(format!(".{name}.lodge-init"));
    match fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).context(|| format!("remove stale {}", temp.display()))
        }
        _ => {}
    }
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())?;
            // The process umask must not narrow what every user reads.
            file.set_permissions(fs::Permissions::from_mode(0o644))
        })
        .and_then(|()| fs::rename(&temp, &target));
    if let Err(e) = written {
        if let Err(cleanup) = fs::remove_file(&temp) {
            if cleanup.kind() != io::ErrorKind::NotFound {
                return Err(e)
                    .context(|| format!("{} (and remove {}: {cleanup})", shown(), temp.display()));
            }
        }
        return Err(e).context(shown);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lodge-net-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn scan_reads_macs_and_tolerates_interfaces_without_one() {
        let dir = tempdir("scan");
        for (name, address) in [
            ("lo", Some("00:00:00:00:00:00\n")),
            ("eth0", Some("02:00:00:00:00:0f\n")),
            ("eth1", Some("52:54:00:12:34:56\n")),
            ("tunl0", None),
        ] {
            fs::create_dir_all(dir.join(name)).expect("mkdir");
            if let Some(address) = address {
                fs::write(dir.join(name).join("address"), address).expect("write");
            }
        }
        fs::write(dir.join("eth0").join("ifindex"), "2\n").expect("write");
        let found = scan(&dir);
        let mac = |s: &str| s.parse::<MacAddr>().ok();
        assert_eq!(
            found,
            vec![
                ("eth0".into(), mac("02:00:00:00:00:0f")),
                ("eth1".into(), mac("52:54:00:12:34:56")),
                ("lo".into(), mac("00:00:00:00:00:00")),
                ("tunl0".into(), None),
            ]
        );
        assert_eq!(ifindex(&dir, "eth0").expect("ifindex"), 2);
        assert!(ifindex(&dir, "eth1").is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_etc_replaces_a_symlink_instead_of_following_it() {
        let dir = tempdir("etc");
        let root = dir.join("root");
        let outside = dir.join("outside.conf");
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(&outside, "host's own\n").expect("write");
        std::os::unix::fs::symlink(&outside, root.join("etc/resolv.conf")).expect("symlink");
        // A dangling relative link, as Debian images with systemd-resolved.
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            root.join("etc/hosts"),
        )
        .expect("symlink");

        write_etc(&root, "resolv.conf", "nameserver 10.0.2.3\n").expect("write resolv.conf");
        write_etc(&root, "hosts", "127.0.0.1\tlocalhost\n").expect("write hosts");

        assert_eq!(fs::read_to_string(&outside).expect("read"), "host's own\n");
        for (name, text) in [
            ("resolv.conf", "nameserver 10.0.2.3\n"),
            ("hosts", "127.0.0.1\tlocalhost\n"),
        ] {
            let path = root.join("etc").join(name);
            let meta = fs::symlink_metadata(&path).expect("stat");
            assert!(meta.is_file(), "{name} is a regular file now");
            assert_eq!(meta.permissions().mode() & 0o777, 0o644);
            assert_eq!(fs::read_to_string(&path).expect("read"), text);
        }
        assert!(
            !root.join("run").exists(),
            "the link's target was not created"
        );
        let leftovers: Vec<_> = fs::read_dir(root.join("etc"))
            .expect("readdir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "no temporary file left: {leftovers:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_etc_creates_etc_and_refuses_a_linked_etc() {
        let dir = tempdir("mketc");
        let root = dir.join("root");
        fs::create_dir_all(&root).expect("mkdir");
        write_etc(&root, "hosts", "x\n").expect("write");
        assert_eq!(
            fs::read_to_string(root.join("etc/hosts")).expect("read"),
            "x\n"
        );

        let linked = dir.join("linked");
        fs::create_dir_all(&linked).expect("mkdir");
        fs::create_dir_all(dir.join("elsewhere")).expect("mkdir");
        std::os::unix::fs::symlink(dir.join("elsewhere"), linked.join("etc")).expect("symlink");
        let err = write_etc(&linked, "hosts", "x\n").expect_err("etc is a link");
        assert!(err.to_string().contains("is not a directory"), "{err}");
        assert!(!dir.join("elsewhere/hosts").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
