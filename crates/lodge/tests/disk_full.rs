//! A full disk only pauses console capture (issue 10, item 5): the monitor
//! holds the output (the writer blocks on its pipe), retries with backoff,
//! says so in `capture.json`, and writes every byte once space returns.
//!
//! The log directory and the monitor's own stderr (the daemon points it at
//! `monitor.err` beside the logs) live on one small tmpfs, which the test
//! fills to `ENOSPC` with a filler file while the writer is producing, then
//! frees. Needs root for the mount; skipped otherwise.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Lines the writer prints before and after the gate.
const HALF: u64 = 20_000;

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root).
    fn mount(size: &str) -> std::io::Result<Option<Tmpfs>> {
        let dir = tempfile::tempdir()?;
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt)?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .stderr(Stdio::null())
            .status()?
            .success();
        Ok(ok.then_some(Tmpfs { _dir: dir, mnt }))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg("-l").arg(&self.mnt).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("umount {}: {other:?}", self.mnt.display()),
        }
    }
}

/// Kills the monitor if the test ends early.
struct Monitor(Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            if let Err(e) = self.0.kill() {
                eprintln!("killing the monitor: {e}");
            }
            if let Err(e) = self.0.wait() {
                eprintln!("reaping the monitor: {e}");
            }
        }
    }
}

fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn numbered(from: u64, to: u64) -> String {
    (from..=to).map(|i| format!("line {i}\n")).collect()
}

/// Rotated segments of `app.log`, oldest first, then the live file.
fn app_log(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut segs: Vec<(String, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("app.log.").then(|| (name, e.path()))
        })
        .collect();
    segs.sort();
    let mut out = Vec::new();
    for (_, path) in segs {
        out.extend(fs::read(path)?);
    }
    match fs::read(dir.join("app.log")) {
        Ok(live) => out.extend(live),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) -> std::io::Result<u64> {
    let mut file = File::create(path)?;
    let chunk = vec![0u8; 4096];
    let mut total = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}

fn monitor_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

#[test]
fn disk_full_holds_the_output_and_loses_nothing() -> TestResult {
    let Some(fs_) = Tmpfs::mount("2m")? else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return Ok(());
    };
    let logs = fs_.mnt.join("logs");
    fs::create_dir(&logs)?;
    let gate = fs_.mnt.join("gate");
    let status = Command::new("mkfifo").arg(&gate).status()?;
    assert!(status.success(), "mkfifo");
    // Like the daemon: the monitor's stderr on the same filesystem.
    let monitor_err = File::create(fs_.mnt.join("monitor.err"))?;
    let script = format!(
        "i=1; while [ $i -le {HALF} ]; do echo \"line $i\"; i=$((i+1)); done; \
         cat '{}' >/dev/null; \
         while [ $i -le {} ]; do echo \"line $i\"; i=$((i+1)); done",
        gate.display(),
        2 * HALF
    );
    let child = Command::new(env!("CARGO_BIN_EXE_lodge"))
        .arg("supervise")
        .arg("--log-dir")
        .arg(&logs)
        .args(["--max-size", "128KiB", "--max-files", "20", "--"])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(monitor_err)
        .spawn()?;
    let mut monitor = Monitor(child);
    let pid = monitor.0.id();

    let first = numbered(1, HALF);
    wait_until(Duration::from_secs(30), "the first half in the log", || {
        app_log(&logs).is_ok_and(|l| l.len() >= first.len())
    })?;

    let filler = fs_.mnt.join("filler");
    let filled = fill(&filler)?;
    assert!(filled > 0, "the filler took the free space");
    OpenOptions::new()
        .write(true)
        .open(&gate)?
        .write_all(b"go\n")?;

    // While the disk is full: the monitor lives, and says capture stalled.
    let capture = logs.join("capture.json");
    let mut reported = String::new();
    let stalled = wait_until(Duration::from_secs(10), "a stall report", || {
        reported = fs::read_to_string(&capture).unwrap_or_default();
        reported.contains("No space left")
    });
    thread::sleep(Duration::from_millis(1500));
    assert!(
        monitor_alive(pid),
        "the monitor died on the full disk: {:?}",
        monitor.0.try_wait()
    );
    let during = app_log(&logs)?;
    assert!(
        during.len() < first.len() + numbered(HALF + 1, 2 * HALF).len(),
        "the disk was not full after all"
    );
    stalled.map_err(|e| format!("{e}; capture.json: {reported:?}"))?;
    let record: serde_json::Value = serde_json::from_str(&reported)?;
    assert_eq!(record["stalled"][0]["source"], "app", "{record}");

    fs::remove_file(&filler)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = monitor.0.try_wait()? {
            break status;
        }
        assert!(Instant::now() < deadline, "the writer never finished");
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    File::open(fs_.mnt.join("monitor.err"))?.read_to_string(&mut err)?;
    assert!(status.success(), "monitor ended with {status}: {err}");
    assert!(!err.contains("panicked"), "monitor.err: {err}");

    let want = numbered(1, 2 * HALF);
    let got = app_log(&logs)?;
    assert!(
        got == want.as_bytes(),
        "every line exactly once, in order: got {} bytes, wanted {}; first difference at {:?}",
        got.len(),
        want.len(),
        got.iter().zip(want.as_bytes()).position(|(a, b)| a != b)
    );
    let held = got.len() - during.len();
    eprintln!(
        "disk full: {} of {} lines were on disk during the stall; {} bytes held and written after; stall record {reported:?}",
        during.iter().filter(|&&b| b == b'\n').count(),
        2 * HALF,
        held
    );
    let after: serde_json::Value = serde_json::from_slice(&fs::read(&capture)?)?;
    assert_eq!(
        after["stalled"].as_array().map(Vec::len),
        Some(0),
        "{after}"
    );
    Ok(())
}
