//! Where an image comes from, from the string a user typed.
//!
//! Registry references are normalised as docker does (`alpine` →
//! `docker.io/library/alpine:latest`, `host:port/repo:tag`, `@sha256:…`),
//! using the distribution grammar of `oci-client`'s `Reference`. The skopeo
//! transport names `oci-archive:PATH[:REF]` and `docker-archive:PATH[:REF]`
//! select offline imports from a tarball on the daemon's host.

use std::path::PathBuf;

use oci_client::Reference;

/// An image source.
#[derive(Debug, Clone)]
pub enum Source {
    Registry(Reference),
    /// An OCI image layout in a tar file; `reference` picks an index entry
    /// by its `org.opencontainers.image.ref.name`.
    OciArchive {
        path: PathBuf,
        reference: Option<String>,
    },
    /// `docker save` output; `reference` picks an image by its repo tag.
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

fn err(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// Normalises a registry reference (`alpine` → `docker.io/library/alpine:latest`).
pub fn parse_registry(input: &str) -> Result<Reference, ReferenceError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(err(input, "empty"));
    }
    if s.contains("://") {
        return Err(err(
            input,
            "give a reference like host:port/repo:tag, not a URL",
        ));
    }
    s.parse::<Reference>().map_err(|e| {
        let reason = e.to_string();
        let hint = if s.chars().any(|c| c.is_ascii_uppercase()) {
            " (repository names must be lowercase)"
        } else {
            ""
        };
        err(input, format!("{reason}{hint}"))
    })
}

/// The canonical name of a registry reference.
pub fn canonical(r: &Reference) -> String {
    r.whole()
}

impl Source {
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        for (prefix, oci) in [("oci-archive:", true), ("docker-archive:", false)] {
            if let Some(rest) = input.strip_prefix(prefix) {
                let (path, reference) = match rest.split_once(':') {
                    Some((p, r)) => (p, Some(r.to_string()).filter(|r| !r.is_empty())),
                    None => (rest, None),
                };
                if path.is_empty() {
                    return Err(err(input, "no archive path"));
                }
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(err(input, "the archive path must be absolute"));
                }
                return Ok(if oci {
                    Source::OciArchive { path, reference }
                } else {
                    Source::DockerArchive { path, reference }
                });
            }
        }
        if let Some((transport, _)) = input.split_once(':') {
            if matches!(
                transport,
                "oci" | "dir" | "docker-daemon" | "containers-storage"
            ) {
                return Err(err(
                    input,
                    format!("transport {transport:?} is not supported; use a registry reference, oci-archive: or docker-archive:"),
                ));
            }
        }
        let input = input.strip_prefix("docker://").unwrap_or(input);
        Ok(Source::Registry(parse_registry(input)?))
    }
}

/// Normalises a name used to look up a local image: registry references
/// in their canonical form, anything else (an archive source) as given.
pub fn lookup_key(input: &str) -> Result<String, ReferenceError> {
    match Source::parse(input)? {
        Source::Registry(r) => Ok(canonical(&r)),
        _ => Ok(input.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        lookup_key(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("library/alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(norm("index.docker.io/foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(norm("docker://busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(
            norm("127.0.0.1:5000/team/app:v1"),
            "127.0.0.1:5000/team/app:v1"
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("ghcr.io/o/r:t"), "ghcr.io/o/r:t");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            norm(&format!("alpine@{d}")),
            format!("docker.io/library/alpine@{d}")
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "Alpine",
            "a b",
            "alpine:",
            "alpine@sha256:abc",
            "http://x/y",
            "-x",
            "a/../b",
            "oci:/x",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn archive_sources() {
        match Source::parse("oci-archive:/tmp/a b.tar:demo:1").expect("valid") {
            Source::OciArchive { path, reference } => {
                assert_eq!(path, PathBuf::from("/tmp/a b.tar"));
                assert_eq!(reference.as_deref(), Some("demo:1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Source::parse("docker-archive:/x.tar"),
            Ok(Source::DockerArchive {
                reference: None,
                ..
            })
        ));
        assert!(Source::parse("oci-archive:relative.tar").is_err());
    }
}
