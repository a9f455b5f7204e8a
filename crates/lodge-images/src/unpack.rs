//! Applies image layers to a directory tree, in order, the way docker does,
//! without ever letting a layer write outside that tree.
//!
//! Every file-system call is relative to a directory file descriptor and
//! passes `O_NOFOLLOW`: the kernel never follows a symlink on our behalf.
//! Parent directories are walked one component at a time from the root; when
//! a component is a symlink left by an earlier entry, its target is resolved
//! here, inside the tree (an absolute target starts again at the image root,
//! as it would inside the guest). An entry whose name is absolute or holds a
//! `..`, and a walk that a relative symlink would take above the root, are
//! refused: the layer fails and the caller discards the whole tree.
//!
//! OCI whiteouts are honoured: `.wh.NAME` deletes `NAME` from the layers
//! below, `.wh..wh..opq` empties its directory of everything the layers below
//! put there. Modes (with setuid/setgid/sticky), owners, mtimes, extended
//! attributes, symlinks, hard links, FIFOs and device nodes are kept. Without
//! root, owners and device nodes cannot be made: owners are left as the
//! caller's and device nodes are skipped with a warning.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer tries to reach outside the image (or is otherwise hostile).
    #[error("unsafe layer entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    /// The layer is not a readable tar (or its compression is broken).
    #[error("malformed layer: {0}")]
    Malformed(String),
    #[error("layer entry {entry:?}: {source}")]
    Io {
        entry: String,
        #[source]
        source: io::Error,
    },
}

fn unsafe_entry(entry: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

/// How many symlinks one walk may pass through (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

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

fn io_err(entry: &str) -> impl FnOnce(Errno) -> UnpackError + '_ {
    move |e| UnpackError::Io {
        entry: entry.to_string(),
        source: e.into(),
    }
}

fn open_dir_at(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
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

/// Decompresses by sniffing the first bytes (gzip, zstd or plain tar), so a
/// mislabelled media type does not matter.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(1 << 20, reader);
    let head = buf.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buf)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let dec = ruzstd::decoding::StreamingDecoder::new(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Box::new(dec))
    } else {
        Ok(Box::new(buf))
    }
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

        if let Some(rest) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            stats.whiteouts += 1;
            let Some(parent) = self.walk(parents, false, &shown)? else {
                return Ok(());
            };
            if name_bytes == OPAQUE.as_bytes() {
                self.cached = None;
                return self.opaque(&parent, &shown);
            }
            if rest == b"." || rest == b".." {
                return Err(unsafe_entry(&shown, "whiteout of '.' or '..'"));
            }
            if rest.starts_with(WHITEOUT_PREFIX.as_bytes()) || rest.is_empty() {
                // Other aufs metadata (`.wh..wh.plnk` …) carries no meaning here.
                return Ok(());
            }
            self.cached = None;
            return remove_all_at(&parent.fd, OsStr::from_bytes(rest)).map_err(io_err(&shown));
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

    /// Removes from `parent` everything this layer did not write.
    fn opaque(&self, parent: &Parent, shown: &str) -> Result<(), UnpackError> {
        let dir = rustix::io::dup(&parent.fd).map_err(io_err(shown))?;
        self.prune(dir, parent.path.clone(), shown)
    }

    fn prune(&self, dir: OwnedFd, path: Vec<OsString>, shown: &str) -> Result<(), UnpackError> {
        for name in list_dir(&dir).map_err(io_err(shown))? {
            let mut child = path.clone();
            child.push(name.clone());
            if !self.written.contains(&child) {
                remove_all_at(&dir, &name).map_err(io_err(shown))?;
                continue;
            }
            if let Ok(sub) = open_dir_at(&dir, &name) {
                self.prune(sub, child, shown)?;
            }
        }
        Ok(())
    }
}

fn list_dir(dir: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    let mut out = Vec::new();
    let d = rustix::fs::Dir::read_from(dir)?;
    for e in d {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir` and, for a directory, all it holds. Never
/// follows symlinks. A missing entry is not an error.
pub fn remove_all_at(dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = open_dir_at(dir, name)?;
        for child in list_dir(&sub)? {
            remove_all_at(&sub, &child)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())
    }
}

/// Removes a whole tree by path without following symlinks inside it.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("refusing to remove a root"));
    };
    let dir = rustix::fs::openat(
        CWD,
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    remove_all_at(&dir, name)?;
    Ok(())
}

fn times_of(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Metadata of one entry, with pax overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Self, UnpackError> {
        let h = entry.header();
        let bad = |what: &str| UnpackError::Malformed(format!("unreadable {what} in a tar header"));
        let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
        let mut uid = u32::try_from(h.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid"))?;
        let mut gid = u32::try_from(h.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid"))?;
        let mut mtime = i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(0);
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let num = || std::str::from_utf8(value).ok();
                match key {
                    "uid" => {
                        if let Some(v) = num().and_then(|s| s.parse().ok()) {
                            uid = v;
                        }
                    }
                    "gid" => {
                        if let Some(v) = num().and_then(|s| s.parse().ok()) {
                            gid = v;
                        }
                    }
                    "mtime" => {
                        if let Some(v) = num()
                            .and_then(|s| s.split('.').next())
                            .and_then(|s| s.parse().ok())
                        {
                            mtime = v;
                        }
                    }
                    k => {
                        if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((OsString::from(name), value.to_vec()));
                        }
                    }
                }
            }
        }
        // -1 means "unchanged" to chown(2), never an owner.
        if uid == u32::MAX || gid == u32::MAX {
            return Err(bad("owner (-1)"));
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn uid(&self) -> rustix::fs::Uid {
        rustix::fs::Uid::from_raw(self.uid)
    }

    fn gid(&self) -> rustix::fs::Gid {
        rustix::fs::Gid::from_raw(self.gid)
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
