//! Turning a file tree into copy entries ([`Walk`]) and entries back into
//! a tree ([`Unpacker`]); shared by the guest agent and the `lodge cp` CLI,
//! so both directions of a copy follow one set of rules:
//!
//! - Entries are streamed: a walk opens one directory at a time, and file
//!   contents pass through in chunks, never whole.
//! - Modes (including setuid, setgid, sticky) and modification times are
//!   kept; owners only when asked (archive mode). From an untrusted sender
//!   ([`Unpacker::untrusted`]: what a guest sends the host) setuid and
//!   setgid are dropped unless asked for too; no sender can make a device.
//! - Every entry path is checked ([`super::paths`]), and an entry is
//!   resolved below the destination one directory fd at a time with
//!   `O_NOFOLLOW`, never through a symlink or anything else that is not a
//!   real directory, so a hostile stream cannot land a file outside the
//!   destination, not even with a root that is itself a symlink (it is
//!   created as a link; entries below it are refused). An existing file or
//!   symlink in an entry's place is replaced, not written through.
//! - Directories are created owner-writable and get their own mode and time
//!   at the end, so a read-only directory can still be filled and its time
//!   is not changed by its own contents.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rustix::fs::{
    chownat, fchown, mkdirat, openat, statat, symlinkat, unlinkat, AtFlags, FileType, Gid, Mode,
    OFlags, Uid,
};
use rustix::io::Errno;

use super::blocks::{BlockBuf, BlockWriter};
use super::messages::EntryHeader;
use super::paths::below_root;

/// An OS error as a short lowercase text, without Rust's "(os error N)".
pub fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text
        .split_once(" (os error")
        .map_or(text.as_str(), |(head, _)| head);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One entry of a [`Walk`].
#[derive(Debug)]
pub struct Found {
    /// Where it is on this side.
    pub full: PathBuf,
    /// Its header, path rooted at the walk's root name.
    pub header: EntryHeader,
    /// A regular file: its contents follow the header.
    pub is_file: bool,
}

/// An open directory of a [`Walk`].
struct OpenDir {
    id: (u64, u64),
    full: PathBuf,
    rel: String,
    names: std::vec::IntoIter<std::ffi::OsString>,
}

/// A depth-first walk yielding entries as it goes, each directory's
/// children in name order, parents before children. With `follow`,
/// symlinks are walked as what they point to (a dangling one stays a
/// link) and a directory already on the current path (a loop) is skipped.
/// Devices, fifos and sockets are skipped.
pub struct Walk {
    follow: bool,
    stack: Vec<OpenDir>,
    root: Option<(PathBuf, String, fs::Metadata)>,
}

/// A walk failure: the path it happened at, and the error.
pub type WalkError = (PathBuf, std::io::Error);

fn header_of(full: &Path, rel: String, md: &fs::Metadata) -> EntryHeader {
    let ft = md.file_type();
    let link_target = if ft.is_symlink() {
        fs::read_link(full)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    EntryHeader {
        path: rel,
        mode: md.mode() & 0o7777,
        is_dir: ft.is_dir(),
        is_symlink: ft.is_symlink(),
        link_target,
        size: if ft.is_file() { md.len() } else { 0 },
        mtime: md.mtime(),
        uid: Some(md.uid()),
        gid: Some(md.gid()),
    }
}

impl Walk {
    /// Walk `root`, naming it `name` in the entries' paths.
    pub fn new(root: &Path, name: &str, follow: bool) -> Result<Walk, WalkError> {
        let md = if follow {
            fs::metadata(root)
        } else {
            fs::symlink_metadata(root)
        }
        .map_err(|e| (root.to_path_buf(), e))?;
        Ok(Walk {
            follow,
            stack: Vec::new(),
            root: Some((root.to_path_buf(), name.to_owned(), md)),
        })
    }

    fn enter(&mut self, full: PathBuf, rel: String, md: fs::Metadata) -> Result<Found, WalkError> {
        if md.is_dir() {
            let mut names = fs::read_dir(&full)
                .and_then(|entries| {
                    entries
                        .map(|e| e.map(|e| e.file_name()))
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|e| (full.clone(), e))?;
            names.sort();
            self.stack.push(OpenDir {
                id: (md.dev(), md.ino()),
                full: full.clone(),
                rel: rel.clone(),
                names: names.into_iter(),
            });
        }
        let header = header_of(&full, rel, &md);
        Ok(Found {
            full,
            is_file: md.is_file(),
            header,
        })
    }
}

impl Iterator for Walk {
    type Item = Result<Found, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((full, rel, md)) = self.root.take() {
            return Some(self.enter(full, rel, md));
        }
        loop {
            let dir = self.stack.last_mut()?;
            let Some(name) = dir.names.next() else {
                self.stack.pop();
                continue;
            };
            let full = dir.full.join(&name);
            let rel = format!("{}/{}", dir.rel, name.to_string_lossy());
            let md = if self.follow {
                fs::metadata(&full).or_else(|_| fs::symlink_metadata(&full))
            } else {
                fs::symlink_metadata(&full)
            };
            let md = match md {
                Ok(md) => md,
                Err(e) => return Some(Err((full, e))),
            };
            if md.is_dir() && self.stack.iter().any(|d| d.id == (md.dev(), md.ino())) {
                continue;
            }
            let ft = md.file_type();
            if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                continue;
            }
            return Some(self.enter(full, rel, md));
        }
    }
}

/// Check that a copy destination can be created: its parent must exist
/// and be a directory (as `docker cp`).
pub fn check_parent(dest: &Path) -> Result<(), String> {
    let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    match fs::metadata(parent) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", parent.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "parent directory {} does not exist",
            parent.display()
        )),
        Err(e) => Err(format!("{}: {}", parent.display(), io_text(&e))),
    }
}

/// A file being received.
struct Receiving {
    contents: Contents,
    dest: PathBuf,
    header: EntryHeader,
}

/// Where a received file's contents go.
enum Contents {
    /// Straight to the file, write by write.
    Plain(File),
    /// Gathered into blocks ([`Unpacker::with_block_io`]).
    Blocks(BlockWriter),
}

/// Where a stream's root lands: a directory opened by path (the receiver's
/// own choice, so symlinks in it are followed) and the root's name in it;
/// `None` for a root that has no name (`/`, `.`): it is that directory.
struct Anchor {
    dir: OwnedFd,
    name: Option<OsString>,
}

/// Directory fds are opened this way: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Writes a stream of entries under one destination (see the module docs).
///
/// Every entry is resolved from the destination's parent directory one
/// component at a time, each opened relative to the previous one with
/// `O_NOFOLLOW|O_DIRECTORY`, and created with `*at` calls on the last
/// directory: the effect of `openat2`'s `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`, on any kernel. A symlink entry is created as a
/// link and never passed through, so entries below it are refused, even
/// when the link is the root itself.
pub struct Unpacker {
    root: PathBuf,
    keep_owner: bool,
    /// Permission bits kept from headers: setuid and setgid only when the
    /// sender is trusted or the user asked for them.
    mode_mask: u32,
    anchor: Option<Anchor>,
    /// The last parent directory resolved, by its names from the anchor.
    parent: Option<(Vec<OsString>, OwnedFd)>,
    current: Option<Receiving>,
    /// Directories to give their mode and time at the end.
    dirs: Vec<(Vec<OsString>, EntryHeader)>,
    bytes: u64,
    /// Files are written in blocks, bypassing the page cache where the
    /// file system allows it (see [`super::blocks`]).
    block_io: bool,
    /// The block buffer between files.
    spare: Option<BlockBuf>,
}

fn errno_text(e: rustix::io::Errno) -> String {
    io_text(&std::io::Error::from(e))
}

impl Unpacker {
    /// Unpack a trusted stream into `root`: the stream's first entry (its
    /// root) becomes `root` itself. Modes are kept whole; owners in
    /// headers are applied only if `keep_owner`. The guest agent uses it
    /// for what the host sends.
    pub fn new(root: PathBuf, keep_owner: bool) -> Unpacker {
        Unpacker {
            root,
            keep_owner,
            mode_mask: 0o7777,
            anchor: None,
            parent: None,
            current: None,
            dirs: Vec::new(),
            bytes: 0,
            block_io: false,
            spare: None,
        }
    }

    /// Write files in page-aligned blocks with `O_DIRECT` where the file
    /// system takes it: the guest agent's choice, whose emulated CPU pays
    /// dearly for the page cache (see [`super::blocks`]).
    pub fn with_block_io(mut self) -> Unpacker {
        self.block_io = true;
        self
    }

    /// Unpack a stream from an untrusted sender (the host, for what a
    /// guest sends): setuid and setgid bits are dropped and owners are
    /// ignored, unless `archive` (the user's `-a`) asks to keep both.
    /// Device nodes are never created: an entry is a directory, a
    /// symlink or a regular file, whatever file-type bits its mode holds.
    pub fn untrusted(root: PathBuf, archive: bool) -> Unpacker {
        Unpacker {
            mode_mask: if archive { 0o7777 } else { 0o1777 },
            ..Unpacker::new(root, archive)
        }
    }

    fn anchor(&mut self) -> Result<&Anchor, String> {
        if self.anchor.is_none() {
            let (dir, name) = match self.root.file_name() {
                Some(name) => {
                    let parent = self
                        .root
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."));
                    (parent, Some(name.to_owned()))
                }
                None => (self.root.as_path(), None),
            };
            let fd =
                fs::File::open(dir).map_err(|e| format!("{}: {}", dir.display(), io_text(&e)))?;
            if !fd.metadata().is_ok_and(|m| m.is_dir()) {
                return Err(format!("{} is not a directory", dir.display()));
            }
            self.anchor = Some(Anchor {
                dir: fd.into(),
                name,
            });
        }
        self.anchor
            .as_ref()
            .ok_or_else(|| "no destination".to_string())
    }

    /// How a path from the anchor is shown in messages.
    fn shown(&self, names: &[OsString]) -> String {
        let mut p = match self.root.file_name() {
            Some(_) => self.root.parent().unwrap_or(Path::new("")).to_path_buf(),
            None => self.root.clone(),
        };
        p.extend(names);
        p.display().to_string()
    }

    /// The directory at `names` below the anchor, each component opened
    /// without following symlinks; missing ones are created if `create`.
    fn open_dir(
        &mut self,
        names: &[OsString],
        entry: &str,
        create: bool,
    ) -> Result<OwnedFd, String> {
        if let Some((cached, fd)) = &self.parent {
            if cached.as_slice() == names {
                return fd.try_clone().map_err(|e| io_text(&e));
            }
        }
        let mut fd = self.anchor()?.dir.try_clone().map_err(|e| io_text(&e))?;
        for (i, name) in names.iter().enumerate() {
            let mut opened = openat(&fd, name, DIR_FLAGS, Mode::empty());
            if create && matches!(opened, Err(Errno::NOENT)) {
                match mkdirat(&fd, name, Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(format!(
                            "create {}: {}",
                            self.shown(&names[..=i]),
                            errno_text(e)
                        ))
                    }
                }
                opened = openat(&fd, name, DIR_FLAGS, Mode::empty());
            }
            fd = match opened {
                Ok(next) => next,
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let what = match statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                            "is a symbolic link; entries below it are refused"
                        }
                        _ => "is not a directory",
                    };
                    return Err(format!(
                        "archive entry {entry:?} escapes the target directory: {} {what}",
                        self.shown(&names[..=i])
                    ));
                }
                Err(e) => return Err(format!("{}: {}", self.shown(&names[..=i]), errno_text(e))),
            };
        }
        let copy = fd.try_clone().map_err(|e| io_text(&e))?;
        self.parent = Some((names.to_vec(), copy));
        Ok(fd)
    }

    fn owner(&self, fd: impl AsFd, shown: &str, header: &EntryHeader) -> Result<(), String> {
        if !self.keep_owner || (header.uid.is_none() && header.gid.is_none()) {
            return Ok(());
        }
        fchown(
            fd,
            header.uid.map(Uid::from_raw),
            header.gid.map(Gid::from_raw),
        )
        .map_err(|e| format!("chown {shown}: {}", errno_text(e)))
    }

    /// Start an entry; a file's contents follow through [`Unpacker::write`].
    pub fn begin(&mut self, header: EntryHeader) -> Result<(), String> {
        if self.current.is_some() {
            return Err("an entry started before the previous one ended".into());
        }
        let below = below_root(&header.path).map_err(|e| e.to_string())?;
        let mut names: Vec<OsString> = self.anchor()?.name.iter().cloned().collect();
        names.extend(below.iter().map(OsString::from));
        let shown = self.shown(&names);
        let Some((last, parents)) = names.split_last() else {
            // The root is the anchor directory itself.
            if !header.is_dir {
                return Err(format!(
                    "cannot overwrite directory {shown} with a non-directory"
                ));
            }
            let dir = self.open_dir(&[], &header.path, false)?;
            return self.begin_dir(dir, names, &shown, header);
        };
        let parent = self.open_dir(parents, &header.path, true)?;
        let existing = match statat(&parent, last, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(format!("{shown}: {}", errno_text(e))),
        };
        if header.is_dir {
            match existing {
                Some(FileType::Directory) => {}
                Some(_) => {
                    return Err(format!(
                        "cannot overwrite non-directory {shown} with a directory"
                    ))
                }
                None => mkdirat(&parent, last, Mode::from_raw_mode(0o700))
                    .map_err(|e| format!("create {shown}: {}", errno_text(e)))?,
            }
            let dir = openat(&parent, last, DIR_FLAGS, Mode::empty())
                .map_err(|e| format!("open {shown}: {}", errno_text(e)))?;
            return self.begin_dir(dir, names, &shown, header);
        }
        match existing {
            Some(FileType::Directory) => {
                return Err(format!(
                    "cannot overwrite directory {shown} with a non-directory"
                ))
            }
            Some(_) => unlinkat(&parent, last, AtFlags::empty())
                .map_err(|e| format!("replace {shown}: {}", errno_text(e)))?,
            None => {}
        }
        if header.is_symlink {
            symlinkat(header.link_target.as_str(), &parent, last)
                .map_err(|e| format!("create symlink {shown}: {}", errno_text(e)))?;
            if self.keep_owner && (header.uid.is_some() || header.gid.is_some()) {
                chownat(
                    &parent,
                    last,
                    header.uid.map(Uid::from_raw),
                    header.gid.map(Gid::from_raw),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| format!("chown {shown}: {}", errno_text(e)))?;
            }
            return Ok(());
        }
        let fd = openat(
            &parent,
            last,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| format!("create {shown}: {}", errno_text(e)))?;
        let file = File::from(fd);
        let contents = if self.block_io {
            let buf = self.spare.take().unwrap_or_default();
            Contents::Blocks(BlockWriter::new(file, buf, true))
        } else {
            Contents::Plain(file)
        };
        self.current = Some(Receiving {
            contents,
            dest: PathBuf::from(shown),
            header,
        });
        Ok(())
    }

    /// A directory entry, opened as `dir`: owner now, writable while it is
    /// filled, its own mode and time at the end.
    fn begin_dir(
        &mut self,
        dir: OwnedFd,
        names: Vec<OsString>,
        shown: &str,
        header: EntryHeader,
    ) -> Result<(), String> {
        self.owner(&dir, shown, &header)?;
        let dir = File::from(dir);
        if let Some(md) = dir.metadata().ok().filter(|m| m.mode() & 0o700 != 0o700) {
            // Fill it first; its own mode comes at the end. Should this
            // fail, the entries below say why.
            dir.set_permissions(fs::Permissions::from_mode(md.mode() | 0o700))
                .ok();
        }
        self.dirs.push((names, header));
        Ok(())
    }

    /// Contents of the current file entry.
    pub fn write(&mut self, data: &[u8]) -> Result<(), String> {
        let Some(r) = self.current.as_mut() else {
            return Err("file contents outside a file entry".into());
        };
        match &mut r.contents {
            Contents::Plain(file) => file.write_all(data),
            Contents::Blocks(blocks) => blocks.write(data),
        }
        .map_err(|e| format!("write {}: {}", r.dest.display(), io_text(&e)))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// The current entry is complete.
    pub fn end(&mut self) -> Result<(), String> {
        let Some(r) = self.current.take() else {
            return Ok(());
        };
        let shown = r.dest.display().to_string();
        let file = match r.contents {
            Contents::Plain(file) => file,
            Contents::Blocks(blocks) => {
                let (file, buf) = blocks
                    .finish()
                    .map_err(|e| format!("write {shown}: {}", io_text(&e)))?;
                self.spare = Some(buf);
                file
            }
        };
        // Owner first: chown clears the setuid and setgid bits.
        self.owner(&file, &shown, &r.header)?;
        file.set_permissions(fs::Permissions::from_mode(r.header.mode & self.mode_mask))
            .map_err(|e| format!("chmod {shown}: {}", io_text(&e)))?;
        if r.header.mtime > 0 {
            file.set_modified(UNIX_EPOCH + Duration::from_secs(r.header.mtime as u64))
                .map_err(|e| format!("set the time of {shown}: {}", io_text(&e)))?;
        }
        Ok(())
    }

    /// The stream is complete: finish the last entry, give directories
    /// their modes and times (deepest first). Returns the bytes written.
    pub fn finish(mut self) -> Result<u64, String> {
        self.end()?;
        self.parent = None;
        let dirs = std::mem::take(&mut self.dirs);
        for (names, header) in dirs.iter().rev() {
            let shown = self.shown(names);
            let dir = match names.split_last() {
                None => self.open_dir(&[], &header.path, false)?,
                Some((last, parents)) => {
                    let parent = self.open_dir(parents, &header.path, false)?;
                    openat(&parent, last, DIR_FLAGS, Mode::empty())
                        .map_err(|e| format!("open {shown}: {}", errno_text(e)))?
                }
            };
            let dir = File::from(dir);
            dir.set_permissions(fs::Permissions::from_mode(header.mode & self.mode_mask))
                .map_err(|e| format!("chmod {shown}: {}", io_text(&e)))?;
            if header.mtime > 0 {
                // Best effort, as before: a directory's time is cosmetic.
                dir.set_modified(UNIX_EPOCH + Duration::from_secs(header.mtime as u64))
                    .ok();
            }
        }
        Ok(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lodge-tree-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn entry(path: &str, mode: u32) -> EntryHeader {
        EntryHeader {
            path: path.into(),
            mode,
            ..EntryHeader::default()
        }
    }

    #[test]
    fn walk_yields_parents_first_in_name_order_and_skips_loops() {
        let dir = tempdir("walk");
        let root = dir.join("tree");
        fs::create_dir_all(root.join("b/c")).expect("mkdir");
        fs::write(root.join("a"), "a").expect("write");
        fs::write(root.join("b/c/d"), "d").expect("write");
        std::os::unix::fs::symlink("..", root.join("b/up")).expect("symlink");
        let rels = |follow| -> Vec<String> {
            Walk::new(&root, "tree", follow)
                .expect("walk")
                .map(|f| f.expect("entry").header.path)
                .collect()
        };
        assert_eq!(
            rels(false),
            [
                "tree",
                "tree/a",
                "tree/b",
                "tree/b/c",
                "tree/b/c/d",
                "tree/b/up"
            ]
        );
        // Following links, b/up is the tree itself: skipped, not looped.
        assert_eq!(
            rels(true),
            ["tree", "tree/a", "tree/b", "tree/b/c", "tree/b/c/d"]
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tree_round_trips_with_modes_links_and_times() {
        let dir = tempdir("roundtrip");
        let src = dir.join("src");
        fs::create_dir_all(src.join("sub")).expect("mkdir");
        fs::write(src.join("run.sh"), "#!/bin/sh\n").expect("write");
        fs::write(src.join("sub/secret"), vec![7u8; 100_000]).expect("write");
        std::os::unix::fs::symlink("run.sh", src.join("link")).expect("symlink");
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o4755)).expect("chmod");
        fs::set_permissions(src.join("sub/secret"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o500)).expect("chmod");
        let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        File::open(src.join("run.sh"))
            .expect("open")
            .set_modified(old)
            .expect("mtime");

        let dest = dir.join("dest");
        let mut unpacker = Unpacker::new(dest.clone(), false);
        for found in Walk::new(&src, "src", false).expect("walk") {
            let found = found.expect("entry");
            unpacker.begin(found.header).expect("begin");
            if found.is_file {
                let data = fs::read(&found.full).expect("read");
                for chunk in data.chunks(4096) {
                    unpacker.write(chunk).expect("write");
                }
            }
            unpacker.end().expect("end");
        }
        assert_eq!(unpacker.finish().expect("finish"), 100_010);

        let mode = |p: &str| fs::symlink_metadata(dest.join(p)).expect("md").mode() & 0o7777;
        assert_eq!(mode("run.sh"), 0o4755);
        assert_eq!(mode("sub"), 0o500);
        assert_eq!(mode("sub/secret"), 0o600);
        assert_eq!(
            fs::read(dest.join("sub/secret")).expect("read"),
            vec![7u8; 100_000]
        );
        assert_eq!(
            fs::read_link(dest.join("link")).expect("link"),
            Path::new("run.sh")
        );
        assert_eq!(
            fs::metadata(dest.join("run.sh"))
                .expect("md")
                .modified()
                .expect("mtime"),
            old
        );
        for p in [&src, &dest] {
            let _ = fs::set_permissions(p.join("sub"), fs::Permissions::from_mode(0o700));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn entries_cannot_pass_through_symlinks_or_escape() {
        let dir = tempdir("escape");
        let root = dir.join("root");
        fs::create_dir_all(&root).expect("mkdir");
        let outside = dir.join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
        let mut u = Unpacker::new(root.clone(), false);
        for bad in ["r/link/evil", "r/../evil", "/etc/evil"] {
            let err = u.begin(entry(bad, 0o644)).expect_err("refused");
            assert!(err.contains("escapes the target directory"), "{bad}: {err}");
        }
        assert!(fs::read_dir(&outside).expect("ls").next().is_none());
        assert!(!dir.join("evil").exists());
        // Missing parents inside the root are created.
        u.begin(entry("r/new/file", 0o640)).expect("begin");
        u.write(b"x").expect("write");
        u.end().expect("end");
        assert!(root.join("new/file").is_file());
        // An existing symlink is replaced, not written through.
        u.begin(entry("r/link", 0o644)).expect("begin");
        u.end().expect("end");
        assert!(fs::symlink_metadata(root.join("link"))
            .expect("md")
            .is_file());
        assert!(fs::read_dir(&outside).expect("ls").next().is_none());
        // Data outside a file entry is refused.
        assert!(u.write(b"stray").is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    fn symlink_entry(path: &str, target: &Path) -> EntryHeader {
        EntryHeader {
            path: path.into(),
            mode: 0o777,
            is_symlink: true,
            link_target: target.to_string_lossy().into_owned(),
            ..EntryHeader::default()
        }
    }

    /// Every name under `dir`, recursively, without following links.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = Walk::new(dir, "", false)
            .expect("walk")
            .map(|f| f.expect("entry").header.path)
            .collect();
        names.sort();
        names
    }

    /// A hostile sender (a guest answering `copy_from` itself): a root
    /// that is a symlink to a host directory, then entries below it,
    /// `..` and absolute names. Nothing lands outside the destination and
    /// an existing file outside stays as it was.
    #[test]
    fn a_symlink_root_is_created_but_never_traversed() {
        let dir = tempdir("symroot");
        let outside = dir.join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        fs::write(outside.join("keep"), "original").expect("write");
        let dest = dir.join("dest");
        let mut u = Unpacker::untrusted(dest.clone(), false);
        u.begin(symlink_entry("r", &outside)).expect("root symlink");
        u.end().expect("end");
        assert_eq!(fs::read_link(&dest).expect("a link"), outside);
        for bad in ["r/keep", "r/new", "r/sub/new", "r/./keep"] {
            let err = u.begin(entry(bad, 0o4755)).expect_err("refused");
            assert!(err.contains("symbolic link"), "{bad}: {err}");
            assert!(u.write(b"evil").is_err(), "{bad}");
            u.end().expect("end");
        }
        for bad in ["r/../keep", "../outside/keep", "/etc/evil", "r/../../x"] {
            let err = u.begin(entry(bad, 0o644)).expect_err("refused");
            assert!(err.contains("escapes the target directory"), "{bad}: {err}");
        }
        u.finish().expect("finish");
        assert_eq!(fs::read(outside.join("keep")).expect("read"), b"original");
        assert_eq!(listing(&dir), ["", "/dest", "/outside", "/outside/keep"]);
        let _ = fs::remove_dir_all(&dir);
    }

    /// The same below a real root: a link planted by one entry is not
    /// passed through by the next.
    #[test]
    fn a_planted_link_below_the_root_is_not_traversed() {
        let dir = tempdir("planted");
        let outside = dir.join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        fs::write(outside.join("keep"), "original").expect("write");
        let dest = dir.join("dest");
        let mut u = Unpacker::untrusted(dest.clone(), false);
        u.begin(EntryHeader {
            is_dir: true,
            ..entry("r", 0o755)
        })
        .expect("root");
        u.begin(symlink_entry("r/l", &outside)).expect("link");
        for bad in ["r/l/keep", "r/l/sub/x"] {
            let err = u.begin(entry(bad, 0o644)).expect_err("refused");
            assert!(err.contains("symbolic link"), "{bad}: {err}");
        }
        u.finish().expect("finish");
        assert_eq!(fs::read(outside.join("keep")).expect("read"), b"original");
        assert_eq!(
            listing(&dir),
            ["", "/dest", "/dest/l", "/outside", "/outside/keep"]
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// From an untrusted sender, setuid and setgid are dropped unless the
    /// user asked for an archive copy; file-type bits never make a device.
    #[test]
    fn setid_bits_from_an_untrusted_sender_need_archive_mode() {
        let dir = tempdir("setid");
        for (archive, file_mode, dir_mode) in [(false, 0o755, 0o1775), (true, 0o4755, 0o3775)] {
            let dest = dir.join(format!("dest-{archive}"));
            // Owners are what the test user has, so archive mode's chown
            // is a no-op here.
            let me = fs::metadata(&dir).expect("md");
            let owned = |h: EntryHeader| EntryHeader {
                uid: Some(me.uid()),
                gid: Some(me.gid()),
                ..h
            };
            let mut u = Unpacker::untrusted(dest.clone(), archive);
            u.begin(owned(EntryHeader {
                is_dir: true,
                ..entry("r", 0o3775)
            }))
            .expect("root");
            u.begin(owned(entry("r/suid", 0o4755))).expect("begin");
            u.write(b"#!/bin/sh\n").expect("write");
            u.end().expect("end");
            // S_IFCHR | 0o644: still a regular file.
            u.begin(owned(entry("r/dev", 0o020644))).expect("begin");
            u.end().expect("end");
            u.finish().expect("finish");
            let md = |p: &str| fs::symlink_metadata(dest.join(p)).expect("md");
            assert_eq!(md("suid").mode() & 0o7777, file_mode, "archive {archive}");
            assert_eq!(md("").mode() & 0o7777, dir_mode, "archive {archive}");
            assert!(md("dev").file_type().is_file());
            assert_eq!(md("dev").mode() & 0o7777, 0o644);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn parents_must_exist() {
        let dir = tempdir("parent");
        assert!(check_parent(&dir.join("new")).is_ok());
        let err = check_parent(&dir.join("missing/new")).expect_err("refused");
        assert!(err.contains("does not exist"), "{err}");
        fs::write(dir.join("file"), "").expect("write");
        assert!(check_parent(&dir.join("file/new")).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn os_errors_read_like_go() {
        let enoent = std::io::Error::from_raw_os_error(2);
        assert_eq!(io_text(&enoent), "no such file or directory");
    }
}
