//! One reader for many followers of the same log.
//!
//! Without it every `follow` request reads the same files, takes the same
//! inotify wake-ups and re-stats the same directory: ten followers of a
//! busy console cost ten times one. Here the followers of one log (same
//! directory, source and end condition) share a [`Hub`]: one
//! [`Follower`] at the live end, whose chunks go out on a bounded
//! broadcast channel tagged with the place they came from
//! ([`StartPoint`]).
//!
//! A request still starts on a reader of its own ([`SharedFollow`]), for
//! its tail (which the hub never had); once that reader has reached the
//! place where the hub's queue for it begins, it drops its reader, skips
//! the queued bytes it already sent, and goes on from the hub. Places make
//! the hand-over exact: nothing is sent twice or skipped.
//!
//! Memory is bounded: the channel holds at most [`BACKLOG`] chunks of at
//! most 64 KiB, shared by all followers. A follower that falls further
//! behind than that (a slow client) does not hold the others back and
//! does not grow the queue: it **falls back to a reader of its own**,
//! opened at the exact place it had reached ([`Follower::open_at`]), and
//! rejoins the hub if it catches up. The hub stops when its log ends (its
//! followers then end too) or when its last follower goes away.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use lodge_logs::{Follow, Follower, ReadError, Source, StartPoint, Tail};
use tokio::sync::{broadcast, Notify};

/// Chunks (of at most 64 KiB) a follower may lag behind the hub before
/// it reads on its own.
pub const BACKLOG: usize = 64;

/// What the hub sends.
#[derive(Debug, Clone)]
enum Msg {
    /// Bytes of the log and where they began.
    Data { at: StartPoint, bytes: Arc<[u8]> },
    /// The log is finished (its writer exited and everything was read).
    End,
    /// The shared reader failed: read on your own (which reports it).
    Failed,
}

/// Which hub: one per log and end condition.
type Key = (PathBuf, Source, bool);

/// The shared reader's channel and where its next byte will come from.
#[derive(Debug)]
struct Hub {
    tx: broadcast::Sender<Msg>,
    /// Updated with each send, under this lock, so a subscriber learns the
    /// place its queue starts at.
    state: Mutex<HubState>,
    /// Tells the reading task that nobody listens any more.
    stop: Arc<Notify>,
}

#[derive(Debug)]
struct HubState {
    /// Where the next chunk sent will begin.
    next: Option<StartPoint>,
    /// `End` or `Failed` was sent: nothing more will come.
    over: bool,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

impl Hub {
    /// A receiver and the place where what it will receive begins;
    /// `None` once the hub is over (nothing would ever come).
    fn subscribe(&self) -> Option<(broadcast::Receiver<Msg>, Option<StartPoint>)> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (!state.over).then(|| (self.tx.subscribe(), state.next))
    }

    fn is_over(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .over
    }
}

fn hubs() -> &'static Mutex<HashMap<Key, Weak<Hub>>> {
    static HUBS: OnceLock<Mutex<HashMap<Key, Weak<Hub>>>> = OnceLock::new();
    HUBS.get_or_init(Default::default)
}

/// The hub of `source` in `dir`, started if there is none.
async fn hub_for(dir: &Path, source: Source, follow: Follow) -> Result<Arc<Hub>, ReadError> {
    let key: Key = (dir.to_owned(), source, follow == Follow::Forever);
    let existing = hubs()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
        .and_then(Weak::upgrade)
        .filter(|hub| !hub.is_over());
    if let Some(hub) = existing {
        return Ok(hub);
    }
    let open_dir = dir.to_owned();
    let follower = tokio::task::spawn_blocking(move || {
        Follower::open(&open_dir, source, Tail::Lines(0), follow)
    })
    .await
    .map_err(|err| ReadError::Io(std::io::Error::other(err)))??;
    let (tx, _) = broadcast::channel(BACKLOG);
    let stop = Arc::new(Notify::new());
    let hub = Arc::new(Hub {
        tx,
        state: Mutex::new(HubState {
            next: follower.start_point(),
            over: false,
        }),
        stop: Arc::clone(&stop),
    });
    let mut map = hubs().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(other) = map
        .get(&key)
        .and_then(Weak::upgrade)
        .filter(|hub| !hub.is_over())
    {
        // Another request started one meanwhile: use it, drop ours.
        return Ok(other);
    }
    map.retain(|_, hub| hub.strong_count() > 0);
    map.insert(key, Arc::downgrade(&hub));
    drop(map);
    tokio::spawn(run(Arc::downgrade(&hub), follower, stop));
    Ok(hub)
}

/// The hub's reading task: reads while anybody listens.
async fn run(hub: Weak<Hub>, mut follower: Follower, stop: Arc<Notify>) {
    loop {
        let got = tokio::select! {
            got = follower.next() => got,
            () = stop.notified() => return,
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let msg = match got {
            Ok(Some(bytes)) => match follower.last_chunk_start() {
                Some(at) => Msg::Data {
                    at,
                    bytes: bytes.into(),
                },
                None => Msg::Failed,
            },
            Ok(None) => Msg::End,
            Err(err) => {
                // The followers fall back to readers of their own, which
                // report the error themselves.
                tracing::warn!("shared log reader: {err}");
                Msg::Failed
            }
        };
        let mut state = hub.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &msg {
            Msg::Data { at, bytes } => state.next = Some(advanced(*at, bytes.len())),
            Msg::End | Msg::Failed => state.over = true,
        }
        let over = state.over;
        // An error means nobody is subscribed right now: nothing to do.
        if hub.tx.send(msg).is_err() {
            tracing::trace!("shared log reader: no subscriber for a chunk");
        }
        drop(state);
        if over {
            return;
        }
    }
}

fn advanced(at: StartPoint, len: usize) -> StartPoint {
    StartPoint {
        seq: at.seq,
        offset: at.offset + len as u64,
    }
}

/// A follow stream: its own reader first (the tail), then the hub's.
#[derive(Debug)]
pub struct SharedFollow {
    dir: PathBuf,
    source: Source,
    follow: Follow,
    mode: Mode,
    /// Where the next byte handed out begins, once known.
    pos: Option<StartPoint>,
    /// Times this stream fell behind the hub and read on its own.
    fallbacks: u32,
}

#[derive(Debug)]
enum Mode {
    /// Reading on its own; `hub` is where to switch once caught up.
    Own {
        follower: Box<Follower>,
        hub: Option<Subscription>,
    },
    /// Reading the hub's chunks; the first ones up to `skip_to` were sent
    /// already by the own reader.
    Shared {
        sub: Subscription,
        skip_to: Option<StartPoint>,
    },
    Done,
}

/// A receiver of a hub, the place its chunks begin at, and the hub itself
/// (held so it keeps reading).
#[derive(Debug)]
struct Subscription {
    rx: broadcast::Receiver<Msg>,
    from: Option<StartPoint>,
    hub: Arc<Hub>,
}

impl Subscription {
    /// `None` if the hub is over.
    fn new(hub: Arc<Hub>) -> Option<Self> {
        let (rx, from) = hub.subscribe()?;
        Some(Subscription { rx, from, hub })
    }
}

impl SharedFollow {
    /// Follows `source` in `dir` from `follower` (opened with its tail and
    /// `follow`), moving to the shared reader when it can. With
    /// [`Follow::No`] it is just `follower`.
    pub async fn new(
        dir: &Path,
        source: Source,
        follow: Follow,
        follower: Follower,
    ) -> Result<Self, ReadError> {
        let hub = match follow {
            Follow::No => None,
            Follow::UntilWriterExits | Follow::Forever => {
                Subscription::new(hub_for(dir, source, follow).await?)
            }
        };
        Ok(SharedFollow {
            dir: dir.to_owned(),
            source,
            follow,
            mode: Mode::Own {
                follower: Box::new(follower),
                hub,
            },
            pos: None,
            fallbacks: 0,
        })
    }

    /// Whether this stream reads from the shared reader now.
    #[cfg(test)]
    pub fn is_shared(&self) -> bool {
        matches!(self.mode, Mode::Shared { .. })
    }

    /// How often this stream fell behind and read on its own.
    #[cfg(test)]
    pub fn fallbacks(&self) -> u32 {
        self.fallbacks
    }

    /// The next bytes of the log; `None` once it is finished.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            match &mut self.mode {
                Mode::Done => return Ok(None),
                Mode::Own { follower, hub } => {
                    // Caught up with where the hub's queue begins: switch.
                    let here = self.pos.or_else(|| follower.start_point());
                    if let (Some(here), Some(sub)) = (here, hub.as_ref()) {
                        if sub.from.is_some_and(|from| from <= here) {
                            if let Some(sub) = hub.take() {
                                self.pos = Some(here);
                                self.mode = Mode::Shared {
                                    sub,
                                    skip_to: Some(here),
                                };
                                continue;
                            }
                        }
                    }
                    match follower.next().await? {
                        Some(bytes) => {
                            if let Some(at) = follower.last_chunk_start() {
                                self.pos = Some(advanced(at, bytes.len()));
                            }
                            return Ok(Some(bytes));
                        }
                        None => {
                            self.mode = Mode::Done;
                            return Ok(None);
                        }
                    }
                }
                Mode::Shared { sub, skip_to } => match sub.rx.recv().await {
                    Ok(Msg::Data { at, bytes }) => {
                        let mut from = 0usize;
                        if let Some(skip) = skip_to.take() {
                            let end = advanced(at, bytes.len());
                            if at.seq < skip.seq || (at.seq == skip.seq && end <= skip) {
                                // Sent already by the own reader.
                                *skip_to = Some(skip);
                                continue;
                            }
                            if at.seq == skip.seq && at.offset < skip.offset {
                                from = usize::try_from(skip.offset - at.offset)
                                    .unwrap_or(bytes.len())
                                    .min(bytes.len());
                            }
                        }
                        self.pos = Some(advanced(at, bytes.len()));
                        return Ok(Some(bytes[from..].to_vec()));
                    }
                    Ok(Msg::End) => {
                        self.mode = Mode::Done;
                        return Ok(None);
                    }
                    Ok(Msg::Failed) => self.fall_back(None).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow for the shared queue: read on our own
                        // from exactly where we are, and rejoin later.
                        let hub = Arc::clone(&sub.hub);
                        self.fall_back(Some(hub)).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        // The hub stopped without finishing the log (an
                        // error): go on alone.
                        self.fall_back(None).await?;
                    }
                },
            }
        }
    }

    async fn fall_back(&mut self, hub: Option<Arc<Hub>>) -> Result<(), ReadError> {
        self.fallbacks += 1;
        let Some(at) = self.pos else {
            self.mode = Mode::Done;
            return Ok(());
        };
        let (dir, source, follow) = (self.dir.clone(), self.source, self.follow);
        let follower =
            tokio::task::spawn_blocking(move || Follower::open_at(&dir, source, at, follow))
                .await
                .map_err(|err| ReadError::Io(std::io::Error::other(err)))??;
        self.mode = Mode::Own {
            follower: Box::new(follower),
            hub: hub.and_then(Subscription::new),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_logs::{MonitorLock, RotatingWriter};
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn numbers(from: u64, to: u64) -> Vec<u8> {
        (from..=to)
            .flat_map(|i| format!("{i} some log text to make the lines longer\n").into_bytes())
            .collect()
    }

    /// Ten followers of a busy log with rotations, one of them slow: all
    /// get exactly the log; the fast ones share one reader and finish
    /// long before the slow one, which fell behind and read on its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_followers_one_reader_and_a_slow_one() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let lock = MonitorLock::acquire(dir.path(), Duration::ZERO)?.ok_or("locked")?;
        let mut writer = RotatingWriter::open(dir.path(), Source::App, 256 * 1024, 1000)?;
        let head = numbers(1, 1000);
        writer.write_all(&head)?;
        let mut tasks = Vec::new();
        for i in 0..10 {
            let path = dir.path().to_owned();
            let opened = Follower::open(&path, Source::App, Tail::All, Follow::UntilWriterExits)?;
            let mut follow =
                SharedFollow::new(&path, Source::App, Follow::UntilWriterExits, opened).await?;
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let mut shared_once = false;
                while let Some(chunk) = follow.next().await? {
                    shared_once |= follow.is_shared();
                    out.extend(chunk);
                    if i == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Ok::<_, ReadError>((out, shared_once, follow.fallbacks(), Instant::now()))
            }));
        }
        let body = numbers(1001, 400_000);
        let writing = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for (k, part) in body.chunks(4000).enumerate() {
                writer.write_all(part)?;
                if k % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            writer.finish()?;
            drop(lock);
            Ok(())
        });
        writing.await??;
        let mut want = head;
        want.extend(numbers(1001, 400_000));
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await??);
        }
        for (i, (out, shared, _, _)) in results.iter().enumerate() {
            assert!(
                out == &want,
                "follower {i}: {} of {} bytes",
                out.len(),
                want.len()
            );
            if i > 0 {
                assert!(shared, "follower {i} read from the hub");
            }
        }
        let slow = &results[0];
        assert!(slow.2 > 0, "the slow follower fell back to its own reader");
        let fast_done = results[1..].iter().map(|r| r.3).max().ok_or("no results")?;
        assert!(
            fast_done < slow.3,
            "the fast followers did not wait for the slow one"
        );
        Ok(())
    }
}
