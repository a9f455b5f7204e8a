//! Admission: the limits on vCPUs and memory (host capacity × the
//! oversubscription ratios `LODGE_OVERSUB_CPU`, `_MEMORY`, `_DISK`,
//! `_NETWORK`, `_DISK_IO`, hypeman's defaults 4, 1, 1, 2, 2) and the book of
//! boots in flight.
//!
//! Each create or start takes a [`Reservation`] in the same critical
//! section as its check, so a burst of concurrent creates cannot all see
//! the same free room (hypeman #187); the reservation is dropped once the
//! boot is over, by which time the VMM is counted from its own state (an
//! instance both reserved and running is counted once). What "running"
//! holds is the caller's to say (`resources`); this file knows no manager.

use std::collections::HashMap;
use std::sync::Mutex;

use super::error::{Error, Result};
use super::store::Metadata;

/// Oversubscription ratios, from the environment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Oversub {
    pub cpu: f64,
    pub memory: f64,
    pub disk: f64,
    pub network: f64,
    pub disk_io: f64,
}

impl Default for Oversub {
    /// hypeman's defaults.
    fn default() -> Self {
        Oversub {
            cpu: 4.0,
            memory: 1.0,
            disk: 1.0,
            network: 2.0,
            disk_io: 2.0,
        }
    }
}

impl Oversub {
    /// `LODGE_OVERSUB_{CPU,MEMORY,DISK,NETWORK,DISK_IO}` over the defaults;
    /// a ratio must be a positive number.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Oversub, String> {
        let mut o = Oversub::default();
        for (var, slot) in [
            ("LODGE_OVERSUB_CPU", &mut o.cpu),
            ("LODGE_OVERSUB_MEMORY", &mut o.memory),
            ("LODGE_OVERSUB_DISK", &mut o.disk),
            ("LODGE_OVERSUB_NETWORK", &mut o.network),
            ("LODGE_OVERSUB_DISK_IO", &mut o.disk_io),
        ] {
            if let Some(raw) = get(var).filter(|v| !v.trim().is_empty()) {
                match raw.trim().parse::<f64>() {
                    Ok(r) if r.is_finite() && r > 0.0 => *slot = r,
                    _ => return Err(format!("{var}={raw:?}: must be a positive number")),
                }
            }
        }
        Ok(o)
    }
}

/// What one instance holds, for admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub vcpus: u64,
    pub memory_bytes: u64,
}

impl Demand {
    pub fn of(meta: &Metadata) -> Demand {
        Demand {
            vcpus: u64::from(meta.vcpus),
            memory_bytes: meta.memory_bytes,
        }
    }
}

/// The admission book: limits and the boots in flight.
#[derive(Debug)]
pub struct Admission {
    pub oversub: Oversub,
    /// Host vCPUs and memory, measured once at start.
    pub cpus: u64,
    pub memory_bytes: u64,
    /// Network capacity in bytes per second and how it was found.
    pub network_bps: (u64, &'static str),
    in_flight: Mutex<HashMap<String, Demand>>,
}

/// Room held for an instance being booted; released when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    book: &'a Admission,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.book
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// 10 Gbit/s in bytes per second: the network capacity when none is
/// configured (`LODGE_NETWORK_CAPACITY`).
pub const DEFAULT_NETWORK_BPS: u64 = 10_000_000_000 / 8;

impl Admission {
    /// Limits from the environment and the host.
    pub fn from_env() -> Result<Admission, String> {
        let oversub = Oversub::from_lookup(|k| std::env::var(k).ok())?;
        let network_bps = match std::env::var("LODGE_NETWORK_CAPACITY").ok() {
            Some(raw) if !raw.trim().is_empty() => {
                let b: lodge_net::Bandwidth = raw
                    .trim()
                    .parse()
                    .map_err(|e| format!("LODGE_NETWORK_CAPACITY={raw:?}: {e}"))?;
                (b.bits_per_sec() / 8, "configured")
            }
            _ => (DEFAULT_NETWORK_BPS, "default"),
        };
        Ok(Admission {
            oversub,
            cpus: host_cpus(),
            memory_bytes: host_memory().unwrap_or(0),
            network_bps,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    pub fn cpu_limit(&self) -> u64 {
        limit(self.cpus, self.oversub.cpu)
    }

    pub fn memory_limit(&self) -> u64 {
        limit(self.memory_bytes, self.oversub.memory)
    }

    /// Reserves `want` for instance `id` if, with everything `running`
    /// holds and every boot in flight, it fits the limits.
    pub fn reserve(
        &self,
        id: &str,
        want: Demand,
        running: &HashMap<String, Demand>,
    ) -> Result<Reservation<'_>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let held = running
            .iter()
            .filter(|(k, _)| !in_flight.contains_key(*k))
            .map(|(_, d)| *d)
            .chain(in_flight.iter().filter(|(k, _)| *k != id).map(|(_, d)| *d))
            .fold(Demand::default(), |a, d| Demand {
                vcpus: a.vcpus + d.vcpus,
                memory_bytes: a.memory_bytes + d.memory_bytes,
            });
        check("cpu", "vCPUs", want.vcpus, held.vcpus, self.cpu_limit())?;
        check(
            "memory",
            "bytes of memory",
            want.memory_bytes,
            held.memory_bytes,
            self.memory_limit(),
        )?;
        in_flight.insert(id.to_string(), want);
        Ok(Reservation {
            book: self,
            id: id.to_string(),
        })
    }
}

fn check(resource: &'static str, unit: &str, want: u64, held: u64, limit: u64) -> Result<()> {
    if held.saturating_add(want) > limit {
        return Err(Error::InsufficientResources {
            resource,
            message: format!(
                "{want} {unit} asked, {} of the effective limit of {limit} free ({held} allocated)",
                limit.saturating_sub(held)
            ),
        });
    }
    Ok(())
}

pub fn limit(capacity: u64, ratio: f64) -> u64 {
    (capacity as f64 * ratio).floor() as u64
}

fn host_cpus() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn host_memory() -> Option<u64> {
    meminfo_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(cpus: u64, memory: u64) -> Admission {
        Admission {
            oversub: Oversub {
                cpu: 1.0,
                ..Oversub::default()
            },
            cpus,
            memory_bytes: memory,
            network_bps: (DEFAULT_NETWORK_BPS, "default"),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn d(vcpus: u64, memory_bytes: u64) -> Demand {
        Demand {
            vcpus,
            memory_bytes,
        }
    }

    #[test]
    fn ratios_come_from_the_environment() {
        assert_eq!(Oversub::from_lookup(|_| None), Ok(Oversub::default()));
        let o = Oversub::from_lookup(|k| (k == "LODGE_OVERSUB_CPU").then(|| "1.5".into()))
            .expect("valid");
        assert_eq!(o.cpu, 1.5);
        for bad in ["0", "-1", "x", "inf", "NaN"] {
            let e = Oversub::from_lookup(|k| (k == "LODGE_OVERSUB_MEMORY").then(|| bad.into()));
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn in_flight_boots_count_until_released() {
        let b = book(2, 1 << 30);
        let running = HashMap::new();
        let r1 = b.reserve("a", d(1, 256 << 20), &running).expect("fits");
        let r2 = b.reserve("b", d(1, 256 << 20), &running).expect("fits");
        let e = b.reserve("c", d(1, 256 << 20), &running).expect_err("full");
        assert!(
            matches!(
                e,
                Error::InsufficientResources {
                    resource: "cpu",
                    ..
                }
            ),
            "{e}"
        );
        drop(r1);
        let _r3 = b
            .reserve("c", d(1, 256 << 20), &running)
            .expect("room again");
        drop(r2);
    }

    #[test]
    fn a_running_instance_being_booted_counts_once() {
        let b = book(2, 1 << 30);
        let running = HashMap::from([("a".to_string(), d(1, 0))]);
        let _ra = b.reserve("a", d(1, 0), &running).expect("fits");
        let _rb = b.reserve("b", d(1, 0), &running).expect("a counted once");
    }

    #[test]
    fn memory_is_admitted_too() {
        let b = book(8, 1 << 30);
        let running = HashMap::from([("x".to_string(), d(1, 768 << 20))]);
        let e = b.reserve("y", d(1, 512 << 20), &running).expect_err("over");
        assert!(
            matches!(
                e,
                Error::InsufficientResources {
                    resource: "memory",
                    ..
                }
            ),
            "{e}"
        );
        b.reserve("y", d(1, 256 << 20), &running)
            .expect("exactly fits");
    }

    #[test]
    fn meminfo_is_read_in_kib() {
        assert_eq!(
            meminfo_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24576000 * 1024)
        );
        assert_eq!(meminfo_total("nothing"), None);
    }
}
