//! lodge run as a service: `/metrics` after a real boot, the systemd
//! readiness notification, and a restart the way systemd does it with
//! `KillMode=process` (SIGTERM to the daemon alone, then a new daemon)
//! keeping the VM running and its console log complete. One VM serves
//! every assertion. (`vm_e2e` covers `kill -9`; this is the graceful
//! signal plus the notification.)

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{busybox_rootfs, Daemon};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

/// The value of the first sample of `name` whose line contains all `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits for one datagram on the notify socket.
fn notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn log_bytes_on_disk(dir: &Path, base: &str) -> u64 {
    std::fs::read_dir(dir)
        .expect("log dir")
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == base || name.strip_prefix(base).is_some_and(|s| s.starts_with('.'))
        })
        .map(|e| e.metadata().expect("stat").len())
        .sum()
}

#[test]
fn metrics_move_with_a_boot_and_a_systemd_style_restart_keeps_the_vm() {
    require_guest!();
    let notify_dir = tempfile::tempdir().expect("tempdir");
    let notify_path = notify_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let notify_env = notify_path.to_str().expect("utf-8 path");
    let mut d = Daemon::start_with_env(&[("NOTIFY_SOCKET", notify_env)]);
    assert!(
        notification(&sock).contains("READY=1"),
        "the daemon says READY=1"
    );

    // Without a token /metrics is refused (LODGE_METRICS_PUBLIC is unset).
    let r = d.request("GET", "/metrics", None, None);
    assert_eq!(r.status, 401, "{}", r.text);
    let before = d.api("GET", "/metrics", None);
    assert_eq!(before.status, 200, "{}", before.text);
    assert_eq!(sample(&before.text, "lodge_boots_total", &[]), Some(0.0));

    let n = 200;
    let script = format!(
        "echo started; i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo line-$i; sleep 0.03; done"
    );
    let inst = d.create(json!({
        "name": "svc",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", script],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    common::wait_until("output to start", BOOT, || {
        d.log_lines(&id, "tail=1")
            .iter()
            .any(|l| l.starts_with("line-"))
            .then_some(())
    });
    let st = d.lodge(&["exec", &id, "true"]);
    assert!(st.status.success(), "exec: {st:?}");

    let after = d.api("GET", "/metrics", None);
    assert_eq!(after.status, 200, "{}", after.text);
    let m = &after.text;
    assert_eq!(sample(m, "lodge_boots_total", &[]), Some(1.0), "{m}");
    assert_eq!(
        sample(m, "lodge_boot_duration_seconds_count", &[]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "lodge_instances", &["state=\"Running\""]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "lodge_instances", &["state=\"Stopped\""]),
        Some(0.0),
        "{m}"
    );
    let app = format!("instance_id=\"{id}\"");
    assert!(
        sample(m, "lodge_log_bytes_total", &[&app, "source=\"app\""]).unwrap_or(0.0) > 0.0,
        "{m}"
    );
    assert_eq!(
        sample(m, "lodge_log_writer_errors", &[&app, "source=\"app\""]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "lodge_agent_sessions_total", &["kind=\"exec\""]),
        Some(1.0),
        "{m}"
    );
    // Requests are counted by route template, never by raw path.
    assert!(
        sample(
            m,
            "lodge_http_requests_total",
            &["route=\"/instances/{id}/logs\"", "status=\"200\""]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(!m.contains(&format!("route=\"/instances/{id}")), "{m}");
    assert!(
        sample(
            m,
            "lodge_http_requests_total",
            &["route=\"/metrics\"", "status=\"401\""]
        ) == Some(1.0),
        "{m}"
    );
    assert!(sample(m, "lodge_daemon_resident_memory_bytes", &[]).unwrap_or(0.0) > 1e6);

    // systemd's restart with KillMode=process: SIGTERM to the daemon only.
    let mut child = d.child.take().expect("daemon");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let exit = child.wait().expect("wait for the daemon");
    assert!(exit.success(), "the daemon ends cleanly on SIGTERM: {exit}");
    assert!(
        notification(&sock).contains("STOPPING=1"),
        "the daemon says STOPPING=1"
    );
    d.spawn();
    assert!(notification(&sock).contains("READY=1"));
    assert_eq!(d.state(&id), "Running", "the VM outlived the daemon");
    d.wait_state(&id, "Stopped", BOOT);
    let lines = d.log_lines(&id, &format!("tail={}", n + 10));
    let want: Vec<String> = std::iter::once("started".to_string())
        .chain((1..=n).map(|i| format!("line-{i}")))
        .collect();
    assert_eq!(lines, want, "every line exactly once, in order");

    // The new daemon reads the same log totals from the monitor's files.
    let m = d.api("GET", "/metrics", None).text;
    let logs = d.guests_dir().join(&id).join("logs");
    assert_eq!(
        sample(&m, "lodge_log_bytes_total", &[&app, "source=\"app\""]),
        Some(log_bytes_on_disk(&logs, "app.log") as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, "lodge_instances", &["state=\"Stopped\""]),
        Some(1.0),
        "{m}"
    );
}
