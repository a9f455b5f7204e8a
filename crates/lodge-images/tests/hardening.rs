//! The image manager under hostile or unlucky conditions: a registry whose
//! token makes the client library panic, bad credentials, archives outside
//! the import directory, failed refreshes of ready images, decompression
//! bombs and a full disk. Each case ends in a clear `failed` (or a refusal)
//! and leaves the store usable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use lodge_images::builder::{Image, Layer, LayerBuilder, Layout};
use lodge_images::oci::ContainerConfig;
use lodge_images::{ErrorKind, Images, Options, PullRequest, Status};

/// A fake registry on loopback: `/v2/` asks for a bearer token, and the
/// token endpoint hands out one with a newline in it (which `oci-client`
/// cannot put in a header: it panics).
async fn newline_token_registry() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let resp = if path.starts_with("/token") {
                    let body = r#"{"token":"abc\ndef"}"#;
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}"#;
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

struct Env {
    tmp: tempfile::TempDir,
    images: Arc<Images>,
}

impl Env {
    fn dir(&self) -> PathBuf {
        self.tmp.path().join("images")
    }
}

fn env_with(opts: Options) -> Env {
    let tmp = tempfile::tempdir().expect("tempdir");
    let images = Images::open(
        &tmp.path().join("images"),
        opts,
        Arc::new(|_: &str| Vec::new()),
    )
    .expect("open");
    Env { tmp, images }
}

async fn wait_final(images: &Images, name: &str) -> lodge_images::ImageRecord {
    tokio::time::timeout(Duration::from_secs(30), images.wait(name))
        .await
        .expect("the pull ended");
    images.get(name).expect("record").record
}

fn tmp_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_panicking_pull_ends_failed_and_can_be_deleted_and_pulled_again() {
    let port = newline_token_registry().await;
    let e = env_with(Options::default());
    let name = format!("127.0.0.1:{port}/team/app:1");
    for round in 0..2 {
        let info = e
            .images
            .pull(PullRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .expect("pull accepted");
        let r = wait_final(&e.images, &info.record.name).await;
        assert_eq!(r.status, Status::Failed, "round {round}: {r:?}");
        let err = r.error.unwrap_or_default();
        assert!(
            err.contains("crashed") || err.contains("panic"),
            "round {round}: {err}"
        );
        assert_eq!(r.error_kind, Some(ErrorKind::Internal));
        assert!(
            e.images.get(&name).expect("get").progress.is_none(),
            "no job left behind"
        );
    }
    e.images
        .delete(&name)
        .expect("a failed image can be deleted");
    assert_eq!(
        e.images.get(&name).expect_err("gone").kind,
        ErrorKind::NotFound
    );
    assert_eq!(tmp_entries(&e.dir()), Vec::<String>::new());
}

fn archive_env(max_image_size: u64, min_free: u64) -> Env {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        import_dir: Some(tmp.path().join("import")),
        max_image_size,
        min_free,
        ..Options::default()
    };
    std::fs::create_dir_all(tmp.path().join("import")).expect("import dir");
    let images = Images::open(
        &tmp.path().join("images"),
        opts,
        Arc::new(|_: &str| Vec::new()),
    )
    .expect("open");
    Env { tmp, images }
}

fn small_image(data: &[u8]) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("bin", 0o755)
        .and_then(|b| b.file("bin/data", 0o644, data))
        .expect("layer");
    Image::new(
        ContainerConfig {
            cmd: Some(vec!["/bin/true".into()]),
            ..Default::default()
        },
        vec![Layer::gzip(&b.finish().expect("tar")).expect("gzip")],
    )
}

async fn pull_archive(e: &Env, path: &Path) -> lodge_images::ImageRecord {
    let info = e
        .images
        .pull(PullRequest {
            name: format!("oci-archive:{}", path.display()),
            ..Default::default()
        })
        .await
        .expect("pull accepted");
    wait_final(&e.images, &info.record.name).await
}

fn disks(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("disks"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_decompression_bomb_fails_with_the_limit_named_and_leaves_nothing() {
    let e = archive_env(8 << 20, 0);
    // 32 MiB of zeros: a gzip layer of a few dozen KiB.
    let bomb = small_image(&vec![0u8; 32 << 20]);
    assert!(bomb.layers[0].blob.len() < 1 << 20);
    let path = e.tmp.path().join("import/bomb.tar");
    Layout::single(&bomb, Some("bomb:1"))
        .expect("layout")
        .write_archive(&path)
        .expect("archive");
    let r = pull_archive(&e, &path).await;
    assert_eq!(r.status, Status::Failed, "{r:?}");
    assert_eq!(r.error_kind, Some(ErrorKind::TooLarge), "{r:?}");
    let err = r.error.unwrap_or_default();
    assert!(
        err.contains("8MiB") && err.contains("LODGE_MAX_IMAGE_SIZE"),
        "{err}"
    );
    assert_eq!(
        tmp_entries(&e.dir()),
        Vec::<String>::new(),
        "no work tree left"
    );
    assert_eq!(disks(&e.dir()), Vec::<String>::new(), "no disk left");

    // Within the limit, the same kind of layer is fine.
    let fine = small_image(&vec![0u8; 2 << 20]);
    let path = e.tmp.path().join("import/fine.tar");
    Layout::single(&fine, Some("fine:1"))
        .expect("layout")
        .write_archive(&path)
        .expect("archive");
    let r = pull_archive(&e, &path).await;
    assert_eq!(r.status, Status::Ready, "{r:?}");
}

#[tokio::test]
async fn pulls_and_uploads_stop_short_of_a_full_disk_and_the_size_limit() {
    // Nothing fits when the minimum free is more than any disk has.
    let e = archive_env(64 << 20, 1 << 60);
    let path = e.tmp.path().join("import/small.tar");
    Layout::single(&small_image(b"x"), Some("small:1"))
        .expect("layout")
        .write_archive(&path)
        .expect("archive");
    let r = pull_archive(&e, &path).await;
    assert_eq!(r.status, Status::Failed, "{r:?}");
    assert_eq!(r.error_kind, Some(ErrorKind::NoSpace), "{r:?}");
    assert!(
        r.error.unwrap_or_default().contains("LODGE_IMAGE_MIN_FREE"),
        "the setting is named"
    );
    let err = e.images.begin_upload(Some(10)).err().expect("no room");
    assert_eq!(err.kind, ErrorKind::NoSpace);

    // An upload over the size limit is refused up front, or as it grows,
    // and leaves no file behind.
    let e = archive_env(1 << 20, 0);
    let err = e
        .images
        .begin_upload(Some(2 << 20))
        .err()
        .expect("declared too large");
    assert_eq!(err.kind, ErrorKind::TooLarge);
    let mut up = e.images.begin_upload(None).expect("upload");
    up.write(&vec![0u8; 512 << 10])
        .await
        .expect("within the limit");
    let err = up
        .write(&vec![0u8; 768 << 10])
        .await
        .expect_err("over the limit");
    assert_eq!(err.kind, ErrorKind::TooLarge);
    assert!(err.message.contains("LODGE_MAX_IMAGE_SIZE"), "{err}");
    drop(up);
    assert_eq!(tmp_entries(&e.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn archive_paths_stay_inside_the_import_directory() {
    let e = archive_env(64 << 20, 0);
    let import = e.tmp.path().join("import");
    let outside = e.tmp.path().join("outside.tar");
    Layout::single(&small_image(b"x"), Some("x:1"))
        .expect("layout")
        .write_archive(&outside)
        .expect("archive");
    std::os::unix::fs::symlink(&outside, import.join("link.tar")).expect("symlink");
    std::os::unix::fs::symlink("../outside.tar", import.join("rel.tar")).expect("symlink");
    std::fs::create_dir(import.join("dir.tar")).expect("dir");
    let refused = |name: String| {
        let images = e.images.clone();
        async move {
            images
                .pull(PullRequest {
                    name,
                    ..Default::default()
                })
                .await
                .expect_err("refused")
        }
    };
    for name in [
        format!("oci-archive:{}", outside.display()),
        format!("oci-archive:{}/../outside.tar", import.display()),
        format!("oci-archive:{}", import.join("link.tar").display()),
        format!("docker-archive:{}", import.join("rel.tar").display()),
        format!("oci-archive:{}", import.join("dir.tar").display()),
        format!("oci-archive:{}", import.display()),
    ] {
        let err = refused(name.clone()).await;
        assert_eq!(err.kind, ErrorKind::Invalid, "{name}: {err}");
    }
    let err = refused(format!(
        "oci-archive:{}",
        import.join("missing.tar").display()
    ))
    .await;
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    // Without an import directory, no path at all.
    let none = env_with(Options::default());
    let err = none
        .images
        .pull(PullRequest {
            name: format!("oci-archive:{}", outside.display()),
            ..Default::default()
        })
        .await
        .expect_err("no import dir");
    assert!(err.message.contains("upload"), "{err}");
    // A symlink that stays inside is followed.
    std::fs::copy(&outside, import.join("real.tar")).expect("copy");
    std::os::unix::fs::symlink("real.tar", import.join("alias.tar")).expect("symlink");
    let r = pull_archive(&e, &import.join("alias.tar")).await;
    assert_eq!(r.status, Status::Ready, "{r:?}");
}
