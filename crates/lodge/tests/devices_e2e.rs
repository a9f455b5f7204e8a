//! Host devices end to end through the real daemon on this machine's real
//! `/sys`: what `GET /devices/available` lists is what sysfs shows; one
//! device registered, read back, listed (with a tag filter), refused a
//! second time, unregistered; bad addresses refused before any file is
//! read; an instance create naming the device refused with the missing
//! piece of passthrough named (this host has no IOMMU), and nothing
//! created. The CLI's `lodge device` the same way. Nothing is bound,
//! unbound or written under `/sys`. No VM boots: the refusal comes first.

mod common;

use common::Daemon;
use serde_json::json;

/// The addresses under /sys/bus/pci/devices, sorted.
fn sysfs_addresses() -> Vec<String> {
    let mut out: Vec<String> = match std::fs::read_dir("/sys/bus/pci/devices") {
        Ok(d) => d
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn devices_are_listed_registered_and_refused_for_passthrough() {
    let d = Daemon::start();
    let addrs = sysfs_addresses();
    let r = d.api("GET", "/devices/available", None);
    assert_eq!(r.status, 200, "{}", r.text);
    let listed: Vec<String> = r
        .body
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v["pci_address"].as_str().expect("address").to_string())
        .collect();
    assert_eq!(listed, addrs, "available devices are sysfs's");
    let Some(addr) = addrs.first().cloned() else {
        eprintln!("skipping the rest: this host has no PCI device");
        return;
    };
    let first = &r.body[0];
    let vendor =
        std::fs::read_to_string(format!("/sys/bus/pci/devices/{addr}/vendor")).expect("vendor");
    assert_eq!(
        first["vendor_id"].as_str().map(|v| format!("0x{v}")),
        Some(vendor.trim().to_string()),
        "{first}"
    );
    let has_iommu =
        std::path::Path::new(&format!("/sys/bus/pci/devices/{addr}/iommu_group")).exists();
    if !has_iommu {
        assert_eq!(first["iommu_group"], json!(-1), "{first}");
    }

    // Bad addresses are refused before sysfs is read; an absent one is 404.
    for (bad, status) in [
        ("../../../etc/passwd", 400),
        ("0000:00:00.0/../../x", 400),
        ("0000:00:20.0", 400),
        ("0000:00:00.0,x-vfio-y=1", 400),
        ("ffff:ff:1f.7", 404),
    ] {
        let r = d.api("POST", "/devices", Some(&json!({"pci_address": bad})));
        assert_eq!(r.status, status, "{bad}: {}", r.text);
    }
    let r = d.api(
        "POST",
        "/devices",
        Some(&json!({"pci_address": addr, "name": "Not_A_Name"})),
    );
    assert_eq!(r.status, 400, "{}", r.text);

    // Register, read back, list, refuse twice.
    let r = d.api(
        "POST",
        "/devices",
        Some(&json!({"pci_address": addr, "name": "dev1", "tags": {"team": "ml"}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(r.body["pci_address"], json!(addr));
    assert_eq!(r.body["attached_to"], json!(null));
    assert_eq!(r.body["bound_to_vfio"], json!(false), "{}", r.text);
    for key in [id.as_str(), "dev1"] {
        let g = d.api("GET", &format!("/devices/{key}"), None);
        assert_eq!((g.status, g.body["id"].as_str()), (200, Some(id.as_str())));
    }
    let l = d.api("GET", "/devices?tags[team]=ml", None);
    assert_eq!(l.body.as_array().map(Vec::len), Some(1), "{}", l.text);
    let l = d.api("GET", "/devices?tags[team]=web", None);
    assert_eq!(l.body, json!([]));
    for body in [
        json!({"pci_address": addr, "name": "dev2"}),
        json!({"pci_address": addrs.last().expect("one"), "name": "dev1"}),
    ] {
        let r = d.api("POST", "/devices", Some(&body));
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (409, Some("conflict")),
            "{}",
            r.text
        );
    }

    // An instance asking for it: refused, naming what is missing.
    let create = |devices: serde_json::Value| {
        d.api(
            "POST",
            "/instances",
            Some(&json!({"name": "gpu-box", "rootfs": "/nonexistent", "devices": devices})),
        )
    };
    let r = create(json!(["dev1"]));
    println!("create with dev1: {} {}", r.status, r.text);
    if !has_iommu {
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["code"], json!("device_not_ready"), "{}", r.text);
        let msg = r.body["message"].as_str().expect("message");
        assert!(msg.contains("dev1") && msg.contains(&addr), "{msg}");
        assert!(
            msg.contains("no IOMMU group") && msg.contains("no IOMMU enabled"),
            "{msg}"
        );
    } else {
        assert!([400, 501].contains(&r.status), "{}", r.text);
    }
    let r = create(json!(["no-such-device"]));
    assert_eq!(r.status, 404, "{}", r.text);
    let r = create(json!("dev1"));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(d.api("GET", "/instances", None).body, json!([]));

    // Unregister.
    let r = d.api("DELETE", "/devices/dev1", None);
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(d.api("GET", &format!("/devices/{id}"), None).status, 404);
    assert_eq!(d.api("DELETE", "/devices/dev1", None).status, 404);

    // The CLI.
    let out = d.lodge(&["device", "available"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(addrs.iter().all(|a| text.contains(a.as_str())), "{text}");
    let out = d.lodge(&["device", "add", "--name", "cli-dev", &addr]);
    assert!(out.status.success(), "{out:?}");
    let out = d.lodge(&["device", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cli-dev") && text.contains(addr.as_str()),
        "{text}"
    );
    let out = d.lodge(&["device", "add", "../etc"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DDDD:BB:DD.F"),
        "{out:?}"
    );
    let out = d.lodge(&["device", "rm", "cli-dev"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.api("GET", "/devices", None).body, json!([]));
}
