//! The content-addressed blob cache shared by all images:
//! `<images>/blobs/sha256/<hex>`.
//!
//! A blob only ever appears under its name complete and verified: it is
//! written to a temp file beside its final place, hashed as it streams in,
//! checked against the expected digest and size, synced, and renamed. A
//! mismatch or an error removes the temp file, so a bad download leaves
//! nothing. Concurrent fetches of one digest are serialised by a per-digest
//! lock, so a layer shared by two images pulled at once is fetched once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lodge_common::paths::ImagePaths;

use crate::digest::{Digest, Hasher};

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {expected} failed verification: content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest} has {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is larger than the {limit} bytes allowed for it")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("blob cache: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn ioe(context: impl Into<String>) -> impl FnOnce(io::Error) -> BlobError {
    let context = context.into();
    move |source| BlobError::Io { context, source }
}

pub struct BlobStore {
    dir: PathBuf,
    locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl BlobStore {
    /// Opens (creating) the cache under `images_dir/blobs/sha256` and removes
    /// temp files a crash left behind.
    pub fn open(images_dir: &Path) -> io::Result<Self> {
        let dir = ImagePaths::new(images_dir).blobs();
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(BlobStore {
            dir,
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Whether the blob is cached (with the expected size, when known).
    pub fn has(&self, d: &Digest, size: Option<u64>) -> bool {
        match std::fs::metadata(self.path(d)) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    /// Serialises work on one digest across concurrent pulls.
    pub async fn lock(&self, d: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(d.clone()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Starts writing a blob that must hash to `expected`.
    pub fn writer(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter, BlobError> {
        let tmp = self.dir.join(format!(
            ".tmp-{}-{:016x}",
            expected.hex(),
            rand::random::<u64>()
        ));
        let file = File::create(&tmp).map_err(ioe(format!("creating {}", tmp.display())))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dest: self.path(expected),
            expected: expected.clone(),
            size,
            hasher: Hasher::new(),
        })
    }

    /// Copies `reader` into the cache as `expected`, verifying it.
    pub fn put_reader(
        &self,
        expected: &Digest,
        size: Option<u64>,
        mut reader: impl Read,
    ) -> Result<(), BlobError> {
        let mut w = self.writer(expected, size)?;
        io::copy(&mut reader, &mut w).map_err(ioe(format!("writing {expected}")))?;
        w.commit()
    }

    /// Moves a file on the same file system into the cache after verifying
    /// that it hashes to `expected` (the file is consumed either way).
    pub fn adopt(&self, file: &Path, expected: &Digest) -> Result<(), BlobError> {
        let result = (|| {
            let mut f = File::open(file).map_err(ioe(format!("reading {}", file.display())))?;
            let mut h = Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(ioe(format!("reading {}", file.display())))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let actual = h.finish();
            if &actual != expected {
                return Err(BlobError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
            f.sync_all().map_err(ioe("syncing blob"))?;
            std::fs::rename(file, self.path(expected)).map_err(ioe(format!("storing {expected}")))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(file);
        }
        result
    }

    /// Reads a small blob (manifest, config) whole, checking its digest
    /// again: these are cheap to verify and decide what else is trusted.
    pub fn read_small(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, BlobError> {
        let path = self.path(d);
        let f = File::open(&path).map_err(ioe(format!("reading {d}")))?;
        let mut bytes = Vec::new();
        f.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(ioe(format!("reading {d}")))?;
        if bytes.len() as u64 > limit {
            return Err(BlobError::TooLarge {
                digest: d.clone(),
                limit,
            });
        }
        let actual = Digest::of(&bytes);
        if &actual != d {
            // A corrupted cache entry: drop it so the next pull fetches it again.
            let _ = std::fs::remove_file(&path);
            return Err(BlobError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// A blob being written; [`commit`](BlobWriter::commit) verifies and
/// publishes it, dropping it uncommitted removes the temp file.
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    expected: Digest,
    size: Option<u64>,
    hasher: Hasher,
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    pub fn commit(mut self) -> Result<(), BlobError> {
        let Some(file) = self.file.take() else {
            return Err(ioe("committing")(io::Error::other(
                "blob writer already closed",
            )));
        };
        let hasher = std::mem::take(&mut self.hasher);
        let len = hasher.len();
        if let Some(size) = self.size {
            if size != len {
                return Err(BlobError::SizeMismatch {
                    digest: self.expected.clone(),
                    expected: size,
                    actual: len,
                });
            }
        }
        let actual = hasher.finish();
        if actual != self.expected {
            return Err(BlobError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        file.sync_data().map_err(ioe("syncing blob"))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(ioe(format!("storing {}", self.expected)))?;
        // Nothing left for Drop to clean.
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer closed"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(size) = self.size {
            if self.hasher.len() > size {
                return Err(io::Error::other(format!(
                    "blob {} is longer than its descriptor's {size} bytes",
                    self.expected
                )));
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("readdir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn verified_blobs_land_and_bad_ones_leave_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(tmp.path()).expect("open");
        let good = Digest::of(b"hello");
        store
            .put_reader(&good, Some(5), &b"hello"[..])
            .expect("good blob");
        assert!(store.has(&good, Some(5)));
        assert_eq!(store.read_small(&good, 100).expect("read"), b"hello");

        let other = Digest::of(b"other");
        let err = store
            .put_reader(&other, Some(5), &b"evil!"[..])
            .expect_err("tampered");
        assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
        let err = store
            .put_reader(&other, Some(5), &b"other and more"[..])
            .expect_err("too long");
        assert!(matches!(err, BlobError::Io { .. }), "{err}");
        let err = store
            .put_reader(&other, Some(9), &b"other"[..])
            .expect_err("short");
        assert!(matches!(err, BlobError::SizeMismatch { .. }), "{err}");
        assert!(!store.has(&other, None));
        assert_eq!(
            files(&tmp.path().join("blobs/sha256")),
            vec![good.hex().to_string()]
        );
    }

    #[test]
    fn corrupted_cache_entries_are_dropped_on_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(tmp.path()).expect("open");
        let d = Digest::of(b"{}");
        store.put_reader(&d, None, &b"{}"[..]).expect("put");
        std::fs::write(store.path(&d), b"[]").expect("corrupt");
        assert!(store.read_small(&d, 10).is_err());
        assert!(!store.has(&d, None));
    }
}
