//! The one harness for tests that run the real daemon and boot real VMs:
//! start `lodge serve` on a free loopback port with its own data dir, call
//! the API, and wait for conditions with a deadline.
//!
//! Networking: every daemon started here runs with `LODGE_NETWORK=off`, as
//! a root daemon would otherwise set up a bridge and an nftables table on
//! the host the tests run on. Only tests that built a world of their own
//! in network namespaces and run *inside* it (network_e2e re-executes
//! itself under `ip netns exec`) ask for a network, with
//! [`Daemon::start_with_env`].

#![allow(dead_code)]

pub mod netns;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const LODGE: &str = env!("CARGO_BIN_EXE_lodge");

/// The longest any one CLI call of a test may take (a pull, a run that
/// boots a VM under TCG): past it the test fails instead of hanging CI.
pub const CLI_LIMIT: Duration = Duration::from_secs(300);

/// `cmd.output()`, but killed and failed after `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    try_output_within(cmd, limit).unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// `Command::output` with a time limit, for the tests' child processes:
/// stdin is null and output captured as with `output()`, and a child still
/// running after [`CLI_LIMIT`] is killed and fails the test (a hang would
/// otherwise hold CI until its own timeout).
pub trait OutputLimited {
    fn output_limited(&mut self) -> std::io::Result<std::process::Output> {
        self.output_limited_for(CLI_LIMIT)
    }
    /// The same with another limit (a whole inner test run, a fuzzer).
    fn output_limited_for(&mut self, limit: Duration) -> std::io::Result<std::process::Output>;
}

impl OutputLimited for Command {
    fn output_limited_for(&mut self, limit: Duration) -> std::io::Result<std::process::Output> {
        try_output_within(self.stdin(Stdio::null()), limit)
    }
}

/// [`output_within`], with a spawn failure returned.
pub fn try_output_within(
    cmd: &mut Command,
    limit: Duration,
) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                // A read error ends the capture; what was read is kept.
                pipe.read_to_end(&mut buf).ok();
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("wait for a child") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                child.kill().ok();
                child.wait().ok();
                panic!("{cmd:?} did not finish within {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Set (to anything but `0`) where a missing guest must fail the suite
/// rather than skip its VM tests; scripts/test.sh sets it.
pub const REQUIRE_GUEST_ENV: &str = "LODGE_REQUIRE_GUEST";

/// Whether a missing prerequisite is a failure here (scripts/test.sh) rather
/// than a reason to skip (a plain `cargo test` on a machine without a guest).
pub fn prerequisites_required() -> bool {
    std::env::var_os(REQUIRE_GUEST_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The guest system dir (kernel, initrd, demo rootfs), or why there is none.
pub fn guest() -> Result<PathBuf, String> {
    let Some(dir) = std::env::var_os("LODGE_SYSTEM_DIR").map(PathBuf::from) else {
        return Err(
            "LODGE_SYSTEM_DIR is not set (./scripts/test.sh builds the guest and sets it)".into(),
        );
    };
    if !(dir.join("vmlinuz").exists() && dir.join("initrd.img").exists()) {
        return Err(format!(
            "{} has no vmlinuz/initrd.img: run ./scripts/build-guest.sh {}",
            dir.display(),
            dir.display()
        ));
    }
    Ok(dir)
}

/// Whether `what` can run: prints why not and returns false when `missing`
/// says something is absent, unless [`prerequisites_required`], then panics.
pub fn available(what: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    assert!(
        !prerequisites_required(),
        "{what}: {why} ({REQUIRE_GUEST_ENV} is set, so this is a failure)"
    );
    eprintln!("skipping {what}: {why}");
    false
}

/// First line of every test that boots a VM: returns from the test with a
/// "skipping" message when no guest kernel is configured, so a plain
/// `cargo test --workspace` passes on a machine without one; with
/// `LODGE_REQUIRE_GUEST=1` (scripts/test.sh) a missing guest fails instead.
#[macro_export]
macro_rules! require_guest {
    () => {
        if !common::available(
            concat!(module_path!(), " (boots a VM)"),
            common::guest().err(),
        ) {
            return;
        }
    };
}

/// Where the guest kernel, initrd and demo rootfs are (scripts/build-guest.sh).
/// VM tests call [`require_guest!`] first, so this only fails when the guest
/// vanished mid-run.
pub fn system_dir() -> PathBuf {
    guest().unwrap_or_else(|why| panic!("{why}"))
}

pub fn busybox_rootfs() -> String {
    system_dir()
        .join("rootfs-busybox")
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Daemon {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub base: String,
    pub token: String,
    port: u16,
    http: reqwest::blocking::Client,
    /// Extra environment of `lodge serve` (networking off unless overridden).
    env: Vec<(String, String)>,
}

pub struct Response {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Daemon {
    /// A daemon on a data dir whose path holds a comma and a space, so every
    /// test also checks that such paths reach QEMU intact.
    pub fn start() -> Daemon {
        Self::start_with_env(&[])
    }

    /// [`Daemon::start`] with extra variables for `lodge serve`, which
    /// override the harness's own (`LODGE_NETWORK=off`, and a vCPU
    /// oversubscription roomy enough for the suite's small VMs on a 2-core
    /// host; admission itself is tested with its own limits). Only a test
    /// inside a network namespace of its own may turn networking on.
    pub fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        let mut vars = vec![
            ("LODGE_NETWORK".to_string(), "off".to_string()),
            ("LODGE_OVERSUB_CPU".to_string(), "16".to_string()),
        ];
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push((k.to_string(), v.to_string()));
        }
        let tmp = tempfile::Builder::new()
            .prefix("lodge-e2e")
            .tempdir()
            .expect("tempdir");
        let data_dir = tmp.path().join("my vms,2");
        std::fs::create_dir_all(&data_dir).expect("mkdir");
        let port = free_port();
        let mut d = Daemon {
            child: None,
            data_dir,
            _tmp: tmp,
            base: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            port,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            env: vars,
        };
        d.spawn();
        let out = d.lodge(&["token"]);
        assert!(out.status.success(), "lodge token failed");
        d.token = String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string();
        d
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("serve.log"))
            .expect("serve log");
        let child = Command::new(LODGE)
            .arg("serve")
            .env("LODGE_DATA_DIR", &self.data_dir)
            .env("LODGE_SYSTEM_DIR", system_dir())
            .env("LODGE_LISTEN", format!("127.0.0.1:{}", self.port))
            .env(
                "LODGE_ACCEL",
                std::env::var("LODGE_ACCEL").unwrap_or_else(|_| "tcg".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn lodge serve");
        self.child = Some(child);
        let url = format!("{}/health", self.base);
        let http = self.http.clone();
        let serve_log = self.data_dir.join("serve.log");
        let child = self.child.as_mut().expect("just spawned");
        wait_until(
            "the daemon to answer /health",
            Duration::from_secs(60),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "lodge serve exited ({status}) before answering: {}",
                        std::fs::read_to_string(&serve_log).unwrap_or_default()
                    );
                }
                http.get(&url)
                    .send()
                    .ok()
                    .filter(|r| r.status().is_success())
            },
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against this daemon.
    pub fn lodge(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(LODGE);
        cmd.args(args)
            .env("LODGE_DATA_DIR", &self.data_dir)
            .env("LODGE_BASE_URL", &self.base);
        if !self.token.is_empty() {
            cmd.env("LODGE_API_KEY", &self.token);
        }
        output_within(&mut cmd, CLI_LIMIT)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Response {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.parse().expect("method"), &url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Response { status, body, text }
    }

    /// Sends only the head of a POST that declares `len` body bytes, and
    /// returns the status and body of the answer.
    pub fn raw_post_declaring_length(&self, path: &str, len: usize) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{{",
            self.token
        );
        s.write_all(head.as_bytes()).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let body = body.map(|b| b.to_string());
        self.request(method, path, body.as_deref(), Some(&self.token.clone()))
    }

    pub fn create(&self, body: Value) -> Value {
        let r = self.api("POST", "/instances", Some(&body));
        assert_eq!(r.status, 201, "create failed: {}", r.text);
        r.body
    }

    pub fn get(&self, id: &str) -> Value {
        let r = self.api("GET", &format!("/instances/{id}"), None);
        assert_eq!(r.status, 200, "get {id}: {}", r.text);
        r.body
    }

    pub fn state(&self, id: &str) -> String {
        self.get(id)["state"].as_str().unwrap_or("").to_string()
    }

    pub fn wait_state(&self, id: &str, want: &str, timeout: Duration) -> Value {
        wait_until(&format!("{id} to be {want}"), timeout, || {
            let v = self.get(id);
            (v["state"] == want).then_some(v)
        })
    }

    /// The log lines the API returns (SSE, one JSON string per event).
    pub fn log_lines(&self, id: &str, query: &str) -> Vec<String> {
        let r = self.api("GET", &format!("/instances/{id}/logs?{query}"), None);
        assert_eq!(r.status, 200, "logs: {}", r.text);
        sse_lines(&r.text)
    }

    pub fn guests_dir(&self) -> PathBuf {
        self.data_dir.join("guests")
    }
}

pub fn sse_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<String>(d).expect("each event is a JSON string"))
        .collect()
}

/// Ends every VM the data dir's monitors still run, then the daemon.
impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        kill_monitors(&self.data_dir.join("guests"));
        // The ingress proxy outlives the daemon too.
        if let Ok(pid) = std::fs::read_to_string(self.data_dir.join("ingress/proxy.pid")) {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(pid.trim())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn kill_monitors(guests: &Path) {
    let Ok(entries) = std::fs::read_dir(guests) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(text) = std::fs::read(e.path().join("logs/monitor.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        for key in ["child_pid", "pid"] {
            if let Some(pid) = v[key].as_i64() {
                let _ = Command::new("kill")
                    .arg("-9")
                    .arg(pid.to_string())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}
