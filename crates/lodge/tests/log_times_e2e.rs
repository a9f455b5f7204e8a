//! Log timestamps on a real VM (issue 17, item 3): the monitor keeps a
//! time index beside each segment, and `lodge logs --timestamps`,
//! `--since` and `--until` (CLI through the API, and `--dir`) read it.
//!
//! The workload prints four bursts (A, B, C, D) with pauses between them;
//! B is more than a segment (rotation at 1 MiB inside it), and the daemon
//! is killed and restarted between C and D. Then:
//! - `--timestamps` prefixes every line with an RFC 3339 time, the times
//!   never go back, and the pauses show between the bursts;
//! - a window from the middle of one pause to the middle of another holds
//!   exactly the lines of the bursts between them, across the rotation and
//!   the restart, through the API and straight from the directory;
//! - the log files themselves hold only the workload's bytes.

mod common;

use std::time::{Duration, SystemTime};

use common::{busybox_rootfs, Daemon};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);
/// Lines of burst B: about 1.3 MB, more than one 1 MiB segment.
const B_LINES: u64 = 30_000;

fn script() -> String {
    format!(
        "for i in 1 2 3; do echo \"A $i\"; done; sleep 3; \
         awk 'BEGIN {{ for (i = 1; i <= {B_LINES}; i++) printf \"B %d ..................................\\n\", i }}'; \
         sleep 3; for i in 1 2 3; do echo \"C $i\"; done; sleep 8; \
         for i in 1 2 3; do echo \"D $i\"; done"
    )
}

fn burst_lines(burst: &str) -> Vec<String> {
    match burst {
        "B" => (1..=B_LINES)
            .map(|i| format!("B {i} .................................."))
            .collect(),
        other => (1..=3).map(|i| format!("{other} {i}")).collect(),
    }
}

/// The workload's lines of a `lodge logs` output (kernel lines aside).
fn workload_lines(out: &std::process::Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "lodge logs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.starts_with('[') && !l.starts_with("lodge-init"))
        .collect()
}

/// (time, line) of `--timestamps` output.
fn stamped(out: &std::process::Output) -> Vec<(SystemTime, String)> {
    workload_lines(out)
        .iter()
        .map(|l| {
            let (stamp, line) = l.split_once(' ').expect("a timestamp and a space");
            let t = lodge_common::time::parse_rfc3339(stamp)
                .unwrap_or_else(|e| panic!("{stamp:?} is not RFC 3339: {e}"));
            (t, line.to_owned())
        })
        .filter(|(_, l)| !l.starts_with('[') && !l.starts_with("lodge-init"))
        .collect()
}

fn midpoint(a: SystemTime, b: SystemTime) -> String {
    let half = b.duration_since(a).expect("b after a") / 2;
    lodge_common::time::rfc3339_micros(a + half)
}

#[test]
fn since_until_and_timestamps_across_rotation_and_restart() {
    require_guest!();
    let mut d = Daemon::start_with_env(&[
        ("LODGE_LOG_MAX_SIZE", "1MiB"),
        ("LODGE_LOG_MAX_FILES", "10"),
    ]);
    let inst = d.create(json!({
        "name": "times",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", script()],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    common::wait_until("burst C", BOOT, || {
        d.log_lines(&id, "tail=3")
            .iter()
            .any(|l| l == "C 3")
            .then_some(())
    });
    // The daemon goes away during the pause before D; the monitor keeps
    // writing the log and its index.
    d.kill9();
    d.spawn();
    let v = d.wait_state(&id, "Stopped", BOOT);
    assert_eq!(v["exit_code"], 0, "{v}");

    let all = stamped(&d.lodge(&["logs", &id, "--tail", "all", "--timestamps"]));
    let lines: Vec<&str> = all.iter().map(|(_, l)| l.as_str()).collect();
    let mut want: Vec<String> = Vec::new();
    for burst in ["A", "B", "C", "D"] {
        want.extend(burst_lines(burst));
    }
    assert!(lines == want, "{} lines, not the workload's", lines.len());
    assert!(all.windows(2).all(|p| p[0].0 <= p[1].0), "times go back");
    let first = |burst: &str| {
        all.iter()
            .find(|(_, l)| l.starts_with(&format!("{burst} ")))
            .expect("burst")
            .0
    };
    let last = |burst: &str| {
        all.iter()
            .rev()
            .find(|(_, l)| l.starts_with(&format!("{burst} ")))
            .expect("burst")
            .0
    };
    for (a, b, pause) in [("A", "B", 3), ("B", "C", 3), ("C", "D", 8)] {
        let gap = first(b).duration_since(last(a)).expect("in order");
        assert!(
            gap >= Duration::from_secs(pause) - Duration::from_millis(600),
            "{a}..{b}: {gap:?}"
        );
    }
    let logs = d.guests_dir().join(&id).join("logs");
    assert!(logs.join("app.log.00000001").exists(), "B rotated app.log");

    let ab = midpoint(last("A"), first("B"));
    let bc = midpoint(last("B"), first("C"));
    let cd = midpoint(last("C"), first("D"));
    let window = |since: &str, until: Option<&str>| {
        let mut args = vec!["logs", &id, "--tail", "all", "--since", since];
        if let Some(until) = until {
            args.extend(["--until", until]);
        }
        workload_lines(&d.lodge(&args))
    };
    // B alone: across the rotation.
    assert!(window(&ab, Some(&bc)) == burst_lines("B"), "B window");
    // B and C: across the rotation.
    let mut bc_lines = burst_lines("B");
    bc_lines.extend(burst_lines("C"));
    assert!(window(&ab, Some(&cd)) == bc_lines, "B+C window");
    // C to the end: across the daemon restart.
    let mut cd_lines = burst_lines("C");
    cd_lines.extend(burst_lines("D"));
    assert_eq!(window(&bc, None), cd_lines, "C+D window");
    assert_eq!(window(&cd, None), burst_lines("D"), "D window");
    // A relative --since: everything was written in the last 10 minutes.
    assert_eq!(window("10m", None).len(), want.len());

    // Straight from the directory, and with a tail of the window.
    let dir = logs.to_str().expect("utf-8 path");
    let out = d.lodge(&[
        "logs", "--dir", dir, "--since", &bc, "--until", &cd, "--tail", "2",
    ]);
    assert_eq!(workload_lines(&out), ["C 2", "C 3"]);
    // Through the API's SSE with timestamps.
    let q = format!("tail=2&since={}&timestamps=true", cd.replace(':', "%3A"));
    let events = d.log_lines(&id, &q);
    assert_eq!(events.len(), 2, "{events:?}");
    for (event, want) in events.iter().zip(["D 2", "D 3"]) {
        let (stamp, line) = event.split_once(' ').expect("stamped");
        assert!(lodge_common::time::parse_rfc3339(stamp).is_ok(), "{event}");
        assert_eq!(line, want);
    }

    // The files hold the workload's bytes only, no times, no NUL.
    let app = std::fs::read(logs.join("app.log")).expect("app.log");
    assert!(!app.contains(&0));
    assert!(String::from_utf8_lossy(&app).ends_with("D 3\n"));
}
