//! Process-level tests against a real `qemu-system-x86_64`, without a guest
//! kernel: QEMU is started paused (`-S` appended to the built argv), which
//! loads the kernel image but never runs it, so a stand-in bzImage header is
//! enough. These prove that the argv the builder makes is accepted by QEMU
//! (including comma-and-space paths), and exercise the QMP client and the
//! backend verbs against the real protocol.
//!
//! Booting a real guest is the e2e suite's job; the one test here that needs
//! lodge's kernel and initrd skips, saying so, when they are not built.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lodge_hypervisor::accel::{self, ProbeOptions, SelfTestError};
use lodge_hypervisor::qemu::{QmpClient, QmpError, RunState};
use lodge_hypervisor::{
    Accel, DiskConfig, Hypervisor, QemuBackend, VirtioSerialChannel, VmConfig, VmState,
};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const CONNECT: Duration = Duration::from_secs(5);
const CMD: Duration = Duration::from_secs(5);

/// Writes the smallest file QEMU's x86 loader accepts as a Linux bzImage
/// (boot protocol 2.15 header, no code). Never executed: QEMU runs with -S.
fn write_fake_bzimage(path: &Path) {
    let mut img = vec![0u8; 64 * 1024];
    img[0x1f1] = 4; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 0x01; // loadflags: LOADED_HIGH
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    std::fs::write(path, img).expect("write fake kernel");
}

/// A data dir whose path holds a comma and a space, with a stand-in kernel,
/// an initrd and two disk images in it.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("lodge-hv-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().join("my vms,2");
        std::fs::create_dir(&dir).expect("mkdir");
        write_fake_bzimage(&dir.join("vm,linuz"));
        std::fs::write(dir.join("init,rd.img"), b"not really an initrd").expect("initrd");
        for disk in ["root,fs.raw", "over lay.raw"] {
            let f = std::fs::File::create(dir.join(disk)).expect("disk");
            f.set_len(4 * 1024 * 1024).expect("disk size");
        }
        Self { _tmp: tmp, dir }
    }

    fn config(&self) -> VmConfig {
        let mut cfg = VmConfig::new(
            "id,1",
            "web,1",
            self.dir.join("vm,linuz"),
            self.dir.join("init,rd.img"),
            self.dir.join("q,mp.sock"),
            self.dir.join("sta,tus.log"),
        );
        cfg.memory_bytes = 128 * 1024 * 1024;
        cfg.cmdline = "console=ttyS0 a,b".into();
        cfg
    }
}

/// Starts QEMU with `argv` plus `-S`, the console on a pipe as lodge's
/// monitor would have it.
fn spawn_paused(argv: &[OsString]) -> Child {
    Command::new(&argv[0])
        .args(&argv[1..])
        .arg("-S")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qemu-system-x86_64 (is it installed?)")
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("qemu exits in time")
        .expect("wait qemu")
}

#[tokio::test]
async fn built_argv_runs_real_qemu_with_comma_and_space_paths() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    cfg.disks = vec![
        DiskConfig::raw(fx.dir.join("root,fs.raw"), true).with_serial("root,fs"),
        DiskConfig::raw(fx.dir.join("over lay.raw"), false).with_serial("overlay"),
    ];
    cfg.agent_channel = Some(VirtioSerialChannel {
        socket: fx.dir.join("ag,ent.sock"),
        port_name: "org.lodge.agent,0".into(),
    });
    let argv = QemuBackend::new().vmm_command(&cfg).expect("valid config");
    let mut child = spawn_paused(&argv);

    let mut qmp = QmpClient::connect(&cfg.control_socket, CONNECT, CMD)
        .await
        .expect("qmp socket appears at the comma path");
    let status = qmp.query_status().await.expect("query-status");
    assert_eq!(status.status, RunState::Prelaunch);
    assert!(!status.running);

    // QEMU opened the files we meant, not a path cut at a comma.
    assert!(cfg.status_file.is_file(), "status file created by qemu");
    assert!(fx.dir.join("ag,ent.sock").exists(), "agent socket created");
    let blocks: Vec<Value> = qmp.execute("query-block", None).await.expect("query-block");
    assert_eq!(blocks.len(), 2);
    for (block, disk) in blocks.iter().zip(&cfg.disks) {
        let inserted = &block["inserted"];
        assert_eq!(inserted["file"], json!(disk.path.to_str().expect("utf-8")));
        assert_eq!(inserted["ro"], json!(disk.read_only));
        assert_eq!(inserted["drv"], json!("raw"));
        let qdev = block["qdev"].as_str().expect("qdev path");
        let serial: String = qmp
            .execute("qom-get", Some(json!({"path": qdev, "property": "serial"})))
            .await
            .expect("qom-get serial");
        assert_eq!(Some(serial.as_str()), disk.serial.as_deref());
    }
    let name: Value = qmp.execute("query-name", None).await.expect("query-name");
    assert_eq!(name["name"], json!("web,1"));

    qmp.quit().await.expect("quit");
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "qemu exit status {status}");
}

#[tokio::test]
async fn qmp_commands_events_and_errors() {
    let fx = Fixture::new();
    let cfg = fx.config();
    let argv = QemuBackend::new().vmm_command(&cfg).expect("valid config");
    let mut child = spawn_paused(&argv);
    let mut qmp = QmpClient::connect(&cfg.control_socket, CONNECT, CMD)
        .await
        .expect("connect");

    qmp.cont().await.expect("cont");
    assert_eq!(
        qmp.query_status().await.expect("status").status,
        RunState::Running
    );
    qmp.stop().await.expect("stop");
    let st = qmp.query_status().await.expect("status");
    assert_eq!((st.status, st.running), (RunState::Paused, false));
    qmp.wait_event("STOP", CMD).await.expect("STOP event");
    let events = qmp.take_events();
    assert!(
        events.iter().any(|e| e.name == "RESUME"),
        "RESUME from cont was queued, not taken for a reply: {events:?}"
    );

    // An error reply is typed and leaves the session usable.
    let err = qmp
        .execute_raw("no-such-command", None)
        .await
        .expect_err("unknown command");
    match &err {
        QmpError::Command { command, class, .. } => {
            assert_eq!(command, "no-such-command");
            assert_eq!(class, "CommandNotFound");
        }
        other => panic!("unexpected {other:?}"),
    }
    qmp.cont().await.expect("cont after error");

    qmp.system_powerdown().await.expect("system_powerdown");
    let ev = qmp
        .wait_event("POWERDOWN", CMD)
        .await
        .expect("POWERDOWN event");
    assert_eq!(ev.name, "POWERDOWN");

    // quit: QEMU sends SHUTDOWN before the reply; the client must cope.
    qmp.quit().await.expect("quit");
    assert!(wait_exit(&mut child).await.success());
}

#[tokio::test]
async fn backend_verbs_against_real_qemu() {
    let fx = Fixture::new();
    let cfg = fx.config();
    let backend = QemuBackend::new().with_timeouts(Duration::from_secs(5), CMD);
    let argv = backend.vmm_command(&cfg).expect("valid config");
    let mut child = spawn_paused(&argv);

    assert_eq!(backend.state(&cfg).await.expect("state"), VmState::Created);
    backend.resume(&cfg).await.expect("resume");
    assert_eq!(backend.state(&cfg).await.expect("state"), VmState::Running);
    backend.pause(&cfg).await.expect("pause");
    assert_eq!(backend.state(&cfg).await.expect("state"), VmState::Paused);
    backend.resume(&cfg).await.expect("resume");
    // No guest OS to act on the power button: QEMU stays up, still running.
    backend
        .shutdown(&cfg)
        .await
        .expect("shutdown request delivered");
    assert_eq!(backend.state(&cfg).await.expect("state"), VmState::Running);

    backend.force_stop(&cfg).await.expect("force_stop");
    assert!(wait_exit(&mut child).await.success());

    let quick = QemuBackend::new().with_timeouts(Duration::from_millis(200), CMD);
    let err = quick.state(&cfg).await.expect_err("vmm is gone");
    assert!(err.vmm_gone(), "{err:?}");
}

#[tokio::test]
async fn connect_retries_until_the_socket_appears() {
    let fx = Fixture::new();
    let cfg = fx.config();
    let argv = QemuBackend::new().vmm_command(&cfg).expect("valid config");
    let path = cfg.control_socket.clone();
    let connecting =
        tokio::spawn(async move { QmpClient::connect(&path, Duration::from_secs(10), CMD).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!cfg.control_socket.exists());
    let mut child = spawn_paused(&argv);
    let qmp = connecting
        .await
        .expect("join")
        .expect("connected once qemu was up");
    qmp.quit().await.expect("quit");
    assert!(wait_exit(&mut child).await.success());
}

#[tokio::test]
async fn a_second_client_waits_while_the_first_holds_the_session() {
    let fx = Fixture::new();
    let cfg = fx.config();
    let argv = QemuBackend::new().vmm_command(&cfg).expect("valid config");
    let mut child = spawn_paused(&argv);
    let first = QmpClient::connect(&cfg.control_socket, CONNECT, CMD)
        .await
        .expect("first client");
    let err = QmpClient::connect(&cfg.control_socket, CONNECT, Duration::from_millis(500))
        .await
        .expect_err("qemu greets one client at a time");
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    first.quit().await.expect("quit");
    assert!(wait_exit(&mut child).await.success());
}

/// The self-test's failure path, for real: a guest that never prints the
/// marker (the stand-in kernel has no code) fails within the timeout and
/// leaves no QEMU behind.
#[tokio::test]
async fn self_test_fails_bounded_when_the_guest_never_reports() {
    let fx = Fixture::new();
    let mut opts = ProbeOptions::new(fx.dir.join("vm,linuz"), fx.dir.join("init,rd.img"));
    opts.timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let err = accel::self_test(Accel::Tcg, &opts)
        .await
        .expect_err("no marker from a kernel without code");
    assert!(
        matches!(
            err,
            SelfTestError::Timeout { .. } | SelfTestError::Exited { .. }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6), "bounded");
    eprintln!("self-test with a codeless kernel: {err}");
}

fn system_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LODGE_SYSTEM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/lodge/system"));
    let opts = ProbeOptions::for_system_dir(&dir);
    (opts.kernel.is_file() && opts.initrd.is_file()).then_some(dir)
}

/// The self-test's success path under TCG, with lodge's real kernel and
/// initrd (whose init must print the marker when booted with lodge.selftest).
#[tokio::test]
async fn self_test_boots_lodge_guest_under_tcg() {
    let Some(dir) = system_dir() else {
        eprintln!(
            "SKIP self_test_boots_lodge_guest_under_tcg: no vmlinuz + initrd.img in \
             $LODGE_SYSTEM_DIR or /var/lib/lodge/system (built by lodge's setup)"
        );
        return;
    };
    let mut opts = ProbeOptions::for_system_dir(&dir);
    opts.timeout = Duration::from_secs(60);
    let elapsed = accel::self_test(Accel::Tcg, &opts)
        .await
        .expect("guest prints the self-test marker under tcg");
    eprintln!("self-test guest reported under tcg after {elapsed:?}");
}

/// A disk hot-plugged into a slot of a paused VM sits where `build_argv`
/// would put it at boot (same node, device and bus), read-write; a second
/// VM cannot open the same file read-write (QEMU's image locking), so two
/// VMMs never write one volume; a failed plug leaves no block node behind.
#[tokio::test]
async fn hotplug_a_disk_and_the_file_lock_refuses_a_second_writer() {
    let fx = Fixture::new();
    let vol = fx.dir.join("vol,ume.raw");
    std::fs::File::create(&vol)
        .and_then(|f| f.set_len(4 << 20))
        .expect("volume file");
    let backend = QemuBackend::new().with_timeouts(CONNECT, CMD);
    let mut cfg = fx.config();
    cfg.hotplug_slots = 2;
    let argv = backend.vmm_command(&cfg).expect("valid config");
    let mut child = spawn_paused(&argv);
    let disk = DiskConfig::raw(&vol, false)
        .with_serial("lodge-vol-1")
        .with_slot(1);
    backend.attach_disk(&cfg, &disk).await.expect("attach");
    let mut qmp = QmpClient::connect(&cfg.control_socket, CONNECT, CMD)
        .await
        .expect("connect");
    let nodes: Vec<Value> = qmp
        .execute("query-named-block-nodes", Some(json!({"flat": true})))
        .await
        .expect("nodes");
    assert!(
        nodes
            .iter()
            .any(|n| n["node-name"] == "lodge-slot1" && n["ro"] == json!(false)),
        "{nodes:?}"
    );
    let bus: String = qmp
        .execute(
            "qom-get",
            Some(json!({"path": "/machine/peripheral/lodge-slot1-dev", "property": "parent_bus"})),
        )
        .await
        .expect("parent bus");
    assert!(bus.contains("lodge-hp1"), "{bus}");

    // A second VM: the same file read-write is refused, and no node stays.
    let other = Fixture::new();
    let mut cfg2 = other.config();
    cfg2.hotplug_slots = 1;
    let mut child2 = spawn_paused(&backend.vmm_command(&cfg2).expect("valid"));
    let err = backend
        .attach_disk(&cfg2, &DiskConfig::raw(&vol, false).with_slot(0))
        .await
        .expect_err("the file is locked by the first VM");
    assert!(format!("{:?}", err).contains("lock"), "{err:?}");
    let mut qmp2 = QmpClient::connect(&cfg2.control_socket, CONNECT, CMD)
        .await
        .expect("connect");
    let nodes: Vec<Value> = qmp2
        .execute("query-named-block-nodes", Some(json!({"flat": true})))
        .await
        .expect("nodes");
    assert!(
        nodes.iter().all(|n| n["node-name"] != "lodge-slot0"),
        "{nodes:?}"
    );
    // A slot the VM does not have is refused before QEMU is asked.
    assert!(backend
        .attach_disk(&cfg2, &DiskConfig::raw(&vol, true).with_slot(5))
        .await
        .is_err());
    qmp2.quit().await.expect("quit");
    qmp.quit().await.expect("quit");
    assert!(wait_exit(&mut child2).await.success());
    assert!(wait_exit(&mut child).await.success());
}
