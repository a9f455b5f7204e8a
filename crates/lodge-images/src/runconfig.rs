//! What an instance of an image runs: the image's configuration as
//! defaults, the create request's fields as overrides, with docker's rules.
//!
//! - `cmd` given replaces the image's CMD.
//! - `entrypoint` given replaces ENTRYPOINT and drops the image's CMD,
//!   unless `cmd` is given too (`docker run --entrypoint`).
//! - `env` is merged per variable, the request winning.
//! - the working directory is the request's, else the image's, else `/`.
//! - the user is the request's, else the image's (resolved to numbers when
//!   the image was unpacked, as the guest has no name service).

use std::collections::BTreeMap;
use std::path::Path;

use crate::oci::ContainerConfig;

/// The request's overrides; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    pub user: Option<String>,
}

/// `KEY=VALUE` entries as a map (later entries win, as in docker).
pub fn env_map(entries: &[String]) -> BTreeMap<String, String> {
    entries
        .iter()
        .filter_map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
            None if !e.is_empty() => Some((e.clone(), String::new())),
            _ => None,
        })
        .collect()
}

fn is_numeric_user(u: &str) -> bool {
    let mut parts = u.split(':');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let uid = parts.next();
    match (ok(uid), parts.next(), parts.next()) {
        (true, None, None) => true,
        (true, Some(g), None) => ok(Some(g)),
        _ => false,
    }
}

/// Combines image defaults and request overrides. `image_user` is the
/// resolved (numeric) image user, if any.
pub fn resolve(
    image: &ContainerConfig,
    image_user: Option<&str>,
    o: Overrides,
) -> Result<RunConfig, String> {
    let (entrypoint, cmd) = match (o.entrypoint, o.cmd) {
        (Some(e), Some(c)) => (e, c),
        (Some(e), None) => (e, Vec::new()),
        (None, Some(c)) => (image.entrypoint.clone().unwrap_or_default(), c),
        (None, None) => (
            image.entrypoint.clone().unwrap_or_default(),
            image.cmd.clone().unwrap_or_default(),
        ),
    };
    let mut env = env_map(image.env.as_deref().unwrap_or_default());
    env.extend(o.env);
    let workdir = match o.workdir.filter(|w| !w.is_empty()) {
        Some(w) => w,
        None => match image.working_dir.as_deref().filter(|w| !w.is_empty()) {
            Some(w) if w.starts_with('/') => w.to_string(),
            Some(w) => format!("/{w}"),
            None => "/".to_string(),
        },
    };
    let user = match o.user.filter(|u| !u.is_empty()) {
        Some(u) => Some(u),
        None => image
            .user
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|raw| image_user.unwrap_or(raw).to_string()),
    };
    if let Some(u) = &user {
        if !is_numeric_user(u) {
            return Err(format!(
                "user {u:?} is not in the image's /etc/passwd; give a numeric uid[:gid]"
            ));
        }
    }
    Ok(RunConfig {
        entrypoint,
        cmd,
        env,
        workdir,
        user,
    })
}

/// Resolves an image's `User` (`name`, `uid`, `name:group`, `uid:gid`) to
/// numbers using the unpacked tree's `/etc/passwd` and `/etc/group`.
/// Reads through no symlink, so an image cannot make this read host files.
pub fn resolve_user(root: &Path, user: &str) -> Option<String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<String> {
        if name.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() {
            return Some(name.to_string());
        }
        let text = read_in_root(root, &["etc", file])?;
        text.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1).map(str::to_string))?
        })
    };
    let uid = lookup("passwd", u)?;
    match g {
        Some(g) => Some(format!("{uid}:{}", lookup("group", g)?)),
        None => Some(uid),
    }
}

fn read_in_root(root: &Path, comps: &[&str]) -> Option<String> {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    let mut fd = openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let (last, dirs) = comps.split_last()?;
    for d in dirs {
        fd = openat(
            &fd,
            *d,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
    }
    let f = openat(
        &fd,
        *last,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut s = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::from(f), 1 << 20),
        &mut s,
    )
    .ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ContainerConfig {
        ContainerConfig {
            entrypoint: Some(vec!["/bin/ep".into()]),
            cmd: Some(vec!["default".into(), "args".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()]),
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn docker_override_rules() {
        let r = resolve(&image(), None, Overrides::default()).expect("ok");
        assert_eq!(
            (r.entrypoint.clone(), r.cmd.clone()),
            (v(&["/bin/ep"]), v(&["default", "args"]))
        );
        assert_eq!(r.workdir, "/srv");

        let r = resolve(
            &image(),
            None,
            Overrides {
                cmd: Some(v(&["x"])),
                ..Default::default()
            },
        )
        .expect("ok");
        assert_eq!((r.entrypoint, r.cmd), (v(&["/bin/ep"]), v(&["x"])));

        let r = resolve(
            &image(),
            None,
            Overrides {
                entrypoint: Some(v(&["/bin/sh"])),
                ..Default::default()
            },
        )
        .expect("ok");
        assert_eq!(
            (r.entrypoint, r.cmd),
            (v(&["/bin/sh"]), Vec::<String>::new()),
            "entrypoint clears CMD"
        );

        let r = resolve(
            &image(),
            None,
            Overrides {
                entrypoint: Some(v(&["/bin/sh"])),
                cmd: Some(v(&["-c", "true"])),
                env: [
                    ("B".to_string(), "req".to_string()),
                    ("C".to_string(), "req".to_string()),
                ]
                .into(),
                workdir: Some("/tmp".into()),
                user: None,
            },
        )
        .expect("ok");
        assert_eq!((r.entrypoint, r.cmd), (v(&["/bin/sh"]), v(&["-c", "true"])));
        assert_eq!(r.env.get("A").map(String::as_str), Some("image"));
        assert_eq!(r.env.get("B").map(String::as_str), Some("req"));
        assert_eq!(r.env.get("C").map(String::as_str), Some("req"));
        assert_eq!(r.workdir, "/tmp");
    }

    #[test]
    fn users() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("etc")).expect("mkdir");
        std::fs::write(
            tmp.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("w");
        std::fs::write(tmp.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("w");
        assert_eq!(resolve_user(tmp.path(), "app").as_deref(), Some("1000"));
        assert_eq!(
            resolve_user(tmp.path(), "app:staff").as_deref(),
            Some("1000:50")
        );
        assert_eq!(resolve_user(tmp.path(), "7:8").as_deref(), Some("7:8"));
        assert_eq!(resolve_user(tmp.path(), "ghost"), None);

        let mut img = image();
        img.user = Some("ghost".into());
        assert!(resolve(&img, None, Overrides::default()).is_err());
        img.user = Some("app".into());
        let r = resolve(&img, Some("1000"), Overrides::default()).expect("ok");
        assert_eq!(r.user.as_deref(), Some("1000"));
    }

    #[test]
    fn passwd_behind_a_symlink_is_not_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/etc", tmp.path().join("etc")).expect("symlink");
        assert_eq!(resolve_user(tmp.path(), "root"), None);
    }
}
