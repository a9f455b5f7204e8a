//! The CLI's HTTP client for the daemon's API.
//!
//! `LODGE_BASE_URL` (default the local daemon) and `LODGE_API_KEY`; with no
//! key, a short-lived token is minted from this host's secret, so `lodge ps`
//! just works next to `lodge serve`. API errors come back as
//! `{code, message}` and are shown as the message.

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::types::{ErrorBody, LogsQuery};
use crate::auth::Auth;
use crate::config;

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// An error the API answered with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl Client {
    pub fn from_env() -> Result<Self> {
        let base = std::env::var("LODGE_BASE_URL")
            .unwrap_or_else(|_| format!("http://{}", config::DEFAULT_LISTEN));
        let token = match std::env::var("LODGE_API_KEY") {
            Ok(t) if !t.is_empty() => t,
            _ => Auth::load(&config::data_dir_from_env())
                .context("no LODGE_API_KEY and no local secret to mint a token")?
                .mint("lodge-cli", 3600)?,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The daemon's base URL, e.g. `http://127.0.0.1:8080`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The bearer token requests carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A request to `path` carrying the token.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.base);
        self.http.request(method, &url).bearer_auth(&self.token)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the lodge daemon at {} (is `lodge serve` running?)",
                self.base
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        Err(failure(status, &body))
    }

    /// A request without a body, answered with JSON.
    pub async fn call<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T> {
        let resp = self.send(self.request(method, path)).await?;
        Ok(resp.json().await?)
    }

    /// A request with a JSON body, answered with JSON.
    pub async fn call_with<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let body = json_body(body)?;
        let resp = self.send(self.request(method, path).json(&body)).await?;
        Ok(resp.json().await?)
    }

    /// A `GET` with a query, answered with JSON.
    pub async fn get_with<Q: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T> {
        let resp = self
            .send(self.request(Method::GET, path).query(query))
            .await?;
        Ok(resp.json().await?)
    }

    pub async fn call_empty(&self, method: Method, path: &str) -> Result<()> {
        self.send(self.request(method, path)).await?;
        Ok(())
    }

    /// Streams log lines (without `\n`) to `on_line` until the server ends
    /// the stream. A long line may come in pieces: `on_line(text, ends)`
    /// gets `ends == false` for every piece but its last (the server marks
    /// them with the comment [`crate::api::logs::CONTINUED`]).
    pub async fn logs(
        &self,
        instance: &str,
        query: &LogsQuery,
        mut on_line: impl FnMut(&str, bool) -> Result<()>,
    ) -> Result<()> {
        let path = format!("/instances/{}/logs", encode(instance));
        let resp = self
            .send(self.request(Method::GET, &path).query(query))
            .await?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut continued = false;
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if let Some(data) = line.strip_prefix("data:") {
                    let text: String = serde_json::from_str(data.trim_start())
                        .with_context(|| format!("malformed log event {data:?}"))?;
                    on_line(&text, !continued)?;
                    continued = false;
                } else if let Some(comment) = line.strip_prefix(':') {
                    continued = comment.trim() == crate::api::logs::CONTINUED;
                } else if line.is_empty() {
                    continued = false;
                }
            }
        }
        Ok(())
    }
}

/// A request body or message as JSON with its keys sorted (through
/// [`serde_json::Value`]), as the CLI has always sent them: the bytes do not
/// depend on the order the wire types declare their fields in.
pub fn json_body<T: Serialize + ?Sized>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).context("encode a request for the daemon")
}

/// The error an API answer with `status` and `body` stands for: its
/// `{code, message}` when it has one, else the status and the raw body.
pub fn failure(status: StatusCode, body: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ApiFailure {
            status,
            code: e.code,
            message: e.message,
        }
        .into(),
        Err(_) => anyhow::anyhow!("{status}: {}", String::from_utf8_lossy(body)),
    }
}

/// Percent-encodes a path segment.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
