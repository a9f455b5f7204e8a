//! `lodge supervise`: the per-VM monitor (see the lodge-monitor crate).
//!
//! Turns the raw flags into a validated `lodge_monitor::Config`; every
//! error here or in the monitor's own checks becomes one `lodge: ...` line
//! and exit code 2 before anything is created.
//!
//! [`fast`] parses the common spellings without clap, for `main` to try
//! before building the full CLI: the monitor's resident memory is budgeted
//! at 4 MiB, and clap plus the code it touches costs about 2 MiB of it
//! (measured in scripts/bench-logs.sh). Anything it does not recognise
//! (`--help`, a typo) falls through to clap and its usual messages.

use std::ffi::{OsStr, OsString};

use anyhow::{anyhow, Result};
use lodge_logs::ByteSize;

use crate::cli::SuperviseArgs;

pub fn run(args: SuperviseArgs) -> Result<u8> {
    let max_size: ByteSize = args
        .max_size
        .parse()
        .map_err(|err| anyhow!("invalid --max-size {:?}: {err}", args.max_size))?;
    let max_files: usize = args.max_files.parse().map_err(|_| {
        anyhow!(
            "invalid --max-files {:?}: expected a whole number",
            args.max_files
        )
    })?;
    let status_fd =
        match &args.status_fd {
            Some(text) => Some(text.parse::<i32>().map_err(|_| {
                anyhow!("invalid --status-fd {text:?}: expected a descriptor number")
            })?),
            None => None,
        };
    let console_fd =
        match &args.console_fd {
            Some(text) => Some(text.parse::<i32>().map_err(|_| {
                anyhow!("invalid --console-fd {text:?}: expected a descriptor number")
            })?),
            None => None,
        };
    // Inherited from the daemon's environment, like the guest's own
    // settings: how rotated segments are stored.
    let compression = match std::env::var("LODGE_LOG_COMPRESS") {
        Ok(text) => text
            .parse::<lodge_monitor::Compression>()
            .map_err(|err| anyhow!("invalid LODGE_LOG_COMPRESS: {err}"))?,
        Err(_) => lodge_monitor::Compression::Off,
    };
    let config = lodge_monitor::Config {
        log_dir: args.log_dir,
        max_size: max_size.as_u64(),
        max_files,
        command: args.command,
        status_fd,
        console_fd,
        compression,
    };
    Ok(lodge_monitor::run(&config)?)
}

/// Runs `lodge supervise ARGS` (`args` after the verb) without clap, or
/// returns `None` if the arguments need clap.
pub fn fast(args: &[OsString]) -> Option<Result<u8>> {
    parse_fast(args).map(run)
}

/// `--log-dir`, `--max-size`, `--max-files`, `--status-fd`, `--console-fd` (as `--flag
/// VALUE` or `--flag=VALUE`), then `--` and the command.
fn parse_fast(args: &[OsString]) -> Option<SuperviseArgs> {
    let mut parsed = SuperviseArgs {
        log_dir: Default::default(),
        max_size: "50MiB".into(),
        max_files: "5".into(),
        status_fd: None,
        console_fd: None,
        command: Vec::new(),
    };
    let mut log_dir = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            parsed.command = rest.cloned().collect();
            break;
        }
        let (flag, inline) = split_flag(arg)?;
        let mut value = || inline.clone().or_else(|| rest.next().cloned());
        match flag {
            "--log-dir" => log_dir = Some(value()?),
            "--max-size" => parsed.max_size = value()?.into_string().ok()?,
            "--max-files" => parsed.max_files = value()?.into_string().ok()?,
            "--status-fd" => parsed.status_fd = Some(value()?.into_string().ok()?),
            "--console-fd" => parsed.console_fd = Some(value()?.into_string().ok()?),
            _ => return None,
        }
    }
    parsed.log_dir = log_dir?.into();
    Some(parsed)
}

/// `--flag=value` into (`--flag`, Some(value)); `--flag` into (`--flag`, None).
pub(crate) fn split_flag(arg: &OsStr) -> Option<(&str, Option<OsString>)> {
    let text = arg.to_str()?;
    match text.split_once('=') {
        Some((flag, value)) => Some((flag, Some(value.into()))),
        None => Some((text, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn fast_parse_matches_clap_spellings() {
        let args = parse_fast(&os(&[
            "--log-dir",
            "/d",
            "--max-size=1MiB",
            "--max-files",
            "3",
            "--status-fd=3",
            "--",
            "seq",
            "--",
            "-5",
        ]))
        .expect("parsed");
        assert_eq!(args.log_dir, std::path::PathBuf::from("/d"));
        assert_eq!(args.max_size, "1MiB");
        assert_eq!(args.max_files, "3");
        assert_eq!(args.status_fd.as_deref(), Some("3"));
        assert_eq!(args.command, os(&["seq", "--", "-5"]));

        let args = parse_fast(&os(&["--log-dir=/d"])).expect("parsed");
        assert_eq!(
            (args.max_size.as_str(), args.max_files.as_str()),
            ("50MiB", "5")
        );
        assert!(args.command.is_empty());
        assert_eq!(args.status_fd, None);
        // Negative sizes reach our validation, as with clap.
        assert_eq!(
            parse_fast(&os(&["--log-dir", "/d", "--max-size", "-5"])).map(|a| a.max_size),
            Some("-5".into())
        );
    }

    #[test]
    fn fast_parse_leaves_the_rest_to_clap() {
        assert!(parse_fast(&os(&["--help"])).is_none());
        assert!(
            parse_fast(&os(&["--max-size", "1M", "--", "true"])).is_none(),
            "no --log-dir"
        );
        assert!(parse_fast(&os(&["--log-dir"])).is_none(), "missing value");
        assert!(parse_fast(&os(&["--log-dir", "/d", "--bogus", "--", "true"])).is_none());
        assert!(
            parse_fast(&os(&["--log-dir", "/d", "true"])).is_none(),
            "command without --"
        );
    }
}
