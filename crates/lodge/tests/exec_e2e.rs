//! End-to-end: exec, cp and stat through the real daemon into a real VM
//! (QEMU under TCG), via the CLI, a real terminal (tmux) and raw
//! WebSockets. One VM serves every case, so the whole file boots once; the
//! cases run in order inside one test and print their own timings.

mod common;

use common::OutputLimited;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{busybox_rootfs, wait_until, Daemon, LODGE};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// `lodge ARGS` against the daemon, with `stdin` piped in when given.
fn lodge(d: &Daemon, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(LODGE);
    cmd.args(args)
        .env("LODGE_BASE_URL", &d.base)
        .env("LODGE_API_KEY", &d.token)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run lodge");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("wait lodge")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run `lodge exec`; returns (code, stdout, stderr).
fn exec(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    let out = lodge(d, &all, None);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn section(name: &str, t0: Instant) {
    eprintln!("[exec_e2e] {name}: {:.2} s", t0.elapsed().as_secs_f64());
}

/// A WebSocket to the daemon at `path`; the HTTP status when refused.
fn ws(d: &Daemon, path: &str) -> Result<tungstenite::WebSocket<std::net::TcpStream>, u16> {
    let url = format!("{}{path}", d.base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", d.token).parse().expect("header"),
    );
    let addr = d.base.trim_start_matches("http://").to_string();
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    match tungstenite::client(req, tcp) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("websocket to {path}: {e}"),
    }
}

fn send_json(socket: &mut tungstenite::WebSocket<std::net::TcpStream>, v: Value) {
    socket
        .send(Message::Text(v.to_string().into()))
        .expect("send");
}

/// The next text message, as JSON.
fn next_json(socket: &mut tungstenite::WebSocket<std::net::TcpStream>) -> Value {
    loop {
        match socket.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
            Message::Close(_) => panic!("closed before a text message"),
            _ => {}
        }
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output_limited()
        .expect("sha256sum");
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `bytes` of non-repeating data (xorshift), written without holding it.
fn write_pseudo_random(path: &Path, bytes: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = bytes;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let chunk = x.to_le_bytes();
        let n = left.min(8);
        f.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output_limited()
            .expect("tmux");
        text(&out.stdout)
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "exec"])
    }

    fn wait_for(&self, what: &str) -> String {
        wait_until(
            &format!("{what:?} on the terminal"),
            Duration::from_secs(60),
            || {
                let screen = self.screen();
                screen.contains(what).then_some(screen)
            },
        )
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn exec_cp_and_stat_in_a_running_vm() {
    require_guest!();
    let all = Instant::now();
    let d = Daemon::start();
    let t0 = Instant::now();
    let vm = d.create(json!({
        "name": "agent",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "512MB",
        "cmd": ["sh", "-c", "while :; do sleep 3600; done"],
    }));
    let id = vm["id"].as_str().expect("id").to_string();

    // --- exec basics ----------------------------------------------------
    // Right after create: --wait-for-agent waits out the boot.
    assert!(
        matches!(vm["state"].as_str(), Some("Initializing" | "Running")),
        "{vm}"
    );
    let (code, out, err) = exec(
        &d,
        &[
            "--wait-for-agent",
            "120",
            "agent",
            "sh",
            "-c",
            "echo $((6*7))",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "42\n"), "stderr: {err}");
    section("create to the first exec's answer", t0);

    let t0 = Instant::now();
    assert_eq!(exec(&d, &["agent", "sh", "-c", "exit 3"]).0, 3);
    let (code, out, err) = exec(&d, &["agent", "--", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "out\n", "err\n"));
    let out = lodge(&d, &["exec", "-i", "agent", "cat"], Some(b"abc\n"));
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "abc\n")
    );
    // Without -i the command's stdin is closed: cat ends at once.
    assert_eq!(exec(&d, &["agent", "cat"]).0, 0);
    let (code, out, _) = exec(
        &d,
        &[
            "-e",
            "GREETING=hi there",
            "--cwd",
            "/tmp",
            "agent",
            "sh",
            "-c",
            "echo \"$GREETING\" $(pwd) $HOSTNAME",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "hi there /tmp agent\n"));
    let (code, _, err) = exec(&d, &["agent", "no-such-command"]);
    assert_eq!(code, 127);
    assert!(err.contains("executable file not found"), "{err}");
    assert_eq!(exec(&d, &["agent", "sh", "-c", "kill -9 $$"]).0, 137);
    let started = Instant::now();
    let (code, _, err) = exec(&d, &["--timeout", "1", "agent", "sleep", "60"]);
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout did not kill in time"
    );
    section("exec cases", t0);

    // --- ten at once --------------------------------------------------------
    let t0 = Instant::now();
    let children: Vec<_> = (0..10)
        .map(|i| {
            // A barrier in the guest: each waits until all ten have started,
            // so they only finish if they ran at the same time (no wall-clock
            // bound, which would flake on a loaded machine).
            let script = format!(
                "echo start-{i}; touch /tmp/barrier-{i}; n=0; \
                 while [ $(ls /tmp/barrier-* | wc -l) -lt 10 ]; do \
                 n=$((n+1)); [ $n -gt 1200 ] && echo alone-{i} && exit 9; sleep 0.1; done; \
                 echo end-{i} $(({i}*{i}))"
            );
            Command::new(LODGE)
                .args(["exec", "agent", "sh", "-c", &script])
                .env("LODGE_BASE_URL", &d.base)
                .env("LODGE_API_KEY", &d.token)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("wait");
        assert_eq!(
            out.status.code(),
            Some(0),
            "exec {i}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), format!("start-{i}\nend-{i} {}\n", i * i));
    }
    section("ten concurrent execs", t0);

    // --- an interactive shell on a real terminal -----------------------------
    let t0 = Instant::now();
    let tmux = Tmux {
        socket: format!("lodge-exec-e2e-{}", std::process::id()),
    };
    let command = format!(
        "env LODGE_BASE_URL={} LODGE_API_KEY={} {} exec -it agent sh; echo EXIT=$?; sleep 600",
        shell_quote(&d.base),
        shell_quote(&d.token),
        shell_quote(LODGE)
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "exec",
        "-x",
        "100",
        "-y",
        "30",
        &command,
    ]);
    tmux.wait_for("/ #");
    tmux.run(&[
        "send-keys",
        "-t",
        "exec",
        "echo hel''lo-$((2+3)); stty size",
        "Enter",
    ]);
    tmux.wait_for("hello-5");
    tmux.wait_for("30 100");
    tmux.run(&["resize-window", "-t", "exec", "-x", "120", "-y", "40"]);
    // The size reaches the guest asynchronously (SIGWINCH, then a message).
    wait_until(
        "the resize to reach the guest",
        Duration::from_secs(30),
        || {
            tmux.run(&["send-keys", "-t", "exec", "clear; stty size", "Enter"]);
            std::thread::sleep(Duration::from_millis(500));
            tmux.screen().contains("40 120").then_some(())
        },
    );
    tmux.run(&["send-keys", "-t", "exec", "exit 7", "Enter"]);
    tmux.wait_for("EXIT=7");
    drop(tmux);
    section("interactive shell through tmux", t0);

    // --- 100 MiB both ways -----------------------------------------------------
    let t0 = Instant::now();
    let work = tempfile::tempdir().expect("tmp");
    let big = work.path().join("big");
    write_pseudo_random(&big, 100 << 20);
    let want = sha256(&big);
    let out = lodge(&d, &["cp", &big.to_string_lossy(), "agent:/tmp/big"], None);
    assert!(out.status.success(), "cp in: {}", text(&out.stderr));
    let copied_in = t0.elapsed();
    let (code, out, err) = exec(&d, &["agent", "sha256sum", "/tmp/big"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.split_whitespace().next(),
        Some(want.as_str()),
        "guest checksum"
    );
    let t1 = Instant::now();
    let back = work.path().join("back");
    let out = lodge(&d, &["cp", "agent:/tmp/big", &back.to_string_lossy()], None);
    assert!(out.status.success(), "cp out: {}", text(&out.stderr));
    assert_eq!(sha256(&back), want, "host checksum after the round trip");
    eprintln!(
        "[exec_e2e] 100 MiB: in {:.2} s, out {:.2} s",
        copied_in.as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    let (code, _, _) = exec(&d, &["agent", "rm", "/tmp/big"]);
    assert_eq!(code, 0);
    std::fs::remove_file(&back).expect("rm");
    section("100 MiB both ways", t0);

    // --- a tree with modes, owners, links --------------------------------------
    let t0 = Instant::now();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("a.txt"), "a\n").expect("write");
    std::fs::write(tree.join("run.sh"), "#!/bin/sh\necho ran\n").expect("write");
    std::fs::write(tree.join("sub/secret"), "s\n").expect("write");
    std::os::unix::fs::symlink("a.txt", tree.join("link")).expect("symlink");
    for (p, m) in [
        ("a.txt", 0o640),
        ("run.sh", 0o4755),
        ("sub/secret", 0o600),
        ("sub", 0o750),
        ("", 0o710),
    ] {
        std::fs::set_permissions(tree.join(p), std::fs::Permissions::from_mode(m)).expect("chmod");
    }
    let owners = std::os::unix::fs::chown(tree.join("a.txt"), Some(1234), Some(5678)).is_ok();
    let out = lodge(
        &d,
        &["cp", "-a", &tree.to_string_lossy(), "agent:/tmp/tree"],
        None,
    );
    assert!(out.status.success(), "cp tree in: {}", text(&out.stderr));
    let (code, listing, err) = exec(
        &d,
        &["agent", "sh", "-c", "cd /tmp/tree && stat -c '%a %n' . a.txt run.sh sub sub/secret && readlink link && cat sub/secret && stat -c %u:%g a.txt && ./run.sh"],
    );
    assert_eq!(code, 0, "{err}");
    let owner = if owners { "1234:5678" } else { "0:0" };
    assert_eq!(
        listing,
        format!("710 .\n640 a.txt\n4755 run.sh\n750 sub\n600 sub/secret\na.txt\ns\n{owner}\nran\n")
    );
    // And back out, into an existing directory: it nests as `tree`.
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out = lodge(
        &d,
        &["cp", "-a", "agent:/tmp/tree", &out_dir.to_string_lossy()],
        None,
    );
    assert!(out.status.success(), "cp tree out: {}", text(&out.stderr));
    let back = out_dir.join("tree");
    for (p, m) in [
        ("a.txt", 0o640),
        ("run.sh", 0o4755),
        ("sub/secret", 0o600),
        ("sub", 0o750),
        ("", 0o710),
    ] {
        assert_eq!(mode(&back.join(p)), m, "mode of {p}");
    }
    assert_eq!(
        std::fs::read_link(back.join("link")).expect("link"),
        Path::new("a.txt")
    );
    assert_eq!(
        std::fs::read(back.join("sub/secret")).expect("read"),
        b"s\n"
    );
    if owners {
        let md = std::fs::metadata(back.join("a.txt")).expect("md");
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
    }
    // -L copies what a link points to.
    let out = lodge(
        &d,
        &[
            "cp",
            "-L",
            &tree.join("link").to_string_lossy(),
            "agent:/tmp/followed",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, out, _) = exec(
        &d,
        &[
            "agent",
            "sh",
            "-c",
            "stat -c '%F %a' /tmp/followed; cat /tmp/followed",
        ],
    );
    assert_eq!(out, "regular file 640\na\n");
    for p in [&tree, &back] {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    }
    section("directory trees", t0);

    // --- stat ---------------------------------------------------------------
    let t0 = Instant::now();
    let stat = |path: &str| {
        let r = d.api("GET", &format!("/instances/{id}/stat?path={path}"), None);
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    };
    let passwd = stat("/etc/passwd");
    assert_eq!(passwd["exists"], true);
    assert_eq!(passwd["is_file"], true);
    assert_eq!(passwd["is_dir"], false);
    assert_eq!(passwd["mode"], 0o644);
    let size = std::fs::metadata(PathBuf::from(busybox_rootfs()).join("etc/passwd"))
        .expect("md")
        .len();
    assert_eq!(passwd["size"], size);
    let tmp = stat("/tmp/tree");
    assert_eq!(
        (
            tmp["exists"].clone(),
            tmp["is_dir"].clone(),
            tmp["mode"].clone()
        ),
        (json!(true), json!(true), json!(0o710))
    );
    let link = stat("/bin/sh");
    assert_eq!(
        (link["is_symlink"].clone(), link["link_target"].clone()),
        (json!(true), json!("/bin/busybox"))
    );
    assert_eq!(stat("/no/such/path"), json!({ "exists": false }));
    let r = d.api("GET", &format!("/instances/{id}/stat"), None);
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (400, json!("bad_request")),
        "{}",
        r.text
    );
    section("stat", t0);

    // --- bad input, and the agent keeps serving ---------------------------------
    let t0 = Instant::now();
    let (code, _, err) = exec(&d, &["no-such-vm", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(ws(&d, "/instances/no-such-vm/exec").err(), Some(404));
    let (code, _, err) = exec(&d, &["agent", ""]);
    assert_ne!(code, 0);
    assert!(err.contains("empty"), "{err}");
    let (code, _, err) = exec(&d, &["agent"]);
    assert_ne!(code, 0, "a missing command is a usage error");
    assert!(err.to_lowercase().contains("required"), "{err}");
    // The same through the API: the final message carries the error.
    let mut socket = ws(&d, &format!("/instances/{id}/exec")).expect("ws");
    send_json(
        &mut socket,
        json!({ "command": [""], "split_stderr": true }),
    );
    let last = next_json(&mut socket);
    assert_eq!(last["exitCode"], 127, "{last}");
    assert!(
        last["error"].as_str().unwrap_or_default().contains("empty"),
        "{last}"
    );
    drop(socket);

    let small = work.path().join("small");
    std::fs::write(&small, "small\n").expect("write");
    let out = lodge(
        &d,
        &["cp", &small.to_string_lossy(), "agent:/no/such/dir/file"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("parent directory /no/such/dir does not exist"),
        "{}",
        text(&out.stderr)
    );
    let out = lodge(
        &d,
        &[
            "cp",
            "agent:/no/such/file",
            &work.path().join("x").to_string_lossy(),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no such file or directory"),
        "{}",
        text(&out.stderr)
    );

    // Archive entries escaping the target directory: by `..`, and through
    // a symlink an earlier entry planted.
    for entries in [
        vec![
            json!({"type": "header", "path": "esc", "is_dir": true, "mode": 0o755}),
            json!({"type": "end", "final": false}),
            json!({"type": "header", "path": "esc/../../evil", "mode": 0o644}),
        ],
        vec![
            json!({"type": "header", "path": "esc", "is_dir": true, "mode": 0o755}),
            json!({"type": "end", "final": false}),
            json!({"type": "header", "path": "esc/up", "is_symlink": true, "link_target": "/", "mode": 0o777}),
            json!({"type": "end", "final": false}),
            json!({"type": "header", "path": "esc/up/evil", "mode": 0o644}),
        ],
    ] {
        let mut socket = ws(&d, &format!("/instances/{id}/cp")).expect("ws");
        send_json(
            &mut socket,
            json!({"direction": "to", "guest_path": "/tmp/esc", "stream": true}),
        );
        for e in entries {
            send_json(&mut socket, e);
        }
        socket
            .send(Message::Binary(b"evil\n".to_vec().into()))
            .expect("send");
        send_json(&mut socket, json!({"type": "end", "final": false}));
        send_json(&mut socket, json!({"type": "end", "final": true}));
        let answer = next_json(&mut socket);
        assert_eq!(answer["success"], false, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains("escapes the target directory"),
            "{answer}"
        );
        let _ = socket.close(None);
    }
    assert_eq!(stat("/evil"), json!({ "exists": false }));
    assert_eq!(stat("/tmp/evil"), json!({ "exists": false }));

    // A header too large for the agent protocol is refused by the daemon.
    let mut socket = ws(&d, &format!("/instances/{id}/cp")).expect("ws");
    send_json(
        &mut socket,
        json!({"direction": "to", "guest_path": "/tmp/huge", "stream": true}),
    );
    send_json(
        &mut socket,
        json!({"type": "header", "path": "x".repeat(2 << 20), "mode": 0o644}),
    );
    send_json(&mut socket, json!({"type": "end", "final": true}));
    let answer = next_json(&mut socket);
    assert_eq!(answer["success"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("too large"),
        "{answer}"
    );
    let _ = socket.close(None);

    // hypeman's one-file upload and its download shape.
    let mut socket = ws(&d, &format!("/instances/{id}/cp")).expect("ws");
    send_json(
        &mut socket,
        json!({"direction": "to", "guest_path": "/tmp/single", "mode": 0o600}),
    );
    socket
        .send(Message::Binary(b"hello\n".to_vec().into()))
        .expect("send");
    send_json(&mut socket, json!({"type": "end"}));
    let answer = next_json(&mut socket);
    assert_eq!(
        answer,
        json!({"type": "result", "success": true, "bytes_written": 6})
    );
    let _ = socket.close(None);
    let mut socket = ws(&d, &format!("/instances/{id}/cp")).expect("ws");
    send_json(
        &mut socket,
        json!({"direction": "from", "guest_path": "/tmp/single"}),
    );
    let header = next_json(&mut socket);
    assert_eq!(
        (
            header["type"].clone(),
            header["path"].clone(),
            header["mode"].clone(),
            header["size"].clone()
        ),
        (json!("header"), json!("single"), json!(0o600), json!(6)),
        "{header}"
    );
    let data = loop {
        match socket.read().expect("read") {
            Message::Binary(b) => break b.to_vec(),
            Message::Text(t) => panic!("unexpected {t}"),
            _ => {}
        }
    };
    assert_eq!(data, b"hello\n");
    assert_eq!(
        next_json(&mut socket),
        json!({"type": "end", "final": true})
    );
    let _ = socket.close(None);

    let (code, out, err) = exec(&d, &["agent", "echo", "still serving"]);
    assert_eq!((code, out.as_str()), (0, "still serving\n"), "{err}");
    section("bad input", t0);

    // --- the daemon restarts; the VM and its agent serve the new one -----------------
    let t0 = Instant::now();
    let mut d = d;
    d.kill9();
    d.spawn();
    let (code, out, err) = exec(&d, &["agent", "echo", "after a daemon restart"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "after a daemon restart\n"),
        "{err}"
    );
    section("daemon restart", t0);

    // --- a stopped instance ---------------------------------------------------------
    let t0 = Instant::now();
    let out = lodge(&d, &["stop", "agent"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _, err) = exec(&d, &["agent", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("Stopped") && err.contains("running"), "{err}");
    assert_eq!(ws(&d, &format!("/instances/{id}/exec")).err(), Some(409));
    assert_eq!(ws(&d, &format!("/instances/{id}/cp")).err(), Some(409));
    let r = d.api("GET", &format!("/instances/{id}/stat?path=/"), None);
    assert_eq!(r.status, 409, "{}", r.text);
    section("stopped instance", t0);
    section("all", all);
}
