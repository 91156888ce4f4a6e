//! Reaping the orphans a subreaper runner adopts, and leaving alone the
//! children it waits for itself.

use std::time::Duration;

use super::kill::reap;
use super::procs::processes;

/// Children the runner waits for itself (the worker, git): the orphan
/// reaper leaves them to their own `wait`.
static OWN_CHILDREN: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Starts a child with `spawn` and marks it (its pid, as `pid` reads it)
/// as one the runner waits for itself, until the returned guard is
/// dropped. The mark is made under the same lock the orphan reaper takes
/// after it lists the zombies: a child it lists was marked by then,
/// however soon it exited.
pub(super) fn spawn_marked<T>(
    spawn: impl FnOnce() -> std::io::Result<T>,
    pid: impl FnOnce(&T) -> Option<u32>,
) -> std::io::Result<(T, OwnChild)> {
    let mut own = OWN_CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    let child = spawn()?;
    let pid = pid(&child);
    if let Some(pid) = pid {
        own.insert(pid);
    }
    Ok((child, OwnChild(pid)))
}

#[derive(Debug)]
pub(crate) struct OwnChild(Option<u32>);

impl Drop for OwnChild {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            OWN_CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        }
    }
}

/// Starts reaping, twice a second for as long as the runtime runs, the
/// orphans the runner adopts as a child subreaper (or PID 1), so none
/// stays a zombie. The daemon starts it once, after
/// [`become_subreaper`](super::become_subreaper); it needs a Tokio runtime.
pub fn start_orphan_reaper() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let n = tokio::task::spawn_blocking(reap_orphans).await.unwrap_or(0);
            if n > 0 {
                tracing::debug!(target: "sandbox", "reaped {n} orphaned processes");
            }
        }
    });
}

/// Reaps every exited child of the runner that nobody else waits for: the
/// orphans a child subreaper (or PID 1) adopts. Returns how many.
pub fn reap_orphans() -> usize {
    let me = std::process::id();
    let zombies: Vec<u32> = processes().into_iter().filter(|p| p.ppid == me && p.zombie).map(|p| p.pid).collect();
    // Read after the listing: a child listed was marked by now (see
    // `spawn_marked`).
    let own = OWN_CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut reaped = 0;
    for pid in zombies.into_iter().filter(|p| !own.contains(p)) {
        if reap(pid) {
            reaped += 1;
        }
    }
    reaped
}
