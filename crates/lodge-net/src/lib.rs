//! lodge's host-side networking, as a library the daemon drives.
//!
//! The model is hypeman's default network, with its known leaks and holes
//! closed: one Linux bridge (`lodge0`) whose address is the subnet's first
//! host, IPv4 forwarding on, and one nftables table of lodge's own
//! (`inet lodge`) doing NAT and the guest firewall. Each instance gets a
//! persistent TAP on that bridge, isolated from the other ports with learning
//! and flooding off and a static FDB entry for the guest's MAC, and an IP/MAC
//! lease from a directory of lock-free lease files.
//!
//! Why it is split this way:
//! - [`config`] is pure: parsing and validating what the operator typed
//!   (`LODGE_BRIDGE`, `LODGE_SUBNET`, `LODGE_UPLINK`, `LODGE_DNS`) before
//!   anything on the host is touched, so bad input creates nothing.
//! - [`bridge`] owns everything shared by all instances and is idempotent, so
//!   the daemon can call [`setup_default`] at every start without first
//!   asking what a previous run left behind.
//! - [`tap`] owns everything per instance; every object it creates has a name
//!   derived from the instance id with a lodge prefix, so a daemon that died
//!   mid-way (or a host reboot into a new daemon) can recognise and reap
//!   leftovers from the kernel's own listing, with no state file to trust.
//! - [`alloc`] persists leases as files so that concurrent creates, even from
//!   two processes, never hand out one address twice.
//! - [`bandwidth`] parses hypeman's size strings into a typed rate.
//!
//! How the daemon drives it:
//! - start: `NetConfig::from_env()?` → `setup_default(&cfg).await?` (keep
//!   the returned [`Network`]) → `Allocator::open(<data>/network/leases,
//!   net.subnet)?` → `reap_orphans(live_ids).await?` (and again
//!   periodically); running VMs' TAPs are adopted as they are;
//! - create: `alloc.allocate(id)?` (persist `ip`/`mac` with the instance) →
//!   `create_tap(&net, id, lease.mac, limits).await?` → QEMU gets
//!   [`qemu_args`]; the guest gets `ip/prefix_len`, `gateway`, `mtu`, `dns`;
//!   a failed create calls `delete_tap(id)` and `alloc.release(id)`;
//! - stop: `delete_tap(id).await?` (the lease stays with the instance);
//!   start again: `create_tap` with the same lease;
//! - delete: `delete_tap(id).await?` then `alloc.release(id)?`.
//!
//! Links, addresses, routes and FDB entries go through netlink (`rtnetlink`);
//! only the firewall (`nft -f -`, one atomic transaction) and traffic control
//! (`tc`) are driven through their command-line tools, whose input languages
//! are the stable interface for those subsystems.

pub mod alloc;
pub mod bandwidth;
pub mod bridge;
pub mod config;
mod error;
mod nl;
pub mod tap;
mod tool;
mod tun;

pub use alloc::{Allocator, Lease, MacAddr};
pub use bandwidth::Bandwidth;
pub use bridge::{nft_ruleset, setup_default, teardown_default, Network};
pub use config::{IfName, NetConfig, Subnet};
pub use error::NetError;
pub use tap::{
    attach_to_bridge, create_tap, delete_tap, ifb_name, qemu_args, reap_orphans, tap_exists,
    tap_name, Limits,
};

pub use config::MTU;
