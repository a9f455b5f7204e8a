//! Idle memory end to end: one idle busybox VM with the default memory
//! (1 GiB) and one vCPU, and what its VMM holds once the guest has settled,
//! read from the host (`/proc/PID/smaps` of the QEMU the monitor records,
//! and the stats API's RSS). A regression in any part lodge controls fails
//! here:
//!
//! - TCG's translation cache is resident up to its size (16 MiB, lodge's
//!   `-accel tcg,tb-size=16`); QEMU's own default let ~60 MiB stay.
//! - Guest RAM is only what the guest touched: no pre-touch, and free page
//!   reporting returns freed blocks from 32 KiB up (the guest init applies
//!   the command line's `page_reporting_order=3`, checked in the guest).
//!   Measured idle with the lodge kernel: 39–42 MiB (47.8 with the kernel's
//!   own 4 MiB order; the rest is its image and 16 MiB of page structures
//!   for 1 GiB), bound 56 MiB; with Debian's kernel (45 MB image) 112 MiB
//!   before the finer order, bound 192 MiB. Both far below the 1 GiB a
//!   pre-touched RAM costs.
//! - QEMU's own anonymous memory apart from the cache (heap, the vCPU's
//!   TLBs and arenas, the ACPI tables' 2 MiB block, libraries' relocated
//!   pages): 20 MiB measured with the stripped lodge kernel (QEMU keeps an
//!   ELF kernel's symbols in its heap: 1.1 MiB more unstripped), bound
//!   28 MiB.
//! - The whole RSS by the stats API, shared pages included (QEMU and its
//!   libraries ~27 MiB, the kernel image and initrd QEMU maps ~17 MiB with
//!   the lodge kernel, ≤ 64 with Debian's): measured 114–116 MiB with the
//!   lodge kernel, bound 160 MiB (320 with Debian's).
//!
//! The numbers are printed for the notes.

mod common;

use std::time::{Duration, Instant};

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

const MAX_CODE_CACHE: u64 = 16 * MIB;
const MAX_QEMU_ANON: u64 = 28 * MIB;
/// The free page reporting order lodge asks for (its kernel command line).
const REPORTING_ORDER: &str = "3";

/// Bounds that depend on the guest kernel: guest RAM and the whole RSS.
struct KernelBounds {
    guest_ram: u64,
    rss: u64,
}

const LODGE_KERNEL: KernelBounds = KernelBounds {
    guest_ram: 56 * MIB,
    rss: 160 * MIB,
};
const DEBIAN_KERNEL: KernelBounds = KernelBounds {
    guest_ram: 192 * MIB,
    rss: 320 * MIB,
};

/// The bounds for the system dir's kernel (`kernel-flavor`, written by
/// scripts/build-guest.sh).
fn kernel_bounds() -> (String, KernelBounds) {
    let flavor = std::fs::read_to_string(common::system_dir().join("kernel-flavor"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "debian".to_string());
    let bounds = if flavor == "lodge" {
        LODGE_KERNEL
    } else {
        DEBIAN_KERNEL
    };
    (flavor, bounds)
}

/// The VMM's pid, from the monitor's record of it.
fn vmm_pid(d: &Daemon, id: &str) -> u32 {
    let record = d.guests_dir().join(id).join("logs").join("monitor.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&record).expect("monitor.json"))
        .expect("monitor.json is JSON");
    v["child_pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("child_pid")
}

/// Resident bytes of one process, by what the mappings hold.
#[derive(Debug, Default, Clone, Copy)]
struct Footprint {
    /// Anonymous executable mappings: TCG's translation cache.
    code: u64,
    /// The guest RAM file's mapping.
    guest_ram: u64,
    /// Every other anonymous page.
    other_anon: u64,
    rss: u64,
}

fn footprint(pid: u32) -> Footprint {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut f = Footprint::default();
    let mut header = "";
    for line in smaps.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        if !first.ends_with(':') {
            header = line;
            continue;
        }
        let kib = |w: Option<&str>| w.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
        // `start-end perms offset dev inode [path]`; the path may hold
        // blanks (the harness's data dir does).
        let perms = header.split_ascii_whitespace().nth(1).unwrap_or("");
        let anonymous = header.split_ascii_whitespace().count() <= 5;
        let ram = header.ends_with("/memory.ram");
        match first {
            "Rss:" => {
                let v = kib(words.next());
                f.rss += v;
                if ram {
                    f.guest_ram += v;
                }
            }
            "Anonymous:" => {
                let v = kib(words.next());
                if perms.contains('x') && anonymous {
                    f.code += v;
                } else if !ram {
                    f.other_anon += v;
                }
            }
            _ => {}
        }
    }
    f
}

#[test]
fn an_idle_vm_holds_little_host_memory() {
    require_guest!();
    // Guest RAM in its file (the default), so its mapping is told apart.
    let d = Daemon::start_with_env(&[("LODGE_MEMORY_FILE", "on")]);
    let inst = d.create(json!({
        "name": "idle",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "cmd": ["sh", "-c", "echo idle; while :; do sleep 3600; done"],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    assert_eq!(inst["size"], "1GB", "the default memory: {inst}");
    d.wait_state(&id, "Running", BOOT);
    wait_until("the workload to start", BOOT, || {
        d.log_lines(&id, "tail=20")
            .iter()
            .any(|l| l.trim() == "idle")
            .then_some(())
    });
    // The guest init applied the finer reporting order (Linux 6.1 resets
    // the command line's when the balloon registers).
    let out = d.lodge(&[
        "exec",
        &id,
        "cat",
        "/sys/module/page_reporting/parameters/page_reporting_order",
    ]);
    assert!(out.status.success(), "exec: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), REPORTING_ORDER);
    let (flavor, bounds) = kernel_bounds();

    let pid = vmm_pid(&d, &id);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let tcg = cmdline.contains(" -accel tcg");
    if tcg {
        assert!(cmdline.contains(" -accel tcg,tb-size=16 "), "{cmdline}");
    }

    // Settled: the guest's RAM has not shrunk for 3 s (free page reporting
    // hands freed blocks back ~2 s after they are freed).
    let t0 = Instant::now();
    let mut low = footprint(pid);
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(3) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
        let now = footprint(pid);
        if now.guest_ram + MIB < low.guest_ram {
            since = Instant::now();
        }
        low = now;
    }
    let f = footprint(pid);
    let r = d.api("GET", &format!("/instances/{id}/stats"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let stats_rss = r.body["memory_rss_bytes"].as_u64().expect("rss");
    eprintln!(
        "idle VM host memory ({flavor} kernel, MiB): RSS {} (stats {}), guest RAM {}, TCG code {}, other QEMU anonymous {}",
        f.rss / MIB,
        stats_rss / MIB,
        f.guest_ram / MIB,
        f.code / MIB,
        f.other_anon / MIB
    );
    if tcg {
        // THP may round the last page of the cache up to 2 MiB.
        assert!(f.code <= MAX_CODE_CACHE + 2 * MIB, "{f:?}");
    }
    assert!(f.guest_ram > 16 * MIB, "no guest RAM mapping found: {f:?}");
    assert!(f.guest_ram <= bounds.guest_ram, "{flavor} kernel: {f:?}");
    assert!(f.other_anon <= MAX_QEMU_ANON, "{f:?}");
    assert!(
        stats_rss <= bounds.rss,
        "{flavor} kernel: stats RSS {stats_rss}, {f:?}"
    );

    let r = d.api("DELETE", &format!("/instances/{id}"), None);
    assert!(r.status < 300, "{}", r.text);
}
