//! What sandcache records beside a dir (in the state dir, when there is
//! one), and how such a file is read and written: the **state** (which
//! cache and generation the dir matches, and its fingerprint: what makes a
//! snapshot `unchanged`) and the **index** (each file's hash, kept while
//! its size, times and inode are unchanged: what a native snapshot does
//! not read again). Their paths are [`Target`]'s; the lock and the tail
//! marker are there too, and `bad`'s record of bad pool objects.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use sandcache_archive::pack::{Kind, Manifest};
use sandcache_archive::walk::Meta;
use serde::{Deserialize, Serialize};

use crate::target::Target;

/// What the last restore or snapshot of a dir left: which cache it matches,
/// and the stored object that holds it (a native generation's manifest, or
/// the single archive). Kept beside the dir, never inside it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) store: String,
    pub(crate) key: String,
    pub(crate) fingerprint: String,
    /// Absent in state files older than this field: then the dir is not
    /// taken as unchanged.
    #[serde(default)]
    pub(crate) generation: Option<String>,
    /// Written by a native restore instead of an index: every file it wrote
    /// has a ctime up to this (ns since the epoch). A snapshot rebuilds the
    /// index from the generation's manifest ([`Index::of_manifest_ns`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) restored_until_ns: Option<i128>,
    /// Written with `restored_until_ns`: the digest of the manifest the
    /// restore wrote (`native::units::digest`), so that a delta restore
    /// trusts only that manifest for what the dir holds, not whatever a
    /// store now says under the generation's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) digest: Option<String>,
}

/// What a native restore records of the tree it wrote: every file it wrote
/// has a ctime up to `until_ns`, and `digest` is its manifest's.
#[derive(Clone)]
pub(crate) struct Restored {
    pub(crate) until_ns: i128,
    pub(crate) digest: String,
}

pub(crate) fn save_state(target: &Target, store: &str, key: &str, fp: &[u8; 32], generation: &str) {
    save_state_restored(target, store, key, fp, generation, None);
}

pub(crate) fn save_state_restored(
    target: &Target,
    store: &str,
    key: &str,
    fp: &[u8; 32],
    generation: &str,
    restored: Option<Restored>,
) {
    let (restored_until_ns, digest) = restored.map_or((None, None), |r| (Some(r.until_ns), Some(r.digest)));
    let state = State {
        store: store.to_owned(),
        key: key.to_owned(),
        fingerprint: hex(fp),
        generation: Some(generation.to_owned()),
        restored_until_ns,
        digest,
    };
    let path = target.state_path();
    let written = serde_json::to_vec(&state).map_err(io::Error::other).and_then(|json| write_bookkeeping(&path, &json));
    if let Err(e) = written {
        tracing::debug!("could not record the cache state in {}: {e}", path.display());
    }
}

pub(crate) fn load_state(target: &Target) -> Option<State> {
    serde_json::from_slice(&read_bookkeeping(&target.state_path(), 64 << 10).ok()?).ok()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The largest index read back: about 200 bytes a file, for millions.
const MAX_INDEX_BYTES: u64 = 1 << 30;

/// What the last restore or snapshot knew of each file, beside the dir: a
/// file whose size, mtime, inode and ctime are unchanged keeps its hash
/// without being read again.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    pub files: HashMap<String, IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub hash: String,
    /// Recorded from a manifest by the restore that wrote the file, without
    /// reading the disk back: the inode is unknown, and `ctime_ns` is a
    /// bound (the restore's end). The file is as restored while its size and
    /// mtime are the manifest's and its ctime is not past the bound: any
    /// later write, chmod or rename-into-place moves the ctime past it, and
    /// no process can set a ctime.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upto: bool,
}

pub(crate) fn stamp(meta: &Meta) -> (u64, i128, i128, u64) {
    (
        meta.size,
        meta.mtime as i128 * 1_000_000_000 + meta.mtime_nsec as i128,
        meta.ctime as i128 * 1_000_000_000 + meta.ctime_nsec as i128,
        meta.ino,
    )
}

impl Index {
    pub(crate) fn load(path: &Path) -> Index {
        read_bookkeeping(path, MAX_INDEX_BYTES).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub(crate) fn save(&self, path: &Path) {
        let ok = serde_json::to_vec(self).map_err(io::Error::other).and_then(|b| write_bookkeeping(path, &b));
        if let Err(e) = ok {
            tracing::debug!("could not save the index {}: {e}", path.display());
        }
    }

    pub(crate) fn lookup(&self, rel: &str, meta: &Meta) -> Option<&str> {
        let (size, mtime_ns, ctime_ns, ino) = stamp(meta);
        self.files
            .get(rel)
            .filter(|e| {
                e.size == size
                    && e.mtime_ns == mtime_ns
                    && match e.upto {
                        true => ctime_ns <= e.ctime_ns,
                        false => e.ctime_ns == ctime_ns && e.ino == ino,
                    }
            })
            .map(|e| e.hash.as_str())
    }

    /// The index of a tree a restore just wrote from `m`, finished by
    /// `until` (see [`IndexEntry::upto`]): no walk of the disk, so nothing
    /// the app did meanwhile (it may be running during a second phase) can
    /// be taken for restored content.
    pub(crate) fn of_manifest_ns(m: &Manifest, until_ns: i128) -> Index {
        let files = m
            .entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .filter_map(|e| {
                let entry = IndexEntry {
                    size: e.size,
                    mtime_ns: e.mtime.max(0) as i128 * 1_000_000_000,
                    ctime_ns: until_ns,
                    ino: 0,
                    hash: e.hash.clone()?,
                    upto: true,
                };
                Some((e.path.clone(), entry))
            })
            .collect();
        Index { files }
    }
}

/// Now, in ns since the epoch, as the ctime bound a restore records:
/// everything written before has a ctime up to it, and, as this waits
/// until the coarse clock the kernel stamps ctimes with has passed it (a
/// tick: a few ms at most), everything written after a later one. Without
/// the wait, a write in the restore's last tick (the app's first, say)
/// could get a ctime under the bound and pass for restored.
pub(crate) async fn ctime_bound() -> i128 {
    let now = ctime_now();
    ctime_passed(now).await;
    now
}

/// The clock now, as [`ctime_bound`] reads it: a bound that may be
/// recorded at once, provided nothing is handed over (the restore not
/// returned) before [`ctime_passed`] says the coarse clock passed it.
pub(crate) fn ctime_now() -> i128 {
    clock_ns(rustix::time::ClockId::Realtime)
}

/// Waits until the coarse clock the kernel stamps ctimes with has passed
/// `now` (a tick: a few ms at most), on a blocking thread.
pub(crate) async fn ctime_passed(now: i128) {
    if clock_ns(rustix::time::ClockId::RealtimeCoarse) > now {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || wait_ctime_passed(now)).await;
}

/// [`ctime_passed`], blocking the calling thread: polled every 0.2 ms (a
/// runner's worker waits on it, and an async timer would round each wait
/// up to a whole ms). Bounded, should the clock be stepped back meanwhile.
pub(crate) fn wait_ctime_passed(now: i128) {
    for _ in 0..250 {
        if clock_ns(rustix::time::ClockId::RealtimeCoarse) > now {
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

fn clock_ns(clock: rustix::time::ClockId) -> i128 {
    let t = rustix::time::clock_gettime(clock);
    t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
}

/// What the tail marker holds when a delta restore left it: the dir may
/// hold units of two generations, each whole.
pub(crate) const DELTA_MARKER: &[u8] = b"delta";

/// Writes a bookkeeping file that guards what comes next, and makes it
/// durable first: the file, then the directory that names it.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_bookkeeping(path, bytes)?;
    sync_path(path)?;
    path.parent().map_or(Ok(()), sync_path)
}

/// Removes bookkeeping files (missing ones are fine), durably: their
/// directory is synced after.
pub(crate) fn remove_durable(paths: &[std::path::PathBuf]) -> io::Result<()> {
    for p in paths {
        match fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let dirs: std::collections::BTreeSet<&Path> = paths.iter().filter_map(|p| p.parent()).collect();
    dirs.into_iter().try_for_each(sync_path)
}

/// `fsync` of a file or directory of ours, opened without following.
fn sync_path(path: &Path) -> io::Result<()> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty())?;
    rustix::fs::fsync(&fd)?;
    Ok(())
}

/// Reads a bookkeeping file (lock, state, index): never through a symlink,
/// only a regular file, at most `max` bytes. Whoever can write beside the
/// dir may have planted anything there.
pub(crate) fn read_bookkeeping(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() || st.st_size as u64 > max {
        return Err(io::Error::other(format!("{} is not a regular file of at most {max} bytes", path.display())));
    }
    let mut bytes = Vec::with_capacity(st.st_size as usize);
    fs::File::from(fd).take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes a bookkeeping file: a fresh temp file (`O_EXCL|O_NOFOLLOW`, 0600)
/// renamed over the name, which replaces a planted symlink rather than
/// following it.
pub(crate) fn write_bookkeeping(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)?;
    let written = f.write_all(bytes).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}
