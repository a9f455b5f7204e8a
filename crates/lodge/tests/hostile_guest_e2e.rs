//! End-to-end: a hostile guest. The workload (root, busybox sh) kills the
//! guest agent, keeps the agent from coming back by holding its
//! virtio-serial port itself, and writes crafted bytes there: garbage, a
//! frame header claiming 2 MiB, a hello answer nobody asked for, a `Hello`
//! (a frame only the host sends) and a megabyte of zeros, in a loop. (A
//! virtio-serial write blocks while no host is connected, so the loop
//! advances whenever the daemon connects to try again.)
//!
//! The daemon must close its connection to that agent (and say why in its
//! log), stay up and small, answer an exec on that instance with a JSON
//! error within a bounded time instead of hanging, keep serving another
//! instance's exec, and touch no file outside the instance's directory.

mod common;

use common::OutputLimited;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{busybox_rootfs, wait_until, Daemon, LODGE};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// The workload: waits for `/tmp/go`, then takes over the agent's port.
const HOSTILE: &str = r#"
while [ ! -e /tmp/go ]; do sleep 0.2; done
dev=
for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = org.lodge.agent.0 ] && dev="/dev/${d##*/}"
done
echo "hostile: the agent port is $dev"
attack() {
    echo "hostile: holding $dev"
    # The agent runs as /proc/self/exe: its comm is "exe".
    ( while :; do for p in $(pidof exe); do kill -9 "$p"; done; usleep 200000; done ) &
    i=0
    while :; do
        printf 'garbage, not a frame\n' >&3
        printf 'LA\007\000\001\000\000\000\000\000\040\000' >&3
        printf 'LA\002\000\000\000\000\000\027\000\000\000{"version":1,"nonce":7}' >&3
        printf 'LA\001\000\000\000\000\000\027\000\000\000{"version":1,"nonce":7}' >&3
        head -c 1048576 /dev/zero >&3
        i=$((i+1))
        echo "hostile: round $i"
        sleep 1
    done
}
# PID 1 restarts a killed agent at once: open the port right after the
# kill, before the new agent gets to it.
while :; do
    for p in $(pidof exe); do kill -9 "$p" && echo "hostile: killed the agent $p"; done
    { attack; } 3<>"$dev" 2>/dev/null
    usleep 50000
done
"#;

/// The final message and the output before it, as a hypeman client sees
/// them (no `split_stderr`).
fn ws_exec(d: &Daemon, id: &str, command: &[&str]) -> Result<(Value, String), String> {
    let url = format!(
        "{}/instances/{id}/exec",
        d.base.replacen("http://", "ws://", 1)
    );
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", d.token).parse().expect("header"),
    );
    let addr = d.base.trim_start_matches("http://").to_string();
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let (mut socket, _) = tungstenite::client(req, tcp).map_err(|e| e.to_string())?;
    socket
        .send(Message::Text(
            json!({ "command": command }).to_string().into(),
        ))
        .map_err(|e| e.to_string())?;
    let mut output = Vec::new();
    loop {
        match socket.read().map_err(|e| format!("read: {e}"))? {
            Message::Text(t) => {
                let last = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                return Ok((last, String::from_utf8_lossy(&output).into_owned()));
            }
            Message::Binary(b) => output.extend_from_slice(&b),
            Message::Close(_) => return Err("closed before the exit message".into()),
            _ => {}
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Every file under `root` but those under `skip`: its size and mtime.
fn snapshot(root: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if skip.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                todo.push(path.clone());
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.insert(path, (meta.len(), mtime));
        }
    }
    out
}

fn lodge_exec(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(LODGE)
        .arg("exec")
        .args(args)
        .env("LODGE_BASE_URL", &d.base)
        .env("LODGE_API_KEY", &d.token)
        .output_limited()
        .expect("lodge exec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_guest_that_replaces_its_agent_cannot_harm_the_host() {
    require_guest!();
    let mut d = Daemon::start();
    let vm = |name: &str, cmd: &str| {
        d.create(json!({
            "name": name,
            "rootfs": busybox_rootfs(),
            "vcpus": 1,
            "size": "256MB",
            "overlay_size": "512MB",
            "cmd": ["sh", "-c", cmd],
        }))["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let hostile = vm("hostile", HOSTILE);
    let bystander = vm("bystander", "while :; do sleep 3600; done");
    let pid = d.child.as_ref().expect("daemon").id();

    // A working agent first, so the daemon holds a live connection.
    for name in ["hostile", "bystander"] {
        let (code, _, err) = lodge_exec(&d, &["--wait-for-agent", "180", name, "touch", "/tmp/go"]);
        assert_eq!(code, 0, "exec in {name} before the attack: {err}");
    }
    let skip = [
        d.guests_dir().join(&hostile),
        d.guests_dir().join(&bystander),
        d.data_dir.join("serve.log"),
    ];
    let before = snapshot(&d.data_dir, &skip);

    let t0 = Instant::now();
    loop {
        let lines = d.log_lines(&hostile, "tail=200");
        if lines.iter().any(|l| l.contains("hostile: holding")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the workload did not attack its agent port; its console:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let serve_log = || std::fs::read_to_string(d.data_dir.join("serve.log")).unwrap_or_default();
    wait_until(
        "the daemon to close the connection to the impostor",
        Duration::from_secs(60),
        || serve_log().contains("broke the protocol").then_some(()),
    );

    // Exec there fails cleanly, within a bound, as JSON.
    for _ in 0..2 {
        let t0 = Instant::now();
        let (exit, output) = ws_exec(&d, &hostile, &["true"]).expect("the exec's final message");
        let took = t0.elapsed();
        eprintln!("[hostile] exec on the hostile guest: {output:?} {exit} after {took:?}");
        // hypeman's exact final message; the reason came as output.
        assert_eq!(exit, serde_json::json!({"exitCode": 127}), "{exit}");
        assert!(output.contains("agent"), "{output:?}");
        assert!(took < Duration::from_secs(30), "exec took {took:?}");
    }

    // The impostor's writes went through while the host listened.
    let rounds = d
        .log_lines(&hostile, "tail=400")
        .iter()
        .filter(|l| l.contains("hostile: round"))
        .count();
    eprintln!("[hostile] rounds of crafted frames written: at least {rounds}");

    // The other instance is served as before.
    let (code, out, err) = lodge_exec(&d, &["bystander", "echo", "fine"]);
    assert_eq!((code, out.trim()), (0, "fine"), "bystander exec: {err}");

    // The daemon is up, small, and touched nothing outside the instance.
    let rss = rss_kib(pid);
    eprintln!("[hostile] daemon RSS {} MiB", rss / 1024);
    assert!(rss < 100 * 1024, "daemon RSS {rss} KiB");
    assert!(
        d.child
            .as_mut()
            .expect("daemon")
            .try_wait()
            .expect("wait")
            .is_none(),
        "the daemon exited"
    );
    let health = d.request("GET", "/health", None, None);
    assert_eq!(health.status, 200);
    let after = snapshot(&d.data_dir, &skip);
    assert_eq!(
        before, after,
        "files outside the instances' directories changed"
    );
    let log = serve_log();
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("broke the protocol"))
        .take(3)
        .collect();
    eprintln!("[hostile] daemon log: {why:#?}");
}
