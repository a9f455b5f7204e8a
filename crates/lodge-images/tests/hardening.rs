//! The image manager under hostile or unlucky conditions: a registry whose
//! token makes the client library panic, bad credentials, archives outside
//! the import directory, failed refreshes of ready images, decompression
//! bombs and a full disk. Each case ends in a clear `failed` (or a refusal)
//! and leaves the store usable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
