//! Auto-standby end to end with a real VM, in network namespaces the test
//! builds (never the host's own network): what keeps an instance awake
//! (an open connection through lodge's ingress, as its activity record
//! says; an open TCP connection into the guest, as the kernel's conntrack
//! sees it), that it goes to standby by itself once both are gone, and
//! that a hold postpones that until it ends, across a daemon restart.
//!
//! One VM serves every phase, in order, to keep the wall time down: the
//! timeouts are 2 s and the daemon checks once a second.
//!
//! How the daemon gets a network: as in network_e2e, the test builds two
//! namespaces joined by a veth (the inner one has a default route, which
//! lodge takes as its uplink; TEST-NET-2 addresses, so nothing could ever
//! leave) and re-executes itself inside one with `LODGE_AS_E2E_INNER` set;
//! the daemon, QEMU and the test's own TCP client then all live there, and
//! the conntrack table the daemon reads is that namespace's. The outer
//! run's guard kills what is left in both and deletes them.

mod common;

use common::OutputLimited;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const INNER: &str = "LODGE_AS_E2E_INNER";
const OUTSIDE: &str = "198.51.100.1";
const UPLINK: &str = "198.51.100.2";
const BOOT: Duration = Duration::from_secs(120);
/// Long enough for the daemon (checks every second, 2 s timeout) to have
/// put an instance that nothing keeps awake in standby.
const SETTLE: Duration = Duration::from_secs(5);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn sh(cmd: &str) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output_limited()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two namespaces; dropping it removes both and what runs in them.
struct World {
    names: Vec<String>,
}

impl World {
    fn build() -> World {
        let host = format!("lodge-as-{}-h", std::process::id());
        let out = format!("lodge-as-{}-o", std::process::id());
        let mut world = World { names: Vec::new() };
        for ns in [&host, &out] {
            sh(&format!("ip netns add {ns}"));
            world.names.push(ns.clone());
        }
        sh(&format!(
            "ip link add up0 netns {host} type veth peer name wan0 netns {out} \
             && ip -n {host} link set lo up && ip -n {out} link set lo up \
             && ip -n {host} addr add {UPLINK}/24 dev up0 && ip -n {host} link set up0 up \
             && ip -n {out} addr add {OUTSIDE}/24 dev wan0 && ip -n {out} link set wan0 up \
             && ip -n {host} route add default via {OUTSIDE}"
        ));
        world
    }

    fn run_inner(&self, test: &str) {
        common::netns::run_test_inside(&self.names[0], test, INNER, &[], Duration::from_secs(600));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for ns in &self.names {
            common::netns::remove(ns);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What lodge's ingress would write for the instance: `open` connections,
/// last active now (the contract in lodge_common::activity).
fn ingress_record(d: &Daemon, id: &str, open: u32) {
    let path = d.guests_dir().join(id).join("ingress-activity");
    let tmp = path.with_extension("tmp-test");
    std::fs::write(&tmp, format!("{open} {}\n", now_ms())).expect("write the record");
    std::fs::rename(&tmp, &path).expect("rename the record");
}

fn status(d: &Daemon, id: &str) -> Value {
    let r = d.api("GET", &format!("/instances/{id}/auto-standby/status"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// Sleeps `SETTLE` while checking the instance stays Running.
fn stays_running(d: &Daemon, id: &str, why: &str) {
    let end = Instant::now() + SETTLE;
    while Instant::now() < end {
        assert_eq!(d.state(id), "Running", "{why}: {}", status(d, id));
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn idle_instances_go_to_standby_and_traffic_or_a_hold_keeps_them_up() {
    require_guest!();
    const TEST: &str = "idle_instances_go_to_standby_and_traffic_or_a_hold_keeps_them_up";
    if std::env::var_os(INNER).is_none() {
        if common::available(
            TEST,
            (!is_root()).then(|| "needs root to build network namespaces".to_string()),
        ) {
            World::build().run_inner(TEST);
        }
        return;
    }
    let mut d = Daemon::start_with_env(&[("LODGE_NETWORK", "on"), ("LODGE_DNS", OUTSIDE)]);
    // Created with a policy too long to fire while the phases set up.
    let rootfs = busybox_rootfs();
    let out = d.lodge(&[
        "run",
        "-d",
        "--name",
        "sleepy",
        "--rootfs",
        &rootfs,
        "--cpus",
        "1",
        "--memory",
        "256MB",
        "--overlay-size",
        "64MB",
        "--auto-standby",
        "1h",
        "--",
        "sh",
        "-c",
        "mkdir -p /www && echo up > /www/index.html \
         && busybox httpd -p 8080 -h /www && echo serving; exec sleep 100000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let v = d.get(&id);
    assert_eq!(
        v["auto_standby"],
        json!({"enabled": true, "idle_timeout": "1h"}),
        "{v}"
    );
    let ip = v["network"]["ip"].as_str().expect("an address").to_string();
    wait_until("the guest's httpd", BOOT, || {
        d.log_lines(&id, "tail=100")
            .iter()
            .any(|l| l.starts_with("serving"))
            .then_some(())
    });
    let s = status(&d, &id);
    assert_eq!(
        (
            s["configured"].clone(),
            s["status"].clone(),
            s["reason"].clone()
        ),
        (
            json!(true),
            json!("idle_countdown"),
            json!("idle_timeout_not_elapsed")
        ),
        "{s}"
    );
    assert!(s["next_standby_at"].is_string(), "{s}");

    // 1. A connection open through the ingress keeps it up.
    ingress_record(&d, &id, 1);
    let out = d.lodge(&["update", &id, "--auto-standby", "2s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inst = d.get(&id);
    assert_eq!(
        inst["auto_standby"],
        json!({"enabled": true, "idle_timeout": "2s"}),
        "{inst}"
    );
    stays_running(&d, &id, "an open ingress connection");
    let s = status(&d, &id);
    assert_eq!(
        (s["status"].clone(), s["active_inbound_connections"].clone()),
        (json!("active"), json!(1)),
        "{s}"
    );
    assert_eq!(s["tracking_mode"], "ingress+conntrack_proc_v4_tcp", "{s}");
    let out = d.lodge(&["auto-standby", "status", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("active (active_inbound_connections)"),
        "{text}"
    );

    // 2. With the ingress idle, an open TCP connection into the guest
    // (seen through conntrack) keeps it up.
    let mut conn = TcpStream::connect_timeout(
        &format!("{ip}:8080").parse().expect("address"),
        Duration::from_secs(5),
    )
    .expect("connect to the guest's httpd");
    conn.write_all(b"GET / HTTP/1.1\r\n")
        .expect("half a request");
    ingress_record(&d, &id, 0);
    stays_running(&d, &id, "an open TCP connection");
    let s = status(&d, &id);
    assert_eq!(
        (s["status"].clone(), s["active_inbound_connections"].clone()),
        (json!("active"), json!(1)),
        "{s}"
    );

    // 3. Once it closes, the instance goes to standby by itself.
    drop(conn);
    let closed = Instant::now();
    d.wait_state(&id, "Standby", Duration::from_secs(60));
    assert!(
        closed.elapsed() >= Duration::from_secs(2),
        "standby {:?} after the close, before the idle timeout",
        closed.elapsed()
    );
    let s = status(&d, &id);
    assert_eq!(
        (s["status"].clone(), s["reason"].clone()),
        (json!("ineligible"), json!("instance_not_running")),
        "{s}"
    );
    let r = d.api("POST", &format!("/instances/{id}/auto-standby/hold"), None);
    assert_eq!(r.status, 409, "a hold in standby: {}", r.text);

    // 4. A hold keeps it up until the hold ends.
    let r = d.api("POST", &format!("/instances/{id}/restore"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let out = d.lodge(&["auto-standby", "hold", "--for", "8s", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = Instant::now();
    assert!(status(&d, &id)["hold_until"].is_string());
    // The hold and the countdown are in the record: a daemon killed and
    // started again keeps to them.
    d.kill9();
    d.spawn();
    stays_running(&d, &id, "a hold, across a daemon restart");
    d.wait_state(&id, "Standby", Duration::from_secs(60));
    assert!(
        held.elapsed() >= Duration::from_secs(8),
        "standby {:?} into an 8 s hold",
        held.elapsed()
    );

    // Turned off: hypeman's normalised form, and its status.
    let out = d.lodge(&["update", &id, "--auto-standby", "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.get(&id)["auto_standby"], json!({"enabled": false}));
    let s = status(&d, &id);
    assert_eq!(
        (
            s["enabled"].clone(),
            s["status"].clone(),
            s["reason"].clone()
        ),
        (json!(false), json!("disabled"), json!("policy_disabled")),
        "{s}"
    );
}
