//! A real registry for tests: Debian's `docker-registry` on a free
//! loopback port with its own storage, optionally behind htpasswd auth,
//! read back through its access log (images_e2e, pushes_e2e).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lodge_images::builder::Layout;

use super::{wait_until, OutputLimited};

/// A `docker-registry` on 127.0.0.1 with a temp storage dir; its access log
/// tells which blobs were fetched.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// User and password when started with htpasswd authentication.
    creds: Option<(String, String)>,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// A registry that wants HTTP basic auth for `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user.to_string(), password.to_string())))
    }

    fn start_with(creds: Option<(String, String)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("lodge-registry")
            .tempdir()
            .expect("tempdir");
        let port = super::free_port();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = &creds {
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n")).expect("htpasswd");
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lodge-test\n    path: {}\n",
                file.display()
            ));
        }
        std::fs::write(&config, yaml).expect("config");
        let log = std::fs::File::create(dir.path().join("access.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("docker-registry (install it with scripts/install-deps.sh)");
        let r = Registry {
            child,
            dir,
            port,
            creds,
        };
        wait_until("the registry to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        r
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes an OCI layout to `repo:tag` here (all platforms of an index).
    pub fn push(&self, layout: &Layout, repo_tag: &str) {
        let dir = self
            .dir
            .path()
            .join(format!("layout-{}", repo_tag.replace([':', '/'], "-")));
        let mut l = layout.clone();
        for d in &mut l.index {
            d.annotations
                .insert("org.opencontainers.image.ref.name".into(), "push".into());
        }
        l.write_dir(&dir).expect("layout");
        let mut skopeo = Command::new("skopeo");
        skopeo.args([
            "--insecure-policy",
            "copy",
            "--all",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, password)) = &self.creds {
            skopeo.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = skopeo
            .arg(format!("oci:{}:push", dir.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()))
            .output_limited()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Blob GETs answered 200 so far (manifests are not counted).
    pub fn blob_fetches(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter(|l| {
                l.contains("\"GET /v2/")
                    && l.contains("/blobs/sha256:")
                    && l.contains("HTTP/1.1\" 200")
            })
            .count()
    }

    /// Blob PUT/PATCH uploads the registry accepted so far.
    pub fn blob_uploads(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/"))
            .count()
    }

    /// The registry's stored copy of a blob.
    pub fn blob_file(&self, digest: &lodge_images::Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("stopping the registry: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("reaping the registry: {e}");
        }
    }
}
