//! The stats verb: what a running VM costs the host right now, as hypeman's
//! `InstanceStats`.
//!
//! Everything is read from the host, never asked of the guest (which is
//! untrusted and may be busy): CPU time and memory of the VMM process from
//! `/proc/<pid>/stat` and `/proc/<pid>/statm` (the pid the monitor recorded,
//! checked against its start time so a reused pid is never read), network
//! bytes from the instance's TAP counters in `/sys/class/net`. The TAP's
//! counters are the host's view, so they are swapped: what the TAP sends
//! the guest receives. The parsers are pure functions of the file text.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::manager::Manager;
use super::observe::observe;
use super::state::{self, State};
use super::store;

/// hypeman's `InstanceStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceStats {
    pub instance_id: String,
    pub instance_name: String,
    /// CPU time the VMM process has used (user + system), in seconds.
    pub cpu_seconds: f64,
    /// Resident memory of the VMM process.
    pub memory_rss_bytes: u64,
    /// Virtual memory of the VMM process.
    pub memory_vms_bytes: u64,
    /// Bytes the guest received (the TAP's transmit counter); 0 without a network.
    pub network_rx_bytes: u64,
    /// Bytes the guest sent (the TAP's receive counter); 0 without a network.
    pub network_tx_bytes: u64,
    pub allocated_vcpus: u32,
    pub allocated_memory_bytes: u64,
    /// RSS / allocated memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_utilization_ratio: Option<f64>,
}

/// CPU and memory of one process, from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub vms_bytes: u64,
}

/// User + system CPU ticks (fields 14 and 15) from `/proc/PID/stat` text.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold anything: count from
    // its closing parenthesis, where field 3 (state) starts.
    let rest = stat.rsplit_once(") ")?.1;
    let mut fields = rest.split_ascii_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Virtual and resident size in pages (fields 1 and 2) from
/// `/proc/PID/statm` text.
pub fn statm_pages(statm: &str) -> Option<(u64, u64)> {
    let mut fields = statm.split_ascii_whitespace();
    let size = fields.next()?.parse().ok()?;
    let resident = fields.next()?.parse().ok()?;
    Some((size, resident))
}

fn proc_usage(pid: u32) -> std::io::Result<ProcUsage> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/{what} does not parse"),
        )
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| bad("stat"))?;
    let (size, resident) = statm_pages(&statm).ok_or_else(|| bad("statm"))?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let page = rustix::param::page_size() as u64;
    Ok(ProcUsage {
        cpu_seconds: ticks as f64 / hz as f64,
        rss_bytes: resident * page,
        vms_bytes: size * page,
    })
}

/// One counter of a network interface; a missing interface counts 0.
fn if_counter(ifname: &str, counter: &str) -> u64 {
    let path = Path::new("/sys/class/net")
        .join(ifname)
        .join("statistics")
        .join(counter);
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().unwrap_or(0),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("reading {}: {e}", path.display());
            }
            0
        }
    }
}

impl Manager {
    /// Resource use of a VM whose VMM runs (Initializing, Running or
    /// Paused); any other state is refused.
    pub async fn stats(&self, key: &str) -> Result<InstanceStats> {
        let id = self.resolve(key)?;
        let paths = self.paths(&id);
        let meta = store::load(&paths).map_err(|_| Error::NotFound(key.to_string()))?;
        let observed = observe(&paths, &meta);
        let state = state::derive(&observed);
        let wrong = || Error::WrongState {
            id: id.clone(),
            state,
            action: "stats",
            needs: "running",
        };
        if !matches!(state, State::Running | State::Initializing | State::Paused) {
            return Err(wrong());
        }
        let logs = paths.logs();
        let info = lodge_monitor::read_monitor_info(&logs)
            .map_err(super::error::io("reading the monitor record"))?
            .ok_or_else(wrong)?;
        // The recorded pid is read only while it is still the same process.
        let same = match info.child_start_ticks {
            Some(ticks) => {
                lodge_monitor::process_start_ticks(info.child_pid)
                    .map_err(super::error::io("inspecting the VMM process"))?
                    == Some(ticks)
            }
            None => true,
        };
        if !same {
            return Err(wrong());
        }
        let usage =
            proc_usage(info.child_pid).map_err(super::error::io("reading the VMM's usage"))?;
        let (rx, tx) = match &meta.network {
            Some(_) => match lodge_net::tap_name(&meta.id) {
                Ok(tap) => {
                    let tap = tap.to_string();
                    (if_counter(&tap, "tx_bytes"), if_counter(&tap, "rx_bytes"))
                }
                Err(e) => {
                    tracing::warn!("naming the TAP of {}: {e}", meta.id);
                    (0, 0)
                }
            },
            None => (0, 0),
        };
        let allocated = meta.memory_bytes;
        Ok(InstanceStats {
            instance_id: meta.id.clone(),
            instance_name: meta.name.clone(),
            cpu_seconds: usage.cpu_seconds,
            memory_rss_bytes: usage.rss_bytes,
            memory_vms_bytes: usage.vms_bytes,
            network_rx_bytes: rx,
            network_tx_bytes: tx,
            allocated_vcpus: meta.vcpus,
            allocated_memory_bytes: allocated,
            memory_utilization_ratio: (allocated > 0)
                .then(|| usage.rss_bytes as f64 / allocated as f64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_past_a_hostile_command_name() {
        let stat = "4242 (qemu) x) (y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 12345 1000 200";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("4242 (qemu) S 1"), None);
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn statm_gives_virtual_and_resident_pages() {
        assert_eq!(statm_pages("1000 200 30 4 0 50 0\n"), Some((1000, 200)));
        assert_eq!(statm_pages("1000"), None);
    }

    #[test]
    fn interface_counters_are_read_and_a_missing_one_is_zero() {
        // Loopback always exists; its counters parse (whatever they hold).
        let lo = std::fs::read_to_string("/sys/class/net/lo/statistics/rx_bytes")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(before) = lo {
            assert!(if_counter("lo", "rx_bytes") >= before);
        }
        assert_eq!(if_counter("no-such-if0", "rx_bytes"), 0);
    }

    #[test]
    fn this_process_can_be_measured() {
        let u = proc_usage(std::process::id()).expect("own /proc");
        assert!(u.rss_bytes > 0 && u.vms_bytes >= u.rss_bytes, "{u:?}");
    }
}
