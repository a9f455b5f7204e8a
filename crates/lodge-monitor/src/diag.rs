//! The monitor's own diagnostics. They go to stderr, which is a file on the
//! same disk as the logs: a full disk must not end capture, and
//! `eprintln!` panics when its write fails, so every message goes through
//! [`diag`], which ignores a failing write.

use std::io::{self, Write};

/// Writes `lodge: <message>` to stderr, ignoring failure.
pub(crate) fn diag(message: std::fmt::Arguments<'_>) {
    let line = format!("lodge: {message}\n");
    // Nowhere else to report a failing stderr; the state that matters is
    // in capture.json.
    if io::stderr().lock().write_all(line.as_bytes()).is_err() {}
}
