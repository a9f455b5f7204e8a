//! Every method of hypeman's Python client 0.28.0, in strict mode, against a
//! real daemon booting real VMs (tests/compat/hypeman_methods.py): each one
//! works or answers 501 `not_implemented`, as its line in the script's
//! table says; then hypeman's exec helper on a VM. Prints `N of 63 methods
//! work`.

mod common;

use common::OutputLimited;

use std::process::Command;

use common::{busybox_rootfs, Daemon};

#[test]
fn every_hypeman_client_method_works_or_is_501() {
    require_guest!();
    let python = std::env::var("LODGE_COMPAT_PYTHON").ok();
    let missing = python.is_none().then(|| {
        "LODGE_COMPAT_PYTHON is not set: run the suite with ./scripts/test.sh, which installs hypeman==0.28.0 in a venv".to_string()
    });
    let Some(python) = python.filter(|_| common::available("hypeman_methods", missing)) else {
        return;
    };
    let d = Daemon::start();
    // The daemon reads archive paths only beneath its import directory.
    let archive = d.data_dir.join("import/methods.oci.tar");
    let made = d.lodge(&[
        "mk-image",
        "--layer",
        &busybox_rootfs(),
        "--name",
        "compat:v1",
        "-o",
        archive.to_str().expect("utf-8"),
        "--",
        "true",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/compat/hypeman_methods.py"
    );
    let out = Command::new(python)
        .arg(script)
        .env("HYPEMAN_BASE_URL", &d.base)
        .env("HYPEMAN_API_KEY", &d.token)
        .env("LODGE_ROOTFS", busybox_rootfs())
        .env("LODGE_ARCHIVE", &archive)
        .output_limited()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The coverage line and the table, in the test's output.
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" of 63 methods work"), "{stdout}");
    assert!(stdout.contains("hypeman methods: ok"), "{stdout}");
}
