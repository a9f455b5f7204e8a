//! Checking the paths of copied entries, on both sides.
//!
//! A copy is a stream of entries whose paths are relative to a destination
//! chosen by the receiver. Whoever sends the stream is not trusted to stay
//! inside it: the agent checks what a host sends, the CLI checks what an
//! agent sends. Both use [`entry_components`], so an entry such as
//! `root/../../etc/passwd` or `/etc/passwd` is refused the same way
//! everywhere. (Symlinks planted by earlier entries are the receiver's
//! business: it must not write through them.)

use std::fmt;

/// Why an entry path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path is empty (or only `.` and `/`).
    Empty,
    /// The path is absolute or climbs out with `..`.
    Escapes(String),
    /// The path holds a NUL byte.
    Nul(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => f.write_str("archive entry with an empty path"),
            PathError::Escapes(p) => {
                write!(f, "archive entry {p:?} escapes the target directory")
            }
            PathError::Nul(p) => write!(f, "archive entry {p:?} holds a nul byte"),
        }
    }
}

impl std::error::Error for PathError {}

/// The components of a relative entry path: no empty or `.` components,
/// never `..`, never absolute. At least one component.
pub fn entry_components(path: &str) -> Result<Vec<&str>, PathError> {
    if path.contains('\0') {
        return Err(PathError::Nul(path.to_owned()));
    }
    if path.starts_with('/') {
        return Err(PathError::Escapes(path.to_owned()));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::Escapes(path.to_owned())),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(parts)
}

/// An entry of a root-named stream: the first component names the copy's
/// root (whatever the receiver calls it), the rest is relative to it.
/// Returns the components below the root (empty for the root itself).
pub fn below_root(path: &str) -> Result<Vec<&str>, PathError> {
    let mut parts = entry_components(path)?;
    parts.remove(0);
    Ok(parts)
}

/// The last component of a path, for naming a copy's root: `/a/b/` gives
/// `b`; `/`, `.` and `..` give `root` (a root needs a plain name).
pub fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .unwrap_or("root")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_split_into_components() {
        assert_eq!(entry_components("a"), Ok(vec!["a"]));
        assert_eq!(entry_components("a/b/c"), Ok(vec!["a", "b", "c"]));
        assert_eq!(entry_components("./a//b/./"), Ok(vec!["a", "b"]));
        assert_eq!(entry_components("a..b/..c"), Ok(vec!["a..b", "..c"]));
    }

    #[test]
    fn escaping_paths_are_refused() {
        for p in ["..", "../x", "a/../../x", "a/..", "/etc/passwd", "//x"] {
            assert_eq!(
                entry_components(p),
                Err(PathError::Escapes(p.to_owned())),
                "{p}"
            );
        }
        assert_eq!(entry_components(""), Err(PathError::Empty));
        assert_eq!(entry_components("./."), Err(PathError::Empty));
        assert!(matches!(entry_components("a\0b"), Err(PathError::Nul(_))));
        assert_eq!(
            PathError::Escapes("../x".into()).to_string(),
            "archive entry \"../x\" escapes the target directory"
        );
    }

    #[test]
    fn below_root_drops_the_root_name() {
        assert_eq!(below_root("tree"), Ok(vec![]));
        assert_eq!(below_root("tree/sub/f"), Ok(vec!["sub", "f"]));
        assert!(below_root("tree/../../x").is_err());
    }

    #[test]
    fn base_names() {
        assert_eq!(base_name("/a/b"), "b");
        assert_eq!(base_name("/a/b/"), "b");
        assert_eq!(base_name("b"), "b");
        assert_eq!(base_name("/"), "root");
        assert_eq!(base_name(""), "root");
        assert_eq!(base_name("a/."), "root");
    }
}
