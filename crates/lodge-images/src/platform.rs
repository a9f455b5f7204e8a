//! Target platforms (`os/arch[/variant]`, as docker's `--platform`).
//!
//! A plain value with no knowledge of OCI documents: the OCI types in
//! [`crate::oci`] build on it (an index picks its manifest for a
//! [`Platform`] with `Index::select`), never the other way round.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// Architectures lodge can boot (as hypeman: linux on amd64 or arm64).
const ARCHES: &[&str] = &["amd64", "arm64"];

impl Platform {
    /// The host's platform; lodge boots x86-64 guests.
    pub fn host() -> Self {
        Platform {
            os: "linux".into(),
            architecture: if cfg!(target_arch = "aarch64") {
                "arm64"
            } else {
                "amd64"
            }
            .into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`; only linux on amd64/arm64 is accepted.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        let os = parts.next()?.trim().to_ascii_lowercase();
        let mut arch = parts.next()?.trim().to_ascii_lowercase();
        let variant = parts.next().map(|v| v.trim().to_ascii_lowercase());
        if parts.next().is_some() || os != "linux" || variant.as_deref() == Some("") {
            return None;
        }
        // Common aliases, as containerd's normaliser.
        match arch.as_str() {
            "x86_64" | "x86-64" => arch = "amd64".into(),
            "aarch64" => arch = "arm64".into(),
            _ => {}
        }
        if !ARCHES.contains(&arch.as_str()) {
            return None;
        }
        Some(Platform {
            os,
            architecture: arch,
            variant,
        })
    }

    /// Whether an index entry or config of (`os`, `arch`, `variant`) fits.
    /// A request without a variant takes any; arm64's `v8` is its default.
    pub fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        if os != self.os || arch != self.architecture {
            return false;
        }
        match (&self.variant, variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_platform_strings() {
        let p = Platform::parse("linux/amd64").expect("valid");
        assert_eq!(p.to_string(), "linux/amd64");
        assert_eq!(
            Platform::parse("linux/arm64/v8")
                .expect("valid")
                .to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(Platform::parse("linux/x86_64"), Some(p));
        for bad in [
            "",
            "linux",
            "windows/amd64",
            "linux/s390x",
            "linux/amd64/v1/x",
            "linux/amd64/",
        ] {
            assert!(Platform::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn variant_matching() {
        let any = Platform::parse("linux/arm64").expect("valid");
        assert!(any.matches("linux", "arm64", Some("v8")));
        let v8 = Platform::parse("linux/arm64/v8").expect("valid");
        assert!(v8.matches("linux", "arm64", None));
        assert!(!v8.matches("linux", "arm64", Some("v9")));
        assert!(!Platform::host().matches("linux", "arm", None));
    }
}
