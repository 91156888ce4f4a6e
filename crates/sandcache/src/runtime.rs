//! The async runtime every command runs on.

use std::process::ExitCode;

/// A multi-threaded runtime; one that cannot start is a usage error (2).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::from(2)
    })
}
