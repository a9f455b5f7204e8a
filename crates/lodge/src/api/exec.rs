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
//! 5. The last message is text: `{"exitCode": N}`, plus `signal`,
//!    `timed_out` or `error` when they apply. A command that cannot be
//!    started ends with exit code 127 (not found) or 126 and an `error`.
//!
//! The handler only translates between the WebSocket and an agent stream
//! ([`crate::agent`]); the command runs in the guest agent.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

use lodge_guest::agent::{Control, Event, ExecStart, Request};

use super::error::ApiError;
use super::state::AppState;
use super::types::{CloseStdin, ExecExit, ExecRequest, PathInfo, ResizeMessage, StatQuery};
use super::ws::{
    after_agent_failure, close, close_and_drain, connect, drain, endpoint, first_request,
    send_json, unavailable, upgrade, Sink, CLOSE_TIMEOUT,
};
use crate::agent::{AgentError, Inbound};
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
    if let (Some(e), false) = (&ending.error, split) {
        // hypeman's clients show binary messages only; one that is gone
        // misses nothing.
        let shown = Message::Binary(format!("Error: {e}\r\n").into_bytes().into());
        if sink.send(shown).await.is_err() {
            tracing::debug!("the exec client left before the error");
        }
    }
    send_json(&mut sink, &ending).await;
    close(sink).await;
}

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

async fn run(socket: WebSocket, manager: Arc<Manager>, ep: AgentEndpoint) {
    let (mut sink, mut source) = socket.split();
    let req: ExecRequest = match first_request(&mut source).await {
        Ok(r) => r,
        Err(e) => {
            send_json(&mut sink, &ExecExit::refused(e)).await;
            return close_and_drain(sink, source).await;
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
    let (tx, mut rx) = match conn.open(&Request::Exec(start)).await {
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
    let mut input = tokio::spawn(async move {
        let mut open = true;
        while let Some(msg) = source.next().await {
            let sent = match msg {
                Ok(Message::Binary(b)) if open => tx.data(&b).await,
                Ok(Message::Text(t)) => {
                    if let Ok(r) = serde_json::from_str::<ResizeMessage>(&t) {
                        if tty && r.resize.rows > 0 && r.resize.cols > 0 {
                            tx.control(&Control::Resize {
                                rows: r.resize.rows,
                                cols: r.resize.cols,
                            })
                            .await
                        } else {
                            Ok(())
                        }
                    } else if let Ok(c) = serde_json::from_str::<CloseStdin>(&t) {
                        if c.close_stdin && open {
                            open = false;
                            tx.eof().await
                        } else {
                            Ok(())
                        }
                    } else if open {
                        tx.data(t.as_bytes()).await
                    } else {
                        Ok(())
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => Ok(()),
            };
            if sent.is_err() {
                // The command is gone; its exit is on the way out. Keep
                // reading until the client closes (see `drain`).
                open = false;
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
    fn control_messages_are_recognised() {
        assert!(serde_json::from_str::<ResizeMessage>(r#"{"resize":{"rows":3,"cols":4}}"#).is_ok());
        assert!(serde_json::from_str::<CloseStdin>(r#"{"close_stdin":true}"#).is_ok());
        // Anything else is stdin.
        assert!(serde_json::from_str::<ResizeMessage>(r#"{"resize":{"rows":3}}"#).is_err());
        assert!(serde_json::from_str::<CloseStdin>("hello").is_err());
    }
}
