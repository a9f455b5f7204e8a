//! `lodge cp [-a] [-L] SRC DST`: copy between the host and an instance,
//! with `INSTANCE:PATH` on one side, following `docker cp`'s rules:
//!
//! - a file lands at DST, or inside DST when DST is a directory; a DST
//!   ending in `/` must be an existing directory;
//! - a directory becomes DST when DST does not exist, or DST/NAME when it
//!   does (SRC ending in `/.` copies its contents into DST instead);
//! - DST's parent must exist; nothing else is created on the way;
//! - modes and times are kept, owners only with `-a`; symlinks are copied
//!   as links unless `-L`;
//! - out of an instance, setuid and setgid bits are dropped unless `-a`,
//!   and no device node is ever created: the guest is not trusted.
//!
//! Both directions stream entries over the API's cp WebSocket (uploads use
//! lodge's one-connection `stream` form), file contents in chunks. The
//! walking and unpacking rules are [`lodge_guest::agent::tree`]'s, the same
//! code the guest agent runs, so an entry the other side sends that would
//! land outside DST (through `..`, an absolute name, or a symlink, the root
//! included) is refused on either side. The daemon only forwards entries;
//! it writes no host files for a copy.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use lodge_guest::agent::paths::base_name;
use lodge_guest::agent::tree::{check_parent, Unpacker, Walk};
use lodge_guest::agent::EntryHeader;

use super::ws;
use crate::api::types::{direction, CpMessage, CpRequest, PathInfo, StatQuery};
use crate::cli::CpArgs;
use crate::client::{encode, Client};

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    Host(String),
    Guest { instance: String, path: String },
}

impl Location {
    /// docker's rule: a path starting with `/`, `.` or `~` is local; else
    /// `NAME:PATH` with no `/` in NAME is an instance's path.
    fn parse(arg: &str) -> Location {
        if arg.starts_with('/') || arg.starts_with('.') || arg.starts_with('~') {
            return Location::Host(arg.to_string());
        }
        match arg.split_once(':') {
            Some((instance, path)) if !instance.is_empty() && !instance.contains('/') => {
                let path = if path.starts_with('/') {
                    path.to_string()
                } else {
                    // As docker: relative to the instance's root.
                    format!("/{path}")
                };
                Location::Guest {
                    instance: instance.to_string(),
                    path,
                }
            }
            _ => Location::Host(arg.to_string()),
        }
    }
}

pub fn run(args: CpArgs) -> Result<u8> {
    let src = Location::parse(&args.src);
    let dst = Location::parse(&args.dst);
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        match (src, dst) {
            (Location::Host(src), Location::Guest { instance, path }) => {
                upload(&client, &instance, &src, &path, &args).await
            }
            (Location::Guest { instance, path }, Location::Host(dst)) => {
                download(&client, &instance, &path, &dst, &args).await
            }
            (Location::Guest { .. }, Location::Guest { .. }) => {
                bail!("copying between instances is not supported: one side must be a host path")
            }
            (Location::Host(_), Location::Host(_)) => {
                bail!("one of SRC and DST must be INSTANCE:PATH")
            }
        }?;
        Ok(0)
    })
}

/// What `stat` says about a guest path.
async fn guest_stat(client: &Client, instance: &str, path: &str) -> Result<PathInfo> {
    let query = StatQuery {
        path: Some(path.to_string()),
        follow_links: true,
    };
    let stat = format!("/instances/{}/stat", encode(instance));
    let info: PathInfo = client.get_with(&stat, &query).await?;
    if let Some(e) = &info.error {
        bail!("{e}");
    }
    Ok(info)
}

/// `SRC/.` means "the contents of SRC": the path without it, and whether
/// it was there.
fn contents_only(path: &str) -> (&str, bool) {
    match path.strip_suffix("/.") {
        Some("") => ("/", true),
        Some(p) => (p, true),
        None => (path, false),
    }
}

async fn upload(
    client: &Client,
    instance: &str,
    src: &str,
    dst: &str,
    args: &CpArgs,
) -> Result<()> {
    let (src_path, contents) = contents_only(src);
    let md = if args.follow_link {
        std::fs::metadata(src_path)
    } else {
        std::fs::symlink_metadata(src_path)
    }
    .with_context(|| src_path.to_string())?;
    let info = guest_stat(client, instance, dst).await?;
    let exists = info.exists;
    let is_dir = info.is_dir == Some(true);
    let name = base_name(src_path);
    let target = if md.is_dir() {
        match (exists, is_dir, contents) {
            (true, false, _) => {
                bail!("cannot copy a directory to a file: {dst} is not a directory")
            }
            (true, true, true) | (false, _, _) => dst.to_string(),
            (true, true, false) => format!("{}/{name}", dst.trim_end_matches('/')),
        }
    } else {
        match (exists, is_dir) {
            (false, _) if dst.ends_with('/') => {
                bail!("destination directory {dst} does not exist")
            }
            (true, true) => format!("{}/{name}", dst.trim_end_matches('/')),
            _ => dst.to_string(),
        }
    };

    // Sized (on a terminal) before the socket opens, so it never idles.
    let mut progress = super::progress::Transfer::upload(
        Path::new(src_path),
        args.follow_link,
        &format!("{instance}:{target}"),
    );

    let socket = ws::open(client, &format!("/instances/{}/cp", encode(instance))).await?;
    let (mut sink, mut stream) = socket.split();
    let request = CpRequest {
        direction: direction::TO.into(),
        guest_path: target.clone(),
        stream: true,
        ..CpRequest::default()
    };
    ws::send_json(&mut sink, &request).await?;

    // The walk reads files on a thread; messages come back in order.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Message, String>>(16);
    let (root, follow, archive) = (PathBuf::from(src_path), args.follow_link, args.archive);
    let name = name.to_string();
    std::thread::spawn(move || walk_messages(&root, &name, follow, archive, &tx));

    let mut sent_all = false;
    let answer = loop {
        tokio::select! {
            msg = rx.recv(), if !sent_all => match msg {
                Some(Ok(m)) => {
                    progress.sent(&m);
                    sink.send(m).await?
                }
                Some(Err(e)) => {
                    ws::close(&mut sink).await;
                    bail!("{e}");
                }
                None => sent_all = true,
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => match ws::parse::<CpMessage>(&t) {
                    Some(CpMessage::Result { success: true, .. }) => break None,
                    Some(CpMessage::Result { error, .. }) => break Some(error),
                    Some(CpMessage::Error { message, .. }) => break Some(Some(message)),
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => bail!("the daemon closed the copy before it finished"),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("connection to the daemon: {e}"),
            },
        }
    };
    ws::close(&mut sink).await;
    progress.finish(answer.is_none());
    // `None`: written; else the failure, when the daemon gave one.
    match answer {
        None => Ok(()),
        Some(message) => {
            let message = message.as_deref().unwrap_or("the copy failed");
            Err(anyhow!("copy to {instance}:{target}: {message}"))
        }
    }
}

fn header_message(mut header: EntryHeader, archive: bool) -> Result<Message, String> {
    if !archive {
        header.uid = None;
        header.gid = None;
    }
    ws::text(&CpMessage::Header(header.into())).map_err(|e| e.to_string())
}

/// The upload's messages: per entry a header, the contents, an end; then
/// the final end.
fn walk_messages(
    root: &Path,
    name: &str,
    follow: bool,
    archive: bool,
    tx: &tokio::sync::mpsc::Sender<Result<Message, String>>,
) {
    let send = |m: Result<Message, String>| tx.blocking_send(m).is_ok();
    let walk = match Walk::new(root, name, follow) {
        Ok(w) => w,
        Err((p, e)) => {
            send(Err(format!("{}: {e}", p.display())));
            return;
        }
    };
    let end = |last: bool| ws::text(&CpMessage::End { last }).map_err(|e| e.to_string());
    let mut buf = vec![0u8; 256 << 10];
    for item in walk {
        let found = match item {
            Ok(f) => f,
            Err((p, e)) => {
                send(Err(format!("{}: {e}", p.display())));
                return;
            }
        };
        if !send(header_message(found.header, archive)) {
            return;
        }
        if found.is_file {
            let mut file = match std::fs::File::open(&found.full) {
                Ok(f) => f,
                Err(e) => {
                    send(Err(format!("{}: {e}", found.full.display())));
                    return;
                }
            };
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !send(Ok(Message::Binary(buf[..n].to_vec().into()))) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        send(Err(format!("{}: {e}", found.full.display())));
                        return;
                    }
                }
            }
        }
        if !send(end(false)) {
            return;
        }
    }
    send(end(true));
}

async fn download(
    client: &Client,
    instance: &str,
    src: &str,
    dst: &str,
    args: &CpArgs,
) -> Result<()> {
    let (src_path, contents) = contents_only(src);
    let dst_md = std::fs::metadata(dst).ok();
    let socket = ws::open(client, &format!("/instances/{}/cp", encode(instance))).await?;
    let (mut sink, mut stream) = socket.split();
    let request = CpRequest {
        direction: direction::FROM.into(),
        guest_path: src_path.to_string(),
        follow_links: args.follow_link,
        ..CpRequest::default()
    };
    ws::send_json(&mut sink, &request).await?;

    let mut receiver = Receiver {
        origin: format!("{instance}:{src}"),
        src_path,
        dst,
        dst_md: dst_md.as_ref(),
        contents,
        archive: args.archive,
        unpacker: None,
        target: PathBuf::new(),
    };
    let mut progress = super::progress::Transfer::download(&format!("{instance}:{src}"));
    let done = loop {
        let Some(msg) = stream.next().await else {
            break Err(anyhow!("the daemon closed the copy before it finished"));
        };
        let t = match msg.context("connection to the daemon")? {
            Message::Binary(data) => {
                progress.received(data.len());
                if let Err(e) = receiver.data(&data) {
                    break Err(e);
                }
                continue;
            }
            Message::Text(t) => t,
            Message::Close(_) => {
                break Err(anyhow!("the daemon closed the copy before it finished"))
            }
            _ => continue,
        };
        let message: CpMessage =
            serde_json::from_str(&t).context("unreadable message from the daemon")?;
        if let CpMessage::Header(h) = &message {
            progress.entry(h.is_dir, h.is_symlink, h.size);
        }
        match receiver.message(message) {
            Ok(false) => {}
            Ok(true) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    ws::close(&mut sink).await;
    done?;
    receiver.finish()?;
    progress.finish(true);
    Ok(())
}

/// The receiving end of a download: what the guest sends (through the
/// daemon) lands under the target by [`Unpacker::untrusted`]'s rules.
struct Receiver<'a> {
    /// `INSTANCE:SRC`, for the guest's errors.
    origin: String,
    src_path: &'a str,
    dst: &'a str,
    dst_md: Option<&'a std::fs::Metadata>,
    contents: bool,
    archive: bool,
    unpacker: Option<Unpacker>,
    target: PathBuf,
}

impl Receiver<'_> {
    /// File contents of the current entry.
    fn data(&mut self, data: &[u8]) -> Result<()> {
        let Some(u) = self.unpacker.as_mut() else {
            bail!("file contents before any header");
        };
        u.write(data).map_err(|e| anyhow!(e))
    }

    /// A text message; true once the copy is complete.
    fn message(&mut self, message: CpMessage) -> Result<bool> {
        match message {
            CpMessage::Header(header) => {
                let header = EntryHeader::from(header);
                if self.unpacker.is_none() {
                    self.target = resolve_download_target(
                        &header,
                        self.src_path,
                        self.dst,
                        self.dst_md,
                        self.contents,
                    )?;
                    self.unpacker = Some(Unpacker::untrusted(self.target.clone(), self.archive));
                }
                if let Some(u) = self.unpacker.as_mut() {
                    u.begin(header).map_err(|e| anyhow!(e))?;
                }
            }
            CpMessage::End { last } => {
                if let Some(u) = self.unpacker.as_mut() {
                    u.end().map_err(|e| anyhow!(e))?;
                }
                return Ok(last);
            }
            CpMessage::Error { message, .. } => bail!("copy from {}: {message}", self.origin),
            _ => {}
        }
        Ok(false)
    }

    /// The copy is complete: directories get their modes and times.
    fn finish(self) -> Result<()> {
        if let Some(u) = self.unpacker {
            u.finish()
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("{}", self.target.display()))?;
        }
        Ok(())
    }
}

/// Where the download's root lands, by docker's rules (see the module).
fn resolve_download_target(
    root: &EntryHeader,
    src: &str,
    dst: &str,
    dst_md: Option<&std::fs::Metadata>,
    contents: bool,
) -> Result<PathBuf> {
    let name = base_name(src);
    let dst_path = PathBuf::from(dst);
    let target = match (root.is_dir, dst_md) {
        (true, Some(md)) if !md.is_dir() => {
            bail!("cannot copy a directory to a file: {dst} is not a directory")
        }
        (true, Some(_)) if contents => dst_path,
        (_, Some(md)) if md.is_dir() => dst_path.join(name),
        (false, None) if dst.ends_with('/') => bail!("destination directory {dst} does not exist"),
        _ => dst_path,
    };
    check_parent(&target).map_err(|e| anyhow!(e))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_like_docker() {
        let guest = |i: &str, p: &str| Location::Guest {
            instance: i.into(),
            path: p.into(),
        };
        assert_eq!(
            Location::parse("web:/etc/passwd"),
            guest("web", "/etc/passwd")
        );
        assert_eq!(Location::parse("web:tmp/x"), guest("web", "/tmp/x"));
        assert_eq!(Location::parse("web:"), guest("web", "/"));
        assert_eq!(Location::parse("./web:x"), Location::Host("./web:x".into()));
        assert_eq!(Location::parse("/a:b"), Location::Host("/a:b".into()));
        assert_eq!(Location::parse("dir/a:b"), Location::Host("dir/a:b".into()));
        assert_eq!(
            Location::parse("file.txt"),
            Location::Host("file.txt".into())
        );
    }

    /// What a hostile guest could send `lodge cp VM:/x DST`, as the
    /// daemon forwards it: `(archive, messages)` applied to a receiver for
    /// DST; returns the first error.
    fn receive(dst: &Path, archive: bool, messages: &[&str]) -> Result<()> {
        let dst_s = dst.to_string_lossy().to_string();
        let dst_md = std::fs::metadata(dst).ok();
        let mut r = Receiver {
            origin: "vm:/x".into(),
            src_path: "/x",
            dst: &dst_s,
            dst_md: dst_md.as_ref(),
            contents: false,
            archive,
            unpacker: None,
            target: PathBuf::new(),
        };
        for m in messages {
            match m.strip_prefix("data:") {
                Some(data) => r.data(data.as_bytes())?,
                None => {
                    let message: CpMessage = serde_json::from_str(m).expect("a message");
                    if r.message(message)? {
                        break;
                    }
                }
            }
        }
        r.finish()
    }

    #[test]
    fn a_download_never_writes_outside_its_destination() {
        let dir = tempfile::tempdir().expect("tmp");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), "original").expect("write");
        let dst = dir.path().join("dst");
        let root = format!(
            r#"{{"type":"header","path":"x","mode":511,"is_symlink":true,"link_target":"{}"}}"#,
            outside.display()
        );
        let err = receive(
            &dst,
            false,
            &[
                &root,
                r#"{"type":"end"}"#,
                r#"{"type":"header","path":"x/keep","mode":2541}"#,
                "data:evil",
                r#"{"type":"end","final":true}"#,
            ],
        )
        .expect_err("refused");
        assert!(err.to_string().contains("symbolic link"), "{err:#}");
        assert_eq!(std::fs::read_link(&dst).expect("a link"), outside);
        assert_eq!(
            std::fs::read(outside.join("keep")).expect("read"),
            b"original"
        );
        for bad in ["x/../keep", "/etc/evil"] {
            let header = format!(r#"{{"type":"header","path":"{bad}","mode":420}}"#);
            let dst = dir.path().join("dst2");
            let err = receive(
                &dst,
                false,
                &[
                    r#"{"type":"header","path":"x","mode":493,"is_dir":true}"#,
                    &header,
                ],
            )
            .expect_err("refused");
            assert!(err.to_string().contains("escapes"), "{bad}: {err:#}");
        }
        let names: Vec<_> = std::fs::read_dir(&outside)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["keep"]);
    }

    #[test]
    fn a_download_drops_setuid_unless_archive() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        for (archive, want) in [(false, 0o755), (true, 0o4755)] {
            let dst = dir.path().join(format!("suid-{archive}"));
            receive(
                &dst,
                archive,
                &[
                    // 0o4755, and no owner: archive mode keeps ours.
                    r#"{"type":"header","path":"x","mode":2541}"#,
                    "data:#!/bin/sh",
                    r#"{"type":"end","final":true}"#,
                ],
            )
            .expect("copied");
            let mode = std::fs::metadata(&dst).expect("md").permissions().mode();
            assert_eq!(mode & 0o7777, want, "archive {archive}");
        }
    }

    #[test]
    fn download_targets_follow_docker() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().to_string_lossy().to_string();
        std::fs::write(dir.path().join("f"), "").expect("write");
        let md = |p: &str| std::fs::metadata(p).ok();
        let file = EntryHeader {
            path: "x".into(),
            ..EntryHeader::default()
        };
        let tree = EntryHeader {
            path: "x".into(),
            is_dir: true,
            ..EntryHeader::default()
        };
        let t = |h: &EntryHeader, src: &str, dst: &str, contents| {
            resolve_download_target(h, src, dst, md(dst).as_ref(), contents)
        };
        // File into an existing directory, or to a new name.
        assert_eq!(
            t(&file, "/g/x", &d, false).expect("ok"),
            dir.path().join("x")
        );
        let new = format!("{d}/new");
        assert_eq!(
            t(&file, "/g/x", &new, false).expect("ok"),
            dir.path().join("new")
        );
        // A missing directory named with a trailing slash, or a missing parent.
        assert!(t(&file, "/g/x", &format!("{d}/no/"), false).is_err());
        assert!(t(&file, "/g/x", &format!("{d}/no/x"), false).is_err());
        // Directory onto a file is refused; into a directory nests; `/.` merges.
        assert!(t(&tree, "/g/x", &format!("{d}/f"), false).is_err());
        assert_eq!(
            t(&tree, "/g/x", &d, false).expect("ok"),
            dir.path().join("x")
        );
        assert_eq!(t(&tree, "/g/x", &d, true).expect("ok"), dir.path());
    }
}
