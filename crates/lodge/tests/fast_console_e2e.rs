//! The fast console on real VMs (issue 17, item 1): the workload writes to
//! a pipe that lodge-init relays to a virtio-serial port, which the monitor
//! merges into `app.log` with the serial console (the kernel's and
//! lodge-init's lines). Its stdout is a pipe it can reopen by name, its
//! stdin the port.
//!
//! - Megabytes of numbered lines through the fast console with rotation at
//!   1 MiB and two followers attached the whole time (plus four through the
//!   daemon's API, served by one shared reader: each gets every line, all
//!   four the same bytes), and the monitor
//!   frozen (SIGSTOP) for seconds in the middle so the pipe fills: every
//!   line exactly once and in order in the retained segments and in each
//!   follower's output, no NUL byte anywhere (the monitor keeps the pipe
//!   blocking, see `lodge_monitor`'s `blocking`).
//! - With a kernel that is not quiet (`LODGE_KERNEL_ARGS=loglevel=7`), the
//!   kernel's boot lines come before the workload's first line.
//! - `LODGE_CONSOLE=serial` still runs the workload on the UART.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{busybox_rootfs, Daemon};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

/// Numbered lines the workload prints (about 5 MB, several rotations at
/// 1 MiB, well under a minute under TCG on 2 busy cores).
const LINES: u64 = 120_000;

/// Each line: `line <n> <pad>`; awk is busybox's, run in the guest.
/// The lines are made first (awk is slow under emulation), then `cat` sends
/// them at the console's full speed, a second after `begin`.
fn numbered_lines_script(lines: u64) -> String {
    format!(
        "awk 'BEGIN {{ for (i = 1; i <= {lines}; i++) \
         printf \"line %d ......................\\n\", i }}' > /tmp/lines; \
         echo begin; sleep 1; cat /tmp/lines; echo end"
    )
}

/// Says what the workload's stdout and stdin are, then reopens its stdout
/// by name, directly and through docker's `/dev/stdout` link (images link
/// their log files there, e.g. nginx).
const STDIO_PROBE: &str = "echo stdout=$(readlink /proc/$$/fd/1) stdin=$(readlink /proc/$$/fd/0); \
     echo reopened stdout > /proc/self/fd/1; echo linked stdout > /dev/stdout";

fn expected_line(i: u64) -> String {
    format!("line {i} ......................")
}

/// Starts `lodge logs --dir DIR --tail all -f`, collecting its output.
fn follower(dir: &Path) -> (Child, JoinHandle<Vec<u8>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lodge"))
        .args(["logs", "--dir"])
        .arg(dir)
        .args(["--tail", "all", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn follower");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).expect("follower output");
        buf
    });
    (child, reader)
}

/// Starts `lodge logs ID --tail all -f` through the daemon's API,
/// collecting its output.
fn api_follower(d: &Daemon, id: &str) -> (Child, JoinHandle<Vec<u8>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lodge"))
        .args(["logs", "--tail", "all", "-f", id])
        .env("LODGE_DATA_DIR", &d.data_dir)
        .env("LODGE_BASE_URL", &d.base)
        .env("LODGE_API_KEY", &d.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn API follower");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).expect("API follower output");
        buf
    });
    (child, reader)
}

/// `app.log`'s retained segments, oldest first, concatenated.
fn retained(logs: &Path) -> Vec<u8> {
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(logs)
        .expect("logs dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let seq = match name.strip_prefix("app.log") {
                Some("") => u64::MAX,
                Some(rest) => rest.strip_prefix('.')?.parse().ok()?,
                None => return None,
            };
            Some((seq, e.path()))
        })
        .collect();
    segs.sort();
    let mut all = Vec::new();
    for (_, path) in segs {
        all.extend(std::fs::read(path).expect("segment"));
    }
    all
}

/// The workload's lines, checked: exactly `begin`, lines 1..=n, `end`, in
/// order, each once, and nothing else between them but whole kernel lines
/// (`[    1.234] ...`, from the other channel, merged at line boundaries).
fn check_workload_lines(text: &str, n: u64, what: &str) {
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('[')).collect();
    let begin = lines
        .iter()
        .position(|l| *l == "begin")
        .unwrap_or_else(|| panic!("{what}: no begin line"));
    let mut want = 1;
    for (at, line) in lines[begin + 1..].iter().enumerate() {
        if want > n {
            assert_eq!(*line, "end", "{what}: after the last line");
            return;
        }
        assert_eq!(
            *line,
            expected_line(want),
            "{what}: line {} after begin",
            at + 1
        );
        want += 1;
    }
    panic!("{what}: stopped at line {want} of {n}");
}

#[test]
fn numbered_lines_through_the_fast_console_with_rotation_and_followers() {
    require_guest!();
    let d = Daemon::start_with_env(&[
        ("LODGE_LOG_MAX_SIZE", "1MiB"),
        ("LODGE_LOG_MAX_FILES", "100"),
        ("LODGE_KERNEL_ARGS", "loglevel=7"),
    ]);
    let inst = d.create(json!({
        "name": "fastcon",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", format!("{}; {STDIO_PROBE}", numbered_lines_script(LINES))],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    let logs = d.guests_dir().join(&id).join("logs");
    // Attached while the VM boots: they see everything from byte 0.
    common::wait_until("the monitor", BOOT, || {
        logs.join(lodge_monitor::MONITOR_JSON)
            .exists()
            .then_some(())
    });
    let (mut f1, out1) = follower(&logs);
    let (mut f2, out2) = follower(&logs);
    // Four more through the daemon, which serves them from one shared
    // reader once each has sent its tail.
    let mut api_followers: Vec<_> = (0..4).map(|_| api_follower(&d, &id)).collect();
    let started = Instant::now();
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(logs.join(lodge_monitor::MONITOR_JSON)).expect("monitor.json"),
    )
    .expect("json");
    let monitor = record["pid"].as_u64().expect("pid").to_string();
    // Freeze the monitor while the workload writes: the pipe fills and the
    // guest must wait, not lose bytes.
    common::wait_until("the workload to begin", BOOT, || {
        String::from_utf8_lossy(&retained(&logs))
            .contains("\nbegin\n")
            .then_some(())
    });
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &monitor])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(4));
    signal("-CONT");
    let v = d.wait_state(&id, "Stopped", BOOT);
    eprintln!("run took {:?}", started.elapsed());
    assert_eq!(v["exit_code"], 0, "{v}");

    let all = retained(&logs);
    assert!(!all.contains(&0), "a NUL byte in app.log");
    let text = String::from_utf8_lossy(&all);
    check_workload_lines(&text, LINES, "app.log");
    let segments = std::fs::read_dir(&logs)
        .expect("logs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("app.log."))
        .count();
    assert!(segments >= 3, "rotated {segments} times");

    // The kernel's boot lines (the UART) come before the workload's first
    // line (the virtio console).
    let begin = text.find("\nbegin\n").expect("begin");
    let kernel = text
        .find("Linux version")
        .expect("the kernel's banner in app.log");
    assert!(kernel < begin, "kernel banner after the workload's output");
    assert!(
        text[..begin].contains("virtio"),
        "boot lines before the workload"
    );
    // The workload's output is a pipe (relayed to the port), which it can
    // reopen by name (a port can be opened only once); its stdin is the
    // port.
    assert!(text.contains("\nstdout=pipe:"), "stdout not a pipe");
    assert!(text.contains(" stdin=/dev/vport"), "stdin not the port");
    assert!(text.contains("\nreopened stdout\n"), "reopening stdout");
    assert!(text.contains("\nlinked stdout\n"), "writing to /dev/stdout");

    for (child, out, name) in [(&mut f1, out1, "follower 1"), (&mut f2, out2, "follower 2")] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "{name} did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = out.join().expect("follower reader");
        assert!(got == all, "{name} differs from the retained segments");
    }
    let mut first: Option<Vec<u8>> = None;
    for (i, (child, out)) in api_followers.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "API follower {i} did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = std::mem::replace(out, std::thread::spawn(Vec::new))
            .join()
            .expect("API follower reader");
        check_workload_lines(
            &String::from_utf8_lossy(&got),
            LINES,
            &format!("API follower {i}"),
        );
        match &first {
            None => first = Some(got),
            Some(first) => assert!(&got == first, "API follower {i} differs from follower 0"),
        }
    }
}

#[test]
fn serial_console_mode_still_works() {
    require_guest!();
    let d = Daemon::start_with_env(&[("LODGE_CONSOLE", "serial")]);
    let inst = d.create(json!({
        "name": "serialcon",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", format!(
            "{}; {STDIO_PROBE}; grep -qs org.lodge.console /sys/class/virtio-ports/*/name \
             || echo no-fast-port",
            numbered_lines_script(200)
        )],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    let v = d.wait_state(&id, "Stopped", BOOT);
    assert_eq!(v["exit_code"], 0, "{v}");
    let logs = d.guests_dir().join(&id).join("logs");
    let text = String::from_utf8(retained(&logs)).expect("utf-8");
    check_workload_lines(&text, 200, "app.log");
    assert!(text.contains("no-fast-port"), "{text}");
    assert!(
        text.contains("\nstdout=/dev/ttyS0 stdin=/dev/ttyS0\n"),
        "{text}"
    );
    let meta =
        std::fs::read_to_string(d.guests_dir().join(&id).join("metadata.json")).expect("metadata");
    let meta: serde_json::Value = serde_json::from_str(&meta).expect("json");
    assert_eq!(meta["console"], "serial", "{meta}");
}
