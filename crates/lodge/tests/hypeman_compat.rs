//! hypeman's official Python client, unchanged, against a real lodge daemon
//! booting a real VM (tests/compat/hypeman_client.py).

mod common;

use common::OutputLimited;

use std::process::Command;

use common::{busybox_rootfs, Daemon};

#[test]
fn hypemans_python_client_drives_lodge() {
    require_guest!();
    let python = std::env::var("LODGE_COMPAT_PYTHON").ok();
    let missing = python.is_none().then(|| {
        "LODGE_COMPAT_PYTHON is not set: run the suite with ./scripts/test.sh, which installs hypeman==0.28.0 in a venv".to_string()
    });
    let Some(python) = python.filter(|_| common::available("hypeman_compat", missing)) else {
        return;
    };
    let d = Daemon::start();
    // The daemon reads archive paths only beneath its import directory.
    let archive = d.data_dir.join("import/compat.oci.tar");
    let made = d.lodge(&[
        "mk-image",
        "--layer",
        &busybox_rootfs(),
        "--name",
        "compat:v1",
        "-o",
        archive.to_str().expect("utf-8"),
        "--",
        "echo",
        "hello from the compat image",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/compat/hypeman_client.py"
    );
    let out = Command::new(python)
        .arg(script)
        .env("HYPEMAN_BASE_URL", &d.base)
        .env("HYPEMAN_API_KEY", &d.token)
        .env("LODGE_ROOTFS", busybox_rootfs())
        .env("LODGE_ARCHIVE", &archive)
        .output_limited()
        .expect("run python");
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("compatibility: ok"));
}
