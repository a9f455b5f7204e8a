//! Names of the files in a log directory, shared by the writer and the reader.
//!
//! A log `app` lives in `app.log` (the live file, the only one ever written)
//! and in rotated segments `app.log.NNNNNNNN`: a sequence number, zero-padded
//! to at least eight digits, that only grows. The live file's own sequence
//! number is one more than the highest rotated one (1 when there is none),
//! which is the number it will be renamed to. Only suffixes of eight or more
//! digits are ours, so an operator's `logrotate` leftovers (`app.log.1`,
//! `app.log.2.gz`) are never read, renumbered or deleted by lodge.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;

/// Opens a log file for reading without updating its access time
/// (`O_NOATIME`): following a busy log would otherwise dirty the inode on
/// every read. `O_NOATIME` is refused (`EPERM`) to a reader that does not
/// own the file; it then opens normally.
pub(crate) fn open_log(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => std::fs::File::open(path),
        other => other,
    }
}

/// Minimum number of digits in a rotated segment's suffix.
const SEQ_DIGITS: usize = 8;

/// Which log of an instance directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The guest console: the supervised command's stdout (`app.log`).
    App,
    /// The hypervisor's own diagnostics: the supervised command's stderr (`vmm.log`).
    Vmm,
    /// lodge's own record of what it did to the instance (`lodge.log`).
    Lodge,
}

impl Source {
    /// Name of the live file in the log directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Source::App => "app.log",
            Source::Vmm => "vmm.log",
            Source::Lodge => "lodge.log",
        }
    }

    /// Name of this log's rotated segment number `seq`.
    pub fn segment_name(self, seq: u64) -> String {
        segment_name(self.file_name(), seq)
    }

    /// The sequence number if `name` is one of this log's rotated segments.
    pub fn parse_segment_name(self, name: &OsStr) -> Option<u64> {
        parse_segment_name(self.file_name(), name)
    }
}

/// An unknown `--source` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log source {0:?} (use app, vmm or lodge)")]
pub struct UnknownSource(pub String);

impl FromStr for Source {
    type Err = UnknownSource;

    /// Accepts `app`, `vmm` and `lodge`; `hypeman` is hypeman's name for `lodge`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "app" => Ok(Source::App),
            "vmm" => Ok(Source::Vmm),
            "lodge" | "hypeman" => Ok(Source::Lodge),
            _ => Err(UnknownSource(s.to_owned())),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::App => "app",
            Source::Vmm => "vmm",
            Source::Lodge => "lodge",
        })
    }
}

pub(crate) fn segment_name(base: &str, seq: u64) -> String {
    format!("{base}.{seq:0width$}", width = SEQ_DIGITS)
}

pub(crate) fn parse_segment_name(base: &str, name: &OsStr) -> Option<u64> {
    let suffix = name.to_str()?.strip_prefix(base)?.strip_prefix('.')?;
    if suffix.len() < SEQ_DIGITS || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// Suffix of a compressed segment (see `stored`).
pub(crate) const ZST: &str = ".zst";

/// The sequence number if `name` is a compressed segment of `base`
/// (`base.NNNNNNNN.zst`, see `stored`).
pub(crate) fn parse_compressed_name(base: &str, name: &OsStr) -> Option<u64> {
    let plain = name.to_str()?.strip_suffix(ZST)?;
    parse_segment_name(base, OsStr::new(plain))
}

/// Sequence numbers of `base`'s rotated segments in `dir`, ascending, each
/// once whether it is plain, compressed or (for a moment) both.
pub(crate) fn list_segments(dir: &Path, base: &str) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in dir.read_dir()? {
        let name = entry?.file_name();
        if let Some(seq) =
            parse_segment_name(base, &name).or_else(|| parse_compressed_name(base, &name))
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    seqs.dedup();
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_zero_padded_and_grow() {
        assert_eq!(Source::App.segment_name(1), "app.log.00000001");
        assert_eq!(Source::Vmm.segment_name(12345678), "vmm.log.12345678");
        assert_eq!(Source::App.segment_name(123456789), "app.log.123456789");
    }

    #[test]
    fn parse_accepts_only_our_names() {
        let p = |s: &str| Source::App.parse_segment_name(OsStr::new(s));
        assert_eq!(p("app.log.00000001"), Some(1));
        assert_eq!(p("app.log.123456789"), Some(123456789));
        assert_eq!(p("app.log.1"), None, "logrotate's numbering is not ours");
        assert_eq!(p("app.log.0000001"), None);
        assert_eq!(p("app.log.00000001.gz"), None);
        assert_eq!(p("app.log"), None);
        assert_eq!(p("vmm.log.00000001"), None);
        assert_eq!(p("app.log.-0000001"), None);
        assert_eq!(p("app.log.+0000001"), None);
        assert_eq!(p("app.logx00000001"), None);
        assert_eq!(p("app.log.99999999999999999999999"), None, "overflow");
    }

    #[test]
    fn round_trip() {
        for seq in [1, 9, 10, 99_999_999, 100_000_000, u64::MAX] {
            let name = Source::Lodge.segment_name(seq);
            assert_eq!(
                Source::Lodge.parse_segment_name(OsStr::new(&name)),
                Some(seq)
            );
        }
    }

    #[test]
    fn list_sorts_numerically() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        for name in [
            "app.log.100000000",
            "app.log.00000002",
            "app.log.1",
            "app.log",
            "vmm.log.00000001",
            "app.log.00000003.zst",
            "app.log.00000002.zst",
            "app.log.00000004.zst.tmp",
            "app.log.5.zst",
        ] {
            std::fs::write(dir.path().join(name), b"")?;
        }
        assert_eq!(
            list_segments(dir.path(), "app.log")?,
            vec![2, 3, 100_000_000]
        );
        Ok(())
    }

    #[test]
    fn source_names() {
        assert_eq!("hypeman".parse::<Source>(), Ok(Source::Lodge));
        assert_eq!("app".parse::<Source>(), Ok(Source::App));
        assert!("APP".parse::<Source>().is_err());
        assert_eq!(Source::Vmm.file_name(), "vmm.log");
    }
}
