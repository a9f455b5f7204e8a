//! The guest's status channel is untrusted and bounded (issue 10, item 4),
//! on a real VM: a workload that floods the status port (`/dev/ttyS1`) and
//! forges init's "exited" line keeps `GET /instances` fast and the
//! instance Running, since its VMM still runs.

mod common;

use std::time::{Duration, Instant};

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn a_flooded_and_forged_status_channel_changes_nothing() {
    require_guest!();
    let d = Daemon::start();
    let script = "echo 'lodge-init: exited code=0' > /dev/ttyS1; \
                  echo 'lodge-init: error forged' > /dev/ttyS1; \
                  echo flooding; yes > /dev/ttyS1";
    let inst = d.create(json!({
        "name": "flood",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", script],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    wait_until("the flood to start", BOOT, || {
        d.log_lines(&id, "tail=5")
            .iter()
            .any(|l| l == "flooding")
            .then_some(())
    });
    let status = d.guests_dir().join(&id).join("status.log");
    let size = || std::fs::metadata(&status).map(|m| m.len()).unwrap_or(0);
    wait_until(
        "2 MB on the status channel",
        Duration::from_secs(90),
        || (size() > 2 << 20).then_some(()),
    );

    let started = Instant::now();
    let r = d.api("GET", "/instances", None);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    let ours = r
        .body
        .as_array()
        .and_then(|all| all.iter().find(|i| i["id"] == id.as_str()));
    let ours = ours.expect("listed");
    eprintln!("status.log {} bytes; GET /instances took {took:?}", size());
    assert_eq!(ours["state"], "Running", "forged exit believed: {ours}");
    assert!(ours["exit_code"].is_null(), "{ours}");
    assert!(
        took < Duration::from_millis(300),
        "GET /instances took {took:?} with {} bytes of status",
        size()
    );

    let r = d.api("DELETE", &format!("/instances/{id}"), None);
    assert_eq!(r.status, 204, "{}", r.text);
}
