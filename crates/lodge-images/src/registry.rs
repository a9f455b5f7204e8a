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
        let insecure = std::env::var("LODGE_INSECURE_REGISTRIES")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
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

impl Credentials {
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
pub fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Looks `registry` up in a docker `config.json`.
pub fn auth_from_file(file: &Path, registry: &str) -> Option<RegistryAuth> {
    let text = std::fs::read(file).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let auths = v.get("auths")?.as_object()?;
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
    let entry = keys.iter().find_map(|k| auths.get(k))?;
    if let Some(b64) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (u, p) = raw.split_once(':')?;
        return Some(RegistryAuth::Basic(u.to_string(), p.to_string()));
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some(RegistryAuth::Basic(u.to_string(), p.to_string()))
}

static TLS: Once = Once::new();

/// One registry repository, ready to fetch from.
pub struct Remote {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
}

impl Remote {
    pub fn new(reference: &Reference, opts: &RegistryOptions, creds: Option<&Credentials>) -> Self {
        TLS.call_once(|| {
            // reqwest is built without a default provider; ring is ours.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let registry = reference.registry();
        let plain = is_loopback(registry)
            || opts.insecure.contains(registry)
            || opts.insecure.contains(host_of(registry));
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
        let auth = creds
            .and_then(Credentials::auth)
            .or_else(|| {
                opts.auth_file
                    .as_deref()
                    .and_then(|f| auth_from_file(f, registry))
            })
            .unwrap_or(RegistryAuth::Anonymous);
        Remote {
            client: Client::new(config),
            reference: reference.clone(),
            auth,
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
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
fn classify(e: OciDistributionError, target: &Reference) -> Error {
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
            matches!(auth_from_file(&f, "docker.io"), Some(RegistryAuth::Basic(u, p)) if u == "alice" && p == "s3cret")
        );
        assert!(
            matches!(auth_from_file(&f, "ghcr.io"), Some(RegistryAuth::Basic(u, _)) if u == "bob")
        );
        assert!(auth_from_file(&f, "quay.io").is_none());
    }
}
