//! End-to-end: the parts of hypeman's API lodge added for exact client
//! compatibility (issue 16), on a real daemon.
//!
//! - `answers_in_hypemans_shapes`: 501 `not_implemented` for hypeman routes
//!   lodge lacks, 404 and 405 with the JSON body, `/spec.yaml`, hypeman's
//!   error codes (`invalid_size`, `already_exists`), tag validation, the
//!   image tag route, `/resources` and `lodge system df`.
//! - `admission_stats_and_tags_on_real_vms`: with the vCPU limit set to 2,
//!   a burst of concurrent creates admits exactly two, a stopped instance
//!   frees its share and a start beyond the limit is refused;
//!   `/instances/{id}/stats` and `lodge stats` of a running VM; tags on
//!   create, `PATCH`, `lodge update`, `lodge ps --filter label=…`.

mod common;

use common::OutputLimited;

use std::time::Duration;

use common::{busybox_rootfs, Daemon};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(90);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn answers_in_hypemans_shapes() {
    require_guest!();
    let d = Daemon::start();

    // A hypeman route lodge lacks: 501 with the JSON body, after the token.
    for (method, path) in [
        ("GET", "/builds"),
        ("POST", "/builders"),
        ("GET", "/builds/b1/events"),
    ] {
        let r = d.api(method, path, None);
        assert_eq!(r.status, 501, "{method} {path}: {}", r.text);
        assert_eq!(r.body["code"], "not_implemented", "{}", r.text);
        let r = d.request(method, path, None, None);
        assert_eq!(r.status, 401, "{method} {path} without a token: {}", r.text);
    }
    // Unknown path: 404 JSON; known path, method hypeman lacks too: 405 JSON.
    let r = d.api("GET", "/no/such/route", None);
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (404, json!("not_found")),
        "{}",
        r.text
    );
    let r = d.api("PUT", "/instances", None);
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (405, json!("method_not_allowed")),
        "{}",
        r.text
    );

    // The spec, as JSON and as YAML, lists the routes and the 501s.
    let json_spec = d.request("GET", "/spec.json", None, None);
    assert_eq!(json_spec.status, 200);
    let paths = json_spec.body["paths"].as_object().expect("paths");
    for p in [
        "/instances/{id}/stats",
        "/resources",
        "/images/{name}/tag",
        "/volumes",
        "/ingresses",
        "/devices",
        "/devices/available",
    ] {
        assert!(paths.contains_key(p), "{p} missing from spec.json");
    }
    assert!(paths["/builds"]["get"]["responses"]["501"].is_object());
    assert!(paths["/pushes"]["get"]["responses"]["200"].is_object());
    assert!(paths["/ingresses"]["post"]["responses"]["409"].is_object());
    assert!(paths["/instances/{id}"]["patch"].is_object());
    let yaml = reqwest::blocking::get(format!("{}/spec.yaml", d.base)).expect("spec.yaml");
    assert_eq!(yaml.status().as_u16(), 200);
    assert_eq!(
        yaml.headers()["content-type"].to_str().unwrap_or(""),
        "application/yaml"
    );
    let yaml = yaml.text().expect("body");
    assert!(
        yaml.contains("\"/resources\":\n"),
        "{}",
        &yaml[..500.min(yaml.len())]
    );
    if let Ok(python) = std::env::var("LODGE_COMPAT_PYTHON") {
        // The YAML is the JSON document, read by a real YAML parser.
        let tmp = d.data_dir.join("spec.yaml");
        std::fs::write(&tmp, &yaml).expect("write");
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            ])
            .arg(&tmp)
            .output_limited()
            .expect("python");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let parsed: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(parsed, json_spec.body, "spec.yaml and spec.json differ");
    }

    // hypeman's error codes.
    let root = busybox_rootfs();
    let r = d.api(
        "POST",
        "/instances",
        Some(&json!({"name": "sz", "rootfs": root, "cmd": ["true"], "size": "12XB"})),
    );
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (400, json!("invalid_size")),
        "{}",
        r.text
    );
    let r = d.api(
        "POST",
        "/instances",
        Some(&json!({"name": "sz", "rootfs": root, "cmd": ["true"], "size": "1MB"})),
    );
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (400, json!("invalid_size")),
        "{}",
        r.text
    );
    let many: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    for tags in [json!(many), json!({"bad key": "v"}), json!({"k": "a\nb"})] {
        let r = d.api(
            "POST",
            "/instances",
            Some(&json!({"name": "tg", "rootfs": root, "cmd": ["true"], "tags": tags})),
        );
        assert_eq!(
            (r.status, r.body["code"].clone()),
            (400, json!("bad_request")),
            "{}",
            r.text
        );
    }
    let r = d.api("PATCH", "/instances/nope", Some(&json!({"tags": {}})));
    assert_eq!(r.status, 404, "{}", r.text);
    let r = d.api("POST", "/images/nope/tag", Some(&json!({"target": "x:1"})));
    assert_eq!(r.status, 404, "{}", r.text);

    // Resources, and the CLI's view of the disk.
    let r = d.api("GET", "/resources", None);
    assert_eq!(r.status, 200, "{}", r.text);
    for k in ["cpu", "memory", "disk", "network"] {
        let s = &r.body[k];
        assert_eq!(s["type"], k, "{}", r.text);
        assert!(s["capacity"].as_u64().is_some_and(|c| c > 0), "{k}: {s}");
    }
    for k in ["cpu", "memory"] {
        assert_eq!(r.body[k]["allocated"], 0, "{}", r.text);
    }
    assert_eq!(r.body["cpu"]["oversub_ratio"], 16.0, "the harness's ratio");
    assert_eq!(r.body["allocations"], json!([]));
    let out = d.lodge(&["system", "df"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let df = text(&out.stdout);
    for part in ["Images", "Layer cache", "Overlays", "vCPUs: 0 allocated"] {
        assert!(df.contains(part), "{part} in {df}");
    }
}

#[test]
fn admission_stats_and_tags_on_real_vms() {
    require_guest!();
    // Two vCPUs in all, whatever this host has.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ratio = format!("{}", 2.0 / cpus as f64);
    let d = Daemon::start_with_env(&[("LODGE_OVERSUB_CPU", &ratio)]);
    let root = busybox_rootfs();
    let body = |name: &str| {
        json!({
            "name": name, "rootfs": root, "vcpus": 1, "size": "128MB",
            "cmd": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
            "tags": {"suite": "admission", "name": name},
        })
    };

    // A burst of four creates: exactly two fit.
    let results: Vec<(String, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = ["b0", "b1", "b2", "b3"]
            .iter()
            .map(|n| {
                let d = &d;
                let b = body(n);
                s.spawn(move || {
                    let r = d.api("POST", "/instances", Some(&b));
                    (n.to_string(), r.status, r.body)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let admitted: Vec<&(String, u16, Value)> = results.iter().filter(|r| r.1 == 201).collect();
    let refused: Vec<&(String, u16, Value)> = results.iter().filter(|r| r.1 == 409).collect();
    assert_eq!((admitted.len(), refused.len()), (2, 2), "{results:?}");
    for r in &refused {
        assert_eq!(r.2["code"], "insufficient_resources", "{r:?}");
    }
    let a = admitted[0].2["id"].as_str().expect("id").to_string();
    let b = admitted[1].2["id"].as_str().expect("id").to_string();
    assert_eq!(admitted[0].2["tags"]["suite"], "admission");
    d.wait_state(&a, "Running", BOOT);
    d.wait_state(&b, "Running", BOOT);

    let res = d.api("GET", "/resources", None).body;
    assert_eq!(
        (
            res["cpu"]["allocated"].clone(),
            res["cpu"]["available"].clone()
        ),
        (json!(2), json!(0)),
        "{res}"
    );
    assert_eq!(
        res["allocations"].as_array().map(Vec::len),
        Some(2),
        "{res}"
    );

    // Stats of a running VM.
    let s = d.api("GET", &format!("/instances/{a}/stats"), None);
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.body["instance_id"], json!(a));
    assert_eq!(s.body["allocated_vcpus"], 1);
    assert_eq!(s.body["allocated_memory_bytes"], 128u64 << 20);
    assert!(
        s.body["cpu_seconds"].as_f64().is_some_and(|c| c > 0.0),
        "{}",
        s.text
    );
    let rss = s.body["memory_rss_bytes"].as_u64().unwrap_or(0);
    assert!(
        rss > 10 << 20,
        "a booted QEMU holds more than 10MiB: {}",
        s.text
    );
    assert!(s.body["memory_vms_bytes"].as_u64().unwrap_or(0) >= rss);
    assert_eq!(s.body["network_rx_bytes"], 0, "no network here");
    let out = d.lodge(&["stats", &a]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("MEM USAGE / LIMIT") && shown.contains("/ 128.0MiB"),
        "{shown}"
    );
    // --watch redraws, with CPU% from the second sample on.
    let mut watch = std::process::Command::new(common::LODGE)
        .args(["stats", "--watch", "--interval", "1", &a])
        .env("LODGE_DATA_DIR", &d.data_dir)
        .env("LODGE_BASE_URL", &d.base)
        .env("LODGE_API_KEY", &d.token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("lodge stats --watch");
    std::thread::sleep(Duration::from_millis(2500));
    watch.kill().expect("kill");
    let out = watch.wait_with_output().expect("output");
    let shown = text(&out.stdout);
    assert!(shown.matches("MEM USAGE").count() >= 2, "{shown}");
    let cpu_pct = shown.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.first() == Some(&admitted[0].0.as_str())
            && cols.get(2).is_some_and(|c| c.ends_with('%'))
    });
    assert!(cpu_pct, "CPU% once there are two samples: {shown}");

    // A duplicate name: hypeman's code.
    let r = d.api("POST", "/instances", Some(&body(admitted[0].0.as_str())));
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (409, json!("already_exists")),
        "{}",
        r.text
    );

    // Stopping frees a share; starting beyond the limit is refused.
    let r = d.api("POST", &format!("/instances/{a}/stop"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = d.api("GET", &format!("/instances/{a}/stats"), None);
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (409, json!("invalid_state")),
        "{}",
        r.text
    );
    let c = d.create(body("c"));
    let c = c["id"].as_str().expect("id").to_string();
    let r = d.api("POST", &format!("/instances/{a}/start"), None);
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (409, json!("insufficient_resources")),
        "{}",
        r.text
    );
    assert_eq!(d.state(&a), "Stopped");

    // Tags: PATCH replaces them, the CLI merges, list filters with AND.
    let r = d.api(
        "PATCH",
        &format!("/instances/{b}"),
        Some(&json!({"tags": {"team": "web"}})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["tags"], json!({"team": "web"}));
    let r = d.api(
        "PATCH",
        &format!("/instances/{b}"),
        Some(&json!({"auto_standby": {"enabled": true}})),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("auto_standby"), "{}", r.text);
    let r = d.api(
        "PATCH",
        &format!("/instances/{b}"),
        Some(&json!({"env": {"A": "1"}})),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    let out = d.lodge(&["update", &b, "--label", "tier=front"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(d.get(&b)["tags"], json!({"team": "web", "tier": "front"}));
    let list = |q: &str| -> Vec<String> {
        let r = d.api("GET", &format!("/instances?{q}"), None);
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
            .as_array()
            .expect("list")
            .iter()
            .map(|i| i["id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        list("tags%5Bteam%5D=web&tags%5Btier%5D=front"),
        vec![b.clone()]
    );
    assert_eq!(list("tags[team]=web&tags[tier]=back"), Vec::<String>::new());
    let mut suite = list("tags[suite]=admission");
    suite.sort();
    let mut want = vec![a.clone(), c.clone()];
    want.sort();
    assert_eq!(suite, want);
    let out = d.lodge(&["ps", "-q", "--filter", "label=team=web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), b);

    for id in [&a, &b, &c] {
        let r = d.api("DELETE", &format!("/instances/{id}"), None);
        assert_eq!(r.status, 204, "{}", r.text);
    }
}
