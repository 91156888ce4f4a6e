//! Work that outlives the operation that started it: old trees and failed
//! stagings removed on threads of their own (tracked, so a short-lived
//! process can wait for them, and paused while a deploy needs the
//! machine: [`pause_removals`]), and the flag that stops an operation's
//! blocking thread when its future is dropped.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Sets the flag when dropped: an operation's future dropped at its deadline
/// stops its blocking thread at the next read or entry.
pub(crate) struct CancelOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The calling thread (nice is per thread on Linux) at the lowest
/// priority, nice 19: work that is never urgent yields the CPU (and,
/// following the nice value, the disk) to whatever else runs. Only for a
/// thread that ends with that work: a pooled one would keep it, and
/// raising it back needs a privilege.
pub(crate) fn lowest_priority() {
    let _ = rustix::process::setpriority_process(None, 19);
}

/// Runs `work` behind the app booting beside it, and waits for it: on a
/// thread of its own at the lowest priority.
pub(crate) fn behind_the_app<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            lowest_priority();
            work()
        })
        .join()
    })
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
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
        // Removal is never urgent.
        lowest_priority();
        let mut pauses = Pauses::default();
        for p in paths {
            // An abandoned restore's writers may still be finishing a file
            // in it: a second pass removes what they added meanwhile.
            let mut result = remove_tree(&p, &mut pauses);
            for _ in 0..3 {
                if result.is_ok() || !p.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                result = remove_tree(&p, &mut pauses);
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

/// While one is held, background removals wait (see [`pause_removals`]).
#[must_use = "removals resume when it is dropped"]
#[derive(Debug)]
pub struct RemovalsPaused(());

static PAUSED: Mutex<usize> = Mutex::new(0);
static RESUMED: Condvar = Condvar::new();

/// The longest a removal waits, over all its pauses: a guard held too
/// long (a worker that never answers) never leaves old trees on disk for
/// good.
const MOST_PAUSED: Duration = Duration::from_secs(60);

/// Pauses this process's background removals (old trees, stagings) until
/// the guard is dropped: each stops before its next directory. Removing a
/// tree of 20k files takes a core, and the filesystem's locks, for as long
/// as a delta restore takes; a runner holds this from a deploy's request
/// until its worker answers, so that removal is not on the deploy's
/// critical path. At nice 19 a removal thread still gets an idle core, and
/// the kernel's locks know no priority.
pub fn pause_removals() -> RemovalsPaused {
    *PAUSED.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    RemovalsPaused(())
}

impl Drop for RemovalsPaused {
    fn drop(&mut self) {
        let mut paused = PAUSED.lock().unwrap_or_else(|p| p.into_inner());
        *paused -= 1;
        if *paused == 0 {
            RESUMED.notify_all();
        }
    }
}

/// One removal thread's pauses: how long it has waited so far.
#[derive(Default)]
struct Pauses {
    waited: Duration,
}

impl Pauses {
    /// Waits while removals are paused, up to what is left of
    /// [`MOST_PAUSED`].
    fn wait(&mut self) {
        let mut paused = PAUSED.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        while *paused > 0 {
            let Some(left) = MOST_PAUSED.checked_sub(self.waited + started.elapsed()).filter(|l| !l.is_zero()) else {
                break;
            };
            paused = RESUMED.wait_timeout(paused, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        self.waited += started.elapsed();
    }
}

/// Removes `path` and everything under it, never following a symlink:
/// each directory opened relative to its parent's fd with `O_NOFOLLOW`
/// (as `std::fs::remove_dir_all`), so a tree a worker could change is
/// never a way out of it. Waits for paused removals before each
/// directory. A missing `path` is removed already. Errors name no path,
/// as `remove_dir_all`'s: the caller names `path`.
fn remove_tree(path: &Path, pauses: &mut Pauses) -> io::Result<()> {
    let (Some(up), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("no parent to remove it from"));
    };
    let up = if up.as_os_str().is_empty() { Path::new(".") } else { up };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let parent = match rustix::fs::open(up, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    Ok(remove_at(&parent, name, pauses)?)
}

/// Removes `name` in `parent`, whatever it is (see [`remove_tree`]).
fn remove_at(parent: &OwnedFd, name: &OsStr, pauses: &mut Pauses) -> Result<(), Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = match rustix::fs::openat(parent, name, flags, Mode::empty()) {
        Ok(dir) => dir,
        // Not a directory (a symlink to one included): unlinked itself.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return ignore_missing(rustix::fs::unlinkat(parent, name, AtFlags::empty()));
        }
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    pauses.wait();
    // The names first: nothing is removed while the listing is read.
    let mut names = Vec::new();
    let mut listing = rustix::fs::Dir::read_from(&dir)?;
    while let Some(entry) = listing.read() {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((OsStr::from_bytes(n).to_owned(), entry.file_type()));
        }
    }
    drop(listing);
    for (n, kind) in names {
        let removed = match kind {
            FileType::Directory | FileType::Unknown => remove_at(&dir, &n, pauses),
            _ => match rustix::fs::unlinkat(&dir, &n, AtFlags::empty()) {
                // Made a directory since it was listed.
                Err(Errno::ISDIR) => remove_at(&dir, &n, pauses),
                r => ignore_missing(r),
            },
        };
        removed?;
    }
    ignore_missing(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR))
}

fn ignore_missing(r: Result<(), Errno>) -> Result<(), Errno> {
    match r {
        Err(Errno::NOENT) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_tree_is_removed_without_following_its_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("kept"), b"kept").unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("a/b/c")).unwrap();
        fs::write(tree.join("a/b/c/f"), b"f").unwrap();
        fs::write(tree.join("top"), b"t").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/to-outside")).unwrap();
        std::os::unix::fs::symlink(outside.join("kept"), tree.join("a/b/to-file")).unwrap();
        remove_tree(&tree, &mut Pauses::default()).unwrap();
        assert!(!tree.exists());
        assert_eq!(fs::read(outside.join("kept")).unwrap(), b"kept");
        // Gone already: nothing to do. A file: unlinked.
        remove_tree(&tree, &mut Pauses::default()).unwrap();
        fs::write(&tree, b"x").unwrap();
        remove_tree(&tree, &mut Pauses::default()).unwrap();
        assert!(!tree.exists());
    }

    #[test]
    fn removals_wait_while_paused() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("a")).unwrap();
        fs::write(tree.join("a/f"), b"f").unwrap();
        let paused = pause_removals();
        remove_in_background(vec![tree.clone()]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(tree.join("a/f").exists(), "removed while paused");
        drop(paused);
        assert!(wait_for_background(Duration::from_secs(10)));
        assert!(!tree.exists());
    }
}
