//! `lodge exec [-i] [-t] INSTANCE CMD...`: run a command in a running
//! instance over the API's exec WebSocket, exit with its exit code.
//!
//! stdout and stderr stay apart (the request sets `split_stderr`). Without
//! `-i` the command's stdin is closed at once, as `docker exec`; with `-i`
//! ours is streamed in until end-of-file. With `-t` the command runs on a
//! terminal in the guest; when our stdin is a terminal it is put in raw
//! mode for the session (restored however the session ends) and window
//! size changes (SIGWINCH) are sent along.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::ws;
use crate::api::types::{CloseStdin, ExecExit, ExecRequest, ResizeMessage, TermSize};
use crate::cli::ExecArgs;
use crate::client::{encode, Client};

/// `K=V`, or `K` alone for our own value of K (skipped when unset).
fn parse_env(entries: &[String]) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for entry in entries {
        let (k, v) = match entry.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(entry) {
                Ok(v) => (entry.clone(), v),
                Err(_) => continue,
            },
        };
        if k.is_empty() {
            bail!("invalid environment variable {entry:?}: the name is empty");
        }
        env.insert(k, v);
    }
    Ok(env)
}

/// The terminal in raw mode for as long as this lives.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enable() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd()).context("read the terminal mode")?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .context("put the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let restored = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
        if let Err(e) = restored {
            eprintln!("lodge: cannot restore the terminal mode (try `reset`): {e}");
        }
    }
}

/// Our terminal's size, if stdout or stdin is one.
fn window_size() -> Option<(u16, u16)> {
    let from = |fd: std::os::fd::BorrowedFd<'_>| rustix::termios::tcgetwinsize(fd).ok();
    from(std::io::stdout().as_fd())
        .or_else(|| from(std::io::stdin().as_fd()))
        .filter(|w| w.ws_row > 0 && w.ws_col > 0)
        .map(|w| (w.ws_row, w.ws_col))
}

pub fn run(args: ExecArgs) -> Result<u8> {
    if args.command.first().is_none_or(|c| c.is_empty()) {
        bail!("no command given: the command is empty");
    }
    let env = parse_env(&args.env)?;
    super::rt::runtime()?.block_on(session(args, env))
}

/// Read stdin on a thread (it blocks) and hand it over; `None` is EOF.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // Unsent only when the session is over already.
                    tx.blocking_send(None).ok();
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// With `--wait-for-agent`, an instance still booting is waited for (the
/// API refuses exec until it is Running).
async fn wait_while_booting(client: &Client, instance: &str, secs: u32) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(u64::from(secs));
    let path = format!("/instances/{}", encode(instance));
    while std::time::Instant::now() < deadline {
        let inst: crate::instances::Instance = client.call(reqwest::Method::GET, &path).await?;
        if inst.state != crate::instances::State::Initializing {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn session(args: ExecArgs, env: BTreeMap<String, String>) -> Result<u8> {
    let client = Client::from_env()?;
    if args.wait_for_agent > 0 {
        wait_while_booting(&client, &args.instance, args.wait_for_agent).await?;
    }
    let socket = ws::open(
        &client,
        &format!("/instances/{}/exec", encode(&args.instance)),
    )
    .await?;
    let (mut sink, mut stream) = socket.split();
    let size = if args.tty { window_size() } else { None };
    let (rows, cols) = size.unwrap_or((0, 0));
    let request = ExecRequest {
        command: args.command.clone(),
        tty: args.tty,
        env,
        cwd: args.cwd.clone(),
        timeout: args.timeout.unwrap_or(0),
        wait_for_agent: args.wait_for_agent,
        rows,
        cols,
        split_stderr: true,
    };
    let close_stdin = ws::text(&CloseStdin { close_stdin: true })?;
    let mut stdin = if args.interactive {
        ws::send_json(&mut sink, &request).await?;
        Some(stdin_reader())
    } else {
        // The request and the end of input together.
        ws::send_all(&mut sink, vec![ws::text(&request)?, close_stdin.clone()]).await?;
        None
    };
    let raw = if args.tty && std::io::stdin().is_terminal() {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let mut winch = if args.tty {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };

    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let last = loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let (out, data): (&mut dyn Write, &[u8]) = match b.first() {
                        Some(2) => (&mut stderr, &b[1..]),
                        _ => (&mut stdout, b.get(1..).unwrap_or_default()),
                    };
                    out.write_all(data)?;
                    out.flush()?;
                }
                Some(Ok(Message::Text(t))) => {
                    if let Some(last) = ws::parse::<ExecExit>(&t).filter(ExecExit::is_final) {
                        break last;
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    break ExecExit::refused("the connection closed before the command finished")
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break ExecExit::refused(format!("connection to the daemon: {e}")),
            },
            chunk = async { stdin.as_mut()?.recv().await }, if stdin.is_some() => match chunk {
                Some(Some(data)) => sink.send(Message::Binary(data.into())).await?,
                _ => {
                    stdin = None;
                    sink.send(close_stdin.clone()).await?;
                }
            },
            _ = async { winch.as_mut()?.recv().await }, if winch.is_some() => {
                if let Some((rows, cols)) = window_size() {
                    let resize = ResizeMessage { resize: TermSize { rows, cols } };
                    ws::send_json(&mut sink, &resize).await?;
                }
            }
        }
    };
    drop(raw);
    ws::close(&mut sink).await;

    if let Some(error) = &last.error {
        eprintln!("lodge: {error}");
    }
    if last.timed_out {
        eprintln!(
            "lodge: the command timed out after {} s and was killed",
            args.timeout.unwrap_or(0)
        );
    }
    let code = match last.exit_code {
        Some(c) => u8::try_from(c.clamp(0, 255)).unwrap_or(255),
        // No exit status at all: lodge itself failed.
        None => 255,
    };
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_entries_parse_like_docker() {
        std::env::set_var("LODGE_EXEC_TEST_VAR", "from-here");
        let env = parse_env(&[
            "A=1".into(),
            "B=x=y".into(),
            "C=".into(),
            "LODGE_EXEC_TEST_VAR".into(),
            "LODGE_EXEC_TEST_UNSET_VAR".into(),
        ])
        .expect("env");
        let want = [
            ("A", "1"),
            ("B", "x=y"),
            ("C", ""),
            ("LODGE_EXEC_TEST_VAR", "from-here"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(env, BTreeMap::from(want));
        assert!(parse_env(&["=1".into()]).is_err());
    }
}
