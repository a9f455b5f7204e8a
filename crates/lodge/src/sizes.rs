//! Memory and disk sizes as hypeman writes them (`512MB`, `1GB`, `2G`).
//!
//! A thin re-export of lodge-common's one size parser, so the API handler
//! and the CLI keep their `crate::sizes::parse_size` calls. Units are binary
//! everywhere (`1MB` = `1MiB` = 1024² bytes, as in hypeman and docker); see
//! `lodge_common::size` for the grammar and why.

pub use lodge_common::size::parse_size;

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_common::size::SizeError;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "12XB", "-5", "GB", "1.5GB", "1 G B"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_size("99999999999TB"),
            Err(SizeError::Overflow)
        ));
    }

    /// `50MB` is the same number of bytes for an instance's memory (the API's
    /// `size`, which `lodge run --memory` sends), for `LODGE_LOG_MAX_SIZE`
    /// and for `lodge supervise --max-size` (lodge-logs' `ByteSize`).
    /// tests/sizes_agree.rs checks the same through the running programs.
    #[test]
    fn fifty_megabytes_means_one_thing() -> anyhow::Result<()> {
        let memory = parse_size("50MB")?;
        let log_env = crate::config::log_max_size_from(Some("50MB"))?;
        let max_size = "50MB".parse::<lodge_logs::ByteSize>()?.as_u64();
        assert_eq!(memory, 52_428_800);
        assert_eq!(log_env, memory);
        assert_eq!(max_size, memory);
        Ok(())
    }
}
