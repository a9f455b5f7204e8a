//! End-to-end: Cloud Hypervisor instances through lodge's API, with their
//! console captured by the same per-VM monitor as QEMU's.
//!
//! Runs only where a Cloud Hypervisor binary is configured
//! (`LODGE_CH_BINARY`); elsewhere (CI: there is no package of it) it says
//! it was skipped and passes. On this project's hosts `/dev/kvm` is a
//! software shim under which every Cloud Hypervisor guest prints its early
//! boot lines and then dies with a vCPU `InternalError`, with Cloud
//! Hypervisor exiting 0; so this test checks everything up to that point,
//! and that the crash is reported as one. Guest init never runs under it,
//! so nothing here needs the guest agent or init's status channel.
//!
//! One daemon and three VMs share the test (a CH VM that is left to crash,
//! a CH VM that is paused, resumed, stopped and deleted, and a QEMU VM
//! created by the same call with only `hypervisor` changed), so the boot
//! waits overlap.
//!
//! The wholeness check reads printk times, so run it on Debian's kernel
//! (`LODGE_SYSTEM_DIR=.lodge-cache/system-debian`): under CH's shim the
//! lodge kernel stalls before it stamps any line (it has no
//! `CONFIG_PRINTK_TIME`; `printk.time=1` applies only once parsed).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{busybox_rootfs, wait_until, Daemon};
use lodge_hypervisor::{CloudHypervisorBackend, Hypervisor, VmConfig, VmState};
use serde_json::json;

/// The kernel's first line (printed through `earlyprintk=ttyS0`).
const BANNER: &str = "Linux version";
/// How long the first console line may take (the shim is slow to start).
const FIRST_LINES: Duration = Duration::from_secs(120);
/// How long the guest may take to hit the vCPU error (about 80 s here).
const CRASH: Duration = Duration::from_secs(240);

fn body(name: &str, hypervisor: &str, script: &str) -> serde_json::Value {
    json!({
        "name": name,
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", script],
        "hypervisor": hypervisor,
    })
}

/// The configured Cloud Hypervisor binary, or why this test is skipped.
fn ch_binary() -> Result<PathBuf, String> {
    let Some(bin) = std::env::var_os("LODGE_CH_BINARY").filter(|v| !v.is_empty()) else {
        return Err("LODGE_CH_BINARY is not set (no Cloud Hypervisor to run)".into());
    };
    let bin = PathBuf::from(bin);
    if !bin.is_file() {
        return Err(format!("LODGE_CH_BINARY={} is not a file", bin.display()));
    }
    Ok(bin)
}

fn app_log(d: &Daemon, id: &str) -> PathBuf {
    d.guests_dir().join(id).join("logs").join("app.log")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// The printk time a kernel console line starts with (`[    1.234] …`).
fn stamp(line: &str) -> Option<f64> {
    line.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(t, _)| t.trim().parse::<f64>().ok())
}

/// The kernel's console lines must be whole and in order: each complete
/// line carries a printk time no earlier than the one before (a lost or
/// torn piece shows up as a line without one, or time going back). After
/// an outside truncate the file may start mid-line: `skip_first` skips it.
/// From the start of a log, the boot banner `earlyprintk` prints before the
/// kernel has parsed `printk.time=1` carries no time (the lodge kernel is
/// built without `CONFIG_PRINTK_TIME`): lines before the first stamped one
/// are skipped there, and every line after it must be stamped.
fn assert_kernel_lines_whole(text: &str, skip_first: bool) {
    let mut last = -1.0f64;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let skip = usize::from(skip_first);
    let lines: Vec<&str> = complete
        .lines()
        .skip(skip)
        .filter(|l| !l.trim().is_empty())
        .skip_while(|l| !skip_first && stamp(l).is_none())
        .collect();
    assert!(
        !lines.is_empty(),
        "no stamped kernel line (under CH the lodge kernel, without CONFIG_PRINTK_TIME, \
         stamps nothing before its command line is parsed: run with Debian's system dir):\n---\n{text}"
    );
    for line in lines {
        let t =
            stamp(line).unwrap_or_else(|| panic!("not a whole kernel line: {line:?}\n---\n{text}"));
        assert!(t >= last, "time went back at {line:?}");
        last = t;
    }
}

#[test]
fn cloud_hypervisor_instances_boot_log_through_the_monitor_and_crash_visibly() {
    require_guest!();
    let bin = match ch_binary() {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("skipping ch_e2e (Cloud Hypervisor end-to-end): {why}");
            return;
        }
    };
    let started = Instant::now();
    let mut d = Daemon::start_with_env(&[
        ("LODGE_CH_BINARY", bin.to_str().expect("utf-8 path")),
        // `quiet` would hide the kernel's early lines.
        ("LODGE_KERNEL_ARGS", "loglevel=7"),
        // The serial console only: no fast console to merge.
        ("LODGE_CONSOLE", "serial"),
    ]);

    // Both runtimes are listed, and available.
    let caps = d.api("GET", "/capabilities", None);
    assert_eq!(caps.status, 200, "{}", caps.text);
    let ch_caps = caps.body["runtimes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "cloud-hypervisor"))
        .unwrap_or_else(|| panic!("no cloud-hypervisor runtime: {}", caps.text))
        .clone();
    assert_eq!(ch_caps["available"], true, "{ch_caps}");

    // The same call, only `hypervisor` differs.
    let crashing = d.create(body("ch-crash", "cloud-hypervisor", "echo never"));
    let ch = crashing["id"].as_str().expect("id").to_string();
    assert_eq!(crashing["hypervisor"], "cloud-hypervisor", "{crashing}");
    let stopped = d.create(body("ch-stop", "cloud-hypervisor", "echo never"));
    let ch2 = stopped["id"].as_str().expect("id").to_string();
    let qemu = d.create(body("qemu-twin", "qemu", "echo hello from qemu"));
    let q = qemu["id"].as_str().expect("id").to_string();
    assert_eq!(qemu["hypervisor"], "qemu", "{qemu}");
    eprintln!(
        "ch_e2e: created {ch} and {ch2} (cloud-hypervisor), {q} (qemu) after {:?}",
        started.elapsed()
    );

    // Info through the API: a live VMM whose guest has not reported.
    let info = d.get(&ch);
    assert_eq!(info["hypervisor"], "cloud-hypervisor", "{info}");
    assert_eq!(info["state"], "Initializing", "{info}");

    // The kernel's early lines reach app.log through the monitor.
    let log = app_log(&d, &ch);
    wait_until("the kernel banner in app.log", FIRST_LINES, || {
        String::from_utf8_lossy(&read(&log))
            .contains(BANNER)
            .then_some(())
    });
    eprintln!("ch_e2e: first console lines after {:?}", started.elapsed());

    // The daemon is killed mid-boot; the monitor keeps capturing.
    let before = read(&log);
    d.kill9();
    std::thread::sleep(Duration::from_secs(3));
    d.spawn();
    wait_until("more console output", FIRST_LINES, || {
        (read(&log).len() > before.len()).then_some(())
    });
    let after = read(&log);
    assert!(
        after.starts_with(&before),
        "the console log was rewritten across the daemon's restart"
    );
    assert_kernel_lines_whole(&String::from_utf8_lossy(&after), false);
    assert_eq!(d.state(&ch), "Initializing");

    // An outside copytruncate (logrotate's) leaves no NUL: the monitor
    // appends, it never writes at an old offset.
    std::fs::copy(&log, log.with_extension("log.rotated")).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    wait_until("console output after the truncate", FIRST_LINES, || {
        (!read(&log).is_empty()).then_some(())
    });
    let truncated = read(&log);
    assert!(
        !truncated.contains(&0),
        "a NUL byte in app.log after copytruncate"
    );

    // Pause and resume (lodge's API has no such verb: hypeman's standby
    // is its pause, which Cloud Hypervisor does not support yet), on the
    // VMM lodge started, through the backend lodge drives it with.
    let backend = CloudHypervisorBackend::new(&bin);
    let mut vm = VmConfig::new(
        &ch2,
        "ch-stop",
        "/k",
        "/i",
        d.guests_dir().join(&ch2).join("qmp.sock"),
        "/s.log",
    );
    vm.vcpus = 1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        assert_eq!(backend.state(&vm).await.expect("state"), VmState::Running);
        backend.pause(&vm).await.expect("pause");
        assert_eq!(backend.state(&vm).await.expect("state"), VmState::Paused);
        backend.resume(&vm).await.expect("resume");
        assert_eq!(backend.state(&vm).await.expect("state"), VmState::Running);
    });
    // Standby is refused clearly, and the VM goes on.
    let r = d.api("POST", &format!("/instances/{ch2}/standby"), None);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("cloud-hypervisor does not support snapshot")),
        "{}",
        r.text
    );
    assert_eq!(d.state(&ch2), "Initializing");

    // Stop (power button, then the VMM is told to end) and delete.
    let r = d.api("POST", &format!("/instances/{ch2}/stop"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let v = d.wait_state(&ch2, "Stopped", Duration::from_secs(30));
    assert!(v["state_error"].is_null(), "a stop is no crash: {v}");
    let r = d.api("DELETE", &format!("/instances/{ch2}"), None);
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(d.api("GET", &format!("/instances/{ch2}"), None).status, 404);
    eprintln!(
        "ch_e2e: stopped and deleted {ch2} after {:?}",
        started.elapsed()
    );

    // The QEMU twin's console went through the same monitor code.
    d.wait_state(&q, "Stopped", Duration::from_secs(180));
    let qlog = String::from_utf8_lossy(&read(&app_log(&d, &q))).into_owned();
    assert!(qlog.contains("hello from qemu"), "{qlog}");

    // The vCPU error Cloud Hypervisor exits 0 after is a crash.
    let v = d.wait_state(&ch, "Stopped", CRASH);
    eprintln!(
        "ch_e2e: {ch} ended after {:?}: state_error={} exit_message={}",
        started.elapsed(),
        v["state_error"],
        v["exit_message"]
    );
    let err = v["state_error"].as_str().unwrap_or("");
    assert!(
        err.starts_with("the VMM crashed: ") && err.contains("VCPU generated error"),
        "{v}"
    );
    let exit = d.guests_dir().join(&ch).join("logs").join("exit.json");
    let exit: serde_json::Value = serde_json::from_slice(&read(&exit)).expect("exit.json");
    assert_eq!(exit["code"], 0, "Cloud Hypervisor exits 0: {exit}");
    let whole = read(&log);
    assert!(!whole.contains(&0), "a NUL byte in app.log");
    assert_kernel_lines_whole(&String::from_utf8_lossy(&whole), true);
    eprintln!(
        "ch_e2e: app.log of {ch} ends:\n{}",
        String::from_utf8_lossy(&whole[whole.len().saturating_sub(400)..])
    );

    let r = d.api("DELETE", &format!("/instances/{ch}"), None);
    assert_eq!(r.status, 204, "{}", r.text);
    let r = d.api("DELETE", &format!("/instances/{q}"), None);
    assert_eq!(r.status, 204, "{}", r.text);
    eprintln!("ch_e2e: done in {:?}", started.elapsed());
}
