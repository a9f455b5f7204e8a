//! Entry writing: the [`Unpacker`] walks each entry's parents from the
//! root (resolving symlinks inside the tree, refusing escapes), replaces
//! what is there and writes the entry with its metadata. Whiteouts are
//! handed to [`super::whiteout`].

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, XattrFlags, CWD};
use rustix::io::Errno;

use super::decompress::decompress;
use super::error::{io_err, unsafe_entry, UnpackError};
use super::fsops::{open_dir_at, remove_all_at};
use super::meta::{times_of, Meta};
use super::whiteout::{opaque, whiteout_of, Whiteout};

/// How many symlinks one walk may pass through (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Counters of what a layer did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
}

/// Applies layers to one root directory. Create it with [`Unpacker::new`],
/// call [`apply`](Unpacker::apply) per layer in order, then
/// [`finish`](Unpacker::finish).
pub struct Unpacker {
    root: OwnedFd,
    privileged: bool,
    /// Directory mtimes, set last: adding entries changes them.
    dir_times: HashMap<Vec<OsString>, i64>,
    /// Resolved paths written by the current layer (for opaque whiteouts).
    written: HashSet<Vec<OsString>>,
    /// The last parent directory opened, by resolved path.
    cached: Option<(Vec<OsString>, OwnedFd)>,
}

/// A parent directory reached by a walk: its descriptor and resolved path.
struct Parent {
    fd: OwnedFd,
    path: Vec<OsString>,
}

/// Splits an entry name into its components, refusing absolute names and
/// `..`. `./` prefixes and empty components are dropped (`./a//b` is `a/b`).
fn components<'a>(raw: &'a [u8], shown: &str) -> Result<Vec<&'a OsStr>, UnpackError> {
    if raw.first() == Some(&b'/') {
        return Err(unsafe_entry(shown, "absolute path"));
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_entry(shown, "path has a '..' component")),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

impl Unpacker {
    /// Applies layers into `root`, an existing (normally empty) directory.
    pub fn new(root: &Path) -> io::Result<Self> {
        let fd = rustix::fs::openat(
            CWD,
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Unpacker {
            root: fd,
            privileged: rustix::process::geteuid().is_root(),
            dir_times: HashMap::new(),
            written: HashSet::new(),
            cached: None,
        })
    }

    /// Applies one layer (a tar, gzip- or zstd-compressed or not).
    pub fn apply(&mut self, layer: impl Read) -> Result<LayerStats, UnpackError> {
        self.written.clear();
        self.cached = None;
        let reader = decompress(layer).map_err(|e| UnpackError::Malformed(e.to_string()))?;
        let mut archive = tar::Archive::new(reader);
        let mut stats = LayerStats::default();
        let entries = archive
            .entries()
            .map_err(|e| UnpackError::Malformed(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| UnpackError::Malformed(e.to_string()))?;
            stats.entries += 1;
            self.apply_entry(&mut entry, &mut stats)?;
        }
        Ok(stats)
    }

    /// Sets directory mtimes, which every layer's writes have disturbed.
    pub fn finish(mut self) -> Result<(), UnpackError> {
        self.cached = None;
        let times = std::mem::take(&mut self.dir_times);
        for (path, mtime) in times {
            let fd = if path.is_empty() {
                match rustix::io::dup(&self.root) {
                    Ok(fd) => fd,
                    Err(_) => continue,
                }
            } else {
                match self.reopen(&path) {
                    Ok(fd) => fd,
                    // Deleted by a later layer.
                    Err(_) => continue,
                }
            };
            let _ = rustix::fs::futimens(&fd, &times_of(mtime));
        }
        Ok(())
    }

    /// Opens a resolved path (real directories only) from the root.
    fn reopen(&self, path: &[OsString]) -> Result<OwnedFd, Errno> {
        let mut fd = rustix::io::dup(&self.root)?;
        for c in path {
            fd = open_dir_at(&fd, c)?;
        }
        Ok(fd)
    }

    /// Walks `comps` from the root to a directory, resolving symlinks inside
    /// the tree; creates missing directories when `create`. `Ok(None)` when
    /// a component is missing and `create` is false.
    fn walk(
        &mut self,
        comps: &[&OsStr],
        create: bool,
        shown: &str,
    ) -> Result<Option<Parent>, UnpackError> {
        if let Some((path, fd)) = &self.cached {
            if path.len() == comps.len() && path.iter().zip(comps).all(|(a, b)| a == b) {
                let fd = rustix::io::dup(fd).map_err(io_err(shown))?;
                return Ok(Some(Parent {
                    fd,
                    path: path.clone(),
                }));
            }
        }
        let mut pending: std::collections::VecDeque<OsString> =
            comps.iter().map(|c| c.to_os_string()).collect();
        let mut path: Vec<OsString> = Vec::new();
        let mut fd = rustix::io::dup(&self.root).map_err(io_err(shown))?;
        let mut links = 0usize;
        let mut followed = false;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                // Only reachable through a symlink's target.
                if path.pop().is_none() {
                    return Err(unsafe_entry(
                        shown,
                        "a symlink on its path points outside the image",
                    ));
                }
                fd = self.reopen(&path).map_err(io_err(shown))?;
                continue;
            }
            if c.is_empty() || c == "." {
                continue;
            }
            match open_dir_at(&fd, &c) {
                Ok(next) => {
                    fd = next;
                    path.push(c);
                }
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, &c, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_err(shown)(e)),
                    }
                    fd = open_dir_at(&fd, &c).map_err(io_err(shown))?;
                    path.push(c);
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let st = rustix::fs::statat(&fd, &c, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(io_err(shown))?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                        return Err(unsafe_entry(
                            shown,
                            format!("parent {:?} is not a directory", c),
                        ));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(unsafe_entry(shown, "too many levels of symbolic links"));
                    }
                    followed = true;
                    let target =
                        rustix::fs::readlinkat(&fd, &c, Vec::new()).map_err(io_err(shown))?;
                    let target = target.as_bytes();
                    if target.first() == Some(&b'/') {
                        path.clear();
                        fd = rustix::io::dup(&self.root).map_err(io_err(shown))?;
                    }
                    for t in target.split(|&b| b == b'/').rev() {
                        pending.push_front(OsStr::from_bytes(t).to_os_string());
                    }
                }
                Err(e) => return Err(io_err(shown)(e)),
            }
        }
        // Only plain walks are cached: they are by far the common case.
        if !followed {
            if let Ok(dup) = rustix::io::dup(&fd) {
                self.cached = Some((path.clone(), dup));
            }
        }
        Ok(Some(Parent { fd, path }))
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        stats: &mut LayerStats,
    ) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = components(&raw, &shown)?;
        let kind = entry.header().entry_type();
        let Some((name, parents)) = comps.split_last() else {
            // The root itself (`./`): only its metadata can change.
            if kind.is_dir() {
                let fd = rustix::io::dup(&self.root).map_err(io_err(&shown))?;
                let meta = Meta::of(entry)?;
                self.set_meta_fd(&fd, &meta, &shown)?;
                self.dir_times.insert(Vec::new(), meta.mtime);
            }
            return Ok(());
        };
        let name_bytes = name.as_bytes();

        if let Some(whiteout) = whiteout_of(name_bytes) {
            stats.whiteouts += 1;
            let Some(parent) = self.walk(parents, false, &shown)? else {
                return Ok(());
            };
            return match whiteout {
                Whiteout::Opaque => {
                    self.cached = None;
                    opaque(&parent.fd, &parent.path, &self.written, &shown)
                }
                Whiteout::Invalid => Err(unsafe_entry(&shown, "whiteout of '.' or '..'")),
                Whiteout::Ignored => Ok(()),
                Whiteout::Remove(name) => {
                    self.cached = None;
                    remove_all_at(&parent.fd, name).map_err(io_err(&shown))
                }
            };
        }

        let parent = self
            .walk(parents, true, &shown)?
            .ok_or_else(|| unsafe_entry(&shown, "parent directory vanished"))?;
        let mut resolved = parent.path.clone();
        resolved.push(name.to_os_string());
        let meta = Meta::of(entry)?;

        // Whatever is there now is replaced, except a directory by a directory.
        let existing = match rustix::fs::statat(&parent.fd, *name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(io_err(&shown)(e)),
        };
        let keep_dir = kind.is_dir() && existing == Some(FileType::Directory);
        if existing.is_some() && !keep_dir {
            if existing == Some(FileType::Directory) {
                self.cached = None;
            }
            remove_all_at(&parent.fd, name).map_err(io_err(&shown))?;
        }

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    &parent.fd,
                    *name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io_err(&shown))?;
                let mut file = File::from(fd);
                let n = io::copy(entry, &mut file).map_err(|source| UnpackError::Io {
                    entry: shown.clone(),
                    source,
                })?;
                stats.bytes += n;
                self.set_meta_fd(&file, &meta, &shown)?;
                rustix::fs::futimens(&file, &times_of(meta.mtime)).map_err(io_err(&shown))?;
            }
            tar::EntryType::Directory => {
                if !keep_dir {
                    rustix::fs::mkdirat(&parent.fd, *name, Mode::from_raw_mode(0o700))
                        .map_err(io_err(&shown))?;
                }
                let fd = open_dir_at(&parent.fd, name).map_err(io_err(&shown))?;
                self.set_meta_fd(&fd, &meta, &shown)?;
                self.dir_times.insert(resolved.clone(), meta.mtime);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        UnpackError::Malformed(format!("symlink {shown:?} has no target"))
                    })?
                    .into_owned();
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent.fd, *name)
                    .map_err(io_err(&shown))?;
                self.chown_entry(&parent.fd, name, &meta, &shown)?;
                let _ = rustix::fs::utimensat(
                    &parent.fd,
                    *name,
                    &times_of(meta.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        UnpackError::Malformed(format!("hard link {shown:?} has no target"))
                    })?
                    .into_owned();
                // Link targets name entries of the image, from its root.
                let stripped = target.strip_prefix(b"/").unwrap_or(&target);
                let tcomps = components(stripped, &shown)?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(unsafe_entry(&shown, "hard link to the root"));
                };
                let tparent = self
                    .walk(tparents, false, &shown)?
                    .ok_or_else(|| unsafe_entry(&shown, "hard link target does not exist"))?;
                let st = rustix::fs::statat(&tparent.fd, *tname, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|_| unsafe_entry(&shown, "hard link target does not exist"))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(unsafe_entry(&shown, "hard link to a directory"));
                }
                rustix::fs::linkat(&tparent.fd, *tname, &parent.fd, *name, AtFlags::empty())
                    .map_err(io_err(&shown))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ft != FileType::Fifo && !self.privileged {
                    tracing::warn!("skipping device node {shown:?}: creating it needs root");
                    return Ok(());
                }
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                rustix::fs::mknodat(
                    &parent.fd,
                    *name,
                    ft,
                    Mode::from_raw_mode(meta.mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(io_err(&shown))?;
                self.chown_entry(&parent.fd, name, &meta, &shown)?;
                rustix::fs::chmodat(
                    &parent.fd,
                    *name,
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(io_err(&shown))?;
                let _ = rustix::fs::utimensat(
                    &parent.fd,
                    *name,
                    &times_of(meta.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            // pax and GNU long-name headers are consumed by the tar reader.
            other => {
                tracing::debug!("ignoring tar entry {shown:?} of type {other:?}");
                return Ok(());
            }
        }
        self.written.insert(resolved);
        Ok(())
    }

    /// Gives a non-directory entry the owner the layer recorded (without
    /// following it, for symlinks); only when running privileged.
    fn chown_entry(
        &self,
        dir: impl AsFd,
        name: &OsStr,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        if !self.privileged {
            return Ok(());
        }
        rustix::fs::chownat(
            dir,
            name,
            Some(meta.uid()),
            Some(meta.gid()),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(shown))
    }

    fn set_meta_fd(&self, fd: impl AsFd, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        if self.privileged {
            rustix::fs::fchown(&fd, Some(meta.uid()), Some(meta.gid())).map_err(io_err(shown))?;
        }
        // After chown, which clears setuid/setgid.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode)).map_err(io_err(shown))?;
        for (key, value) in &meta.xattrs {
            if let Err(e) = rustix::fs::fsetxattr(&fd, key.as_os_str(), value, XattrFlags::empty())
            {
                tracing::debug!("{shown:?}: extended attribute {key:?} not kept: {e}");
            }
        }
        Ok(())
    }
}

/// Applies `layers` (file paths, in order) to a fresh `root` directory.
pub fn unpack_layers(root: &Path, layers: &[PathBuf]) -> Result<LayerStats, UnpackError> {
    let mut u = Unpacker::new(root).map_err(|source| UnpackError::Io {
        entry: root.display().to_string(),
        source,
    })?;
    let mut total = LayerStats::default();
    for layer in layers {
        let f = File::open(layer).map_err(|source| UnpackError::Io {
            entry: layer.display().to_string(),
            source,
        })?;
        let s = u.apply(f)?;
        total.entries += s.entries;
        total.bytes += s.bytes;
        total.whiteouts += s.whiteouts;
    }
    u.finish()?;
    Ok(total)
}
