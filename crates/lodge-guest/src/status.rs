//! Status lines from the guest init to the host.
//!
//! `lodge-init` writes one line per event to the second serial port
//! ([`crate::STATUS_TTY`]); the host has QEMU append that port to a file and
//! parses each line with [`parse_status_line`]. The first serial port stays
//! the user's console, so no marker ever shows up in the user's log.
//!
//! Line formats (each ends with `\n`; the parser also accepts `\r\n`):
//!
//! ```text
//! lodge-init: started pid=N        the workload was exec'd as guest pid N
//! lodge-init: exited code=N        the workload exited with status N
//! lodge-init: exited signal=N      the workload was killed by signal N
//! lodge-init: error MESSAGE        the guest could not start the workload
//! ```
//!
//! Order: `started` then `exited` in a normal run. When the program cannot
//! be executed (not found: code 127, not executable: code 126, as docker),
//! `exited` comes without `started`. `error` means setup failed before the
//! workload could run; the guest then powers off without an `exited` line.

use std::fmt;

/// Every status line starts with this.
pub const STATUS_PREFIX: &str = "lodge-init: ";

/// One event reported by the guest init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusEvent {
    /// The workload runs as this guest pid.
    Started { pid: u32 },
    /// The workload exited normally with this status.
    Exited { code: i32 },
    /// The workload was terminated by this signal number.
    Signaled { signal: i32 },
    /// Setup failed before the workload ran; the message is one line.
    Error(String),
}

impl StatusEvent {
    /// The line to write, newline included.
    pub fn line(&self) -> String {
        format!("{self}\n")
    }
}

impl fmt::Display for StatusEvent {
    /// The line without its newline; line breaks inside an error message
    /// are replaced by spaces so that one event stays one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(STATUS_PREFIX)?;
        match self {
            StatusEvent::Started { pid } => write!(f, "started pid={pid}"),
            StatusEvent::Exited { code } => write!(f, "exited code={code}"),
            StatusEvent::Signaled { signal } => write!(f, "exited signal={signal}"),
            StatusEvent::Error(message) => {
                let one_line: String = message
                    .chars()
                    .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                    .collect();
                write!(f, "error {one_line}")
            }
        }
    }
}

/// Parse one line of the status stream; `None` for anything that is not a
/// well-formed status line (the caller may log or ignore it).
pub fn parse_status_line(line: &str) -> Option<StatusEvent> {
    let line = line.trim_end_matches(['\n', '\r']);
    let rest = line.strip_prefix(STATUS_PREFIX)?;
    if let Some(pid) = rest.strip_prefix("started pid=") {
        return pid.parse().ok().map(|pid| StatusEvent::Started { pid });
    }
    if let Some(code) = rest.strip_prefix("exited code=") {
        return code.parse().ok().map(|code| StatusEvent::Exited { code });
    }
    if let Some(signal) = rest.strip_prefix("exited signal=") {
        return signal
            .parse()
            .ok()
            .map(|signal| StatusEvent::Signaled { signal });
    }
    rest.strip_prefix("error ")
        .map(|message| StatusEvent::Error(message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_documented_shape() {
        assert_eq!(
            StatusEvent::Started { pid: 42 }.line(),
            "lodge-init: started pid=42\n"
        );
        assert_eq!(
            StatusEvent::Exited { code: 3 }.line(),
            "lodge-init: exited code=3\n"
        );
        assert_eq!(
            StatusEvent::Signaled { signal: 9 }.line(),
            "lodge-init: exited signal=9\n"
        );
        assert_eq!(
            StatusEvent::Error("no root disk".into()).line(),
            "lodge-init: error no root disk\n"
        );
    }

    #[test]
    fn every_event_round_trips() {
        for event in [
            StatusEvent::Started { pid: 1 },
            StatusEvent::Started { pid: u32::MAX },
            StatusEvent::Exited { code: 0 },
            StatusEvent::Exited { code: 255 },
            StatusEvent::Signaled { signal: 15 },
            StatusEvent::Error("mount /lower: invalid argument".into()),
        ] {
            assert_eq!(parse_status_line(&event.line()), Some(event.clone()));
            assert_eq!(parse_status_line(&event.to_string()), Some(event));
        }
    }

    #[test]
    fn error_messages_stay_on_one_line() {
        let line = StatusEvent::Error("first\nsecond\r\nthird".into()).line();
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(
            parse_status_line(&line),
            Some(StatusEvent::Error("first second  third".into()))
        );
    }

    #[test]
    fn crlf_is_accepted() {
        assert_eq!(
            parse_status_line("lodge-init: exited code=7\r\n"),
            Some(StatusEvent::Exited { code: 7 })
        );
    }

    #[test]
    fn other_lines_are_not_events() {
        for line in [
            "",
            "hello",
            "lodge-init: ",
            "lodge-init: started",
            "lodge-init: started pid=",
            "lodge-init: started pid=-1",
            "lodge-init: started pid=12x",
            "lodge-init: exited code=abc",
            "lodge-init: exited status=3",
            "lodge-init: exited signal=",
            "lodge-init: errorno space",
            " lodge-init: exited code=3",
            "xlodge-init: exited code=3",
        ] {
            assert_eq!(parse_status_line(line), None, "{line:?}");
        }
    }
}
