//! The few OCI (and Docker v2) JSON documents lodge reads and writes:
//! descriptors, image manifests, indexes and the image configuration.
//!
//! Only the fields lodge acts on are typed; the rest is ignored on reading.
//! Docker's v2 media types are accepted alongside OCI's, as every registry
//! still serves them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Manifest media types a pull accepts, best first.
pub const MANIFEST_TYPES: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Annotation naming an index entry (`latest`, or a full reference).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation with the full image name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Whether a layer media type is one lodge can unpack. Layers are
/// decompressed by content, so this only rules out foreign artifacts
/// (encrypted layers, non-distributable markers are still tars).
pub fn is_layer_type(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_LAYER_TAR
            | OCI_LAYER_GZIP
            | OCI_LAYER_ZSTD
            | DOCKER_LAYER_GZIP
            | DOCKER_LAYER_TAR
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Foreign layers' download locations; lodge never follows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorPlatform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl DescriptorPlatform {
    pub fn of(p: &Platform) -> Self {
        DescriptorPlatform {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// Picks `platform`'s manifest; the error lists what the index offers.
    pub fn select(&self, platform: &Platform) -> Result<&Descriptor, String> {
        let fits = |d: &&Descriptor| {
            d.platform
                .as_ref()
                .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
        };
        if let Some(d) = self.manifests.iter().find(fits) {
            return Ok(d);
        }
        let offered: Vec<String> = self
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .filter(|p| p.os != "unknown")
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        Err(format!(
            "the image has no {platform} variant (it offers: {})",
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join(", ")
            }
        ))
    }
}

/// A manifest document of either kind.
#[derive(Debug, Clone)]
pub enum AnyManifest {
    Image(Manifest),
    Index(Index),
}

impl AnyManifest {
    /// Parses by the `mediaType` field, or by shape when it is absent (OCI
    /// makes it optional).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| crate::error::json_failure("the manifest", &e))?;
        let media = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
        if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
            return Err(
                "docker schema 1 manifests are not supported (the image is too old)".into(),
            );
        }
        let is_index = match media {
            OCI_INDEX | DOCKER_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            "" => v.get("manifests").is_some(),
            other => return Err(format!("unsupported manifest media type {other:?}")),
        };
        if is_index {
            serde_json::from_value(v)
                .map(AnyManifest::Index)
                .map_err(|e| crate::error::json_failure("the image index", &e))
        } else {
            serde_json::from_value(v)
                .map(AnyManifest::Image)
                .map_err(|e| crate::error::json_failure("the image manifest", &e))
        }
    }
}

/// The image configuration blob (only what running the image needs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    #[serde(default)]
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: Digest::of(format!("{os}/{arch}/{variant:?}").as_bytes()),
            size: 1,
            platform: Some(DescriptorPlatform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(str::to_owned),
            }),
            annotations: BTreeMap::new(),
            urls: Vec::new(),
        }
    }

    #[test]
    fn index_selects_the_platform_or_lists_the_offer() {
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                entry("unknown", "unknown", None),
                entry("linux", "arm64", Some("v8")),
                entry("linux", "amd64", None),
            ],
            annotations: BTreeMap::new(),
        };
        let amd64 = Platform::parse("linux/amd64").expect("valid");
        assert_eq!(index.select(&amd64), Ok(&index.manifests[2]));
        let arm64 = Platform::parse("linux/arm64").expect("valid");
        assert_eq!(index.select(&arm64), Ok(&index.manifests[1]));
        let only_arm = Index {
            manifests: vec![entry("linux", "arm64", Some("v8"))],
            ..index.clone()
        };
        assert_eq!(
            only_arm.select(&amd64),
            Err("the image has no linux/amd64 variant (it offers: linux/arm64/v8)".into())
        );
    }
}
