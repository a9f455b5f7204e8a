//! End-to-end: programs in the guest start with the signal state docker,
//! runc and systemd give theirs: no signal ignored, none blocked. Checked
//! for the workload that the guest init starts and for a command exec'd
//! through the guest agent, by reading `SigIgn`/`SigBlk` from
//! `/proc/self/status` and by running a pipeline whose writer only ends
//! when SIGPIPE kills it (`yes | head`). One VM serves both cases.
//!
//! Both run `sh -c`, and the status read is that of `grep`, a child of the
//! shell: busybox's shell ignores SIGQUIT itself (as bash does) but gives
//! its children what it inherited, which is what is checked here.

mod common;

use common::OutputLimited;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{busybox_rootfs, wait_until, Daemon, LODGE};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

/// How long the pipeline may take under TCG before it counts as hung (with
/// SIGPIPE ignored, `yes` never ends).
const PIPELINE: Duration = Duration::from_secs(90);

/// Prints the `SigBlk`/`SigIgn` lines of a child of the shell, then
/// `pipe=` and the number of bytes that came through `yes | head`.
const CHECKS: &str = "grep -E '^Sig(Blk|Ign)' /proc/self/status; \
     echo \"pipe=$(yes | head -c 1000000 | wc -c)\"";

/// What is wrong with a check's output (`who` names the process checked);
/// empty when both masks are zero and the pipeline carried 1000000 bytes.
fn problems(who: &str, lines: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for field in ["SigBlk:", "SigIgn:"] {
        match lines.iter().find_map(|l| l.strip_prefix(field)) {
            Some(mask) if mask.trim().bytes().all(|b| b == b'0') => {}
            Some(mask) => found.push(format!("{who}: {field} {} (want all zero)", mask.trim())),
            None => found.push(format!("{who}: no {field} line in {lines:?}")),
        }
    }
    match lines.iter().find_map(|l| l.strip_prefix("pipe=")) {
        Some(n) if n.trim() == "1000000" => {}
        Some(n) => found.push(format!(
            "{who}: yes | head -c 1000000 | wc -c printed {n:?}"
        )),
        None => found.push(format!(
            "{who}: yes | head -c 1000000 did not end: {lines:?}"
        )),
    }
    found
}

/// `lodge exec ARGS` against the daemon; returns (code, stdout, stderr).
fn exec(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(LODGE)
        .arg("exec")
        .args(args)
        .env("LODGE_BASE_URL", &d.base)
        .env("LODGE_API_KEY", &d.token)
        .stdin(Stdio::null())
        .output_limited()
        .expect("run lodge exec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn workload_and_exec_start_with_default_signal_dispositions() {
    require_guest!();
    let d = Daemon::start();
    // The workload checks its own state at once, and runs the pipeline
    // only when the exec below is done, so a hung `yes` (the bug) cannot
    // slow the exec down on the VM's one CPU.
    let workload = format!(
        "grep -E '^Sig(Blk|Ign)' /proc/self/status; \
         until [ -e /tmp/go ]; do sleep 1; done; \
         {CHECKS}; \
         while :; do sleep 3600; done"
    );
    let vm = d.create(json!({
        "name": "signals",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", workload],
    }));
    let id = vm["id"].as_str().expect("id").to_string();
    d.wait_state(&id, "Running", BOOT);

    let mut found = Vec::new();

    // Through the agent. The timeout ends a hung pipeline (exit 124).
    let timeout = PIPELINE.as_secs().to_string();
    let (code, out, err) = exec(
        &d,
        &[
            "--wait-for-agent",
            "120",
            "--timeout",
            &timeout,
            "signals",
            "sh",
            "-c",
            CHECKS,
        ],
    );
    if code != 0 {
        found.push(format!("exec: exit code {code}, stderr {err:?}"));
    }
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    found.extend(problems("exec", &lines));

    // The workload, started by the guest init.
    let (code, _, err) = exec(&d, &["signals", "touch", "/tmp/go"]);
    assert_eq!(code, 0, "touch /tmp/go: {err}");
    let deadline = std::time::Instant::now() + PIPELINE;
    let lines = loop {
        let lines = d.log_lines(&id, "tail=100");
        if lines.iter().any(|l| l.starts_with("pipe=")) || std::time::Instant::now() >= deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    found.extend(problems("workload", &lines));

    let r = d.api("DELETE", &format!("/instances/{id}"), None);
    assert!(r.status < 300, "delete: {} {}", r.status, r.text);
    wait_until("the VM to be gone", BOOT, || {
        let r = d.api("GET", &format!("/instances/{id}"), None);
        (r.status == 404).then_some(())
    });
    assert!(found.is_empty(), "{found:#?}");
}
