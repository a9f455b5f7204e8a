//! lodge run as a service: `/metrics` after a real boot, the systemd
//! readiness notification, and a restart the way systemd does it with
//! `KillMode=process` (SIGTERM to the daemon alone, then a new daemon)
//! keeping the VM running and its console log complete; the CLI's
//! `--format` on the same VM. One VM serves every assertion. (`vm_e2e`
//! covers `kill -9`; this is the graceful signal plus the notification.)
//!
//! Without a VM: the completions parse in each shell present, and the
//! Debian package (`scripts/build-deb.sh`) holds what it should, its unit
//! passes `systemd-analyze verify`, and it installs into a fresh root with
//! `dpkg --root` (maintainer scripts included) and purges clean.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{busybox_rootfs, Daemon, OutputLimited, LODGE};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

/// The value of the first sample of `name` whose line contains all `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits for one datagram on the notify socket.
fn notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn log_bytes_on_disk(dir: &Path, base: &str) -> u64 {
    std::fs::read_dir(dir)
        .expect("log dir")
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == base || name.strip_prefix(base).is_some_and(|s| s.starts_with('.'))
        })
        .map(|e| e.metadata().expect("stat").len())
        .sum()
}

/// `jq -c FILTER` over `input`: jq's output, after checking it parsed.
fn jq(input: &[u8], filter: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("jq")
        .args(["-c", filter])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("jq (scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to jq");
    let out = child.wait_with_output().expect("jq");
    assert!(
        out.status.success(),
        "jq could not read {:?}",
        String::from_utf8_lossy(input)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn completions_parse_in_every_shell_present() {
    let dir = tempfile::tempdir().expect("tempdir");
    // bash is always there; zsh and fish where installed (install-deps.sh
    // installs both).
    for (shell, check) in [
        ("bash", vec!["-n"]),
        ("zsh", vec!["-n"]),
        ("fish", vec!["--no-execute"]),
    ] {
        if shell != "bash" && !have(shell) {
            eprintln!("skipping the {shell} completion: {shell} is not installed");
            continue;
        }
        let out = Command::new(LODGE)
            .args(["completion", shell])
            .output_limited()
            .expect("lodge completion");
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for verb in ["run", "ps", "logs", "completion", "--format"] {
            assert!(text.contains(verb), "{shell} completion lacks {verb}");
        }
        let file = dir.path().join(format!("lodge.{shell}"));
        std::fs::write(&file, &out.stdout).expect("write");
        let parsed = Command::new(shell)
            .args(&check)
            .arg(&file)
            .output_limited()
            .expect("run the shell");
        assert!(
            parsed.status.success(),
            "{shell} {check:?} refused the completion: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
    }
}

/// The static guest init the package carries: `LODGE_INIT`, else the one
/// scripts/build-guest.sh built (scripts/test.sh runs it first).
fn lodge_init() -> Result<std::path::PathBuf, String> {
    if let Some(p) = std::env::var_os("LODGE_INIT") {
        return Ok(p.into());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let p = target.join("x86_64-unknown-linux-gnu/release/lodge-init");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "no static lodge-init at {} (scripts/build-guest.sh builds it; or set LODGE_INIT)",
            p.display()
        ))
    }
}

fn dpkg_in(root: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        // dpkg's log is not under --root: keep the host's own log untouched.
        .arg(format!("--log={}", root.join("dpkg.log").display()))
        .args(args)
        // No guest build here (no kernel package in the fresh root).
        .env("LODGE_SKIP_GUEST_BUILD", "1")
        .output_limited_for(Duration::from_secs(120))
        .expect("dpkg");
    assert!(
        out.status.success(),
        "dpkg {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `dpkg --root` into an empty root with only a static busybox for the
/// maintainer scripts, which dpkg runs chrooted there: the package
/// installs (its dependencies forced: the root has no QEMU), postinst
/// makes the data dir, the installed binary, completions and man pages
/// work; a reinstall keeps an edited conffile; a purge leaves only the
/// user's data. Needs root (dpkg chroots) and busybox-static.
fn installs_into_a_fresh_root(deb: &str, scratch: &Path) {
    let uid = Command::new("id").arg("-u").output_limited().expect("id");
    let missing = if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        Some("dpkg --root runs maintainer scripts in a chroot: needs root".to_string())
    } else if !have("dpkg") {
        Some("dpkg is not installed".to_string())
    } else {
        ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .all(|b| !Path::new(b).exists())
            .then(|| "no busybox (busybox-static) for the fresh root's shell".to_string())
    };
    if !common::available("installing the Debian package", missing) {
        return;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|b| Path::new(b).exists())
        .expect("checked");
    let root = scratch.join("fresh");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "bin", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    for file in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(root.join(file), "").expect("dpkg db");
    }
    std::fs::copy(busybox, root.join("bin/busybox")).expect("busybox");
    for applet in ["sh", "mkdir", "chmod", "rm", "ls", "cp", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
    }

    dpkg_in(&root, &["--force-depends", "-i", deb]);
    let status = dpkg_in(&root, &["-s", "lodge"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("/etc/lodge/lodge.env"),
        "a conffile: {status}"
    );
    // postinst ran (in the chroot): the data dir, private.
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(root.join("var/lib/lodge")).expect("postinst made /var/lib/lodge");
    assert_eq!(md.permissions().mode() & 0o7777, 0o711);

    let bin = root.join("usr/bin/lodge");
    let v = Command::new(&bin)
        .arg("--version")
        .output_limited()
        .expect("lodge --version");
    let version = String::from_utf8_lossy(&v.stdout);
    assert!(
        version.starts_with(&format!("lodge {}", env!("CARGO_PKG_VERSION"))),
        "{v:?}"
    );
    let unit = root.join("lib/systemd/system/lodge.service");
    let unit = std::fs::read_to_string(unit).expect("the unit installed");
    assert!(
        unit.lines().any(|l| l == "ExecStart=/usr/bin/lodge serve"),
        "{unit}"
    );
    let bash = root.join("usr/share/bash-completion/completions/lodge");
    let n = Command::new("bash")
        .arg("-n")
        .arg(&bash)
        .output_limited()
        .expect("bash -n");
    assert!(n.status.success(), "installed bash completion: {n:?}");
    assert!(std::fs::read_to_string(&bash)
        .expect("completion")
        .contains("lodge"));
    for page in ["lodge.1.gz", "lodge-run.1.gz", "lodge-serve.1.gz"] {
        let z = Command::new("gzip")
            .arg("-dc")
            .arg(root.join("usr/share/man/man1").join(page))
            .output_limited()
            .expect("gzip");
        assert!(z.status.success(), "{page}: {z:?}");
        assert!(
            String::from_utf8_lossy(&z.stdout).contains(".TH "),
            "{page} is a man page"
        );
    }

    // A reinstall (as an upgrade runs prerm, postinst) keeps an edited
    // conffile.
    let env_file = root.join("etc/lodge/lodge.env");
    let mut edited = std::fs::read_to_string(&env_file).expect("lodge.env");
    edited.push_str("LODGE_LISTEN=127.0.0.1:9999\n");
    std::fs::write(&env_file, &edited).expect("edit");
    dpkg_in(&root, &["--force-depends", "--force-confold", "-i", deb]);
    assert_eq!(std::fs::read_to_string(&env_file).expect("kept"), edited);

    // Purge: the package's files and the guest build go, the user's data
    // under /var/lib/lodge stays.
    std::fs::create_dir_all(root.join("var/lib/lodge/system")).expect("mkdir");
    std::fs::write(root.join("var/lib/lodge/system/vmlinuz"), "k").expect("write");
    std::fs::create_dir_all(root.join("var/lib/lodge/guests")).expect("mkdir");
    dpkg_in(&root, &["--purge", "lodge"]);
    for gone in [
        "usr/bin/lodge",
        "lib/systemd/system/lodge.service",
        "etc/lodge/lodge.env",
        "usr/share/man/man1/lodge.1.gz",
        "var/lib/lodge/system",
    ] {
        assert!(!root.join(gone).exists(), "{gone} left after purge");
    }
    assert!(
        root.join("var/lib/lodge/guests").is_dir(),
        "the user's data stays"
    );
}

#[test]
fn the_debian_package_holds_the_binary_unit_completions_and_man_pages() {
    let init = lodge_init();
    if !common::available("the Debian package", init.as_ref().err().cloned()) {
        return;
    }
    let init = init.expect("checked");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().expect("tempdir");
    let built = Command::new(repo.join("scripts/build-deb.sh"))
        .arg(out.path())
        .env("LODGE_BIN", LODGE)
        .env("LODGE_INIT", &init)
        .env("LODGE_DEB_COMPRESSION", "none")
        .output_limited()
        .expect("build-deb.sh");
    assert!(
        built.status.success(),
        "build-deb.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert!(deb.ends_with("_amd64.deb"), "{deb}");

    let list = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output_limited()
        .expect("dpkg-deb -c");
    let list = String::from_utf8_lossy(&list.stdout);
    for path in [
        "./usr/bin/lodge",
        "./usr/lib/lodge/lodge-init",
        "./usr/lib/lodge/build-guest.sh",
        "./lib/systemd/system/lodge.service",
        "./etc/lodge/lodge.env",
        "./usr/share/bash-completion/completions/lodge",
        "./usr/share/zsh/vendor-completions/_lodge",
        "./usr/share/fish/vendor_completions.d/lodge.fish",
        "./usr/share/man/man1/lodge.1.gz",
        "./usr/share/man/man1/lodge-run.1.gz",
        "./usr/share/man/man1/lodge-system-info.1.gz",
        "./usr/share/doc/lodge/copyright",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} missing from\n{list}"
        );
    }
    assert!(
        list.contains("-rwxr-xr-x root/root"),
        "binaries are root's and executable"
    );

    let info = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output_limited()
        .expect("dpkg-deb -I");
    let info = String::from_utf8_lossy(&info.stdout);
    for want in [
        "Package: lodge",
        "Depends: qemu-system-x86",
        "postinst",
        "prerm",
        "postrm",
        "conffiles",
    ] {
        assert!(info.contains(want), "{want} in\n{info}");
    }
    let postinst = Command::new("dpkg-deb")
        .args(["-I", &deb, "postinst"])
        .output_limited()
        .expect("dpkg-deb -I postinst");
    let postinst = String::from_utf8_lossy(&postinst.stdout);
    assert!(
        postinst.contains(
            "LODGE_INIT=/usr/lib/lodge/lodge-init /usr/lib/lodge/build-guest.sh \"$system\""
        ),
        "postinst builds the guest with the packaged script:\n{postinst}"
    );
    assert!(postinst.contains("system=/var/lib/lodge/system"));

    // The unpacked tree: the binary runs, the scripts parse, and the unit
    // passes systemd-analyze (with ExecStart pointing into the tree and
    // the packaged man pages on MANPATH for Documentation=).
    let root = out.path().join("root");
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output_limited()
        .expect("dpkg-deb -x");
    assert!(x.status.success(), "{x:?}");
    let ctl = out.path().join("control");
    let e = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&ctl)
        .output_limited()
        .expect("dpkg-deb -e");
    assert!(e.status.success(), "{e:?}");
    for script in ["postinst", "prerm", "postrm"] {
        let n = Command::new("sh")
            .arg("-n")
            .arg(ctl.join(script))
            .output_limited()
            .expect("sh -n");
        assert!(n.status.success(), "{script}: {n:?}");
    }
    let v = Command::new(root.join("usr/bin/lodge"))
        .arg("--version")
        .output_limited()
        .expect("lodge --version");
    assert!(
        String::from_utf8_lossy(&v.stdout).starts_with("lodge "),
        "{v:?}"
    );
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/lodge.service")).expect("unit");
    for line in [
        "Type=notify",
        "KillMode=process",
        "NotifyAccess=main",
        "EnvironmentFile=-/etc/lodge/lodge.env",
        "StandardError=journal",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in the unit");
    }
    installs_into_a_fresh_root(&deb, out.path());
    if !have("systemd-analyze") {
        eprintln!("skipping systemd-analyze verify: not installed");
        return;
    }
    let bin = root.join("usr/bin/lodge");
    let unit_dir = out.path().join("units");
    std::fs::create_dir_all(&unit_dir).expect("mkdir");
    let local = unit.replace(
        "ExecStart=/usr/bin/lodge",
        &format!("ExecStart={}", bin.display()),
    );
    std::fs::write(unit_dir.join("lodge.service"), local).expect("write unit");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit_dir.join("lodge.service"))
        .env("MANPATH", root.join("usr/share/man"))
        .output_limited()
        .expect("systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn metrics_move_with_a_boot_and_a_systemd_style_restart_keeps_the_vm() {
    require_guest!();
    let notify_dir = tempfile::tempdir().expect("tempdir");
    let notify_path = notify_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let notify_env = notify_path.to_str().expect("utf-8 path");
    let mut d =
        Daemon::start_with_env(&[("NOTIFY_SOCKET", notify_env), ("LODGE_LOG_FORMAT", "json")]);
    assert!(
        notification(&sock).contains("READY=1"),
        "the daemon says READY=1"
    );

    // Without a token /metrics is refused (LODGE_METRICS_PUBLIC is unset).
    let r = d.request("GET", "/metrics", None, None);
    assert_eq!(r.status, 401, "{}", r.text);
    let before = d.api("GET", "/metrics", None);
    assert_eq!(before.status, 200, "{}", before.text);
    assert_eq!(sample(&before.text, "lodge_boots_total", &[]), Some(0.0));

    // Half the lines, then a wait for /tmp/go (an exec after the restart
    // creates it), then the other half: the VM is surely running across
    // the scrapes and the restart, whatever the host's load.
    let n = 200;
    let script = format!(
        "echo started; i=0; while [ $i -lt {half} ]; do i=$((i+1)); echo line-$i; sleep 0.02; done; \
         while [ ! -e /tmp/go ]; do sleep 0.1; done; \
         while [ $i -lt {n} ]; do i=$((i+1)); echo line-$i; sleep 0.01; done",
        half = n / 2
    );
    let inst = d.create(json!({
        "name": "svc",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", script],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    common::wait_until("output to start", BOOT, || {
        d.log_lines(&id, "tail=1")
            .iter()
            .any(|l| l.starts_with("line-"))
            .then_some(())
    });
    let st = d.lodge(&["exec", &id, "true"]);
    assert!(st.status.success(), "exec: {st:?}");

    // `--format`: JSON lines that jq reads back, and templates.
    let ps = d.lodge(&["ps", "--format", "json"]);
    assert!(ps.status.success(), "ps: {ps:?}");
    let ids = jq(&ps.stdout, ".id");
    assert_eq!(
        ids.trim(),
        format!("\"{id}\""),
        "ps --format json through jq"
    );
    let ps = d.lodge(&["ps", "--format", "{{.Name}}\\t{{.State}}"]);
    assert_eq!(String::from_utf8_lossy(&ps.stdout), "svc\tRunning\n");
    let insp = d.lodge(&["inspect", "--format", "json", "svc"]);
    assert_eq!(jq(&insp.stdout, ".name").trim(), "\"svc\"");
    let insp = d.lodge(&["inspect", "-f", "{{.ID}} {{json .Cmd}}", "svc"]);
    assert_eq!(
        String::from_utf8_lossy(&insp.stdout),
        format!(
            "{id} [\"sh\",\"-c\",{}]\n",
            serde_json::to_string(&script).expect("json")
        )
    );
    // `system info` asks the daemon what only it knows.
    let info = d.lodge(&["system", "info", "--json"]);
    assert!(info.status.success(), "system info: {info:?}");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("JSON");
    assert_eq!(info["server_version"], env!("CARGO_PKG_VERSION"), "{info}");
    assert_eq!(
        info["data_dir"],
        d.data_dir.to_str().expect("utf-8"),
        "{info}"
    );
    assert!(
        info["disk_used_by_lodge"].as_u64().is_some_and(|b| b > 0),
        "{info}"
    );
    assert!(info["hypervisors"][0]["name"] == "qemu", "{info}");
    let images = d.lodge(&["images", "--format", "json"]);
    assert!(images.status.success(), "images: {images:?}");
    assert_eq!(
        String::from_utf8_lossy(&images.stdout),
        "",
        "no images, no lines"
    );

    // `run` pulls a missing image itself, with `pull`'s progress and
    // errors (here a registry nobody listens on), before creating anything.
    let run = d.lodge(&["run", "--name", "nope", "127.0.0.1:9/none:v1", "true"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("pull of 127.0.0.1:9/none:v1 failed"), "{err}");
    assert_eq!(d.api("GET", "/instances/nope", None).status, 404);

    let after = d.api("GET", "/metrics", None);
    assert_eq!(after.status, 200, "{}", after.text);
    let m = &after.text;
    assert_eq!(sample(m, "lodge_boots_total", &[]), Some(1.0), "{m}");
    assert_eq!(
        sample(m, "lodge_boot_duration_seconds_count", &[]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "lodge_instances", &["state=\"Running\""]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "lodge_instances", &["state=\"Stopped\""]),
        Some(0.0),
        "{m}"
    );
    let app = format!("instance_id=\"{id}\"");
    assert!(
        sample(m, "lodge_log_bytes_total", &[&app, "source=\"app\""]).unwrap_or(0.0) > 0.0,
        "{m}"
    );
    assert_eq!(
        sample(m, "lodge_log_writer_errors", &[&app, "source=\"app\""]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "lodge_agent_sessions_total", &["kind=\"exec\""]),
        Some(1.0),
        "{m}"
    );
    // Requests are counted by route template, never by raw path.
    assert!(
        sample(
            m,
            "lodge_http_requests_total",
            &["route=\"/instances/{id}/logs\"", "status=\"200\""]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(!m.contains(&format!("route=\"/instances/{id}")), "{m}");
    assert!(
        sample(
            m,
            "lodge_http_requests_total",
            &["route=\"/metrics\"", "status=\"401\""]
        ) == Some(1.0),
        "{m}"
    );
    assert!(sample(m, "lodge_daemon_resident_memory_bytes", &[]).unwrap_or(0.0) > 1e6);
    assert_eq!(
        sample(m, "lodge_image_pulls_total", &["result=\"failed\""]),
        Some(1.0),
        "{m}"
    );

    // Standby and restore are timed.
    let r = d.api("POST", &format!("/instances/{id}/standby"), None);
    assert_eq!(r.status, 200, "standby: {}", r.text);
    let r = d.api("POST", &format!("/instances/{id}/restore"), None);
    assert_eq!(r.status, 200, "restore: {}", r.text);
    let m = d.api("GET", "/metrics", None).text;
    for op in ["standby", "restore"] {
        let name = format!("lodge_{op}_duration_seconds_count");
        assert_eq!(sample(&m, &name, &[]), Some(1.0), "{m}");
    }
    // A restore is not a boot.
    assert_eq!(
        sample(&m, "lodge_boot_duration_seconds_count", &[]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "lodge_boots_total", &[]), Some(1.0), "{m}");

    // systemd's restart with KillMode=process: SIGTERM to the daemon only.
    let mut child = d.child.take().expect("daemon");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let exit = child.wait().expect("wait for the daemon");
    assert!(exit.success(), "the daemon ends cleanly on SIGTERM: {exit}");
    assert!(
        notification(&sock).contains("STOPPING=1"),
        "the daemon says STOPPING=1"
    );
    d.spawn();
    assert!(notification(&sock).contains("READY=1"));
    assert_eq!(d.state(&id), "Running", "the VM outlived the daemon");
    let go = d.lodge(&["exec", "svc", "touch", "/tmp/go"]);
    assert!(go.status.success(), "exec after the restart: {go:?}");
    d.wait_state(&id, "Stopped", BOOT);
    let lines = d.log_lines(&id, &format!("tail={}", n + 10));
    let want: Vec<String> = std::iter::once("started".to_string())
        .chain((1..=n).map(|i| format!("line-{i}")))
        .collect();
    assert_eq!(lines, want, "every line exactly once, in order");

    // The new daemon reads the same log totals from the monitor's files.
    let m = d.api("GET", "/metrics", None).text;
    let logs = d.guests_dir().join(&id).join("logs");
    assert_eq!(
        sample(&m, "lodge_log_bytes_total", &[&app, "source=\"app\""]),
        Some(log_bytes_on_disk(&logs, "app.log") as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, "lodge_instances", &["state=\"Stopped\""]),
        Some(1.0),
        "{m}"
    );
    // `--log-format json`: every line of both daemons' logs is one JSON
    // event; exec's carries the instance id as a field.
    let log = std::fs::read_to_string(d.data_dir.join("serve.log")).expect("serve.log");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(events
        .iter()
        .all(|e| e["timestamp"].is_string() && e["level"].is_string()));
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "exec started"
                && e["fields"]["instance"] == id.as_str()),
        "{log}"
    );
}
