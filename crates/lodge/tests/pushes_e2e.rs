//! Image pushes end to end: a local image (imported from an archive, so
//! lodge built it and no registry ever held it) pushed by the real daemon
//! to real registries (Debian's `docker-registry` on loopback, one with
//! htpasswd auth and one open), then pulled back by a second daemon with an
//! empty cache under a new name: the same manifest digest, every blob
//! fetched from the registry, and it boots.

mod common;

use std::time::Duration;

use common::registry::Registry;
use common::{busybox_rootfs, wait_until, Daemon};
use serde_json::{json, Value};

const JOB: Duration = Duration::from_secs(60);

fn enc(name: &str) -> String {
    name.replace('/', "%2F")
}

fn wait_push(d: &Daemon, id: &str) -> Value {
    wait_until(&format!("push {id} to finish"), JOB, || {
        let r = d.api("GET", &format!("/pushes/{id}"), None);
        assert_eq!(r.status, 200, "{}", r.text);
        matches!(r.body["status"].as_str(), Some("pushed") | Some("failed")).then_some(r.body)
    })
}

fn wait_image(d: &Daemon, name: &str) -> Value {
    wait_until(&format!("image {name} to finish"), JOB, || {
        let r = d.api("GET", &format!("/images/{}", enc(name)), None);
        assert_eq!(r.status, 200, "{}", r.text);
        matches!(r.body["status"].as_str(), Some("ready") | Some("failed")).then_some(r.body)
    })
}

#[test]
fn a_local_image_is_pushed_pulled_back_elsewhere_and_boots() {
    require_guest!();
    let secured = Registry::start_with_auth("alice", "s3cret");
    let open = Registry::start();
    let d = Daemon::start();

    // A local image, built here from the busybox tree: no registry has it.
    let archive = d.data_dir.join("src.oci.tar");
    let made = d.lodge(&[
        "mk-image",
        "--layer",
        &busybox_rootfs(),
        "--name",
        "pushsrc:v1",
        "-o",
        archive.to_str().expect("utf-8"),
        "--",
        "sh",
        "-c",
        "echo booted from the pushed image",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = d.lodge(&["pull", "-q", &format!("oci-archive:{}", archive.display())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let img = wait_image(&d, &local);
    assert_eq!(img["status"], "ready", "{img}");
    let digest = img["digest"].as_str().expect("digest").to_string();

    // Refused at once: no such image, a digest target, a bad credential.
    let r = d.api(
        "POST",
        "/pushes",
        Some(&json!({"image": "nosuch:1", "target": format!("{}/x:1", open.host())})),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let r = d.api(
        "POST",
        "/pushes",
        Some(&json!({"image": local, "target": format!("{}/x@{digest}", open.host())})),
    );
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("bad_request")),
        "{}",
        r.text
    );
    let r = d.api(
        "POST",
        "/pushes",
        Some(
            &json!({"image": local, "target": format!("{}/x:1", open.host()),
            "credentials": {"registry_token": "a\nb"}}),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.text);

    // Without credentials the secured registry refuses: the job fails and says so.
    let target = format!("{}/team/pushed:v2", secured.host());
    let r = d.api(
        "POST",
        "/pushes",
        Some(&json!({"image": local, "target": target})),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "queued", "{}", r.text);
    let failed = wait_push(&d, r.body["id"].as_str().expect("id"));
    assert_eq!(failed["status"], "failed", "{failed}");
    let why = failed["error"].as_str().unwrap_or("");
    assert!(
        why.contains("credentials") || why.contains("denied"),
        "{failed}"
    );
    assert!(failed["completed_at"].is_string(), "{failed}");

    // With the request's credentials (used for this job, never stored).
    let r = d.api(
        "POST",
        "/pushes",
        Some(&json!({"image": local, "target": target,
            "credentials": {"username": "alice", "password": "s3cret"}})),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_string();
    let pushed = wait_push(&d, &id);
    assert_eq!(pushed["status"], "pushed", "{pushed}");
    assert_eq!(pushed["digest"], digest.as_str(), "{pushed}");
    assert_eq!(pushed["image"], local.as_str());
    assert_eq!(pushed["target"], target.as_str());
    assert_eq!(pushed["layers"], 1, "{pushed}");
    assert!(pushed["bytes"].as_u64().unwrap_or(0) > 0, "{pushed}");
    assert_eq!(pushed["bytes"], pushed["bytes_total"], "{pushed}");
    assert!(
        !std::fs::read_dir(d.data_dir.join("images/pushes"))
            .expect("push records")
            .flatten()
            .any(|e| std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains("s3cret")),
        "a credential was written to disk"
    );
    // The list is newest first.
    let r = d.api("GET", "/pushes", None);
    let ids: Vec<&str> = r
        .body
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids.first(), Some(&id.as_str()), "{}", r.text);
    assert_eq!(ids.len(), 2, "{}", r.text);
    assert_eq!(d.api("GET", "/pushes/nosuch", None).status, 404);

    // The CLI, to the open registry; a second push finds every blob there.
    let open_target = format!("{}/cli/pushed:1", open.host());
    let out = d.lodge(&["push", "-q", &local, &open_target]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{open_target}@{digest}")
    );
    let uploads = open.blob_uploads();
    assert_eq!(uploads, 2, "config and one layer uploaded");
    let out = d.lodge(&["push", &local, &format!("{}/cli/pushed:again", open.host())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 already there"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(open.blob_uploads(), uploads, "blobs were uploaded again");

    // A second daemon with an empty cache pulls the pushed image under a
    // new name: same digest, and it boots.
    let d2 = Daemon::start();
    let r = d2.api(
        "POST",
        "/images",
        Some(&json!({"name": target, "credentials": {"username": "alice", "password": "s3cret"}})),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let back = wait_image(&d2, &target);
    assert_eq!(back["status"], "ready", "{back}");
    assert_eq!(back["digest"], digest.as_str(), "{back}");
    assert_eq!(
        back["cmd"],
        json!(["sh", "-c", "echo booted from the pushed image"]),
        "{back}"
    );
    let inst = d2.create(json!({"name": "pushed", "image": target, "size": "256MB", "vcpus": 1}));
    let id = inst["id"].as_str().expect("id");
    d2.wait_state(id, "Stopped", Duration::from_secs(120));
    let lines = d2.log_lines(id, "tail=200");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("booted from the pushed image")),
        "{lines:?}"
    );
}
