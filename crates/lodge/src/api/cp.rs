//! `GET /instances/{id}/cp`: copying files in and out of the guest over a
//! WebSocket, as hypeman speaks it, plus lodge's raw-channel measurement.
//!
//! The client's first text message is a [`CpRequest`]; its `direction`:
//!
//! - `"stat"`: one text answer `{"type":"stat", …PathInfo}`.
//! - `"from"`: the server streams the source as, per entry, a text
//!   `{"type":"header", path, mode, is_dir, is_symlink, link_target, size,
//!   mtime, uid, gid}`, binary messages with a file's contents, and
//!   `{"type":"end","final":bool}`; paths start with the source's base
//!   name. A failure is `{"type":"error","message","path"}`.
//! - `"to"` (hypeman): one file or directory lands at `guest_path`: binary
//!   messages with the contents, then `{"type":"end"}`; the answer is
//!   `{"type":"result","success","error","bytes_written"}`.
//! - `"to"` with `"stream": true` (lodge): a whole tree in one connection,
//!   entries shaped as in `"from"` (`header`, binary, `end`); the first
//!   entry is the root and lands at `guest_path`; `{"type":"end",
//!   "final":true}` ends the upload. The guest refuses entries that would
//!   land outside `guest_path`.
//!
//! A failure while receiving is answered as soon as it happens; the server
//! then keeps reading (and discarding) until the client's final `end`, so
//! a client that only reads after sending everything still gets it.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

use lodge_guest::agent::paths::base_name;
use lodge_guest::agent::{Control, EntryHeader, Event, Request};

use super::error::ApiError;
use super::state::AppState;
use super::types::{direction, CpMessage, CpRequest, Throughput, ThroughputQuery, WireHeader};
use super::ws::{
    after_agent_failure, close, close_and_drain, connect, drain, endpoint, first_request,
    send_json, unavailable, upgrade, Sink, Source,
};
use crate::agent::{AgentError, Inbound, StreamRx, StreamTx};
use crate::instances::{AgentEndpoint, Manager};

/// Copy files in or out of the instance, or stat a path.
#[utoipa::path(get, path = "/instances/{id}/cp",
    description = "WebSocket. First client message: CpRequest as JSON text; see the module documentation for the messages that follow.",
    responses((status = 101, description = "switching to the WebSocket"),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn cp(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    upgrade(&state, &id, "cp", ws, run)
}

async fn run(socket: WebSocket, manager: Arc<Manager>, ep: AgentEndpoint) {
    let (mut sink, mut source) = socket.split();
    let req: CpRequest = match first_request(&mut source).await {
        Ok(r) => r,
        Err(e) => {
            send_json(&mut sink, &CpMessage::error(e, "")).await;
            return close_and_drain(sink, source).await;
        }
    };
    let request = match req.direction.as_str() {
        direction::STAT => Request::Stat {
            path: req.guest_path.clone(),
            follow_links: req.follow_links,
        },
        direction::FROM => Request::CopyFrom {
            path: req.guest_path.clone(),
            follow_links: req.follow_links,
        },
        direction::TO => Request::CopyTo {
            path: req.guest_path.clone(),
        },
        other => {
            let message = format!("invalid direction: {other} (must be 'to', 'from', or 'stat')");
            send_json(&mut sink, &CpMessage::error(message, "")).await;
            return close_and_drain(sink, source).await;
        }
    };
    if !req.guest_path.starts_with('/') {
        let message = format!("guest_path must be absolute, got {:?}", req.guest_path);
        send_json(&mut sink, &CpMessage::error(message, &req.guest_path)).await;
        return close_and_drain(sink, source).await;
    }
    let opened = match connect(&manager, &ep, req.wait_for_agent).await {
        Ok(conn) => conn.open(&request).await,
        Err(e) => Err(e),
    };
    let (tx, rx) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            send_json(&mut sink, &CpMessage::error(e.to_string(), &req.guest_path)).await;
            return close_and_drain(sink, source).await;
        }
    };
    tracing::info!(instance = %ep.id, direction = %req.direction, path = %req.guest_path, "cp started");
    match req.direction.as_str() {
        direction::TO => copy_to(sink, source, tx, rx, req).await,
        _ => copy_out(sink, source, rx, &req.guest_path).await,
    }
}

/// `stat` and `from`: forward what the agent sends.
async fn copy_out(mut sink: Sink, mut source: Source, mut rx: StreamRx, path: &str) {
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            msg = source.next() => match msg {
                // Nothing is expected from the client; only its leaving.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
        };
        let message = match item {
            Ok(Inbound::Data(bytes)) => {
                let n = bytes.len();
                if sink.send(Message::Binary(bytes.into())).await.is_err() {
                    return;
                }
                if rx.consumed(n).await.is_err() {
                    send_json(
                        &mut sink,
                        &CpMessage::error(AgentError::Lost.to_string(), path),
                    )
                    .await;
                    break;
                }
                continue;
            }
            Ok(Inbound::Event(Event::Header(h))) => CpMessage::Header(h.into()),
            Ok(Inbound::Event(Event::End { last })) => {
                let done = CpMessage::End { last };
                if last {
                    send_json(&mut sink, &done).await;
                    break;
                }
                done
            }
            Ok(Inbound::Event(Event::Stat(info))) => {
                send_json(&mut sink, &CpMessage::Stat(info.into())).await;
                break;
            }
            Ok(Inbound::Event(Event::Error { message, path })) => {
                send_json(&mut sink, &CpMessage::error(message, &path)).await;
                break;
            }
            Ok(Inbound::Event(_)) | Ok(Inbound::Stdout(_)) | Ok(Inbound::Stderr(_)) => continue,
            Ok(Inbound::Closed) => {
                send_json(
                    &mut sink,
                    &CpMessage::error("copy stream ended without completion marker", path),
                )
                .await;
                break;
            }
            Err(e) => {
                send_json(&mut sink, &CpMessage::error(e.to_string(), path)).await;
                break;
            }
        };
        if !send_json(&mut sink, &message).await {
            return;
        }
    }
    close(sink).await;
    drain(source).await;
}

/// Why a text message that calls itself a header cannot be read, if it
/// is one: it ends the upload, where other unreadable messages are ignored.
fn malformed_header(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v.get("type")?.as_str()? != "header" {
        return None;
    }
    let e = serde_json::from_value::<WireHeader>(v).err()?;
    Some(format!("malformed copy header: {e}"))
}

/// `to`: forward the client's entries to the agent; answer with the
/// agent's result (or its first error) as soon as it is known.
async fn copy_to(
    mut sink: Sink,
    mut source: Source,
    tx: StreamTx,
    mut rx: StreamRx,
    req: CpRequest,
) {
    let stream = req.stream;
    if !stream {
        // hypeman's one-entry form: the request describes the entry.
        let root = EntryHeader {
            path: base_name(&req.guest_path).to_string(),
            mode: match (req.mode & 0o7777, req.is_dir) {
                (0, true) => 0o755,
                (0, false) => 0o644,
                (m, _) => m,
            },
            is_dir: req.is_dir,
            mtime: req.mtime,
            uid: (req.uid > 0 || req.gid > 0).then_some(req.uid),
            gid: (req.uid > 0 || req.gid > 0).then_some(req.gid),
            ..EntryHeader::default()
        };
        if let Err(e) = tx.control(&Control::Entry(root)).await {
            send_json(&mut sink, &CpMessage::error(e.to_string(), &req.guest_path)).await;
            return close_and_drain(sink, source).await;
        }
    }

    // Client → guest on its own task, so the answer can go out while the
    // client is still sending.
    let mut input = tokio::spawn(async move {
        let mut forwarding = true;
        let mut entry_open = !stream;
        while let Some(msg) = source.next().await {
            let sent = match msg {
                Ok(Message::Binary(b)) if forwarding => tx.data(&b).await,
                Ok(Message::Text(t)) => {
                    let m = match serde_json::from_str::<CpMessage>(&t) {
                        Ok(m) => m,
                        Err(_) => match malformed_header(&t) {
                            Some(message) if stream && forwarding => {
                                return (Upload::Failed(message), source)
                            }
                            _ => continue,
                        },
                    };
                    match m {
                        CpMessage::End { last } => {
                            let finished = !stream || last;
                            let mut r = Ok(());
                            if forwarding && entry_open {
                                entry_open = false;
                                r = tx.control(&Control::EntryEnd).await;
                            }
                            if forwarding && finished && r.is_ok() {
                                r = tx.eof().await;
                            }
                            if finished {
                                return (Upload::Finished, source);
                            }
                            r
                        }
                        CpMessage::Header(h) if stream && forwarding => {
                            entry_open = true;
                            tx.control(&Control::Entry(h.into())).await
                        }
                        _ => Ok(()),
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return (Upload::Left, source),
                Ok(_) => Ok(()),
            };
            match sent {
                Ok(()) => {}
                Err(e @ AgentError::TooLarge(_)) => return (Upload::Failed(e.to_string()), source),
                // The guest ended the copy (its answer is on the way):
                // read on until the client's end, discarding.
                Err(_) => forwarding = false,
            }
        }
        (Upload::Left, source)
    });

    // The client's half, once its part is over.
    let mut client_half: Option<Source> = None;
    let answer = loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            done = &mut input, if client_half.is_none() => match done {
                Ok((Upload::Finished, source)) => {
                    client_half = Some(source);
                    continue;
                }
                Ok((Upload::Failed(message), source)) => {
                    client_half = Some(source);
                    break CpMessage::not_written(message);
                }
                // The client went away mid-copy: dropping the stream
                // cancels it in the guest.
                Ok((Upload::Left, _)) | Err(_) => return,
            }
        };
        match item {
            Ok(Inbound::Event(Event::Result { bytes })) => break CpMessage::written(bytes),
            Ok(Inbound::Event(Event::Error { message, .. })) => {
                break CpMessage::not_written(message)
            }
            Ok(Inbound::Closed) => {
                break CpMessage::not_written("the guest agent ended the copy without a result")
            }
            Ok(_) => continue,
            Err(e) => break CpMessage::not_written(e.to_string()),
        }
    };
    send_json(&mut sink, &answer).await;
    // A failed copy is cancelled in the guest.
    drop(rx);
    let source = match client_half {
        Some(source) => Some(source),
        // A failure answered early: read on until the client's end.
        None => input.await.ok().map(|(_, source)| source),
    };
    close(sink).await;
    if let Some(source) = source {
        drain(source).await;
    }
}

/// How the client's part of an upload ended.
enum Upload {
    /// It sent its final `end`.
    Finished,
    /// It closed the connection first.
    Left,
    /// It sent something that cannot be forwarded.
    Failed(String),
}

/// lodge extension for benchmarks, served only with
/// `LODGE_BENCH_ENDPOINTS=1`: the raw rate of the instance's agent channel.
/// Moves zero bytes through the same framing and flow control a copy uses,
/// with no files and no WebSocket, between the daemon and the guest agent.
#[utoipa::path(get, path = "/instances/{id}/agent/throughput",
    params(("direction" = String, Query, description = "`from` (guest to host) or `to`"),
        ("bytes" = Option<u64>, Query, description = "bytes to move, default 64 MiB")),
    responses((status = 200, body = Throughput), (status = 409, body = super::error::ErrorBody)))]
pub async fn throughput(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ThroughputQuery>, QueryRejection>,
) -> Result<axum::Json<Throughput>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if q.bytes.is_some_and(|b| b > MAX_MEASURE) {
        return Err(ApiError::bad_request(format!(
            "bytes: at most {MAX_MEASURE} per measurement"
        )));
    }
    let ep = endpoint(&state, &id, "measure")?;
    match measure(&state.manager, &ep, q).await {
        Ok(t) => Ok(axum::Json(t)),
        Err(e) => Err(after_agent_failure(&state, &id, "measure", e).await),
    }
}

/// The most one throughput measurement moves (4 GiB).
const MAX_MEASURE: u64 = 4 << 30;

async fn measure(
    manager: &crate::instances::Manager,
    ep: &crate::instances::AgentEndpoint,
    q: ThroughputQuery,
) -> Result<Throughput, ApiError> {
    let bytes = q.bytes.unwrap_or(64 << 20);
    let conn = connect(manager, ep, 0).await.map_err(unavailable)?;
    let t0 = Instant::now();
    let moved = match q.direction.as_str() {
        "from" => {
            let (_tx, mut rx) = conn
                .open(&Request::Generate { bytes })
                .await
                .map_err(unavailable)?;
            let mut got = 0u64;
            loop {
                match rx.recv().await.map_err(unavailable)? {
                    Inbound::Data(d) => {
                        got += d.len() as u64;
                        rx.consumed(d.len()).await.map_err(unavailable)?;
                    }
                    Inbound::Event(Event::End { .. }) | Inbound::Closed => break got,
                    _ => {}
                }
            }
        }
        "to" => {
            let (tx, mut rx) = conn.open(&Request::Discard).await.map_err(unavailable)?;
            let chunk = vec![0u8; 256 << 10];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                tx.data(&chunk[..n]).await.map_err(unavailable)?;
                left -= n as u64;
            }
            tx.eof().await.map_err(unavailable)?;
            loop {
                match rx.recv().await.map_err(unavailable)? {
                    Inbound::Event(Event::Result { bytes }) => break bytes,
                    Inbound::Closed => return Err(unavailable(AgentError::Lost)),
                    _ => {}
                }
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "direction must be `from` or `to`, got {other:?}"
            )))
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Throughput {
        direction: q.direction,
        bytes: moved,
        seconds,
        mib_per_s: moved as f64 / (1 << 20) as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreadable_headers_end_an_upload() {
        assert_eq!(
            malformed_header(r#"{"type":"header","mode":420}"#).as_deref(),
            Some("malformed copy header: missing field `path`")
        );
        assert_eq!(malformed_header(r#"{"type":"header","path":"x"}"#), None);
        assert_eq!(malformed_header(r#"{"type":"end","final":"no"}"#), None);
        assert_eq!(malformed_header("plain text"), None);
    }
}
