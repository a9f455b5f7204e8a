//! The ingresses on disk: one JSON record per ingress under
//! `<ingress dir>/ingresses/<id>.json`, written beside and renamed into
//! place.
//!
//! The records are the whole configuration: the proxy process reads this
//! directory when it (re)loads, so there is no second copy to drift. The
//! daemon is the only writer and serialises its writes ([`Store`] holds a
//! lock across check-then-write), so the conflict checks (name, hostname
//! and port) see every earlier create.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::rules::{Rule, RuleError, RuleInput, ANY_HOST};

/// One ingress (hypeman's `Ingress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingress {
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A create request, as parsed from the client.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub rules: Vec<RuleInput>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ingress name {0:?} is invalid (lowercase letters, digits and dashes, not starting or ending with a dash, at most 63)")]
    BadName(String),
    #[error("an ingress needs at least one rule")]
    NoRules,
    #[error("rule {index}: {source}")]
    Rule {
        index: usize,
        #[source]
        source: RuleError,
    },
    #[error("rule {index}: target instance {instance:?}: {why}")]
    Instance {
        index: usize,
        instance: String,
        why: String,
    },
    #[error("an ingress named {0:?} already exists")]
    NameTaken(String),
    #[error("hostname {hostname:?} on port {port} is already routed by ingress {by:?}")]
    HostTaken {
        hostname: String,
        port: u16,
        by: String,
    },
    #[error("port {port} is served as {have} by ingress {by:?}, so it cannot take a {want} rule (a port is HTTP, HTTPS or TCP)")]
    PortKind {
        port: u16,
        have: &'static str,
        want: &'static str,
        by: String,
    },
    #[error("rule {index}: {why}")]
    Tls { index: usize, why: String },
    #[error("no ingress {0:?}")]
    NotFound(String),
    #[error("{0:?} is a prefix of more than one ingress id")]
    Ambiguous(String),
    #[error("ingress record {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ingress record {path} is not valid")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The store of ingress records.
pub struct Store {
    dir: PathBuf,
    /// Held across check-then-write (one writer: the daemon).
    write: Mutex<()>,
}

impl Store {
    /// The store under `ingress_dir` (created when missing).
    pub fn open(ingress_dir: &Path) -> Result<Store, StoreError> {
        let dir = records_dir(ingress_dir);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Store {
            dir,
            write: Mutex::new(()),
        })
    }

    /// Every ingress, oldest first.
    pub fn list(&self) -> Result<Vec<Ingress>, StoreError> {
        read_all(&self.dir)
    }

    /// By id, name or unique id prefix.
    pub fn get(&self, key: &str) -> Result<Ingress, StoreError> {
        let all = self.list()?;
        if let Some(i) = all.iter().find(|i| i.id == key || i.name == key) {
            return Ok(i.clone());
        }
        let mut hits = all
            .into_iter()
            .filter(|i| !key.is_empty() && i.id.starts_with(key));
        match (hits.next(), hits.next()) {
            (Some(i), None) => Ok(i),
            (Some(_), Some(_)) => Err(StoreError::Ambiguous(key.to_string())),
            _ => Err(StoreError::NotFound(key.to_string())),
        }
    }

    /// Validates `req` against the rules, `instance_exists` (for literal
    /// targets) and the existing ingresses, then `can_bind` for each port
    /// no ingress serves yet, and only then writes the record. Nothing is
    /// written when any check fails.
    pub fn create(
        &self,
        req: CreateRequest,
        instance_exists: impl Fn(&str) -> Result<(), String>,
        can_bind: impl Fn(u16) -> Result<(), String>,
    ) -> Result<Ingress, CreateError> {
        self.create_checked(req, instance_exists, |_| Ok(()), can_bind)
    }

    /// [`Store::create`], with `tls_ok` asked about every TLS hostname
    /// (can it have a certificate).
    pub fn create_checked(
        &self,
        req: CreateRequest,
        instance_exists: impl Fn(&str) -> Result<(), String>,
        tls_ok: impl Fn(&str) -> Result<(), String>,
        can_bind: impl Fn(u16) -> Result<(), String>,
    ) -> Result<Ingress, CreateError> {
        let _held = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let ingress = self.check(req, &instance_exists)?;
        for (index, rule) in ingress.rules.iter().enumerate() {
            if rule.tls {
                tls_ok(&rule.match_.hostname).map_err(|why| StoreError::Tls { index, why })?;
            }
        }
        let existing = self.list()?;
        let mut checked = Vec::new();
        for rule in &ingress.rules {
            let port = rule.match_.port;
            let served = existing
                .iter()
                .flat_map(|i| &i.rules)
                .any(|r| r.match_.port == port);
            if !served && !checked.contains(&port) {
                can_bind(port).map_err(|why| CreateError::Bind { port, why })?;
                checked.push(port);
            }
        }
        write_record(&self.dir, &ingress)?;
        Ok(ingress)
    }

    /// The record `req` would become, or what is wrong with it.
    fn check(
        &self,
        req: CreateRequest,
        instance_exists: &impl Fn(&str) -> Result<(), String>,
    ) -> Result<Ingress, StoreError> {
        if !valid_name(&req.name) {
            return Err(StoreError::BadName(req.name));
        }
        if req.rules.is_empty() {
            return Err(StoreError::NoRules);
        }
        let mut rules = Vec::with_capacity(req.rules.len());
        for (index, input) in req.rules.iter().enumerate() {
            let rule = input
                .validate()
                .map_err(|source| StoreError::Rule { index, source })?;
            if let Some(instance) = rule.fixed_instance() {
                instance_exists(instance).map_err(|why| StoreError::Instance {
                    index,
                    instance: instance.to_string(),
                    why,
                })?;
            }
            rules.push(rule);
        }
        let existing = self.list()?;
        if existing.iter().any(|i| i.name == req.name) {
            return Err(StoreError::NameTaken(req.name));
        }
        let mut seen: Vec<(&Rule, &str)> = existing
            .iter()
            .flat_map(|i| i.rules.iter().map(move |r| (r, i.name.as_str())))
            .collect();
        for rule in &rules {
            for (other, by) in &seen {
                if other.match_.port != rule.match_.port {
                    continue;
                }
                if other.port_kind() != rule.port_kind() {
                    return Err(StoreError::PortKind {
                        port: rule.match_.port,
                        have: other.port_kind(),
                        want: rule.port_kind(),
                        by: by.to_string(),
                    });
                }
                if other.match_.hostname == rule.match_.hostname {
                    return Err(StoreError::HostTaken {
                        hostname: rule.match_.hostname.clone(),
                        port: rule.match_.port,
                        by: by.to_string(),
                    });
                }
            }
            seen.push((rule, req.name.as_str()));
        }
        Ok(Ingress {
            id: new_id(),
            name: req.name,
            created_at: lodge_common::time::now_rfc3339(),
            rules,
            tags: req.tags,
        })
    }

    /// Removes the ingress `key` names and returns it.
    pub fn delete(&self, key: &str) -> Result<Ingress, StoreError> {
        let _held = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let ingress = self.get(key)?;
        let path = self.dir.join(format!("{}.json", ingress.id));
        std::fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
        Ok(ingress)
    }

    /// Puts back a record [`Store::delete`] or [`Store::create`] returned
    /// (to undo a change the proxy could not apply).
    pub fn put(&self, ingress: &Ingress) -> Result<(), StoreError> {
        let _held = self.write.lock().unwrap_or_else(|p| p.into_inner());
        write_record(&self.dir, ingress)
    }

    /// Removes a record by id, if it is there.
    pub fn remove_id(&self, id: &str) -> Result<(), StoreError> {
        let _held = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join(format!("{id}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }
}

/// Why a create failed: the request, or a port the host will not give.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Invalid(#[from] StoreError),
    #[error("port {port} cannot be bound: {why}")]
    Bind { port: u16, why: String },
}

/// `<ingress dir>/ingresses`.
pub fn records_dir(ingress_dir: &Path) -> PathBuf {
    ingress_dir.join("ingresses")
}

/// Every record in `dir`, oldest first (what the proxy loads).
pub fn read_all(dir: &Path) -> Result<Vec<Ingress>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            // Deleted between the listing and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let ingress: Ingress =
            serde_json::from_slice(&text).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
        out.push(ingress);
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(out)
}

fn write_record(dir: &Path, ingress: &Ingress) -> Result<(), StoreError> {
    let path = dir.join(format!("{}.json", ingress.id));
    let tmp = dir.join(format!(".{}.json.tmp", ingress.id));
    let text = serde_json::to_vec_pretty(ingress).map_err(|source| StoreError::Corrupt {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| StoreError::Io { path, source })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A fresh id: 20 lowercase letters and digits, starting with a letter.
fn new_id() -> String {
    use rand::Rng;
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut id = String::with_capacity(20);
    id.push(LETTERS[rng.random_range(0..LETTERS.len())] as char);
    for _ in 1..20 {
        id.push(ALNUM[rng.random_range(0..ALNUM.len())] as char);
    }
    id
}

/// Whether `hostname` is the L4 wildcard.
pub fn is_any_host(hostname: &str) -> bool {
    hostname == ANY_HOST
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> RuleInput {
        serde_json::from_str(json).expect("rule json")
    }

    fn req(name: &str, rules: &[&str]) -> CreateRequest {
        CreateRequest {
            name: name.to_string(),
            rules: rules.iter().map(|r| input(r)).collect(),
            tags: BTreeMap::new(),
        }
    }

    fn exists(name: &str) -> Result<(), String> {
        if name == "web" || name == "api" {
            Ok(())
        } else {
            Err("no such instance".to_string())
        }
    }

    const WEB: &str =
        r#"{"match":{"hostname":"web.test","port":8080},"target":{"instance":"web","port":80}}"#;

    fn count(dir: &Path) -> usize {
        std::fs::read_dir(records_dir(dir))
            .expect("dir")
            .flatten()
            .count()
    }

    #[test]
    fn create_get_list_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let made = store
            .create(req("site", &[WEB]), exists, |_| Ok(()))
            .expect("create");
        assert_eq!(store.get("site").expect("by name"), made);
        assert_eq!(store.get(&made.id[..6]).expect("by prefix"), made);
        assert_eq!(store.list().expect("list"), vec![made.clone()]);
        assert!(matches!(store.get("nope"), Err(StoreError::NotFound(_))));
        store.delete("site").expect("delete");
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn conflicts_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .create(req("site", &[WEB]), exists, |_| Ok(()))
            .expect("create");
        let err = store
            .create(
                req(
                    "site",
                    &[r#"{"match":{"hostname":"b.test"},"target":{"instance":"web","port":80}}"#],
                ),
                exists,
                |_| Ok(()),
            )
            .expect_err("name taken");
        assert!(
            matches!(err, CreateError::Invalid(StoreError::NameTaken(_))),
            "{err}"
        );
        let err = store
            .create(req("other", &[WEB]), exists, |_| Ok(()))
            .expect_err("host taken");
        assert!(
            matches!(err, CreateError::Invalid(StoreError::HostTaken { .. })),
            "{err}"
        );
        // The same hostname on another port is fine; the port is served
        // already, so it is not bound again.
        store
            .create(
                req("other", &[r#"{"match":{"hostname":"b.test","port":8080},"target":{"instance":"api","port":80}}"#]),
                exists,
                |_| Err("must not be asked".into()),
            )
            .expect("second host on a served port");
        assert_eq!(count(dir.path()), 2);
    }

    #[test]
    fn bad_rules_unknown_instances_and_busy_ports_write_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let second_bad = [
            WEB,
            r#"{"match":{"hostname":"x.test","port":99999},"target":{"instance":"web","port":80}}"#,
        ];
        let err = store
            .create(req("a", &second_bad), exists, |_| Ok(()))
            .expect_err("bad port");
        assert!(
            err.to_string()
                .starts_with("rule 1: match.port 99999 is out of range"),
            "{err}"
        );
        let err = store
            .create(
                req(
                    "a",
                    &[r#"{"match":{"hostname":"x.test"},"target":{"instance":"ghost","port":80}}"#],
                ),
                exists,
                |_| Ok(()),
            )
            .expect_err("unknown instance");
        assert!(
            matches!(err, CreateError::Invalid(StoreError::Instance { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("ghost"), "{err}");
        let err = store
            .create(req("a", &[WEB]), exists, |p| Err(format!("{p} in use")))
            .expect_err("port in use");
        assert!(matches!(err, CreateError::Bind { port: 8080, .. }), "{err}");
        let err = store
            .create(req("Bad_Name", &[WEB]), exists, |_| Ok(()))
            .expect_err("bad name");
        assert!(
            matches!(err, CreateError::Invalid(StoreError::BadName(_))),
            "{err}"
        );
        assert_eq!(count(dir.path()), 0);
    }

    #[test]
    fn a_port_is_http_or_tcp_not_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .create(req("site", &[WEB]), exists, |_| Ok(()))
            .expect("create");
        let err = store
            .create(
                req("p", &[r#"{"match":{"hostname":"*","port":8080,"protocol":"tcp"},"target":{"instance":"web","port":80}}"#]),
                exists,
                |_| Ok(()),
            )
            .expect_err("port kind");
        assert!(
            matches!(err, CreateError::Invalid(StoreError::PortKind { .. })),
            "{err}"
        );
    }
}
