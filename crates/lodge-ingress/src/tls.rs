//! TLS for rules with `tls: true`: where certificates come from, which
//! names may have one, and the certificate each TLS handshake gets.
//!
//! Two sources, checked in this order for every TLS hostname:
//! 1. the operator's own, `LODGE_TLS_CERT_DIR/<hostname>.crt` and `.key`
//!    (PEM chain and key);
//! 2. ACME (`LODGE_ACME_DIRECTORY`), HTTP-01: the proxy answers the
//!    challenge on its plain HTTP port (`LODGE_ACME_HTTP_PORT`, default 80)
//!    and caches what it gets under `<ingress dir>/certs/`, renewing it when
//!    less than [`RENEW_BEFORE`] is left. Only names in
//!    `LODGE_TLS_ALLOWED_DOMAINS` (comma-separated; `*.x` allows exactly one
//!    label under `x`) are asked for, so a client cannot make the host
//!    request certificates for any name it likes. `LODGE_ACME_CA_ROOT`
//!    names a PEM root to trust for the directory's own HTTPS (a test CA).
//!
//! The daemon checks a TLS rule against the same settings at create time
//! ([`TlsSettings::check`]), so a rule that can never get a certificate is
//! refused instead of silently failing handshakes. Issuance is
//! asynchronous: a create answers at once and handshakes for the name
//! fail until its certificate has arrived (issue it again by reloading).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate with less than this left is renewed.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often cached certificates are checked for renewal.
pub const RENEW_CHECK: Duration = Duration::from_secs(12 * 3600);

/// The TLS settings, from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub acme_directory: Option<String>,
    pub acme_ca_root: Option<PathBuf>,
    pub allowed: Vec<String>,
    pub cert_dir: Option<PathBuf>,
    /// The plain HTTP port of ACME challenges and `redirect_http`.
    pub http_port: u16,
}

impl TlsSettings {
    pub fn from_env() -> TlsSettings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        TlsSettings {
            acme_directory: var("LODGE_ACME_DIRECTORY"),
            acme_ca_root: var("LODGE_ACME_CA_ROOT").map(PathBuf::from),
            allowed: var("LODGE_TLS_ALLOWED_DOMAINS")
                .map(|v| {
                    v.split(',')
                        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
                        .filter(|d| !d.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            cert_dir: var("LODGE_TLS_CERT_DIR").map(PathBuf::from),
            http_port: var("LODGE_ACME_HTTP_PORT")
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(80),
        }
    }

    /// Whether `host` may use ACME (see the module doc for `*.x`).
    pub fn allowed(&self, host: &str) -> bool {
        self.allowed.iter().any(|pat| match pat.strip_prefix("*.") {
            Some(parent) => host
                .strip_suffix(parent)
                .and_then(|h| h.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            None => pat == host,
        })
    }

    fn operator_files(&self, host: &str) -> Option<(PathBuf, PathBuf)> {
        let dir = self.cert_dir.as_ref()?;
        let crt = dir.join(format!("{host}.crt"));
        let key = dir.join(format!("{host}.key"));
        (crt.is_file() && key.is_file()).then_some((crt, key))
    }

    /// Why `host` cannot have a certificate, if it cannot.
    pub fn check(&self, host: &str) -> Result<(), String> {
        if self.operator_files(host).is_some() {
            return Ok(());
        }
        match &self.acme_directory {
            None => Err(format!(
                "no certificate for {host}: set LODGE_ACME_DIRECTORY, or put {host}.crt and {host}.key in LODGE_TLS_CERT_DIR"
            )),
            Some(_) if !self.allowed(host) => Err(format!(
                "{host} is not in LODGE_TLS_ALLOWED_DOMAINS, so no ACME certificate is requested for it"
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The certificates handshakes are answered with, by SNI name.
#[derive(Default)]
pub struct CertStore {
    certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .certs
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("CertStore").field("names", &names).finish()
    }
}

impl CertStore {
    fn insert(&self, host: &str, key: Arc<CertifiedKey>) {
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), key);
    }

    pub fn has(&self, host: &str) -> bool {
        self.certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(host)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned()
    }
}

/// A PEM chain and key as rustls serves them, with the leaf's expiry.
fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let leaf = chain
        .first()
        .ok_or("the certificate file holds no certificate")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("certificate: {e}"))?;
    let not_after = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0));
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key PEM: {e}"))?;
    let signer = any_supported_type(&key).map_err(|e| format!("key: {e}"))?;
    Ok((Arc::new(CertifiedKey::new(chain, signer)), not_after))
}

fn load_files(crt: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
    let chain = std::fs::read(crt).map_err(|e| format!("{}: {e}", crt.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    certified_key(&chain, &key_pem)
}

/// Certificates for the proxy: loads, issues and renews them.
pub struct Certificates {
    settings: TlsSettings,
    cache: PathBuf,
    pub store: Arc<CertStore>,
    /// HTTP-01 tokens → key authorizations being validated now.
    challenges: Mutex<HashMap<String, String>>,
    /// Names with an issuance under way.
    issuing: Mutex<HashSet<String>>,
}

impl Certificates {
    pub fn new(settings: TlsSettings, ingress_dir: &Path) -> Arc<Certificates> {
        Arc::new(Certificates {
            settings,
            cache: ingress_dir.join("certs"),
            store: Arc::new(CertStore::default()),
            challenges: Mutex::new(HashMap::new()),
            issuing: Mutex::new(HashSet::new()),
        })
    }

    pub fn http_port(&self) -> u16 {
        self.settings.http_port
    }

    /// The answer to an HTTP-01 challenge request, if one is pending.
    pub fn challenge(&self, token: &str) -> Option<String> {
        self.challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// Makes sure every name in `hosts` has a current certificate: the
    /// operator's, a cached one, or one being issued.
    pub fn ensure(self: &Arc<Self>, hosts: &[String]) {
        for host in hosts {
            if let Some((crt, key)) = self.settings.operator_files(host) {
                match load_files(&crt, &key) {
                    Ok((ck, _)) => self.store.insert(host, ck),
                    Err(e) => tracing::warn!("ingress tls {host}: {e}"),
                }
                continue;
            }
            let crt = self.cache.join(format!("{host}.crt"));
            let key = self.cache.join(format!("{host}.key"));
            if let Ok((ck, not_after)) = load_files(&crt, &key) {
                self.store.insert(host, ck);
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                if left > RENEW_BEFORE {
                    continue;
                }
                tracing::info!("ingress tls {host}: renewing ({left:?} left)");
            }
            if self.settings.check(host).is_err() {
                continue;
            }
            let fresh = self
                .issuing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(host.clone());
            if !fresh {
                continue;
            }
            let me = self.clone();
            let host = host.clone();
            tokio::spawn(async move {
                match me.issue(&host).await {
                    Ok(()) => tracing::info!("ingress tls {host}: certificate issued"),
                    Err(e) => tracing::warn!("ingress tls {host}: issuing a certificate: {e}"),
                }
                me.issuing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&host);
            });
        }
    }

    async fn account(&self, directory: &str) -> Result<Account, String> {
        let builder = || match &self.settings.acme_ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let saved = self.cache.join("account.json");
        if let Ok(text) = std::fs::read(&saved) {
            if let Ok(creds) = serde_json::from_slice::<AccountCredentials>(&text) {
                if let Ok(account) = builder()
                    .map_err(|e| e.to_string())?
                    .from_credentials(creds)
                    .await
                {
                    return Ok(account);
                }
            }
        }
        let (account, creds) = builder()
            .map_err(|e| format!("ACME client: {e}"))?
            .create(
                &NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.to_string(),
                None,
            )
            .await
            .map_err(|e| format!("creating the ACME account at {directory}: {e}"))?;
        let text = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
        write_private(&saved, &text)?;
        Ok(account)
    }

    async fn issue(&self, host: &str) -> Result<(), String> {
        let directory = self
            .settings
            .acme_directory
            .clone()
            .ok_or("no LODGE_ACME_DIRECTORY")?;
        std::fs::create_dir_all(&self.cache)
            .map_err(|e| format!("{}: {e}", self.cache.display()))?;
        let account = self.account(&directory).await?;
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut tokens = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or("the ACME server offers no http-01 challenge")?;
            let token = challenge.token.clone();
            let answer = challenge.key_authorization().as_str().to_string();
            self.challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(token.clone(), answer);
            tokens.push(token);
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge ready: {e}"))?;
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
        let status = order.poll_ready(&retry).await;
        {
            let mut pending = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
            for t in &tokens {
                pending.remove(t);
            }
        }
        let status = status.map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("the order is {status:?}, not ready"));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        let (ck, _) = certified_key(chain_pem.as_bytes(), key_pem.as_bytes())?;
        write_private(&self.cache.join(format!("{host}.key")), key_pem.as_bytes())?;
        write_private(
            &self.cache.join(format!("{host}.crt")),
            chain_pem.as_bytes(),
        )?;
        self.store.insert(host, ck);
        Ok(())
    }
}

/// Writes beside and renames into place, readable by the owner only.
fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The rustls server configuration answering from `store`.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_takes_names_and_one_label_wildcards() {
        let s = TlsSettings {
            acme_directory: Some("https://acme.test/dir".into()),
            allowed: vec!["api.example.com".into(), "*.apps.example.com".into()],
            ..TlsSettings::default()
        };
        assert!(s.allowed("api.example.com"));
        assert!(s.allowed("web.apps.example.com"));
        assert!(!s.allowed("a.b.apps.example.com"));
        assert!(!s.allowed("apps.example.com"));
        assert!(!s.allowed("evilapps.example.com"));
        assert!(!s.allowed("other.example.com"));
        assert!(s.check("web.apps.example.com").is_ok());
        let err = s.check("other.example.com").expect_err("not allowed");
        assert!(err.contains("LODGE_TLS_ALLOWED_DOMAINS"), "{err}");
        let none = TlsSettings::default();
        assert!(none
            .check("api.example.com")
            .expect_err("no source")
            .contains("LODGE_ACME_DIRECTORY"));
    }

    #[test]
    fn an_operators_certificate_directory_is_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("own.test.crt"), "x").expect("write");
        std::fs::write(dir.path().join("own.test.key"), "x").expect("write");
        let s = TlsSettings {
            cert_dir: Some(dir.path().to_path_buf()),
            ..TlsSettings::default()
        };
        assert!(s.check("own.test").is_ok());
        assert!(s.check("other.test").is_err());
    }
}
