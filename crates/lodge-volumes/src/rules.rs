//! The pure rules of volumes, checked once at the edge: names and ids,
//! sizes, mount paths, and who may share a volume. No I/O here, so every
//! rule is unit-tested; the manager (and the instance manager, for mount
//! paths and sharing) call these before touching anything.

use crate::error::{Error, Result};

/// One gigabyte as hypeman counts `size_gb`: 2^30 bytes.
pub const GB: u64 = 1 << 30;

/// Largest `size_gb` accepted: volumes are sparse, but a bound keeps a typo
/// (`size_gb: 1000000`) from making a file no disk could ever fill.
pub const MAX_SIZE_GB: u64 = 8 * 1024;

/// Longest volume name or id.
const MAX_NAME: usize = 63;

/// Longest mount path.
const MAX_MOUNT_PATH: usize = 255;

/// Guest paths a volume may not cover: the guest needs them for itself.
const RESERVED: &[&str] = &["/proc", "/sys", "/dev"];

/// A volume name: lowercase letters, digits, `-`, `_`, `.`, starting with a
/// letter or digit, at most 63 bytes (no `/`, so never a path).
pub fn check_name(name: &str) -> Result<()> {
    if valid_token(name, b"-_.") {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// A volume id (also its directory name): as a name, without `.`.
pub fn check_id(id: &str) -> Result<()> {
    if valid_token(id, b"-_") {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

fn valid_token(s: &str, extra: &[u8]) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
}

/// A fresh volume id: `vol-` and 16 random lowercase letters and digits.
pub fn new_id() -> String {
    use rand::Rng;
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut id = String::from("vol-");
    for _ in 0..16 {
        id.push(ALNUM[rng.random_range(0..ALNUM.len())] as char);
    }
    id
}

/// `size_gb` as given (a JSON number or a query string): a whole number of
/// gigabytes from 1 to [`MAX_SIZE_GB`]. Returns the size in gigabytes.
pub fn parse_size_gb(given: &str) -> Result<u64> {
    let bad = |reason: &str| Error::InvalidSize {
        given: format!("{given:?}"),
        reason: reason.to_string(),
    };
    let s = given.trim();
    if s.starts_with('-') {
        return Err(bad("must be at least 1"));
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("expected a whole number of gigabytes, e.g. 10"));
    }
    let n: u64 = s
        .parse()
        .map_err(|_| bad(&format!("must be at most {MAX_SIZE_GB}")))?;
    if n == 0 {
        return Err(bad("must be at least 1"));
    }
    if n > MAX_SIZE_GB {
        return Err(bad(&format!("must be at most {MAX_SIZE_GB}")));
    }
    Ok(n)
}

/// A size already parsed as a number: from 1 to [`MAX_SIZE_GB`].
pub fn check_size_gb(n: u64) -> Result<u64> {
    parse_size_gb(&n.to_string())
}

/// `size_gb` from a JSON body: a number or a string holding one.
pub fn size_gb_from_json(v: &serde_json::Value) -> Result<u64> {
    match v {
        serde_json::Value::Number(n) => parse_size_gb(&n.to_string()),
        serde_json::Value::String(s) => parse_size_gb(s),
        other => Err(Error::InvalidSize {
            given: other.to_string(),
            reason: "expected a whole number of gigabytes, e.g. 10".into(),
        }),
    }
}

/// A guest mount path: absolute, not `/`, normalised (no `.`, `..` or empty
/// components, no trailing `/`), without commas, whitespace or control
/// characters (it travels in mount options and on the guest's command
/// lines), at most 255 bytes, and not over `/proc`, `/sys` or `/dev`.
pub fn check_mount_path(path: &str) -> Result<()> {
    let bad = |reason: &str| Error::InvalidMountPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if !path.starts_with('/') {
        return Err(bad("must be absolute"));
    }
    if path == "/" {
        return Err(bad("cannot be the guest's root"));
    }
    if path.len() > MAX_MOUNT_PATH {
        return Err(bad("is longer than 255 bytes"));
    }
    if path
        .chars()
        .any(|c| c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(bad("cannot hold commas, whitespace or control characters"));
    }
    if path.ends_with('/') {
        return Err(bad("cannot end with '/'"));
    }
    for comp in path[1..].split('/') {
        match comp {
            "" => return Err(bad("cannot hold an empty component ('//')")),
            "." | ".." => return Err(bad("cannot hold '.' or '..' components")),
            _ => {}
        }
    }
    if let Some(r) = RESERVED.iter().find(|r| within(path, r)) {
        return Err(bad(&format!("cannot be on or under {r}")));
    }
    Ok(())
}

/// Whether `path` is `dir` or lies under it (both normalised).
fn within(path: &str, dir: &str) -> bool {
    path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// A new mount path against the others of the same instance: not the
/// same, and neither inside the other (mount order would then matter).
pub fn check_no_collision<'a>(path: &str, others: impl IntoIterator<Item = &'a str>) -> Result<()> {
    for other in others {
        if within(path, other) || within(other, path) {
            return Err(Error::MountPathCollision {
                path: path.to_string(),
                other: other.to_string(),
            });
        }
    }
    Ok(())
}

/// One attachment of a volume to an instance, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub instance_id: String,
    pub mount_path: String,
    /// Read-only for the volume itself (an overlay attachment writes to
    /// its instance's own upper disk, so it counts as read-only here).
    pub readonly: bool,
}

/// The sharing rule: any number of read-only attachments, or exactly one
/// read-write; an instance attaches a volume at most once.
pub fn check_share(
    volume: &str,
    existing: &[Attachment],
    instance_id: &str,
    readonly: bool,
) -> Result<()> {
    let conflict = |reason: String| Error::AttachConflict {
        volume: volume.to_string(),
        reason,
    };
    if let Some(a) = existing.iter().find(|a| a.instance_id == instance_id) {
        return Err(conflict(format!(
            "already attached to instance {} at {}",
            a.instance_id, a.mount_path
        )));
    }
    if let Some(a) = existing.iter().find(|a| !a.readonly) {
        return Err(conflict(format!(
            "attached read-write to instance {}; a volume attached read-write cannot be attached anywhere else",
            a.instance_id
        )));
    }
    if !readonly {
        if let Some(a) = existing.first() {
            return Err(conflict(format!(
                "attached read-only to instance {}; a read-write attachment needs the volume attached nowhere else",
                a.instance_id
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        for ok in ["data", "db-1", "a", "x.y_z", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a/b",
            "a b",
            "..",
            ".a",
            &"a".repeat(64),
            "é",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_id("vol-abc_1").is_ok());
        assert!(check_id("a.b").is_err());
        assert!(check_id("../etc").is_err());
        let id = new_id();
        assert!(check_id(&id).is_ok(), "{id}");
        assert_ne!(id, new_id());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_gb("1").ok(), Some(1));
        assert_eq!(parse_size_gb(" 10 ").ok(), Some(10));
        for bad in [
            "0",
            "-1",
            "12XB",
            "",
            "1.5",
            "99999999999999999999999",
            "8193",
        ] {
            let e = parse_size_gb(bad).expect_err(bad);
            assert!(matches!(e, Error::InvalidSize { .. }), "{bad}: {e}");
        }
        assert_eq!(
            parse_size_gb("-1").expect_err("neg").to_string(),
            "size_gb \"-1\": must be at least 1"
        );
        assert_eq!(
            parse_size_gb("12XB").expect_err("unit").to_string(),
            "size_gb \"12XB\": expected a whole number of gigabytes, e.g. 10"
        );
        assert_eq!(size_gb_from_json(&serde_json::json!(3)).ok(), Some(3));
        assert_eq!(size_gb_from_json(&serde_json::json!("4")).ok(), Some(4));
        assert!(size_gb_from_json(&serde_json::json!(-1)).is_err());
        assert!(size_gb_from_json(&serde_json::json!(1.5)).is_err());
        assert!(size_gb_from_json(&serde_json::json!(null)).is_err());
    }

    #[test]
    fn mount_paths() {
        for ok in ["/data", "/var/lib/db", "/a-b_c.d", "/devices", "/system"] {
            assert!(check_mount_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "data", "/", "", "/a,b", "/a b", "/a\tb", "/a/../b", "/a/./b", "/a//b", "/a/", "/..",
            "/proc", "/sys/x", "/dev", "/dev/shm",
        ] {
            assert!(
                matches!(check_mount_path(bad), Err(Error::InvalidMountPath { .. })),
                "{bad}"
            );
        }
        assert!(check_mount_path(&format!("/{}", "a".repeat(255))).is_err());
    }

    #[test]
    fn collisions() {
        assert!(check_no_collision("/data", ["/other", "/data2"]).is_ok());
        for (p, o) in [
            ("/data", "/data"),
            ("/data/x", "/data"),
            ("/data", "/data/x"),
        ] {
            assert!(
                matches!(
                    check_no_collision(p, [o]),
                    Err(Error::MountPathCollision { .. })
                ),
                "{p} {o}"
            );
        }
    }

    #[test]
    fn many_readers_or_one_writer() {
        let ro = |i: &str| Attachment {
            instance_id: i.into(),
            mount_path: "/d".into(),
            readonly: true,
        };
        let rw = |i: &str| Attachment {
            readonly: false,
            ..ro(i)
        };
        assert!(check_share("v", &[], "a", false).is_ok());
        assert!(check_share("v", &[], "a", true).is_ok());
        assert!(check_share("v", &[ro("a")], "b", true).is_ok());
        assert!(check_share("v", &[ro("a"), ro("b")], "c", true).is_ok());
        for (existing, id, readonly) in [
            (vec![ro("a")], "b", false),
            (vec![rw("a")], "b", true),
            (vec![rw("a")], "b", false),
            (vec![ro("a")], "a", true),
        ] {
            assert!(
                matches!(
                    check_share("v", &existing, id, readonly),
                    Err(Error::AttachConflict { .. })
                ),
                "{existing:?} {id} {readonly}"
            );
        }
    }
}
