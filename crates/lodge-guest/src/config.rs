//! What the guest runs, and how it travels to the guest on the config disk.
//!
//! The host writes [`GuestConfig::encode`]'s bytes as a raw disk image and
//! attaches it with the serial [`crate::SERIAL_CONFIG`]; the guest reads the
//! disk and calls [`GuestConfig::decode`]. A raw image (JSON padded with NUL
//! bytes to whole 4 KiB blocks, 64 KiB at least) needs no filesystem driver
//! in the guest and no `mkfs` on the host, and virtio-blk wants a size in
//! whole sectors.
//!
//! Unknown JSON fields are accepted and ignored: a host one version ahead of
//! the initrd must still boot the guest, and the only writer of this JSON is
//! the host's own code built from this type, so a typo cannot slip in the
//! way `deny_unknown_fields` protects against elsewhere. Everything the guest
//! relies on is checked by [`GuestConfig::validate`], which `decode` runs.
//!
//! Fields added later are optional and left out of the JSON when unset
//! (`network`, see [`crate::network`]), so configs written before them
//! still parse and a config that does not use them encodes as before.

use serde::{Deserialize, Serialize};

use crate::network::{NetworkConfig, NetworkError};
use crate::volumes::{VolumeError, VolumeMount};

/// Block size the config image is padded to.
pub const CONFIG_IMAGE_ALIGN: usize = 4096;

/// Smallest config image. The kernel's partition scanners read the first
/// sectors of every disk (Amiga's up to sector 15, Ultrix's sector 31) and
/// complain on the console when a disk is shorter than that; 64 KiB keeps
/// them all inside the disk.
pub const CONFIG_IMAGE_MIN: usize = 64 * 1024;

/// Working directory used when the configuration names none (as docker).
pub const DEFAULT_WORKDIR: &str = "/";

/// The longest hostname Linux accepts (`HOST_NAME_MAX`).
const HOSTNAME_MAX: usize = 64;

/// The program the guest runs and its surroundings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// Entrypoint and command combined; `argv[0]` is looked up in the `PATH`
    /// of `env` (or the default `PATH`) when it holds no slash. Never empty.
    pub argv: Vec<String>,
    /// The workload's environment as `KEY=VALUE` entries. The guest adds only
    /// what docker adds: `PATH` and `HOME` when absent, and `HOSTNAME`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory; created if it does not exist (as docker).
    #[serde(default = "default_workdir")]
    pub workdir: String,
    /// Guest hostname; `None` leaves the guest's default (`localhost`).
    #[serde(default)]
    pub hostname: Option<String>,
    /// `"uid"` or `"uid:gid"`, numeric only (the guest has no name service).
    /// `None` runs the workload as root.
    #[serde(default)]
    pub user: Option<String>,
    /// The guest's one network interface; `None` (or absent from the JSON,
    /// as in every config written before networking) boots with loopback
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// Volumes PID 1 mounts before the workload starts; absent in configs
    /// from before volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
}

fn default_workdir() -> String {
    DEFAULT_WORKDIR.to_owned()
}

/// A numeric user, parsed from [`GuestConfig::user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSpec {
    pub uid: u32,
    /// `None` means the user's primary group from the guest's `/etc/passwd`,
    /// or group 0 when the user is not listed there (as docker).
    pub gid: Option<u32>,
}

/// Why a configuration or config image was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The image holds no JSON before its first NUL byte.
    #[error("config image is empty")]
    Empty,
    /// The JSON is malformed or lacks a required field.
    #[error("config image is not valid guest config json: {0}")]
    Json(String),
    #[error("argv must not be empty")]
    EmptyArgv,
    #[error("argv[0] must not be empty")]
    EmptyProgram,
    #[error("env entry {0:?} is not of the form KEY=VALUE")]
    BadEnv(String),
    #[error("workdir {0:?} is not an absolute path")]
    RelativeWorkdir(String),
    #[error("hostname {0:?} must be 1 to 64 characters without '/' or whitespace")]
    BadHostname(String),
    #[error("user {0:?} must be numeric \"uid\" or \"uid:gid\"")]
    BadUser(String),
    /// Strings reach the guest as C strings, which cannot hold NUL.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// The network section; its messages name the field they are about.
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("two volumes mount at {0:?}")]
    VolumePathTwice(String),
}

impl GuestConfig {
    /// A configuration running `argv` with an empty environment, working
    /// directory `/`, default hostname, as root.
    pub fn new(argv: Vec<String>) -> Self {
        Self {
            argv,
            env: Vec::new(),
            workdir: default_workdir(),
            hostname: None,
            user: None,
            network: None,
            volumes: Vec::new(),
        }
    }

    /// Check everything the guest relies on. The host should call this before
    /// [`encode`](Self::encode) so that a bad request fails on the host, with
    /// a clear error, instead of inside a booting VM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let first = self.argv.first().ok_or(ConfigError::EmptyArgv)?;
        if first.is_empty() {
            return Err(ConfigError::EmptyProgram);
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(ConfigError::Nul("argv"));
        }
        for entry in &self.env {
            if entry.contains('\0') {
                return Err(ConfigError::Nul("env"));
            }
            match entry.split_once('=') {
                Some((key, _)) if crate::env::is_valid_name(key) => {}
                _ => return Err(ConfigError::BadEnv(entry.clone())),
            }
        }
        if self.workdir.contains('\0') {
            return Err(ConfigError::Nul("workdir"));
        }
        if !self.workdir.starts_with('/') {
            return Err(ConfigError::RelativeWorkdir(self.workdir.clone()));
        }
        if let Some(name) = &self.hostname {
            let bad = name.is_empty()
                || name.len() > HOSTNAME_MAX
                || name
                    .chars()
                    .any(|c| c == '/' || c == '\0' || c.is_whitespace());
            if bad {
                return Err(ConfigError::BadHostname(name.clone()));
            }
        }
        self.user_spec()?;
        if let Some(network) = &self.network {
            network.validate()?;
        }
        for (i, v) in self.volumes.iter().enumerate() {
            v.validate()?;
            if self.volumes[..i]
                .iter()
                .any(|o| o.mount_path == v.mount_path)
            {
                return Err(ConfigError::VolumePathTwice(v.mount_path.clone()));
            }
        }
        Ok(())
    }

    /// The parsed [`user`](Self::user), `None` when unset.
    pub fn user_spec(&self) -> Result<Option<UserSpec>, ConfigError> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        let bad = || ConfigError::BadUser(user.clone());
        let (uid, gid) = match user.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (user.as_str(), None),
        };
        let number = |s: &str| -> Result<u32, ConfigError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        Ok(Some(UserSpec {
            uid: number(uid)?,
            gid: gid.map(number).transpose()?,
        }))
    }

    /// The raw config-disk image: the JSON bytes followed by NUL bytes up to
    /// a multiple of [`CONFIG_IMAGE_ALIGN`], at least [`CONFIG_IMAGE_MIN`]
    /// bytes. JSON never
    /// contains a raw NUL (serde_json escapes it in strings), so the first
    /// NUL marks the end. Does not validate; see [`validate`](Self::validate).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a struct of strings cannot fail: there are no maps
        // with non-string keys and no custom Serialize impls.
        let mut bytes = serde_json::to_vec(self).expect("guest config serializes to json");
        let len =
            (bytes.len().div_ceil(CONFIG_IMAGE_ALIGN) * CONFIG_IMAGE_ALIGN).max(CONFIG_IMAGE_MIN);
        bytes.resize(len, 0);
        bytes
    }

    /// Parse a config image (or bare JSON): the bytes up to the first NUL
    /// (or all of them) must be a valid configuration.
    pub fn decode(bytes: &[u8]) -> Result<Self, ConfigError> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let json = &bytes[..end];
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::Empty);
        }
        let config: Self =
            serde_json::from_slice(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GuestConfig {
        GuestConfig {
            argv: vec!["sh".into(), "-c".into(), "echo $FOO".into()],
            env: vec!["FOO=bar".into(), "EMPTY=".into()],
            workdir: "/tmp".into(),
            hostname: Some("web-1".into()),
            user: Some("1000:100".into()),
            network: None,
            volumes: Vec::new(),
        }
    }

    fn with_network() -> GuestConfig {
        let mut config = sample();
        config.network = Some(NetworkConfig {
            mac: crate::MacAddr([0x02, 0, 0, 0, 0, 0x0f]),
            ip: "10.0.2.15".parse().expect("ip"),
            prefix_len: 24,
            gateway: "10.0.2.2".parse().expect("ip"),
            mtu: None,
            dns: vec!["10.0.2.3".parse().expect("ip")],
            name: "web-1".into(),
        });
        config
    }

    #[test]
    fn configs_without_network_still_parse_and_encode_unchanged() {
        // Written by a host from before networking existed.
        let old = br#"{"argv":["sh","-c","echo $FOO"],"env":["FOO=bar","EMPTY="],"workdir":"/tmp","hostname":"web-1","user":"1000:100"}"#;
        let config = GuestConfig::decode(old).expect("old config");
        assert_eq!(config, sample());
        assert_eq!(config.network, None);
        // And a config without network encodes to exactly what an old
        // guest reads: no `network` key at all.
        let image = config.encode();
        assert_eq!(&image[..old.len()], &old[..]);
        assert_eq!(image[old.len()], 0);
    }

    #[test]
    fn network_section_round_trips_and_is_validated() {
        let config = with_network();
        assert_eq!(GuestConfig::decode(&config.encode()), Ok(config.clone()));
        let json = serde_json::to_value(&config).expect("json");
        assert_eq!(
            json["network"],
            serde_json::json!({
                "mac": "02:00:00:00:00:0f",
                "ip": "10.0.2.15",
                "prefix_len": 24,
                "gateway": "10.0.2.2",
                "dns": ["10.0.2.3"],
                "name": "web-1",
            })
        );
        let mut bad = config;
        if let Some(net) = bad.network.as_mut() {
            net.gateway = "10.0.3.2".parse().expect("ip");
        }
        let err = GuestConfig::decode(&bad.encode()).expect_err("gateway outside");
        assert!(matches!(
            err,
            ConfigError::Network(NetworkError::GatewayOutsideSubnet { .. })
        ));
        assert_eq!(
            err.to_string(),
            "gateway 10.0.3.2 is outside the subnet 10.0.2.15/24"
        );
        let err = GuestConfig::decode(
            br#"{"argv":["true"],"network":{"mac":"zz","ip":"10.0.2.15","prefix_len":24,"gateway":"10.0.2.2","name":"a"}}"#,
        )
        .expect_err("bad mac");
        assert!(
            matches!(&err, ConfigError::Json(m) if m.contains("mac address \"zz\"")),
            "{err}"
        );
    }

    #[test]
    fn encode_pads_to_whole_blocks_and_round_trips() {
        let config = sample();
        let image = config.encode();
        assert_eq!(image.len(), CONFIG_IMAGE_MIN);
        let json_len = image.iter().position(|&b| b == 0).expect("padding");
        assert!(image[json_len..].iter().all(|&b| b == 0));
        assert_eq!(GuestConfig::decode(&image), Ok(config));
    }

    #[test]
    fn large_config_spans_several_blocks() {
        let mut config = sample();
        config.env = (0..10_000).map(|i| format!("VAR{i}=value-{i}")).collect();
        let image = config.encode();
        assert_eq!(image.len() % CONFIG_IMAGE_ALIGN, 0);
        assert!(image.len() > CONFIG_IMAGE_MIN);
        assert_eq!(GuestConfig::decode(&image), Ok(config));
    }

    #[test]
    fn nul_inside_a_string_is_escaped_not_a_terminator() {
        let mut config = sample();
        config.argv.push("a\0b".into());
        let image = config.encode();
        let json_len = image.iter().position(|&b| b == 0).expect("padding");
        assert!(json_len > 10);
        // The escaped NUL survives JSON but is refused by validation.
        assert_eq!(GuestConfig::decode(&image), Err(ConfigError::Nul("argv")));
    }

    #[test]
    fn defaults_apply_and_unknown_fields_are_ignored() {
        let json = br#"{"argv":["true"],"future_field":{"x":1}}"#;
        let config = GuestConfig::decode(json).expect("valid");
        assert_eq!(config, GuestConfig::new(vec!["true".into()]));
        assert_eq!(config.workdir, "/");
    }

    #[test]
    fn decode_refuses_bad_images() {
        assert_eq!(GuestConfig::decode(&[0; 4096]), Err(ConfigError::Empty));
        assert_eq!(GuestConfig::decode(b""), Err(ConfigError::Empty));
        assert!(matches!(
            GuestConfig::decode(b"{\"argv\":"),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            GuestConfig::decode(b"{\"env\":[]}"),
            Err(ConfigError::Json(_))
        ));
        assert_eq!(
            GuestConfig::decode(b"{\"argv\":[]}"),
            Err(ConfigError::EmptyArgv)
        );
        assert_eq!(
            GuestConfig::decode(b"{\"argv\":[\"\"]}"),
            Err(ConfigError::EmptyProgram)
        );
    }

    #[test]
    fn validate_checks_env_workdir_hostname_user() {
        let check = |f: &dyn Fn(&mut GuestConfig)| {
            let mut c = sample();
            f(&mut c);
            c.validate()
        };
        assert_eq!(check(&|_| {}), Ok(()));
        assert_eq!(
            check(&|c| c.env.push("NOEQUALS".into())),
            Err(ConfigError::BadEnv("NOEQUALS".into()))
        );
        assert_eq!(
            check(&|c| c.env.push("=v".into())),
            Err(ConfigError::BadEnv("=v".into()))
        );
        assert_eq!(
            check(&|c| c.workdir = "tmp".into()),
            Err(ConfigError::RelativeWorkdir("tmp".into()))
        );
        assert_eq!(
            check(&|c| c.hostname = Some("a b".into())),
            Err(ConfigError::BadHostname("a b".into()))
        );
        assert_eq!(
            check(&|c| c.hostname = Some("x".repeat(65))),
            Err(ConfigError::BadHostname("x".repeat(65)))
        );
        for user in ["root", "1000:", ":1", "-1", "1:2:3", "99999999999"] {
            assert_eq!(
                check(&|c| c.user = Some(user.into())),
                Err(ConfigError::BadUser(user.into())),
                "{user}"
            );
        }
    }

    #[test]
    fn user_spec_parses_uid_and_optional_gid() {
        let spec = |u: Option<&str>| {
            let mut c = sample();
            c.user = u.map(Into::into);
            c.user_spec()
        };
        assert_eq!(spec(None), Ok(None));
        assert_eq!(spec(Some("0")), Ok(Some(UserSpec { uid: 0, gid: None })));
        assert_eq!(
            spec(Some("1000:100")),
            Ok(Some(UserSpec {
                uid: 1000,
                gid: Some(100)
            }))
        );
    }
}
