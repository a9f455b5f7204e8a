//! Offline imports: `oci-archive:` (a tar of an OCI image layout) and
//! `docker-archive:` (`docker save` output), skopeo's transport names.
//!
//! The archive is extracted into a staging directory — regular files and
//! directories only, by relative names without `..`; symlinks (newer
//! `docker save` output links legacy paths to blobs) are kept as aliases
//! resolved inside the archive, never created — then each blob the chosen
//! image needs is hashed and moved into the blob cache. An OCI blob must hash
//! to its file name; a docker archive's files are named by what they hash to,
//! and lodge writes the OCI manifest for them, so every image has a manifest
//! digest to key its disk by.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::blobs::BlobStore;
use crate::digest::{Digest, HashingReader};
use crate::error::{invalid, io, Error, ErrorKind, Result};
use crate::oci::{
    AnyManifest, Descriptor, Index, Manifest, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME,
    OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use crate::platform::Platform;
use crate::reference::{canonical, parse_registry, Source};

/// Small JSON documents of an archive are read whole; this caps them.
const MAX_JSON: u64 = 16 << 20;

fn archive_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Invalid,
        format!("archive {}: {msg}", path.display()),
    )
}

fn open_archive(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Invalid
        };
        Error::new(kind, format!("archive {}: {e}", path.display()))
    })
}

/// Normalises a member name; `None` for names that would leave the archive.
fn member_name(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    if s.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Reads the named small members of an archive without extracting it
/// (headers are skipped by seeking, so this is quick on large archives).
fn read_members(path: &Path, wanted: &[&str]) -> Result<HashMap<String, Vec<u8>>> {
    let f = open_archive(path)?;
    let mut ar = tar::Archive::new(f);
    let mut out = HashMap::new();
    let entries = ar.entries_with_seek().map_err(|e| archive_err(path, e))?;
    for e in entries {
        let mut e = e.map_err(|e| archive_err(path, e))?;
        let Some(name) = member_name(&e.path_bytes()) else {
            continue;
        };
        if wanted.contains(&name.as_str()) && e.header().entry_type().is_file() {
            let mut buf = Vec::new();
            (&mut e)
                .take(MAX_JSON)
                .read_to_end(&mut buf)
                .map_err(|e| archive_err(path, e))?;
            out.insert(name, buf);
        }
    }
    Ok(out)
}

/// `localhost/<file stem>:<tag>`, for archives that name no image.
fn fallback_name(path: &Path, tag: Option<&str>) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut repo: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    repo = repo
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if repo.is_empty() {
        repo = "image".into();
    }
    let tag = tag
        .filter(|t| {
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && !t.is_empty()
        })
        .unwrap_or("latest");
    format!("localhost/{repo}:{tag}")
}

/// A full reference from an annotation value, if it is one (not a bare tag).
fn as_full_name(s: &str) -> Option<String> {
    if !(s.contains(':') || s.contains('/') || s.contains('@')) {
        return None;
    }
    parse_registry(s).ok().map(|r| canonical(&r))
}

/// The local name an archive import gets: the reference given after the
/// path, else the name the archive records, else one made from the file name.
pub fn local_name(source: &Source) -> Result<String> {
    match source {
        Source::Registry(r) => Ok(canonical(r)),
        Source::OciArchive { path, reference } => {
            let members = read_members(path, &["index.json"])?;
            let index = parse_index(path, &members)?;
            let entry = choose_oci_entry(path, &index, reference.as_deref())?;
            if let Some(r) = reference {
                return Ok(as_full_name(r).unwrap_or_else(|| fallback_name(path, Some(r))));
            }
            let ann = |k: &str| entry.annotations.get(k).map(String::as_str);
            Ok(ann(ANNOTATION_CONTAINERD_NAME)
                .and_then(as_full_name)
                .or_else(|| ann(ANNOTATION_REF_NAME).and_then(as_full_name))
                .unwrap_or_else(|| fallback_name(path, ann(ANNOTATION_REF_NAME))))
        }
        Source::DockerArchive { path, reference } => {
            let members = read_members(path, &["manifest.json"])?;
            let entries = parse_docker_manifest(path, &members)?;
            let entry = choose_docker_entry(path, &entries, reference.as_deref())?;
            if let Some(r) = reference {
                return Ok(as_full_name(r).unwrap_or_else(|| fallback_name(path, Some(r))));
            }
            Ok(entry
                .repo_tags
                .iter()
                .find_map(|t| parse_registry(t).ok().map(|r| canonical(&r)))
                .unwrap_or_else(|| fallback_name(path, None)))
        }
    }
}

/// The JSON member `name` of the archive at `path`; `missing` says what
/// the archive is not when it lacks that member.
fn parse_member<T: serde::de::DeserializeOwned>(
    path: &Path,
    members: &HashMap<String, Vec<u8>>,
    name: &str,
    missing: &str,
) -> Result<T> {
    let bytes = members
        .get(name)
        .ok_or_else(|| archive_err(path, format!("no {name}: {missing}")))?;
    serde_json::from_slice(bytes).map_err(|e| archive_err(path, format!("{name}: {e}")))
}

fn parse_index(path: &Path, members: &HashMap<String, Vec<u8>>) -> Result<Index> {
    parse_member(path, members, "index.json", "not an OCI image layout")
}

fn choose_oci_entry<'a>(
    path: &Path,
    index: &'a Index,
    reference: Option<&str>,
) -> Result<&'a Descriptor> {
    if let Some(r) = reference {
        let full = as_full_name(r);
        return index
            .manifests
            .iter()
            .find(|d| {
                d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(r)
                    || (full.is_some()
                        && d.annotations
                            .get(ANNOTATION_CONTAINERD_NAME)
                            .and_then(|n| as_full_name(n))
                            == full)
            })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("archive {}: no image named {r:?}", path.display()),
                )
            });
    }
    match index.manifests.as_slice() {
        [one] => Ok(one),
        [] => Err(archive_err(path, "index.json lists no image")),
        many => Err(archive_err(
            path,
            format!(
                "holds {} images; pick one with oci-archive:PATH:NAME",
                many.len()
            ),
        )),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn parse_docker_manifest(
    path: &Path,
    members: &HashMap<String, Vec<u8>>,
) -> Result<Vec<DockerEntry>> {
    parse_member(path, members, "manifest.json", "not a docker archive")
}

fn choose_docker_entry<'a>(
    path: &Path,
    entries: &'a [DockerEntry],
    reference: Option<&str>,
) -> Result<&'a DockerEntry> {
    if let Some(r) = reference {
        let want = parse_registry(r).ok().map(|x| canonical(&x));
        return entries
            .iter()
            .find(|e| {
                e.repo_tags
                    .iter()
                    .any(|t| t == r || parse_registry(t).ok().map(|x| canonical(&x)) == want)
            })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("archive {}: no image tagged {r:?}", path.display()),
                )
            });
    }
    match entries {
        [one] => Ok(one),
        [] => Err(archive_err(path, "manifest.json lists no image")),
        many => Err(archive_err(
            path,
            format!(
                "holds {} images; pick one with docker-archive:PATH:NAME",
                many.len()
            ),
        )),
    }
}

/// An extracted archive: files on disk plus symlink aliases.
struct Staged {
    dir: PathBuf,
    links: HashMap<String, String>,
    archive: PathBuf,
}

impl Staged {
    fn extract(archive: &Path, dir: &Path) -> Result<Self> {
        let f = open_archive(archive)?;
        let mut ar = tar::Archive::new(f);
        let mut links = HashMap::new();
        let entries = ar.entries().map_err(|e| archive_err(archive, e))?;
        for e in entries {
            let mut e = e.map_err(|e| archive_err(archive, e))?;
            let raw = e.path_bytes().into_owned();
            let name = member_name(&raw).ok_or_else(|| {
                Error::new(
                    ErrorKind::UnsafeLayer,
                    format!(
                        "archive {}: member {:?} escapes the archive",
                        archive.display(),
                        String::from_utf8_lossy(&raw)
                    ),
                )
            })?;
            if name.is_empty() {
                continue;
            }
            let kind = e.header().entry_type();
            let dest = dir.join(&name);
            if kind.is_dir() {
                std::fs::create_dir_all(&dest).map_err(io(format!("staging {name}")))?;
            } else if kind.is_file() {
                if let Some(p) = dest.parent() {
                    std::fs::create_dir_all(p).map_err(io(format!("staging {name}")))?;
                }
                let mut out = File::create(&dest).map_err(io(format!("staging {name}")))?;
                std::io::copy(&mut e, &mut out).map_err(io(format!("extracting {name}")))?;
            } else if kind.is_symlink() {
                let target = e
                    .link_name_bytes()
                    .and_then(|t| std::str::from_utf8(&t).ok().map(str::to_string))
                    .unwrap_or_default();
                let base = name.rsplit_once('/').map_or("", |(d, _)| d);
                let joined = if base.is_empty() {
                    target
                } else {
                    format!("{base}/{target}")
                };
                let resolved = lexical(&joined).ok_or_else(|| {
                    Error::new(
                        ErrorKind::UnsafeLayer,
                        format!(
                            "archive {}: symlink {name:?} points outside the archive",
                            archive.display()
                        ),
                    )
                })?;
                links.insert(name, resolved);
            }
            // Anything else (devices, hard links) has no place in an image archive.
        }
        Ok(Staged {
            dir: dir.to_path_buf(),
            links,
            archive: archive.to_path_buf(),
        })
    }

    /// The staged file for a member name, following aliases.
    fn file(&self, name: &str) -> Result<PathBuf> {
        let mut name = member_name(name.as_bytes())
            .ok_or_else(|| archive_err(&self.archive, format!("bad member reference {name:?}")))?;
        for _ in 0..8 {
            match self.links.get(&name) {
                Some(t) => name = t.clone(),
                None => break,
            }
        }
        let p = self.dir.join(&name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(archive_err(&self.archive, format!("{name} is missing")))
        }
    }

    fn read_json(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.file(name)?;
        let f = File::open(&p).map_err(io(format!("reading {name}")))?;
        let mut buf = Vec::new();
        f.take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(io(format!("reading {name}")))?;
        Ok(buf)
    }
}

/// Resolves `.` and `..` in a relative path; `None` if it climbs out.
fn lexical(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// What an import resolved: the chosen platform manifest (all its blobs
/// are in the cache when this returns).
pub struct Resolved {
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub index_digest: Option<Digest>,
}

/// Imports the image `source` names into the blob cache, staging in `stage`.
pub fn import(
    source: &Source,
    stage: &Path,
    blobs: &BlobStore,
    platform: &Platform,
) -> Result<Resolved> {
    std::fs::create_dir_all(stage).map_err(io("creating the staging directory"))?;
    match source {
        Source::Registry(_) => Err(invalid("not an archive source")),
        Source::OciArchive { path, reference } => {
            let staged = Staged::extract(path, stage)?;
            let index: Index = serde_json::from_slice(&staged.read_json("index.json")?)
                .map_err(|e| archive_err(path, format!("index.json: {e}")))?;
            let entry = choose_oci_entry(path, &index, reference.as_deref())?.clone();
            let take = |d: &Digest| -> Result<()> {
                if blobs.has(d, None) {
                    return Ok(());
                }
                let file = staged.file(&format!("blobs/sha256/{}", d.hex()))?;
                blobs
                    .adopt(&file, d)
                    .map_err(|e| Error::from(e).context(format!("archive {}", path.display())))
            };
            take(&entry.digest)?;
            let bytes = blobs.read_small(&entry.digest, MAX_JSON)?;
            let (manifest_digest, manifest, index_digest) = match AnyManifest::parse(&bytes)
                .map_err(|e| archive_err(path, e))?
            {
                AnyManifest::Image(m) => (entry.digest.clone(), m, None),
                AnyManifest::Index(idx) => {
                    let d = idx
                        .select(platform)
                        .map_err(|e| Error::new(ErrorKind::PlatformNotFound, e))?
                        .digest
                        .clone();
                    take(&d)?;
                    let bytes = blobs.read_small(&d, MAX_JSON)?;
                    match AnyManifest::parse(&bytes).map_err(|e| archive_err(path, e))? {
                        AnyManifest::Image(m) => (d, m, Some(entry.digest.clone())),
                        AnyManifest::Index(_) => {
                            return Err(archive_err(path, "nested image indexes are not supported"))
                        }
                    }
                }
            };
            take(&manifest.config.digest)?;
            for l in &manifest.layers {
                take(&l.digest)?;
            }
            Ok(Resolved {
                manifest_digest,
                manifest,
                index_digest,
            })
        }
        Source::DockerArchive { path, reference } => {
            let staged = Staged::extract(path, stage)?;
            let entries: Vec<DockerEntry> =
                serde_json::from_slice(&staged.read_json("manifest.json")?)
                    .map_err(|e| archive_err(path, format!("manifest.json: {e}")))?;
            let entry = choose_docker_entry(path, &entries, reference.as_deref())?;
            let store_file = |name: &str| -> Result<(Digest, u64, String)> {
                let file = staged.file(name)?;
                let (digest, size, head) = hash_file(&file)?;
                let media = if head.starts_with(&[0x1f, 0x8b]) {
                    OCI_LAYER_GZIP
                } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    OCI_LAYER_ZSTD
                } else {
                    OCI_LAYER_TAR
                };
                if blobs.has(&digest, Some(size)) {
                    let _ = std::fs::remove_file(&file);
                } else {
                    blobs.adopt(&file, &digest)?;
                }
                Ok((digest, size, media.to_string()))
            };
            let (cd, cs, _) = store_file(&entry.config)?;
            let mut layers = Vec::new();
            for l in &entry.layers {
                let (d, s, media) = store_file(l)?;
                layers.push(Descriptor {
                    media_type: media,
                    digest: d,
                    size: s,
                    platform: None,
                    annotations: BTreeMap::new(),
                    urls: Vec::new(),
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: OCI_CONFIG.into(),
                    digest: cd,
                    size: cs,
                    platform: None,
                    annotations: BTreeMap::new(),
                    urls: Vec::new(),
                },
                layers,
                annotations: BTreeMap::new(),
            };
            let bytes =
                serde_json::to_vec(&manifest).map_err(|e| crate::error::internal(e.to_string()))?;
            let manifest_digest = Digest::of(&bytes);
            blobs.put_reader(&manifest_digest, Some(bytes.len() as u64), &bytes[..])?;
            Ok(Resolved {
                manifest_digest,
                manifest,
                index_digest: None,
            })
        }
    }
}

fn hash_file(path: &Path) -> Result<(Digest, u64, Vec<u8>)> {
    let f = File::open(path).map_err(io(format!("reading {}", path.display())))?;
    let mut r = HashingReader::new(f);
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        let n = r
            .read(&mut head[got..])
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    std::io::copy(&mut r, &mut std::io::sink())
        .map_err(io(format!("reading {}", path.display())))?;
    let size = r.hasher.len();
    Ok((r.hasher.finish(), size, head[..got].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_archives() {
        let p = Path::new("/tmp/My Image,1.tar");
        assert_eq!(fallback_name(p, None), "localhost/my-image-1:latest");
        assert_eq!(fallback_name(p, Some("v2")), "localhost/my-image-1:v2");
        assert_eq!(
            as_full_name("busybox:demo").as_deref(),
            Some("docker.io/library/busybox:demo")
        );
        assert_eq!(as_full_name("latest"), None);
        assert_eq!(lexical("a/../b/./c"), Some("b/c".into()));
        assert_eq!(lexical("a/../../etc"), None);
        assert_eq!(
            member_name(b"./blobs//sha256/x"),
            Some("blobs/sha256/x".into())
        );
        assert_eq!(member_name(b"../x"), None);
    }
}
