//! Per-instance devices: a TAP on the bridge, and an IFB when upload is
//! limited. Everything an instance owns in the kernel is named from its id,
//! which is what makes leaks impossible to miss.
//!
//! Names: `lt-<first 10 chars of the id>` for the TAP, `li-<same>` for the
//! IFB (13 bytes, within the kernel's 15). [`reap_orphans`] lists links by
//! netlink and deletes every lodge-prefixed one whose instance is not live;
//! it needs no running VM and no state file (hypeman skipped its orphan
//! cleanup when no VM ran, #34, and leaked TAPs until the bridge's 1024-port
//! limit, #222).
//!
//! The bridge port is configured so a guest can talk only to the host:
//! - `isolated on`: isolated ports forward only to non-isolated ones (the
//!   bridge itself), never to each other;
//! - `learning off`, `flood off` (unknown unicast), `mcast_flood off`: hypeman
//!   #476 shows isolated ports still flood unknown-unicast frames to other
//!   guests; with no flooding and no learning nothing reaches a port unless
//!   the bridge knows the destination MAC is there. (The kernels tested here
//!   already keep unknown unicast off other isolated ports; flood off is what
//!   makes that hold regardless of kernel, and learning off stops a guest
//!   from claiming another guest's MAC by sending from it.) Broadcast flooding stays
//!   on: the host's ARP requests for the guest's address are broadcasts, and
//!   isolation already keeps guests' broadcasts from each other;
//! - a static FDB entry (`NUD_NOARP`, on the port, `master`) for the guest's
//!   MAC, which is what delivers the host's unicast frames to the guest now
//!   that the bridge learns nothing. (Not `permanent`: that would make the
//!   MAC local to the bridge itself.)
//!
//! Bandwidth (traffic control, via `tc`): download (host→guest) is the
//! TAP's egress, shaped by an HTB class on its root. Upload (guest→host) is
//! the TAP's ingress; the `police` action is not available on every kernel
//! (not on this project's CI kernel), so ingress traffic is redirected
//! (`u32` match-all + `mirred`) to the instance's IFB and shaped by an HTB
//! class there, which also queues instead of dropping. All of it lives on
//! the two devices, so deleting them removes every qdisc, class and filter
//! (hypeman leaked classes on a shared device, #289/#296).
//!
//! A TAP that already exists under the instance's name is a leftover of a
//! failed or crashed create and is recreated; callers must therefore not
//! call [`create_tap`] for an instance whose VM is running (the daemon adopts
//! those as they are). Any failure after the TAP exists deletes what this
//! call created.

use std::collections::HashSet;

use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::{Handle, LinkBridgePort, LinkIfb, LinkUnspec};

use crate::alloc::MacAddr;
use crate::bandwidth::Bandwidth;
use crate::bridge::Network;
use crate::config::{IfName, MTU};
use crate::error::NetError;
use crate::{nl, tool, tun};

/// Prefix of every instance TAP.
pub const TAP_PREFIX: &str = "lt-";
/// Prefix of every instance IFB (upload shaping).
pub const IFB_PREFIX: &str = "li-";
/// How many characters of the instance id go into a device name.
pub const ID_CHARS: usize = 10;

/// Optional per-instance rate limits, as hypeman's `bandwidth_download`
/// (host→guest) and `bandwidth_upload` (guest→host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub download: Option<Bandwidth>,
    pub upload: Option<Bandwidth>,
}

fn derived(prefix: &str, instance_id: &str) -> Result<IfName, NetError> {
    if instance_id.is_empty()
        || !instance_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(NetError::InvalidInstanceId(instance_id.to_string()));
    }
    let short: String = instance_id.chars().take(ID_CHARS).collect();
    IfName::new(&format!("{prefix}{short}"))
}

/// The TAP name of an instance: `lt-` + the first 10 characters of its id.
pub fn tap_name(instance_id: &str) -> Result<IfName, NetError> {
    derived(TAP_PREFIX, instance_id)
}

/// The IFB name of an instance: `li-` + the first 10 characters of its id.
pub fn ifb_name(instance_id: &str) -> Result<IfName, NetError> {
    derived(IFB_PREFIX, instance_id)
}

/// QEMU's arguments for the instance's NIC on its TAP (no vhost: the TAP is
/// opened by name, `/dev/vhost-net` may be absent).
pub fn qemu_args(tap: &IfName, mac: MacAddr) -> Vec<String> {
    vec![
        "-netdev".to_string(),
        format!("tap,id=net0,ifname={tap},script=no,downscript=no,vhost=off"),
        "-device".to_string(),
        format!("virtio-net-pci,netdev=net0,mac={mac}"),
    ]
}

/// Creates the instance's TAP on the default network's bridge, isolated,
/// with the guest's MAC in the FDB and the given limits; returns its name.
pub async fn create_tap(
    net: &Network,
    instance_id: &str,
    mac: MacAddr,
    limits: Limits,
) -> Result<IfName, NetError> {
    let tap = tap_name(instance_id)?;
    let ifb = ifb_name(instance_id)?;
    let handle = nl::connect()?;
    let bridge = nl::link_by_name(&handle, net.bridge.as_str())
        .await?
        .filter(|l| l.kind == Some(InfoKind::Bridge))
        .ok_or_else(|| NetError::BridgeMissing(net.bridge.to_string()))?;

    // Leftovers of an earlier, failed attempt for this same instance.
    nl::delete_link(&handle, ifb.as_str()).await?;
    nl::delete_link(&handle, tap.as_str()).await?;

    tun::create_persistent_tap(&tap)
        .map_err(|e| NetError::net_io(format!("create TAP {tap}"), e))?;
    match configure(&handle, bridge.index, &tap, &ifb, mac, limits).await {
        Ok(()) => Ok(tap),
        Err(err) => {
            let undo_ifb = nl::delete_link(&handle, ifb.as_str()).await;
            let undo_tap = nl::delete_link(&handle, tap.as_str()).await;
            match undo_ifb.and(undo_tap) {
                Ok(_) => Err(err),
                Err(undo) => Err(NetError::Io {
                    op: format!("{err} (and removing {tap} again failed: {undo})"),
                    source: std::io::Error::other("partial rollback"),
                }),
            }
        }
    }
}

async fn configure(
    handle: &Handle,
    bridge_index: u32,
    tap: &IfName,
    ifb: &IfName,
    mac: MacAddr,
    limits: Limits,
) -> Result<(), NetError> {
    let index = nl::link_by_name(handle, tap.as_str())
        .await?
        .ok_or_else(|| NetError::Io {
            op: format!("create TAP {tap}"),
            source: std::io::Error::other("the new TAP vanished"),
        })?
        .index;
    attach_port(handle, bridge_index, index, tap, mac).await?;

    if let Some(rate) = limits.download {
        shape_egress(tap, rate).await?;
    }
    if let Some(rate) = limits.upload {
        handle
            .link()
            .add(LinkIfb::new(ifb.as_str()).mtu(MTU).build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("create IFB {ifb}"), e))?;
        let ifb_index = nl::link_by_name(handle, ifb.as_str())
            .await?
            .ok_or_else(|| NetError::Io {
                op: format!("create IFB {ifb}"),
                source: std::io::Error::other("the new IFB vanished"),
            })?
            .index;
        set_up(handle, ifb_index, ifb).await?;
        shape_egress(ifb, rate).await?;
        let (t, i) = (tap.as_str(), ifb.as_str());
        tool::run(
            "tc",
            &["qdisc", "add", "dev", t, "handle", "ffff:", "ingress"],
            None,
        )
        .await?;
        tool::run(
            "tc",
            &[
                "filter", "add", "dev", t, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", i,
            ],
            None,
        )
        .await?;
    }
    Ok(())
}

/// Puts an existing link on the default network's bridge as an isolated
/// port (see the module docs) with a static FDB entry for `mac`, and sets it
/// up. [`create_tap`] does this for TAPs; it is public so tests (and any
/// future non-TAP guest link) get exactly the same port setup.
pub async fn attach_to_bridge(net: &Network, port: &IfName, mac: MacAddr) -> Result<(), NetError> {
    let handle = nl::connect()?;
    let bridge = nl::link_by_name(&handle, net.bridge.as_str())
        .await?
        .filter(|l| l.kind == Some(InfoKind::Bridge))
        .ok_or_else(|| NetError::BridgeMissing(net.bridge.to_string()))?;
    let link = nl::link_by_name(&handle, port.as_str())
        .await?
        .ok_or_else(|| NetError::Io {
            op: format!("attach {port} to {}", net.bridge),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })?;
    attach_port(&handle, bridge.index, link.index, port, mac).await
}

async fn attach_port(
    handle: &Handle,
    bridge_index: u32,
    index: u32,
    port: &IfName,
    mac: MacAddr,
) -> Result<(), NetError> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge_index)
                .mtu(MTU)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("attach {port} to the bridge"), e))?;
    handle
        .link()
        .set_port(
            LinkBridgePort::new(index)
                .isolated(true)
                .learning(false)
                .flood(false)
                .mcast_flood(false)
                .bcast_flood(true)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("set bridge port flags of {port}"), e))?;
    handle
        .neighbours()
        .add_bridge(index, &mac.octets())
        .state(NeighbourState::Noarp)
        .flags(NeighbourFlags::Controller)
        .replace()
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("add FDB entry {mac} on {port}"), e))?;
    set_up(handle, index, port).await
}

async fn set_up(handle: &Handle, index: u32, name: &IfName) -> Result<(), NetError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("set {name} up"), e))
}

/// One HTB class holding all of `dev`'s egress at `rate`.
async fn shape_egress(dev: &IfName, rate: Bandwidth) -> Result<(), NetError> {
    let d = dev.as_str();
    let r = rate.tc_rate();
    tool::run(
        "tc",
        &[
            "qdisc", "replace", "dev", d, "root", "handle", "1:", "htb", "default", "1",
        ],
        None,
    )
    .await?;
    tool::run(
        "tc",
        &[
            "class", "replace", "dev", d, "parent", "1:", "classid", "1:1", "htb", "rate", &r,
            "ceil", &r,
        ],
        None,
    )
    .await
}

/// Whether the instance's TAP exists (a restarted daemon adopts a running
/// VM's TAP as it is instead of calling [`create_tap`]).
pub async fn tap_exists(instance_id: &str) -> Result<bool, NetError> {
    let tap = tap_name(instance_id)?;
    let handle = nl::connect()?;
    Ok(nl::link_by_name(&handle, tap.as_str()).await?.is_some())
}

/// Deletes the instance's TAP and IFB (and with them all their traffic
/// control state). Devices already gone are fine; returns whether anything
/// was deleted.
pub async fn delete_tap(instance_id: &str) -> Result<bool, NetError> {
    let tap = tap_name(instance_id)?;
    let ifb = ifb_name(instance_id)?;
    let handle = nl::connect()?;
    let a = nl::delete_link(&handle, ifb.as_str()).await?;
    let b = nl::delete_link(&handle, tap.as_str()).await?;
    Ok(a || b)
}

/// Deletes every lodge TAP/IFB whose instance is not in `live_ids`; returns
/// the deleted device names. Ids that cannot name a device are ignored.
pub async fn reap_orphans<I, S>(live_ids: I) -> Result<Vec<String>, NetError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut keep = HashSet::new();
    for id in live_ids {
        if let (Ok(t), Ok(i)) = (tap_name(id.as_ref()), ifb_name(id.as_ref())) {
            keep.insert(t.to_string());
            keep.insert(i.to_string());
        }
    }
    let handle = nl::connect()?;
    let mut reaped = Vec::new();
    for link in nl::all_links(&handle).await? {
        let ours = link.name.starts_with(TAP_PREFIX) || link.name.starts_with(IFB_PREFIX);
        if ours && !keep.contains(&link.name) && nl::delete_link(&handle, &link.name).await? {
            reaped.push(link.name);
        }
    }
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = tap_name("abcdefghijklmnopqrstuvwx").expect("tap");
        assert_eq!(t.as_str(), "lt-abcdefghij");
        assert_eq!(ifb_name("abc").expect("ifb").as_str(), "li-abc");
        for bad in ["", "a/b", "a b", "a:b", "é"] {
            assert!(
                matches!(tap_name(bad), Err(NetError::InvalidInstanceId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn qemu() {
        let mac: MacAddr = "02:4c:0a:64:00:02".parse().expect("mac");
        let tap = tap_name("abc123").expect("tap");
        assert_eq!(
            qemu_args(&tap, mac),
            vec![
                "-netdev",
                "tap,id=net0,ifname=lt-abc123,script=no,downscript=no,vhost=off",
                "-device",
                "virtio-net-pci,netdev=net0,mac=02:4c:0a:64:00:02"
            ]
        );
    }
}
