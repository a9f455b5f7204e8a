//! `lodge logs --dir DIR`: read a log directory directly, no daemon needed.
//!
//! Synchronous and allocation-light on purpose: it is what an operator runs
//! when the daemon is down, and `--tail 100` should cost little more than
//! starting the process. Bytes go to stdout exactly as the program wrote
//! them, one unbuffered write per chunk so `-f` output appears at once,
//! except on a terminal, where control characters are shown escaped
//! (see [`super::logs_escape`]) unless `--raw`. A closed stdout (`| head`)
//! ends it quietly with status 0.
//!
//! [`fast`] parses `logs --dir ...` without clap, for `main` to try first:
//! skipping clap's setup is most of what separates `--tail 100` from GNU
//! tail's start-up time (see scripts/bench-logs.sh).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use lodge_logs::{Follow, Follower, Source, Tail};

use crate::cli::LogsArgs;
use crate::cmd::logs_escape::escape_controls;
use crate::cmd::supervise::split_flag;

/// Bytes read from the log per write to stdout.
const CHUNK: usize = 64 * 1024;

pub fn run(dir: &Path, args: &LogsArgs) -> Result<u8> {
    let source: Source = args.source.parse()?;
    let tail: Tail = args.tail.parse()?;
    let follow = match (args.follow, source) {
        (false, _) => Follow::No,
        // lodge.log is written by the daemon, not by a monitor: no end.
        (true, Source::Lodge) => Follow::Forever,
        (true, Source::App | Source::Vmm) => Follow::UntilWriterExits,
    };
    if args.timestamps || args.since.is_some() || args.until.is_some() {
        return run_timed(dir, args, source, tail, follow);
    }
    let mut follower = Follower::open(dir, source, tail, follow)?;

    // An unbuffered handle on fd 1: std's stdout is line-buffered.
    let mut out = File::from(
        io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot use stdout")?,
    );
    let mut buf = vec![0u8; CHUNK];
    if args.raw || !out.is_terminal() {
        loop {
            let n = follower.read_blocking(&mut buf)?;
            if n == 0 {
                return Ok(0);
            }
            if !write_out(&mut out, &buf[..n])? {
                return Ok(0);
            }
        }
    }
    // A terminal: the guest's control characters are shown, not acted on.
    // A UTF-8 character cut by a read waits at the front of `buf` for the
    // rest of it.
    let mut escaped = Vec::with_capacity(CHUNK);
    let mut kept = 0;
    loop {
        let n = follower.read_blocking(&mut buf[kept..])?;
        escaped.clear();
        let taken = escape_controls(&buf[..kept + n], n == 0, &mut escaped);
        if !write_out(&mut out, &escaped)? || n == 0 {
            return Ok(0);
        }
        buf.copy_within(taken..kept + n, 0);
        kept = kept + n - taken;
    }
}

/// `--timestamps`, `--since`, `--until`: the lines of the window from the
/// time index (see `lodge_logs::times`), then, with `-f`, what follows,
/// handed over at the exact byte where the window's view ended. Followed
/// lines are stamped when read (within the follow latency).
fn run_timed(
    dir: &Path,
    args: &LogsArgs,
    source: Source,
    tail: Tail,
    follow: Follow,
) -> Result<u8> {
    let now = std::time::SystemTime::now();
    let point = |flag: &str, value: &Option<String>| -> Result<_> {
        value
            .as_deref()
            .map(|v| lodge_common::time::parse_point_in_time(v, now))
            .transpose()
            .with_context(|| format!("invalid {flag}"))
    };
    let window = lodge_logs::Window {
        since: point("--since", &args.since)?,
        until: point("--until", &args.until)?,
    };
    // The follower first, at the end: the window stops where it starts.
    let follower = match follow {
        Follow::No => None,
        _ => Some(Follower::open(dir, source, Tail::Lines(0), follow)?),
    };
    let stop = follower.as_ref().and_then(Follower::start_point);
    let lines = lodge_logs::read_window_to(dir, source, window, tail, stop)?;
    let stdout = io::stdout();
    let escape = !args.raw && stdout.is_terminal();
    let mut out = io::BufWriter::with_capacity(CHUNK, stdout.lock());
    let mut escaped = Vec::new();
    let mut emit = |out: &mut io::BufWriter<io::StdoutLock<'_>>,
                    time: Option<std::time::SystemTime>,
                    starts: bool,
                    bytes: &[u8]|
     -> io::Result<()> {
        if args.timestamps && starts {
            let stamp = time.map_or_else(|| "-".to_owned(), lodge_common::time::rfc3339_micros);
            out.write_all(stamp.as_bytes())?;
            out.write_all(b" ")?;
        }
        if escape {
            escaped.clear();
            escape_controls(bytes, true, &mut escaped);
            out.write_all(&escaped)
        } else {
            out.write_all(bytes)
        }
    };
    let closed = |err: &io::Error| err.kind() == io::ErrorKind::BrokenPipe;
    for line in &lines {
        match emit(&mut out, line.time, line.starts_line, &line.bytes) {
            Ok(()) => {}
            Err(err) if closed(&err) => return Ok(0),
            Err(err) => return Err(anyhow::Error::new(err).context("cannot write to stdout")),
        }
    }
    match out.flush() {
        Ok(()) => {}
        Err(err) if closed(&err) => return Ok(0),
        Err(err) => return Err(anyhow::Error::new(err).context("cannot write to stdout")),
    }
    let Some(mut follower) = follower else {
        return Ok(0);
    };
    let mut splitter = lodge_logs::LineSplitter::default();
    // The window may have ended inside a line the follower finishes.
    let mut starts = lines.last().is_none_or(|l| l.bytes.ends_with(b"\n"));
    loop {
        let chunk = follower.next_blocking()?;
        let pieces = match &chunk {
            Some(bytes) => splitter.push(bytes),
            None => splitter.finish().into_iter().collect(),
        };
        let read_at = std::time::SystemTime::now();
        for piece in pieces {
            let mut bytes = piece.bytes;
            if piece.ends_line && chunk.is_some() {
                bytes.push(b'\n');
            }
            match emit(&mut out, Some(read_at), starts, &bytes) {
                Ok(()) => {}
                Err(err) if closed(&err) => return Ok(0),
                Err(err) => return Err(anyhow::Error::new(err).context("cannot write to stdout")),
            }
            starts = piece.ends_line;
        }
        match out.flush() {
            Ok(()) => {}
            Err(err) if closed(&err) => return Ok(0),
            Err(err) => return Err(anyhow::Error::new(err).context("cannot write to stdout")),
        }
        if chunk.is_none() {
            return Ok(0);
        }
    }
}

/// Writes all of `bytes`; false if stdout was closed (`| head`).
fn write_out(out: &mut File, bytes: &[u8]) -> Result<bool> {
    match out.write_all(bytes) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(anyhow::Error::new(err).context("cannot write to stdout")),
    }
}

/// Runs `lodge logs --dir ...` (`args` after the verb) without clap, or
/// returns `None` if the arguments need clap (or the daemon).
pub fn fast(args: &[OsString]) -> Option<Result<u8>> {
    let parsed = parse_fast(args)?;
    let dir = parsed.dir.clone()?;
    Some(run(&dir, &parsed))
}

/// `--dir`, `--source`, `--tail` (`--flag VALUE` or `--flag=VALUE`), `-f`,
/// `--raw`.
fn parse_fast(args: &[OsString]) -> Option<LogsArgs> {
    let mut parsed = LogsArgs {
        dir: None,
        source: "app".into(),
        tail: "100".into(),
        follow: false,
        raw: false,
        timestamps: false,
        since: None,
        until: None,
        instance: None,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "-f" || arg == "--follow" {
            parsed.follow = true;
            continue;
        }
        if arg == "--raw" {
            parsed.raw = true;
            continue;
        }
        let (flag, inline) = split_flag(arg)?;
        let mut value = || inline.clone().or_else(|| rest.next().cloned());
        match flag {
            "--dir" => parsed.dir = Some(value()?.into()),
            "--source" => parsed.source = value()?.into_string().ok()?,
            "--tail" => parsed.tail = value()?.into_string().ok()?,
            _ => return None,
        }
    }
    parsed.dir.is_some().then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn fast_parse() {
        let args = parse_fast(&os(&["--dir", "/d", "-f", "--tail=all", "--source", "vmm"]))
            .expect("parsed");
        assert_eq!(args.dir, Some("/d".into()));
        assert!(args.follow);
        assert_eq!((args.tail.as_str(), args.source.as_str()), ("all", "vmm"));
        let args = parse_fast(&os(&["--dir=/d"])).expect("parsed");
        assert_eq!(
            (args.tail.as_str(), args.source.as_str(), args.follow),
            ("100", "app", false)
        );
        assert!(!args.raw);
        assert!(parse_fast(&os(&["--dir=/d", "--raw"])).expect("parsed").raw);
    }

    #[test]
    fn fast_parse_leaves_the_rest_to_clap() {
        assert!(
            parse_fast(&os(&["my-vm", "-f"])).is_none(),
            "instances need the daemon"
        );
        assert!(parse_fast(&os(&["--tail", "5"])).is_none(), "no --dir");
        assert!(parse_fast(&os(&["--dir", "/d", "--help"])).is_none());
        assert!(parse_fast(&os(&["--dir"])).is_none());
    }
}
