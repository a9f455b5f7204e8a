//! OCI whiteouts: what a `.wh.` entry means, and the opaque-directory pass
//! that removes whatever the layers below left in a directory the current
//! layer marked opaque. Kept apart from entry writing, which only asks
//! [`whiteout_of`] and acts on the answer.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use super::error::{io_err, UnpackError};
use super::fsops::{list_dir, open_dir_at, remove_all_at};

pub(super) const WHITEOUT_PREFIX: &str = ".wh.";
pub(super) const OPAQUE: &str = ".wh..wh..opq";

/// What a whiteout entry asks for.
pub(super) enum Whiteout<'a> {
    /// `.wh..wh..opq`: empty the directory of what lower layers put there.
    Opaque,
    /// `.wh.NAME`: delete `NAME`.
    Remove(&'a OsStr),
    /// `.wh..` or `.wh...`: refused.
    Invalid,
    /// Other aufs metadata (`.wh..wh.plnk` …) carries no meaning here.
    Ignored,
}

/// The whiteout an entry's last name component is, if it is one.
pub(super) fn whiteout_of(name: &[u8]) -> Option<Whiteout<'_>> {
    let rest = name.strip_prefix(WHITEOUT_PREFIX.as_bytes())?;
    Some(if name == OPAQUE.as_bytes() {
        Whiteout::Opaque
    } else if rest == b"." || rest == b".." {
        Whiteout::Invalid
    } else if rest.starts_with(WHITEOUT_PREFIX.as_bytes()) || rest.is_empty() {
        Whiteout::Ignored
    } else {
        Whiteout::Remove(OsStr::from_bytes(rest))
    })
}

/// Removes from `parent` (at resolved `path`) everything the current layer
/// did not write (`written` holds resolved paths).
pub(super) fn opaque(
    parent: &OwnedFd,
    path: &[OsString],
    written: &HashSet<Vec<OsString>>,
    shown: &str,
) -> Result<(), UnpackError> {
    let dir = rustix::io::dup(parent).map_err(io_err(shown))?;
    prune(dir, path.to_vec(), written, shown)
}

fn prune(
    dir: OwnedFd,
    path: Vec<OsString>,
    written: &HashSet<Vec<OsString>>,
    shown: &str,
) -> Result<(), UnpackError> {
    for name in list_dir(&dir).map_err(io_err(shown))? {
        let mut child = path.clone();
        child.push(name.clone());
        if !written.contains(&child) {
            remove_all_at(&dir, &name).map_err(io_err(shown))?;
            continue;
        }
        if let Ok(sub) = open_dir_at(&dir, &name) {
            prune(sub, child, written, shown)?;
        }
    }
    Ok(())
}
