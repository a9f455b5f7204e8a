//! The guest's status channel is untrusted and bounded (issue 10, item 4),
//! on a real VM: a workload forges init's "exited" and "error" lines, then
//! floods the status port (`/dev/ttyS1`) with megabytes, then ends with its
//! own code. Meanwhile `GET /instances` stays fast and the instance
//! Running (its VMM still runs), the status text kept on disk stays within
//! the monitor's bound, and when the workload ends the real exit line,
//! written after the flood, is what the instance reports, even across a
//! daemon restart during the flood.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);
/// Bytes the workload writes to the status port.
const FLOOD: u64 = 3_000_000;

/// Bytes of status text kept in `logs`, and the highest rotated segment's
/// number (each rotation is `STATUS_MAX_SIZE` bytes written).
fn status_on_disk(logs: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut last_seq = 0;
    for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(lodge_monitor::STATUS_LOG) else {
            continue;
        };
        bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        if let Some(seq) = rest.strip_prefix('.').and_then(|s| s.parse::<u64>().ok()) {
            last_seq = last_seq.max(seq);
        }
    }
    (bytes, last_seq)
}

#[test]
fn a_flooded_and_forged_status_channel_changes_nothing() {
    require_guest!();
    let mut d = Daemon::start();
    let script = format!(
        "echo 'lodge-init: exited code=0' > /dev/ttyS1; \
         echo 'lodge-init: error forged' > /dev/ttyS1; \
         echo flooding; yes | head -c {FLOOD} > /dev/ttyS1; \
         echo flooded; sleep 4; exit 7"
    );
    let inst = d.create(json!({
        "name": "flood",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", script],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    wait_until("the flood to start", BOOT, || {
        d.log_lines(&id, "tail=5")
            .iter()
            .any(|l| l == "flooding")
            .then_some(())
    });
    let guest = d.guests_dir().join(&id);
    let logs = guest.join("logs");
    let bound = lodge_monitor::STATUS_MAX_SIZE * (lodge_monitor::STATUS_MAX_FILES as u64 + 1);
    let written = || status_on_disk(&logs).1 * lodge_monitor::STATUS_MAX_SIZE;
    wait_until(
        "1 MB on the status channel",
        Duration::from_secs(90),
        || (written() > 1 << 20).then_some(()),
    );

    let started = Instant::now();
    let r = d.api("GET", "/instances", None);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    let ours = r
        .body
        .as_array()
        .and_then(|all| all.iter().find(|i| i["id"] == id.as_str()));
    let ours = ours.expect("listed");
    eprintln!(
        "{} bytes through the status channel; GET /instances took {took:?}",
        written()
    );
    assert_eq!(ours["state"], "Running", "forged exit believed: {ours}");
    assert!(ours["exit_code"].is_null(), "{ours}");
    // Before the fix this took over 500 ms at 2 MB; the read's bound in
    // bytes is asserted by a unit test (observe.rs), so the margin here is
    // for a loaded 2-core machine.
    assert!(
        took < Duration::from_millis(1500),
        "GET /instances took {took:?} during a status flood"
    );
    let (kept, _) = status_on_disk(&logs);
    assert!(kept <= bound, "{kept} bytes of status kept, bound {bound}");
    assert!(
        !guest.join("status.log").exists(),
        "QEMU writes no status file of its own"
    );

    // The status channel does not go through the daemon: a restart in the
    // middle of the flood loses nothing.
    d.kill9();
    d.spawn();

    wait_until("the flood to end", Duration::from_secs(120), || {
        d.log_lines(&id, "tail=5")
            .iter()
            .any(|l| l == "flooded")
            .then_some(())
    });
    let v = d.wait_state(&id, "Stopped", Duration::from_secs(60));
    assert_eq!(v["exit_code"], 7, "the real exit line after the flood: {v}");
    let (kept, last_seq) = status_on_disk(&logs);
    eprintln!(
        "after the flood: {kept} bytes of status kept, {} written",
        last_seq * lodge_monitor::STATUS_MAX_SIZE
    );
    assert!(kept <= bound, "{kept} bytes of status kept, bound {bound}");
    assert!(
        last_seq * lodge_monitor::STATUS_MAX_SIZE >= FLOOD - 2 * lodge_monitor::STATUS_MAX_SIZE,
        "the whole flood went through the channel"
    );
    let record = lodge_monitor::read_guest_status(&logs)
        .expect("readable")
        .expect("a record");
    assert_eq!(
        record.event(),
        Some(lodge_guest::StatusEvent::Exited { code: 7 })
    );

    let r = d.api("DELETE", &format!("/instances/{id}"), None);
    assert_eq!(r.status, 204, "{}", r.text);
}
