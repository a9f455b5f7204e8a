//! Claims of the README that no other test proved, each against a real
//! daemon and real VMs: a crashed VMM is reported and the instance starts
//! again with its log intact; a guest that ignores the stop request is
//! stopped by force; `lodge run --rm` and `lodge rm -f`; two instances of one
//! image keep separate writable overlays; the log rotation settings reach
//! the monitors and rotated output is still served by the API.

mod common;

use std::time::Duration;

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);

fn sh(name: &str, script: &str) -> Value {
    json!({
        "name": name,
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", script],
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until the console shows `line`.
fn wait_line(d: &Daemon, id: &str, line: &str) {
    wait_until(&format!("{line:?} on the console"), BOOT, || {
        d.log_lines(id, "tail=100000")
            .iter()
            .any(|l| l == line)
            .then_some(())
    });
}

/// The VMM's pid, from the monitor's record of it.
fn vmm_pid(d: &Daemon, id: &str) -> i32 {
    let record = d.guests_dir().join(id).join("logs").join("monitor.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&record).expect("monitor.json"))
        .expect("monitor.json is JSON");
    v["child_pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .expect("child_pid")
}

#[test]
fn a_crashed_vmm_is_reported_and_the_instance_starts_again() {
    require_guest!();
    let d = Daemon::start();
    let script = "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.2; done";
    let id = d.create(sh("crash", script))["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_line(&d, &id, "tick-5");
    let before = d.log_lines(&id, "tail=100000");

    let pid = vmm_pid(&d, &id);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("a pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill the VMM");
    let stopped = d.wait_state(&id, "Stopped", BOOT);
    assert!(
        stopped["exit_code"].is_null() || stopped["exit_code"] != 0,
        "a killed VMM is not a clean exit: {stopped}"
    );
    assert!(
        stopped["exit_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "the crash is explained: {stopped}"
    );
    // Every line written before the crash is still there, in order.
    let after = d.log_lines(&id, "tail=100000");
    assert_eq!(after[..before.len()], before[..], "log intact");

    let r = d.api("POST", &format!("/instances/{id}/start"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    d.wait_state(&id, "Running", BOOT);
    // The new boot appends: tick-1 appears a second time after the old lines.
    wait_until("the restarted workload's output", BOOT, || {
        let lines = d.log_lines(&id, "tail=100000");
        (lines.len() > after.len() && lines[..after.len()] == after[..]).then_some(())
    });
}

#[test]
fn a_guest_ignoring_the_stop_is_stopped_by_force() {
    require_guest!();
    let d = Daemon::start();
    // The workload notes SIGTERM and carries on; the guest cannot finish a
    // graceful stop.
    let script = "trap 'echo got TERM' TERM; echo stubborn; while :; do sleep 1; done";
    let id = d.create(sh("stubborn", script))["id"]
        .as_str()
        .expect("id")
        .to_string();
    d.wait_state(&id, "Running", BOOT);
    wait_line(&d, &id, "stubborn");
    let r = d.api("POST", &format!("/instances/{id}/stop"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "Stopped", "{}", r.text);
    let ops = d.log_lines(&id, "source=lodge");
    assert!(
        ops.iter()
            .any(|l| l.ends_with("stopped by force after the graceful stop timed out")),
        "{ops:?}"
    );
    // One SIGTERM, as `docker stop` sends, although the host presses the
    // power button every second until its deadline.
    assert_eq!(
        d.log_lines(&id, "tail=100000"),
        vec!["stubborn", "got TERM"]
    );
}

#[test]
fn run_rm_and_rm_force_from_the_cli() {
    require_guest!();
    let d = Daemon::start();
    let rootfs = busybox_rootfs();
    let out = d.lodge(&[
        "run", "--rm", "--name", "gone", "--rootfs", &rootfs, "sh", "-c", "echo bye",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "bye\n");
    let r = d.api("GET", "/instances/gone", None);
    assert_eq!(r.status, 404, "--rm removed it: {}", r.text);

    let out = d.lodge(&[
        "run",
        "-d",
        "--name",
        "busy",
        "--rootfs",
        &rootfs,
        "sh",
        "-c",
        "while :; do sleep 1; done",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    d.wait_state("busy", "Running", BOOT);
    let out = d.lodge(&["rm", "busy"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "rm of a running instance needs -f"
    );
    assert_eq!(d.state("busy"), "Running");
    let out = d.lodge(&["rm", "-f", "busy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r = d.api("GET", "/instances/busy", None);
    assert_eq!(r.status, 404, "{}", r.text);
}

#[test]
fn instances_of_one_image_keep_separate_overlays() {
    require_guest!();
    let d = Daemon::start();
    let forever = "while :; do sleep 1; done";
    for name in ["left", "right"] {
        d.create(sh(name, forever));
    }
    for name in ["left", "right"] {
        d.wait_state(name, "Running", BOOT);
    }
    let exec = |name: &str, script: &str| {
        let out = d.lodge(&["exec", name, "sh", "-c", script]);
        (out.status.code(), text(&out.stdout))
    };
    let (code, _) = exec("left", "echo mine > /etc/only-left && sync");
    assert_eq!(code, Some(0));
    assert_eq!(
        exec("left", "cat /etc/only-left"),
        (Some(0), "mine\n".into())
    );
    let (code, _) = exec("right", "test -e /etc/only-left");
    assert_eq!(
        code,
        Some(1),
        "a file written in one instance is absent in the other"
    );
}

#[test]
fn log_rotation_settings_reach_the_monitors() {
    require_guest!();
    let d = Daemon::start_with_env(&[("LODGE_LOG_MAX_SIZE", "4KB"), ("LODGE_LOG_MAX_FILES", "3")]);
    // 300 numbered lines of 100 bytes: ~30 KB, far over 3 × 4 KB.
    let script = "i=0; while [ $i -lt 300 ]; do i=$((i+1)); \
                  printf '%05d %094d\\n' $i 0; done; echo done";
    let id = d.create(sh("rotating", script))["id"]
        .as_str()
        .expect("id")
        .to_string();
    d.wait_state(&id, "Stopped", BOOT);
    let logs = d.guests_dir().join(&id).join("logs");
    let mut rotated = Vec::new();
    for entry in std::fs::read_dir(&logs).expect("logs dir") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("app.log.") {
            rotated.push(name);
        }
    }
    assert!(!rotated.is_empty(), "app.log was rotated");
    assert!(
        rotated.len() <= 3,
        "at most LODGE_LOG_MAX_FILES kept: {rotated:?}"
    );
    // The API serves the retained lines across the rotated files: the last
    // ones, consecutive, ending with the program's last line.
    let lines = d.log_lines(&id, "tail=100000");
    assert_eq!(lines.last().map(String::as_str), Some("done"));
    // Files rotate at a byte boundary, so the oldest retained line may be
    // the end of a line whose start was rotated away: skip it.
    let numbers: Vec<u32> = lines[1..lines.len() - 1]
        .iter()
        .filter_map(|l| l.get(..5).and_then(|n| n.parse().ok()))
        .collect();
    assert!(
        numbers.len() > 40,
        "more than one file's worth: {}",
        numbers.len()
    );
    assert_eq!(numbers.last(), Some(&300));
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap or duplicate across rotations: {numbers:?}"
    );
    assert!(numbers[0] > 1, "old output was rotated away");
}
