//! Work that outlives the operation that started it: old trees and failed
//! stagings removed on threads of their own (tracked, so a short-lived
//! process can wait for them), and the flag that stops an operation's
//! blocking thread when its future is dropped.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Sets the flag when dropped: an operation's future dropped at its deadline
/// stops its blocking thread at the next read or entry.
pub(crate) struct CancelOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

static BACKGROUND: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Runs `work` on a background thread, tracked so a short-lived process can
/// wait for it before exiting (see [`crate::wait_for_background`]).
pub(crate) fn background(name: &str, work: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new().name(format!("sandcache-{name}")).spawn(work);
    match spawned {
        Ok(handle) => {
            let mut all = BACKGROUND.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|h| !h.is_finished());
            all.push(handle);
        }
        Err(e) => tracing::warn!("could not start a background thread: {e}"),
    }
}

/// Removes trees in the background: old trees after a swap, failed stagings,
/// leftovers of crashed runs. Never right before extracting: on ext4,
/// creating files right after freeing many inodes is several times slower.
pub(crate) fn remove_in_background(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    background("cleanup", move || {
        // Removal is never urgent: it yields the CPU (and, following the
        // nice value, the disk) to whatever else runs. Only this thread.
        let _ = rustix::process::setpriority_process(None, 19);
        for p in paths {
            // An abandoned restore's writers may still be finishing a file
            // in it: a second pass removes what they added meanwhile.
            let mut result = fs::remove_dir_all(&p);
            for _ in 0..3 {
                if result.is_ok() || !p.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                result = fs::remove_dir_all(&p);
            }
            match result {
                Ok(()) => tracing::debug!("removed {}", p.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("could not remove {}: {e}", p.display()),
            }
        }
    });
}

/// Waits up to `timeout` for background cleanup to finish. Returns whether
/// everything finished.
pub fn wait_for_background(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let pending = {
            let mut all = BACKGROUND.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|h| !h.is_finished());
            all.len()
        };
        if pending == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
