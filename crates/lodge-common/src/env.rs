//! What lodge accepts as an environment variable name: anything non-empty
//! without `=` or NUL. That is exactly what `execve` can carry (the kernel
//! splits `NAME=value` at the first `=` and strings end at NUL); it is
//! looser than POSIX's portable `[A-Za-z_][A-Za-z0-9_]*`, as docker is,
//! because images do set names like `com.example.flag`.

/// Why a name cannot be an environment variable name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid environment variable name {0:?}")]
pub struct EnvNameError(pub String);

/// Whether `name` can be passed as an environment variable name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// [`is_valid_name`] as a `Result`, with the message lodge shows.
pub fn check_name(name: &str) -> Result<(), EnvNameError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(EnvNameError(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["PATH", "_x", "a1", "com.example.flag", "lower"] {
            assert!(is_valid_name(good), "{good}");
            assert_eq!(check_name(good), Ok(()));
        }
        for bad in ["", "A=B", "=", "A\0B"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert_eq!(
            check_name("A=B").map_err(|e| e.to_string()),
            Err("invalid environment variable name \"A=B\"".to_owned())
        );
    }
}
