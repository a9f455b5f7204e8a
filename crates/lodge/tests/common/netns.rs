//! The shared half of tests that build a world of network namespaces and
//! re-run themselves inside it (network_e2e, ingress_e2e,
//! auto_standby_e2e): running the one test under `ip netns exec`, and
//! tearing a namespace down with whatever processes the inner run left.

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use super::OutputLimited;

/// Re-runs exactly `test` of this test binary inside namespace `ns`, with
/// `inner_var` set (the inner run's sign that it is inside) plus `env`;
/// prints its output and fails unless it ran that one test and passed.
pub fn run_test_inside(
    ns: &str,
    test: &str,
    inner_var: &str,
    env: &[(&str, &OsStr)],
    limit: Duration,
) {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(inner_var, "1")
        .envs(env.iter().copied())
        .output_limited_for(limit)
        .expect("re-run the test inside the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- inner stdout ---\n{stdout}\n--- inner stderr ---\n{stderr}");
    assert!(out.status.success(), "inner run of {test} failed");
    assert!(
        stdout.contains("1 passed"),
        "inner run of {test} did not run exactly the test"
    );
}

/// Kills every process left in namespace `ns` (daemon, monitors, QEMU)
/// and deletes it; problems are warnings, as this runs in `Drop`.
pub fn remove(ns: &str) {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output_limited()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for pid in pids.split_whitespace() {
        if let Err(e) = Command::new("kill").args(["-9", pid]).status() {
            eprintln!("warning: kill {pid}: {e}");
        }
    }
    match Command::new("ip").args(["netns", "del", ns]).status() {
        Ok(s) if s.success() => {}
        other => eprintln!("warning: deleting netns {ns}: {other:?}"),
    }
}
