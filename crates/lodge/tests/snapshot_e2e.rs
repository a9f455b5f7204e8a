//! End-to-end snapshots on a real VM: a Standby snapshot brings back the
//! guest's memory and disks as they were, a Stopped one its disks; names,
//! tags and filters behave as hypeman's; snapshots outlive their instance.

mod common;

use std::time::Duration;

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);

fn last_number(d: &Daemon, id: &str) -> u64 {
    let text =
        std::fs::read_to_string(d.guests_dir().join(id).join("logs/app.log")).unwrap_or_default();
    // Only whole lines: the monitor may be writing the last one.
    let text = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    text.lines()
        .filter_map(|l| l.strip_prefix("line "))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

fn exec(d: &Daemon, id: &str, script: &str) -> String {
    let out = d.lodge(&["exec", id, "sh", "-c", script]);
    assert!(
        out.status.success(),
        "exec {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn snapshots_bring_back_memory_and_disks() {
    require_guest!();
    let d = Daemon::start();
    let id = d.create(json!({
        "name": "snapped",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done"],
    }))["id"]
        .as_str()
        .expect("id")
        .to_string();
    d.wait_state(&id, "Running", BOOT);
    exec_ready(&d, &id);
    exec(&d, &id, "echo one > /mark1");

    // A Standby snapshot of a running instance: it sleeps briefly and goes on.
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots"),
        Some(&json!({"kind": "Standby", "name": "s1", "tags": {"env": "test"}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let s1 = r.body.clone();
    let at_snapshot = last_number(&d, &id);
    assert_eq!(s1["kind"], "Standby", "{s1}");
    assert_eq!(s1["name"], "s1");
    assert_eq!(s1["tags"], json!({"env": "test"}));
    assert_eq!(s1["source_instance_id"], id.as_str());
    assert_eq!(s1["source_instance_name"], "snapped");
    assert_eq!(s1["source_hypervisor"], "qemu");
    assert!(s1["size_bytes"].as_u64().unwrap_or(0) > 0, "{s1}");
    let s1 = s1["id"].as_str().expect("id").to_string();
    assert_eq!(d.state(&id), "Running");
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots"),
        Some(&json!({"kind": "Standby", "name": "s1"})),
    );
    assert_eq!(r.status, 409, "the same name twice: {}", r.text);
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots"),
        Some(&json!({"kind": "Stopped"})),
    );
    assert_eq!(
        r.status, 409,
        "a Stopped snapshot of a running VM: {}",
        r.text
    );

    // Later changes, then a Stopped snapshot of the stopped instance.
    exec(&d, &id, "echo two > /mark2; sync");
    assert_eq!(
        d.api("POST", &format!("/instances/{id}/stop"), None).status,
        200
    );
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots"),
        Some(&json!({"kind": "Stopped", "name": "s2"})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let s2 = r.body["id"].as_str().expect("id").to_string();

    // Listing and filters (hypeman's client writes tags as tags[KEY]=VALUE).
    let mut both = vec![s1.clone(), s2.clone()];
    both.sort();
    assert_eq!(ids(&d.api("GET", "/snapshots", None).body), both);
    assert_eq!(
        ids(&d.api("GET", "/snapshots?kind=Stopped", None).body),
        [s2.as_str()]
    );
    assert_eq!(
        ids(&d.api("GET", "/snapshots?tags%5Benv%5D=test", None).body),
        [s1.as_str()]
    );
    assert_eq!(
        ids(&d
            .api(
                "GET",
                &format!("/snapshots?source_instance_id={id}&name=s2"),
                None
            )
            .body),
        [s2.as_str()]
    );
    assert_eq!(
        d.api("GET", &format!("/snapshots/{s1}"), None).body["name"],
        "s1"
    );

    // The Standby snapshot restores memory and disks as they were.
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots/{s1}/restore"),
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "Running", "{}", r.text);
    wait_until("the counter to go on", Duration::from_secs(30), || {
        (last_number(&d, &id) > at_snapshot + 3).then_some(())
    });
    let text = std::fs::read_to_string(d.guests_dir().join(&id).join("logs/app.log")).expect("log");
    assert!(
        text.contains(&format!("line {}\n", at_snapshot + 1)),
        "the counter continues from the snapshot"
    );
    assert_eq!(
        exec(&d, &id, "cat /mark1; cat /mark2 2>/dev/null || echo none"),
        "one\nnone"
    );

    // Wrong states and bad requests.
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots/{s2}/restore"),
        None,
    );
    assert_eq!(r.status, 409, "restore into a running instance: {}", r.text);
    assert_eq!(
        d.api("POST", &format!("/instances/{id}/stop"), None).status,
        200
    );
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots/{s2}/restore"),
        Some(&json!({"target_state": "Standby"})),
    );
    assert_eq!(
        r.status, 400,
        "a Stopped snapshot has no memory: {}",
        r.text
    );
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots/nosuch/restore"),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text);

    // The Stopped snapshot, booted: its disks.
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots/{s2}/restore"),
        Some(&json!({"target_state": "Running"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    d.wait_state(&id, "Running", BOOT);
    exec_ready(&d, &id);
    assert_eq!(exec(&d, &id, "cat /mark1 /mark2"), "one\ntwo");

    // Snapshots made with the API outlive their instance.
    assert_eq!(
        d.api("DELETE", &format!("/instances/{id}"), None).status,
        204
    );
    assert_eq!(ids(&d.api("GET", "/snapshots", None).body), both);
    assert_eq!(
        d.api("DELETE", &format!("/snapshots/{s1}"), None).status,
        204
    );
    assert_eq!(d.api("GET", &format!("/snapshots/{s1}"), None).status, 404);
    let out = d.lodge(&["snapshot", "ls", "-q"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), s2);
    let out = d.lodge(&["snapshot", "rm", &s2]);
    assert!(out.status.success());
    assert_eq!(
        ids(&d.api("GET", "/snapshots", None).body),
        Vec::<String>::new()
    );
}

/// Waits until the guest agent answers.
fn exec_ready(d: &Daemon, id: &str) {
    let out = d.lodge(&["exec", "--wait-for-agent", "60", id, "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
