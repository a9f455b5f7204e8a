//! Processes lodge starts for itself die with the process that started them
//! (issue 9): the accelerator probe's QEMU with the daemon, and the VMM with
//! its monitor. Each test finds the child by its parent pid and a marker in
//! its argv (never by name alone), kills the parent the way that used to
//! leave the child behind, and waits for the child to be gone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

const LODGE: &str = env!("CARGO_BIN_EXE_lodge");

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A process identified by pid and start time, so a reused pid is not
/// mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    start: u64,
}

/// `(ppid, starttime, state)` from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(i32, u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = text.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start, state))
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Children of `parent` whose argv contains `marker`.
fn children_with(parent: i32, marker: &str) -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (ppid, start, _) = stat(pid)?;
            (ppid == parent && cmdline(pid).contains(marker)).then_some(Proc { pid, start })
        })
        .collect()
}

/// Whether `p` still runs (a zombie waiting for init to reap it does not).
fn alive(p: Proc) -> bool {
    matches!(stat(p.pid), Some((_, start, state)) if start == p.start && state != 'Z')
}

fn signal(pid: i32, sig: Signal) -> std::io::Result<()> {
    let pid = Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("pid 0"))?;
    kill_process(pid, sig).map_err(std::io::Error::from)
}

/// SIGKILLs `p` if it is still there: a failing test leaves nothing behind.
struct Reaper(Option<Proc>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(p) = self.0.filter(|p| alive(*p)) {
            if let Err(e) = signal(p.pid, Signal::KILL) {
                eprintln!("cleaning up pid {}: {e}", p.pid);
            }
        }
    }
}

/// Kills and reaps the parent if the test ends early.
struct Parent(Child);

impl Drop for Parent {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            if let Err(e) = self.0.kill() {
                eprintln!("killing pid {}: {e}", self.0.id());
            }
        }
        if let Err(e) = self.0.wait() {
            eprintln!("reaping pid {}: {e}", self.0.id());
        }
    }
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The system dir with a kernel and initrd, and a usable /dev/kvm, or why
/// the probe test cannot run here.
fn probe_prerequisites() -> Result<PathBuf, String> {
    let dir = std::env::var_os("LODGE_SYSTEM_DIR")
        .map(PathBuf::from)
        .ok_or("LODGE_SYSTEM_DIR is not set")?;
    for f in ["vmlinuz", "initrd.img"] {
        if !dir.join(f).is_file() {
            return Err(format!("{} has no {f}", dir.display()));
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm is not usable ({e}), so the daemon would not probe"))?;
    Ok(dir)
}

/// The self-test guest's kernel command line marker (lodge-hypervisor's
/// `SELFTEST_CMDLINE`): only the probe's QEMU carries it.
const PROBE_MARKER: &str = "lodge.selftest";

#[test]
fn probe_qemu_dies_when_the_daemon_is_stopped_during_the_probe() -> TestResult {
    let system_dir = match probe_prerequisites() {
        Ok(dir) => dir,
        Err(why) => {
            eprintln!("SKIP probe_qemu_dies_when_the_daemon_is_stopped_during_the_probe: {why}");
            return Ok(());
        }
    };
    let tmp = tempfile::Builder::new()
        .prefix("lodge-probe-life")
        .tempdir()?;
    let data_dir = tmp.path().join("data");
    let log_path = tmp.path().join("serve.log");
    let log = std::fs::File::create(&log_path)?;
    let daemon = Command::new(LODGE)
        .arg("serve")
        // Tests never touch the host's network.
        .env("LODGE_NETWORK", "off")
        .env("LODGE_DATA_DIR", &data_dir)
        .env("LODGE_SYSTEM_DIR", &system_dir)
        .env("LODGE_LISTEN", format!("127.0.0.1:{}", free_port()?))
        .env_remove("LODGE_ACCEL")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut daemon = Parent(daemon);
    let daemon_pid = i32::try_from(daemon.0.id())?;

    let mut reaper = Reaper(None);
    let probe = wait_for("the probe QEMU to start", Duration::from_secs(30), || {
        children_with(daemon_pid, PROBE_MARKER).first().copied()
    })
    .map_err(|e| format!("{e}; serve.log:\n{}", read(&log_path)))?;
    reaper.0 = Some(probe);

    // Stop the daemon mid-probe, as an operator or a service manager would.
    std::thread::sleep(Duration::from_millis(300));
    signal(daemon_pid, Signal::TERM)?;
    wait_for(
        "the daemon to exit on SIGTERM",
        Duration::from_secs(20),
        || daemon.0.try_wait().ok().flatten(),
    )?;
    wait_for(
        "the probe QEMU to die with the daemon",
        Duration::from_secs(10),
        || (!alive(probe)).then_some(()),
    )
    .map_err(|e| format!("{e}: pid {} `{}`", probe.pid, cmdline(probe.pid)))?;
    Ok(())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn vmm_dies_when_its_monitor_is_killed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let logs = tmp.path().join("logs");
    std::fs::create_dir(&logs)?;
    // A unique argument marks our "VMM" among every process on the host.
    let marker = format!("lodge-child-lifetime-{}", std::process::id());
    let monitor = Command::new(LODGE)
        .arg("supervise")
        .arg("--log-dir")
        .arg(&logs)
        .args(["--", "sh", "-c", "while :; do sleep 1; done", &marker])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut monitor = Parent(monitor);
    let monitor_pid = i32::try_from(monitor.0.id())?;

    let mut reaper = Reaper(None);
    let vmm = wait_for(
        "the monitor to start its child",
        Duration::from_secs(20),
        || children_with(monitor_pid, &marker).first().copied(),
    )?;
    reaper.0 = Some(vmm);
    wait_for("monitor.json", Duration::from_secs(20), || {
        logs.join("monitor.json").exists().then_some(())
    })?;

    // SIGKILL: the monitor gets no chance to forward anything.
    signal(monitor_pid, Signal::KILL)?;
    wait_for("the monitor to die", Duration::from_secs(10), || {
        monitor.0.try_wait().ok().flatten()
    })?;
    wait_for(
        "the VMM to die with its monitor",
        Duration::from_secs(10),
        || (!alive(vmm)).then_some(()),
    )
    .map_err(|e| format!("{e}: pid {} `{}`", vmm.pid, cmdline(vmm.pid)))?;
    Ok(())
}
