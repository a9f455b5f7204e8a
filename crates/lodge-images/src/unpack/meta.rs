//! An entry's metadata as the layer recorded it: the tar header with pax
//! overrides (owners, mtimes, extended attributes) applied.

use std::ffi::OsString;
use std::io::Read;

use rustix::fs::{Timespec, Timestamps};

use super::error::UnpackError;

pub(super) fn times_of(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Metadata of one entry, with pax overrides applied.
pub(super) struct Meta {
    pub(super) mode: u32,
    uid: u32,
    gid: u32,
    pub(super) mtime: i64,
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    pub(super) fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Self, UnpackError> {
        let h = entry.header();
        let bad = |what: &str| UnpackError::Malformed(format!("unreadable {what} in a tar header"));
        let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
        let mut uid = u32::try_from(h.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid"))?;
        let mut gid = u32::try_from(h.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid"))?;
        let mut mtime = i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(0);
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let num = || std::str::from_utf8(value).ok();
                match key {
                    "uid" => {
                        if let Some(v) = num().and_then(|s| s.parse().ok()) {
                            uid = v;
                        }
                    }
                    "gid" => {
                        if let Some(v) = num().and_then(|s| s.parse().ok()) {
                            gid = v;
                        }
                    }
                    "mtime" => {
                        if let Some(v) = num()
                            .and_then(|s| s.split('.').next())
                            .and_then(|s| s.parse().ok())
                        {
                            mtime = v;
                        }
                    }
                    k => {
                        if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((OsString::from(name), value.to_vec()));
                        }
                    }
                }
            }
        }
        // -1 means "unchanged" to chown(2), never an owner.
        if uid == u32::MAX || gid == u32::MAX {
            return Err(bad("owner (-1)"));
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    pub(super) fn uid(&self) -> rustix::fs::Uid {
        rustix::fs::Uid::from_raw(self.uid)
    }

    pub(super) fn gid(&self) -> rustix::fs::Gid {
        rustix::fs::Gid::from_raw(self.gid)
    }
}
