//! Turning a file tree into copy entries ([`Walk`]) and entries back into
//! a tree ([`Unpacker`]); shared by the guest agent and the `lodge cp` CLI,
//! so both directions of a copy follow one set of rules:
//!
//! - Entries are streamed: a walk opens one directory at a time, and file
//!   contents pass through in chunks, never whole.
//! - Modes (including setuid, setgid, sticky) and modification times are
//!   kept; owners only when asked (archive mode).
//! - Every entry path is checked ([`super::paths`]), and an entry is never
//!   written through a symlink or anything else that is not a real
//!   directory, so a hostile stream cannot land a file outside the
//!   destination. An existing file or symlink in an entry's place is
//!   replaced, not written through.
//! - Directories are created owner-writable and get their own mode and time
//!   at the end, so a read-only directory can still be filled and its time
//!   is not changed by its own contents.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

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
    file: File,
    dest: PathBuf,
    header: EntryHeader,
}

/// Writes a stream of entries under one destination (see the module docs).
pub struct Unpacker {
    root: PathBuf,
    keep_owner: bool,
    current: Option<Receiving>,
    /// Directories to give their mode and time at the end.
    dirs: Vec<(PathBuf, EntryHeader)>,
    bytes: u64,
}

impl Unpacker {
    /// Unpack into `root`: the stream's first entry (its root) becomes
    /// `root` itself. Owners in headers are applied only if `keep_owner`.
    pub fn new(root: PathBuf, keep_owner: bool) -> Unpacker {
        Unpacker {
            root,
            keep_owner,
            current: None,
            dirs: Vec::new(),
            bytes: 0,
        }
    }

    /// Where entry `components` (below the root) lands, creating missing
    /// parents and refusing to pass through anything but directories.
    fn destination(&self, components: &[&str], entry: &str) -> Result<PathBuf, String> {
        let mut dest = self.root.clone();
        let Some((last, parents)) = components.split_last() else {
            return Ok(dest);
        };
        for part in parents {
            dest.push(part);
            match fs::symlink_metadata(&dest) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(format!(
                    "archive entry {entry:?} escapes the target directory: {} is not a directory",
                    dest.display()
                ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir(&dest)
                    .map_err(|e| format!("create {}: {}", dest.display(), io_text(&e)))?,
                Err(e) => return Err(format!("{}: {}", dest.display(), io_text(&e))),
            }
        }
        dest.push(last);
        Ok(dest)
    }

    fn owner(&self, path: &Path, header: &EntryHeader, symlink: bool) -> Result<(), String> {
        if !self.keep_owner || (header.uid.is_none() && header.gid.is_none()) {
            return Ok(());
        }
        let done = if symlink {
            std::os::unix::fs::lchown(path, header.uid, header.gid)
        } else {
            std::os::unix::fs::chown(path, header.uid, header.gid)
        };
        done.map_err(|e| format!("chown {}: {}", path.display(), io_text(&e)))
    }

    /// Start an entry; a file's contents follow through [`Unpacker::write`].
    pub fn begin(&mut self, header: EntryHeader) -> Result<(), String> {
        if self.current.is_some() {
            return Err("an entry started before the previous one ended".into());
        }
        let components = below_root(&header.path).map_err(|e| e.to_string())?;
        let dest = self.destination(&components, &header.path)?;
        let shown = dest.display().to_string();
        let existing = fs::symlink_metadata(&dest).ok();
        if header.is_dir {
            match &existing {
                Some(md) if md.is_dir() => {}
                Some(_) => {
                    return Err(format!(
                        "cannot overwrite non-directory {shown} with a directory"
                    ))
                }
                None => fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dest)
                    .map_err(|e| format!("create {shown}: {}", io_text(&e)))?,
            }
            self.owner(&dest, &header, false)?;
            if let Some(md) = fs::symlink_metadata(&dest)
                .ok()
                .filter(|m| m.mode() & 0o700 != 0o700)
            {
                // Fill it first; its own mode comes at the end.
                let _ = fs::set_permissions(&dest, fs::Permissions::from_mode(md.mode() | 0o700));
            }
            self.dirs.push((dest, header));
            return Ok(());
        }
        match &existing {
            Some(md) if md.is_dir() => {
                return Err(format!(
                    "cannot overwrite directory {shown} with a non-directory"
                ))
            }
            Some(_) => {
                fs::remove_file(&dest).map_err(|e| format!("replace {shown}: {}", io_text(&e)))?
            }
            None => {}
        }
        if header.is_symlink {
            std::os::unix::fs::symlink(&header.link_target, &dest)
                .map_err(|e| format!("create symlink {shown}: {}", io_text(&e)))?;
            return self.owner(&dest, &header, true);
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .map_err(|e| format!("create {shown}: {}", io_text(&e)))?;
        self.current = Some(Receiving { file, dest, header });
        Ok(())
    }

    /// Contents of the current file entry.
    pub fn write(&mut self, data: &[u8]) -> Result<(), String> {
        let Some(r) = self.current.as_mut() else {
            return Err("file contents outside a file entry".into());
        };
        r.file
            .write_all(data)
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
        // Owner first: chown clears the setuid and setgid bits.
        self.owner(&r.dest, &r.header, false)?;
        r.file
            .set_permissions(fs::Permissions::from_mode(r.header.mode & 0o7777))
            .map_err(|e| format!("chmod {shown}: {}", io_text(&e)))?;
        if r.header.mtime > 0 {
            r.file
                .set_modified(UNIX_EPOCH + Duration::from_secs(r.header.mtime as u64))
                .map_err(|e| format!("set the time of {shown}: {}", io_text(&e)))?;
        }
        Ok(())
    }

    /// The stream is complete: finish the last entry, give directories
    /// their modes and times (deepest first). Returns the bytes written.
    pub fn finish(mut self) -> Result<u64, String> {
        self.end()?;
        for (dir, header) in self.dirs.iter().rev() {
            let shown = dir.display();
            fs::set_permissions(dir, fs::Permissions::from_mode(header.mode & 0o7777))
                .map_err(|e| format!("chmod {shown}: {}", io_text(&e)))?;
            if header.mtime > 0 {
                // Best effort: opening needs read permission on the directory.
                if let Ok(d) = File::open(dir) {
                    let _ = d.set_modified(UNIX_EPOCH + Duration::from_secs(header.mtime as u64));
                }
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
