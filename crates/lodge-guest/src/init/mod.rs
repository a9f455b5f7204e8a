//! `lodge-init` as PID 1: the boot sequence and the one way out.
//!
//! Sequence: take over signals, mount proc/sys/dev, open the console,
//! answer a self-test, open the status port, load modules, set the free
//! page reporting order, find the disks,
//! read the config, assemble the overlay root while the network comes up
//! (loopback always, the NIC when the config has one), mount the volumes
//! attached at create, write the network's
//! files into the root, start the guest agent and the workload, reap until
//! the workload exits. Every path, success, failure or panic, ends in
//! [`finish`]: kill what is left, unmount, sync, report, power off. PID 1
//! must never return or exit, since the kernel panics when it does.

mod agent_supervisor;
mod button;
mod console;
mod disks;
mod error;
mod memory;
mod modules;
mod network;
mod rootfs;
mod volumes;
mod workload;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

use lodge_guest::{GuestConfig, StatusEvent, SELFTEST_FLAG, SELFTEST_OK};

use crate::sys::{self, ExitStatus};

use error::{Context, Error, Result};

use console::{Console, FastConsole, StatusPort};
use rootfs::Mounts;

/// How long to wait for the virtio disks to appear.
const DISK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the fast console's device to appear.
const FAST_CONSOLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the configured NIC to appear.
const NIC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for leftover processes to die after SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on the config JSON read from the config disk.
const CONFIG_MAX: usize = 16 << 20;
/// Hostname when the configuration names none.
const DEFAULT_HOSTNAME: &str = "localhost";

/// How the run ended, before shutdown.
enum Ending {
    Exited(ExitStatus),
    Failed(String),
}

/// Run as PID 1. Never returns.
pub fn pid1() -> ! {
    // Block signals before anything else so none sent early is lost.
    let signals = sys::block_into_signalfd(workload::SIGNALS).ok();
    let _ = sys::disable_ctrl_alt_del();
    let mut mounts = Mounts::default();
    let early = Mounts::mount_early();
    let console = Console::open();

    if early.is_ok() && selftest_requested() {
        console.write(&format!("{SELFTEST_OK}\n"));
        console.drain();
        power_off(&console);
    }

    let status = StatusPort::open();
    let mut fast = None;
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        early?;
        run(&console, &status, &mut fast, &mut mounts, signals.as_ref())
    }));
    let ending = match ran {
        Ok(Ok(exit)) => Ending::Exited(exit),
        Ok(Err(e)) => Ending::Failed(e.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".to_owned());
            Ending::Failed(format!("internal error: {what}"))
        }
    };
    finish(&console, &status, &mut mounts, fast, ending)
}

fn selftest_requested() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|cmdline| cmdline.split_whitespace().any(|arg| arg == SELFTEST_FLAG))
        .unwrap_or(false)
}

fn run(
    console: &Console,
    status: &StatusPort,
    fast: &mut Option<FastConsole>,
    mounts: &mut Mounts,
    signals: Option<&OwnedFd>,
) -> Result<ExitStatus> {
    let module_failures = modules::load_all();
    // After the modules: the balloon has registered by now (see `memory`).
    if let Err(e) = memory::apply_reporting_order() {
        console.write(&format!(
            "lodge-init: cannot set the free page reporting order: {e}\n"
        ));
    }
    let explain = |e: Error| {
        if module_failures.is_empty() {
            e
        } else {
            Error::new(format!(
                "{e} (module load failures: {})",
                module_failures.join("; ")
            ))
        }
    };

    let disks = disks::find(DISK_TIMEOUT);
    let missing = |serial: &str| {
        explain(Error::new(format!(
            "no disk with serial {serial} appeared within {}s",
            DISK_TIMEOUT.as_secs()
        )))
    };
    let root_disk = disks
        .root
        .as_deref()
        .ok_or_else(|| missing(lodge_guest::SERIAL_ROOT))?;
    let config_disk = disks
        .config
        .as_deref()
        .ok_or_else(|| missing(lodge_guest::SERIAL_CONFIG))?;
    let config = read_config(config_disk)?;
    let links = network::Links::start(config.network.clone(), NIC_TIMEOUT);
    mounts
        .assemble(root_disk, disks.overlay.as_deref())
        .map_err(explain)?;
    volumes::mount_all(&config.volumes, mounts, DISK_TIMEOUT).map_err(explain)?;
    links.wait().map_err(explain)?;
    network::write_files(config.network.as_ref(), Path::new(rootfs::NEWROOT))?;

    let hostname = config.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
    sys::sethostname(hostname).context(|| format!("set hostname {hostname}"))?;
    // The workload writes to the fast console when the host gave the VM
    // one; without it (or if it never appears) to the serial console.
    *fast = match FastConsole::open_if_asked(FAST_CONSOLE_TIMEOUT, console.try_clone()) {
        Some(Ok(port)) => Some(port),
        Some(Err(why)) => {
            console.write(&format!(
                "lodge-init: no fast console ({why}); using the serial console\n"
            ));
            None
        }
        None => None,
    };
    let stdio = fast
        .as_ref()
        .map_or((console.raw_fd(), console.raw_fd()), FastConsole::stdio);
    let plan = workload::plan(&config, rootfs::NEWROOT, stdio, hostname)?;
    let mut agent = agent_supervisor::AgentSupervisor::start(&workload::agent_config(
        &config,
        rootfs::NEWROOT,
        hostname,
    )?);
    let started = workload::start(&config, &plan);
    if let Some(fast) = fast.as_mut() {
        fast.started();
    }
    match started? {
        workload::Start::Running(pid) => {
            status.send(&StatusEvent::Started {
                pid: u32::try_from(pid).unwrap_or_default(),
            });
            workload::supervise(pid, signals, &mut agent)
        }
        workload::Start::ExecFailed { message, code } => {
            console.write(&format!("{message}\n"));
            Ok(ExitStatus::Code(code))
        }
    }
}

fn read_config(disk: &Path) -> Result<GuestConfig> {
    let describe = || format!("read config disk {}", disk.display());
    let mut file = std::fs::File::open(disk).context(describe)?;
    let mut bytes = Vec::new();
    let mut block = vec![0u8; lodge_guest::CONFIG_IMAGE_ALIGN];
    while bytes.len() < CONFIG_MAX {
        let n = file.read(&mut block).context(describe)?;
        bytes.extend_from_slice(&block[..n]);
        if n == 0 || block[..n].contains(&0) {
            break;
        }
    }
    GuestConfig::decode(&bytes).map_err(|e| Error::new(format!("{}: {e}", describe())))
}

/// Stop everything, report, power off.
fn finish(
    console: &Console,
    status: &StatusPort,
    mounts: &mut Mounts,
    fast: Option<FastConsole>,
    ending: Ending,
) -> ! {
    // Like docker: when the workload ends, whatever it left behind dies.
    let _ = sys::kill(-1, libc::SIGKILL);
    let deadline = Instant::now() + REAP_TIMEOUT;
    while Instant::now() < deadline {
        match sys::reap_one() {
            Ok(Some(_)) => {}
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => break,
        }
    }
    if let Some(fast) = fast {
        // Every writer is gone: what the workload wrote leaves the guest
        // before anything is torn down.
        fast.finish();
    }
    let event = match ending {
        Ending::Exited(ExitStatus::Code(code)) => StatusEvent::Exited { code },
        Ending::Exited(ExitStatus::Signal(signal)) => StatusEvent::Signaled { signal },
        Ending::Failed(message) => {
            console.write(&format!("lodge-init: {message}\n"));
            StatusEvent::Error(message)
        }
    };
    console.drain();
    mounts.unmount_all();
    status.send(&event);
    status.drain();
    power_off(console)
}

fn power_off(console: &Console) -> ! {
    // The kernel's "reboot: Power down" is an emergency-level message that
    // `quiet` does not hide; keep it out of the user's console log.
    let _ = std::fs::write("/proc/sys/kernel/printk", "0");
    sys::sync();
    let err = sys::power_off();
    console.write(&format!(
        "lodge-init: power off failed: {}\n",
        sys::errno_text_of(&err)
    ));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
