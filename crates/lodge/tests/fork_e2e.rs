//! End-to-end forks on real VMs: a fork of a running instance continues
//! the guest's memory in a new instance with its own id, name and logs
//! while the source goes on; forks of a stopped instance and of a
//! snapshot; a taken name and a running source without `from_running`
//! are refused.

mod common;

use std::time::Duration;

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);

/// The `line N` numbers of an instance's console log (checked to count up
/// by one from the first, no NUL).
fn numbers(d: &Daemon, id: &str) -> Vec<u64> {
    let bytes = std::fs::read(d.guests_dir().join(id).join("logs/app.log")).unwrap_or_default();
    assert!(!bytes.contains(&0), "a NUL byte in the console log");
    // Only whole lines: the monitor may be writing the last one.
    let whole = &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
    let nums: Vec<u64> = String::from_utf8_lossy(whole)
        .lines()
        .filter_map(|l| l.strip_prefix("line "))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    for w in nums.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a gap or a repeat in {id}'s log");
    }
    nums
}

fn last(d: &Daemon, id: &str) -> u64 {
    numbers(d, id).last().copied().unwrap_or(0)
}

fn fork(d: &Daemon, path: &str, body: Value) -> common::Response {
    d.api("POST", path, Some(&body))
}

#[test]
fn forks_continue_the_guest_in_a_new_instance() {
    require_guest!();
    let d = Daemon::start();
    let src = d.create(json!({
        "name": "origin",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done"],
    }))["id"]
        .as_str()
        .expect("id")
        .to_string();
    d.wait_state(&src, "Running", BOOT);
    wait_until("the counter", BOOT, || (last(&d, &src) >= 5).then_some(()));

    let r = fork(
        &d,
        &format!("/instances/{src}/fork"),
        json!({"name": "copy"}),
    );
    assert_eq!(
        r.status, 409,
        "a running source needs from_running: {}",
        r.text
    );
    let r = fork(
        &d,
        &format!("/instances/{src}/fork"),
        json!({"name": "origin", "from_running": true}),
    );
    assert_eq!(r.status, 409, "a taken name: {}", r.text);
    let r = fork(
        &d,
        &format!("/instances/{src}/fork"),
        json!({"name": "Bad Name", "from_running": true}),
    );
    assert_eq!(r.status, 400, "{}", r.text);

    let r = fork(
        &d,
        &format!("/instances/{src}/fork"),
        json!({"name": "copy", "from_running": true}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let copy = r.body["id"].as_str().expect("id").to_string();
    assert_ne!(copy, src);
    assert_eq!(r.body["name"], "copy");
    assert_eq!(r.body["state"], "Running", "{}", r.text);
    assert_eq!(d.state(&src), "Running");
    let forked_at = last(&d, &src);
    // Both go on; the fork's log is its own and starts where the memory was.
    wait_until("both counters", Duration::from_secs(30), || {
        (last(&d, &src) > forked_at + 5 && last(&d, &copy) > forked_at + 5).then_some(())
    });
    let copy_nums = numbers(&d, &copy);
    let first = copy_nums[0];
    assert!(
        first > 1 && first <= forked_at + 1,
        "the fork continues the source's counter ({first}, forked at {forked_at})"
    );
    assert_eq!(numbers(&d, &src)[0], 1, "the source's log is untouched");

    // A fork of a snapshot (memory): Running by default.
    let r = d.api(
        "POST",
        &format!("/instances/{copy}/snapshots"),
        Some(&json!({"kind": "Standby"})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let snap = r.body["id"].as_str().expect("id").to_string();
    let r = fork(
        &d,
        &format!("/snapshots/{snap}/fork"),
        json!({"name": "from-snap"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["state"], "Running", "{}", r.text);
    let third = r.body["id"].as_str().expect("id").to_string();
    wait_until("the third counter", Duration::from_secs(30), || {
        (numbers(&d, &third).len() > 3).then_some(())
    });

    // A fork of a stopped source is stopped; started, it boots afresh.
    assert_eq!(
        d.api("POST", &format!("/instances/{src}/stop"), None)
            .status,
        200
    );
    let r = fork(
        &d,
        &format!("/instances/{src}/fork"),
        json!({"name": "cold", "target_state": "Standby"}),
    );
    assert_eq!(r.status, 400, "no memory, no standby: {}", r.text);
    let out = d.lodge(&["fork", "origin", "cold"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cold = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(d.state(&cold), "Stopped");
    assert_eq!(
        d.api("POST", &format!("/instances/{cold}/start"), None)
            .status,
        200
    );
    wait_until("the cold fork's counter", BOOT, || {
        (numbers(&d, &cold).first() == Some(&1)).then_some(())
    });
}
