//! Reaping the orphans a subreaper runner adopts, and leaving alone the
//! children it waits for itself.

use std::time::Duration;

use super::kill::reap;
use super::procs::processes;

/// Children the runner waits for itself (the worker, git): the orphan
/// reaper leaves them to their own `wait`.
static OWN_CHILDREN: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Marks `pid` as a child the runner waits for itself, until the returned
/// guard is dropped.
fn own_child(pid: Option<u32>) -> OwnChild {
    if let Some(pid) = pid {
        OWN_CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
    }
    OwnChild(pid)
}

#[derive(Debug)]
pub(crate) struct OwnChild(Option<u32>);

/// Starts `cmd` as a child the runner waits for itself ([`own_child`]),
/// marked before the task can be suspended: once it is awaited, the orphan
/// reaper could otherwise take a child that exits at once (and its status
/// and output with it). The spawn runs off the async threads: it forks
/// the runner, which blocks for milliseconds (6-20 ms measured at 100-370
/// MB of RSS), and on an async thread it would hold up the task just
/// spawned there (a deploy's restore, beside the clone), which sits in
/// that thread's next-task slot where other workers do not steal it (it
/// waited 20-24 ms).
pub(crate) async fn spawn_own(mut cmd: tokio::process::Command) -> std::io::Result<(tokio::process::Child, OwnChild)> {
    tokio::task::spawn_blocking(move || {
        let child = cmd.spawn()?;
        let own = own_child(child.id());
        Ok((child, own))
    })
    .await
    .map_err(std::io::Error::other)?
}

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
    let own = OWN_CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut reaped = 0;
    for pid in zombies.into_iter().filter(|p| !own.contains(p)) {
        if reap(pid) {
            reaped += 1;
        }
    }
    reaped
}
