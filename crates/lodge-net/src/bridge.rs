//! The default network shared by all instances: bridge, forwarding, firewall.
//!
//! [`setup_default`] converges the host to the wanted state whatever a
//! previous daemon left (nothing, all of it, or a half of it after a crash),
//! so the daemon calls it at every start:
//! - the bridge is created only if missing, and a same-named link that is not
//!   a bridge is refused rather than taken over;
//! - the bridge carries exactly the gateway address (a stale address from an
//!   earlier `LODGE_SUBNET` is removed) and a fixed MAC (see
//!   [`Network::bridge_mac`]);
//! - `net.ipv4.ip_forward=1` is written to `/proc/sys` (per network
//!   namespace); teardown leaves it on, as other software may rely on it;
//! - the whole firewall lives in one table of lodge's own, `inet lodge`,
//!   loaded with a single `nft -f -` transaction that first makes sure the
//!   table exists, deletes it and defines it anew, so it is created or
//!   replaced atomically and never duplicated; no other table or chain on
//!   the host is read or changed, and [`teardown_default`] is exactly
//!   "delete that table and the bridge".
//!
//! The firewall (forward hook): guest→uplink from the subnet is allowed for
//! new and established flows, uplink→guest only for established/related
//! ones, guest→guest routed through the gateway is dropped (bridged
//! guest→guest frames never get this far: the TAP ports are isolated, see
//! [`crate::tap`]), and anything else in or out of the bridge is dropped.
//! The base chain's policy is accept so forwarding that has nothing to do
//! with lodge is left alone. Source NAT masquerades the subnet out of the
//! uplink. Another table's drop policy (e.g. Docker's FORWARD chain) still
//! applies on top, as nftables requires every base chain to accept.
//!
//! Validation that needs the host (uplink exists, subnet overlaps no route
//! other than lodge's own bridge route) runs before the first change, and a
//! bridge created by a call that then fails is removed again.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use crate::alloc::MacAddr;
use crate::config::host_resolvers;
use crate::config::{IfName, NetConfig, Subnet, MTU};
use crate::error::{netlink_errno, NetError};
use crate::{nl, tool};

/// The nftables family and name of lodge's table.
pub const NFT_TABLE: &str = "inet lodge";

/// The default network as set up: what instances and guests need to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub bridge: IfName,
    pub subnet: Subnet,
    pub uplink: IfName,
    /// Resolvers for the guests' `/etc/resolv.conf` (may be empty: see
    /// [`crate::config`]).
    pub dns: Vec<Ipv4Addr>,
}

impl Network {
    /// The guests' default gateway (the bridge's address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }

    pub fn prefix_len(&self) -> u8 {
        self.subnet.prefix_len()
    }

    pub fn mtu(&self) -> u32 {
        MTU
    }

    /// The bridge's (gateway's) fixed MAC, lodge's scheme applied to the
    /// gateway address. Set explicitly because a bridge with a kernel-chosen
    /// address takes the lowest MAC among its ports, so the guests' gateway
    /// MAC would change as TAPs come and go and their ARP caches go stale.
    pub fn bridge_mac(&self) -> MacAddr {
        MacAddr::for_ip(self.gateway())
    }
}

/// The full nft script [`setup_default`] loads (public for tests and for
/// showing what lodge installs).
pub fn nft_ruleset(net: &Network) -> String {
    let br = net.bridge.as_str();
    let up = net.uplink.as_str();
    let sn = net.subnet;
    format!(
        "table {NFT_TABLE} {{}}
delete table {NFT_TABLE}
table {NFT_TABLE} {{
	chain forward {{
		type filter hook forward priority filter; policy accept;
		iifname \"{br}\" oifname \"{br}\" drop comment \"guest to guest\"
		iifname \"{br}\" oifname \"{up}\" ip saddr {sn} ct state {{ new, established, related }} accept comment \"guest to outside\"
		iifname \"{up}\" oifname \"{br}\" ip daddr {sn} ct state {{ established, related }} accept comment \"replies to guests\"
		iifname \"{br}\" drop
		oifname \"{br}\" drop
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		oifname \"{up}\" ip saddr {sn} masquerade
	}}
}}
"
    )
}

/// Brings the default network to the wanted state (see the module docs).
pub async fn setup_default(cfg: &NetConfig) -> Result<Network, NetError> {
    let handle = nl::connect()?;
    let bridge_name = cfg.bridge.as_str();
    let existing = nl::link_by_name(&handle, bridge_name).await?;
    if let Some(link) = &existing {
        if link.kind != Some(InfoKind::Bridge) {
            return Err(NetError::NotABridge {
                name: bridge_name.to_string(),
            });
        }
    }

    let uplink = match &cfg.uplink {
        Some(name) => {
            if nl::link_by_name(&handle, name.as_str()).await?.is_none() {
                return Err(NetError::UplinkNotFound(name.to_string()));
            }
            name.clone()
        }
        None => {
            let link = nl::default_route_link(&handle)
                .await?
                .ok_or(NetError::NoUplink)?;
            IfName::new(&link.name)?
        }
    };

    check_overlap(&handle, cfg.subnet, existing.as_ref().map(|l| l.index)).await?;

    let net = Network {
        bridge: cfg.bridge.clone(),
        subnet: cfg.subnet,
        uplink,
        dns: cfg.dns.clone().unwrap_or_else(host_resolvers),
    };
    if net.dns.is_empty() {
        tracing::warn!(
            "the host has no resolver a guest can reach (only loopback ones); \
             guests get no DNS server unless LODGE_DNS is set"
        );
    }

    let created = existing.is_none();
    let index = match existing {
        Some(link) => link.index,
        None => {
            let add = handle
                .link()
                .add(
                    LinkBridge::new(bridge_name)
                        .mtu(MTU)
                        .address(net.bridge_mac().octets().to_vec())
                        .build(),
                )
                .execute()
                .await;
            match add {
                Ok(()) => {}
                // Another process (a second daemon start) won the race.
                Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(NetError::netlink(format!("create bridge {bridge_name}"), e)),
            }
            nl::link_by_name(&handle, bridge_name)
                .await?
                .ok_or_else(|| NetError::Io {
                    op: format!("create bridge {bridge_name}"),
                    source: std::io::Error::other("the new bridge vanished"),
                })?
                .index
        }
    };

    let result = configure(&handle, &net, index).await;
    if result.is_err() && created {
        // Nothing half-created: the caller gets the first error; a failure
        // to roll back is added to it rather than dropped.
        if let Err(undo) = nl::delete_link(&handle, bridge_name).await {
            return Err(NetError::Io {
                op: format!(
                    "{} (and removing the new bridge {bridge_name} failed: {undo})",
                    result.err().map(|e| e.to_string()).unwrap_or_default()
                ),
                source: std::io::Error::other("setup rolled back partially"),
            });
        }
    }
    result.map(|()| net)
}

async fn check_overlap(
    handle: &Handle,
    subnet: Subnet,
    own_bridge: Option<u32>,
) -> Result<(), NetError> {
    let routes = nl::ipv4_main_routes(handle).await?;
    for route in routes {
        if route.prefix == 0 || (own_bridge.is_some() && route.oif == own_bridge) {
            continue;
        }
        if subnet.overlaps(route.dst, route.prefix) {
            let dev = match route.oif {
                Some(i) => nl::all_links(handle)
                    .await?
                    .into_iter()
                    .find(|l| l.index == i)
                    .map(|l| l.name),
                None => None,
            };
            return Err(NetError::SubnetOverlap {
                subnet: subnet.to_string(),
                route: format!("{}/{}", route.dst, route.prefix),
                dev,
            });
        }
    }
    Ok(())
}

async fn configure(handle: &Handle, net: &Network, index: u32) -> Result<(), NetError> {
    let gateway = net.gateway();
    let prefix = net.prefix_len();
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink(format!("list addresses of {}", net.bridge), e))?;
    let mut have = false;
    for msg in addrs {
        let Some(ip) = ipv4_of(&msg) else { continue };
        if ip == gateway && msg.header.prefix_len == prefix {
            have = true;
            continue;
        }
        handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("remove stale {ip} from {}", net.bridge), e))?;
    }
    if !have {
        handle
            .address()
            .add(index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
            .map_err(|e| {
                NetError::netlink(format!("add {gateway}/{prefix} to {}", net.bridge), e)
            })?;
    }
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .address(net.bridge_mac().octets().to_vec())
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("set {} up", net.bridge), e))?;

    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")
        .map_err(|e| NetError::net_io("enable net.ipv4.ip_forward", e))?;

    tool::run("nft", &["-f", "-"], Some(&nft_ruleset(net))).await
}

fn ipv4_of(msg: &AddressMessage) -> Option<Ipv4Addr> {
    let mut addr = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => return Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => addr = Some(*a),
            _ => {}
        }
    }
    addr
}

/// Removes lodge's default network: the `inet lodge` table and the bridge
/// (only if it is a bridge). TAPs are left to [`crate::reap_orphans`] /
/// [`crate::delete_tap`], so a teardown never cuts a running VM's device out
/// from under QEMU. Idempotent.
pub async fn teardown_default(bridge: &IfName) -> Result<(), NetError> {
    tool::run(
        "nft",
        &["-f", "-"],
        Some(&format!(
            "table {NFT_TABLE} {{}}\ndelete table {NFT_TABLE}\n"
        )),
    )
    .await?;
    let handle = nl::connect()?;
    if let Some(link) = nl::link_by_name(&handle, bridge.as_str()).await? {
        if link.kind != Some(InfoKind::Bridge) {
            return Err(NetError::NotABridge {
                name: bridge.to_string(),
            });
        }
        nl::delete_link(&handle, bridge.as_str()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_text() {
        let net = Network {
            bridge: IfName::new("lodge0").expect("name"),
            subnet: "10.100.0.0/16".parse().expect("subnet"),
            uplink: IfName::new("eth0").expect("name"),
            dns: vec![],
        };
        let rules = nft_ruleset(&net);
        let mut lines = rules.lines();
        assert_eq!(lines.next(), Some("table inet lodge {}"));
        assert_eq!(lines.next(), Some("delete table inet lodge"));
        assert!(rules.contains("oifname \"eth0\" ip saddr 10.100.0.0/16 masquerade"));
        assert!(rules.contains("iifname \"lodge0\" oifname \"lodge0\" drop"));
        assert!(rules.contains(
            "iifname \"eth0\" oifname \"lodge0\" ip daddr 10.100.0.0/16 ct state { established, related } accept"
        ));
        assert_eq!(rules.matches("table inet lodge").count(), 3);
    }
}
