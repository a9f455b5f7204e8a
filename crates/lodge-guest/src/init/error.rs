//! PID 1's one error type: a boot failure, already phrased for the user,
//! and the [`Context`] that phrases OS errors. Its own file so that every
//! step of the boot (`rootfs`, `workload`, ...) can use it without
//! importing the module that runs them.

use std::fmt;

use crate::sys;

/// A boot failure, already phrased for the user (one line, lowercase).
#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub fn new(message: String) -> Self {
        Self(message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach what was being done to an OS error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::new(format!("{}: {}", what(), sys::errno_text_of(&e))))
    }
}
