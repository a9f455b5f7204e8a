//! The [`Volumes`] manager: create (empty, or from a tar archive), list,
//! get, delete, and the lock the instance manager holds while it decides
//! an attachment.
//!
//! Who a volume is attached to is not stored here: the instance records
//! are the one source of truth (as an image's users are), read through the
//! [`AttachmentsFn`] the daemon supplies. Decisions that depend on it (a
//! delete, an attach) are made under one lock ([`Volumes::lock`]) so two
//! of them never both see a volume free.
//!
//! A create claims its name and id first (a second create of either is
//! refused at once), builds the volume under a staging name and renames it
//! into place: a failure at any step (a bad archive, a full disk, mkfs)
//! removes the staging directory and leaves nothing behind.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lodge_common::size::ByteSize;
use lodge_images::unpack::{Limits, UnpackError, Unpacker};

use crate::error::{io, Error, Result};
use crate::mkfs;
use crate::rules::{self, Attachment, GB};
use crate::store::{self, Layout, VolumeRecord};

/// Default of [`Options::min_free`]: 1 GiB.
pub const DEFAULT_MIN_FREE: u64 = 1 << 30;
/// Default of [`Options::max_archive`]: 64 GiB.
pub const DEFAULT_MAX_ARCHIVE: u64 = 64 << 30;

/// Settings of the volume store.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Creates stop when less than this is free on the store's file system.
    pub min_free: u64,
    /// The most an archive without `size_gb` may unpack to.
    pub max_archive: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_free: DEFAULT_MIN_FREE,
            max_archive: DEFAULT_MAX_ARCHIVE,
        }
    }
}

impl Options {
    /// `LODGE_VOLUME_MIN_FREE` (default 1GiB) and `LODGE_VOLUME_MAX_ARCHIVE`
    /// (default 64GiB).
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str, default: u64| match std::env::var(name) {
            Ok(s) if !s.trim().is_empty() => {
                lodge_common::size::parse_size(&s).map_err(|e| format!("{name} {s:?}: {e}"))
            }
            _ => Ok(default),
        };
        Ok(Options {
            min_free: var("LODGE_VOLUME_MIN_FREE", DEFAULT_MIN_FREE)?,
            max_archive: var("LODGE_VOLUME_MAX_ARCHIVE", DEFAULT_MAX_ARCHIVE)?,
        })
    }
}

/// The attachments of a volume id, read from the instance records; an
/// error means they could not be read (the volume is then taken as busy).
pub type AttachmentsFn = Arc<dyn Fn(&str) -> Result<Vec<Attachment>, String> + Send + Sync>;

/// What a create asks for, already parsed ([`rules::parse_size_gb`]).
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub id: Option<String>,
    pub name: String,
    /// Required for an empty volume; for an archive, `None` sizes the
    /// volume from its content.
    pub size_gb: Option<u64>,
    pub tags: BTreeMap<String, String>,
}

/// A volume with its current attachments (hypeman's `Volume`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub record: VolumeRecord,
    pub attachments: Vec<Attachment>,
}

/// The volume store.
pub struct Volumes {
    layout: Layout,
    opts: Options,
    attachments: AttachmentsFn,
    /// Names and ids of creates in progress.
    claims: Mutex<HashSet<String>>,
    /// Held while a decision depends on who is attached.
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// Releases a create's claims however it ends.
struct Claim<'a> {
    volumes: &'a Volumes,
    keys: [String; 2],
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut claims = self
            .volumes
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            claims.remove(k);
        }
    }
}

impl Volumes {
    /// Opens (creating if needed) the store at `dir`, removing debris of
    /// interrupted creates and deletes.
    pub fn open(dir: &Path, opts: Options, attachments: AttachmentsFn) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let layout = Layout {
            dir: dir.to_path_buf(),
        };
        layout.sweep();
        Ok(Volumes {
            layout,
            opts,
            attachments,
            claims: Mutex::new(HashSet::new()),
            lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The disk of volume `id` (for the VMM's command line).
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.layout.data(id)
    }

    /// Held by whoever decides from the attachments (attach, delete).
    pub async fn lock(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.lock.clone().lock_owned().await
    }

    /// The record of a volume by id, or else by name.
    pub fn resolve(&self, key: &str) -> Result<VolumeRecord> {
        let all = self.records()?;
        all.iter()
            .find(|r| r.id == key)
            .or_else(|| all.iter().find(|r| r.name == key))
            .cloned()
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    fn records(&self) -> Result<Vec<VolumeRecord>> {
        self.layout
            .records()
            .map_err(io(format!("listing {}", self.layout.dir.display())))
    }

    /// Before a read-only attachment of a volume nobody has attached:
    /// replays a journal a writer left dirty (see [`mkfs::replay_journal`]).
    /// Call under [`Volumes::lock`].
    pub async fn settle_for_readers(&self, id: &str) -> Result<()> {
        if !self.attachments_of(id)?.is_empty() {
            return Ok(());
        }
        let disk = self.layout.data(id);
        tokio::task::spawn_blocking(move || mkfs::replay_journal(&disk))
            .await
            .map_err(|_| Error::Task {
                what: "journal replay",
            })?
    }

    /// Who `id` is attached to.
    pub fn attachments_of(&self, id: &str) -> Result<Vec<Attachment>> {
        (self.attachments)(id).map_err(|e| Error::Io {
            context: format!("reading the attachments of volume {id}"),
            source: std::io::Error::other(e),
        })
    }

    fn view(&self, record: VolumeRecord) -> Result<Volume> {
        let attachments = self.attachments_of(&record.id)?;
        Ok(Volume {
            record,
            attachments,
        })
    }

    pub fn list(&self) -> Result<Vec<Volume>> {
        self.records()?.into_iter().map(|r| self.view(r)).collect()
    }

    pub fn get(&self, key: &str) -> Result<Volume> {
        self.view(self.resolve(key)?)
    }

    /// Checks the request and claims its name and id.
    fn claim(&self, req: &CreateRequest) -> Result<(String, Claim<'_>)> {
        rules::check_name(&req.name)?;
        let id = match &req.id {
            Some(id) => {
                rules::check_id(id)?;
                id.clone()
            }
            None => rules::new_id(),
        };
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let all = self.records()?;
        if claims.contains(&format!("name:{}", req.name)) || all.iter().any(|r| r.name == req.name)
        {
            return Err(Error::NameTaken(req.name.clone()));
        }
        if claims.contains(&format!("id:{id}"))
            || all.iter().any(|r| r.id == id)
            || self.layout.volume(&id).exists()
        {
            return Err(Error::IdTaken(id));
        }
        let keys = [format!("name:{}", req.name), format!("id:{id}")];
        for k in &keys {
            claims.insert(k.clone());
        }
        drop(claims);
        Ok((
            id,
            Claim {
                volumes: self,
                keys,
            },
        ))
    }

    fn check_free(&self) -> Result<()> {
        let st = rustix::fs::statvfs(&self.layout.dir)
            .map_err(|e| io("checking free space")(e.into()))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < self.opts.min_free {
            return Err(Error::NoSpace {
                free: ByteSize(free),
                min_free: ByteSize(self.opts.min_free),
            });
        }
        Ok(())
    }

    /// An empty volume of `size_gb`.
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<Volume> {
        let Some(size_gb) = req.size_gb else {
            return Err(Error::InvalidSize {
                given: "(absent)".into(),
                reason: "size_gb is required".into(),
            });
        };
        let size_gb = rules::check_size_gb(size_gb)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let (id, _claim) = this.claim(&req)?;
            this.check_free()?;
            this.build(&id, &req, |staging| {
                mkfs::make(&staging.join(store::DATA), size_gb * GB, None)?;
                Ok(size_gb)
            })
        })
        .await
        .map_err(|_| Error::Task { what: "create" })?
    }

    /// A volume holding the tree of a tar archive (gzip, zstd or plain),
    /// read from `body`, unpacked with the image layers' rules (nothing
    /// outside the tree, bounded size and free disk). Sized from the
    /// content when `size_gb` is `None`.
    pub async fn create_from_archive(
        self: &Arc<Self>,
        req: CreateRequest,
        body: Box<dyn Read + Send>,
    ) -> Result<Volume> {
        if let Some(gb) = req.size_gb {
            rules::check_size_gb(gb)?;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let (id, _claim) = this.claim(&req)?;
            this.check_free()?;
            this.build(&id, &req, |staging| {
                this.unpack_and_format(staging, &req, body)
            })
        })
        .await
        .map_err(|_| Error::Task { what: "import" })?
    }

    fn unpack_and_format(
        &self,
        staging: &Path,
        req: &CreateRequest,
        body: Box<dyn Read + Send>,
    ) -> Result<u64> {
        let tree = staging.join("tree");
        std::fs::create_dir(&tree).map_err(io(format!("creating {}", tree.display())))?;
        let max_bytes = req.size_gb.map_or(self.opts.max_archive, |gb| gb * GB);
        let limits = Limits {
            max_bytes,
            min_free: self.opts.min_free,
        };
        let mut counted = CountingReader { inner: body, n: 0 };
        let mut unpacker = Unpacker::new(&tree)
            .map_err(io(format!("opening {}", tree.display())))?
            .with_limits(limits);
        let applied = unpacker.apply(&mut counted);
        if counted.n == 0 {
            return Err(Error::EmptyArchive);
        }
        applied.map_err(|e| archive_error(e, req.size_gb, max_bytes))?;
        unpacker
            .finish()
            .map_err(|e| archive_error(e, req.size_gb, max_bytes))?;
        let (bytes, inodes) = lodge_images::disk::measure(&tree).map_err(|e| Error::Io {
            context: "measuring the archive's content".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let needed = mkfs::gb_for(bytes, inodes);
        let size_gb = match req.size_gb {
            Some(gb) if gb < needed => {
                return Err(Error::ContentTooLarge {
                    content: ByteSize(bytes),
                    size_gb: gb,
                })
            }
            Some(gb) => gb,
            None => needed,
        };
        let made = mkfs::make(&staging.join(store::DATA), size_gb * GB, Some(&tree));
        // The tree is only the source of the disk: gone either way.
        if let Err(e) = lodge_images::unpack::remove_tree(&tree) {
            tracing::warn!("removing {}: {e}", tree.display());
        }
        match made {
            Err(Error::Mkfs { stderr, .. })
                if req.size_gb.is_some()
                    && (stderr.contains("Could not allocate")
                        || stderr.contains("No space left on device")) =>
            {
                Err(Error::ContentTooLarge {
                    content: ByteSize(bytes),
                    size_gb,
                })
            }
            other => other.map(|()| size_gb),
        }
    }

    /// Builds a volume under its staging name with `fill` (which makes
    /// `data.raw` and says the size), writes its record and renames it
    /// into place; any failure removes the staging directory.
    fn build(
        &self,
        id: &str,
        req: &CreateRequest,
        fill: impl FnOnce(&Path) -> Result<u64>,
    ) -> Result<Volume> {
        let staging = self.layout.creating(id);
        let result = (|| {
            std::fs::create_dir(&staging).map_err(io(format!("creating {}", staging.display())))?;
            let size_gb = fill(&staging)?;
            let record = VolumeRecord {
                id: id.to_string(),
                name: req.name.clone(),
                size_gb,
                created_at: lodge_common::time::now_rfc3339(),
                tags: req.tags.clone(),
            };
            store::save(&staging, &record).map_err(io("writing the volume record"))?;
            std::fs::rename(&staging, self.layout.volume(id))
                .map_err(io(format!("creating volume {id}")))?;
            Ok(record)
        })();
        match result {
            Ok(record) => Ok(Volume {
                record,
                attachments: Vec::new(),
            }),
            Err(e) => {
                match std::fs::remove_dir_all(&staging) {
                    Ok(()) => {}
                    Err(c) if c.kind() == std::io::ErrorKind::NotFound => {}
                    Err(c) => {
                        tracing::warn!("removing {} after a failed create: {c}", staging.display())
                    }
                }
                Err(e)
            }
        }
    }

    /// Deletes a volume; refused while any instance names it.
    pub async fn delete(self: &Arc<Self>, key: &str) -> Result<()> {
        let _guard = self.lock().await;
        let record = self.resolve(key)?;
        let attached = self.attachments_of(&record.id)?;
        if !attached.is_empty() {
            let mut ids: Vec<&str> = attached.iter().map(|a| a.instance_id.as_str()).collect();
            ids.dedup();
            return Err(Error::InUse {
                volume: record.id,
                instances: ids.join(", "),
            });
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let trash = this.layout.deleting(&record.id);
            std::fs::rename(this.layout.volume(&record.id), &trash)
                .map_err(io(format!("deleting volume {}", record.id)))?;
            std::fs::remove_dir_all(&trash).map_err(io(format!("removing {}", trash.display())))
        })
        .await
        .map_err(|_| Error::Task { what: "delete" })?
    }
}

/// An unpack failure in this store's words (the unpacker's own messages
/// name the image settings).
fn archive_error(e: UnpackError, size_gb: Option<u64>, max_bytes: u64) -> Error {
    match e {
        UnpackError::TooLarge { .. } => match size_gb {
            Some(size_gb) => Error::ArchiveOverSize { size_gb },
            None => Error::ArchiveTooLarge {
                limit: ByteSize(max_bytes),
            },
        },
        UnpackError::NoSpace { free, min_free } => Error::NoSpace { free, min_free },
        other => Error::Archive(other),
    }
}

/// Counts the bytes an archive reader gives (to tell "no body" apart).
struct CountingReader {
    inner: Box<dyn Read + Send>,
    n: u64,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}
