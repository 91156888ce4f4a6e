//! What the runner does to its own process before any thread or child
//! exists: it becomes non-dumpable and a child subreaper.

use std::io;

/// Makes the runner non-dumpable: `/proc/<runner>/environ`, `mem`, `fd/*`
/// and ptrace are closed to every other process of the same uid (root
/// still sees them). Call first thing in the daemon.
pub fn make_non_dumpable() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable).map_err(io::Error::from)
}

/// Orphaned descendants (a worker's `setsid` + double fork) are re-parented
/// to the runner, where the sweep finds and reaps them.
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(io::Error::from)
}
