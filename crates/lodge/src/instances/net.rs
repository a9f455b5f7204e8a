//! The daemon's side of networking: the default network it set up at start,
//! the lease allocator, and what each instance verb does to its TAP.
//!
//! lodge-net does the kernel work; this file decides *when*:
//! - create: a lease is taken before the instance directory is prepared
//!   (the guest's config disk carries the address) and persisted in the
//!   record; a failed create gives it back and deletes the TAP;
//! - boot (create and start): the TAP is made just before the VMM starts;
//!   a boot only ever happens for an instance whose VMM is not running, so
//!   this never recreates a TAP under a live VM;
//! - stop (after the VMM exited) and delete: the TAP goes; delete also
//!   returns the lease;
//! - the reaper (daemon start, then every [`REAP_INTERVAL`]) deletes TAPs
//!   and leases whose instance has no record, whether or not any VM runs.
//!   Every instance with a record counts as live, so a VM that outlived a
//!   `kill -9` of the daemon keeps its TAP and address: the restarted
//!   daemon adopts both as they are.
//!
//! A create holds the [`DaemonNet::gate`] shared from taking its lease
//! until its record is in place, and the reaper holds it exclusively, so
//! the reaper never sees a lease whose record is about to appear.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use lodge_net::{Allocator, Lease, Limits, Network};
use tokio::sync::RwLock;

pub use super::store::NetworkRecord;
use super::store::{self, Metadata};

/// How often the daemon looks for leftovers of vanished instances.
pub const REAP_INTERVAL: Duration = Duration::from_secs(60);

/// The network name hypeman reports for its default network.
pub const DEFAULT_NETWORK_NAME: &str = "default";

/// The default network as this daemon set it up.
pub struct DaemonNet {
    pub network: Network,
    pub alloc: Allocator,
    /// See the module docs.
    pub(super) gate: RwLock<()>,
}

impl DaemonNet {
    /// Sets up (or converges) the default network and opens the leases.
    pub async fn setup(
        cfg: &lodge_net::NetConfig,
        leases: &Path,
    ) -> Result<DaemonNet, lodge_net::NetError> {
        let network = lodge_net::setup_default(cfg).await?;
        let alloc = Allocator::open(leases, network.subnet)?;
        Ok(DaemonNet {
            network,
            alloc,
            gate: RwLock::new(()),
        })
    }
}

/// What the instance asked for: hypeman's `network` on create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    /// `None`: not said (hypeman's default: attached when the daemon has a
    /// network); `Some(b)`: asked for explicitly.
    pub enabled: Option<bool>,
    pub limits: Limits,
}

/// Makes the instance's TAP (see the module docs); returns its name.
pub async fn tap_up(
    net: &DaemonNet,
    meta: &Metadata,
    rec: &NetworkRecord,
) -> Result<String, lodge_net::NetError> {
    let tap = lodge_net::create_tap(&net.network, &meta.id, rec.mac()?, rec.limits()?).await?;
    Ok(tap.to_string())
}

/// Ids that count as live for the reaper: every instance with a record,
/// and every create still being prepared.
pub fn live_ids(guests: &Path) -> std::io::Result<HashSet<String>> {
    let mut ids: HashSet<String> = store::list_ids(guests)?.into_iter().collect();
    match std::fs::read_dir(guests) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(".creating-"))
                {
                    ids.insert(id.to_string());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(ids)
}

/// What a reap removed.
#[derive(Debug, Default)]
pub struct Reaped {
    pub devices: Vec<String>,
    pub leases: Vec<Lease>,
}

/// Deletes TAPs/IFBs and leases of instances that have no record.
pub async fn reap(net: &DaemonNet, guests: &Path) -> Result<Reaped, lodge_net::NetError> {
    let _gate = net.gate.write().await;
    let live = live_ids(guests).map_err(|e| lodge_net::NetError::Io {
        op: format!("listing {}", guests.display()),
        source: e,
    })?;
    let devices = lodge_net::reap_orphans(live.iter()).await?;
    let mut leases = Vec::new();
    for lease in net.alloc.leases()? {
        if !live.contains(&lease.instance_id) {
            leases.extend(net.alloc.release(&lease.instance_id)?);
        }
    }
    Ok(Reaped { devices, leases })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn record_keeps_the_lease_and_canonical_limits() {
        let lease = Lease {
            instance_id: "abc".into(),
            ip: Ipv4Addr::new(10, 100, 0, 7),
            mac: lodge_net::MacAddr::for_ip(Ipv4Addr::new(10, 100, 0, 7)),
        };
        let limits = Limits {
            download: Some("125MB/s".parse().expect("rate")),
            upload: None,
        };
        let rec = NetworkRecord::new(&lease, limits);
        assert_eq!(rec.mac, "02:4c:0a:64:00:07");
        assert_eq!(rec.mac().expect("mac"), lease.mac);
        // Stored in bit-rate form, which parses back to the same rate.
        assert_eq!(rec.bandwidth_download.as_deref(), Some("1048576kbps"));
        assert_eq!(rec.limits().expect("limits"), limits);
        let json = serde_json::to_value(&rec).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"ip": "10.100.0.7", "mac": "02:4c:0a:64:00:07", "bandwidth_download": "1048576kbps"})
        );
    }

    #[test]
    fn creates_in_progress_count_as_live() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guests = dir.path();
        assert!(live_ids(&guests.join("missing")).expect("none").is_empty());
        std::fs::create_dir_all(guests.join("aaaaaaaaaaaaaaaaaaaaaaaa")).expect("mkdir");
        std::fs::write(guests.join("aaaaaaaaaaaaaaaaaaaaaaaa/metadata.json"), "{}").expect("rec");
        std::fs::create_dir_all(guests.join(".creating-bbbbbbbbbbbbbbbbbbbbbbbb")).expect("mkdir");
        std::fs::create_dir_all(guests.join(".deleting-cccccccccccccccccccccccc")).expect("mkdir");
        std::fs::create_dir_all(guests.join("dddddddddddddddddddddddd")).expect("no record");
        let mut ids: Vec<String> = live_ids(guests).expect("ids").into_iter().collect();
        ids.sort();
        assert_eq!(
            ids,
            ["aaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbb"]
        );
    }
}
