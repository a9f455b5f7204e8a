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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use lodge_guest::agent::{Control, Event, ExecStart, Request};

use super::{ApiError, AppState};
use crate::agent::{AgentError, Conn, Inbound, UnixSocket};
use crate::instances::{AgentEndpoint, Manager};

/// How long the server waits for the client's first message.
pub(super) const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) type Sink = SplitSink<WebSocket, Message>;
pub(super) type Source = SplitStream<WebSocket>;

/// hypeman's exec request, plus `split_stderr`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ExecRequest {
    /// Program and arguments; `["/bin/sh"]` when empty (as hypeman).
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute working directory (default: the workload's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command after this many seconds (0: never).
    #[serde(default)]
    pub timeout: u32,
    /// Seconds to keep trying to reach the guest agent (it may still be
    /// starting right after boot).
    #[serde(default)]
    pub wait_for_agent: u32,
    /// Initial terminal size (0: 24 rows, 80 columns).
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
    /// lodge extension: prefix output messages with 1 (stdout) or 2 (stderr).
    #[serde(default)]
    pub split_stderr: bool,
}

/// Client → server control messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeMessage {
    resize: Size,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Size {
    rows: u16,
    cols: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseStdin {
    close_stdin: bool,
}

/// The instance's agent, or the error to answer the upgrade with.
pub(super) fn endpoint(
    state: &AppState,
    id: &str,
    action: &'static str,
) -> Result<AgentEndpoint, ApiError> {
    Ok(state.manager.agent_endpoint(id, action)?)
}

/// The live connection to the instance's agent.
pub(super) async fn connect(
    manager: &Manager,
    ep: &AgentEndpoint,
    wait_secs: u32,
) -> Result<Arc<Conn>, AgentError> {
    manager
        .agents()
        .connect(
            &ep.id,
            &UnixSocket(ep.socket.clone()),
            Duration::from_secs(u64::from(wait_secs)),
        )
        .await
}

/// Read the client's first message, which must be text.
pub(super) async fn first_text(source: &mut Source) -> Result<String, String> {
    match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, source.next()).await {
        Err(_) => Err(format!(
            "no request within {} s",
            FIRST_MESSAGE_TIMEOUT.as_secs()
        )),
        Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
            Err("the connection closed before the request".into())
        }
        Ok(Some(Ok(Message::Text(t)))) => Ok(t.to_string()),
        Ok(Some(Ok(_))) => Err("first message must be JSON text".into()),
    }
}

pub(super) async fn send_json(sink: &mut Sink, value: &Value) -> bool {
    sink.send(Message::Text(value.to_string().into()))
        .await
        .is_ok()
}

/// How long the server waits for the client's side of the closing
/// handshake before dropping the connection.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close the WebSocket politely.
pub(super) async fn close(mut sink: Sink) {
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

/// Close, then wait for the client's close.
pub(super) async fn close_and_drain(sink: Sink, source: Source) {
    close(sink).await;
    drain(source).await;
}

/// Read (and drop) what the client still sends until it closes too.
/// Dropping a TCP connection with unread input makes the kernel send a
/// reset, which can destroy the final message before the client read it.
pub(super) async fn drain(mut source: Source) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

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
    let ep = match endpoint(&state, &id, "exec") {
        Ok(ep) => ep,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::bad_request(format!("exec needs a WebSocket: {}", e.body_text()))
                .into_response()
        }
    };
    let manager = state.manager.clone();
    ws.on_upgrade(move |socket| async move { run(socket, manager, ep).await })
}

/// How the session ended, for the final message.
struct Ending {
    code: i32,
    signal: Option<i32>,
    timed_out: bool,
    error: Option<String>,
}

impl Ending {
    fn error(code: i32, message: String) -> Self {
        Ending {
            code,
            signal: None,
            timed_out: false,
            error: Some(message),
        }
    }

    fn message(&self) -> Value {
        let mut v = json!({ "exitCode": self.code });
        if let Some(s) = self.signal {
            v["signal"] = json!(s);
        }
        if self.timed_out {
            v["timed_out"] = json!(true);
        }
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        v
    }
}

async fn finish(mut sink: Sink, split: bool, ending: Ending) {
    if let (Some(e), false) = (&ending.error, split) {
        // hypeman's clients show binary messages only.
        let _ = sink
            .send(Message::Binary(
                format!("Error: {e}\r\n").into_bytes().into(),
            ))
            .await;
    }
    send_json(&mut sink, &ending.message()).await;
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
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("invalid environment variable name {key:?}"));
        }
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
    let text = match first_text(&mut source).await {
        Ok(t) => t,
        Err(e) => {
            send_json(&mut sink, &json!({ "error": e })).await;
            return close_and_drain(sink, source).await;
        }
    };
    let req: ExecRequest = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            send_json(&mut sink, &json!({ "error": format!("invalid JSON: {e}") })).await;
            return close_and_drain(sink, source).await;
        }
    };
    let split = req.split_stderr;
    let start = match exec_start(&req) {
        Ok(s) => s,
        Err(e) => {
            finish(sink, split, Ending::error(127, e)).await;
            return drain(source).await;
        }
    };
    let conn = match connect(&manager, &ep, req.wait_for_agent).await {
        Ok(c) => c,
        Err(e) => {
            finish(sink, split, Ending::error(127, e.to_string())).await;
            return drain(source).await;
        }
    };
    let (tx, mut rx) = match conn.open(&Request::Exec(start)).await {
        Ok(pair) => pair,
        Err(e) => {
            finish(sink, split, Ending::error(127, e.to_string())).await;
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
            })) => {
                break Ending {
                    code,
                    signal,
                    timed_out,
                    error: None,
                }
            }
            Ok(Inbound::Event(Event::Failed { message, code })) => {
                break Ending::error(code, message)
            }
            Ok(Inbound::Event(Event::Error { message, .. })) => break Ending::error(127, message),
            Ok(Inbound::Event(_)) => continue,
            Ok(Inbound::Closed) => {
                break Ending::error(
                    127,
                    "the guest agent ended the session without an exit status".into(),
                )
            }
            Err(e) => break Ending::error(127, e.to_string()),
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
            break Ending::error(127, AgentError::Lost.to_string());
        }
    };
    tracing::info!(instance = %ep.id, code = ending.code, "exec ended");
    finish(sink, split, ending).await;
    // The input task reads on until the client's close (see `drain`).
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut input)
        .await
        .is_err()
    {
        input.abort();
    }
}

/// Query of `GET /instances/{id}/stat`.
#[derive(Debug, Deserialize)]
pub struct StatQuery {
    path: Option<String>,
    #[serde(default)]
    follow_links: bool,
}

/// What `stat` answers: hypeman's `PathInfo`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PathInfo {
    pub exists: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_dir: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_file: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_symlink: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl From<lodge_guest::agent::PathInfo> for PathInfo {
    fn from(p: lodge_guest::agent::PathInfo) -> Self {
        PathInfo {
            exists: p.exists,
            error: p.error,
            is_dir: p.is_dir,
            is_file: p.is_file,
            is_symlink: p.is_symlink,
            link_target: p.link_target,
            mode: p.mode,
            size: p.size,
        }
    }
}

/// An agent failure as an API error.
pub(super) fn unavailable(e: AgentError) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        code: "agent_unavailable",
        message: e.to_string(),
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
    let conn = connect(&state.manager, &ep, 0).await.map_err(unavailable)?;
    let (_tx, mut rx) = conn
        .open(&Request::Stat {
            path,
            follow_links: q.follow_links,
        })
        .await
        .map_err(unavailable)?;
    loop {
        match rx.recv().await.map_err(unavailable)? {
            Inbound::Event(Event::Stat(info)) => return Ok(axum::Json(info.into())),
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

    #[test]
    fn the_final_message_has_hypemans_shape() {
        let e = Ending {
            code: 137,
            signal: Some(9),
            timed_out: false,
            error: None,
        };
        assert_eq!(e.message(), json!({"exitCode": 137, "signal": 9}));
        assert_eq!(
            Ending::error(127, "nope".into()).message(),
            json!({"exitCode": 127, "error": "nope"})
        );
    }
}
