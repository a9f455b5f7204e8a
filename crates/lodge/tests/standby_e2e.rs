//! End-to-end standby and restore on real VMs: the guest's memory comes
//! back (a counter kept in a shell variable continues), the console log
//! is appended to across every cycle with each line exactly once and no
//! NUL, and wrong states, bad input, a saved state from another QEMU, a
//! corrupt state file and a daemon restart mid-operation all answer
//! clearly and lose nothing.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);

/// A guest printing `line N` every 50 ms, N kept in shell memory only.
fn counter(name: &str) -> Value {
    json!({
        "name": name,
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done"],
    })
}

fn app_log(d: &Daemon, id: &str) -> PathBuf {
    d.guests_dir().join(id).join("logs").join("app.log")
}

/// The numbers of the `line N` lines in the console log, checked to be
/// 1, 2, 3, … with nothing else in between, and no NUL byte.
fn numbers(d: &Daemon, id: &str) -> Vec<u64> {
    let bytes = std::fs::read(app_log(d, id)).expect("read app.log");
    assert!(!bytes.contains(&0), "a NUL byte in the console log");
    let text = String::from_utf8(bytes).expect("utf-8 log");
    // Only whole lines: the monitor may be writing the last one.
    let text = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(n) = line.strip_prefix("line ") else {
            panic!("unexpected console line {line:?}");
        };
        out.push(n.trim_end_matches('\r').parse::<u64>().expect("number"));
    }
    out
}

fn last_number(d: &Daemon, id: &str) -> u64 {
    numbers(d, id).last().copied().unwrap_or(0)
}

fn post(d: &Daemon, path: &str) -> common::Response {
    d.api("POST", path, None)
}

fn wait_api(d: &Daemon, id: &str, state: &str, timeout: &str) -> Value {
    let r = d.api(
        "GET",
        &format!("/instances/{id}/wait?state={state}&timeout={timeout}"),
        None,
    );
    assert_eq!(r.status, 200, "wait: {}", r.text);
    r.body
}

#[test]
fn standby_and_restore_keep_memory_and_the_log_five_times() {
    require_guest!();
    let d = Daemon::start();
    cycles(&d, 5);
    // The RAM file stays beside the disks; the state file is the devices.
    let id = d.get("sleeper")["id"].as_str().expect("id").to_string();
    assert!(d.guests_dir().join(&id).join("memory.ram").exists());
    // Stop and delete work on a restored instance; stop drops the RAM.
    assert_eq!(post(&d, &format!("/instances/{id}/stop")).status, 200);
    assert!(!d.guests_dir().join(&id).join("memory.ram").exists());
    assert_eq!(
        d.api("DELETE", &format!("/instances/{id}"), None).status,
        204
    );
}

/// The same with anonymous guest RAM: standby streams it to the file.
#[test]
fn standby_and_restore_with_ram_streamed_to_the_state_file() {
    require_guest!();
    let d = Daemon::start_with_env(&[("LODGE_MEMORY_FILE", "off")]);
    cycles(&d, 2);
    let id = d.get("sleeper")["id"].as_str().expect("id").to_string();
    assert!(!d.guests_dir().join(&id).join("memory.ram").exists());
}

/// `n` standby/restore cycles of a counter guest named `sleeper`.
fn cycles(d: &Daemon, n: usize) {
    let id = d.create(counter("sleeper"))["id"]
        .as_str()
        .expect("id")
        .to_string();
    let w = wait_api(d, &id, "Running", "2m");
    assert_eq!(w, json!({"state": "Running", "timed_out": false}), "{w}");
    wait_until("the counter to run", BOOT, || {
        (last_number(d, &id) >= 5).then_some(())
    });
    let mut log_len = 0;
    for cycle in 0..n {
        let t0 = Instant::now();
        let r = post(d, &format!("/instances/{id}/standby"));
        assert_eq!(r.status, 200, "standby {cycle}: {}", r.text);
        let standby_ms = t0.elapsed().as_millis();
        assert_eq!(r.body["state"], "Standby", "{}", r.text);
        assert_eq!(r.body["has_snapshot"], true, "{}", r.text);
        assert_eq!(
            wait_api(d, &id, "Standby", "1s"),
            json!({"state": "Standby", "timed_out": false})
        );
        let before = last_number(d, &id);
        // Asleep: not a single line more.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(last_number(d, &id), before, "output while in standby");
        let len = std::fs::metadata(app_log(d, &id)).expect("log").len();
        assert!(len >= log_len, "the log shrank: {len} < {log_len}");
        log_len = len;

        let t0 = Instant::now();
        let r = post(d, &format!("/instances/{id}/restore"));
        assert_eq!(r.status, 200, "restore {cycle}: {}", r.text);
        let restore_ms = t0.elapsed().as_millis();
        assert_eq!(r.body["state"], "Running", "{}", r.text);
        assert_eq!(r.body["has_snapshot"], false, "{}", r.text);
        eprintln!("cycle {cycle}: standby {standby_ms} ms, restore {restore_ms} ms");
        // The counter continues from memory: the next line is before + 1
        // (checked by `numbers`), not 1 again.
        wait_until("the counter to continue", Duration::from_secs(30), || {
            (last_number(d, &id) >= before + 3).then_some(())
        });
    }
    let all = numbers(d, &id);
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(
        all, expected,
        "every line exactly once, in order, across {n} standby/restore cycles"
    );
    let ops = d.log_lines(&id, "source=lodge&tail=100");
    assert_eq!(
        ops.iter().filter(|l| l.contains("restore: VMM up")).count(),
        n,
        "{ops:?}"
    );
}

/// Edits the instance record at `path` (a JSON pointer) on disk.
fn edit_record(d: &Daemon, id: &str, edit: impl FnOnce(&mut Value)) {
    let path = d.guests_dir().join(id).join("metadata.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("encode")).expect("write");
}

#[test]
fn wrong_states_bad_input_and_broken_states_answer_clearly() {
    require_guest!();
    let mut d = Daemon::start();
    let id = d.create(counter("edge"))["id"]
        .as_str()
        .expect("id")
        .to_string();

    // Wait: bad input and a timeout.
    for (query, why) in [
        ("", "no state"),
        ("state=Sleeping", "unknown state"),
        ("state=Running&timeout=soon", "bad duration"),
    ] {
        let r = d.api("GET", &format!("/instances/{id}/wait?{query}"), None);
        assert_eq!(r.status, 400, "{why}: {}", r.text);
        assert_eq!(r.body["code"], "bad_request", "{}", r.text);
    }
    let r = d.api("GET", "/instances/nosuch/wait?state=Running", None);
    assert_eq!(r.status, 404, "{}", r.text);
    let t0 = Instant::now();
    let w = wait_api(&d, &id, "Standby", "300ms");
    assert_eq!(w["timed_out"], true, "{w}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    wait_api(&d, &id, "Running", "2m");

    // Restore without a saved state, a compression level out of range: refused.
    let r = post(&d, &format!("/instances/{id}/restore"));
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["code"], "invalid_state", "{}", r.text);
    let r = d.api(
        "POST",
        &format!("/instances/{id}/standby"),
        Some(&json!({"compression": {"enabled": true, "algorithm": "zstd", "level": 40}})),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(d.state(&id), "Running");

    // A standby that fails mid-way (the state file cannot be created: an
    // immutable directory, which stops root too) continues the guest.
    let state_dir = d.guests_dir().join(&id).join("standby");
    std::fs::create_dir_all(&state_dir).expect("mkdir");
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&state_dir)
        .status()
        .is_ok_and(|s| s.success());
    if immutable {
        let before = last_number(&d, &id);
        let r = post(&d, &format!("/instances/{id}/standby"));
        let undo = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&state_dir)
            .status();
        assert!(undo.is_ok_and(|s| s.success()), "chattr -i");
        assert_eq!(r.status, 500, "{}", r.text);
        assert!(r.text.contains("saving the state"), "{}", r.text);
        assert_eq!(d.state(&id), "Running");
        wait_until(
            "the counter after a failed standby",
            Duration::from_secs(30),
            || (last_number(&d, &id) > before + 2).then_some(()),
        );
    } else {
        eprintln!("skipping the failed-standby check: chattr +i does not work here");
    }

    // Standby, then a second standby: wrong state.
    let r = post(&d, &format!("/instances/{id}/standby"));
    assert_eq!(r.status, 200, "{}", r.text);
    let r = post(&d, &format!("/instances/{id}/standby"));
    assert_eq!(r.status, 409, "{}", r.text);
    let before = last_number(&d, &id);

    // A state saved by another QEMU: refused before anything starts.
    let mut saved_version = String::new();
    edit_record(&d, &id, |v| {
        let ver = &mut v["standby"]["snapshot"]["identity"]["vmm_version"];
        saved_version = ver.as_str().expect("version").to_string();
        *ver = json!("1.0.0 (elsewhere)");
    });
    let r = post(&d, &format!("/instances/{id}/restore"));
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["code"], "snapshot_incompatible", "{}", r.text);
    assert!(
        r.body["message"].as_str().unwrap_or("").contains("1.0.0"),
        "{}",
        r.text
    );
    assert_eq!(d.state(&id), "Standby");
    edit_record(&d, &id, |v| {
        v["standby"]["snapshot"]["identity"]["vmm_version"] = json!(saved_version);
    });

    // A corrupt state file: the restore fails, the instance stays in
    // standby with its state and says why; the good file then restores.
    let file = d.guests_dir().join(&id).join("standby").join("memory");
    let good = std::fs::read(&file).expect("state file");
    std::fs::write(&file, b"QEVM garbage, not a migration stream").expect("corrupt");
    let r = post(&d, &format!("/instances/{id}/restore"));
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["code"], "restore_failed", "{}", r.text);
    let inst = d.get(&id);
    assert_eq!(inst["state"], "Standby", "{inst}");
    assert_eq!(inst["has_snapshot"], true, "{inst}");
    assert!(
        inst["state_error"]
            .as_str()
            .unwrap_or("")
            .contains("restore failed"),
        "{inst}"
    );
    std::fs::write(&file, &good).expect("put the good state back");

    // A daemon killed in the middle of a restore (simulated: the record
    // says one was under way): on restart it is undone, still Standby.
    d.kill9();
    edit_record(&d, &id, |v| v["standby"]["pending"] = json!("restore"));
    d.spawn();
    let inst = d.get(&id);
    assert_eq!(inst["state"], "Standby", "{inst}");
    assert!(
        inst["state_error"]
            .as_str()
            .unwrap_or("")
            .contains("daemon restart"),
        "{inst}"
    );

    let r = post(&d, &format!("/instances/{id}/restore"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "Running", "{}", r.text);
    assert!(r.body.get("state_error").is_none(), "{}", r.text);
    wait_until("the counter to continue", Duration::from_secs(30), || {
        (last_number(&d, &id) > before).then_some(())
    });
    let all = numbers(&d, &id);
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>());

    // Standby of a stopped instance: wrong state.
    assert_eq!(post(&d, &format!("/instances/{id}/stop")).status, 200);
    let r = post(&d, &format!("/instances/{id}/standby"));
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["code"], "invalid_state", "{}", r.text);
}

/// A standby asked to compress its memory: compressed in the background
/// (the uncompressed RAM file goes), decompressed by the restore; a
/// restore before a delayed compression starts simply drops it.
#[test]
fn compressed_standby_restores() {
    require_guest!();
    let d = Daemon::start();
    let id = d.create(counter("packed"))["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_api(&d, &id, "Running", "2m");
    wait_until("the counter to run", BOOT, || {
        (last_number(&d, &id) >= 5).then_some(())
    });
    let dir = d.guests_dir().join(&id);
    let r = d.api(
        "POST",
        &format!("/instances/{id}/standby"),
        Some(&json!({"compression": {"enabled": true, "algorithm": "zstd", "level": 3}})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_until(
        "the memory to be compressed",
        Duration::from_secs(60),
        || (dir.join("memory.ram.zst").exists() && !dir.join("memory.ram").exists()).then_some(()),
    );
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("metadata.json")).expect("record"))
            .expect("json");
    let c = &meta["standby"]["snapshot"]["compression"];
    assert_eq!(c["state"], "compressed", "{meta}");
    assert!(
        c["compressed_bytes"].as_u64() < c["uncompressed_bytes"].as_u64(),
        "{c}"
    );
    let before = last_number(&d, &id);
    let r = post(&d, &format!("/instances/{id}/restore"));
    assert_eq!(r.status, 200, "{}", r.text);
    wait_until("the counter to continue", Duration::from_secs(30), || {
        (last_number(&d, &id) > before + 2).then_some(())
    });
    assert!(!dir.join("memory.ram.zst").exists());

    // Delayed compression (asked through the CLI), restored before it starts.
    let out = d.lodge(&[
        "standby",
        &id,
        "--compress",
        "lz4",
        "--compress-after",
        "1m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.state(&id), "Standby");
    let r = post(&d, &format!("/instances/{id}/restore"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "Running", "{}", r.text);
    let all = numbers(&d, &id);
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>());
    let ops = d.log_lines(&id, "source=lodge&tail=100");
    for line in ops.iter().filter(|l| l.contains("compress")) {
        eprintln!("{line}");
    }
}
