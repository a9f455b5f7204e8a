//! The async runtime the client verbs share. It lives apart from `mod.rs`
//! so the verb files depend on it, not on the dispatcher that declares them.

use anyhow::Result;

/// A runtime for the client verbs; the monitor and `logs --dir` never build one.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
