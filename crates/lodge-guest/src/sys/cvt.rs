//! Converting to and from C: return codes to `io::Result`, strings to C
//! strings. Shared by every file of `sys` (and `spawn`'s fork).

use std::ffi::CString;
use std::io;

/// A libc return value as a `Result`: negative means `errno` is set.
pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `s` as a C string; a NUL byte inside is an invalid-input error.
pub(crate) fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in string"))
}
