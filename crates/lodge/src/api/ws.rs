//! The WebSocket plumbing that exec and cp share: accepting the upgrade for
//! a running instance, reaching its agent, reading the first request,
//! sending JSON, and closing politely.
//!
//! Both endpoints speak the same way (first a JSON text request, then
//! binary data and JSON control messages, then a closing handshake in which
//! the server waits for the client), so the pieces live here once and the
//! endpoints only hold their own protocol.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use super::state::AppState;
use crate::agent::{AgentError, Conn, UnixSocket};
use crate::instances::{AgentEndpoint, Manager};

/// How long the server waits for the client's first message.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server waits for the client's side of the closing
/// handshake before dropping the connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub type Sink = SplitSink<WebSocket, Message>;
pub type Source = SplitStream<WebSocket>;

/// Accept a WebSocket for `action` on a running instance, or answer with
/// the usual `{code, message}` error (404 unknown, 409 not running, 400
/// not a WebSocket request). `session` runs on the upgraded connection.
pub fn upgrade<F, Fut>(
    state: &AppState,
    id: &str,
    action: &'static str,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    session: F,
) -> Response
where
    F: FnOnce(WebSocket, Arc<Manager>, AgentEndpoint) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ep = match endpoint(state, id, action) {
        Ok(ep) => ep,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::bad_request(format!("{action} needs a WebSocket: {}", e.body_text()))
                .into_response()
        }
    };
    crate::metrics::agent_session(action);
    let manager = state.manager.clone();
    ws.on_upgrade(move |socket| session(socket, manager, ep))
}

/// The instance's agent, or the error to answer with.
pub fn endpoint(
    state: &AppState,
    id: &str,
    action: &'static str,
) -> Result<AgentEndpoint, ApiError> {
    Ok(state.manager.agent_endpoint(id, action)?)
}

/// The live connection to the instance's agent.
pub async fn connect(
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

/// An agent failure as an API error.
pub fn unavailable(e: AgentError) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        code: "agent_unavailable",
        message: e.to_string(),
    }
}

/// The answer to an agent failure of a plain HTTP request: when the
/// instance stopped (or was deleted) under the request, the one a request
/// after the stop gets (409, 404); only an instance still running whose
/// agent cannot be reached is a 503. The state is looked at for a short
/// while, as the agent goes before the VMM is seen to exit.
pub async fn after_agent_failure(
    state: &AppState,
    id: &str,
    action: &'static str,
    err: ApiError,
) -> ApiError {
    if err.status != axum::http::StatusCode::SERVICE_UNAVAILABLE {
        return err;
    }
    for _ in 0..20 {
        if let Err(now) = endpoint(state, id, action) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    err
}

/// Read the client's first message, which must be text.
pub async fn first_text(source: &mut Source) -> Result<String, String> {
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

/// Read the client's first message as a JSON request.
pub async fn first_request<T: DeserializeOwned>(source: &mut Source) -> Result<T, String> {
    let text = first_text(source).await?;
    serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))
}

/// Send `value` as a text message; false when the client is gone. The
/// keys go out sorted (through [`serde_json::Value`]), as they always have,
/// so the bytes do not depend on the order fields are declared in.
pub async fn send_json<T: Serialize>(sink: &mut Sink, value: &T) -> bool {
    let text = match serde_json::to_value(value) {
        Ok(v) => v.to_string(),
        Err(e) => {
            tracing::error!("cannot encode a WebSocket message: {e}");
            return false;
        }
    };
    sink.send(Message::Text(text.into())).await.is_ok()
}

/// Close the WebSocket politely. The client may already be gone, which is
/// no failure here.
pub async fn close(mut sink: Sink) {
    if let Err(e) = sink.send(Message::Close(None)).await {
        tracing::debug!("sending the WebSocket close: {e}");
    }
    if let Err(e) = sink.close().await {
        tracing::debug!("closing the WebSocket: {e}");
    }
}

/// Close, then wait for the client's close.
pub async fn close_and_drain(sink: Sink, source: Source) {
    close(sink).await;
    drain(source).await;
}

/// Read (and drop) what the client still sends until it closes too.
/// Dropping a TCP connection with unread input makes the kernel send a
/// reset, which can destroy the final message before the client read it.
pub async fn drain(mut source: Source) {
    let drained = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            "the client did not close within {} s",
            CLOSE_TIMEOUT.as_secs()
        );
    }
}
