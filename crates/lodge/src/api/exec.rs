//! `GET /instances/{id}/exec`: a command in the running guest, over a
//! WebSocket, as hypeman speaks it.
//!
//! 1. The instance must be Running, else the upgrade is refused with 409
//!    (404 for an unknown instance) in the usual `{code, message}` shape.
//! 2. The client's first message is a text message holding [`ExecRequest`]
//!    (hypeman's fields, plus lodge's `split_stderr`).
//! 3. Then binary messages are stdin. Text messages are control messages
//!    when they parse as one (`{"resize":{"rows":R,"cols":C}}` as hypeman,
//!    `{"close_stdin":true}` as lodge's end-of-input), else stdin too.
//! 4. The server sends the output as binary messages. hypeman merges
//!    stdout and stderr; a client that sets `split_stderr` gets each binary
//!    message prefixed with one byte naming the stream: 1 stdout, 2 stderr
//!    (as Kubernetes' channel protocol).
//! 5. The last message is text, exactly `{"exitCode": N}` as hypeman
//!    sends it (its Python client refuses any other key): a timeout is
//!    124 (as `timeout(1)`), death by signal N is 128+N, a command that
//!    cannot be started 127 (not found) or 126, with the reason sent
//!    before it as output (`Error: …`). A client that set lodge's
//!    `split_stderr` gets the detail in the last message instead:
//!    `signal`, `timed_out` or `error` beside `exitCode` (lodge's CLI
//!    reports them); hypeman's clients never set it, so never see them.
//! 6. A `resize` may arrive before the command has its terminal (clients
//!    send it right after the request): the latest one is held and
//!    applied as soon as the agent reports the command started.
//!
//! The handler only translates between the WebSocket and an agent stream
//! ([`crate::agent`]); the command runs in the guest agent.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::{FutureExt, SinkExt, StreamExt};

use lodge_guest::agent::{Control, Event, ExecStart, Request};

use super::error::ApiError;
use super::state::AppState;
use super::types::{CloseStdin, ExecExit, ExecRequest, PathInfo, ResizeMessage, StatQuery};
use super::ws::{
    after_agent_failure, close, connect, drain, endpoint, first_request, send_json, unavailable,
    upgrade, Sink, CLOSE_TIMEOUT,
};
use crate::agent::{AgentError, Inbound, StreamTx};
use crate::instances::{AgentEndpoint, Manager};

/// Run a command in the instance.
#[utoipa::path(get, path = "/instances/{id}/exec",
    description = "WebSocket. First client message: ExecRequest as JSON text; then binary stdin. \
Server: binary output, then a text message {\"exitCode\": N}.",
    responses((status = 101, description = "switching to the WebSocket"),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn exec(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    upgrade(&state, &id, "exec", ws, run)
}

/// How the session ended: the final message.
fn ending(code: i32, signal: Option<i32>, timed_out: bool) -> ExecExit {
    ExecExit {
        exit_code: Some(code),
        signal,
        timed_out,
        error: None,
    }
}

async fn finish(mut sink: Sink, split: bool, ending: ExecExit) {
    let last = if split {
        ending
    } else {
        if let Some(e) = &ending.error {
            // hypeman's clients show binary messages only; one that is gone
            // misses nothing.
            let shown = Message::Binary(format!("Error: {e}\r\n").into_bytes().into());
            if sink.send(shown).await.is_err() {
                tracing::debug!("the exec client left before the error");
            }
        }
        hypeman_ending(&ending)
    };
    send_json(&mut sink, &last).await;
    close(sink).await;
}

/// The last message as hypeman sends it: `{"exitCode": N}` and nothing
/// else (a request that could not be read counts as a command that could
/// not be invoked, 126).
fn hypeman_ending(ending: &ExecExit) -> ExecExit {
    ExecExit {
        exit_code: Some(ending.exit_code.unwrap_or(NOT_INVOKED)),
        ..ExecExit::default()
    }
}

/// Exit code of a command that could not be invoked (as a shell's).
const NOT_INVOKED: i32 = 126;

fn exec_start(req: &ExecRequest) -> Result<ExecStart, String> {
    let command = if req.command.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        req.command.clone()
    };
    if command[0].is_empty() {
        return Err("the command is empty".into());
    }
    for key in req.env.keys() {
        lodge_common::env::check_name(key).map_err(|e| e.to_string())?;
    }
    if let Some(cwd) = &req.cwd {
        if !cwd.is_empty() && !cwd.starts_with('/') {
            return Err(format!("cwd must be an absolute path, got {cwd:?}"));
        }
    }
    Ok(ExecStart {
        command,
        env: req.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd: req.cwd.clone().filter(|c| !c.is_empty()),
        tty: req.tty,
        rows: req.rows,
        cols: req.cols,
        timeout_secs: Some(req.timeout).filter(|t| *t > 0),
    })
}

/// Pass one client message on to the command: stdin, its end, or a resize
/// (held in `held` until the command has `started`). False when the client
/// closed.
async fn forward(
    msg: Result<Message, axum::Error>,
    tx: &StreamTx,
    tty: bool,
    started: bool,
    held: &mut Option<Control>,
    open: &mut bool,
) -> bool {
    let sent = match msg {
        Ok(Message::Binary(b)) if *open => tx.data(&b).await,
        Ok(Message::Text(t)) => {
            if let Ok(r) = serde_json::from_str::<ResizeMessage>(&t) {
                if tty && r.resize.rows > 0 && r.resize.cols > 0 {
                    let resize = Control::Resize {
                        rows: r.resize.rows,
                        cols: r.resize.cols,
                    };
                    if started {
                        tx.control(&resize).await
                    } else {
                        *held = Some(resize);
                        Ok(())
                    }
                } else {
                    Ok(())
                }
            } else if let Ok(c) = serde_json::from_str::<CloseStdin>(&t) {
                if c.close_stdin && *open {
                    *open = false;
                    tx.eof().await
                } else {
                    Ok(())
                }
            } else if *open {
                tx.data(t.as_bytes()).await
            } else {
                Ok(())
            }
        }
        Ok(Message::Close(_)) | Err(_) => return false,
        Ok(_) => Ok(()),
    };
    if sent.is_err() {
        // The command is gone; its exit is on the way out. Keep reading
        // until the client closes (see `drain`).
        *open = false;
    }
    true
}

/// The agent session, in a span of its own (`instance.exec`): it runs
/// after the upgrade's answer, so outside the request's span.
#[tracing::instrument(name = "instance.exec", skip_all, fields(instance = %ep.id))]
async fn run(socket: WebSocket, manager: Arc<Manager>, ep: AgentEndpoint) {
    let (mut sink, mut source) = socket.split();
    let req: ExecRequest = match first_request(&mut source).await {
        Ok(r) => r,
        Err(e) => {
            // Whether the client wanted lodge's detail is unknown: it gets
            // hypeman's shape, the reason as output.
            finish(sink, false, ExecExit::refused(e)).await;
            return drain(source).await;
        }
    };
    let split = req.split_stderr;
    let start = match exec_start(&req) {
        Ok(s) => s,
        Err(e) => {
            finish(sink, split, ExecExit::failed(127, e)).await;
            return drain(source).await;
        }
    };
    let conn = match connect(&manager, &ep, req.wait_for_agent).await {
        Ok(c) => c,
        Err(e) => {
            finish(sink, split, ExecExit::failed(127, e.to_string())).await;
            return drain(source).await;
        }
    };
    // A client that has no input sends its end right behind the request
    // (lodge's CLI does, in the same segment): when it is already here,
    // it travels with the request to the agent.
    let mut pending = None;
    let mut input_over = false;
    match source.next().now_or_never() {
        Some(Some(Ok(Message::Text(t))))
            if serde_json::from_str::<CloseStdin>(&t).is_ok_and(|c| c.close_stdin) =>
        {
            input_over = true;
        }
        Some(next) => pending = Some(next),
        None => {}
    }
    let request = Request::Exec(start);
    let opened = if input_over {
        conn.open_without_input(&request).await
    } else {
        conn.open(&request).await
    };
    let (tx, mut rx) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            finish(sink, split, ExecExit::failed(127, e.to_string())).await;
            return drain(source).await;
        }
    };
    tracing::info!(instance = %ep.id, command = ?req.command, tty = req.tty, "exec started");

    // Client → guest, on its own task: waiting for stdin credit must never
    // hold up the output.
    let tty = req.tty;
    let (started_tx, mut started_rx) = tokio::sync::oneshot::channel::<()>();
    let mut started_tx = Some(started_tx);
    let mut input = tokio::spawn(async move {
        let mut open = !input_over;
        // Until the command has its terminal, the latest resize waits here.
        let mut started = false;
        let mut held: Option<Control> = None;
        loop {
            if let Some(next) = pending.take() {
                let Some(msg) = next else { break };
                if !forward(msg, &tx, tty, started, &mut held, &mut open).await {
                    break;
                }
                continue;
            }
            let msg = tokio::select! {
                got = &mut started_rx, if !started => {
                    started = true;
                    if let (Ok(()), Some(resize)) = (got, held.take()) {
                        if tx.control(&resize).await.is_err() {
                            open = false;
                        }
                    }
                    continue;
                }
                msg = source.next() => match msg {
                    Some(m) => m,
                    None => break,
                },
            };
            if !forward(msg, &tx, tty, started, &mut held, &mut open).await {
                break;
            }
        }
    });

    // Guest → client, here.
    let ending = loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = &mut input => {
                // The client went away: dropping the stream cancels the
                // command in the guest.
                tracing::info!(instance = %ep.id, "exec client went away");
                return;
            }
        };
        let (prefix, bytes) = match item {
            Ok(Inbound::Stdout(b)) => (1u8, b),
            Ok(Inbound::Stderr(b)) => (2u8, b),
            Ok(Inbound::Data(_)) => continue,
            Ok(Inbound::Event(Event::Exit {
                code,
                signal,
                timed_out,
            })) => break ending(code, signal, timed_out),
            Ok(Inbound::Event(Event::Failed { message, code })) => {
                break ExecExit::failed(code, message)
            }
            Ok(Inbound::Event(Event::Error { message, .. })) => {
                break ExecExit::failed(127, message)
            }
            Ok(Inbound::Event(Event::Started { .. })) => {
                if let Some(tx) = started_tx.take() {
                    // The input task may be over already.
                    tx.send(()).ok();
                }
                continue;
            }
            Ok(Inbound::Event(_)) => continue,
            Ok(Inbound::Closed) => {
                break ExecExit::failed(
                    127,
                    "the guest agent ended the session without an exit status",
                )
            }
            Err(e) => break ExecExit::failed(127, e.to_string()),
        };
        let n = bytes.len();
        let message = if split {
            let mut framed = Vec::with_capacity(n + 1);
            framed.push(prefix);
            framed.extend_from_slice(&bytes);
            framed
        } else {
            bytes
        };
        if sink.send(Message::Binary(message.into())).await.is_err() {
            input.abort();
            return;
        }
        if rx.consumed(n).await.is_err() {
            break ExecExit::failed(127, AgentError::Lost.to_string());
        }
    };
    tracing::info!(instance = %ep.id, code = ?ending.exit_code, "exec ended");
    finish(sink, split, ending).await;
    // The input task reads on until the client's close (see `drain`).
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut input)
        .await
        .is_err()
    {
        input.abort();
    }
}

/// Information about a path in the guest.
#[utoipa::path(get, path = "/instances/{id}/stat",
    params(("path" = String, Query, description = "path in the guest"),
        ("follow_links" = Option<bool>, Query, description = "stat the symlink's target")),
    responses((status = 200, body = PathInfo), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 503, body = super::error::ErrorBody)))]
pub async fn stat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<StatQuery>, QueryRejection>,
) -> Result<axum::Json<PathInfo>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let path = q
        .path
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("the `path` query parameter is required"))?;
    let ep = endpoint(&state, &id, "stat")?;
    crate::metrics::agent_session("stat");
    match stat_in(&state.manager, &ep, path, q.follow_links).await {
        Ok(info) => Ok(axum::Json(info)),
        Err(e) => Err(after_agent_failure(&state, &id, "stat", e).await),
    }
}

async fn stat_in(
    manager: &Manager,
    ep: &AgentEndpoint,
    path: String,
    follow_links: bool,
) -> Result<PathInfo, ApiError> {
    let conn = connect(manager, ep, 0).await.map_err(unavailable)?;
    let (_tx, mut rx) = conn
        .open(&Request::Stat { path, follow_links })
        .await
        .map_err(unavailable)?;
    loop {
        match rx.recv().await.map_err(unavailable)? {
            Inbound::Event(Event::Stat(info)) => return Ok(info.into()),
            Inbound::Event(Event::Error { message, .. }) => {
                return Err(ApiError::bad_request(message))
            }
            Inbound::Closed => return Err(unavailable(AgentError::Lost)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_default_like_hypeman() {
        let req: ExecRequest = serde_json::from_str(r#"{"tty":false}"#).expect("json");
        let start = exec_start(&req).expect("start");
        assert_eq!(start.command, ["/bin/sh"]);
        assert_eq!(start.timeout_secs, None);
        let req: ExecRequest = serde_json::from_str(
            r#"{"command":["env"],"env":{"A":"1"},"cwd":"/tmp","timeout":5,"wait_for_agent":3}"#,
        )
        .expect("json");
        let start = exec_start(&req).expect("start");
        assert_eq!(start.env, ["A=1"]);
        assert_eq!(start.cwd.as_deref(), Some("/tmp"));
        assert_eq!(start.timeout_secs, Some(5));
    }

    #[test]
    fn bad_requests_are_refused() {
        for body in [
            r#"{"command":[""]}"#,
            r#"{"command":["x"],"env":{"A=B":"1"}}"#,
            r#"{"command":["x"],"cwd":"relative"}"#,
        ] {
            let req: ExecRequest = serde_json::from_str(body).expect("json");
            assert!(exec_start(&req).is_err(), "{body}");
        }
    }

    #[test]
    fn hypeman_clients_get_the_exit_code_alone() {
        let shape = |e: ExecExit| serde_json::to_value(hypeman_ending(&e)).expect("json");
        let timed_out = ExecExit {
            exit_code: Some(124),
            signal: Some(9),
            timed_out: true,
            error: None,
        };
        assert_eq!(shape(timed_out), serde_json::json!({"exitCode": 124}));
        assert_eq!(
            shape(ExecExit::failed(127, "not found")),
            serde_json::json!({"exitCode": 127})
        );
        assert_eq!(
            shape(ExecExit::refused("invalid JSON")),
            serde_json::json!({"exitCode": 126})
        );
    }

    #[test]
    fn control_messages_are_recognised() {
        assert!(serde_json::from_str::<ResizeMessage>(r#"{"resize":{"rows":3,"cols":4}}"#).is_ok());
        assert!(serde_json::from_str::<CloseStdin>(r#"{"close_stdin":true}"#).is_ok());
        // Anything else is stdin.
        assert!(serde_json::from_str::<ResizeMessage>(r#"{"resize":{"rows":3}}"#).is_err());
        assert!(serde_json::from_str::<CloseStdin>("hello").is_err());
    }
}
