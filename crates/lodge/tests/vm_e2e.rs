//! End-to-end: the real daemon boots real VMs (QEMU under TCG here) from the
//! busybox root file system that scripts/build-guest.sh builds.

mod common;

use common::OutputLimited;

use std::time::Duration;

use common::{busybox_rootfs, Daemon};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

fn sh(name: &str, script: &str) -> serde_json::Value {
    json!({
        "name": name,
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", script],
    })
}

#[test]
fn echo_hello_reaches_running_then_stops_with_code_zero() {
    require_guest!();
    let d = Daemon::start();
    let inst = d.create(sh("hello", "echo hello; sleep 3"));
    let id = inst["id"].as_str().expect("id").to_string();
    assert!(
        matches!(
            inst["state"].as_str(),
            Some("Initializing") | Some("Running")
        ),
        "{inst}"
    );
    d.wait_state(&id, "Running", BOOT);
    let stopped = d.wait_state(&id, "Stopped", BOOT);
    assert_eq!(stopped["exit_code"], 0, "{stopped}");
    let lines = d.log_lines(&id, "tail=100");
    assert_eq!(
        lines,
        vec!["hello".to_string()],
        "console log is exactly the program's output"
    );
    // Found by name and by unique id prefix too.
    assert_eq!(d.get("hello")["id"], id.as_str());
    assert_eq!(d.get(&id[..6])["id"], id.as_str());
    // lodge's own log of actions, under both names.
    let ops = d.log_lines(&id, "source=hypeman");
    assert!(ops.iter().any(|l| l.contains("created")), "{ops:?}");
    assert_eq!(ops, d.log_lines(&id, "source=lodge"));
}

#[test]
fn cli_run_streams_the_console_and_exits_with_the_program_code() {
    require_guest!();
    let d = Daemon::start();
    let root = busybox_rootfs();
    let out = d.lodge(&[
        "run",
        "--name",
        "three",
        "--cpus",
        "1",
        "--memory",
        "256MB",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "--rootfs",
        &root,
        "sh",
        "-c",
        "echo \"$GREETING from $(pwd)\"; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there from /tmp\n");
    let inst = d.get("three");
    assert_eq!(inst["state"], "Stopped");
    assert_eq!(inst["exit_code"], 3);
}

#[test]
fn stop_is_graceful_and_start_appends_to_the_same_log() {
    require_guest!();
    let d = Daemon::start();
    let script = "echo boot; trap 'echo got TERM; exit 0' TERM; while :; do sleep 1; done";
    let inst = d.create(sh("longrun", script));
    let id = inst["id"].as_str().expect("id").to_string();
    d.wait_state(&id, "Running", BOOT);
    common::wait_until("boot on the console", BOOT, || {
        d.log_lines(&id, "tail=10")
            .contains(&"boot".to_string())
            .then_some(())
    });
    let r = d.api("POST", &format!("/instances/{id}/stop"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "Stopped", "{}", r.text);
    let lines = d.log_lines(&id, "tail=100");
    assert_eq!(
        lines,
        vec!["boot", "got TERM"],
        "the program saw SIGTERM and exited cleanly"
    );
    let ops = d.log_lines(&id, "source=lodge");
    assert!(
        ops.iter().any(|l| l.ends_with(" stopped")),
        "graceful, not forced: {ops:?}"
    );

    // Stopping a stopped instance is a conflict, with the error shape.
    let again = d.api("POST", &format!("/instances/{id}/stop"), None);
    assert_eq!(again.status, 409);
    assert!(again.body["code"].is_string() && again.body["message"].is_string());

    let r = d.api("POST", &format!("/instances/{id}/start"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    common::wait_until("second boot on the console", BOOT, || {
        let l = d.log_lines(&id, "tail=100");
        (l.iter().filter(|x| *x == "boot").count() == 2).then_some(())
    });
    let lines = d.log_lines(&id, "tail=100");
    assert_eq!(
        &lines[..3],
        &["boot", "got TERM", "boot"],
        "appended, never truncated"
    );
    let r = d.api("DELETE", &format!("/instances/{id}"), None);
    assert_eq!(r.status, 204, "{}", r.text);
}

#[test]
fn delete_works_from_every_state_and_removes_everything() {
    require_guest!();
    let d = Daemon::start();
    // Initializing: deleted right after create, while the kernel boots.
    let a = d.create(sh("del-init", "sleep 600"));
    // Running.
    let b = d.create(sh("del-running", "sleep 600"));
    // Stopped (the program ended by itself).
    let c = d.create(sh("del-stopped", "true"));
    let (a, b, c) = (
        a["id"].as_str().expect("id").to_string(),
        b["id"].as_str().expect("id").to_string(),
        c["id"].as_str().expect("id").to_string(),
    );
    assert_eq!(
        d.state(&a),
        "Initializing",
        "deleted while the kernel boots, as this test means to"
    );
    assert_eq!(
        d.api("DELETE", &format!("/instances/{a}"), None).status,
        204
    );
    d.wait_state(&b, "Running", BOOT);
    assert_eq!(
        d.api("DELETE", &format!("/instances/{b}"), None).status,
        204
    );
    d.wait_state(&c, "Stopped", BOOT);
    assert_eq!(
        d.api("DELETE", &format!("/instances/{c}"), None).status,
        204
    );
    for id in [&a, &b, &c] {
        assert_eq!(d.api("GET", &format!("/instances/{id}"), None).status, 404);
        assert!(!d.guests_dir().join(id).exists(), "{id} left files behind");
    }
    let left: Vec<_> = std::fs::read_dir(d.guests_dir()).expect("ls").collect();
    assert!(left.is_empty(), "{left:?}");
    // No VMM of theirs survives.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", d.data_dir.to_str().expect("utf-8")])
        .output_limited()
        .expect("pgrep");
    assert!(
        ps.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn daemon_kill9_loses_no_console_output_and_finds_the_vm_again() {
    require_guest!();
    let mut d = Daemon::start();
    let n = 300;
    let script =
        format!("i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo line-$i; sleep 0.02; done");
    let inst = d.create(sh("survivor", &script));
    let id = inst["id"].as_str().expect("id").to_string();
    common::wait_until("output to start", BOOT, || {
        d.log_lines(&id, "tail=1")
            .iter()
            .any(|l| l.starts_with("line-"))
            .then_some(())
    });
    d.kill9();
    std::thread::sleep(Duration::from_secs(2));
    d.spawn();
    // The restarted daemon still knows the instance and its state is honest.
    let st = d.state(&id);
    assert!(
        matches!(st.as_str(), "Running" | "Stopped"),
        "state after restart: {st}"
    );
    d.wait_state(&id, "Stopped", BOOT);
    let lines = d.log_lines(&id, &format!("tail={}", n + 10));
    let want: Vec<String> = (1..=n).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines, want, "every line exactly once, in order");
    assert_eq!(d.get(&id)["exit_code"], 0);
}

#[test]
fn bad_requests_get_clear_errors_and_leave_nothing_behind() {
    require_guest!();
    let d = Daemon::start();
    let root = busybox_rootfs();
    let cases = [
        (
            json!({"name": "Bad_Name", "rootfs": root, "cmd": ["true"]}),
            "bad_request",
        ),
        (
            json!({"name": "-x", "rootfs": root, "cmd": ["true"]}),
            "bad_request",
        ),
        (
            json!({"name": "ok", "rootfs": root, "cmd": ["true"], "vcpus": 0}),
            "bad_request",
        ),
        (
            json!({"name": "ok", "rootfs": root, "cmd": ["true"], "size": "12XB"}),
            "invalid_size",
        ),
        (
            json!({"name": "ok", "rootfs": "/no/such/dir", "cmd": ["true"]}),
            "bad_request",
        ),
        (
            json!({"name": "ok", "rootfs": "relative/dir", "cmd": ["true"]}),
            "bad_request",
        ),
        (json!({"name": "ok", "rootfs": root}), "bad_request"),
        (json!({"name": "ok"}), "bad_request"),
    ];
    for (body, code) in cases {
        let r = d.api("POST", "/instances", Some(&body));
        assert_eq!(r.status, 400, "{body} -> {}", r.text);
        assert_eq!(r.body["code"], code, "{body} -> {}", r.text);
        assert!(r.body["message"].is_string(), "{}", r.text);
    }
    // The hypervisor is chosen per instance: hypeman's names are known, a
    // backend this host lacks is refused clearly, before anything is made
    // (Cloud Hypervisor only where no binary is configured: ch_e2e runs
    // it where one is).
    let ch_configured = std::env::var_os("LODGE_CH_BINARY").is_some_and(|v| !v.is_empty())
        || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join("cloud-hypervisor").is_file());
    let mut refused = vec![("xen", "unknown hypervisor")];
    if !ch_configured {
        refused.insert(0, ("cloud-hypervisor", "not available on this host"));
        // `/capabilities` says so too.
        let caps = d.api("GET", "/capabilities", None);
        let ch = caps.body["runtimes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "cloud-hypervisor"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(ch["available"], false, "{}", caps.text);
    }
    for (hypervisor, says) in refused {
        let body = json!({"name": "hv", "rootfs": root, "cmd": ["true"], "hypervisor": hypervisor});
        let r = d.api("POST", "/instances", Some(&body));
        assert_eq!(r.status, 400, "{body} -> {}", r.text);
        assert_eq!(r.body["code"], "bad_request");
        assert!(
            r.body["message"].as_str().unwrap_or("").contains(says),
            "{}",
            r.text
        );
    }
    let r = d.request(
        "POST",
        "/instances",
        Some("{not json"),
        Some(&d.token.clone()),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["code"], "bad_request");
    // An oversized body is refused from its declared length, before it is read.
    let (status, body) = d.raw_post_declaring_length("/instances", 2 << 20);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"code\""), "{body}");
    let r = d.request("GET", "/instances", None, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body["code"], "unauthorized");
    let r = d.request("GET", "/instances", None, Some("not-a-token"));
    assert_eq!(r.status, 401);
    let r = d.api("GET", "/instances/nosuch", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.body["code"], "not_found");
    let r = d.api("GET", "/instances/nosuch/logs", None);
    assert_eq!(r.status, 404);
    let r = d.api("GET", "/health", None);
    assert_eq!(r.body["status"], "ok");
    let spec = d.request("GET", "/spec.json", None, None);
    assert_eq!(spec.status, 200);
    assert!(spec.body["paths"]["/instances"].is_object());

    // Nothing was created by any of the failures.
    let entries: Vec<_> = std::fs::read_dir(d.guests_dir())
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(entries.is_empty(), "{entries:?}");

    // A duplicate name is a conflict.
    let inst = d.create(sh("dup", "true"));
    let r = d.api("POST", "/instances", Some(&sh("dup", "true")));
    assert_eq!(r.status, 409, "{}", r.text);
    let id = inst["id"].as_str().expect("id");
    assert_eq!(
        d.api("DELETE", &format!("/instances/{id}"), None).status,
        204
    );
}

#[test]
fn cli_verbs_and_following_the_console_through_the_api() {
    require_guest!();
    let d = Daemon::start();
    let root = busybox_rootfs();
    let out = d.lodge(&[
        "run",
        "-d",
        "--name",
        "clicheck",
        "--cpus",
        "1",
        "--memory",
        "256MB",
        "--rootfs",
        &root,
        "sh",
        "-c",
        "i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo tick-$i; sleep 0.1; done",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert_eq!(id.len(), 24, "run -d prints the id: {id:?}");

    // `lodge logs -f` follows until the VM is done, then ends by itself.
    let out = d.lodge(&["logs", "-f", "--tail", "all", "clicheck"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: String = (1..=30).map(|i| format!("tick-{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);

    let ps = d.lodge(&["ps"]);
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("clicheck"),
        "ps hides stopped"
    );
    let ps = d.lodge(&["ps", "-a"]);
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(ps.contains("clicheck") && ps.contains("Stopped"), "{ps}");
    let inspect = d.lodge(&["inspect", &id[..8]]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("inspect is JSON");
    assert_eq!(v["exit_code"], 0);
    assert!(v["stopped_at"].is_string(), "{v}");

    // Follow over SSE from a start: the stream carries the new boot's lines
    // after the old ones, then ends when the VM does.
    let start = d.lodge(&["start", "clicheck"]);
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let lines = d.log_lines(&id, "tail=5&follow=true");
    let mut expect: Vec<String> = (26..=30).map(|i| format!("tick-{i}")).collect();
    expect.extend((1..=30).map(|i| format!("tick-{i}")));
    assert_eq!(lines, expect);

    let rm = d.lodge(&["rm", "clicheck"]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let missing = d.lodge(&["inspect", "clicheck"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}
