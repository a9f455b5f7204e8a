//! The Unix socket path limit. `sun_path` holds 108 bytes on Linux including
//! the terminating NUL, so a socket path may be at most 107 bytes; longer
//! paths fail at bind/connect time with an unhelpful error. Every place that
//! builds a socket path checks it against this one constant.

use std::path::Path;

/// Longest Unix socket path Linux accepts, in bytes.
pub const MAX_UNIX_SOCKET_PATH_LEN: usize = 107;

/// Whether `path` fits in a Unix socket address.
pub fn fits(path: &Path) -> bool {
    path.as_os_str().len() <= MAX_UNIX_SOCKET_PATH_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_107_bytes() {
        let ok = format!("/{}", "a".repeat(106));
        let long = format!("/{}", "a".repeat(107));
        assert!(fits(Path::new(&ok)));
        assert!(!fits(Path::new(&long)));
    }

    #[test]
    fn matches_the_kernel_sockaddr() {
        // sizeof(sockaddr_un.sun_path) is 108; one byte is the NUL.
        let addr = std::os::unix::net::SocketAddr::from_pathname(
            "/".to_string() + &"a".repeat(MAX_UNIX_SOCKET_PATH_LEN - 1),
        );
        assert!(addr.is_ok());
        let too_long = std::os::unix::net::SocketAddr::from_pathname(
            "/".to_string() + &"a".repeat(MAX_UNIX_SOCKET_PATH_LEN),
        );
        assert!(too_long.is_err());
    }
}
