//! End-to-end: lifecycle policies the daemon enforces on real VMs.
//!
//! - `ttl_deletes_at_expiry_even_across_a_daemon_restart`: an instance is
//!   deleted when its TTL ends, also when the daemon was down at that
//!   moment; `PATCH` with `ttl: "0s"` clears an expiry.
//! - `restart_policy_retries_a_failing_workload_up_to_its_cap`: a program
//!   that exits 1 under `on_failure` is booted again after its backoff,
//!   `max_attempts` times, then left stopped (`max_attempts_exceeded`); a
//!   stop through the API blocks an `always` policy (`manual_stop`).
//! - `health_check_flips_when_the_guest_stops_passing`: an exec health
//!   check through the guest agent turns the workload healthy, then
//!   unhealthy once what it checks is gone, then `unknown` once stopped.

mod common;

use std::time::Duration;

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::json;

const LOOP: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

#[test]
fn ttl_deletes_at_expiry_even_across_a_daemon_restart() {
    require_guest!();
    let mut d = Daemon::start();
    let root = busybox_rootfs();
    let inst = |name: &str, extra: serde_json::Value| {
        let mut body = json!({"name": name, "rootfs": root, "vcpus": 1, "size": "128MB",
            "cmd": ["sh", "-c", LOOP]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let v = d.create(body);
        v["id"].as_str().expect("id").to_string()
    };
    // Refused: both at once, a past time, a bad duration.
    for bad in [
        json!({"ttl": "1h", "expires_at": "2099-01-01T00:00:00Z"}),
        json!({"expires_at": "2001-01-01T00:00:00Z"}),
        json!({"ttl": "soon"}),
    ] {
        let mut body = json!({"name": "bad", "rootfs": root, "cmd": ["true"]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), bad.as_object()) {
            b.extend(e.clone());
        }
        let r = d.api("POST", "/instances", Some(&body));
        assert_eq!(r.status, 400, "{bad} -> {}", r.text);
    }

    let short = inst("short", json!({"ttl": "3s"}));
    let kept = inst("kept", json!({"expires_at": "2099-01-01T00:00:00+01:00"}));
    assert_eq!(d.get(&kept)["expires_at"], "2098-12-31T23:00:00.000Z");
    let r = d.api(
        "PATCH",
        &format!("/instances/{kept}"),
        Some(&json!({"ttl": "0s"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.get("expires_at").is_none(), "{}", r.text);
    assert!(d.get(&short)["expires_at"].is_string());

    // The daemon is away when the TTL ends; back, it deletes at once.
    d.kill9();
    std::thread::sleep(Duration::from_secs(4));
    d.spawn();
    wait_until(
        "the expired instance to be deleted",
        Duration::from_secs(40),
        || (d.api("GET", &format!("/instances/{short}"), None).status == 404).then_some(()),
    );
    // Not expired, so still there (it may still be booting on a loaded host).
    d.wait_state(&kept, "Running", Duration::from_secs(120));

    // And with the daemon up, via PATCH.
    let r = d.api(
        "PATCH",
        &format!("/instances/{kept}"),
        Some(&json!({"ttl": "1s"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_until(
        "the updated instance to expire",
        Duration::from_secs(40),
        || (d.api("GET", &format!("/instances/{kept}"), None).status == 404).then_some(()),
    );
}

#[test]
fn restart_policy_retries_a_failing_workload_up_to_its_cap() {
    require_guest!();
    let d = Daemon::start();
    let root = busybox_rootfs();
    let failing = d.create(json!({
        "name": "failing", "rootfs": root, "vcpus": 1, "size": "128MB",
        "cmd": ["sh", "-c", "echo attempt; exit 1"],
        "restart_policy": {"policy": "on_failure", "backoff": "1s", "max_attempts": 2},
    }));
    let failing = failing["id"].as_str().expect("id").to_string();
    assert_eq!(
        d.get(&failing)["restart_policy"],
        json!({"policy": "on_failure", "backoff": "1s", "max_attempts": 2, "stable_after": "1m"})
    );
    let always = d.create(json!({
        "name": "always", "rootfs": root, "vcpus": 1, "size": "128MB",
        "cmd": ["sh", "-c", LOOP],
        "restart_policy": {"policy": "always", "backoff": "1s"},
    }));
    let always = always["id"].as_str().expect("id").to_string();
    d.wait_state(&always, "Running", Duration::from_secs(120));
    let r = d.api("POST", &format!("/instances/{always}/stop"), None);
    assert_eq!(r.status, 200, "{}", r.text);

    let done = wait_until(
        "the restart policy to give up",
        Duration::from_secs(120),
        || {
            let v = d.get(&failing);
            (v["restart_status"]["blocked_reason"] == "max_attempts_exceeded").then_some(v)
        },
    );
    assert_eq!(done["state"], "Stopped", "{done}");
    assert_eq!(done["exit_code"], 1, "{done}");
    assert_eq!(done["restart_status"]["attempts"], 2, "{done}");
    assert!(
        done["restart_status"]["last_attempt_at"].is_string(),
        "{done}"
    );
    let runs = d
        .log_lines(&failing, "tail=100")
        .iter()
        .filter(|l| l.as_str() == "attempt")
        .count();
    assert_eq!(runs, 3, "the first boot and two restarts");
    let ops = d.log_lines(&failing, "tail=100&source=hypeman").join("\n");
    assert!(ops.contains("restart policy: attempt 2"), "{ops}");

    // The stopped `always` instance stayed stopped.
    let v = d.get(&always);
    assert_eq!(v["state"], "Stopped", "{v}");
    assert_eq!(v["restart_status"]["blocked_reason"], "manual_stop", "{v}");
}

#[test]
fn health_check_flips_when_the_guest_stops_passing() {
    require_guest!();
    let d = Daemon::start();
    let root = busybox_rootfs();
    let v = d.create(json!({
        "name": "checked", "rootfs": root, "vcpus": 1, "size": "128MB",
        "cmd": ["sh", "-c", format!("touch /tmp/ok; {LOOP}")],
        "health_check": {"type": "exec", "exec": {"command": ["test", "-f", "/tmp/ok"]},
            "interval": "500ms", "timeout": "10s", "failure_threshold": 2},
    }));
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(v["health_check"]["type"], "exec", "{v}");
    assert_eq!(v["health_check"]["interval"], "500ms", "{v}");
    let healthy = wait_until("the check to pass", Duration::from_secs(90), || {
        let v = d.get(&id);
        (v["health_status"]["status"] == "healthy").then_some(v)
    });
    assert!(
        healthy["health_status"]["last_success_at"].is_string(),
        "{healthy}"
    );
    assert_eq!(
        healthy["state"], "Running",
        "health never changes the state"
    );

    let out = d.lodge(&["exec", "checked", "rm", "/tmp/ok"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sick = wait_until("the check to fail twice", Duration::from_secs(60), || {
        let v = d.get(&id);
        (v["health_status"]["status"] == "unhealthy").then_some(v)
    });
    let s = &sick["health_status"];
    assert!(
        s["consecutive_failures"].as_u64().is_some_and(|n| n >= 2),
        "{sick}"
    );
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("exit code 1")),
        "{sick}"
    );
    assert_eq!(sick["state"], "Running");

    let r = d.api("POST", &format!("/instances/{id}/stop"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["health_status"]["status"], "unknown", "{}", r.text);
    // Turned off by PATCH: no status at all.
    let r = d.api(
        "PATCH",
        &format!("/instances/{id}"),
        Some(&json!({"health_check": null})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.get("health_status").is_none(), "{}", r.text);

    // The CLI's docker-style flags set the same policies.
    let out = d.lodge(&[
        "run",
        "-d",
        "--name",
        "viacli",
        "--rootfs",
        &root,
        "--cpus",
        "1",
        "--memory",
        "128MB",
        "--ttl",
        "1h",
        "--restart",
        "on-failure:2",
        "--health-cmd",
        "true",
        "--health-interval",
        "1s",
        "--",
        "sh",
        "-c",
        LOOP,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = d.get("viacli");
    assert!(v["expires_at"].is_string(), "{v}");
    assert_eq!(v["restart_policy"]["policy"], "on_failure", "{v}");
    assert_eq!(v["restart_policy"]["max_attempts"], 2, "{v}");
    assert_eq!(
        v["health_check"]["exec"]["command"],
        json!(["/bin/sh", "-c", "true"]),
        "{v}"
    );
    assert_eq!(v["health_check"]["interval"], "1s", "{v}");
}
