//! Memory reclaim (hypeman's `POST /resources/memory/reclaim`): inflate the
//! balloons of running guests so the host gets back memory they hold but
//! do not need, for a while (the hold), then give it back.
//!
//! The plan is a pure function ([`plan`]) of what each guest has now (the
//! balloon's `actual`) and its protected floor: a guest is never asked to
//! go below a quarter of its memory or 128 MiB, whichever is more; the
//! request is spread over the guests in proportion to what each can give
//! above its floor, in whole MiB. Applying asks each balloon for its target
//! and waits (bounded) while the guests inflate, so `applied_reclaim_bytes`
//! is what the guests really gave, not what was asked. The devices have
//! deflate-on-OOM, so a guest that needs its memory back takes it.
//!
//! A reclaim with a hold (default 5 minutes) gives the memory back when the
//! hold ends: each guest's balloon is asked to deflate to its full size,
//! unless a later reclaim has replaced the hold. `reclaim_bytes: 0`
//! releases a hold at once. The hold lives in the daemon's memory (one
//! daemon per host): a daemon restart forgets it and leaves the balloons
//! as they are until the next reclaim.
//!
//! The balloon's `actual` is what the guest says it has given (the guest
//! writes it), so it is clamped to the VM's size and only ever reported:
//! the host's own measure is the VMM's resident memory (`stats`). A guest
//! that lies gets a wrong report, never more memory.
//!
//! Only VMs created with a balloon can give memory (records from before
//! it lack the device, which cannot be added to a running VM or to a saved
//! state); they are listed with status `unsupported`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lodge_hypervisor::{Backend, HypervisorKind, VmConfig};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::manager::Manager;
use super::observe::observe;
use super::state::{self, State};

const MIB: u64 = 1 << 20;
/// The smallest floor: below this a Linux guest thrashes.
const MIN_FLOOR: u64 = 128 * MIB;
/// How long a reclaim waits for guests to inflate their balloons.
const SETTLE: Duration = Duration::from_secs(25);
/// A guest whose balloon has not moved for this long is done.
const STALL: Duration = Duration::from_secs(6);

/// The hold now in force: a reclaim bumps it, and a hold's release only
/// acts while it is still the latest.
static HOLD: AtomicU64 = AtomicU64::new(0);

/// What to reclaim.
#[derive(Debug, Clone)]
pub struct ReclaimRequest {
    pub reclaim_bytes: u64,
    pub dry_run: bool,
    pub hold_for: Duration,
    pub reason: Option<String>,
}

/// hypeman's `MemoryReclaimAction`: one VM's step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemoryReclaimAction {
    pub instance_id: String,
    pub instance_name: String,
    pub hypervisor: String,
    /// The VM's memory size.
    pub assigned_memory_bytes: u64,
    /// What the guest is never asked to go below.
    pub protected_floor_bytes: u64,
    /// What the guest had before this reclaim (the balloon's `actual`).
    pub previous_target_guest_memory_bytes: u64,
    /// What the plan asked the guest to go down to.
    pub planned_target_guest_memory_bytes: u64,
    /// The balloon's target once this reclaim is done (the previous one
    /// for a dry run or a failure).
    pub target_guest_memory_bytes: u64,
    /// What the guest gave (before minus after).
    pub applied_reclaim_bytes: u64,
    /// planned (dry run), applied, partial (the guest gave less than asked
    /// in time), unchanged (nothing asked of it), unsupported or error.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// hypeman's `MemoryReclaimResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemoryReclaimResponse {
    pub actions: Vec<MemoryReclaimAction>,
    pub requested_reclaim_bytes: u64,
    pub planned_reclaim_bytes: u64,
    pub applied_reclaim_bytes: u64,
    /// `MemAvailable` of the host after the reclaim.
    pub host_available_bytes: u64,
    /// `pressure` when under a tenth of the host's memory is available.
    pub host_pressure_state: String,
    /// When the memory is given back (RFC 3339); absent for a dry run or a
    /// release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until: Option<String>,
}

/// One guest as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    pub assigned: u64,
    pub actual: u64,
}

/// The floor of a guest of `assigned` bytes.
pub fn floor_of(assigned: u64) -> u64 {
    (assigned / 4).max(MIN_FLOOR).min(assigned)
}

/// How much to take from each guest for `want` bytes: in proportion to
/// what each has above its floor, in whole MiB, never below a floor.
pub fn plan(guests: &[Guest], want: u64) -> Vec<u64> {
    let room: Vec<u64> = guests
        .iter()
        .map(|g| g.actual.saturating_sub(floor_of(g.assigned)) / MIB * MIB)
        .collect();
    let total: u64 = room.iter().sum();
    let want = (want.div_ceil(MIB) * MIB).min(total);
    if total == 0 || want == 0 {
        return vec![0; guests.len()];
    }
    let mut take: Vec<u64> = room
        .iter()
        .map(|&r| ((r as u128 * want as u128 / total as u128) as u64) / MIB * MIB)
        .collect();
    // Rounding leaves a few MiB: from the roomiest guests first.
    let mut left = want - take.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..guests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(room[i] - take[i]));
    for i in order {
        let more = (room[i] - take[i]).min(left);
        take[i] += more;
        left -= more;
    }
    take
}

/// `MemAvailable` and `MemTotal` of `/proc/meminfo`, in bytes.
fn host_memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemAvailable:"), field("MemTotal:"))
}

/// A running VM with a balloon, ready to be asked.
struct Target {
    backend: Backend,
    vm: VmConfig,
    action: MemoryReclaimAction,
}

impl Manager {
    /// Plans and (unless a dry run) applies a reclaim over every running
    /// VM, then holds it for `hold_for`.
    pub async fn reclaim_memory(
        self: &Arc<Self>,
        req: ReclaimRequest,
    ) -> Result<MemoryReclaimResponse> {
        if let Some(why) = &req.reason {
            tracing::info!(
                "memory reclaim of {} bytes: {}",
                req.reclaim_bytes,
                why.chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect::<String>()
            );
        }
        let mut actions = Vec::new();
        let mut targets = Vec::new();
        let mut metas = self.all()?;
        metas.sort_by_key(|m| m.created_at);
        for meta in metas {
            let paths = self.paths(&meta.id);
            if state::derive(&observe(&paths, &meta)) != State::Running {
                continue;
            }
            let mut action = MemoryReclaimAction {
                instance_id: meta.id.clone(),
                instance_name: meta.name.clone(),
                hypervisor: meta.hypervisor.as_str().to_string(),
                assigned_memory_bytes: meta.memory_bytes,
                protected_floor_bytes: floor_of(meta.memory_bytes),
                previous_target_guest_memory_bytes: meta.memory_bytes,
                planned_target_guest_memory_bytes: meta.memory_bytes,
                target_guest_memory_bytes: meta.memory_bytes,
                applied_reclaim_bytes: 0,
                status: String::new(),
                error: None,
            };
            if !meta.balloon || meta.hypervisor != HypervisorKind::Qemu {
                action.status = "unsupported".into();
                action.error = Some(
                    "this VM has no memory balloon (created before lodge had one); recreate it to make its memory reclaimable".into(),
                );
                actions.push(action);
                continue;
            }
            let found = self
                .launcher
                .backend(meta.hypervisor)
                .map_err(Error::from)
                .and_then(|b| {
                    let vm = self.launcher.vm_config(&b, &paths, &meta)?;
                    Ok((b, vm))
                });
            let (backend, vm) = match found {
                Ok(x) => x,
                Err(e) => {
                    action.status = "error".into();
                    action.error = Some(e.to_string());
                    actions.push(action);
                    continue;
                }
            };
            match backend.balloon_actual(&vm).await {
                Ok(actual) => {
                    let actual = actual.min(meta.memory_bytes);
                    action.previous_target_guest_memory_bytes = actual;
                    action.planned_target_guest_memory_bytes = actual;
                    action.target_guest_memory_bytes = actual;
                    targets.push(Target {
                        backend,
                        vm,
                        action,
                    });
                }
                Err(e) => {
                    action.status = "error".into();
                    action.error = Some(format!("asking the balloon: {}", chain(&e)));
                    actions.push(action);
                }
            }
        }

        let release = req.reclaim_bytes == 0;
        let guests: Vec<Guest> = targets
            .iter()
            .map(|t| Guest {
                assigned: t.action.assigned_memory_bytes,
                actual: t.action.previous_target_guest_memory_bytes,
            })
            .collect();
        let takes = plan(&guests, req.reclaim_bytes);
        for (t, take) in targets.iter_mut().zip(&takes) {
            t.action.planned_target_guest_memory_bytes = if release {
                t.action.assigned_memory_bytes
            } else {
                t.action.previous_target_guest_memory_bytes - take
            };
        }
        let planned: u64 = takes.iter().sum();

        let mut hold_until = None;
        if req.dry_run {
            for t in &mut targets {
                t.action.status = "planned".into();
            }
        } else {
            let hold = HOLD.fetch_add(1, Ordering::SeqCst) + 1;
            self.apply(&mut targets).await;
            if !release && planned > 0 && !req.hold_for.is_zero() {
                let until = SystemTime::now() + req.hold_for;
                hold_until = Some(lodge_common::time::rfc3339(until));
                let held: Vec<String> = targets
                    .iter()
                    .filter(|t| t.action.applied_reclaim_bytes > 0 || t.action.status == "partial")
                    .map(|t| t.action.instance_id.clone())
                    .collect();
                let this = self.clone();
                let hold_for = req.hold_for;
                tokio::spawn(async move {
                    tokio::time::sleep(hold_for).await;
                    if HOLD.load(Ordering::SeqCst) == hold {
                        this.release_hold(&held).await;
                    }
                });
            }
        }
        actions.extend(targets.into_iter().map(|t| t.action));
        let applied = actions.iter().map(|a| a.applied_reclaim_bytes).sum();
        let (available, total) = host_memory();
        Ok(MemoryReclaimResponse {
            actions,
            requested_reclaim_bytes: req.reclaim_bytes,
            planned_reclaim_bytes: planned,
            applied_reclaim_bytes: applied,
            host_available_bytes: available,
            host_pressure_state: if total > 0 && available < total / 10 {
                "pressure".into()
            } else {
                "healthy".into()
            },
            hold_until,
        })
    }

    /// Asks every balloon for its planned target, then waits (at most
    /// [`SETTLE`]) while the guests get there, recording what each gave.
    async fn apply(&self, targets: &mut [Target]) {
        for t in targets.iter_mut() {
            let want = t.action.planned_target_guest_memory_bytes;
            if want == t.action.previous_target_guest_memory_bytes {
                t.action.status = "unchanged".into();
                continue;
            }
            match t.backend.set_balloon(&t.vm, want).await {
                Ok(()) => t.action.target_guest_memory_bytes = want,
                Err(e) => {
                    t.action.status = "error".into();
                    t.action.error = Some(format!("setting the balloon: {}", chain(&e)));
                }
            }
        }
        let started = Instant::now();
        let mut last: Vec<(u64, Instant)> = targets
            .iter()
            .map(|t| (t.action.previous_target_guest_memory_bytes, started))
            .collect();
        loop {
            let mut pending = false;
            for (t, (seen, moved)) in targets.iter_mut().zip(last.iter_mut()) {
                if !t.action.status.is_empty() {
                    continue;
                }
                let want = t.action.target_guest_memory_bytes;
                let actual = match t.backend.balloon_actual(&t.vm).await {
                    Ok(a) => a.min(t.action.assigned_memory_bytes),
                    Err(e) => {
                        t.action.status = "error".into();
                        t.action.error = Some(format!("asking the balloon: {}", chain(&e)));
                        continue;
                    }
                };
                let before = t.action.previous_target_guest_memory_bytes;
                t.action.applied_reclaim_bytes = before.saturating_sub(actual);
                let there = if want <= before {
                    actual <= want.saturating_add(MIB)
                } else {
                    actual.saturating_add(MIB) >= want
                };
                if actual != *seen {
                    *seen = actual;
                    *moved = Instant::now();
                }
                if there {
                    t.action.status = "applied".into();
                } else if moved.elapsed() >= STALL || started.elapsed() >= SETTLE {
                    t.action.status = "partial".into();
                    t.action.error = Some(format!(
                        "the guest is at {} MiB of the {} MiB asked; its balloon keeps inflating in the background",
                        actual / MIB,
                        want / MIB
                    ));
                } else {
                    pending = true;
                }
            }
            if !pending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The end of a hold: the VMs it took memory from get it all back.
    async fn release_hold(&self, ids: &[String]) {
        for id in ids {
            let Ok(locked) = self.lock_instance(id).await else {
                continue;
            };
            let meta = &locked.meta;
            if state::derive(&observe(&locked.paths, meta)) != State::Running {
                continue;
            }
            let result = async {
                let backend = self.launcher.backend(meta.hypervisor)?;
                let vm = self.launcher.vm_config(&backend, &locked.paths, meta)?;
                backend.set_balloon(&vm, meta.memory_bytes).await?;
                Ok::<_, Error>(())
            }
            .await;
            match result {
                Ok(()) => tracing::info!("memory reclaim hold over: {id} gets its memory back"),
                Err(e) => tracing::warn!("giving {id} its memory back: {e}"),
            }
        }
    }
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out = format!("{out}: {s}");
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(assigned_mib: u64, actual_mib: u64) -> Guest {
        Guest {
            assigned: assigned_mib * MIB,
            actual: actual_mib * MIB,
        }
    }

    #[test]
    fn floors_are_a_quarter_but_at_least_128_mib() {
        assert_eq!(floor_of(4096 * MIB), 1024 * MIB);
        assert_eq!(floor_of(256 * MIB), 128 * MIB);
        assert_eq!(floor_of(64 * MIB), 64 * MIB, "never above the size");
    }

    #[test]
    fn plans_spread_by_room_and_never_cross_a_floor() {
        // Room: 384 and 128 MiB.
        let guests = [g(512, 512), g(256, 256)];
        assert_eq!(plan(&guests, 256 * MIB), [192 * MIB, 64 * MIB]);
        // More than there is: everything above the floors.
        assert_eq!(plan(&guests, 10 << 30), [384 * MIB, 128 * MIB]);
        // A guest already ballooned down to its floor gives nothing.
        assert_eq!(plan(&[g(512, 128), g(512, 512)], 100 * MIB), [0, 100 * MIB]);
        // Whole MiB, and the sum is the request rounded up.
        let p = plan(&[g(1000, 1000), g(700, 700), g(300, 300)], 333 * MIB + 5);
        assert_eq!(p.iter().sum::<u64>(), 334 * MIB, "{p:?}");
        assert!(p.iter().all(|t| t % MIB == 0), "{p:?}");
        assert_eq!(plan(&[], MIB), Vec::<u64>::new());
        assert_eq!(plan(&guests, 0), [0, 0]);
    }
}
