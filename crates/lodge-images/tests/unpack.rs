//! Layer application against real trees: docker's view after whiteouts and
//! opaque directories, metadata kept, and hostile layers refused without a
//! single byte written outside the root.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use lodge_images::builder::LayerBuilder;
use lodge_images::unpack::{UnpackError, Unpacker};

fn tar(f: impl FnOnce(&mut LayerBuilder) -> std::io::Result<()>) -> Vec<u8> {
    let mut b = LayerBuilder::new();
    f(&mut b).expect("build layer");
    b.finish().expect("finish layer")
}

fn gz(t: &[u8]) -> Vec<u8> {
    lodge_images::builder::Layer::gzip(t).expect("gzip").blob
}

fn apply_all(root: &Path, layers: &[Vec<u8>]) -> Result<(), UnpackError> {
    let mut u = Unpacker::new(root).expect("unpacker");
    for l in layers {
        u.apply(&l[..])?;
    }
    u.finish()
}

/// Every path under `root`, sorted, directories with a trailing slash.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readdir").flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            if e.file_type().expect("type").is_dir() {
                out.push(format!("{rel}/"));
                stack.push(p);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn three_layers_with_whiteouts_give_dockers_view() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let l1 = tar(|b| {
        b.dir("etc", 0o755)?
            .file("etc/keep", 0o644, b"keep\n")?
            .file("etc/gone", 0o644, b"gone\n")?
            .dir("data", 0o755)?
            .file("data/old1", 0o644, b"1")?
            .dir("data/sub", 0o755)?
            .file("data/sub/old2", 0o644, b"2")?
            .dir("tree", 0o755)?
            .file("tree/f", 0o644, b"f")?;
        Ok(())
    });
    let l2 = tar(|b| {
        b.file("etc/added", 0o600, b"added\n")?
            .whiteout("etc/gone")?
            .opaque("data")?
            .file("data/new", 0o644, b"new\n")?
            .whiteout("tree")?;
        Ok(())
    });
    let l3 = tar(|b| {
        b.file("etc/keep", 0o644, b"replaced\n")?
            .dir("tree", 0o700)?;
        Ok(())
    });
    apply_all(&root, &[gz(&l1), l2, gz(&l3)]).expect("apply");
    assert_eq!(
        listing(&root),
        vec![
            "data/",
            "data/new",
            "etc/",
            "etc/added",
            "etc/keep",
            "tree/"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/keep")).expect("read"),
        "replaced\n"
    );
    let mode = std::fs::metadata(root.join("etc/added"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    assert_eq!(
        std::fs::metadata(root.join("tree"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn opaque_marker_after_new_entries_keeps_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let l1 = tar(|b| {
        b.dir("d", 0o755)?.file("d/old", 0o644, b"o")?;
        Ok(())
    });
    // The marker may come after the layer's own entries of the directory.
    let l2 = tar(|b| {
        b.dir("d", 0o755)?.file("d/new", 0o644, b"n")?.opaque("d")?;
        Ok(())
    });
    apply_all(root, &[l1, l2]).expect("apply");
    assert_eq!(listing(root), vec!["d/", "d/new"]);
}

#[test]
fn links_modes_owners_and_devices_are_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let l = tar(|b| {
        b.dir("bin", 0o755)?
            .file("bin/tool", 0o4755, b"#!/bin/sh\n")?
            .file_owned("bin/owned", 0o640, 1234, 5678, b"x")?
            .hardlink("bin/tool2", "bin/tool")?
            .symlink("bin/abs", "/bin/tool")?
            .symlink("lib", "usr/lib")?
            .dir("tmp", 0o1777)?
            .dir("dev", 0o755)?
            .device("dev/null", tar::EntryType::Char, 0o666, 1, 3)?
            .device("dev/fifo", tar::EntryType::Fifo, 0o600, 0, 0)?;
        Ok(())
    });
    apply_all(root, &[l]).expect("apply");
    let tool = std::fs::metadata(root.join("bin/tool")).expect("meta");
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(tool.nlink(), 2);
    assert_eq!(
        std::fs::metadata(root.join("bin/tool2"))
            .expect("meta")
            .ino(),
        tool.ino()
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/abs"))
            .expect("link")
            .to_str(),
        Some("/bin/tool")
    );
    assert_eq!(
        std::fs::read_link(root.join("lib")).expect("link").to_str(),
        Some("usr/lib")
    );
    assert_eq!(
        std::fs::metadata(root.join("tmp")).expect("meta").mode() & 0o7777,
        0o1777
    );
    assert!(std::fs::symlink_metadata(root.join("dev/fifo"))
        .expect("meta")
        .file_type()
        .is_fifo());
    assert_eq!(tool.mtime(), lodge_images::builder::MTIME as i64);
    if rustix::process::geteuid().is_root() {
        let owned = std::fs::metadata(root.join("bin/owned")).expect("meta");
        assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
        let null = std::fs::metadata(root.join("dev/null")).expect("meta");
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    }
}

#[test]
fn files_replace_symlinks_instead_of_writing_through_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    std::fs::write(&outside, "original").expect("write");
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let l1 = tar(|b| {
        b.symlink("victim", outside.to_str().expect("utf-8"))?;
        Ok(())
    });
    let l2 = tar(|b| {
        b.file("victim", 0o644, b"pwned")?;
        Ok(())
    });
    apply_all(&root, &[l1, l2]).expect("apply");
    assert_eq!(std::fs::read_to_string(&outside).expect("read"), "original");
    assert_eq!(
        std::fs::read_to_string(root.join("victim")).expect("read"),
        "pwned"
    );
}

#[test]
fn absolute_symlinks_resolve_inside_the_image() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    // var/run -> /run (as Debian images have), then a file through it.
    let l = tar(|b| {
        b.dir("run", 0o755)?
            .dir("var", 0o755)?
            .symlink("var/run", "/run")?
            .file("var/run/pid", 0o644, b"1")?;
        Ok(())
    });
    apply_all(&root, &[l]).expect("apply");
    assert_eq!(
        std::fs::read_to_string(root.join("run/pid")).expect("read"),
        "1"
    );
}

fn refused(layers: &[Vec<u8>], what: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let before = listing(tmp.path());
    let err = apply_all(&root, layers).expect_err(what);
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{what}: {err}");
    // Nothing appeared beside the root.
    let after: Vec<String> = listing(tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with("root/") || p == "root/")
        .collect();
    assert_eq!(after, before, "{what}");
    for p in ["/escaped", "/tmp/escaped-abs", "/tmp/escaped"] {
        assert!(!Path::new(p).exists(), "{what}: {p} was written");
    }
}

#[test]
fn hostile_layers_are_refused() {
    refused(
        &[tar(|b| {
            b.raw(b"../escaped", tar::EntryType::Regular, None, b"x")?;
            Ok(())
        })],
        "dot-dot entry",
    );
    refused(
        &[tar(|b| {
            b.raw(b"a/../../escaped", tar::EntryType::Regular, None, b"x")?;
            Ok(())
        })],
        "dot-dot inside the path",
    );
    refused(
        &[tar(|b| {
            b.raw(b"/tmp/escaped-abs", tar::EntryType::Regular, None, b"x")?;
            Ok(())
        })],
        "absolute entry",
    );
    refused(
        &[tar(|b| {
            b.symlink("evil", "../../../../../../..")?.raw(
                b"evil/escaped",
                tar::EntryType::Regular,
                None,
                b"x",
            )?;
            Ok(())
        })],
        "write through an escaping symlink",
    );
    refused(
        &[
            tar(|b| {
                b.dir("d", 0o755)?.symlink("d/up", "../..")?;
                Ok(())
            }),
            tar(|b| {
                b.file("d/up/escaped", 0o644, b"x")?;
                Ok(())
            }),
        ],
        "escaping symlink from an earlier layer",
    );
    refused(
        &[tar(|b| {
            b.raw(
                b"link",
                tar::EntryType::Link,
                Some(b"../../etc/passwd"),
                b"",
            )?;
            Ok(())
        })],
        "hard link out",
    );
    refused(
        &[tar(|b| {
            b.dir("d", 0o755)?.file("d/.wh...", 0o644, b"")?;
            Ok(())
        })],
        "whiteout of the parent directory",
    );
    refused(
        &[tar(|b| {
            b.symlink("loop", "loop")?
                .raw(b"loop/x", tar::EntryType::Regular, None, b"x")?;
            Ok(())
        })],
        "symlink loop",
    );
}

#[test]
fn garbage_is_a_malformed_layer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut u = Unpacker::new(tmp.path()).expect("unpacker");
    let mut bad = gz(&tar(|b| {
        b.file("f", 0o644, &[7u8; 10000])?;
        Ok(())
    }));
    let n = bad.len();
    bad.truncate(n / 2);
    assert!(matches!(
        u.apply(&bad[..]),
        Err(UnpackError::Malformed(_)) | Err(UnpackError::Io { .. })
    ));
}
