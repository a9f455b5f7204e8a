//! The volume store against real `mkfs.ext4` and real archives: creates,
//! collisions, imports with modes and symlinks, hostile archives, and that
//! a failure leaves nothing behind. Disk contents are read back with
//! `debugfs` (no mount, no root needed).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use lodge_volumes::{Attachment, CreateRequest, Error, ErrorKind, Options, Volumes};

type Attached = Arc<Mutex<Vec<(String, Attachment)>>>;

fn store(dir: &Path, opts: Options) -> (Arc<Volumes>, Attached) {
    let attached: Attached = Arc::default();
    let a = attached.clone();
    let fun: lodge_volumes::AttachmentsFn = Arc::new(move |id: &str| {
        Ok(a.lock()
            .expect("lock")
            .iter()
            .filter(|(v, _)| v == id)
            .map(|(_, a)| a.clone())
            .collect())
    });
    let v = Volumes::open(dir, opts, fun).expect("open");
    (Arc::new(v), attached)
}

fn opts() -> Options {
    Options {
        min_free: 0,
        max_archive: 64 << 20,
    }
}

fn req(name: &str, size_gb: Option<u64>) -> CreateRequest {
    CreateRequest {
        id: None,
        name: name.into(),
        size_gb,
        tags: BTreeMap::new(),
    }
}

/// Entries of the store dir other than volumes (debris).
fn debris(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

fn debugfs(disk: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(disk)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn targz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gz");
    gz.finish().expect("gz")
}

fn entry(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

#[tokio::test]
async fn create_get_list_delete_and_collisions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (v, attached) = store(tmp.path(), opts());
    let mut r = req("data", Some(1));
    r.tags.insert("team".into(), "a".into());
    let vol = v.create(r).await.expect("create");
    assert_eq!(vol.record.size_gb, 1);
    assert!(vol.record.id.starts_with("vol-"));
    let data = v.data_path(&vol.record.id);
    assert_eq!(std::fs::metadata(&data).expect("data").len(), 1 << 30);
    assert_eq!(v.get("data").expect("by name").record, vol.record);
    assert_eq!(v.get(&vol.record.id).expect("by id").record, vol.record);
    assert_eq!(v.list().expect("list").len(), 1);

    let e = v
        .create(req("data", Some(1)))
        .await
        .expect_err("name taken");
    assert!(matches!(e, Error::NameTaken(_)), "{e}");
    let mut r = req("other", Some(1));
    r.id = Some(vol.record.id.clone());
    let e = v.create(r).await.expect_err("id taken");
    assert!(matches!(e, Error::IdTaken(_)), "{e}");
    for bad in [Some(0), None] {
        let e = v.create(req("x", bad)).await.expect_err("size");
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    }
    let e = v.create(req("Bad Name", Some(1))).await.expect_err("name");
    assert_eq!(e.kind(), ErrorKind::Invalid);
    let mut r = req("y", Some(1));
    r.id = Some("../escape".into());
    assert_eq!(
        v.create(r).await.expect_err("id").kind(),
        ErrorKind::Invalid
    );

    // Attached: delete refused (409), then allowed once detached.
    attached.lock().expect("lock").push((
        vol.record.id.clone(),
        Attachment {
            instance_id: "inst1".into(),
            mount_path: "/data".into(),
            readonly: false,
        },
    ));
    let e = v.delete("data").await.expect_err("attached");
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("inst1"), "{e}");
    assert!(data.exists());
    attached.lock().expect("lock").clear();
    v.delete("data").await.expect("delete");
    assert!(!data.exists());
    assert!(matches!(v.get("data"), Err(Error::NotFound(_))));
    assert_eq!(
        v.delete("data").await.expect_err("gone").kind(),
        ErrorKind::NotFound
    );
    assert!(debris(tmp.path()).is_empty());
}

#[tokio::test]
async fn an_archive_arrives_with_its_modes_and_symlinks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (v, _) = store(tmp.path(), opts());
    let body = targz(|b| {
        let d = entry("app/", tar::EntryType::Directory, 0o750, 0);
        b.append(&d, std::io::empty()).expect("dir");
        let f = entry("app/run.sh", tar::EntryType::Regular, 0o755, 5);
        b.append(&f, &b"hello"[..]).expect("file");
        let f = entry("app/secret", tar::EntryType::Regular, 0o600, 3);
        b.append(&f, &b"abc"[..]).expect("file");
        let mut l = entry("app/link", tar::EntryType::Symlink, 0o777, 0);
        l.set_link_name("run.sh").expect("link");
        l.set_cksum();
        b.append(&l, std::io::empty()).expect("link");
    });
    let vol = v
        .create_from_archive(req("imported", None), Box::new(std::io::Cursor::new(body)))
        .await
        .expect("import");
    assert_eq!(vol.record.size_gb, 1, "sized from content");
    let disk = v.data_path(&vol.record.id);
    assert_eq!(debugfs(&disk, "cat /app/run.sh"), "hello");
    let st = debugfs(&disk, "stat /app/secret");
    assert!(st.contains("Mode:  0600"), "{st}");
    let st = debugfs(&disk, "stat /app");
    assert!(st.contains("Mode:  0750"), "{st}");
    let st = debugfs(&disk, "stat /app/link");
    assert!(
        st.contains("Type: symlink") && st.contains("Fast link dest: \"run.sh\""),
        "{st}"
    );
    // The staging tree is gone: only the disk and the record remain.
    let mut files: Vec<String> = std::fs::read_dir(tmp.path().join(&vol.record.id))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["data.raw", "volume.json"]);
}

#[tokio::test]
async fn hostile_or_oversized_archives_leave_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (v, _) = store(
        tmp.path(),
        Options {
            min_free: 0,
            max_archive: 4 << 20,
        },
    );
    // `../` escape.
    let escape = targz(|b| {
        // Written as a raw header: the tar crate refuses `..` names.
        let f = entry("../evil", tar::EntryType::Regular, 0o644, 1);
        b.append(&f, &b"x"[..]).expect("append");
    });
    let e = v
        .create_from_archive(req("esc", None), Box::new(std::io::Cursor::new(escape)))
        .await
        .expect_err("escape");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(e.to_string().contains(".."), "{e}");
    assert!(
        !tmp.path().join("evil").exists() && !tmp.path().parent().expect("p").join("evil").exists()
    );
    // A symlink then a write through it.
    let through = targz(|b| {
        let mut l = entry("l", tar::EntryType::Symlink, 0o777, 0);
        l.set_link_name("/../../../../tmp").expect("link");
        l.set_cksum();
        b.append(&l, std::io::empty()).expect("link");
        let f = entry("l/x", tar::EntryType::Regular, 0o644, 1);
        b.append(&f, &b"x"[..]).expect("file");
    });
    let e = v
        .create_from_archive(
            req("through", None),
            Box::new(std::io::Cursor::new(through)),
        )
        .await
        .expect_err("a write through a link out of the tree");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    // A bomb: 8 MiB of zeros compress to a few KiB; the cap here is 4 MiB.
    let bomb = targz(|b| {
        let f = entry("zeros", tar::EntryType::Regular, 0o644, 8 << 20);
        b.append(&f, std::io::repeat(0).take_exact(8 << 20))
            .expect("file");
    });
    assert!(bomb.len() < 256 << 10, "{}", bomb.len());
    let e = v
        .create_from_archive(
            req("bomb", None),
            Box::new(std::io::Cursor::new(bomb.clone())),
        )
        .await
        .expect_err("bomb");
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(e.to_string().contains("LODGE_VOLUME_MAX_ARCHIVE"), "{e}");
    // Not an archive; an empty body.
    let e = v
        .create_from_archive(
            req("junk", None),
            Box::new(std::io::Cursor::new(vec![7u8; 4096])),
        )
        .await
        .expect_err("junk");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    let e = v
        .create_from_archive(req("empty", None), Box::new(std::io::empty()))
        .await
        .expect_err("empty");
    assert!(matches!(e, Error::EmptyArchive), "{e}");
    // Nothing half-made: no volume, no debris, the names are free.
    assert!(v.list().expect("list").is_empty());
    assert!(debris(tmp.path()).is_empty(), "{:?}", debris(tmp.path()));
    v.create(req("bomb", Some(1)))
        .await
        .expect("the name is free again");
}

#[tokio::test]
async fn a_full_disk_is_refused_before_anything_is_made() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (v, _) = store(
        tmp.path(),
        Options {
            min_free: u64::MAX,
            max_archive: 1 << 30,
        },
    );
    let e = v.create(req("big", Some(1))).await.expect_err("no space");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(e.to_string().contains("LODGE_VOLUME_MIN_FREE"), "{e}");
    assert!(v.list().expect("list").is_empty());
    assert!(debris(tmp.path()).is_empty());
}

trait TakeExact: std::io::Read + Sized {
    fn take_exact(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeExact for R {}

/// A disk that really fills up under mkfs (a 256 KiB tmpfs; root only, else
/// skipped): the create fails as a full disk and leaves nothing behind.
#[tokio::test]
async fn a_disk_filling_up_during_mkfs_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping: cannot mount a tmpfs (not root)");
        return;
    }
    let result = {
        let (v, _) = store(&mnt.join("volumes"), opts());
        let e = v.create(req("big", Some(1))).await.expect_err("no space");
        let listed = v.list().expect("list").len();
        (
            e.kind(),
            e.to_string(),
            listed,
            debris(&mnt.join("volumes")),
        )
    };
    let umount = Command::new("umount").arg(&mnt).status();
    assert!(umount.is_ok_and(|s| s.success()), "umount");
    let (kind, message, listed, left) = result;
    assert_eq!(kind, ErrorKind::NoSpace, "{message}");
    assert_eq!((listed, left), (0, Vec::<String>::new()));
}
