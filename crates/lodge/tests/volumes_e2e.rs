//! End-to-end: volumes through the real daemon into real VMs (QEMU under
//! TCG). One test, in sections that share VMs so the file boots few of
//! them: a volume written by one instance and read by others after the
//! writer is deleted, the sharing rules, hot attach and detach (busy
//! refused), an overlay whose writes stay in the instance's upper disk, an
//! archive arriving with its modes and symlink, and attachments surviving
//! a stop/start, a standby/restore and a daemon restart. Each section
//! prints its time.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{busybox_rootfs, Daemon};
use serde_json::{json, Value};

fn section(name: &str, t0: Instant) {
    eprintln!("[volumes_e2e] {name}: {:.2} s", t0.elapsed().as_secs_f64());
}

/// `lodge exec` in `vm`; returns (code, stdout, stderr).
fn exec(d: &Daemon, vm: &str, script: &str) -> (i32, String, String) {
    let out = d.lodge(&[
        "exec",
        "--wait-for-agent",
        "120",
        "--timeout",
        "60",
        vm,
        "sh",
        "-c",
        script,
    ]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn vm(name: &str, cmd: &str, volumes: Value) -> Value {
    json!({
        "name": name,
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "192MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", cmd],
        "volumes": volumes,
    })
}

const IDLE: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

fn debugfs(disk: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(disk)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn volume_disk(d: &Daemon, id: &str) -> std::path::PathBuf {
    d.data_dir.join("volumes").join(id).join("data.raw")
}

fn targz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gz");
    gz.finish().expect("gz")
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn upload(d: &Daemon, query: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/volumes/from-archive?{query}", d.base))
        .bearer_auth(&d.token)
        .header("content-type", "application/gzip")
        .body(body)
        .send()
        .expect("upload");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn volumes_outlive_instances_and_follow_the_rules() {
    require_guest!();
    let all = Instant::now();
    let d = Daemon::start();

    // --- the resource and its bad inputs --------------------------------
    let t0 = Instant::now();
    let r = d.api(
        "POST",
        "/volumes",
        Some(&json!({"name": "data", "size_gb": 1})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let data_id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(r.body["attachments"], json!([]));
    for (body, status) in [
        (json!({"name": "x", "size_gb": 0}), 400),
        (json!({"name": "x", "size_gb": -1}), 400),
        (json!({"name": "x", "size_gb": "12XB"}), 400),
        (json!({"name": "data", "size_gb": 1}), 409),
        (json!({"name": "x", "size_gb": 1, "id": data_id}), 409),
        (json!({"name": "../x", "size_gb": 1}), 400),
    ] {
        let r = d.api("POST", "/volumes", Some(&body));
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert!(r.body["code"].is_string() && r.body["message"].is_string());
    }
    assert_eq!(d.api("GET", "/volumes/nope", None).status, 404);
    assert_eq!(d.api("DELETE", "/volumes/nope", None).status, 404);
    let r = d.api(
        "POST",
        "/instances",
        Some(&vm(
            "bad",
            "true",
            json!([{"volume_id": "nope", "mount_path": "/d"}]),
        )),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    for path in ["rel", "/", "/a,b", "/a/../b"] {
        let r = d.api(
            "POST",
            "/instances",
            Some(&vm(
                "bad",
                "true",
                json!([{"volume_id": "data", "mount_path": path}]),
            )),
        );
        assert_eq!(r.status, 400, "{path}: {}", r.text);
    }
    assert_eq!(
        d.api("GET", "/volumes", None).body.as_array().map(Vec::len),
        Some(1),
        "failed creates left nothing"
    );
    section("the resource and its bad inputs", t0);

    // --- A writes, is deleted; the bytes stay ---------------------------
    let t0 = Instant::now();
    let a = d.create(vm(
        "writer",
        "echo hello-from-a > /data/f && head -c 100000 /dev/urandom > /data/blob && md5sum /data/blob > /data/blob.md5 && sync",
        json!([{"volume_id": "data", "mount_path": "/data"}]),
    ));
    let a_id = a["id"].as_str().expect("id").to_string();
    assert_eq!(a["volumes"][0]["mount_path"], "/data");
    let done = d.wait_state(&a_id, "Stopped", Duration::from_secs(120));
    assert_eq!(done["exit_code"], 0, "{done}");
    let v = d.api("GET", "/volumes/data", None).body;
    assert_eq!(
        v["attachments"],
        json!([{"instance_id": a_id, "mount_path": "/data", "readonly": false}])
    );
    let r = d.api("DELETE", "/volumes/data", None);
    assert_eq!(r.status, 409, "attached: {}", r.text);
    assert_eq!(
        d.api("DELETE", &format!("/instances/{a_id}"), None).status,
        204
    );
    assert_eq!(
        d.api("GET", "/volumes/data", None).body["attachments"],
        json!([])
    );
    assert!(
        volume_disk(&d, &data_id).exists(),
        "deleting A kept the volume"
    );
    section("A writes and is deleted", t0);

    // --- two read-only readers; read-write refused ----------------------
    let t0 = Instant::now();
    let ro = json!([{"volume_id": data_id, "mount_path": "/data", "readonly": true}]);
    let b = d.create(vm("reader-b", IDLE, ro.clone()));
    let c = d.create(vm("reader-c", IDLE, ro.clone()));
    let (b_id, c_id) = (
        b["id"].as_str().expect("id").to_string(),
        c["id"].as_str().expect("id").to_string(),
    );
    let r = d.api(
        "POST",
        "/instances",
        Some(&vm(
            "writer-2",
            IDLE,
            json!([{"volume_id": "data", "mount_path": "/data"}]),
        )),
    );
    assert_eq!(r.status, 409, "rw next to readers: {}", r.text);
    assert!(r.text.contains("read-only"), "{}", r.text);
    for who in ["reader-b", "reader-c"] {
        let (code, out, err) = exec(&d, who, "cat /data/f && cd /data && md5sum -c blob.md5");
        assert_eq!(code, 0, "{who}: {out} {err}");
        assert!(out.starts_with("hello-from-a\n"), "{who}: {out}");
    }
    let (code, _, err) = exec(&d, "reader-b", "echo x > /data/nope");
    assert_ne!(code, 0, "a read-only volume refuses writes");
    assert!(err.contains("Read-only"), "{err}");
    section("two readers share, a writer is refused", t0);

    // --- hot attach, write, busy detach, detach, attach elsewhere -------
    let t0 = Instant::now();
    let r = d.api(
        "POST",
        "/volumes",
        Some(&json!({"name": "hot", "size_gb": 1})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let hot_id = r.body["id"].as_str().expect("id").to_string();
    let attach_t = Instant::now();
    let r = d.api(
        "POST",
        &format!("/instances/{b_id}/volumes/hot"),
        Some(&json!({"mount_path": "/hot"})),
    );
    assert_eq!(r.status, 200, "hot attach: {}", r.text);
    eprintln!(
        "[volumes_e2e] hot attach to mounted: {:.2} s",
        attach_t.elapsed().as_secs_f64()
    );
    assert_eq!(
        r.body["volumes"].as_array().map(Vec::len),
        Some(2),
        "{}",
        r.text
    );
    let (code, out, err) = exec(
        &d,
        "reader-b",
        "echo hot-bytes > /hot/g && sync && cat /hot/g",
    );
    assert_eq!((code, out.as_str()), (0, "hot-bytes\n"), "{err}");
    let r = d.api(
        "POST",
        &format!("/instances/{c_id}/volumes/hot"),
        Some(&json!({"mount_path": "/hot", "readonly": true})),
    );
    assert_eq!(r.status, 409, "attached rw elsewhere: {}", r.text);
    // A process holding the mount makes the detach fail, cleanly: an exec
    // whose working directory is the volume, running while we detach.
    let mut holder = Command::new(common::LODGE)
        .args([
            "exec",
            "reader-b",
            "sh",
            "-c",
            "cd /hot && echo in && sleep 4",
        ])
        .env("LODGE_BASE_URL", &d.base)
        .env("LODGE_API_KEY", &d.token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("lodge exec");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut first,
    )
    .expect("read");
    assert_eq!(first, "in\n");
    let r = d.api("DELETE", &format!("/instances/{b_id}/volumes/hot"), None);
    assert_eq!(r.status, 409, "busy: {}", r.text);
    assert_eq!(r.body["code"], "volume_busy", "{}", r.text);
    assert!(r.text.contains("busy"), "{}", r.text);
    assert!(holder.wait().expect("wait").success());
    // The process has ended and let go of the mount.
    let detach_t = Instant::now();
    let r = common::wait_until("the volume to be released", Duration::from_secs(10), || {
        let r = d.api("DELETE", &format!("/instances/{b_id}/volumes/hot"), None);
        (r.status != 409).then_some(r)
    });
    assert_eq!(r.status, 200, "detach: {}", r.text);
    eprintln!(
        "[volumes_e2e] hot detach: {:.2} s",
        detach_t.elapsed().as_secs_f64()
    );
    assert_eq!(r.body["volumes"].as_array().map(Vec::len), Some(1));
    let (code, out, _) = exec(
        &d,
        "reader-b",
        "ls /hot 2>&1 | wc -l; grep -c ' /hot ' /proc/mounts",
    );
    assert_eq!(code, 1, "{out}"); // grep -c prints 0 and fails: not mounted
    let r = d.api(
        "POST",
        &format!("/instances/{c_id}/volumes/{hot_id}"),
        Some(&json!({"mount_path": "/hot", "readonly": true})),
    );
    assert_eq!(r.status, 200, "attach elsewhere: {}", r.text);
    let (code, out, err) = exec(&d, "reader-c", "cat /hot/g");
    assert_eq!((code, out.as_str()), (0, "hot-bytes\n"), "{err}");
    section("hot attach, write, detach, attach elsewhere", t0);

    // --- a writer killed with its volume mounted; a reader sees its data --
    let t0 = Instant::now();
    let r = d.api(
        "POST",
        "/volumes",
        Some(&json!({"name": "dirty", "size_gb": 1})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let w = d.create(vm(
        "killed",
        "mkdir -p /d/sub && echo committed > /d/sub/f && sync && echo ready && sleep 600",
        json!([{"volume_id": "dirty", "mount_path": "/d"}]),
    ));
    let w_id = w["id"].as_str().expect("id").to_string();
    common::wait_until("the writer to sync", Duration::from_secs(120), || {
        d.log_lines(&w_id, "tail=5")
            .contains(&"ready".to_string())
            .then_some(())
    });
    // Not graceful: the VM is killed with the volume mounted read-write.
    assert_eq!(
        d.api("DELETE", &format!("/instances/{w_id}"), None).status,
        204
    );
    let r = d.api(
        "POST",
        &format!("/instances/{c_id}/volumes/dirty"),
        Some(&json!({"mount_path": "/dirty", "readonly": true})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let (code, out, err) = exec(&d, "reader-c", "cat /dirty/sub/f");
    assert_eq!((code, out.as_str()), (0, "committed\n"), "{err}");
    let r = d.api("DELETE", &format!("/instances/{c_id}/volumes/dirty"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(d.api("DELETE", "/volumes/dirty", None).status, 204);
    section("a killed writer's data reaches a reader", t0);

    // --- overlay: writes land in the upper disk -------------------------
    let t0 = Instant::now();
    let before = std::fs::read(volume_disk(&d, &data_id)).expect("volume");
    let o = d.create(vm(
        "overlay",
        "echo over > /data/over && echo changed > /data/f && cat /data/f && sync",
        json!([{"volume_id": "data", "mount_path": "/data", "readonly": true,
                 "overlay": true, "overlay_size": "64MB"}]),
    ));
    let o_id = o["id"].as_str().expect("id").to_string();
    let done = d.wait_state(&o_id, "Stopped", Duration::from_secs(120));
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(d.log_lines(&o_id, "tail=5"), ["changed"]);
    let after = std::fs::read(volume_disk(&d, &data_id)).expect("volume");
    assert!(
        before == after,
        "the base volume is unchanged, byte for byte"
    );
    let upper = std::fs::read_dir(d.guests_dir().join(&o_id))
        .expect("instance dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-upper.ext4"))
        .expect("an upper disk");
    assert_eq!(debugfs(&upper, "cat /upper/over"), "over\n");
    assert_eq!(debugfs(&upper, "cat /upper/f"), "changed\n");
    section("overlay writes land in the upper disk", t0);

    // --- from-archive: a tree with modes and a symlink -------------------
    let t0 = Instant::now();
    let body = targz(|b| {
        let h = header("app/", tar::EntryType::Directory, 0o750, 0);
        b.append(&h, std::io::empty()).expect("dir");
        let h = header("app/run.sh", tar::EntryType::Regular, 0o755, 10);
        b.append(&h, &b"echo hi!\n\n"[..]).expect("file");
        let h = header("app/secret", tar::EntryType::Regular, 0o600, 3);
        b.append(&h, &b"abc"[..]).expect("file");
        let mut h = header("app/link", tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("run.sh").expect("link");
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("link");
    });
    let (status, arch) = upload(&d, "name=arch&tags[k]=v", body);
    assert_eq!(status, 201, "{arch}");
    assert_eq!(
        (arch["size_gb"].as_u64(), &arch["tags"]),
        (Some(1), &json!({"k": "v"}))
    );
    let r = d.api(
        "POST",
        &format!("/instances/{c_id}/volumes/arch"),
        Some(&json!({"mount_path": "/arch", "readonly": true})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let (code, out, err) = exec(
        &d,
        "reader-c",
        "cd /arch/app && stat -c '%n %a' . run.sh secret && readlink link && sh link",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, ". 750\nrun.sh 755\nsecret 600\nrun.sh\nhi!\n"),
        "{err}"
    );
    let escape = targz(|b| {
        let h = header("../evil", tar::EntryType::Regular, 0o644, 1);
        b.append(&h, &b"x"[..]).expect("append");
    });
    let (status, err) = upload(&d, "name=evil", escape);
    assert_eq!(status, 400, "{err}");
    assert!(
        err["message"].as_str().unwrap_or("").contains(".."),
        "{err}"
    );
    let (status, err) = upload(&d, "name=arch", targz(|_| {}));
    assert_eq!(status, 409, "{err}");
    let names: Vec<String> = std::fs::read_dir(d.data_dir.join("volumes"))
        .expect("volumes dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "no debris: {names:?}");
    // The CLI: import a file, list, inspect, remove.
    let file = d.data_dir.join("site.tar.gz");
    std::fs::write(
        &file,
        targz(|b| {
            let h = header("index.html", tar::EntryType::Regular, 0o644, 3);
            b.append(&h, &b"hi\n"[..]).expect("file");
        }),
    )
    .expect("write");
    let cli = |args: &[&str]| {
        let out = d.lodge(args);
        assert!(
            out.status.success(),
            "lodge {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let id = cli(&[
        "volume",
        "import",
        "--tag",
        "a=b",
        "site",
        file.to_str().expect("utf-8"),
    ]);
    assert!(id.trim().starts_with("vol-"), "{id}");
    assert!(cli(&["volume", "ls", "-q"]).lines().any(|l| l == "site"));
    let v: Value = serde_json::from_str(&cli(&["volume", "inspect", "site"])).expect("json");
    assert_eq!(
        (&v["id"], &v["tags"]),
        (&json!(id.trim()), &json!({"a": "b"}))
    );
    assert_eq!(cli(&["volume", "rm", "site"]).trim(), "site");
    let out = d.lodge(&["volume", "rm", "data"]);
    assert!(!out.status.success(), "attached: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("attached"));
    section("from-archive", t0);

    // --- attachments survive stop/start, standby/restore, a daemon restart
    let t0 = Instant::now();
    let r = d.api("POST", &format!("/instances/{b_id}/stop"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = d.api("POST", &format!("/instances/{b_id}/start"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let (code, out, err) = exec(&d, "reader-b", "cat /data/f");
    assert_eq!((code, out.as_str()), (0, "hello-from-a\n"), "{err}");
    // Standby and restore of a VM with hot-plugged volumes: the restored
    // QEMU has the same disks in the same slots, still mounted.
    let r = d.api("POST", &format!("/instances/{c_id}/standby"), None);
    assert_eq!(r.status, 200, "standby: {}", r.text);
    let r = d.api("POST", &format!("/instances/{c_id}/restore"), None);
    assert_eq!(r.status, 200, "restore: {}", r.text);
    let (code, out, err) = exec(&d, "reader-c", "cat /hot/g /arch/app/secret /data/f");
    assert_eq!(
        (code, out.as_str()),
        (0, "hot-bytes\nabchello-from-a\n"),
        "{err}"
    );
    let mut d = d;
    d.kill9();
    d.spawn();
    let b_now = d.get(&b_id);
    assert_eq!(
        b_now["volumes"][0]["volume_id"],
        data_id.as_str(),
        "{b_now}"
    );
    let v = d.api("GET", &format!("/volumes/{hot_id}"), None).body;
    assert_eq!(v["attachments"][0]["instance_id"], c_id.as_str(), "{v}");
    // Deleting the instances detaches everything and keeps the volumes.
    for id in [&b_id, &c_id, &o_id] {
        assert_eq!(
            d.api("DELETE", &format!("/instances/{id}"), None).status,
            204
        );
    }
    for name in ["data", "hot", "arch"] {
        let v = d.api("GET", &format!("/volumes/{name}"), None);
        assert_eq!(
            (v.status, &v.body["attachments"]),
            (200, &json!([])),
            "{name}"
        );
        assert_eq!(
            d.api("DELETE", &format!("/volumes/{name}"), None).status,
            204
        );
    }
    section("persistence and clean-up", t0);
    section("whole file", all);
}
