//! The smaller API defects of issue 10 (item 13), each against a real
//! daemon: a create racing a delete of the same name, a create with an
//! invalid field refused before any pull, and error answers that are JSON
//! and declared in the OpenAPI document (405, 404 for unknown paths, 422).
//! And one the API fuzzer found: a request to the guest agent racing a
//! stop answered 503 where a request after the stop gets 409.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Daemon;
use serde_json::json;

/// Rounds of the create/delete race; each boots (and kills) one VM.
const RACE_ROUNDS: usize = 12;
/// Threads deleting the name while it is being created.
const DELETERS: usize = 3;

#[test]
fn create_racing_delete_of_the_same_name_is_never_a_server_error() {
    require_guest!();
    let d = Daemon::start();
    let rootfs = common::busybox_rootfs();
    let mut created = 0;
    for round in 0..RACE_ROUNDS {
        let name = format!("race-{round}");
        let done = AtomicBool::new(false);
        let (create, deletes) = std::thread::scope(|s| {
            let deleters: Vec<_> = (0..DELETERS)
                .map(|_| {
                    s.spawn(|| {
                        let mut seen = Vec::new();
                        while !done.load(Ordering::Relaxed) {
                            let r = d.api("DELETE", &format!("/instances/{name}"), None);
                            seen.push((r.status, r.text));
                        }
                        seen
                    })
                })
                .collect();
            let body = json!({
                "name": name,
                "rootfs": rootfs,
                "cmd": ["sleep", "600"],
                "network": {"enabled": false},
            });
            let create = d.api("POST", "/instances", Some(&body));
            done.store(true, Ordering::Relaxed);
            let deletes: Vec<(u16, String)> = deleters
                .into_iter()
                .flat_map(|h| h.join().expect("deleter thread"))
                .collect();
            (create, deletes)
        });
        assert!(
            matches!(create.status, 201 | 404 | 409),
            "round {round}: create answered {}: {}",
            create.status,
            create.text
        );
        if create.status == 201 {
            created += 1;
        }
        for (status, text) in &deletes {
            assert!(
                matches!(status, 204 | 404 | 409),
                "round {round}: a racing delete answered {status}: {text}"
            );
        }
        // Whatever won, the name can be cleaned up and is then free.
        let last = d.api("DELETE", &format!("/instances/{name}"), None);
        assert!(
            matches!(last.status, 204 | 404),
            "round {round}: final delete answered {}: {}",
            last.status,
            last.text
        );
        let gone = d.api("GET", &format!("/instances/{name}"), None);
        assert_eq!(gone.status, 404, "round {round}: {}", gone.text);
    }
    eprintln!("{created} of {RACE_ROUNDS} creates won their race");
    let log = std::fs::read_to_string(d.data_dir.join("serve.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

#[test]
fn an_invalid_create_is_refused_before_any_pull() {
    require_guest!();
    let d = Daemon::start();
    // A registry that does not exist: a pull could only fail (502).
    // A size is hypeman's `invalid_size` (issue 16); the rest `bad_request`.
    for (body, field, code) in [
        (
            json!({"name": "bad", "image": "127.0.0.1:1/x", "vcpus": 0}),
            "vcpus",
            "bad_request",
        ),
        (
            json!({"name": "bad", "image": "127.0.0.1:1/x", "size": "12XB"}),
            "size",
            "invalid_size",
        ),
        (
            json!({"name": "bad", "image": "127.0.0.1:1/x", "workdir": "srv"}),
            "working directory",
            "bad_request",
        ),
    ] {
        let r = d.api("POST", "/instances", Some(&body));
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(r.body["code"], code, "{}", r.text);
        let message = r.body["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{body}: {message}");
    }
    // No pull was started for any of them.
    let images = d.api("GET", "/images", None);
    assert_eq!(images.status, 200, "{}", images.text);
    assert_eq!(images.body, json!([]), "{}", images.text);
}

#[test]
fn error_answers_are_json_and_declared_in_the_spec() {
    require_guest!();
    let d = Daemon::start();
    // A known path with a method it lacks.
    for (method, path) in [
        ("PUT", "/instances"),
        ("PATCH", "/health"),
        ("PUT", "/images/load"),
    ] {
        let r = d.api(method, path, None);
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text);
        assert_eq!(r.body["code"], "method_not_allowed", "{}", r.text);
    }
    let r = d.api("GET", "/no/such/path", None);
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.body["code"], "not_found", "{}", r.text);
    // JSON that parses but has the wrong types.
    let r = d.request(
        "POST",
        "/instances",
        Some(r#"{"name": 5}"#),
        Some(&d.token.clone()),
    );
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["code"], "unprocessable_entity", "{}", r.text);

    let spec = d.request("GET", "/spec.json", None, None);
    assert_eq!(spec.status, 200);
    let create = &spec.body["paths"]["/instances"]["post"]["responses"];
    for status in ["400", "401", "409", "413", "415", "422"] {
        assert_eq!(
            create[status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "POST /instances does not declare {status}: {create}"
        );
    }
    let get = &spec.body["paths"]["/instances/{id}"]["get"]["responses"];
    for status in ["401", "404", "409"] {
        assert!(get.get(status).is_some(), "GET /instances/{{id}}: {status}");
    }
    assert!(spec.body["paths"]["/health"]["get"]["responses"]
        .get("401")
        .is_none());
}

#[test]
fn an_agent_request_racing_a_stop_answers_as_after_the_stop() {
    require_guest!();
    let d = Daemon::start();
    let created = d.create(json!({
        "name": "stat-race",
        "rootfs": common::busybox_rootfs(),
        "cmd": ["sleep", "600"],
    }));
    let id = created["id"].as_str().expect("id").to_string();
    let stat = format!("/instances/{id}/stat?path=/");
    common::wait_until("the agent to answer", Duration::from_secs(120), || {
        (d.api("GET", &stat, None).status == 200).then_some(())
    });
    let done = AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let statters: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while !done.load(Ordering::Relaxed) {
                        let r = d.api("GET", &stat, None);
                        seen.push((r.status, r.text));
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let stop = d.api("POST", &format!("/instances/{id}/stop"), None);
        assert_eq!(stop.status, 200, "stop: {}", stop.text);
        // A few more after the stop.
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, Ordering::Relaxed);
        statters
            .into_iter()
            .flat_map(|h| h.join().expect("stat thread"))
            .collect::<Vec<_>>()
    });
    for (status, text) in &seen {
        assert!(
            matches!(status, 200 | 409),
            "a stat racing the stop answered {status}: {text}"
        );
    }
    assert!(seen.iter().any(|(s, _)| *s == 409), "no stat saw the stop");
}

/// The agent throughput route exists for `scripts/bench-exec.sh` only: off
/// unless the daemon was started with `LODGE_BENCH_ENDPOINTS=1`, and bounded.
#[test]
fn the_benchmark_route_is_opt_in_and_bounded() {
    let path = "/instances/nobody/agent/throughput?direction=from";
    let d = Daemon::start();
    let r = d.api("GET", path, None);
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.body["code"], "not_found", "{}", r.text);
    drop(d);

    let d = Daemon::start_with_env(&[("LODGE_BENCH_ENDPOINTS", "1")]);
    let r = d.api("GET", &format!("{path}&bytes={}", 5u64 << 30), None);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("at most"), "{}", r.text);
    let r = d.api("GET", path, None);
    assert_eq!(r.status, 404, "no such instance: {}", r.text);
    assert_ne!(r.body["message"], "no such endpoint", "{}", r.text);
}
