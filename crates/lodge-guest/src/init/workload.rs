//! Turning a [`GuestConfig`] into a running workload, and watching it.
//!
//! The workload should see what a docker container sees: exactly the
//! configured environment plus `PATH` and `HOME` when absent and `HOSTNAME`,
//! in docker's order; its working directory created if missing; the user
//! resolved from the image's own `/etc/passwd` (parsed here, since a static
//! binary must not use glibc's name service). The fork+exec itself is
//! `spawn`'s; exec failures are reported in docker's words with its exit
//! codes (127 not found, 126 not runnable).
//!
//! While it runs, PID 1 waits on a signalfd and the power-button devices:
//! it reaps every orphan (and the guest agent, restarting it if it
//! crashed), forwards the usual termination signals to the workload, and
//! turns a power-button press into SIGTERM.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use lodge_guest::GuestConfig;

use crate::agentd::AgentConfig;
use crate::spawn::{self, ChildStep, ExecPlan, Spawned};
use crate::sys::{self, ExitStatus};

use super::agent_supervisor::AgentSupervisor;
use super::button;
use super::error::{Context, Error, Result};

/// docker's `PATH` for a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Signals PID 1 takes over: SIGCHLD for reaping, the others to forward.
pub const SIGNALS: &[libc::c_int] = &[
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
];

/// The environment handed to the workload.
pub fn build_env(configured: &[String], hostname: &str, home: &str) -> Vec<String> {
    let user = lodge_guest::env::collapse(configured);
    let has = |k: &str| user.iter().any(|e| lodge_guest::env::key(e) == k);
    let mut env = Vec::with_capacity(user.len() + 3);
    if !has("PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    let needs_home = !has("HOME");
    env.extend(user);
    if needs_home {
        env.push(format!("HOME={home}"));
    }
    env
}

/// `(gid, home)` of `uid` in an `/etc/passwd` text.
pub fn passwd_lookup(passwd: &str, uid: u32) -> Option<(u32, String)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 6 || fields[2].parse::<u32>().ok()? != uid {
            return None;
        }
        Some((fields[3].parse().ok()?, fields[5].to_owned()))
    })
}

/// The files to try for `program` given the workload's `PATH`: the program
/// itself when it names a path, else each `PATH` entry (empty means `.`).
pub fn exec_candidates(program: &str, path: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{program}", dir.trim_end_matches('/'))
        })
        .collect()
}

/// Every prefix of an absolute directory, shortest first: `/a/b` gives
/// `/a`, `/a/b`.
pub fn dir_prefixes(dir: &str) -> Vec<String> {
    let mut prefixes = Vec::new();
    let mut current = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        current.push('/');
        current.push_str(part);
        prefixes.push(current.clone());
    }
    prefixes
}

fn cstrings(strings: impl IntoIterator<Item = String>, what: &str) -> Result<Vec<CString>> {
    strings
        .into_iter()
        .map(|s| CString::new(s).map_err(|_| Error::new(format!("{what} contains a nul byte"))))
        .collect()
}

/// The workload's `(uid, gid)` (`None`: root) and home directory, from the
/// configuration and the image's own `/etc/passwd`.
fn identity(config: &GuestConfig, root: &str) -> Result<(Option<(u32, u32)>, String)> {
    let user = config.user_spec().map_err(|e| Error::new(e.to_string()))?;
    let passwd = std::fs::read_to_string(Path::new(root).join("etc/passwd")).unwrap_or_default();
    let uid = user.map_or(0, |u| u.uid);
    let entry = passwd_lookup(&passwd, uid);
    let gid = user
        .and_then(|u| u.gid)
        .or_else(|| entry.as_ref().map(|(gid, _)| *gid))
        .unwrap_or(0);
    let home = match (&entry, uid) {
        (Some((_, home)), _) if !home.is_empty() => home.clone(),
        (_, 0) => "/root".to_owned(),
        _ => "/".to_owned(),
    };
    Ok((user.map(|u| (u.uid, gid)), home))
}

/// What the guest agent needs to run commands the way the workload runs:
/// the same root, environment, working directory and user.
pub fn agent_config(config: &GuestConfig, root: &str, hostname: &str) -> Result<AgentConfig> {
    let (ids, home) = identity(config, root)?;
    Ok(AgentConfig {
        root: root.to_owned(),
        env: build_env(&config.env, hostname, &home),
        workdir: config.workdir.clone(),
        user: ids,
    })
}

/// Prepare everything the child needs to become the workload.
pub fn plan(
    config: &GuestConfig,
    root: &str,
    (stdin, console): (RawFd, RawFd),
    hostname: &str,
) -> Result<ExecPlan> {
    let (ids, home) = identity(config, root)?;
    let env = build_env(&config.env, hostname, &home);
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let program = config
        .argv
        .first()
        .ok_or_else(|| Error::new("argv is empty".to_owned()))?;

    Ok(ExecPlan {
        root: cstrings([root.to_owned()], "root")?.remove(0),
        workdir_prefixes: cstrings(dir_prefixes(&config.workdir), "workdir")?,
        workdir: cstrings([config.workdir.clone()], "workdir")?.remove(0),
        ids,
        stdin,
        console,
        candidates: cstrings(exec_candidates(program, path), "argv[0]")?,
        argv: cstrings(config.argv.iter().cloned(), "argv")?,
        envp: cstrings(env, "env")?,
    })
}

/// How starting the workload went.
pub enum Start {
    Running(libc::pid_t),
    /// The exec itself failed: report like docker, with this exit code.
    ExecFailed {
        message: String,
        code: i32,
    },
}

/// Fork and exec the workload.
pub fn start(config: &GuestConfig, plan: &ExecPlan) -> Result<Start> {
    match spawn::spawn(plan).context(|| "fork the workload".to_owned())? {
        Spawned::Running(pid) => Ok(Start::Running(pid)),
        Spawned::Failed {
            step: ChildStep::Exec,
            errno,
        } => {
            let program = config.argv.first().map_or("", String::as_str);
            let (message, code) = spawn::exec_failure(program, errno);
            Ok(Start::ExecFailed { message, code })
        }
        Spawned::Failed { step, errno } => {
            let what = match step {
                ChildStep::Session => "set up the workload's session and console".to_owned(),
                ChildStep::Chroot => "enter the root filesystem".to_owned(),
                ChildStep::Workdir => format!("chdir to working directory {}", config.workdir),
                ChildStep::User => {
                    format!("switch to user {}", config.user.as_deref().unwrap_or("0"))
                }
                ChildStep::Exec => "exec".to_owned(),
            };
            Err(Error::new(format!("{what}: {}", sys::errno_text(errno))))
        }
    }
}

/// Reap children until the workload exits; forward signals meanwhile.
pub fn supervise(
    pid: libc::pid_t,
    signals: Option<&OwnedFd>,
    agent: &mut AgentSupervisor,
) -> Result<ExitStatus> {
    let buttons: Vec<File> = button::open_all();
    let mut terminated = false;
    loop {
        // Reap first: the workload may have exited before we got here.
        loop {
            match sys::reap_one() {
                Ok(Some((reaped, status))) if reaped == pid => return Ok(status),
                Ok(Some((reaped, status))) => {
                    agent.reaped(reaped, status);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Error::new(format!(
                        "wait for the workload: {}",
                        sys::errno_text_of(&e)
                    )))
                }
            }
        }
        agent.tick();
        let mut fds: Vec<RawFd> = buttons.iter().map(AsRawFd::as_raw_fd).collect();
        if let Some(signals) = signals {
            fds.push(signals.as_raw_fd());
        }
        // Without a signalfd nothing wakes us on SIGCHLD: poll on a timer.
        let mut timeout = if signals.is_some() { -1 } else { 50 };
        if let Some(restart) = agent.timeout_ms() {
            timeout = if timeout < 0 {
                restart
            } else {
                timeout.min(restart)
            };
        }
        let ready = sys::poll_readable(&fds, timeout).context(|| "poll".to_owned())?;
        for (button, _) in buttons.iter().zip(&ready).filter(|(_, r)| **r) {
            // The host presses again every second in case a press was lost
            // before we watched the button; the workload gets one SIGTERM,
            // as `docker stop` sends one (a shell's trap would run twice).
            if button::pressed(button) && !terminated {
                terminated = true;
                let _ = sys::kill(pid, libc::SIGTERM);
            }
        }
        if let Some(signals) = signals {
            while let Ok(Some(signal)) = sys::read_signal(signals) {
                if signal != libc::SIGCHLD {
                    let _ = sys::kill(pid, signal);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn env_gets_docker_defaults_in_docker_order() {
        assert_eq!(
            build_env(&strings(&["FOO=bar"]), "web", "/root"),
            strings(&[
                &format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=web",
                "FOO=bar",
                "HOME=/root"
            ])
        );
    }

    #[test]
    fn configured_values_win_and_duplicates_collapse() {
        let env = build_env(
            &strings(&[
                "PATH=/bin",
                "A=1",
                "HOME=/home/x",
                "A=2",
                "HOSTNAME=mine",
                "EMPTY=",
            ]),
            "web",
            "/root",
        );
        assert_eq!(
            env,
            strings(&[
                "PATH=/bin",
                "A=2",
                "HOME=/home/x",
                "HOSTNAME=mine",
                "EMPTY="
            ])
        );
    }

    #[test]
    fn passwd_lookup_finds_gid_and_home() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nbad line\napp:x:1000:100::/home/app:/bin/sh\n";
        assert_eq!(passwd_lookup(passwd, 0), Some((0, "/root".into())));
        assert_eq!(passwd_lookup(passwd, 1000), Some((100, "/home/app".into())));
        assert_eq!(passwd_lookup(passwd, 5), None);
    }

    #[test]
    fn candidates_follow_path_or_the_given_path() {
        assert_eq!(
            exec_candidates("sh", "/usr/bin:/bin/::/opt"),
            strings(&["/usr/bin/sh", "/bin/sh", "./sh", "/opt/sh"])
        );
        assert_eq!(exec_candidates("./run", "/bin"), strings(&["./run"]));
        assert_eq!(
            exec_candidates("/bin/sh", "/usr/bin"),
            strings(&["/bin/sh"])
        );
    }

    #[test]
    fn dir_prefixes_walk_down_from_the_root() {
        assert_eq!(dir_prefixes("/"), Vec::<String>::new());
        assert_eq!(dir_prefixes("/a//b/"), strings(&["/a", "/a/b"]));
    }
}
