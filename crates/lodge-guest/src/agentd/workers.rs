//! The threads sessions run on, kept for the next session instead of
//! started anew for each: under software emulation a thread start (its
//! stack mapping, guard page, TLS and clone) is a measurable share of a
//! short exec's round trip. A few finished threads wait for work for a
//! while and then end, so an idle agent holds no more than it did.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// At most this many finished threads wait for a next session.
const MAX_IDLE: usize = 4;

/// A waiting thread ends after this long without work.
const IDLE_FOR: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job and not yet promised one.
    idle: usize,
}

#[derive(Clone, Default)]
pub struct Workers {
    inner: Arc<(Mutex<Queue>, Condvar)>,
}

impl Workers {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `job` on a waiting thread, or on a new one.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let mut queue = self.queue();
        if queue.idle > 0 {
            queue.idle -= 1;
            queue.jobs.push_back(Box::new(job));
            drop(queue);
            self.inner.1.notify_one();
            return Ok(());
        }
        drop(queue);
        let workers = self.clone();
        std::thread::Builder::new()
            .name("session".into())
            .spawn(move || {
                let mut job: Job = Box::new(job);
                loop {
                    job();
                    match workers.next_job() {
                        Some(next) => job = next,
                        None => return,
                    }
                }
            })
            .map(drop)
    }

    /// Wait for the next job; `None` when this thread should end.
    fn next_job(&self) -> Option<Job> {
        let mut queue = self.queue();
        if queue.idle >= MAX_IDLE {
            return None;
        }
        queue.idle += 1;
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                return Some(job);
            }
            let (next, waited) = self
                .inner
                .1
                .wait_timeout(queue, IDLE_FOR)
                .unwrap_or_else(|p| p.into_inner());
            queue = next;
            if waited.timed_out() && queue.jobs.is_empty() {
                queue.idle -= 1;
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_finished_thread_runs_the_next_job() {
        let workers = Workers::default();
        let (tx, rx) = channel();
        let t = tx.clone();
        workers
            .run(move || t.send(std::thread::current().id()).expect("send"))
            .expect("run");
        let first = rx.recv().expect("first");
        // Let the thread reach its wait.
        while workers.queue().idle == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        workers
            .run(move || tx.send(std::thread::current().id()).expect("send"))
            .expect("run");
        assert_eq!(rx.recv().expect("second"), first);
    }

    #[test]
    fn busy_threads_do_not_hold_up_new_jobs() {
        let workers = Workers::default();
        let (release_tx, release_rx) = channel::<()>();
        let (done_tx, done_rx) = channel();
        workers
            .run(move || {
                release_rx.recv().expect("release");
            })
            .expect("run");
        workers
            .run(move || done_tx.send(()).expect("send"))
            .expect("run");
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the second job ran while the first waits");
        release_tx.send(()).expect("release");
    }
}
