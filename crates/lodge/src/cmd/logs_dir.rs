//! `lodge logs --dir DIR`: read a log directory directly, no daemon needed.
//!
//! Synchronous and allocation-light on purpose: it is what an operator runs
//! when the daemon is down, and `--tail 100` should cost little more than
//! starting the process. Bytes go to stdout exactly as the program wrote
//! them, one unbuffered write per chunk so `-f` output appears at once. A
//! closed stdout (`| head`) ends it quietly with status 0.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use lodge_logs::{Follow, Follower, Source, Tail};

use crate::cli::LogsArgs;

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
    let mut follower = Follower::open(dir, source, tail, follow)?;

    // An unbuffered handle on fd 1: std's stdout is line-buffered.
    let mut out = File::from(
        io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot use stdout")?,
    );
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = follower.read_blocking(&mut buf)?;
        if n == 0 {
            return Ok(0);
        }
        match out.write_all(&buf[..n]) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
            Err(err) => return Err(anyhow::Error::new(err).context("cannot write to stdout")),
        }
    }
}
