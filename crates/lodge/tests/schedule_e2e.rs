//! End-to-end snapshot schedules on a real VM: the daemon snapshots a
//! running instance every interval, keeps what the retention says, keeps
//! the schedule across a daemon restart, and refuses bad schedules. The
//! minimum interval (1 minute) is lowered to 1 s for the test.

mod common;

use std::time::Duration;

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);

fn scheduled(d: &Daemon, id: &str) -> Vec<Value> {
    let r = d.api("GET", &format!("/snapshots?source_instance_id={id}"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    r.body.as_array().expect("a list").clone()
}

#[test]
fn the_daemon_takes_and_prunes_scheduled_snapshots() {
    require_guest!();
    let env = [("LODGE_SNAPSHOT_SCHEDULE_MIN_INTERVAL", "1")];
    let mut d = Daemon::start_with_env(&env);
    let id = d.create(json!({
        "name": "ticking",
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
    let path = format!("/instances/{id}/snapshot-schedule");

    assert_eq!(d.api("GET", &path, None).status, 404);
    for bad in [
        json!({"interval": "500ms", "retention": {"max_count": 2}}),
        json!({"interval": "2s", "retention": {}}),
        json!({"interval": "2s", "retention": {"max_count": 2}, "name_prefix": "-x"}),
    ] {
        let r = d.api("PUT", &path, Some(&bad));
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    let r = d.api(
        "PUT",
        &path,
        Some(&json!({"interval": "2s", "retention": {"max_count": 2},
            "name_prefix": "tick", "metadata": {"by": "schedule"}})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["interval"], "2s", "{}", r.text);
    assert_eq!(r.body["retention"], json!({"max_count": 2}));
    assert_eq!(r.body["last_snapshot_id"], Value::Null);
    assert!(r.body.get("interval_ms").is_none(), "{}", r.text);

    // Three runs, of which the last two are kept.
    let runs = std::cell::Cell::new(Vec::<String>::new());
    wait_until("three scheduled runs", Duration::from_secs(45), || {
        let s = d.api("GET", &path, None).body;
        let mut seen = runs.take();
        if let Some(last) = s["last_snapshot_id"].as_str() {
            if !seen.iter().any(|x| x == last) {
                seen.push(last.to_string());
            }
        }
        let enough = seen.len() >= 3;
        runs.set(seen);
        enough.then_some(())
    });
    let seen = runs.take();
    let kept = scheduled(&d, &id);
    assert_eq!(kept.len(), 2, "retention keeps two: {kept:?}");
    for s in &kept {
        assert_eq!(s["kind"], "Standby", "{s}");
        assert_eq!(s["tags"], json!({"by": "schedule"}), "{s}");
        assert!(s["name"].as_str().unwrap_or("").starts_with("tick-"), "{s}");
    }
    assert!(
        !kept.iter().any(|s| s["id"] == seen[0].as_str()),
        "the oldest went: {seen:?} {kept:?}"
    );
    assert_eq!(d.state(&id), "Running", "the instance runs on between runs");

    // A snapshot made by hand is not the schedule's to prune.
    let r = d.api(
        "POST",
        &format!("/instances/{id}/snapshots"),
        Some(&json!({"kind": "Standby", "name": "mine"})),
    );
    assert_eq!(r.status, 201, "{}", r.text);

    // The schedule survives a daemon restart and goes on.
    let before = d.api("GET", &path, None).body["last_run_at"].clone();
    d.kill9();
    d.spawn();
    wait_until("a run after the restart", Duration::from_secs(30), || {
        let s = d.api("GET", &path, None).body;
        (s["last_run_at"] != before && s["last_snapshot_id"].is_string()).then_some(())
    });
    let all = scheduled(&d, &id);
    assert!(all.iter().any(|s| s["name"] == "mine"), "{all:?}");
    assert_eq!(all.len(), 3, "two scheduled and mine: {all:?}");

    assert_eq!(d.api("DELETE", &path, None).status, 204);
    assert_eq!(d.api("GET", &path, None).status, 404);
    assert_eq!(d.api("DELETE", &path, None).status, 404);
}
