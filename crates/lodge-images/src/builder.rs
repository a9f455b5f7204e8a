//! Writing images: layers as tars, and OCI layouts (a directory, or a tar
//! of one: skopeo's `oci-archive`) or `docker save` archives around them.
//!
//! lodge itself only reads images; this exists so that tests, benchmarks and
//! the offline quick start can make real images (layers with whiteouts,
//! hostile entries, several platforms) without a network or docker. Output
//! is reproducible: fixed mtimes, sorted tree walks.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::digest::Digest;
use crate::oci::{
    ContainerConfig, Descriptor, DescriptorPlatform, ImageConfigFile, Index, Manifest, RootFs,
    ANNOTATION_REF_NAME, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST,
};
use crate::platform::Platform;

/// Entry kinds, for [`LayerBuilder::raw`] and [`LayerBuilder::device`].
pub use tar::EntryType;

/// Timestamp written into every entry, for reproducible layers.
pub const MTIME: u64 = 1_700_000_000;

/// Builds one layer tar in memory.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

impl LayerBuilder {
    pub fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(false);
        LayerBuilder { tar }
    }

    fn append(&mut self, mut h: tar::Header, path: &str, data: &[u8]) -> io::Result<&mut Self> {
        self.tar.append_data(&mut h, path, data)?;
        Ok(self)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<&mut Self> {
        self.append(header(tar::EntryType::Directory, mode, 0), path, &[])
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<&mut Self> {
        self.append(
            header(tar::EntryType::Regular, mode, data.len() as u64),
            path,
            data,
        )
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> io::Result<&mut Self> {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.append(h, path, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<&mut Self> {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)?;
        Ok(self)
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> io::Result<&mut Self> {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.tar.append_link(&mut h, path, target)?;
        Ok(self)
    }

    pub fn device(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<&mut Self> {
        let mut h = header(kind, mode, 0);
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.append(h, path, &[])
    }

    /// Deletes `path` of the layers below (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> io::Result<&mut Self> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), 0o644, &[])
    }

    /// Hides everything the layers below have in `dir`.
    pub fn opaque(&mut self, dir: &str) -> io::Result<&mut Self> {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            0o644,
            &[],
        )
    }

    /// An entry with a name written verbatim, bypassing the tar crate's
    /// checks: for layers that must be hostile (`../x`, `/etc/x`).
    pub fn raw(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: Option<&[u8]>,
        data: &[u8],
    ) -> io::Result<&mut Self> {
        let mut h = header(kind, 0o644, data.len() as u64);
        {
            let gnu = h
                .as_gnu_mut()
                .ok_or_else(|| io::Error::other("not a gnu header"))?;
            if name.len() > gnu.name.len() {
                return Err(io::Error::other("raw name too long"));
            }
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                if l.len() > gnu.linkname.len() {
                    return Err(io::Error::other("raw link name too long"));
                }
                gnu.linkname = [0; 100];
                gnu.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_cksum();
        self.tar.append(&h, data)?;
        Ok(self)
    }

    /// Adds a host directory tree under `prefix` (`""` for the root),
    /// keeping modes, owners, symlinks and hard links.
    pub fn tree(&mut self, src: &Path, prefix: &str) -> io::Result<&mut Self> {
        let mut links: HashMap<(u64, u64), String> = HashMap::new();
        self.tree_at(src, prefix.trim_matches('/'), &mut links)?;
        Ok(self)
    }

    fn tree_at(
        &mut self,
        dir: &Path,
        rel: &str,
        links: &mut HashMap<(u64, u64), String>,
    ) -> io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let name = String::from_utf8_lossy(name.as_bytes()).into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = e.path().symlink_metadata()?;
            let ft = meta.file_type();
            let owner = |h: &mut tar::Header| {
                h.set_uid(u64::from(meta.uid()));
                h.set_gid(u64::from(meta.gid()));
            };
            if ft.is_dir() {
                let mut h = header(tar::EntryType::Directory, meta.mode() & 0o7777, 0);
                owner(&mut h);
                self.append(h, &path, &[])?;
                self.tree_at(&e.path(), &path, links)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(e.path())?;
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                owner(&mut h);
                self.tar.append_link(&mut h, &path, &target)?;
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                        let mut h = header(tar::EntryType::Link, meta.mode() & 0o7777, 0);
                        owner(&mut h);
                        self.tar.append_link(&mut h, &path, first)?;
                        continue;
                    }
                    links.insert((meta.dev(), meta.ino()), path.clone());
                }
                let mut h = header(tar::EntryType::Regular, meta.mode() & 0o7777, meta.len());
                owner(&mut h);
                let f = File::open(e.path())?;
                self.tar.append_data(&mut h, &path, f)?;
            } else if ft.is_fifo() {
                let mut h = header(tar::EntryType::Fifo, meta.mode() & 0o7777, 0);
                owner(&mut h);
                self.append(h, &path, &[])?;
            }
        }
        Ok(())
    }

    /// The finished, uncompressed tar.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        self.tar.into_inner()
    }
}

/// A layer blob as stored in a registry.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    /// Digest of the uncompressed tar (the config's `diff_ids`).
    pub diff_id: Digest,
}

impl Layer {
    pub fn gzip(tar: &[u8]) -> io::Result<Layer> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(tar)?;
        Ok(Layer {
            blob: enc.finish()?,
            media_type: OCI_LAYER_GZIP,
            diff_id: Digest::of(tar),
        })
    }

    pub fn plain(tar: Vec<u8>) -> Layer {
        Layer {
            diff_id: Digest::of(&tar),
            blob: tar,
            media_type: OCI_LAYER_TAR,
        }
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.to_string(),
            digest: Digest::of(&self.blob),
            size: self.blob.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
            urls: Vec::new(),
        }
    }
}

/// One single-platform image.
#[derive(Debug, Clone)]
pub struct Image {
    pub platform: Platform,
    pub config: ContainerConfig,
    pub layers: Vec<Layer>,
}

fn json(v: &impl serde::Serialize) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io::Error::other)
}

fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
        urls: Vec::new(),
    }
}

impl Image {
    pub fn new(config: ContainerConfig, layers: Vec<Layer>) -> Self {
        Image {
            platform: Platform::host(),
            config,
            layers,
        }
    }

    pub fn config_blob(&self) -> io::Result<Vec<u8>> {
        json(&ImageConfigFile {
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: self.platform.variant.clone(),
            created: Some("2023-11-14T22:13:20Z".into()),
            config: self.config.clone(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: self.layers.iter().map(|l| l.diff_id.to_string()).collect(),
            },
        })
    }

    /// Adds the image's blobs to `blobs` and returns its manifest descriptor.
    fn add_to(&self, blobs: &mut BTreeMap<Digest, Vec<u8>>) -> io::Result<Descriptor> {
        let config = self.config_blob()?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            config: desc(OCI_CONFIG, &config),
            layers: self.layers.iter().map(Layer::descriptor).collect(),
            annotations: BTreeMap::new(),
        };
        let manifest = json(&manifest)?;
        blobs.insert(Digest::of(&config), config);
        for l in &self.layers {
            blobs.insert(Digest::of(&l.blob), l.blob.clone());
        }
        let mut d = desc(OCI_MANIFEST, &manifest);
        d.platform = Some(DescriptorPlatform::of(&self.platform));
        blobs.insert(Digest::of(&manifest), manifest);
        Ok(d)
    }
}

/// An OCI image layout: `oci-layout`, `index.json` and `blobs/sha256/`.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub blobs: BTreeMap<Digest, Vec<u8>>,
    pub index: Vec<Descriptor>,
}

impl Layout {
    /// A layout holding one image, named `ref_name` in `index.json`.
    pub fn single(image: &Image, ref_name: Option<&str>) -> io::Result<Self> {
        let mut l = Layout::default();
        let mut d = image.add_to(&mut l.blobs)?;
        if let Some(r) = ref_name {
            d.annotations.insert(ANNOTATION_REF_NAME.into(), r.into());
        }
        l.index.push(d);
        Ok(l)
    }

    /// A layout holding one multi-platform image: `index.json` names an
    /// image index that lists one manifest per platform.
    pub fn multi(images: &[Image], ref_name: Option<&str>) -> io::Result<Self> {
        let mut l = Layout::default();
        let mut manifests = Vec::new();
        for i in images {
            manifests.push(i.add_to(&mut l.blobs)?);
        }
        let index = json(&Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests,
            annotations: BTreeMap::new(),
        })?;
        let mut d = desc(OCI_INDEX, &index);
        if let Some(r) = ref_name {
            d.annotations.insert(ANNOTATION_REF_NAME.into(), r.into());
        }
        l.blobs.insert(Digest::of(&index), index);
        l.index.push(d);
        Ok(l)
    }

    fn index_json(&self) -> io::Result<Vec<u8>> {
        json(&Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: self.index.clone(),
            annotations: BTreeMap::new(),
        })
    }

    /// Writes the layout as a directory (skopeo's `oci:DIR`).
    pub fn write_dir(&self, dir: &Path) -> io::Result<()> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs)?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        std::fs::write(dir.join("index.json"), self.index_json()?)?;
        for (d, bytes) in &self.blobs {
            std::fs::write(blobs.join(d.hex()), bytes)?;
        }
        Ok(())
    }

    /// Writes the layout as one tar file (skopeo's `oci-archive:FILE`).
    pub fn write_archive(&self, path: &Path) -> io::Result<()> {
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), self.index_json()?),
        ];
        for (d, bytes) in &self.blobs {
            files.push((format!("blobs/sha256/{}", d.hex()), bytes.clone()));
        }
        write_tar(path, &["blobs", "blobs/sha256"], &files)
    }
}

fn write_tar(path: &Path, dirs: &[&str], files: &[(String, Vec<u8>)]) -> io::Result<()> {
    lodge_common::fsutil::write_atomic_with(path, |file| {
        let mut t = tar::Builder::new(io::BufWriter::new(file));
        for d in dirs {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            t.append_data(&mut h, d, io::empty())?;
        }
        for (name, bytes) in files {
            let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
            t.append_data(&mut h, name, &bytes[..])?;
        }
        t.into_inner()?.flush()
    })
}

/// Writes `image` as `docker save` would (`manifest.json`, config, one
/// directory per layer with an uncompressed `layer.tar`).
pub fn write_docker_archive(image: &Image, repo_tag: Option<&str>, path: &Path) -> io::Result<()> {
    use std::io::Read;
    let config = image.config_blob()?;
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let mut files = vec![(config_name.clone(), config)];
    let mut layer_names = Vec::new();
    let mut dirs = Vec::new();
    for l in &image.layers {
        let mut tar = Vec::new();
        crate::unpack::decompress(&l.blob[..])?.read_to_end(&mut tar)?;
        let dir = l.diff_id.hex().to_string();
        let name = format!("{dir}/layer.tar");
        files.push((name.clone(), tar));
        layer_names.push(name);
        dirs.push(dir);
    }
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": repo_tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
        "Layers": layer_names,
    }]);
    files.push(("manifest.json".into(), json(&manifest)?));
    let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    write_tar(path, &dirs, &files)
}
