//! Where a pull's manifest and config come from: a registry (resolving an
//! index to the wanted platform) or an archive imported into the blob
//! cache. Both end in the same layer pipeline ([`super::build`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::build::Built;
use super::state::{Images, Progress};
use crate::archive;
use crate::digest::Digest;
use crate::error::{internal, io, Error, ErrorKind, Result};
use crate::oci::AnyManifest;
use crate::platform::Platform;
use crate::reference::Source;
use crate::registry::{Credentials, Remote};
use crate::store::ImageRecord;

impl Images {
    pub(super) async fn fetch_and_build(
        self: &Arc<Self>,
        record: &mut ImageRecord,
        source: &Source,
        platform: &Platform,
        creds: Option<&Credentials>,
        progress: &Arc<Mutex<Progress>>,
        tmp: &Path,
    ) -> Result<Built> {
        std::fs::create_dir_all(tmp).map_err(io("creating a work directory"))?;
        match source {
            Source::Registry(reference) => {
                let remote = Remote::new(reference, &self.opts.registry, creds);
                let (bytes, digest) = remote.manifest(None).await?;
                self.store_small(&digest, &bytes)?;
                let parsed = AnyManifest::parse(&bytes)
                    .map_err(|e| Error::new(ErrorKind::Registry, format!("{reference}: {e}")))?;
                let (manifest_digest, manifest, index_digest) = match parsed {
                    AnyManifest::Image(m) => (digest, m, None),
                    AnyManifest::Index(idx) => {
                        let chosen = idx
                            .select(platform)
                            .map_err(|e| {
                                Error::new(ErrorKind::PlatformNotFound, format!("{reference}: {e}"))
                            })?
                            .digest
                            .clone();
                        let (b, d) = remote.manifest(Some(&chosen)).await?;
                        self.store_small(&d, &b)?;
                        match AnyManifest::parse(&b).map_err(|e| {
                            Error::new(ErrorKind::Registry, format!("{reference}: {e}"))
                        })? {
                            AnyManifest::Image(m) => (d, m, Some(digest)),
                            AnyManifest::Index(_) => {
                                return Err(Error::new(
                                    ErrorKind::Unsupported,
                                    format!("{reference}: nested image indexes are not supported"),
                                ))
                            }
                        }
                    }
                };
                if !self
                    .blobs
                    .has(&manifest.config.digest, Some(manifest.config.size))
                {
                    let _g = self.blobs.lock(&manifest.config.digest).await;
                    if !self
                        .blobs
                        .has(&manifest.config.digest, Some(manifest.config.size))
                    {
                        remote
                            .blob_into(&manifest.config, &self.blobs, |_| {})
                            .await?;
                    }
                }
                self.build(
                    record,
                    manifest_digest,
                    index_digest,
                    manifest,
                    platform,
                    Some(&remote),
                    progress,
                    tmp,
                )
                .await
            }
            Source::OciArchive { .. } | Source::DockerArchive { .. } => {
                let (s, stage, p) = (source.clone(), tmp.join("stage"), platform.clone());
                let this = self.clone();
                let resolved = tokio::task::spawn_blocking(move || {
                    archive::import(&s, &stage, &this.blobs, &p)
                })
                .await
                .map_err(|e| internal(format!("import task: {e}")))??;
                let _ = std::fs::remove_dir_all(tmp.join("stage"));
                self.build(
                    record,
                    resolved.manifest_digest,
                    resolved.index_digest,
                    resolved.manifest,
                    platform,
                    None,
                    progress,
                    tmp,
                )
                .await
            }
        }
    }

    pub(super) fn store_small(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        if !self.blobs.has(digest, Some(bytes.len() as u64)) {
            self.blobs
                .put_reader(digest, Some(bytes.len() as u64), bytes)?;
        }
        Ok(())
    }
}
