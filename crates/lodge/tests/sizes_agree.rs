//! `50MB` is one number of bytes (52,428,800: binary units, as hypeman and
//! docker read it) wherever lodge takes a size, checked through the running
//! programs: `lodge run --memory` (sent as the API's `size`) and
//! `lodge supervise --max-size`. `LODGE_LOG_MAX_SIZE` goes through the same
//! parser in `config::log_max_size_from`, checked by the unit test
//! `sizes::tests::fifty_megabytes_means_one_thing` (observing it here would
//! need a booted VM).
//!
//! Needs no guest kernel: the daemon runs with `LODGE_ACCEL=tcg` and the
//! create is refused before any VM starts.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LODGE: &str = env!("CARGO_BIN_EXE_lodge");
const FIFTY_MB: u64 = 50 << 20;

type TestResult = Result<(), Box<dyn std::error::Error>>;

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

#[test]
fn memory_50mb_is_52428800_bytes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data_dir = tmp.path().join("data");
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(tmp.path().join("serve.log"))?;
    let mut daemon = Daemon(
        Command::new(LODGE)
            .arg("serve")
            // Tests never touch the host's network.
            .env("LODGE_NETWORK", "off")
            .env("LODGE_DATA_DIR", &data_dir)
            .env("LODGE_SYSTEM_DIR", tmp.path().join("no-system"))
            .env("LODGE_LISTEN", format!("127.0.0.1:{port}"))
            .env("LODGE_ACCEL", "tcg")
            .env_remove("LODGE_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/health"))
        .send()
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(daemon.0.try_wait()?.is_none(), "the daemon exited");
        assert!(Instant::now() < deadline, "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Below the 64MiB minimum, so the refusal names the parsed byte count.
    let out = Command::new(LODGE)
        .args(["run", "--memory", "50MB", "--rootfs"])
        .arg(&rootfs)
        .args(["/bin/true"])
        .env("LODGE_DATA_DIR", &data_dir)
        .env("LODGE_BASE_URL", &base)
        .env_remove("LODGE_API_KEY")
        .env_remove("LODGE_JWT_SECRET")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 50MB VM must be refused: {stderr}");
    assert!(
        stderr.contains(&format!("got {FIFTY_MB} bytes")),
        "--memory 50MB should be {FIFTY_MB} bytes: {stderr}"
    );
    Ok(())
}

#[test]
fn max_size_50mb_is_52428800_bytes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let logs = tmp.path().join("logs");
    std::fs::create_dir(&logs)?;
    // One byte more than 50MiB: the live file fills to exactly --max-size,
    // rotates, and the last byte starts the next one.
    let writer = format!("head -c {} /dev/zero", FIFTY_MB + 1);
    let out = Command::new(LODGE)
        .arg("supervise")
        .arg("--log-dir")
        .arg(&logs)
        .args([
            "--max-size",
            "50MB",
            "--max-files",
            "5",
            "--",
            "sh",
            "-c",
            &writer,
        ])
        .stdin(Stdio::null())
        .output()?;
    assert!(
        out.status.success(),
        "supervise failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sizes: Vec<(String, u64)> = std::fs::read_dir(&logs)?
        .map(|e| -> std::io::Result<(String, u64)> {
            let e = e?;
            Ok((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata()?.len(),
            ))
        })
        .collect::<Result<_, _>>()?;
    sizes.retain(|(name, _)| name.starts_with("app.log"));
    sizes.sort();
    assert_eq!(
        sizes.len(),
        2,
        "one rotated segment and the live file: {sizes:?}"
    );
    assert_eq!(sizes[0], ("app.log".to_owned(), 1), "{sizes:?}");
    assert_eq!(
        sizes[1].1, FIFTY_MB,
        "--max-size 50MB should be {FIFTY_MB} bytes: {sizes:?}"
    );
    Ok(())
}
