//! Killing every process a worker may have left.

use std::time::{Duration, Instant};

use super::kill::{kill, reap};
use super::procs::{Proc, descends_from, processes};

/// Which processes a sweep kills.
#[derive(Debug, Clone, Copy)]
pub struct SweepScope {
    /// Every process of this uid (a uid that only workers use).
    pub uid: Option<u32>,
    /// Every descendant of the runner (with a subreaper runner, orphans of
    /// the worker are among them).
    pub descendants: bool,
}

/// Kills every process in scope and reaps those that are the runner's
/// children, round after round until one finds none (a process that
/// forks while being killed is caught in the next round). Returns how many
/// were killed.
pub fn sweep(scope: SweepScope, within: Duration) -> usize {
    let me = std::process::id();
    let deadline = Instant::now() + within;
    let mut killed = 0;
    loop {
        let all = processes();
        let targets: Vec<Proc> = all
            .iter()
            .filter(|p| p.pid != me && !p.zombie)
            .filter(|p| scope.uid.is_some_and(|u| p.uid == u) || (scope.descendants && descends_from(&all, p.pid, me)))
            .copied()
            .collect();
        for p in &targets {
            if kill(p.pid) {
                killed += 1;
            }
        }
        reap_killed(&all, scope);
        if targets.is_empty() || Instant::now() >= deadline {
            if !targets.is_empty() {
                tracing::warn!(target: "sandbox", "{} worker processes were still alive after {within:?}", targets.len());
            }
            return killed;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps zombies that are the runner's own children and in scope (orphans
/// re-parented to a subreaper runner): nobody else waits for them.
fn reap_killed(all: &[Proc], scope: SweepScope) {
    let me = std::process::id();
    for p in all.iter().filter(|p| p.ppid == me) {
        if scope.uid.is_some_and(|u| p.uid == u) || scope.descendants {
            reap(p.pid);
        }
    }
}
