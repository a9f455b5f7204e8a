//! Talking to registries through `oci-client`: which protocol, which
//! credentials, manifests by tag or digest, and blobs streamed into the
//! cache.
//!
//! As docker does, registries on loopback addresses are spoken to over plain
//! HTTP, as are those listed in `LODGE_INSECURE_REGISTRIES`; every other one
//! over HTTPS. Credentials come from the request (never stored), else from a
//! docker-style `config.json` (`auths` entries with `auth` or
//! `username`/`password`); token auth (Docker Hub, GHCR) is the client
//! crate's. Every manifest and blob is checked against its digest here, in
//! addition to the client's own checks: the cache trusts only what hashes
//! right.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Once;

use base64::Engine as _;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::blobs::BlobStore;
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::oci::{Descriptor, MANIFEST_TYPES};

/// Manifests larger than this are refused (real ones are a few KiB).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// Registry-side settings, from the daemon's environment.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host[:port]` names spoken to over plain HTTP.
    pub insecure: HashSet<String>,
    /// A docker-style `config.json` with `auths`.
    pub auth_file: Option<PathBuf>,
}

impl RegistryOptions {
    /// `LODGE_INSECURE_REGISTRIES` (comma-separated) and the auth file:
    /// `LODGE_REGISTRY_AUTH_FILE`, `REGISTRY_AUTH_FILE`,
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub fn from_env() -> Self {
        let insecure =
            insecure_from(&std::env::var("LODGE_INSECURE_REGISTRIES").unwrap_or_default());
        let auth_file = ["LODGE_REGISTRY_AUTH_FILE", "REGISTRY_AUTH_FILE"]
            .iter()
            .find_map(|k| {
                std::env::var_os(k)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| {
                std::env::var_os("DOCKER_CONFIG").map(|d| PathBuf::from(d).join("config.json"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
            });
        RegistryOptions {
            insecure,
            auth_file,
        }
    }
}

/// Credentials given with one request.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub registry_token: Option<String>,
}

/// Whether `value` can travel in an HTTP header as it is (a bearer
/// token): visible ASCII only. A newline would end the header.
fn header_safe(value: &str) -> bool {
    value.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Whether a user name or password is free of control characters (they
/// travel base64-encoded, but a newline or NUL is a paste error, never a
/// credential).
fn printable(value: &str) -> bool {
    !value.chars().any(char::is_control)
}

fn bad_credential(what: &str, why: &str) -> Error {
    Error::new(ErrorKind::Invalid, format!("{what} {why}"))
}

/// Checks a bearer token (from a request or an auth file) before it is used.
fn check_token(what: &str, token: &str) -> Result<()> {
    if header_safe(token) {
        Ok(())
    } else {
        Err(bad_credential(
            what,
            "holds characters an HTTP header cannot carry (a newline, a space or a control character?)",
        ))
    }
}

fn check_basic(what: &str, user: &str, password: &str) -> Result<()> {
    if user.contains(':') {
        return Err(bad_credential(what, "has a user name with ':' in it"));
    }
    if !printable(user) || !printable(password) {
        return Err(bad_credential(
            what,
            "has a control character (a newline?) in the user name or password",
        ));
    }
    Ok(())
}

impl Credentials {
    /// Refuses credentials that cannot be sent as they are, before any
    /// request is made with them.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = self.registry_token.as_deref().filter(|t| !t.is_empty()) {
            check_token("credentials.registry_token", t)?;
        }
        check_basic(
            "credentials",
            self.username.as_deref().unwrap_or(""),
            self.password.as_deref().unwrap_or(""),
        )
    }

    fn auth(&self) -> Option<RegistryAuth> {
        if let Some(t) = self.registry_token.as_ref().filter(|t| !t.is_empty()) {
            return Some(RegistryAuth::Bearer(t.clone()));
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some(RegistryAuth::Basic(u.clone(), p.clone())),
            _ => None,
        }
    }
}

/// The host part of `host[:port]`, brackets of IPv6 literals removed.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.rsplit_once(':').map_or(registry, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            registry
        }
    })
}

/// Whether a registry is on this machine (spoken to over plain HTTP).
/// `LODGE_INSECURE_REGISTRIES`: comma-separated `host[:port]`, spaces and
/// a trailing `/` ignored.
fn insecure_from(value: &str) -> HashSet<String> {
    value
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `registry` is spoken to over plain HTTP: loopback, or listed in
/// `LODGE_INSECURE_REGISTRIES` by `host:port` or by host alone.
fn plain_http(registry: &str, opts: &RegistryOptions) -> bool {
    is_loopback(registry)
        || opts.insecure.contains(registry)
        || opts.insecure.contains(host_of(registry))
}

pub fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Looks `registry` up in a docker `config.json`: `registrytoken` (a
/// bearer token), else `auth` (base64 `user:password`), else
/// `username`/`password`. `Ok(None)` when the file or the entry is absent;
/// an entry that cannot be used as it is is an error naming the file.
pub fn auth_from_file(file: &Path, registry: &str) -> Result<Option<RegistryAuth>> {
    let Ok(text) = std::fs::read(file) else {
        return Ok(None);
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if registry == "docker.io" {
        keys.insert(0, "https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
    }
    let Some(entry) = keys.iter().find_map(|k| auths.get(k)) else {
        return Ok(None);
    };
    let what = format!("the entry for {registry} in {}", file.display());
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(|a| a.as_str())
            .filter(|a| !a.is_empty())
    };
    if let Some(token) = field("registrytoken") {
        check_token(&what, token)?;
        return Ok(Some(RegistryAuth::Bearer(token.to_string())));
    }
    if let Some(b64) = field("auth") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .ok_or_else(|| {
                bad_credential(&what, "has an `auth` that is not base64 of user:password")
            })?;
        let (u, p) = raw.split_once(':').ok_or_else(|| {
            bad_credential(&what, "has an `auth` without ':' between user and password")
        })?;
        check_basic(&what, u, p)?;
        return Ok(Some(RegistryAuth::Basic(u.to_string(), p.to_string())));
    }
    match (field("username"), field("password")) {
        (Some(u), Some(p)) => {
            check_basic(&what, u, p)?;
            Ok(Some(RegistryAuth::Basic(u.to_string(), p.to_string())))
        }
        _ => Ok(None),
    }
}

static TLS: Once = Once::new();

/// One registry repository, ready to fetch from.
pub struct Remote {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
}

impl Remote {
    /// A client for `reference`'s repository; fails on credentials that
    /// cannot be sent as they are.
    pub fn new(
        reference: &Reference,
        opts: &RegistryOptions,
        creds: Option<&Credentials>,
    ) -> Result<Self> {
        TLS.call_once(|| {
            // reqwest is built without a default provider; ring is ours.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let registry = reference.registry();
        let plain = plain_http(registry, opts);
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        if let Some(c) = creds {
            c.validate()?;
        }
        let auth = match creds.and_then(Credentials::auth) {
            Some(a) => a,
            None => match opts.auth_file.as_deref() {
                Some(f) => auth_from_file(f, registry)?.unwrap_or(RegistryAuth::Anonymous),
                None => RegistryAuth::Anonymous,
            },
        };
        Ok(Remote {
            client: Client::new(config),
            reference: reference.clone(),
            auth,
        })
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The client and credentials, for the push module's uploads.
    pub(crate) fn parts(&self) -> (&Client, &RegistryAuth) {
        (&self.client, &self.auth)
    }

    /// Fetches a manifest (by the reference's tag or digest, or by `digest`)
    /// and checks it against the digest it was asked by.
    pub async fn manifest(&self, digest: Option<&Digest>) -> Result<(Vec<u8>, Digest)> {
        let target = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_string()),
            None => self.reference.clone(),
        };
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&target, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| classify(e, &target))?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(Error::new(
                ErrorKind::Registry,
                format!("manifest of {target} is over {MAX_MANIFEST} bytes"),
            ));
        }
        let actual = Digest::of(&bytes);
        let wanted = digest
            .cloned()
            .or_else(|| self.reference.digest().and_then(|d| Digest::parse(d).ok()));
        if let Some(w) = wanted {
            if w != actual {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!("manifest of {target} failed verification: content hashes to {actual}"),
                ));
            }
        }
        Ok((bytes.to_vec(), actual))
    }

    /// Streams one blob into the cache (verified there), calling
    /// `progress(bytes)` as data arrives. A failure leaves nothing behind.
    pub async fn blob_into(
        &self,
        desc: &Descriptor,
        store: &BlobStore,
        mut progress: impl FnMut(u64),
    ) -> Result<()> {
        let digest = desc.digest.to_string();
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, digest.as_str())
            .await
            .map_err(|e| classify(e, &self.reference).context(format!("fetching blob {digest}")))?;
        let mut w = store.writer(&desc.digest, Some(desc.size))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let msg = e.to_string();
                let kind = if msg.to_ascii_lowercase().contains("digest") {
                    ErrorKind::Integrity
                } else {
                    ErrorKind::Unreachable
                };
                Error::new(kind, format!("fetching blob {digest}: {msg}"))
            })?;
            std::io::Write::write_all(&mut w, &chunk).map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::Other {
                    ErrorKind::Integrity
                } else {
                    ErrorKind::Internal
                };
                Error::new(kind, format!("storing blob {digest}: {e}"))
            })?;
            progress(chunk.len() as u64);
        }
        tokio::task::spawn_blocking(move || w.commit())
            .await
            .map_err(|e| crate::error::internal(format!("blob commit task: {e}")))??;
        Ok(())
    }
}

/// Turns a client error into lodge's classes, with a readable message.
pub(crate) fn classify(e: OciDistributionError, target: &Reference) -> Error {
    use OciDistributionError as E;
    let registry = target.registry();
    match e {
        E::ImageManifestNotFoundError(_) => Error::new(
            ErrorKind::NotFound,
            format!("{target}: manifest unknown to the registry"),
        ),
        E::RegistryError { envelope, .. } => {
            let not_found = envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            });
            let denied = envelope
                .errors
                .iter()
                .any(|x| matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
            let detail: Vec<String> = envelope
                .errors
                .iter()
                .map(|x| x.message.clone())
                .filter(|m| !m.is_empty())
                .collect();
            let detail = detail.join("; ");
            if not_found {
                Error::new(
                    ErrorKind::NotFound,
                    format!("{target} not found in {registry}: {detail}"),
                )
            } else if denied {
                Error::new(
                    ErrorKind::Unauthorized,
                    format!("{registry} denied access to {target}: {detail}"),
                )
            } else {
                Error::new(
                    ErrorKind::Registry,
                    format!("{registry} refused {target}: {detail}"),
                )
            }
        }
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Error::new(
            ErrorKind::Unauthorized,
            format!("{registry} requires credentials for {target} (or refused the ones given)"),
        ),
        E::ServerError { code: 404, .. } => Error::new(
            ErrorKind::NotFound,
            format!("{target} not found in {registry}"),
        ),
        E::ServerError { code, message, .. } => Error::new(
            ErrorKind::Registry,
            format!(
                "{registry} answered HTTP {code}: {}",
                message.chars().take(200).collect::<String>()
            ),
        ),
        E::RequestError(re) if matches!(re.status().map(|s| s.as_u16()), Some(401) | Some(403)) => {
            Error::new(
                ErrorKind::Unauthorized,
                format!("{registry} requires credentials for {target} (or refused the ones given)"),
            )
        }
        E::RequestError(re) => {
            let mut msg = re.to_string();
            let mut src = std::error::Error::source(&re);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            Error::new(
                ErrorKind::Unreachable,
                format!("cannot reach registry {registry}: {msg}"),
            )
        }
        E::DigestError(d) => Error::new(ErrorKind::Integrity, format!("{target}: {d}")),
        other => Error::new(ErrorKind::Registry, format!("{target}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registries_are_spoken_to_over_plain_http() {
        let opts = RegistryOptions {
            insecure: insecure_from(" registry.lan:5000/ ,mirror.internal,, "),
            auth_file: None,
        };
        assert_eq!(opts.insecure.len(), 2, "{:?}", opts.insecure);
        assert!(plain_http("registry.lan:5000", &opts));
        assert!(
            !plain_http("registry.lan:5001", &opts),
            "another port is not listed"
        );
        assert!(plain_http("mirror.internal", &opts));
        assert!(
            plain_http("mirror.internal:8443", &opts),
            "a host alone covers its ports"
        );
        assert!(plain_http("127.0.0.1:5000", &opts), "loopback always");
        assert!(!plain_http("docker.io", &opts));
        assert!(!plain_http("ghcr.io", &RegistryOptions::default()));
    }

    #[test]
    fn loopback_detection() {
        for r in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.3.4.5",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "10.0.0.1:5000",
            "ghcr.io",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn docker_config_auth() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = tmp.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &f,
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},"ghcr.io":{{"username":"bob","password":"pw"}}}}}}"#),
        )
        .expect("write");
        assert!(
            matches!(auth_from_file(&f, "docker.io"), Ok(Some(RegistryAuth::Basic(u, p))) if u == "alice" && p == "s3cret")
        );
        assert!(
            matches!(auth_from_file(&f, "ghcr.io"), Ok(Some(RegistryAuth::Basic(u, _))) if u == "bob")
        );
        assert!(matches!(auth_from_file(&f, "quay.io"), Ok(None)));
    }

    #[test]
    fn credentials_that_cannot_be_sent_are_refused_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = tmp.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"auths":{"127.0.0.1:5000":{"registrytoken":"abc\ndef"},"ok.example":{"registrytoken":"abc.def"}}}"#,
        )
        .expect("write");
        let err = auth_from_file(&f, "127.0.0.1:5000").expect_err("newline in a token");
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(err.message.contains("HTTP header"), "{err}");
        assert!(
            matches!(auth_from_file(&f, "ok.example"), Ok(Some(RegistryAuth::Bearer(t))) if t == "abc.def")
        );
        let bad = Credentials {
            registry_token: Some("abc\ndef".into()),
            ..Default::default()
        };
        assert_eq!(
            bad.validate().expect_err("newline").kind,
            ErrorKind::Invalid
        );
        let bad = Credentials {
            username: Some("a:b".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let good = Credentials {
            username: Some("alice".into()),
            password: Some("pa ss:word".into()),
            ..Default::default()
        };
        assert!(good.validate().is_ok());
    }
}
