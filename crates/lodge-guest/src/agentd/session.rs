//! What the reader (`agentd`) and the sessions (`exec`, `copy`) share: the
//! input a session is fed, the controls it offers, and the way out when
//! the agent cannot go on at all. Its own file so that sessions need not
//! import the reader that starts them.

use lodge_guest::protocol::EntryHeader;

/// Print a one-line message on the console and exit with failure. Used
/// only when the agent cannot work at all.
pub fn fatal(message: &str) -> ! {
    eprintln!("lodge-agent: {message}");
    std::process::exit(1)
}

/// What the reader routes to a session.
pub enum Input {
    Data(Vec<u8>),
    Entry(EntryHeader),
    EntryEnd,
    Eof,
}

/// How the reader reaches into a running session besides its input.
pub trait SessionControl: Send + Sync {
    fn resize(&self, _rows: u16, _cols: u16) {}
    /// The client went away (or the connection did): stop.
    fn cancel(&self);
}

/// A control for sessions that stop by noticing their closed input.
pub struct NoControl;

impl SessionControl for NoControl {
    fn cancel(&self) {}
}
