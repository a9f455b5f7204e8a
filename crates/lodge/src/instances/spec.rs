//! What a create asks for, as types: the request the API translates HTTP
//! into ([`CreateRequest`]), and the resolved, validated spec the manager
//! builds an instance from ([`CreateSpec`]).
//!
//! Everything here is pure (no I/O but two `stat`s of the root source), so
//! the rules are unit-tested; the manager supplies the image (it owns the
//! image store) and turns a request into a spec with [`CreateSpec::resolve`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use lodge_hypervisor::HypervisorKind;
use lodge_images::runconfig::{self, RunConfig};

use super::naming::Name;
pub use super::net::NetworkRequest;

/// Default resources, as hypeman's.
pub const DEFAULT_VCPUS: u32 = 2;
pub const DEFAULT_MEMORY: u64 = 1 << 30;
pub const DEFAULT_OVERLAY: u64 = 1 << 30;
pub const MAX_VCPUS: u32 = 64;
/// The hypervisor of an instance whose request names none.
pub const DEFAULT_HYPERVISOR: HypervisorKind = HypervisorKind::Qemu;
const MIN_MEMORY: u64 = 64 << 20;
const MIN_OVERLAY: u64 = 16 << 20;

/// A create as the API received it, already typed.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: Name,
    pub hypervisor: HypervisorKind,
    pub root: RootRequest,
    pub vcpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub overlay_bytes: Option<u64>,
    pub run: RunOverrides,
    /// hypeman's `network`; whether it can be honoured is the manager's
    /// call (it knows whether the daemon has a network).
    pub network: NetworkRequest,
    /// User tags, validated by the API (`crate::tags`).
    pub tags: BTreeMap<String, String>,
    /// hypeman's TTL, as the time it ends.
    pub expires_at: Option<std::time::SystemTime>,
    pub restart_policy: Option<super::policy::RestartPolicy>,
    pub health_check: Option<super::health::HealthCheck>,
    /// hypeman's `volumes`: attached at create, mounted before the
    /// workload starts.
    pub volumes: Vec<VolumeRequest>,
    /// hypeman's `auto_standby`, normalised by the API.
    pub auto_standby: Option<super::auto_standby::AutoStandbyPolicy>,
    /// hypeman's `disk_io_bps`: bytes per second each of the VM's disks
    /// (its own and its volumes') may move, reads and writes together.
    pub disk_io_bps: Option<u64>,
}

/// Most volumes one instance may have attached (an overlay attachment
/// takes two of the VM's hot-plug slots, a plain one takes one).
pub const MAX_VOLUMES: usize = 8;

/// One volume to attach, as asked for (hypeman's `VolumeMount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    /// Volume id or name.
    pub volume: String,
    pub mount_path: String,
    pub readonly: bool,
    /// A per-instance overlay over the read-only volume, of this size.
    pub overlay: Option<u64>,
}

/// What the instance boots, as asked for.
#[derive(Debug, Clone)]
pub enum RootRequest {
    /// A host directory (`rootfs`).
    Dir(PathBuf),
    /// An image reference, pulled first if it is not local.
    Image {
        reference: String,
        /// hypeman's `os/arch[/variant]`; `None` is the host's.
        platform: Option<String>,
    },
}

/// The request's overrides of what the program runs; with an image, unset
/// fields take the image's configuration (docker's rules).
#[derive(Debug, Clone, Default)]
pub struct RunOverrides {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
}

/// Where the root file system of a new instance comes from.
#[derive(Debug, Clone)]
pub enum RootSource {
    /// A host directory, made into a disk for this instance (`--rootfs`).
    Dir(PathBuf),
    /// A pulled image: the instance boots the image's shared read-only
    /// disk in place (never copied); its writes go to the overlay disk.
    Image {
        name: String,
        digest: String,
        disk: PathBuf,
    },
}

/// A resolved create: every default applied.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub name: Name,
    pub hypervisor: HypervisorKind,
    pub root: RootSource,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub overlay_bytes: u64,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    /// Numeric `uid[:gid]` to run as (an image's `User`); `None` is root.
    pub user: Option<String>,
    pub network: NetworkRequest,
    pub tags: BTreeMap<String, String>,
    pub expires_at: Option<std::time::SystemTime>,
    pub restart_policy: Option<super::policy::RestartPolicy>,
    pub health_check: Option<super::health::HealthCheck>,
    pub volumes: Vec<VolumeRequest>,
    pub auto_standby: Option<super::auto_standby::AutoStandbyPolicy>,
    pub disk_io_bps: Option<u64>,
}

/// Which rule of a create spec was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u32),
    #[error("memory must be at least 64MiB, got {0} bytes")]
    Memory(u64),
    #[error("overlay size must be at least 16MiB, got {0} bytes")]
    Overlay(u64),
    #[error("nothing to run: give a command or an entrypoint")]
    NothingToRun,
    #[error("invalid environment variable name {0:?}")]
    EnvName(String),
    #[error("working directory must be absolute, got {0:?}")]
    Workdir(String),
    #[error("rootfs path must be absolute, got {}", .0.display())]
    RootfsRelative(PathBuf),
    #[error("rootfs {} is not a directory", .0.display())]
    RootfsNotDir(PathBuf),
    #[error("image {0} has no root disk")]
    NoRootDisk(String),
    /// The image's configuration and the request's overrides do not combine.
    #[error("image {image}: {reason}")]
    ImageConfig { image: String, reason: String },
    /// `Image` was asked for but no image was supplied (a caller bug).
    #[error("one of `image` or `rootfs` is required")]
    NoRoot,
    /// A volume attachment breaks a rule (mount path, overlay).
    #[error("volumes: {0}")]
    Volume(String),
}

impl CreateSpec {
    /// Applies defaults: the request's fields over the image's
    /// configuration (`image`, leased by the manager for an image request).
    pub fn resolve(
        req: CreateRequest,
        image: Option<&lodge_images::ImageLease>,
    ) -> Result<CreateSpec, SpecError> {
        let o = req.run;
        let (root, run) = match (req.root, image) {
            (RootRequest::Dir(dir), _) => (
                RootSource::Dir(dir),
                RunConfig {
                    entrypoint: o.entrypoint.unwrap_or_default(),
                    cmd: o.cmd.unwrap_or_default(),
                    env: o.env,
                    workdir: o.workdir.unwrap_or_else(|| "/".to_string()),
                    user: None,
                },
            ),
            (RootRequest::Image { .. }, Some(lease)) => {
                let overrides = runconfig::Overrides {
                    entrypoint: o.entrypoint,
                    cmd: o.cmd,
                    env: o.env,
                    workdir: o.workdir,
                    user: None,
                };
                let run = runconfig::resolve(
                    &lease.record.config,
                    lease.record.user.as_deref(),
                    overrides,
                )
                .map_err(|reason| SpecError::ImageConfig {
                    image: lease.record.name.clone(),
                    reason,
                })?;
                let root = RootSource::Image {
                    name: lease.record.name.clone(),
                    digest: lease.digest.to_string(),
                    disk: lease.disk.clone(),
                };
                (root, run)
            }
            (RootRequest::Image { .. }, None) => return Err(SpecError::NoRoot),
        };
        Ok(CreateSpec {
            name: req.name,
            hypervisor: req.hypervisor,
            root,
            vcpus: req.vcpus.unwrap_or(DEFAULT_VCPUS),
            memory_bytes: req.memory_bytes.unwrap_or(DEFAULT_MEMORY),
            overlay_bytes: req.overlay_bytes.unwrap_or(DEFAULT_OVERLAY),
            entrypoint: run.entrypoint,
            cmd: run.cmd,
            env: run.env,
            workdir: run.workdir,
            user: run.user,
            network: req.network,
            tags: req.tags,
            expires_at: req.expires_at,
            restart_policy: req.restart_policy,
            health_check: req.health_check,
            volumes: req.volumes,
            auto_standby: req.auto_standby,
            disk_io_bps: req.disk_io_bps,
        })
    }

    /// Checks the limits that do not depend on other instances.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_resources(self.vcpus, self.memory_bytes, self.overlay_bytes)?;
        check_runnable(&self.entrypoint, &self.cmd)?;
        check_env(&self.env)?;
        check_workdir(&self.workdir)?;
        match &self.root {
            RootSource::Dir(dir) => check_rootfs(dir)?,
            RootSource::Image { name, disk, .. } => {
                if !disk.is_file() {
                    return Err(SpecError::NoRootDisk(name.clone()));
                }
            }
        }
        Ok(())
    }
}

impl CreateRequest {
    /// The rules a request can be held to before its image is resolved,
    /// so that a create with an invalid field is refused before any pull
    /// starts (the rest is [`CreateSpec::validate`], once defaults and the
    /// image's configuration are applied).
    pub fn validate(&self) -> Result<(), SpecError> {
        check_resources(
            self.vcpus.unwrap_or(DEFAULT_VCPUS),
            self.memory_bytes.unwrap_or(DEFAULT_MEMORY),
            self.overlay_bytes.unwrap_or(DEFAULT_OVERLAY),
        )?;
        check_env(&self.run.env)?;
        if let Some(workdir) = &self.run.workdir {
            check_workdir(workdir)?;
        }
        if let RootRequest::Dir(dir) = &self.root {
            check_rootfs(dir)?;
        }
        check_volumes(&self.volumes)
    }
}

/// The rules of a create's volumes that need no lookup: mount paths
/// (lodge-volumes' rules, none inside another), overlays read-only with a
/// size, and how many fit in the VM's slots.
pub fn check_volumes(volumes: &[VolumeRequest]) -> Result<(), SpecError> {
    let slots: usize = volumes
        .iter()
        .map(|v| if v.overlay.is_some() { 2 } else { 1 })
        .sum();
    if slots > MAX_VOLUMES {
        return Err(SpecError::Volume(format!(
            "at most {MAX_VOLUMES} volume disks per instance (an overlay takes two), got {slots}"
        )));
    }
    for (i, v) in volumes.iter().enumerate() {
        let bad = |e: lodge_volumes::Error| SpecError::Volume(e.to_string());
        lodge_volumes::rules::check_mount_path(&v.mount_path).map_err(bad)?;
        lodge_volumes::rules::check_no_collision(
            &v.mount_path,
            volumes[..i].iter().map(|o| o.mount_path.as_str()),
        )
        .map_err(bad)?;
        if v.volume.trim().is_empty() {
            return Err(SpecError::Volume("volume_id is required".into()));
        }
        if let Some(size) = v.overlay {
            if !v.readonly {
                return Err(SpecError::Volume(format!(
                    "{}: an overlay needs readonly=true (the volume is its read-only lower layer)",
                    v.mount_path
                )));
            }
            if size < MIN_OVERLAY {
                return Err(SpecError::Volume(format!(
                    "{}: overlay_size must be at least 16MiB, got {size} bytes",
                    v.mount_path
                )));
            }
        }
    }
    Ok(())
}

fn check_resources(vcpus: u32, memory_bytes: u64, overlay_bytes: u64) -> Result<(), SpecError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(SpecError::Vcpus(vcpus));
    }
    if memory_bytes < MIN_MEMORY {
        return Err(SpecError::Memory(memory_bytes));
    }
    if overlay_bytes < MIN_OVERLAY {
        return Err(SpecError::Overlay(overlay_bytes));
    }
    Ok(())
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    match env.keys().find(|k| !lodge_common::env::is_valid_name(k)) {
        Some(key) => Err(SpecError::EnvName(key.clone())),
        None => Ok(()),
    }
}

fn check_workdir(workdir: &str) -> Result<(), SpecError> {
    if !workdir.starts_with('/') {
        return Err(SpecError::Workdir(workdir.to_string()));
    }
    Ok(())
}

fn check_rootfs(dir: &std::path::Path) -> Result<(), SpecError> {
    if !dir.is_absolute() {
        return Err(SpecError::RootfsRelative(dir.to_owned()));
    }
    if !dir.is_dir() {
        return Err(SpecError::RootfsNotDir(dir.to_owned()));
    }
    Ok(())
}

/// A program to run needs an entrypoint or a command.
pub fn check_runnable(entrypoint: &[String], cmd: &[String]) -> Result<(), SpecError> {
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(SpecError::NothingToRun);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dir: &std::path::Path) -> CreateRequest {
        CreateRequest {
            name: Name::parse("web").expect("valid name"),
            hypervisor: DEFAULT_HYPERVISOR,
            root: RootRequest::Dir(dir.to_owned()),
            vcpus: None,
            memory_bytes: None,
            overlay_bytes: None,
            run: RunOverrides {
                cmd: Some(vec!["echo".into(), "hi".into()]),
                ..RunOverrides::default()
            },
            network: NetworkRequest::default(),
            tags: BTreeMap::new(),
            expires_at: None,
            restart_policy: None,
            health_check: None,
            volumes: Vec::new(),
            auto_standby: None,
            disk_io_bps: None,
        }
    }

    fn spec(dir: &std::path::Path) -> CreateSpec {
        CreateSpec::resolve(request(dir), None).expect("a directory needs no image")
    }

    #[test]
    fn directory_request_takes_hypemans_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spec(dir.path());
        assert_eq!(s.vcpus, DEFAULT_VCPUS);
        assert_eq!(s.memory_bytes, DEFAULT_MEMORY);
        assert_eq!(s.overlay_bytes, DEFAULT_OVERLAY);
        assert_eq!(s.workdir, "/");
        assert_eq!(s.hypervisor, HypervisorKind::Qemu);
        assert!(s.entrypoint.is_empty());
        assert_eq!(s.user, None);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn image_request_without_a_lease_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut req = request(dir.path());
        req.root = RootRequest::Image {
            reference: "busybox".into(),
            platform: None,
        };
        assert_eq!(
            CreateSpec::resolve(req, None).expect_err("no lease"),
            SpecError::NoRoot
        );
    }

    #[test]
    fn each_rule_names_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let check = |f: &dyn Fn(&mut CreateSpec)| {
            let mut s = spec(dir.path());
            f(&mut s);
            s.validate().expect_err("invalid")
        };
        assert_eq!(check(&|s| s.vcpus = 0), SpecError::Vcpus(0));
        assert_eq!(check(&|s| s.vcpus = MAX_VCPUS + 1), SpecError::Vcpus(65));
        assert_eq!(
            check(&|s| s.memory_bytes = 1 << 20),
            SpecError::Memory(1 << 20)
        );
        assert_eq!(check(&|s| s.overlay_bytes = 1), SpecError::Overlay(1));
        assert_eq!(check(&|s| s.cmd.clear()), SpecError::NothingToRun);
        assert_eq!(
            check(&|s| {
                s.env.insert("A=B".into(), "x".into());
            }),
            SpecError::EnvName("A=B".into())
        );
        assert_eq!(
            check(&|s| s.workdir = "srv".into()),
            SpecError::Workdir("srv".into())
        );
        assert_eq!(
            check(&|s| s.root = RootSource::Dir("rel".into())),
            SpecError::RootfsRelative("rel".into())
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert_eq!(
            check(&|s| s.root = RootSource::Dir(file.clone())),
            SpecError::RootfsNotDir(file.clone())
        );
        assert_eq!(
            check(&|s| {
                s.root = RootSource::Image {
                    name: "img".into(),
                    digest: "sha256:0".into(),
                    disk: dir.path().join("missing.ext4"),
                }
            }),
            SpecError::NoRootDisk("img".into())
        );
    }

    #[test]
    fn a_request_is_checked_before_its_image_is_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = |f: &dyn Fn(&mut CreateRequest)| {
            let mut r = request(dir.path());
            r.root = RootRequest::Image {
                reference: "127.0.0.1:1/x".into(),
                platform: None,
            };
            f(&mut r);
            r.validate()
        };
        assert_eq!(image(&|_| {}), Ok(()));
        assert_eq!(image(&|r| r.vcpus = Some(0)), Err(SpecError::Vcpus(0)));
        assert_eq!(
            image(&|r| r.memory_bytes = Some(1)),
            Err(SpecError::Memory(1))
        );
        assert_eq!(
            image(&|r| r.overlay_bytes = Some(1)),
            Err(SpecError::Overlay(1))
        );
        assert_eq!(
            image(&|r| r.run.workdir = Some("srv".into())),
            Err(SpecError::Workdir("srv".into()))
        );
        assert_eq!(
            image(&|r| {
                r.run.env.insert("A=B".into(), "x".into());
            }),
            Err(SpecError::EnvName("A=B".into()))
        );
        // No command yet is fine: the image may supply one.
        assert_eq!(image(&|r| r.run.cmd = None), Ok(()));
        let mut r = request(dir.path());
        r.root = RootRequest::Dir("rel".into());
        assert_eq!(r.validate(), Err(SpecError::RootfsRelative("rel".into())));
    }

    #[test]
    fn volume_requests_are_checked_before_any_lookup() {
        let v = |path: &str, readonly: bool, overlay: Option<u64>| VolumeRequest {
            volume: "data".into(),
            mount_path: path.into(),
            readonly,
            overlay,
        };
        let check = |vs: Vec<VolumeRequest>| check_volumes(&vs);
        assert_eq!(check(vec![v("/data", false, None)]), Ok(()));
        assert_eq!(
            check(vec![v("/a", true, None), v("/b", true, Some(64 << 20))]),
            Ok(())
        );
        for bad in [
            vec![v("data", false, None)],
            vec![v("/", false, None)],
            vec![v("/a,b", false, None)],
            vec![v("/a/../b", false, None)],
            vec![v("/a", false, None), v("/a", true, None)],
            vec![v("/a", false, None), v("/a/b", true, None)],
            vec![v("/a", false, Some(64 << 20))],
            vec![v("/a", true, Some(1))],
            (0..5)
                .map(|i| v(&format!("/o{i}"), true, Some(64 << 20)))
                .collect(),
        ] {
            assert!(
                matches!(check(bad.clone()), Err(SpecError::Volume(_))),
                "{bad:?}"
            );
        }
        let mut r = request(std::path::Path::new("/"));
        r.volumes = vec![v("relative", false, None)];
        assert!(matches!(r.validate(), Err(SpecError::Volume(_))));
    }

    #[test]
    fn messages_match_the_api_of_today() {
        assert_eq!(
            SpecError::Vcpus(0).to_string(),
            "vcpus must be between 1 and 64, got 0"
        );
        assert_eq!(
            SpecError::NothingToRun.to_string(),
            "nothing to run: give a command or an entrypoint"
        );
        assert_eq!(
            SpecError::RootfsRelative("x".into()).to_string(),
            "rootfs path must be absolute, got x"
        );
    }
}
