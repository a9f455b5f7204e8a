//! Moving the guest onto another network identity, on the host's request:
//! a fork restored from its source's memory wakes up with the source's
//! address, MAC and host name (the guest set them once, at boot), so the
//! host asks the agent to take the fork's own (hypeman #423).
//!
//! The steps, by rtnetlink on the one NIC (the guest has one):
//! 1. delete the old address (the kernel drops the routes through it, and
//!    deleting a primary address would take any secondary with it, so the
//!    old one goes first);
//! 2. add the new address and the default route again;
//! 3. set the new MAC last: with `arp_notify` the kernel then announces
//!    the new address from the new MAC at once;
//! 4. set the host name.
//!
//! An address or route already in place (a repeated request) is fine.

use std::path::Path;

use lodge_guest::protocol::{Event, Readdress};

use super::wire::StreamOut;
use crate::netlink::Rtnl;
use crate::sys;

/// Where the kernel lists network interfaces (sysfs is mounted in the root
/// the agent runs in).
const SYS_CLASS_NET: &str = "/sys/class/net";
/// `ARPHRD_ETHER`, in `/sys/class/net/*/type`.
const ETHERNET: &str = "1";

pub fn readdress(out: &StreamOut, req: &Readdress) {
    match apply(req) {
        Ok(()) => out.event(&Event::Result { bytes: 0 }),
        Err(message) => out.event(&Event::Error {
            message,
            path: String::new(),
        }),
    }
}

/// The index of the guest's Ethernet interface.
fn nic_index(sys_class_net: &Path) -> Result<u32, String> {
    let entries = std::fs::read_dir(sys_class_net)
        .map_err(|e| format!("list {}: {e}", sys_class_net.display()))?;
    let mut nics: Vec<(String, u32)> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let kind = std::fs::read_to_string(dir.join("type")).ok()?;
            let index = std::fs::read_to_string(dir.join("ifindex")).ok()?;
            (kind.trim() == ETHERNET)
                .then(|| {
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        index.trim().parse().ok()?,
                    ))
                })
                .flatten()
        })
        .collect();
    nics.sort();
    nics.first()
        .map(|(_, index)| *index)
        .ok_or_else(|| "the guest has no Ethernet interface".to_string())
}

fn apply(req: &Readdress) -> Result<(), String> {
    let net = &req.network;
    let index = nic_index(Path::new(SYS_CLASS_NET))?;
    let mut rtnl = Rtnl::open().map_err(|e| format!("open rtnetlink: {e}"))?;
    let tolerate = |r: std::io::Result<()>, ok: &[i32], what: &str| match r {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error().is_some_and(|c| ok.contains(&c)) => Ok(()),
        Err(e) => Err(format!("{what}: {e}")),
    };
    if let Some(old) = req.old_ip.filter(|old| *old != net.ip) {
        tolerate(
            rtnl.del_address(index, old, net.prefix_len),
            &[libc::EADDRNOTAVAIL, libc::ENOENT],
            &format!("remove address {old}"),
        )?;
    }
    tolerate(
        rtnl.add_address(index, net.ip, net.prefix_len),
        &[libc::EEXIST],
        &format!("add address {}/{}", net.ip, net.prefix_len),
    )?;
    tolerate(
        rtnl.add_default_route(index, net.gateway),
        &[libc::EEXIST],
        &format!("add the default route via {}", net.gateway),
    )?;
    tolerate(
        rtnl.set_mac(index, net.mac.0),
        &[],
        &format!("set the MAC to {}", net.mac),
    )?;
    sys::sethostname(&net.name).map_err(|e| format!("set the host name {}: {e}", net.name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ethernet_interface_is_the_nic() {
        let dir = std::env::temp_dir().join(format!("lodge-readdress-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("clear");
        }
        for (name, kind, index) in [("lo", "772", "1"), ("eth0", "1", "2"), ("sit0", "776", "3")] {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("type"), format!("{kind}\n")).expect("type");
            std::fs::write(d.join("ifindex"), format!("{index}\n")).expect("ifindex");
        }
        assert_eq!(nic_index(&dir), Ok(2));
        std::fs::remove_dir_all(dir.join("eth0")).expect("rm");
        assert!(nic_index(&dir).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
