//! Every signal the runner sends and every child it reaps, in one place.
//!
//! A child that may start helpers gets a process group of its own (the
//! worker, git), and is stopped through it: SIGTERM to the group, a grace
//! period, then SIGKILL to whatever is left ([`terminate_group`], as
//! nextest's `terminate_child`), or SIGKILL at once ([`kill_group`],
//! [`KillGroupOnDrop`]). A leftover process is killed alone ([`kill`]). A
//! process or group already gone is never an error. Ids are the `u32`s
//! `Child::id` gives; 0 (and anything that is not a pid) names nothing.

use std::future::Future;
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions};

fn pid(id: u32) -> Option<Pid> {
    Pid::from_raw(id as i32)
}

/// SIGTERM to the process group `pgid()` names, up to `grace` for
/// `exited`, then SIGKILL to whatever is left of the group (grandchildren
/// included) whether or not `exited` came. `pgid` is asked again before
/// the SIGKILL: a child restarted meanwhile has a group of its own.
/// Whether `exited` came within the grace.
pub(crate) async fn terminate_group(pgid: impl Fn() -> Option<u32>, grace: Duration, exited: impl Future) -> bool {
    if let Some(group) = pgid().and_then(pid) {
        let _ = rustix::process::kill_process_group(group, Signal::TERM);
    }
    let ended = tokio::time::timeout(grace, exited).await.is_ok();
    if let Some(pgid) = pgid() {
        kill_group(pgid);
    }
    ended
}

/// SIGKILL to a process group.
pub(crate) fn kill_group(pgid: u32) {
    if let Some(group) = pid(pgid) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
}

/// Kills a process group (SIGKILL) when dropped: a child whose helpers
/// share its group (git and git-remote-https) leaves none of them behind
/// when a timeout or a cancel drops the future waiting for it.
#[derive(Debug)]
pub(crate) struct KillGroupOnDrop(Option<u32>);

impl KillGroupOnDrop {
    /// The group `pgid` leads (a child started in a group of its own).
    pub(crate) fn new(pgid: Option<u32>) -> KillGroupOnDrop {
        KillGroupOnDrop(pgid)
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            kill_group(pgid);
        }
    }
}

/// SIGKILL to one process. Whether it was sent.
pub(crate) fn kill(id: u32) -> bool {
    pid(id).is_some_and(|p| rustix::process::kill_process(p, Signal::KILL).is_ok())
}

/// Reaps `id` if it is the runner's child and has exited; never waits.
/// Whether it was reaped.
pub(crate) fn reap(id: u32) -> bool {
    pid(id).is_some_and(|p| matches!(rustix::process::waitpid(Some(p), WaitOptions::NOHANG), Ok(Some(_))))
}
