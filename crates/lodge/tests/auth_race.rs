//! The daemon and `lodge token` both create `<data dir>/jwt-secret` on first
//! use. With a fixed temporary name one of them could delete the other's
//! half-made secret and the daemon died at start-up (issue 9). Here a daemon
//! starts on a fresh data dir while 20 CLIs mint tokens, 50 times over: the
//! daemon must come up every time, there must be exactly one secret and no
//! temporary debris, and every token must open the API.
//!
//! Needs no guest kernel: the daemon runs with `LODGE_ACCEL=tcg` and no VM
//! is started.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LODGE: &str = env!("CARGO_BIN_EXE_lodge");
const ROUNDS: usize = 50;
const MINTERS: usize = 20;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn lodge(data_dir: &Path) -> Command {
    let mut cmd = Command::new(LODGE);
    cmd.env("LODGE_DATA_DIR", data_dir)
        .env_remove("LODGE_JWT_SECRET")
        .env_remove("LODGE_API_KEY")
        .env("LODGE_ACCEL", "tcg")
        .stdin(Stdio::null());
    cmd
}

/// Ends the daemon even when an assertion fails halfway.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.0.kill() {
            eprintln!("killing the daemon: {e}");
        }
        if let Err(e) = self.0.wait() {
            eprintln!("reaping the daemon: {e}");
        }
    }
}

fn wait_healthy(
    daemon: &mut Daemon,
    http: &reqwest::blocking::Client,
    base: &str,
    log: &Path,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = daemon.0.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("the daemon exited ({status}) at start-up:\n{text}").into());
        }
        if let Ok(r) = http.get(format!("{base}/health")).send() {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("the daemon did not answer /health within 20s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn round(n: usize, http: &reqwest::blocking::Client) -> TestResult {
    let tmp = tempfile::Builder::new()
        .prefix("lodge-auth-race")
        .tempdir()?;
    let data_dir = tmp.path().join("data");
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let log_path = tmp.path().join("serve.log");
    let log = std::fs::File::create(&log_path)?;

    // Half the minters, the daemon, the other half: all racing for the
    // secret of an empty data dir.
    let mint = || {
        lodge(&data_dir)
            .arg("token")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let mut minters = Vec::with_capacity(MINTERS);
    for _ in 0..MINTERS / 2 {
        minters.push(mint()?);
    }
    let mut daemon = Daemon(
        lodge(&data_dir)
            .arg("serve")
            // Tests never touch the host's network.
            .env("LODGE_NETWORK", "off")
            .env("LODGE_LISTEN", format!("127.0.0.1:{port}"))
            .env("LODGE_SYSTEM_DIR", tmp.path().join("no-system"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    for _ in MINTERS / 2..MINTERS {
        minters.push(mint()?);
    }

    let mut tokens = Vec::with_capacity(MINTERS);
    for m in minters {
        let out = m.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "round {n}: lodge token failed: {stderr}"
        );
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        assert!(!token.is_empty(), "round {n}: lodge token printed nothing");
        tokens.push(token);
    }
    wait_healthy(&mut daemon, http, &base, &log_path)?;

    for token in &tokens {
        let r = http
            .get(format!("{base}/instances"))
            .bearer_auth(token)
            .send()?;
        assert_eq!(
            r.status().as_u16(),
            200,
            "round {n}: a minted token was refused: {}",
            r.text().unwrap_or_default()
        );
    }
    let r = http
        .get(format!("{base}/instances"))
        .bearer_auth("nope")
        .send()?;
    assert_eq!(
        r.status().as_u16(),
        401,
        "round {n}: a bad token was accepted"
    );

    let mut names: Vec<String> = std::fs::read_dir(&data_dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.retain(|n| n.contains("jwt-secret"));
    assert_eq!(
        names,
        ["jwt-secret"],
        "round {n}: one secret, no temporaries"
    );
    let secret = std::fs::read(data_dir.join("jwt-secret"))?;
    assert_eq!(
        secret.len(),
        64,
        "round {n}: a whole secret (64 hex digits)"
    );
    Ok(())
}

#[test]
fn daemon_and_concurrent_cli_agree_on_one_secret() -> TestResult {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    for n in 0..ROUNDS {
        round(n, &http)?;
    }
    eprintln!("{ROUNDS} rounds in {:?}", started.elapsed());
    Ok(())
}
