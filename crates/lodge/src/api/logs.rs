//! `GET /instances/{id}/logs`: Server-Sent Events, one `data: <JSON string>`
//! event per log line, as hypeman sends them.
//!
//! The files are read by lodge-logs (tail, then follow across rotations); this
//! handler only cuts the byte stream into lines. A line is sent once it is
//! complete; a trailing partial line is sent when the stream ends. A line
//! longer than [`lodge_logs::MAX_LINE_CHUNK`] (64 KiB) goes out as several
//! events of at most that size, all but the last marked with the comment
//! `: continued` ([`CONTINUED`]): a guest writing a line of any length
//! without a newline cannot grow the daemon (one event, one read chunk and
//! one unfinished piece are held at a time). A follow
//! stream has no timeout and ends when the VM's monitor exits or the client
//! goes away.
//!
//! lodge's additions, `since`, `until` and `timestamps`, read the time
//! index beside each segment (`lodge_logs::read_window_to`); with `follow`
//! the follower is opened first and the window's view stops at the byte it
//! starts from, so nothing is sent twice or skipped. With `timestamps` each
//! line's data is `<RFC 3339 time> <line>`; followed lines are stamped when
//! read.
//!
//! Followers of the same log share one reader in the daemon once they have
//! sent their tail (see `hub`).

mod hub;

use std::convert::Infallible;

use super::error::ApiError;
use super::state::AppState;
use super::types::LogsQuery;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use lodge_logs::{LineChunk, LineSplitter};

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

/// One SSE event for a line, or for a piece of a long one. A piece that
/// does not end its line carries the comment `: continued`, which SSE
/// clients ignore (they see the pieces as lines) and lodge's CLI reads to
/// join them again.
fn event(piece: &LineChunk) -> Event {
    let line = String::from_utf8_lossy(&piece.bytes);
    // serde_json cannot fail on a str.
    let data = serde_json::to_string(&line).unwrap_or_default();
    let event = Event::default();
    let event = if piece.ends_line {
        event
    } else {
        event.comment(CONTINUED)
    };
    event.data(data)
}

/// The comment marking an event whose line goes on in the next event.
pub const CONTINUED: &str = "continued";

/// Stream an instance's log.
#[utoipa::path(get, path = "/instances/{id}/logs",
    params(("tail" = Option<u64>, Query), ("follow" = Option<bool>, Query), ("source" = Option<String>, Query, description = "app, vmm or hypeman/lodge"),
        ("since" = Option<String>, Query, description = "lines written at or after: RFC 3339, Unix seconds or a duration ago like 10m"),
        ("until" = Option<String>, Query, description = "lines written before (same forms)"),
        ("timestamps" = Option<bool>, Query, description = "prefix each line with its RFC 3339 time")),
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
    let stamps = q.timestamps.unwrap_or(false);
    if stamps || q.since.is_some() || q.until.is_some() {
        let now = std::time::SystemTime::now();
        let point = |name: &str, value: Option<&str>| {
            value
                .map(|v| lodge_common::time::parse_point_in_time(v, now))
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
        };
        let window = lodge_logs::Window {
            since: point("since", q.since.as_deref())?,
            until: point("until", q.until.as_deref())?,
        };
        let follow = if window.until.is_some() {
            lodge_logs::Follow::No
        } else {
            follow
        };
        let dir_for_hub = dir.clone();
        let (lines, follower) = tokio::task::spawn_blocking(move || {
            let follower = match follow {
                lodge_logs::Follow::No => None,
                _ => Some(lodge_logs::Follower::open(
                    &dir,
                    source,
                    lodge_logs::Tail::Lines(0),
                    follow,
                )?),
            };
            let stop = follower
                .as_ref()
                .and_then(lodge_logs::Follower::start_point);
            let lines = lodge_logs::read_window_to(&dir, source, window, tail, stop)?;
            Ok::<_, lodge_logs::ReadError>((lines, follower))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("reading logs: {e}")))?;
        let window_events = stream::iter(timed_events(lines, stamps).into_iter().map(Ok));
        let follower = match follower {
            Some(follower) => Some(
                hub::SharedFollow::new(&dir_for_hub, source, follow, follower)
                    .await
                    .map_err(|e| ApiError::internal(format!("reading logs: {e}")))?,
            ),
            None => None,
        };
        return Ok(match follower {
            Some(follower) => {
                Sse::new(window_events.chain(line_events_stamped(follower, stamps))).into_response()
            }
            None => Sse::new(window_events).into_response(),
        });
    }
    let open_dir = dir.clone();
    let follower = tokio::task::spawn_blocking(move || {
        lodge_logs::Follower::open(&open_dir, source, tail, follow)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("reading logs: {e}")))?;
    let follower = hub::SharedFollow::new(&dir, source, follow, follower)
        .await
        .map_err(|e| ApiError::internal(format!("reading logs: {e}")))?;
    Ok(Sse::new(line_events(follower)).into_response())
}

/// The `data` of a line's first piece with `timestamps`: its time first.
fn stamped(time: Option<std::time::SystemTime>, piece: &LineChunk) -> LineChunk {
    let stamp = time.map_or_else(|| "-".to_owned(), lodge_common::time::rfc3339_micros);
    let mut bytes = Vec::with_capacity(stamp.len() + 1 + piece.bytes.len());
    bytes.extend_from_slice(stamp.as_bytes());
    bytes.push(b' ');
    bytes.extend_from_slice(&piece.bytes);
    LineChunk {
        bytes,
        ends_line: piece.ends_line,
    }
}

/// Events for the lines of a time window.
fn timed_events(lines: Vec<lodge_logs::TimedLine>, stamps: bool) -> Vec<Event> {
    let count = lines.len();
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let mut bytes = line.bytes;
            // A piece ends its line at its newline, or at the very end.
            let ends_line = bytes.last() == Some(&b'\n') || i + 1 == count;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            let piece = LineChunk { bytes, ends_line };
            if stamps && line.starts_line {
                event(&stamped(line.time, &piece))
            } else {
                event(&piece)
            }
        })
        .collect()
}

/// [`line_events`], each line stamped with the time it was read when
/// `stamps`.
fn line_events_stamped(
    follower: hub::SharedFollow,
    stamps: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ready: Vec<Event> = Vec::new();
    let state = (
        LineSplitter::default(),
        follower,
        ready.into_iter(),
        false,
        true,
    );
    stream::unfold(
        state,
        move |(mut splitter, mut follower, mut ready, mut done, mut starts)| async move {
            loop {
                if let Some(ev) = ready.next() {
                    return Some((Ok(ev), (splitter, follower, ready, done, starts)));
                }
                if done {
                    return None;
                }
                let pieces = match follower.next().await {
                    Ok(Some(bytes)) => splitter.push(&bytes),
                    Ok(None) => {
                        done = true;
                        splitter.finish().into_iter().collect()
                    }
                    Err(e) => {
                        tracing::warn!("following logs: {e}");
                        done = true;
                        splitter.finish().into_iter().collect()
                    }
                };
                let now = Some(std::time::SystemTime::now());
                let mut events = Vec::with_capacity(pieces.len());
                for piece in pieces {
                    events.push(if stamps && starts {
                        event(&stamped(now, &piece))
                    } else {
                        event(&piece)
                    });
                    starts = piece.ends_line;
                }
                ready = events.into_iter();
            }
        },
    )
}

/// The follower yields the tail first, then (when following) new output.
fn line_events(follower: hub::SharedFollow) -> impl Stream<Item = Result<Event, Infallible>> {
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
                    Ok(Some(bytes)) => splitter.push(&bytes).iter().map(event).collect(),
                    Ok(None) => {
                        done = true;
                        splitter.finish().iter().map(event).collect()
                    }
                    Err(e) => {
                        tracing::warn!("following logs: {e}");
                        done = true;
                        splitter.finish().iter().map(event).collect()
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
        let lines = |pieces: Vec<LineChunk>| -> Vec<String> {
            pieces
                .into_iter()
                .map(|p| String::from_utf8_lossy(&p.bytes).into_owned())
                .collect()
        };
        assert_eq!(lines(s.push(b"a\nb")), vec!["a"]);
        assert_eq!(lines(s.push(b"c\n\nd")), vec!["bc", ""]);
        assert_eq!(lines(s.finish().into_iter().collect()), vec!["d"]);
        assert_eq!(s.finish(), None);
    }

    /// The SSE body `line_events` sends for the log in `dir`, as events:
    /// (its comments, its data decoded).
    async fn rendered(dir: &std::path::Path, tail: u64) -> Vec<(Vec<String>, String)> {
        let follower = lodge_logs::Follower::open(
            dir,
            lodge_logs::Source::App,
            lodge_logs::Tail::Lines(tail),
            lodge_logs::Follow::No,
        )
        .expect("open");
        let follower = hub::SharedFollow::new(
            dir,
            lodge_logs::Source::App,
            lodge_logs::Follow::No,
            follower,
        )
        .await
        .expect("shared");
        let body = Sse::new(line_events(follower)).into_response().into_body();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        text.split_terminator("\n\n")
            .map(|event| {
                let mut comments = Vec::new();
                let mut data = String::new();
                for field in event.lines() {
                    if let Some(d) = field.strip_prefix("data:") {
                        data = serde_json::from_str(d.trim_start()).expect("a JSON string");
                    } else if let Some(c) = field.strip_prefix(':') {
                        comments.push(c.trim().to_string());
                    }
                }
                (comments, data)
            })
            .collect()
    }

    /// A 50 MB line without a newline: `tail=1` sends it in events of at
    /// most `MAX_LINE_CHUNK` bytes, all but the last marked as continued,
    /// which concatenate to the line.
    #[tokio::test]
    async fn a_huge_line_goes_out_in_bounded_events() {
        let dir = tempfile::tempdir().expect("tmp");
        let line: String = (0..50_000_000u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        std::fs::write(dir.path().join("app.log"), format!("before\n{line}")).expect("write");
        let events = rendered(dir.path(), 1).await;
        let max = lodge_logs::MAX_LINE_CHUNK;
        assert!(events.len() >= line.len() / max, "{} events", events.len());
        let mut joined = String::new();
        for (i, (comments, data)) in events.iter().enumerate() {
            assert!(data.len() <= max, "event {i}: {} bytes", data.len());
            let last = i + 1 == events.len();
            assert_eq!(comments.is_empty(), last, "event {i}: {comments:?}");
            joined.push_str(data);
        }
        assert!(joined == line, "the events concatenate to the line");
        // Short lines are one event each, unmarked.
        std::fs::write(dir.path().join("app.log"), "a\nb\n").expect("write");
        assert_eq!(
            rendered(dir.path(), 2).await,
            vec![(vec![], "a".to_string()), (vec![], "b".to_string())]
        );
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
