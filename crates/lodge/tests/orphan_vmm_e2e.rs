//! A VM whose monitor is killed (issue 10, item 6), on real VMs.
//!
//! 1. `kill -9` of the monitor takes QEMU with it (the monitor starts the
//!    VMM with `PR_SET_PDEATHSIG`); the instance is then Stopped, and
//!    `start` boots it again on the same disks (no leftover disk lock).
//! 2. A VMM that does run without its monitor (a monitor from before that
//!    fix, reproduced by starting QEMU with the recorded command line and
//!    pointing `monitor.json` at it) is reported as Unknown with a
//!    `state_error` naming it, `start` is refused instead of failing on
//!    QEMU's disk lock, and `stop` and `delete` kill exactly that process
//!    (found by pid and start time, never by name) before touching disks.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);

/// Runs the instance's QEMU command line by hand. The monitor hands QEMU
/// descriptors (`-add-fd fd=N`: the guest status channel, the fast
/// console), so a QEMU started without a monitor needs each of them too
/// ([`stray_script`]); without one it exits at start, and a test that was
/// slower than that start saw no kill. `exec` keeps the pid. `-S` keeps
/// the vCPUs stopped: the stray holds the disks as a real orphan does, and
/// no guest runs inside it that could end it on its own (a guest booted
/// with the first boot's configuration can power off mid-test).
fn stray_script(args: &[String]) -> String {
    let mut opens = String::new();
    for pair in args.windows(2).filter(|w| w[0] == "-add-fd") {
        let fd = pair[1]
            .split(',')
            .find_map(|kv| kv.strip_prefix("fd="))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("an -add-fd without its fd: {}", pair[1]));
        opens.push_str(&format!(" {fd}>>/dev/null"));
    }
    format!("exec \"$@\" -S{opens} 2>>\"$STRAY_STDERR\"")
}

fn sleeper(name: &str) -> Value {
    json!({
        "name": name,
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", "echo up; sleep 600"],
    })
}

/// Field 22 of /proc/PID/stat, `None` once the process is gone or a zombie.
fn start_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

fn monitor_record(logs: &Path) -> Value {
    let text = std::fs::read(logs.join("monitor.json")).expect("monitor.json");
    serde_json::from_slice(&text).expect("monitor.json is JSON")
}

fn pid_of(v: &Value, key: &str) -> u32 {
    v[key]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("{key} in {v}"))
}

fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -9 {pid}");
}

/// The QEMU the test starts itself; killed and reaped however the test ends.
struct Stray(Child, std::path::PathBuf);

impl Stray {
    /// The instance's QEMU command line, run by hand in its own process
    /// group from the instance directory; its stderr goes to `stderr`.
    fn spawn(argv: &[String], dir: &Path, stderr: &Path) -> Stray {
        let (program, args) = argv.split_first().expect("argv");
        let child = Command::new("sh")
            .args(["-c", &stray_script(args), "sh", program])
            .args(args)
            .env("STRAY_STDERR", stderr)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start QEMU by hand");
        Stray(child, stderr.to_path_buf())
    }

    /// Panics, with QEMU's own words, unless the stray still runs.
    fn assert_alive(&mut self, when: &str) {
        if let Ok(Some(status)) = self.0.try_wait() {
            let said = std::fs::read_to_string(&self.1).unwrap_or_default();
            panic!("the stray QEMU ended ({status}) {when}; its stderr:\n{said}");
        }
    }
}

impl Drop for Stray {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            if let Err(e) = self.0.kill() {
                eprintln!("killing the stray VMM: {e}");
            }
        }
        if let Err(e) = self.0.wait() {
            eprintln!("reaping the stray VMM: {e}");
        }
    }
}

#[test]
fn killing_the_monitor_kills_the_vmm_and_orphans_are_reconciled() {
    require_guest!();
    let d = Daemon::start();
    let inst = d.create(sleeper("orphan"));
    let id = inst["id"].as_str().expect("id").to_string();
    d.wait_state(&id, "Running", BOOT);
    let logs = d.guests_dir().join(&id).join("logs");
    let record = monitor_record(&logs);
    let (monitor, qemu) = (pid_of(&record, "pid"), pid_of(&record, "child_pid"));
    let qemu_ticks = start_ticks(qemu).expect("QEMU runs");
    assert_eq!(record["child_start_ticks"], qemu_ticks, "{record}");
    let argv: Vec<String> = std::fs::read(format!("/proc/{qemu}/cmdline"))
        .expect("QEMU's command line")
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();

    // 1. kill -9 of the monitor: QEMU goes with it, the API says Stopped.
    kill9(monitor);
    wait_until(
        "QEMU to die with its monitor",
        Duration::from_secs(10),
        || (start_ticks(qemu) != Some(qemu_ticks)).then_some(()),
    );
    let stopped = d.wait_state(&id, "Stopped", Duration::from_secs(10));
    assert!(stopped.get("state_error").is_none(), "{stopped}");
    // ...and starts again on the same disks.
    let r = d.api("POST", &format!("/instances/{id}/start"), None);
    assert_eq!(
        r.status, 200,
        "start after the monitor was killed: {}",
        r.text
    );
    d.wait_state(&id, "Running", BOOT);
    let r = d.api("POST", &format!("/instances/{id}/stop"), None);
    assert_eq!(r.status, 200, "stop: {}", r.text);
    d.wait_state(&id, "Stopped", Duration::from_secs(30));

    // 2. A VMM running without any monitor: the instance's own QEMU command
    // line, started by hand in its own process group, recorded as the
    // monitor's child (what a monitor without PDEATHSIG left behind).
    let scratch = tempfile::tempdir().expect("scratch dir");
    let dir = d.guests_dir().join(&id);
    let mut stray = Stray::spawn(&argv, &dir, &scratch.path().join("stray1.err"));
    let pid = stray.0.id();
    let ticks = start_ticks(pid).expect("stray QEMU runs");
    let mut orphan_record = monitor_record(&logs);
    orphan_record["child_pid"] = pid.into();
    orphan_record["child_start_ticks"] = ticks.into();
    std::fs::write(logs.join("monitor.json"), orphan_record.to_string()).expect("record");

    let seen = d.wait_state(&id, "Unknown", Duration::from_secs(10));
    let why = seen["state_error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("pid {pid}")) && why.contains("without its monitor"),
        "{seen}"
    );
    // The disks are in use: start is refused up front (409), not by QEMU.
    let r = d.api("POST", &format!("/instances/{id}/start"), None);
    assert_eq!(r.status, 409, "start with an orphan VMM: {}", r.text);
    // A pid reused by another process is not ours: same pid, other start.
    let mut stranger = orphan_record.clone();
    stranger["child_start_ticks"] = (ticks + 1).into();
    std::fs::write(logs.join("monitor.json"), stranger.to_string()).expect("record");
    assert_eq!(d.state(&id), "Stopped", "a pid alone proves nothing");
    std::fs::write(logs.join("monitor.json"), orphan_record.to_string()).expect("record");
    assert_eq!(d.state(&id), "Unknown");

    // stop kills exactly that process.
    stray.assert_alive("before the stop");
    let r = d.api("POST", &format!("/instances/{id}/stop"), None);
    assert_eq!(r.status, 200, "stop of an orphan: {}", r.text);
    let status = stray.0.wait().expect("reap");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the orphan was killed"
    );
    let after = d.get(&id);
    assert_eq!(after["state"], "Stopped", "{after}");

    // delete does the same before removing the disks.
    let mut stray2 = Stray::spawn(&argv, &dir, &scratch.path().join("stray2.err"));
    let pid2 = stray2.0.id();
    orphan_record["child_pid"] = pid2.into();
    orphan_record["child_start_ticks"] = start_ticks(pid2).expect("runs").into();
    std::fs::write(logs.join("monitor.json"), orphan_record.to_string()).expect("record");
    d.wait_state(&id, "Unknown", Duration::from_secs(10));
    stray2.assert_alive("before the delete");
    let r = d.api("DELETE", &format!("/instances/{id}"), None);
    assert_eq!(r.status, 204, "delete of an orphan: {}", r.text);
    let status = stray2.0.wait().expect("reap");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the orphan was killed before its disks were removed"
    );
    assert!(!d.guests_dir().join(&id).exists());
}
