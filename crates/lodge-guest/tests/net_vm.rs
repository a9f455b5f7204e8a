//! The guest side of networking, in a real VM: `qemu-system-x86_64` boots
//! lodge's kernel and initrd with a busybox root disk, a config disk in
//! lodge's format ([`GuestConfig::encode`], written raw as the daemon's
//! `disks::raw_image` does) and a virtio-net NIC on QEMU's user-mode
//! network, which stands in for the host's bridge and TAP: slirp's
//! 10.0.2.0/24 with the gateway at 10.0.2.2, which forwards TCP to the
//! host's loopback. The workload prints what the guest's network looks like
//! and fetches a page from a listener this test runs on 127.0.0.1.
//!
//! Needs `LODGE_SYSTEM_DIR` (kernel, initrd and `rootfs-busybox/` from
//! `scripts/build-guest.sh`); skips, saying so, without it. `LODGE_ACCEL`
//! picks the accelerator (default `tcg`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lodge_guest::{parse_status_line, GuestConfig, MacAddr, NetworkConfig, StatusEvent};

/// Generous: a TCG boot on a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const MAC: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0x00, 0x02, 0x0f]);

fn system_dir(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("LODGE_SYSTEM_DIR").map(PathBuf::from) else {
        eprintln!("SKIP {test}: LODGE_SYSTEM_DIR is not set (see scripts/build-guest.sh)");
        return None;
    };
    for need in ["initrd.img", "rootfs-busybox"] {
        if !dir.join(need).exists() {
            eprintln!("SKIP {test}: no {need} in {}", dir.display());
            return None;
        }
    }
    Some(dir)
}

fn kernel(system: &Path) -> PathBuf {
    let elf = system.join("vmlinux");
    if elf.exists() {
        elf
    } else {
        system.join("vmlinuz")
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The busybox tree with `/etc/resolv.conf` a symlink out of the root, as
/// images with a resolver daemon have it, made into an ext4 root disk.
fn root_disk(system: &Path, work: &Path) -> PathBuf {
    let tree = work.join("tree");
    run(Command::new("cp")
        .arg("-a")
        .arg(system.join("rootfs-busybox"))
        .arg(&tree));
    let resolv = tree.join("etc/resolv.conf");
    if resolv.symlink_metadata().is_ok() {
        std::fs::remove_file(&resolv).expect("rm resolv.conf");
    }
    std::os::unix::fs::symlink("../run/resolvconf/resolv.conf", &resolv).expect("symlink");
    let disk = work.join("root.ext4");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("root disk");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "lodge-root", "-d"])
        .arg(&tree)
        .arg(&disk));
    disk
}

/// What one boot left behind.
struct Boot {
    console: String,
    events: Vec<StatusEvent>,
    /// From QEMU's start to the first line the workload printed.
    to_workload: Option<Duration>,
}

/// Boot `config` with a virtio-net NIC (when `nic`) on slirp's network.
fn boot(system: &Path, work: &Path, config: &GuestConfig, nic: bool) -> Boot {
    let root = root_disk(system, work);
    let config_disk = work.join("config.raw");
    std::fs::write(&config_disk, config.encode()).expect("config disk");
    let status = work.join("status.log");
    let accel = std::env::var("LODGE_ACCEL").unwrap_or_else(|_| "tcg".into());

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-machine", "q35", "-accel", &accel])
        .args(["-smp", "1", "-m", "256"])
        .arg("-kernel")
        .arg(kernel(system))
        .arg("-initrd")
        .arg(system.join("initrd.img"))
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args(["-chardev", "stdio,id=console,signal=off"])
        .args(["-serial", "chardev:console"])
        .arg("-chardev")
        .arg(format!(
            "file,id=status,path={},append=on",
            status.display()
        ))
        .args(["-serial", "chardev:status"]);
    for (i, (disk, serial)) in [
        (&root, lodge_guest::SERIAL_ROOT),
        (&config_disk, lodge_guest::SERIAL_CONFIG),
    ]
    .into_iter()
    .enumerate()
    {
        cmd.arg("-drive")
            .arg(format!(
                "file={},if=none,id=disk{i},format=raw,readonly=on",
                disk.display()
            ))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=disk{i},serial={serial}"));
    }
    if nic {
        cmd.args(["-netdev", "user,id=n0,net=10.0.2.0/24"])
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={MAC}"));
    }
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu-system-x86_64 (is it installed?)");

    let first_line: Arc<Mutex<Option<Duration>>> = Arc::default();
    let stdout = child.stdout.take().expect("piped stdout");
    let seen = Arc::clone(&first_line);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("workload-start") {
                eprintln!("{line}");
                if let Ok(mut first) = seen.lock() {
                    first.get_or_insert(started.elapsed());
                }
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    loop {
        if child.try_wait().expect("wait qemu").is_some() {
            break;
        }
        if started.elapsed() > BOOT_TIMEOUT {
            child.kill().expect("kill qemu");
            child.wait().expect("reap qemu");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let console = reader.join().expect("console reader");
    let events = std::fs::read_to_string(&status)
        .unwrap_or_default()
        .lines()
        .filter_map(parse_status_line)
        .collect();
    let to_workload = *first_line.lock().expect("lock");
    Boot {
        console,
        events,
        to_workload,
    }
}

fn exit_code(events: &[StatusEvent]) -> Option<i32> {
    events.iter().find_map(|e| match e {
        StatusEvent::Exited { code } => Some(*code),
        _ => None,
    })
}

/// A one-shot HTTP server on 127.0.0.1; returns its port and, once a
/// request came, the request line.
fn http_once(body: &'static str) -> (u16, Arc<Mutex<Option<String>>>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got: Arc<Mutex<Option<String>>> = Arc::default();
    let record = Arc::clone(&got);
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
            match conn.read(&mut byte) {
                Ok(1) => request.push(byte[0]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&request);
        if let Ok(mut slot) = record.lock() {
            *slot = text.lines().next().map(str::to_owned);
        }
        let reply = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if let Err(e) = conn.write_all(reply.as_bytes()) {
            eprintln!("http_once: write reply: {e}");
        }
    });
    (port, got)
}

fn network() -> NetworkConfig {
    NetworkConfig {
        mac: MAC,
        ip: Ipv4Addr::new(10, 0, 2, 15),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 0, 2, 2),
        mtu: Some(1400),
        dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
        name: "net-e2e".into(),
    }
}

fn sh(script: &str) -> GuestConfig {
    let mut config = GuestConfig::new(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    config.hostname = Some("net-e2e".into());
    config
}

#[test]
fn guest_gets_its_address_route_resolvers_and_reaches_the_gateway() {
    let test = "guest_gets_its_address_route_resolvers_and_reaches_the_gateway";
    let Some(system) = system_dir(test) else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let (port, request) = http_once("hello-from-host\n");
    // (No `wget -T`: this static busybox crashes with it; `timeout` bounds
    // the fetch instead.)
    let mut config = sh(&format!(
        "echo workload-start uptime $(cat /proc/uptime); busybox ip addr; busybox ip route; \
         echo '--- resolv.conf'; cat /etc/resolv.conf; \
         echo '--- hosts'; cat /etc/hosts; echo '--- fetch'; \
         busybox timeout 60 busybox wget -q -O - http://10.0.2.2:{port}/probe; \
         echo \"wget-rc=$?\""
    ));
    config.network = Some(network());
    config.validate().expect("valid config");

    let boot = boot(&system, work.path(), &config, true);
    let console = &boot.console;
    eprintln!("--- console\n{console}--- status {:?}", boot.events);
    eprintln!("time to workload with network: {:?}", boot.to_workload);

    assert_eq!(exit_code(&boot.events), Some(0), "{:?}", boot.events);
    // Loopback is up with its address.
    assert!(console.contains("lo: <LOOPBACK,UP,LOWER_UP>"), "{console}");
    assert!(console.contains("inet 127.0.0.1/8"), "{console}");
    // The NIC with our MAC: mtu set, up, addressed.
    assert!(console.contains("mtu 1400"), "{console}");
    assert!(console.contains(&format!("link/ether {MAC}")), "{console}");
    assert!(
        console.contains("inet 10.0.2.15/24 brd 10.0.2.255"),
        "{console}"
    );
    assert!(console.contains("default via 10.0.2.2 dev"), "{console}");
    assert!(
        console.contains("10.0.2.0/24 dev") && console.contains("src 10.0.2.15"),
        "{console}"
    );
    // The files, written over the image's symlink.
    let section = |name: &str| {
        let start = console.find(&format!("--- {name}\n")).expect(name) + name.len() + 5;
        let end = console[start..]
            .find("---")
            .map_or(console.len(), |e| start + e);
        console[start..end].to_owned()
    };
    assert_eq!(
        section("resolv.conf"),
        network().resolv_conf().expect("dns given")
    );
    assert_eq!(section("hosts"), network().hosts());
    // TCP through the gateway to the host's loopback.
    assert!(console.contains("hello-from-host\nwget-rc=0"), "{console}");
    assert_eq!(
        request.lock().expect("lock").as_deref(),
        Some("GET /probe HTTP/1.1")
    );
}

#[test]
fn without_a_network_section_only_loopback_comes_up_and_files_stay() {
    let test = "without_a_network_section_only_loopback_comes_up_and_files_stay";
    let Some(system) = system_dir(test) else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let config = sh(
        "echo workload-start uptime $(cat /proc/uptime); busybox ip addr; busybox ip route; \
         echo '--- hosts'; cat /etc/hosts; echo '--- resolv'; \
         busybox readlink /etc/resolv.conf",
    );
    let boot = boot(&system, work.path(), &config, true);
    let console = &boot.console;
    eprintln!("--- console\n{console}--- status {:?}", boot.events);
    eprintln!("time to workload without network: {:?}", boot.to_workload);

    assert_eq!(exit_code(&boot.events), Some(0), "{:?}", boot.events);
    assert!(console.contains("lo: <LOOPBACK,UP,LOWER_UP>"), "{console}");
    assert!(console.contains("inet 127.0.0.1/8"), "{console}");
    // The NIC is there but left alone: down, no address, no route.
    assert!(console.contains(&format!("link/ether {MAC}")), "{console}");
    assert!(!console.contains("10.0.2.15"), "{console}");
    assert!(!console.contains("default via"), "{console}");
    // The image's files are untouched.
    assert!(
        console.contains("--- hosts\n127.0.0.1\tlocalhost\n::1\tlocalhost\n--- resolv"),
        "{console}"
    );
    assert!(
        console.contains("../run/resolvconf/resolv.conf"),
        "{console}"
    );
}

#[test]
fn a_missing_nic_is_reported_and_the_workload_never_starts() {
    let test = "a_missing_nic_is_reported_and_the_workload_never_starts";
    let Some(system) = system_dir(test) else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let mut config = sh("echo workload-start");
    config.network = Some(network());
    let boot = boot(&system, work.path(), &config, false);
    eprintln!("--- console\n{}--- status {:?}", boot.console, boot.events);

    assert!(!boot.console.contains("workload-start"), "{}", boot.console);
    assert!(
        !boot
            .events
            .iter()
            .any(|e| matches!(e, StatusEvent::Started { .. })),
        "{:?}",
        boot.events
    );
    let error = boot.events.iter().find_map(|e| match e {
        StatusEvent::Error(message) => Some(message.clone()),
        _ => None,
    });
    let error = error.expect("an error event");
    assert!(
        error.starts_with(&format!("no network interface with mac {MAC} appeared")),
        "{error}"
    );
}
