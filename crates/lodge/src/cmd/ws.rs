//! The CLI's side of the API's WebSockets, shared by `lodge exec` and
//! `lodge cp`: opening one with the client's URL and token, and sending
//! and reading the JSON text messages of [`crate::api::types`].
//!
//! Both verbs open the socket the same way, send a typed request first and
//! read typed text messages between binary data, so that lives here and the
//! verbs only hold their own protocol.

use anyhow::{anyhow, Context, Result};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::client::Client;

pub type Ws = WebSocketStream<TcpStream>;
pub type Sink = SplitSink<Ws, Message>;

/// Open an API WebSocket at `path` (e.g. `/instances/x/exec`). An HTTP
/// error answer (404, 409, …) becomes its `{code, message}` as an error.
pub async fn open(client: &Client, path: &str) -> Result<Ws> {
    let base = client.base_url();
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("exec and cp need an http:// LODGE_BASE_URL, got {base}"))?;
    let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("/{}", prefix.trim_end_matches('/'))
    };
    let mut request = format!("ws://{authority}{prefix}{path}").into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", client.token())
            .parse()
            .context("the API token is not a valid header value")?,
    );
    let tcp = TcpStream::connect(authority).await.with_context(|| {
        format!("cannot reach the lodge daemon at {base} (is `lodge serve` running?)")
    })?;
    // Every message is written whole; Nagle would hold the second of two
    // small ones (exec's request, then its end of input) for an ACK.
    tcp.set_nodelay(true)
        .context("TCP_NODELAY on the daemon connection")?;
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let status = reqwest::StatusCode::from_u16(resp.status().as_u16())
                .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
            let body = resp.body().clone().unwrap_or_default();
            Err(crate::client::failure(status, &body))
        }
        Err(e) => Err(anyhow!(e).context("WebSocket handshake with the lodge daemon")),
    }
}

/// `value` as a text message, keys sorted (see [`crate::client::json_body`]).
pub fn text<T: Serialize>(value: &T) -> Result<Message> {
    let json = crate::client::json_body(value)?;
    Ok(Message::Text(json.to_string().into()))
}

/// Send `value` as a text message.
pub async fn send_json<T: Serialize>(sink: &mut Sink, value: &T) -> Result<()> {
    sink.send(text(value)?).await?;
    Ok(())
}

/// Send `messages` in one write (one TCP segment when small): a request
/// and what follows it at once need not cost the daemon two wake-ups.
pub async fn send_all(sink: &mut Sink, messages: Vec<Message>) -> Result<()> {
    for m in messages {
        sink.feed(m).await?;
    }
    sink.flush().await?;
    Ok(())
}

/// A text message read as `T`, or `None` when it is something else.
pub fn parse<T: DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_str(text).ok()
}

/// Start the closing handshake. The daemon may have closed already, which
/// leaves nothing to clean up, so a failure is not reported.
pub async fn close(sink: &mut Sink) {
    sink.send(Message::Close(None)).await.ok();
}
