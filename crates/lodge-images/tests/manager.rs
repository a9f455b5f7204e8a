//! The image manager end to end on offline sources (OCI and docker
//! archives): status, the shared disk, caching, platforms, integrity
//! failures that leave nothing behind, and deletion rules.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use lodge_images::builder::{write_docker_archive, Image, Layer, LayerBuilder, Layout};
use lodge_images::oci::ContainerConfig;
use lodge_images::platform::Platform;
use lodge_images::{ErrorKind, Images, Options, PullRequest, Status};

fn layer(f: impl FnOnce(&mut LayerBuilder) -> std::io::Result<()>) -> Layer {
    let mut b = LayerBuilder::new();
    f(&mut b).expect("layer");
    Layer::gzip(&b.finish().expect("tar")).expect("gzip")
}

fn image(tag: &str) -> Image {
    Image::new(
        ContainerConfig {
            entrypoint: Some(vec!["/bin/app".into()]),
            cmd: Some(vec!["--serve".into()]),
            env: Some(vec!["PATH=/bin".into(), format!("TAG={tag}")]),
            working_dir: Some("/srv".into()),
            user: Some("app".into()),
        },
        vec![
            layer(|b| {
                b.dir("bin", 0o755)?
                    .file("bin/app", 0o755, b"#!/bin/sh\n")?
                    .dir("etc", 0o755)?
                    .file(
                        "etc/passwd",
                        0o644,
                        b"root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
                    )?
                    .file("etc/old", 0o644, b"old")?;
                Ok(())
            }),
            layer(|b| {
                b.whiteout("etc/old")?
                    .dir("srv", 0o755)?
                    .file("srv/tag", 0o644, tag.as_bytes())?;
                Ok(())
            }),
        ],
    )
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    images: Arc<Images>,
    users: Arc<Mutex<Vec<String>>>,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("images");
    let users: Arc<Mutex<Vec<String>>> = Arc::default();
    let u = users.clone();
    // Archives are written next to the store, which is the import directory.
    let opts = Options {
        import_dir: Some(tmp.path().to_path_buf()),
        ..Options::default()
    };
    let images = Images::open(
        &dir,
        opts,
        Arc::new(move |_digest: &str| u.lock().expect("lock").clone()),
    )
    .expect("open");
    Env {
        _tmp: tmp,
        dir,
        images,
        users,
    }
}

async fn pull(e: &Env, name: &str, platform: Option<&str>) -> lodge_images::ImageRecord {
    let info = e
        .images
        .pull(PullRequest {
            name: name.into(),
            platform: platform.map(str::to_string),
            ..Default::default()
        })
        .await
        .expect("pull accepted");
    e.images.wait(&info.record.name).await;
    e.images.get(&info.record.name).expect("record").record
}

fn debugfs(disk: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(disk)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Files under the images dir other than records (what a failure must not leave).
fn debris(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["tmp", "disks", "blobs/sha256"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn oci_archive_import_builds_a_shared_disk_once() {
    let e = env();
    let archive = e.dir.parent().expect("parent").join("demo image.tar");
    Layout::single(&image("one"), Some("demo:1"))
        .expect("layout")
        .write_archive(&archive)
        .expect("archive");
    let src = format!("oci-archive:{}", archive.display());
    let r = pull(&e, &src, None).await;
    assert_eq!(r.status, Status::Ready, "{:?}", r.error);
    assert_eq!(r.name, "docker.io/library/demo:1");
    assert_eq!(r.config.entrypoint, Some(vec!["/bin/app".to_string()]));
    assert_eq!(
        r.user.as_deref(),
        Some("1000"),
        "user name resolved in the image"
    );
    assert_eq!(r.platform, "linux/amd64");
    let disk = e.dir.join("disks").join(r.disk.clone().expect("disk"));
    assert_eq!(
        r.size_bytes,
        Some(std::fs::metadata(&disk).expect("disk").len())
    );
    let ls = debugfs(&disk, "ls -l /etc");
    assert!(ls.contains("passwd") && !ls.contains("old"), "{ls}");
    assert_eq!(debugfs(&disk, "cat /srv/tag"), "one");

    // Found by its short name too; a lease pins the disk.
    let lease = e.images.ensure("demo:1", None).await.expect("ensure");
    assert_eq!(lease.disk, disk);

    // Pulled again: the disk is reused, every layer comes from the cache.
    let mtime = std::fs::metadata(&disk)
        .expect("disk")
        .modified()
        .expect("mtime");
    let info = e
        .images
        .pull(PullRequest {
            name: src.clone(),
            ..Default::default()
        })
        .await
        .expect("pull");
    e.images.wait(&info.record.name).await;
    assert_eq!(
        std::fs::metadata(&disk)
            .expect("disk")
            .modified()
            .expect("mtime"),
        mtime
    );
    assert_eq!(e.images.get("demo:1").expect("get").record.digest, r.digest);

    // Deleting is refused while leased or used, allowed after.
    let err = e.images.delete("demo:1").expect_err("leased");
    assert_eq!(err.kind, ErrorKind::Conflict);
    drop(lease);
    e.users.lock().expect("lock").push("web-1".into());
    let err = e.images.delete("demo:1").expect_err("in use");
    assert!(
        err.kind == ErrorKind::Conflict && err.message.contains("web-1"),
        "{err}"
    );
    e.users.lock().expect("lock").clear();
    e.images.delete("docker.io/library/demo:1").expect("delete");
    assert!(!disk.exists());
    assert_eq!(
        e.images.get("demo:1").expect_err("gone").kind,
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn docker_archive_and_platform_selection() {
    let e = env();
    let base = e.dir.parent().expect("parent").to_path_buf();
    let da = base.join("saved.tar");
    write_docker_archive(&image("docker"), Some("saved/app:v2"), &da).expect("docker archive");
    let r = pull(&e, &format!("docker-archive:{}", da.display()), None).await;
    assert_eq!(r.status, Status::Ready, "{:?}", r.error);
    assert_eq!(r.name, "docker.io/saved/app:v2");
    let disk = e.dir.join("disks").join(r.disk.expect("disk"));
    assert_eq!(debugfs(&disk, "cat /srv/tag"), "docker");

    let mut arm = image("arm");
    arm.platform = Platform::parse("linux/arm64/v8").expect("platform");
    let multi = base.join("multi.tar");
    Layout::multi(&[image("amd"), arm.clone()], Some("multi:latest"))
        .expect("layout")
        .write_archive(&multi)
        .expect("write");
    let src = format!("oci-archive:{}", multi.display());
    let r = pull(&e, &src, None).await;
    assert_eq!(r.status, Status::Ready, "{:?}", r.error);
    assert!(r.index_digest.is_some());
    assert_eq!(
        debugfs(
            &e.dir.join("disks").join(r.disk.expect("disk")),
            "cat /srv/tag"
        ),
        "amd"
    );
    let r = pull(&e, &src, Some("linux/arm64")).await;
    assert_eq!(r.status, Status::Ready, "{:?}", r.error);
    assert_eq!(
        debugfs(
            &e.dir.join("disks").join(r.disk.expect("disk")),
            "cat /srv/tag"
        ),
        "arm"
    );

    let only_arm = base.join("arm.tar");
    Layout::multi(&[arm], None)
        .expect("layout")
        .write_archive(&only_arm)
        .expect("write");
    let r = pull(&e, &format!("oci-archive:{}", only_arm.display()), None).await;
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.error_kind, Some(ErrorKind::PlatformNotFound));
    assert!(
        r.error.as_deref().unwrap_or("").contains("linux/arm64/v8"),
        "{:?}",
        r.error
    );

    let err = e
        .images
        .pull(PullRequest {
            name: src,
            platform: Some("linux/s390x".into()),
            ..Default::default()
        })
        .await
        .expect_err("bad platform");
    assert_eq!(err.kind, ErrorKind::InvalidPlatform);
}

#[tokio::test]
async fn tampered_and_hostile_archives_fail_and_leave_nothing() {
    let e = env();
    let base = e.dir.parent().expect("parent").to_path_buf();
    let before = debris(&e.dir);

    // A layer blob whose bytes do not match its name.
    let mut layout = Layout::single(&image("bad"), None).expect("layout");
    let (victim, _) = layout
        .blobs
        .iter()
        .find(|(_, b)| b.starts_with(&[0x1f, 0x8b]))
        .map(|(d, b)| (d.clone(), b.clone()))
        .expect("a layer");
    let tampered = lodge_images::builder::Layer::gzip(b"not the layer")
        .expect("gz")
        .blob;
    layout.blobs.insert(victim, tampered);
    let path = base.join("tampered.tar");
    layout.write_archive(&path).expect("write");
    let r = pull(&e, &format!("oci-archive:{}", path.display()), None).await;
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.error_kind, Some(ErrorKind::Integrity), "{:?}", r.error);

    // A layer that writes through a symlink pointing out of the image.
    let hostile = Image::new(
        ContainerConfig {
            cmd: Some(vec!["/x".into()]),
            ..Default::default()
        },
        vec![layer(|b| {
            b.symlink("up", "../../../../../../../../tmp")?.raw(
                b"up/lodge-escaped",
                tar::EntryType::Regular,
                None,
                b"x",
            )?;
            Ok(())
        })],
    );
    let path = base.join("hostile.tar");
    Layout::single(&hostile, None)
        .expect("layout")
        .write_archive(&path)
        .expect("write");
    let r = pull(&e, &format!("oci-archive:{}", path.display()), None).await;
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.error_kind, Some(ErrorKind::UnsafeLayer), "{:?}", r.error);
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("outside the image"),
        "{:?}",
        r.error
    );
    assert!(!Path::new("/tmp/lodge-escaped").exists());

    // Only verified blobs of the failed pulls stay; no tree, no disk, no temp.
    let left: Vec<String> = debris(&e.dir)
        .into_iter()
        .filter(|p| !p.starts_with("blobs/"))
        .collect();
    assert_eq!(
        left,
        before
            .into_iter()
            .filter(|p| !p.starts_with("blobs/"))
            .collect::<Vec<_>>()
    );
    for p in debris(&e.dir).iter().filter(|p| p.starts_with("blobs/")) {
        let bytes = std::fs::read(e.dir.join(p)).expect("blob");
        let name = p.rsplit('/').next().expect("name");
        assert_eq!(
            lodge_images::Digest::of(&bytes).hex(),
            name,
            "cache holds only verified blobs"
        );
    }

    let err = e
        .images
        .pull(PullRequest {
            name: "Not A Ref".into(),
            ..Default::default()
        })
        .await
        .expect_err("malformed");
    assert_eq!(err.kind, ErrorKind::Invalid);
    let r = e
        .images
        .pull(PullRequest {
            name: format!("oci-archive:{}", base.join("missing.tar").display()),
            ..Default::default()
        })
        .await
        .expect_err("missing archive");
    assert_eq!(r.kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn a_restart_fails_interrupted_pulls_and_drops_orphan_disks() {
    let e = env();
    let archive = e.dir.parent().expect("parent").join("r.tar");
    Layout::single(&image("r"), Some("r:1"))
        .expect("layout")
        .write_archive(&archive)
        .expect("archive");
    let r = pull(&e, &format!("oci-archive:{}", archive.display()), None).await;
    assert_eq!(r.status, Status::Ready, "{:?}", r.error);
    // A record left mid-pull, a disk no record names, and work debris.
    let mut stuck = r.clone();
    stuck.name = "docker.io/library/stuck:1".into();
    stuck.status = Status::Pulling;
    stuck.digest = None;
    stuck.disk = None;
    let records = lodge_images::store::Records::open(&e.dir).expect("records");
    records.save(&stuck).expect("save");
    let orphan = e
        .dir
        .join("disks")
        .join(format!("{}.ext4", "ab".repeat(32)));
    std::fs::write(&orphan, b"x").expect("orphan");
    std::fs::create_dir_all(e.dir.join("tmp/pull-dead/rootfs")).expect("debris");

    let again =
        Images::open(&e.dir, Options::default(), Arc::new(|_: &str| Vec::new())).expect("reopen");
    let stuck = again.get("stuck:1").expect("stuck").record;
    assert_eq!(stuck.status, Status::Failed);
    assert!(stuck.error.unwrap_or_default().contains("interrupted"));
    assert!(!orphan.exists(), "orphan disk swept");
    assert!(!e.dir.join("tmp/pull-dead").exists(), "debris swept");
    let ready = again.get("r:1").expect("r").record;
    assert!(
        e.dir.join("disks").join(ready.disk.expect("disk")).exists(),
        "a named disk stays"
    );
}
