//! `GET /instances/{id}/logs`: Server-Sent Events, one `data: <JSON string>`
//! event per log line, as hypeman sends them.
//!
//! The files are read by lodge-logs (tail, then follow across rotations); this
//! handler only cuts the byte stream into lines. A line is sent once it is
//! complete; a trailing partial line is sent when the stream ends. A follow
//! stream has no timeout and ends when the VM's monitor exits or the client
//! goes away.

use std::convert::Infallible;

use super::types::LogsQuery;
use super::{ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};

/// Map an API source name to the log.
pub fn log_source(source: Option<&str>) -> Result<lodge_logs::Source, ApiError> {
    match source.unwrap_or("app") {
        "app" => Ok(lodge_logs::Source::App),
        "vmm" => Ok(lodge_logs::Source::Vmm),
        "lodge" | "hypeman" => Ok(lodge_logs::Source::Lodge),
        other => Err(ApiError::bad_request(format!(
            "unknown log source {other:?}: use app, vmm or lodge"
        ))),
    }
}

/// Splits a byte stream into lines without their `\n`.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..pos]);
            lines.push(String::from_utf8_lossy(&self.pending).into_owned());
            self.pending.clear();
            rest = &rest[pos + 1..];
        }
        self.pending.extend_from_slice(rest);
        lines
    }

    fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            None
        } else {
            let line = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            Some(line)
        }
    }
}

fn event(line: &str) -> Event {
    // serde_json cannot fail on a String.
    Event::default().data(serde_json::to_string(line).unwrap_or_default())
}

/// Stream an instance's log.
#[utoipa::path(get, path = "/instances/{id}/logs",
    params(("tail" = Option<u64>, Query), ("follow" = Option<bool>, Query), ("source" = Option<String>, Query, description = "app, vmm or hypeman/lodge")),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 404, body = super::error::ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let source = log_source(q.source.as_deref())?;
    let dir = state.manager.log_dir(&id)?;
    let tail = lodge_logs::Tail::Lines(q.tail.unwrap_or(100));
    let follow = match (q.follow.unwrap_or(false), source) {
        (false, _) => lodge_logs::Follow::No,
        // The ops log is written by the daemon itself, not a monitor:
        // following it never ends by itself.
        (true, lodge_logs::Source::Lodge) => lodge_logs::Follow::Forever,
        (true, _) => lodge_logs::Follow::UntilWriterExits,
    };
    let follower =
        tokio::task::spawn_blocking(move || lodge_logs::Follower::open(&dir, source, tail, follow))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("reading logs: {e}")))?;
    Ok(Sse::new(line_events(follower)).into_response())
}

/// The follower yields the tail first, then (when following) new output.
fn line_events(follower: lodge_logs::Follower) -> impl Stream<Item = Result<Event, Infallible>> {
    let ready: Vec<Event> = Vec::new();
    let state = (LineSplitter::default(), follower, ready.into_iter(), false);
    stream::unfold(
        state,
        |(mut splitter, mut follower, mut ready, mut done)| async move {
            loop {
                if let Some(ev) = ready.next() {
                    return Some((Ok(ev), (splitter, follower, ready, done)));
                }
                if done {
                    return None;
                }
                let chunk = follower.next().await;
                let lines: Vec<Event> = match chunk {
                    Ok(Some(bytes)) => splitter.push(&bytes).iter().map(|l| event(l)).collect(),
                    Ok(None) => {
                        done = true;
                        splitter.finish().iter().map(|l| event(l)).collect()
                    }
                    Err(e) => {
                        tracing::warn!("following logs: {e}");
                        done = true;
                        splitter.finish().iter().map(|l| event(l)).collect()
                    }
                };
                ready = lines.into_iter();
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_chunks_and_flushes_the_partial_one() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\nb"), vec!["a"]);
        assert_eq!(s.push(b"c\n\nd"), vec!["bc", ""]);
        assert_eq!(s.finish().as_deref(), Some("d"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn source_names() {
        assert_eq!(log_source(None).ok(), Some(lodge_logs::Source::App));
        assert_eq!(
            log_source(Some("hypeman")).ok(),
            Some(lodge_logs::Source::Lodge)
        );
        assert!(log_source(Some("../x")).is_err());
    }
}
