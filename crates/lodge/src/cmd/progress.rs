//! What the CLI draws on stderr while it waits: the boot spinner of `lodge
//! run` and the byte counters of `lodge cp` (pulls draw theirs in
//! `images.rs`).
//!
//! Everything here is drawn only when stderr is a terminal; otherwise it
//! is hidden and costs nothing (no extra API calls, no walk of a tree to
//! size it), so scripts and logs see exactly the lines they saw before.
//! The copy's counters are fed from the messages the copy already sends
//! and receives (`Transfer::sent`, `Transfer::received`): the request
//! path of `cp` is untouched by them.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{encode, Client};
use crate::instances::{Instance, State};

/// Whether progress is drawn at all: stderr is a terminal.
pub fn shown() -> bool {
    std::io::stderr().is_terminal()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `run`'s spinner: polls the instance until it leaves `Created` and
/// `Initializing` (the guest's program started, or the boot ended some
/// other way). Returns at once when stderr is not a terminal: the console
/// follow that comes next replays from the start either way.
pub async fn wait_for_boot(client: &Client, id: &str, name: &str) {
    if !shown() {
        return;
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(style("{spinner} booting {msg} ({elapsed})"));
    spinner.set_message(name.to_string());
    spinner.enable_steady_tick(Duration::from_millis(100));
    let path = format!("/instances/{}", encode(id));
    loop {
        match client.call::<Instance>(Method::GET, &path).await {
            Ok(inst) if matches!(inst.state, State::Created | State::Initializing) => {}
            // Running, or ended, or an error the follow will report.
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    spinner.finish_and_clear();
}

/// `cp`'s counters: bytes and entries, against the source's total when it
/// is on this side (an upload), else (a download) the size the first
/// entry announces for a single file, or no total for a tree.
pub struct Transfer {
    bar: ProgressBar,
    entries: u64,
}

impl Transfer {
    fn new(total: Option<u64>, what: String) -> Transfer {
        let bar = match total {
            Some(len) => {
                let bar = ProgressBar::new(len);
                bar.set_style(style(
                    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
                ));
                bar
            }
            None => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(style("{spinner} {msg} {bytes} ({bytes_per_sec})"));
                bar
            }
        };
        bar.set_message(what);
        bar.enable_steady_tick(Duration::from_millis(200));
        Transfer { bar, entries: 0 }
    }

    fn hidden() -> Transfer {
        let bar = ProgressBar::hidden();
        bar.set_draw_target(ProgressDrawTarget::hidden());
        Transfer { bar, entries: 0 }
    }

    /// An upload of `src` (the local path, `follow` as `-L`): its regular
    /// files' sizes are summed first, metadata only, when drawn.
    pub fn upload(src: &Path, follow: bool, to: &str) -> Transfer {
        if !shown() {
            return Transfer::hidden();
        }
        let name = lodge_guest::agent::paths::base_name(&src.to_string_lossy()).to_string();
        let total = lodge_guest::agent::tree::Walk::new(src, &name, follow)
            .ok()
            .map(|walk| {
                walk.filter_map(Result::ok)
                    .filter(|f| f.is_file)
                    .map(|f| f.header.size)
                    .sum()
            });
        Transfer::new(total, format!("copying to {to}"))
    }

    /// A download from `from`.
    pub fn download(from: &str) -> Transfer {
        if !shown() {
            return Transfer::hidden();
        }
        Transfer::new(None, format!("copying from {from}"))
    }

    /// A message the upload sends: file contents move the bar.
    pub fn sent(&mut self, msg: &Message) {
        if let Message::Binary(data) = msg {
            self.bar.inc(data.len() as u64);
        }
    }

    /// File contents the download received.
    pub fn received(&mut self, bytes: usize) {
        self.bar.inc(bytes as u64);
    }

    /// A header the download received: one more entry; a first entry that
    /// is a regular file gives the total.
    pub fn entry(&mut self, is_dir: bool, is_symlink: bool, size: u64) {
        if self.entries == 0 && !is_dir && !is_symlink && !self.bar.is_hidden() {
            self.bar.set_length(size);
            self.bar.set_style(style(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
            ));
        }
        self.entries += 1;
    }

    /// The copy ended: the bar goes; on a terminal a one-line summary
    /// stays, as docker's "Successfully copied".
    pub fn finish(self, ok: bool) {
        if self.bar.is_hidden() {
            return;
        }
        let bytes = self.bar.position();
        let secs = self.bar.elapsed().as_secs_f64();
        self.bar.finish_and_clear();
        if ok {
            eprintln!("copied {} in {secs:.2}s", indicatif::HumanBytes(bytes));
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        // An error path that returned early: no bar left on the screen.
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_transfer_counts_without_drawing() {
        let mut t = Transfer::hidden();
        t.sent(&Message::Binary(vec![0u8; 10].into()));
        t.received(5);
        t.entry(false, false, 99);
        assert!(t.bar.is_hidden());
        assert_eq!(t.bar.position(), 15);
        assert_eq!(t.entries, 1);
        t.finish(true);
    }
}
