//! A daemon `kill -9` in the middle of a real standby or restore: the
//! restarted daemon settles the instance (Running, Standby or Stopped,
//! never half of one), nothing is left marked as under way, and the
//! instance can go on (restore, standby) with its log intact.

mod common;

use std::time::Duration;

use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);

fn record(d: &Daemon, id: &str) -> Value {
    let path = d.guests_dir().join(id).join("metadata.json");
    serde_json::from_slice(&std::fs::read(path).expect("record")).expect("json")
}

/// The daemon's own log, for failure messages.
fn serve_log(d: &Daemon) -> String {
    std::fs::read_to_string(d.data_dir.join("serve.log")).unwrap_or_default()
}

fn no_nul(d: &Daemon, id: &str) {
    let bytes = std::fs::read(d.guests_dir().join(id).join("logs/app.log")).expect("log");
    assert!(!bytes.contains(&0), "a NUL byte in the console log");
}

/// Sends `POST path` from another thread and kills the daemon `after`.
fn kill_during(d: &mut Daemon, path: &str, after: Duration) {
    let url = format!("{}{path}", d.base);
    let token = d.token.clone();
    let sender = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        // The daemon dies under it: any answer, or none, will do.
        drop(client.post(url).bearer_auth(token).send());
    });
    std::thread::sleep(after);
    d.kill9();
    sender.join().expect("sender");
    d.spawn();
}

#[test]
fn a_daemon_killed_mid_standby_or_restore_is_reconciled() {
    require_guest!();
    let mut d = Daemon::start();
    let id = d.create(json!({
        "name": "crashy",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done"],
    }))["id"]
        .as_str()
        .expect("id")
        .to_string();
    d.wait_state(&id, "Running", BOOT);
    for (round, delay_ms) in [5u64, 40, 90].into_iter().enumerate() {
        let delay = Duration::from_millis(delay_ms);
        kill_during(&mut d, &format!("/instances/{id}/standby"), delay);
        let state = d.state(&id);
        assert!(
            matches!(state.as_str(), "Running" | "Standby" | "Stopped"),
            "round {round}: {state}"
        );
        assert_eq!(
            record(&d, &id)["standby"]["pending"],
            Value::Null,
            "round {round}: {}",
            serve_log(&d)
        );
        eprintln!("round {round}: killed {delay_ms} ms into a standby: {state}");
        if state == "Stopped" {
            assert_eq!(
                d.api("POST", &format!("/instances/{id}/start"), None)
                    .status,
                200
            );
            d.wait_state(&id, "Running", BOOT);
            continue;
        }
        if state == "Running" {
            let r = d.api("POST", &format!("/instances/{id}/standby"), None);
            assert_eq!(r.status, 200, "round {round}: {}", r.text);
        }
        kill_during(&mut d, &format!("/instances/{id}/restore"), delay);
        let state = d.state(&id);
        eprintln!("round {round}: killed {delay_ms} ms into a restore: {state}");
        assert!(
            matches!(state.as_str(), "Running" | "Standby"),
            "round {round}: {state}"
        );
        assert_eq!(
            record(&d, &id)["standby"]["pending"],
            Value::Null,
            "round {round}: {}",
            serve_log(&d)
        );
        if state == "Standby" {
            let r = d.api("POST", &format!("/instances/{id}/restore"), None);
            assert_eq!(r.status, 200, "round {round}: {}", r.text);
        }
        assert_eq!(d.state(&id), "Running");
        let log = d.guests_dir().join(&id).join("logs/app.log");
        let len = std::fs::metadata(&log).expect("log").len();
        wait_until("the guest to go on", Duration::from_secs(30), || {
            (std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) > len + 20).then_some(())
        });
        no_nul(&d, &id);
    }
}
