//! Where a pull's content comes from, decided before the job starts: a
//! registry reference, an archive file beneath the one import directory,
//! or an archive uploaded in a request body (docker's `load`). An API client
//! names no other host file: a path outside the import directory is refused
//! before anything is opened, and a path inside it is opened with
//! `RESOLVE_BENEATH`, so neither `..` nor a symlink leads out.
//!
//! Also here: the free-space check every pull and upload makes, since the
//! image store's file system is shared with the instances' disks.

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use oci_client::Reference;
use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;
use tokio::io::AsyncWriteExt;

use super::state::Images;
use crate::archive::{ArchiveFormat, ArchiveInput};
use crate::error::{internal, invalid, io, Error, ErrorKind, Result};

/// What a started job pulls from.
#[derive(Clone)]
pub(super) enum Origin {
    Registry(Reference),
    Archive {
        format: ArchiveFormat,
        input: Arc<ArchiveInput>,
        reference: Option<String>,
    },
}

/// How to send an archive instead of naming a path (in refusals).
pub const UPLOAD_HINT: &str = "upload the archive instead: `lodge pull oci-archive:PATH` (or docker-archive:PATH) sends the file, or POST /images/load?format=oci (or docker) with the tar as the request body";

/// Sizes in messages: `1.5GiB`, `300MiB`, `12KiB`, `512B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else if v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// Bytes free for unprivileged use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| internal(format!("checking free space in {}: {e}", dir.display())))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Images {
    /// Refuses work that needs `needed` bytes when that would leave less
    /// than the configured minimum free in the image store.
    pub(super) fn ensure_free(&self, needed: u64, what: &str) -> Result<()> {
        let free = free_bytes(&self.dir)?;
        if free < needed.saturating_add(self.opts.min_free) {
            let need = if needed > 0 {
                format!("{what} needs {}, ", human(needed))
            } else {
                format!("{what}: ")
            };
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "{need}{} is free in the image store and {} must stay free (LODGE_IMAGE_MIN_FREE)",
                    human(free),
                    human(self.opts.min_free)
                ),
            ));
        }
        Ok(())
    }

    /// Opens an archive a pull request names: only beneath the import
    /// directory, never through `..` or a symlink leading out of it.
    pub(super) fn open_import(&self, path: &Path) -> Result<File> {
        let Some(dir) = &self.opts.import_dir else {
            return Err(invalid(format!(
                "archive {}: this daemon reads no archive files (it has no import directory); {UPLOAD_HINT}",
                path.display()
            )));
        };
        let outside = || {
            invalid(format!(
                "archive {}: the daemon reads archive files only from its import directory {}; {UPLOAD_HINT}",
                path.display(),
                dir.display()
            ))
        };
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(outside());
        }
        let canonical = std::fs::canonicalize(dir).ok();
        let rel = std::iter::once(dir.as_path())
            .chain(canonical.as_deref())
            .find_map(|d| path.strip_prefix(d).ok())
            .filter(|r| !r.as_os_str().is_empty())
            .ok_or_else(outside)?;
        let dirfd = rustix::fs::openat(
            CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            internal(format!(
                "opening the import directory {}: {e}",
                dir.display()
            ))
        })?;
        let fd = rustix::fs::openat2(
            &dirfd,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            Errno::NOENT | Errno::NOTDIR => Error::new(
                ErrorKind::NotFound,
                format!("archive {} not found", path.display()),
            ),
            Errno::XDEV | Errno::LOOP => invalid(format!(
                "archive {}: a symlink on the path leads out of the import directory",
                path.display()
            )),
            e => invalid(format!("archive {}: {e}", path.display())),
        })?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| internal(format!("archive {}: {e}", path.display())))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(invalid(format!(
                "archive {} is not a regular file",
                path.display()
            )));
        }
        Ok(File::from(fd))
    }

    /// Starts receiving an archive upload of `declared` bytes (if the client
    /// said): refused at once when over the size limit or the free space.
    pub fn begin_upload(&self, declared: Option<u64>) -> Result<Upload> {
        let max = self.opts.max_image_size;
        if let Some(n) = declared.filter(|&n| n > max) {
            return Err(too_large_upload(n, max));
        }
        self.ensure_free(declared.unwrap_or(0), "the upload")?;
        let path = self
            .paths()
            .tmp()
            .join(format!("upload-{:016x}.tar", rand::random::<u64>()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io("creating the upload file"))?;
        Ok(Upload {
            file: Some(tokio::fs::File::from_std(file)),
            path,
            dir: self.dir.clone(),
            written: 0,
            checked_at: 0,
            max,
            min_free: self.opts.min_free,
        })
    }
}

fn too_large_upload(n: u64, max: u64) -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!(
            "the archive ({} so far) is over the {} limit (LODGE_MAX_IMAGE_SIZE)",
            human(n),
            human(max)
        ),
    )
}

/// An archive being received into the image store's temp directory. It is
/// removed when dropped unless handed to [`Images::load`].
pub struct Upload {
    file: Option<tokio::fs::File>,
    path: PathBuf,
    dir: PathBuf,
    written: u64,
    checked_at: u64,
    max: u64,
    min_free: u64,
}

impl Upload {
    /// Appends a chunk; fails (and the upload is dropped) past the size
    /// limit or when the store runs low on space.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written = self.written.saturating_add(chunk.len() as u64);
        if self.written > self.max {
            return Err(too_large_upload(self.written, self.max));
        }
        if self.written - self.checked_at >= 64 << 20 {
            self.checked_at = self.written;
            let free = free_bytes(&self.dir)?;
            if free < self.min_free {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!(
                        "the upload stopped: {} is free in the image store and {} must stay free (LODGE_IMAGE_MIN_FREE)",
                        human(free),
                        human(self.min_free)
                    ),
                ));
            }
        }
        let Some(f) = self.file.as_mut() else {
            return Err(internal("the upload is closed"));
        };
        f.write_all(chunk).await.map_err(io("writing the upload"))
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The received archive, open for reading; its name is unlinked (the
    /// open file keeps the data until the import ends).
    pub(super) async fn finish(mut self) -> Result<File> {
        if let Some(mut f) = self.file.take() {
            f.flush().await.map_err(io("writing the upload"))?;
        }
        let file = File::open(&self.path).map_err(io("reopening the upload"))?;
        std::fs::remove_file(&self.path).map_err(io("unlinking the upload"))?;
        Ok(file)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("removing upload {}: {e}", self.path.display())
            }
            _ => {}
        }
    }
}
