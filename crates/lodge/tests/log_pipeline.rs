//! The console log guarantees (shared/DESIGN.md §1, G1–G6), shown on the
//! real binary: `lodge supervise` as the only writer, `lodge logs --dir` as
//! the reader, with synthetic writers (`seq`, `sh`, `cat`) at full speed.
//!
//! Writers that must not start before the test is ready wait on a FIFO
//! (`cat FIFO`), which the test opens when everything is attached.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn lodge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lodge"))
}

/// `lodge supervise --log-dir DIR <flags> -- <command>`, not yet waited for.
fn supervise(dir: &Path, flags: &[&str], command: &[&str]) -> std::io::Result<Child> {
    lodge()
        .arg("supervise")
        .arg("--log-dir")
        .arg(dir)
        .args(flags)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
}

/// `lodge logs --dir DIR <flags>` with its stdout collected on a thread.
fn follower(dir: &Path, flags: &[&str]) -> std::io::Result<(Child, JoinHandle<Vec<u8>>)> {
    let mut child = lodge()
        .arg("logs")
        .arg("--dir")
        .arg(dir)
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or("no stdout")
        .map_err(std::io::Error::other)?;
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    Ok((child, reader))
}

fn logs(dir: &Path, flags: &[&str]) -> std::io::Result<Output> {
    lodge()
        .arg("logs")
        .arg("--dir")
        .arg(dir)
        .args(flags)
        .output()
}

/// Waits for `child` at most `limit`; kills it and fails after that.
fn wait_for(child: &mut Child, limit: Duration, what: &str) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {limit:?}"));
            }
            Err(err) => return Err(format!("waiting for {what}: {err}")),
        }
    }
}

fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn seq(from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    Ok(Command::new("seq")
        .arg(from.to_string())
        .arg(to.to_string())
        .output()?
        .stdout)
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    let status = Command::new("mkfifo").arg(path).status()?;
    if !status.success() {
        return Err(std::io::Error::other("mkfifo failed"));
    }
    Ok(())
}

/// Lets a writer blocked in `cat FIFO` go.
fn open_gate(fifo: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(fifo)?
        .write_all(b"go\n")
}

/// A shell command that waits for the gate, then runs `then`.
fn gated(fifo: &Path, then: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("cat '{}' >/dev/null; {then}", fifo.display()),
    ]
}

fn wait_monitor_started(dir: &Path) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let path = dir.join("monitor.json");
    wait_until(Duration::from_secs(10), "monitor.json", || path.exists())?;
    Ok(serde_json::from_slice(&fs::read(path)?)?)
}

fn read_exit_json(dir: &Path) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    Ok(serde_json::from_slice(&fs::read(dir.join("exit.json"))?)?)
}

/// Rotated segments of `base` in `dir`: (seq, path), ascending.
fn segments(dir: &Path, base: &str) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(suffix) = name.strip_prefix(base).and_then(|s| s.strip_prefix('.')) {
            if suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) {
                out.push((suffix.parse().map_err(std::io::Error::other)?, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Concatenation of the retained segments and the live file.
fn retained(dir: &Path, base: &str) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (_, path) in segments(dir, base)? {
        out.extend(fs::read(path)?);
    }
    match fs::read(dir.join(base)) {
        Ok(live) => out.extend(live),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    Ok(out)
}

/// No NUL in any log file (a compressed segment is binary: its bytes are
/// checked through the readers).
fn assert_no_nul_in_dir(dir: &Path) -> TestResult {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "zst") {
            continue;
        }
        let data = fs::read(&path)?;
        assert!(!data.contains(&0), "NUL byte in {}", path.display());
    }
    Ok(())
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    err
}

fn kill(pid: u64, signal: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "kill -{signal} {pid} failed"
        )));
    }
    Ok(())
}

/// Where a difference starts, for readable failures on big outputs.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |d: &[u8]| {
        String::from_utf8_lossy(&d[at.saturating_sub(20)..(at + 20).min(d.len())]).into_owned()
    };
    format!(
        "lengths {} vs {} (wanted); first difference at byte {at}: got {:?}, wanted {:?}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    )
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert!(got == want, "{what}: {}", first_difference(got, want));
}

// G1, G2, G5: every number exactly once and in order, in the files and in
// two followers attached the whole time, across 500+ rotations.
#[test]
fn integrity_under_load_with_two_followers() -> TestResult {
    const N: u64 = 4_600_000; // about 35 MB: more than 500 segments of 64 KiB
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir)?;
    let fifo = tmp.path().join("gate");
    mkfifo(&fifo)?;
    let command = gated(&fifo, &format!("exec seq 1 {N}"));
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut monitor = supervise(
        &dir,
        &["--max-size", "64KiB", "--max-files", "1000"],
        &command,
    )?;
    wait_monitor_started(&dir)?;

    let (mut f1, out1) = follower(&dir, &["--tail", "all", "-f"])?;
    let (mut f2, out2) = follower(&dir, &["--tail", "all", "-f"])?;
    thread::sleep(Duration::from_millis(200));
    open_gate(&fifo)?;

    let status = wait_for(&mut monitor, Duration::from_secs(40), "monitor")?;
    assert!(
        status.success(),
        "monitor: {status:?} {}",
        stderr_of(&mut monitor)
    );
    // Followers end by themselves once the monitor is gone.
    for (f, name) in [(&mut f1, "follower 1"), (&mut f2, "follower 2")] {
        let status = wait_for(f, Duration::from_secs(20), name)?;
        assert!(status.success(), "{name}: {status:?}");
    }
    let want = seq(1, N)?;
    assert_same(&out1.join().map_err(|_| "reader")?, &want, "follower 1");
    assert_same(&out2.join().map_err(|_| "reader")?, &want, "follower 2");

    let segs = segments(&dir, "app.log")?;
    assert!(segs.len() >= 500, "only {} rotations", segs.len());
    for (_, path) in &segs {
        assert_eq!(
            fs::metadata(path)?.len(),
            64 * 1024,
            "{} not cut at the limit",
            path.display()
        );
    }
    assert_same(&retained(&dir, "app.log")?, &want, "segments + live file");
    let tail_all = logs(&dir, &["--tail", "all"])?;
    assert!(tail_all.status.success());
    assert_same(&tail_all.stdout, &want, "--tail all");
    assert_no_nul_in_dir(&dir)?;
    Ok(())
}

// G6: hypeman's copy-then-truncate from outside, while the writer runs,
// leaves no NUL hole (the live file is held with O_APPEND).
#[test]
fn outside_copytruncate_leaves_no_hole() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let writer = "i=0; while [ $i -lt 150 ]; do seq 1 300; sleep 0.01; i=$((i+1)); done; echo end";
    let mut monitor = supervise(dir, &["--max-size", "1GiB"], &["sh", "-c", writer])?;
    wait_monitor_started(dir)?;
    let live = dir.join("app.log");
    let copy = dir.join("app.log.1");
    let mut rounds = 0;
    // Truncate during the first second only, so that the writer (about two
    // seconds long) still writes after the last truncate.
    let stop = Instant::now() + Duration::from_secs(1);
    while Instant::now() < stop && monitor.try_wait()?.is_none() {
        if live.exists() {
            fs::copy(&live, &copy)?;
            OpenOptions::new().write(true).open(&live)?.set_len(0)?;
            rounds += 1;
        }
        thread::sleep(Duration::from_millis(15));
    }
    let status = wait_for(&mut monitor, Duration::from_secs(20), "monitor")?;
    assert!(status.success(), "{status:?}");
    assert!(
        rounds >= 10,
        "only {rounds} truncations happened while writing"
    );
    let data = fs::read(&live)?;
    assert!(!data.is_empty(), "writes after the last truncate must land");
    assert!(!data.contains(&0), "NUL hole after copytruncate");
    assert_no_nul_in_dir(dir)?;
    // logrotate's own numbering is not ours: never read, never deleted.
    assert!(copy.exists());
    let all = logs(dir, &["--tail", "all"])?;
    assert_same(&all.stdout, &data, "--tail all reads only lodge's files");
    Ok(())
}

// G5: a follower whose stdout nobody reads does not slow the writer.
#[test]
fn stalled_follower_does_not_block_the_writer() -> TestResult {
    const N: u64 = 3_000_000; // about 21 MB, far beyond any pipe buffer
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir)?;
    let fifo = tmp.path().join("gate");
    mkfifo(&fifo)?;
    let command = gated(&fifo, &format!("exec seq 1 {N}"));
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut monitor = supervise(
        &dir,
        &["--max-size", "1MiB", "--max-files", "100"],
        &command,
    )?;
    wait_monitor_started(&dir)?;
    // stdout is a pipe that is never read.
    let mut stalled = lodge()
        .args(["logs", "--tail", "all", "-f", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()?;
    thread::sleep(Duration::from_millis(200));
    open_gate(&fifo)?;
    let status = wait_for(
        &mut monitor,
        Duration::from_secs(30),
        "monitor with a stalled follower",
    )?;
    assert!(status.success(), "{status:?}");
    assert!(
        stalled.try_wait()?.is_none(),
        "the follower should still be stuck on its full pipe"
    );
    stalled.kill()?;
    stalled.wait()?;
    assert_same(&retained(&dir, "app.log")?, &seq(1, N)?, "capture");
    Ok(())
}

// G5: a follower killed mid-stream and started again resumes from --tail,
// across rotations, and ends with the writer.
#[test]
fn killed_follower_restarted_resumes_from_tail() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let writer = "i=1; while [ $i -le 150 ]; do echo $i; i=$((i+1)); sleep 0.01; done";
    let mut monitor = supervise(
        dir,
        &["--max-size", "64", "--max-files", "1000"],
        &["sh", "-c", writer],
    )?;
    wait_monitor_started(dir)?;

    let (mut first, first_out) = follower(dir, &["--tail", "0", "-f"])?;
    wait_until(Duration::from_secs(10), "40 lines written", || {
        retained(dir, "app.log").is_ok_and(|d| d.iter().filter(|&&b| b == b'\n').count() >= 40)
    })?;
    first.kill()?;
    first.wait()?;
    let seen = String::from_utf8(first_out.join().map_err(|_| "reader")?)?;

    let (mut second, second_out) = follower(dir, &["--tail", "5", "-f"])?;
    let status = wait_for(&mut monitor, Duration::from_secs(20), "monitor")?;
    assert!(status.success());
    let status = wait_for(&mut second, Duration::from_secs(10), "restarted follower")?;
    assert!(status.success());
    let text = String::from_utf8(second_out.join().map_err(|_| "reader")?)?;
    let numbers: Vec<u32> = text.lines().map(str::parse).collect::<Result<_, _>>()?;
    let first_number = *numbers
        .first()
        .ok_or("restarted follower printed nothing")?;
    assert!(
        first_number >= 36,
        "--tail 5 after 40 lines must not start at {first_number}"
    );
    let want: Vec<u32> = (first_number..=150).collect();
    assert_eq!(
        numbers, want,
        "restarted follower must continue without gap or duplicate"
    );
    // The killed one printed a gapless run too, up to where it died.
    let seen: Vec<u32> = seen.lines().map(str::parse).collect::<Result<_, _>>()?;
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "first follower: {seen:?}"
    );
    Ok(())
}

// Exit status: code 0, code 3, killed by SIGKILL, and SIGTERM forwarded;
// each recorded in exit.json and reported as the monitor's own status.
#[test]
fn exit_status_is_recorded_and_reported() -> TestResult {
    for (command, code, signal) in [
        (vec!["sh", "-c", "echo bye; exit 0"], Some(0), None),
        (vec!["sh", "-c", "echo bye; exit 3"], Some(3), None),
    ] {
        let tmp = tempfile::tempdir()?;
        let mut monitor = supervise(tmp.path(), &[], &command)?;
        let status = wait_for(&mut monitor, Duration::from_secs(10), "monitor")?;
        assert_eq!(status.code(), code.map(|c: i64| c as i32));
        let exit = read_exit_json(tmp.path())?;
        assert_eq!(exit["code"].as_i64(), code);
        assert_eq!(exit["signal"].as_i64(), signal);
        assert_eq!(fs::read(tmp.path().join("app.log"))?, b"bye\n");
    }

    // SIGKILL to the child (by the pid in monitor.json); a follower waiting
    // on the log ends once the monitor is gone.
    let tmp = tempfile::tempdir()?;
    let mut monitor = supervise(tmp.path(), &[], &["sh", "-c", "echo up; exec sleep 30"])?;
    let info = wait_monitor_started(tmp.path())?;
    assert_eq!(info["pid"].as_u64(), Some(u64::from(monitor.id())));
    let child_pid = info["child_pid"].as_u64().ok_or("child_pid")?;
    let (mut tail, tail_out) = follower(tmp.path(), &["-f"])?;
    wait_until(Duration::from_secs(5), "output", || {
        fs::read(tmp.path().join("app.log")).is_ok_and(|d| d == b"up\n")
    })?;
    kill(child_pid, "KILL")?;
    let status = wait_for(&mut monitor, Duration::from_secs(10), "monitor")?;
    assert_eq!(status.code(), Some(137));
    let exit = read_exit_json(tmp.path())?;
    assert_eq!(exit["code"], serde_json::Value::Null);
    assert_eq!(exit["signal"].as_i64(), Some(9));
    for key in ["started_at", "finished_at"] {
        let time = exit[key].as_str().ok_or(key)?;
        humantime::parse_rfc3339(time)?;
    }
    wait_for(
        &mut tail,
        Duration::from_secs(10),
        "follower after the monitor exited",
    )?;
    assert_eq!(tail_out.join().map_err(|_| "reader")?, b"up\n");

    // SIGTERM to the monitor reaches the child.
    let tmp = tempfile::tempdir()?;
    let mut monitor = supervise(tmp.path(), &[], &["sleep", "30"])?;
    wait_monitor_started(tmp.path())?;
    kill(u64::from(monitor.id()), "TERM")?;
    let status = wait_for(&mut monitor, Duration::from_secs(10), "monitor")?;
    assert_eq!(status.code(), Some(143));
    assert_eq!(read_exit_json(tmp.path())?["signal"].as_i64(), Some(15));
    Ok(())
}

// Started the way the daemon starts it: its own session, no terminal,
// stdio on /dev/null.
#[test]
fn works_detached() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let status = Command::new("setsid")
        .arg("-w")
        .arg(env!("CARGO_BIN_EXE_lodge"))
        .args(["supervise", "--log-dir"])
        .arg(tmp.path())
        .args(["--", "sh", "-c", "echo out; echo err >&2; exit 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    assert_eq!(status.code(), Some(3));
    assert_eq!(read_exit_json(tmp.path())?["code"].as_i64(), Some(3));
    assert_eq!(fs::read(tmp.path().join("app.log"))?, b"out\n");
    assert_eq!(fs::read(tmp.path().join("vmm.log"))?, b"err\n");
    Ok(())
}

/// Makes `dir` unwritable even for root (a read-only tmpfs on top), or
/// returns false if this machine allows neither that nor a chmod that works.
fn make_unwritable(dir: &Path) -> std::io::Result<bool> {
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let mut perms = fs::metadata(dir)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
        fs::set_permissions(dir, perms)?;
    }
    // Does it hold?
    let probe = dir.join("probe");
    Ok(match File::create(&probe) {
        Ok(_) => {
            fs::remove_file(&probe)?;
            false
        }
        Err(_) => true,
    })
}

fn unmount(dir: &Path) {
    let _ = Command::new("umount")
        .arg(dir)
        .stderr(Stdio::null())
        .status();
}

// Bad input: a clear one-line error, exit code 2, nothing created.
#[test]
fn bad_input_exits_2_and_creates_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir)?;
    let file = tmp.path().join("a-file");
    fs::write(&file, b"")?;
    let missing = tmp.path().join("missing");
    let d = dir.to_str().ok_or("path")?;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--log-dir", missing.to_str().ok_or("path")?, "--", "true"],
            "does not exist",
        ),
        (
            vec!["--log-dir", file.to_str().ok_or("path")?, "--", "true"],
            "not a directory",
        ),
        (
            vec!["--log-dir", d, "--max-size", "0", "--", "true"],
            "greater than zero",
        ),
        (
            vec!["--log-dir", d, "--max-size", "-5", "--", "true"],
            "negative",
        ),
        (
            vec!["--log-dir", d, "--max-size", "12XB", "--", "true"],
            "unknown unit",
        ),
        (
            vec!["--log-dir", d, "--max-size", "", "--", "true"],
            "empty",
        ),
        (
            vec!["--log-dir", d, "--max-files", "0", "--", "true"],
            "at least 1",
        ),
        (
            vec!["--log-dir", d, "--max-files", "-1", "--", "true"],
            "--max-files",
        ),
        (vec!["--log-dir", d], "no command"),
        (vec!["--log-dir", d, "--"], "no command"),
        (
            vec!["--log-dir", d, "--", "lodge-no-such-command", "x"],
            "command not found",
        ),
        (
            vec!["--log-dir", d, "--", file.to_str().ok_or("path")?],
            "command not found",
        ),
    ];
    let check = |args: &[&str], expect: &str| -> TestResult {
        let out = lodge().arg("supervise").args(args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line wanted, got {stderr:?}"
        );
        assert!(
            stderr.starts_with("lodge: ") && stderr.contains(expect),
            "{args:?}: {stderr:?}"
        );
        Ok(())
    };
    for (args, expect) in &cases {
        check(args, expect)?;
        assert_eq!(fs::read_dir(&dir)?.count(), 0, "{args:?} created something");
    }
    assert!(!missing.exists());

    let ro = tmp.path().join("read-only");
    fs::create_dir(&ro)?;
    if make_unwritable(&ro)? {
        let result = check(
            &["--log-dir", ro.to_str().ok_or("path")?, "--", "true"],
            "not writable",
        );
        let created = fs::read_dir(&ro).map(|d| d.count()).unwrap_or(0);
        unmount(&ro);
        result?;
        assert_eq!(created, 0);
    } else {
        eprintln!("skipped the unwritable-directory case: cannot make a directory unwritable here");
        unmount(&ro);
    }
    Ok(())
}

// One writer per directory: a second monitor is refused before it starts
// its command.
#[test]
fn second_monitor_for_a_directory_is_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir)?;
    let mut first = supervise(&dir, &[], &["sleep", "30"])?;
    wait_monitor_started(&dir)?;
    let marker = tmp.path().join("second-ran");
    let touch = format!("touch '{}'", marker.display());
    let out = lodge()
        .args(["supervise", "--log-dir"])
        .arg(&dir)
        .args(["--", "sh", "-c", &touch])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another monitor"), "{stderr}");
    assert!(
        !marker.exists(),
        "the refused monitor must not run its command"
    );
    kill(u64::from(first.id()), "TERM")?;
    wait_for(&mut first, Duration::from_secs(10), "first monitor")?;
    Ok(())
}

// Byte-exact: \r\n, invalid UTF-8, NUL and a partial last line pass
// through the writer, tail, tail across segments, and follow.
#[test]
fn output_is_byte_exact() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let stdout: &[u8] = b"a\r\nb\xff\xfe\x00c\r\n\nno newline";
    let stderr: &[u8] = b"\x00vmm \xc3\x28\r\n";
    let script = r"printf 'a\r\nb\377\376\000c\r\n\nno newline'; printf '\000vmm \303\050\r\n' >&2";
    // A 5-byte limit cuts segments in the middle of lines.
    let mut monitor = supervise(
        dir,
        &["--max-size", "5", "--max-files", "100"],
        &["sh", "-c", script],
    )?;
    assert!(wait_for(&mut monitor, Duration::from_secs(10), "monitor")?.success());
    assert!(segments(dir, "app.log")?.len() >= 3);
    assert_same(&retained(dir, "app.log")?, stdout, "app files");
    assert_same(&retained(dir, "vmm.log")?, stderr, "vmm files");

    for (tail, want) in [
        ("all", stdout),
        ("1", &b"no newline"[..]),
        ("2", &b"\nno newline"[..]),
        ("3", &b"b\xff\xfe\x00c\r\n\nno newline"[..]),
        ("4", stdout),
        ("100", stdout),
        ("0", &b""[..]),
    ] {
        let out = logs(dir, &["--tail", tail])?;
        assert!(out.status.success());
        assert_same(&out.stdout, want, &format!("--tail {tail}"));
        let out = logs(dir, &["--tail", tail, "-f"])?;
        assert_same(&out.stdout, want, &format!("--tail {tail} -f"));
    }
    let out = logs(dir, &["--source", "vmm", "--tail", "all"])?;
    assert_same(&out.stdout, stderr, "--source vmm");
    let out = logs(dir, &["--source", "vmm", "--tail", "1"])?;
    assert_same(&out.stdout, stderr, "--source vmm --tail 1");
    Ok(())
}

/// Bytes used by `base`'s files in `dir`, each inode counted once.
fn disk_use(dir: &Path, base: &str) -> u64 {
    let mut seen = std::collections::HashMap::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(base) {
                if let Ok(meta) = entry.metadata() {
                    seen.insert(meta.ino(), meta.len());
                }
            }
        }
    }
    seen.values().sum()
}

// G3: with a small --max-files, disk use stays within (N+1) × SIZE.
#[test]
fn disk_use_stays_bounded() -> TestResult {
    const SIZE: u64 = 64 * 1024;
    const FILES: u64 = 2;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir)?;
    let fifo = tmp.path().join("gate");
    mkfifo(&fifo)?;
    let command = gated(&fifo, "seq 1 1500000; seq 1 300000 >&2");
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut monitor = supervise(&dir, &["--max-size", "64KiB", "--max-files", "2"], &command)?;
    wait_monitor_started(&dir)?;
    let (tx, rx) = mpsc::channel();
    let sampler_dir = dir.clone();
    let sampler = thread::spawn(move || {
        let mut peak = (0, 0);
        while rx.try_recv().is_err() {
            peak.0 = peak.0.max(disk_use(&sampler_dir, "app.log"));
            peak.1 = peak.1.max(disk_use(&sampler_dir, "vmm.log"));
        }
        peak
    });
    open_gate(&fifo)?;
    let status = wait_for(&mut monitor, Duration::from_secs(30), "monitor")?;
    assert!(status.success());
    tx.send(())?;
    let peak = sampler.join().map_err(|_| "sampler")?;
    // A sample is not atomic: it may see a segment about to be deleted and
    // the file that replaces it, so allow one file of slack while running.
    assert!(
        peak.0 <= (FILES + 2) * SIZE,
        "app.log peak {} bytes",
        peak.0
    );
    assert!(
        peak.1 <= (FILES + 2) * SIZE,
        "vmm.log peak {} bytes",
        peak.1
    );
    for base in ["app.log", "vmm.log"] {
        assert!(disk_use(&dir, base) <= (FILES + 1) * SIZE, "{base} at rest");
        assert_eq!(segments(&dir, base)?.len() as u64, FILES, "{base} segments");
    }
    // Retention drops whole segments only: what is left is the exact end.
    let want = seq(1, 1_500_000)?;
    let kept = retained(&dir, "app.log")?;
    assert!(want.ends_with(&kept) && kept.len() as u64 > FILES * SIZE);
    Ok(())
}

// G5 sanity: a line written by the program reaches a follower quickly.
#[test]
fn follow_latency_is_low() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir)?;
    let fifo = tmp.path().join("input");
    mkfifo(&fifo)?;
    let fifo_arg = fifo.to_str().ok_or("path")?;
    let mut monitor = supervise(&dir, &["--max-size", "256"], &["cat", fifo_arg])?;
    let mut input = OpenOptions::new().write(true).open(&fifo)?;
    let mut reader = lodge()
        .args(["logs", "-f", "--tail", "0", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = reader.stdout.take().ok_or("stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    // Make sure the follower is attached: keep writing until it echoes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        input.write_all(b"ready\n")?;
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err("follower never attached".into());
        }
    }
    while rx.recv_timeout(Duration::from_millis(50)).is_ok() {}
    let mut latencies = Vec::new();
    for i in 0..40 {
        let line = format!("ping {i}\n");
        let sent = Instant::now();
        input.write_all(line.as_bytes())?;
        // A line cut by a rotation (every 256 bytes here) arrives in pieces.
        let mut data = Vec::new();
        let mut at = sent;
        while data.len() < line.len() {
            let (when, chunk) = rx.recv_timeout(Duration::from_secs(5))?;
            data.extend(chunk);
            at = when;
        }
        assert_eq!(data, line.as_bytes());
        latencies.push(at - sent);
        thread::sleep(Duration::from_millis(10));
    }
    drop(input);
    assert!(wait_for(&mut monitor, Duration::from_secs(10), "monitor")?.success());
    wait_for(&mut reader, Duration::from_secs(10), "follower")?;
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    eprintln!("follow latency through the debug binaries: p50 {p50:?}, max {max:?}");
    assert!(p50 < Duration::from_millis(50), "p50 {p50:?}");
    assert!(max < Duration::from_secs(1), "max {max:?}");
    Ok(())
}

// G4: a new monitor on an existing directory appends and continues the
// segment numbering; nothing of the first run is rewritten.
#[test]
fn monitor_continues_an_existing_directory() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let flags = ["--max-size", "1KiB", "--max-files", "1000"];
    let mut first = supervise(dir, &flags, &["seq", "1", "3000"])?;
    assert!(wait_for(&mut first, Duration::from_secs(10), "first run")?.success());
    let before = segments(dir, "app.log")?;
    let saved: Vec<Vec<u8>> = before
        .iter()
        .map(|(_, p)| fs::read(p))
        .collect::<Result<_, _>>()?;
    let live_ino = fs::metadata(dir.join("app.log"))?.ino();
    let first_exit = read_exit_json(dir)?;

    let mut second = supervise(dir, &flags, &["sh", "-c", "seq 3001 6000; exit 4"])?;
    assert_eq!(
        wait_for(&mut second, Duration::from_secs(10), "second run")?.code(),
        Some(4)
    );
    let after = segments(dir, "app.log")?;
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "old segments keep their numbers"
    );
    for ((_, path), data) in before.iter().zip(&saved) {
        assert_eq!(&fs::read(path)?, data, "{} rewritten", path.display());
    }
    assert!(after.len() > before.len());
    assert_eq!(
        after[before.len()].0,
        before.last().map_or(1, |s| s.0 + 1),
        "numbering continues"
    );
    // The first run's live file was appended to, then rotated as the next seq.
    assert_eq!(fs::metadata(&after[before.len()].1)?.ino(), live_ino);
    assert_same(
        &retained(dir, "app.log")?,
        &seq(1, 6000)?,
        "both runs, in order",
    );
    let second_exit = read_exit_json(dir)?;
    assert_eq!(second_exit["code"].as_i64(), Some(4));
    assert_ne!(first_exit, second_exit);
    Ok(())
}

// A closed stdout (`| head`) ends `lodge logs` quietly.
#[test]
fn closed_stdout_is_a_quiet_exit() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut monitor = supervise(
        tmp.path(),
        &["--max-size", "256KiB", "--max-files", "10"],
        &["seq", "1", "400000"],
    )?;
    assert!(wait_for(&mut monitor, Duration::from_secs(10), "monitor")?.success());
    let mut reader = lodge()
        .args(["logs", "--tail", "all", "--dir"])
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut head = [0u8; 16];
    reader
        .stdout
        .take()
        .ok_or("stdout")?
        .read_exact(&mut head)?;
    // stdout is dropped (closed) here.
    let status = wait_for(&mut reader, Duration::from_secs(10), "reader")?;
    assert_eq!(status.code(), Some(0));
    assert_eq!(stderr_of(&mut reader), "");
    Ok(())
}

/// Names in `dir`, sorted.
fn names_in(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// VmHWM of `pid` in KiB, 0 once it is gone.
fn vm_hwm_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One run of the compression workload: two phases of numbered lines with
/// a pause between them, a follower attached the whole time; returns what
/// the readers saw (follow, tails, --since the pause, --until it) and the
/// monitor's peak memory.
/// What each reader printed, and the monitor's VmHWM in KiB.
type ReadersAndPeak = (Vec<Vec<u8>>, u64);

fn compression_run(compress: &str) -> Result<ReadersAndPeak, Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir)?;
    let (gate1, gate2) = (tmp.path().join("gate1"), tmp.path().join("gate2"));
    mkfifo(&gate1)?;
    mkfifo(&gate2)?;
    let script = format!(
        "cat '{}' >/dev/null; seq 1 150000; cat '{}' >/dev/null; exec seq 150001 300000",
        gate1.display(),
        gate2.display()
    );
    let mut monitor = lodge()
        .env("LODGE_LOG_COMPRESS", compress)
        .args(["supervise", "--max-size", "64KiB", "--max-files", "1000"])
        .arg("--log-dir")
        .arg(&dir)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_monitor_started(&dir)?;
    let (mut follow, followed) = follower(&dir, &["--tail", "all", "-f"])?;
    thread::sleep(Duration::from_millis(100));
    open_gate(&gate1)?;
    let phase1 = seq(1, 150_000)?;
    let mut hwm = 0;
    wait_until(Duration::from_secs(20), "phase 1 written", || {
        hwm = hwm.max(vm_hwm_kib(monitor.id()));
        logs(&dir, &["--tail", "1"]).is_ok_and(|o| o.stdout == b"150000\n")
    })?;
    // Phase 1's segments are compressed while the monitor runs.
    if compress == "zstd" {
        let compressed = wait_until(Duration::from_secs(20), "phase 1 compressed", || {
            hwm = hwm.max(vm_hwm_kib(monitor.id()));
            names_in(&dir).is_ok_and(|n| n.iter().filter(|n| n.ends_with(".zst")).count() >= 14)
        });
        if let Err(err) = compressed {
            return Err(format!("{err}: {:?}", names_in(&dir)?).into());
        }
    }
    thread::sleep(Duration::from_millis(400));
    let mark = lodge_common::time::rfc3339_micros(std::time::SystemTime::now());
    thread::sleep(Duration::from_millis(100));
    open_gate(&gate2)?;
    while monitor.try_wait()?.is_none() {
        hwm = hwm.max(vm_hwm_kib(monitor.id()));
        thread::sleep(Duration::from_millis(5));
    }
    let status = wait_for(&mut monitor, Duration::from_secs(30), "monitor")?;
    assert!(status.success(), "{status:?} {}", stderr_of(&mut monitor));
    wait_for(&mut follow, Duration::from_secs(20), "follower")?;
    let mut seen = vec![followed.join().map_err(|_| "reader")?];
    for flags in [
        &["--tail", "all"][..],
        &["--tail", "5"],
        &["--tail", "100000"],
        &["--tail", "all", "--since", &mark],
        &["--tail", "all", "--until", &mark],
        &["--tail", "3", "--until", &mark],
    ] {
        let out = logs(&dir, flags)?;
        assert!(out.status.success(), "{flags:?}");
        seen.push(out.stdout);
    }
    let mut want = phase1.clone();
    want.extend(seq(150_001, 300_000)?);
    assert_same(&seen[0], &want, &format!("follower ({compress})"));
    assert_same(&seen[4], &seq(150_001, 300_000)?, "--since the pause");
    assert_same(&seen[5], &phase1, "--until the pause");
    let files = names_in(&dir)?;
    let zst = files.iter().filter(|n| n.ends_with(".zst")).count();
    let plain = segments(&dir, "app.log")?.len();
    if compress == "zstd" {
        assert!(
            zst >= 28 && plain == 0,
            "all rotated segments compressed: {files:?}"
        );
        assert!(!files.iter().any(|n| n.ends_with(".tmp")), "{files:?}");
    } else {
        assert!(zst == 0 && plain >= 28, "{files:?}");
    }
    assert_no_nul_in_dir(&dir)?;
    Ok((seen, hwm))
}

// Compressed segments (LODGE_LOG_COMPRESS=zstd): the same workload's
// follow, tail, --since and --until output is byte-identical to the run
// without compression, and the monitor's memory stays within budget (the
// compression runs in a zstd child process).
#[test]
fn compressed_segments_read_alike() -> TestResult {
    let (plain, plain_hwm) = compression_run("off")?;
    let (compressed, hwm) = compression_run("zstd")?;
    eprintln!("monitor VmHWM without compression: {plain_hwm} KiB");
    for (i, (a, b)) in plain.iter().zip(&compressed).enumerate() {
        assert_same(b, a, &format!("reader {i} with and without compression"));
    }
    eprintln!("monitor VmHWM with compression: {hwm} KiB");
    // The budget (4 MiB) is for the release binary (scripts/bench-logs.sh);
    // here compression must not add to what the same monitor needs without.
    assert!(
        hwm > 0 && hwm <= plain_hwm + 512,
        "monitor VmHWM {hwm} KiB with compression, {plain_hwm} KiB without"
    );
    Ok(())
}

// A monitor killed while it compresses (a `.zst.tmp` on disk) loses and
// repeats nothing: the log reads as a prefix of what was written, and the
// next monitor on the directory tidies up and continues it.
#[test]
fn killed_mid_compression_loses_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir)?;
    let flags = ["--max-size", "16KiB", "--max-files", "100000"];
    let start = |command: &[&str]| -> std::io::Result<Child> {
        lodge()
            .env("LODGE_LOG_COMPRESS", "zstd")
            .arg("supervise")
            .args(flags)
            .arg("--log-dir")
            .arg(&dir)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    };
    // A writer slowed to a few segments a second per burst, so rotation and
    // compression overlap.
    let mut monitor = start(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 200 ]; do seq $((i*2000+1)) $((i*2000+2000)); i=$((i+1)); done",
    ])?;
    wait_monitor_started(&dir)?;
    let mut caught_tmp = false;
    wait_until(Duration::from_secs(20), "a compression in progress", || {
        caught_tmp = names_in(&dir).is_ok_and(|n| n.iter().any(|n| n.ends_with(".zst.tmp")));
        caught_tmp || monitor.try_wait().ok().flatten().is_some()
    })?;
    kill(u64::from(monitor.id()), "KILL")?;
    let _ = monitor.wait()?;
    let all = seq(1, 400_000)?;
    let before = logs(&dir, &["--tail", "all"])?;
    assert!(before.status.success());
    assert!(
        all.starts_with(&before.stdout),
        "after the kill: {}",
        first_difference(&before.stdout, &all[..before.stdout.len().min(all.len())])
    );
    assert!(
        before.stdout.len() > 16 * 1024,
        "some segments were written"
    );

    let mut second = start(&["seq", "400001", "401000"])?;
    let status = wait_for(&mut second, Duration::from_secs(30), "second monitor")?;
    assert!(status.success(), "{status:?} {}", stderr_of(&mut second));
    let after = logs(&dir, &["--tail", "all"])?;
    let mut want = before.stdout.clone();
    want.extend(seq(400_001, 401_000)?);
    assert_same(&after.stdout, &want, "continued after recovery");
    let files = names_in(&dir)?;
    assert!(!files.iter().any(|n| n.ends_with(".tmp")), "{files:?}");
    assert!(
        segments(&dir, "app.log")?.is_empty(),
        "every segment compressed in the end: {files:?}"
    );
    eprintln!("caught a compression in progress: {caught_tmp}");
    Ok(())
}
