//! Deno's own SQLite caches, copied consistently.
//!
//! Deno keeps caches at the top of DENO_DIR as SQLite databases in WAL
//! mode ([`is_deno_cache`]), holds them open while it runs, and leaves most of
//! their content in the `-wal` file when it exits. With them its second boot
//! is fast (0.42–0.46 s measured, against 0.65–0.94 s without), so a
//! snapshot keeps them; but a copy of the files taken mid-write is corrupt,
//! and the tree is the worker's (see [`crate::walk`]). Each is copied so:
//!
//! 1. The database, its `-wal` and its `-journal` are opened through the
//!    walker (relative to the directory's fd, `O_NOFOLLOW`, regular files
//!    only, never another uid's hardlink) and copied into a private scratch
//!    dir: 0700, ours, outside the tree, in a directory no other uid may
//!    change (the state dir). SQLite never opens a name in the tree, so no
//!    symlink there can redirect it, and nothing is ever written there
//!    (not even a `-shm`).
//! 2. The copy counts only if nobody wrote those files while it was taken:
//!    their ctimes (which no process can set) are older than `QUIET` (50 ms) when
//!    it starts, and their sizes, times and inodes, and the names, are the
//!    same when it ends. Otherwise it is taken again, until `busy_timeout`.
//! 3. SQLite opens the private copy read-only (defensive, untrusted schema,
//!    cell size checks, no triggers or views, memory temp store), recovers
//!    its WAL, and the online backup API writes one self-contained database
//!    from it, which must pass `PRAGMA integrity_check`.
//! 4. That database is `page_count` × `page_size` bytes as SQLite reads
//!    them, and a WAL's commit frame may claim any count: a few KiB
//!    claiming 4 GiB would be backed up as 4 GiB of zeros. So before the
//!    backup that size must fit in what the database and its `-wal` hold,
//!    and in what the three files leave of `max_bytes`; and the copy's
//!    `max_page_count` makes SQLite itself stop at that bound. For each
//!    database the scratch dir never holds more than `max_bytes`, beside
//!    SQLite's own small files there (its index of the WAL, `-shm`, under
//!    a 64th of it; the copy's journal header).
//! 5. That file is what the snapshot stores at the database's path; the
//!    scratch dir is emptied at once, and removed when the walk ends.
//!
//! A database that cannot be copied so (busy past the timeout, larger than
//! `max_bytes`, claiming more than its files hold, not a database,
//! malformed, not a regular file) is left out,
//! with a log line naming it: a torn copy is never stored. The `-wal`,
//! `-shm` and `-journal` companions are never stored. Deno drops a cache
//! written by another Deno version (its `info` table names the version) and
//! starts it afresh, so a stored cache outliving an upgrade is harmless.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::walk::{Entry, FileReader, Kind, Meta, WalkError};

/// Deno's caches (2.x) kept by a snapshot, at the top of DENO_DIR: what its
/// boot reads (compiled code, module and CommonJS analysis) and what
/// `--check` reads (type checks). Other databases are left out.
pub(crate) const DENO_CACHES: [&str; 5] =
    ["v8_code_cache_v2", "dep_analysis_cache_v2", "node_analysis_cache_v2", "check_cache_v2", "fast_check_cache_v2"];

/// The first 16 bytes of every SQLite database.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Files SQLite keeps beside a database: never stored.
pub const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// A database's files must have been left alone this long before a copy
/// starts: longer than the coarsest kernel timestamp tick (10 ms at
/// `HZ=100`), so that any write during the copy moves a ctime.
pub(crate) const QUIET: Duration = Duration::from_millis(50);

/// Default bound on a database with its `-wal` and `-journal` and its copy.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// Whether a top-level name is one of Deno's caches a snapshot keeps
/// (`DENO_CACHES`).
pub fn is_deno_cache(name: &OsStr) -> bool {
    DENO_CACHES.iter().any(|c| c.as_bytes() == name.as_bytes())
}

/// Whether a top-level name is one of Deno's caches ([`is_deno_cache`]) or
/// one of their [`COMPANIONS`]: what the fingerprint leaves out.
pub fn is_deno_cache_or_companion(name: &OsStr) -> bool {
    let name = name.as_bytes();
    DENO_CACHES.iter().any(|c| {
        name.strip_prefix(c.as_bytes())
            .is_some_and(|rest| rest.is_empty() || COMPANIONS.iter().any(|s| rest == s.as_bytes()))
    })
}

/// Where and how Deno's caches are copied.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The private scratch dir to make (0700) on the first database, and
    /// remove when the walk ends. Never inside the walked tree. Its parent
    /// must be a directory no other uid can change (ours or root's, not
    /// writable by others unless sticky): else the caches are left out.
    pub scratch: PathBuf,
    /// Most bytes of a database with its `-wal` and `-journal` and the copy
    /// SQLite makes of them (what the scratch dir holds for it); a larger
    /// one, or one claiming to be, is left out.
    pub max_bytes: u64,
    /// How long one walk waits, in all, for databases nobody is writing
    /// to; one still written once it is spent is left out.
    pub busy_timeout: Duration,
}

impl SqliteOptions {
    pub fn new(scratch: impl Into<PathBuf>) -> SqliteOptions {
        SqliteOptions { scratch: scratch.into(), max_bytes: DEFAULT_MAX_BYTES, busy_timeout: Duration::from_secs(2) }
    }
}

/// Copies Deno's caches during one walk (see the module docs). The scratch
/// dir is made on the first database and removed when this is dropped.
#[derive(Debug)]
pub struct Copier {
    opts: SqliteOptions,
    cancel: Option<Arc<AtomicBool>>,
    /// What is left of `busy_timeout`.
    patience: Duration,
    /// Made on first use; the error says why the caches are left out.
    scratch: Option<Result<Scratch, String>>,
}

/// Why one attempt at a copy failed.
enum Fail {
    /// Written meanwhile: try again.
    Busy(String),
    /// Cannot be copied consistently: leave it out.
    Skip(String),
    Cancelled,
}

impl Copier {
    pub fn new(opts: SqliteOptions, cancel: Option<Arc<AtomicBool>>) -> Copier {
        Copier { patience: opts.busy_timeout, opts, cancel, scratch: None }
    }

    /// A consistent copy of the database `e` (a top-level entry named like
    /// one of Deno's caches: [`is_deno_cache`]), as a reader of a private file already
    /// unlinked; `None` when it is left out (logged, naming it). Errors
    /// only when cancelled.
    pub fn copy(&mut self, e: &Entry<'_>) -> Result<Option<FileReader>, WalkError> {
        let path = e.path();
        if e.meta().kind != Kind::File {
            left_out(&path, &format!("it is {}, not a regular file; not followed", e.meta().kind.describe()));
            return Ok(None);
        }
        let scratch = match self.scratch.get_or_insert_with(|| Scratch::create(&self.opts.scratch)) {
            Ok(s) => &*s,
            Err(why) => {
                left_out(&path, why);
                return Ok(None);
            }
        };
        let copied = copy_into(e, scratch, &self.opts, &mut self.patience, self.cancel.as_ref());
        scratch.clear();
        match copied {
            Ok(r) => {
                tracing::debug!("keeping Deno's cache {}: a consistent copy of {} bytes", path.display(), r.len());
                Ok(Some(r))
            }
            Err(Fail::Cancelled) => Err(WalkError::Cancelled),
            Err(Fail::Busy(why) | Fail::Skip(why)) => {
                left_out(&path, &why);
                Ok(None)
            }
        }
    }
}

fn left_out(path: &Path, why: &str) {
    tracing::info!("leaving out Deno's cache {}: {why}", path.display());
}

fn cancelled(cancel: Option<&Arc<AtomicBool>>) -> bool {
    cancel.is_some_and(|c| c.load(Ordering::Relaxed))
}

/// Copies `e` consistently into `scratch` (retrying while it is written,
/// as long as `patience` lasts), then makes the one file to store and
/// opens it.
fn copy_into(
    e: &Entry<'_>,
    scratch: &Scratch,
    opts: &SqliteOptions,
    patience: &mut Duration,
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<FileReader, Fail> {
    let copied = loop {
        if cancelled(cancel) {
            return Err(Fail::Cancelled);
        }
        scratch.clear();
        let attempt = Instant::now();
        match copy_files(e, scratch, opts) {
            Ok(copied) => break copied,
            Err(Fail::Busy(why)) if !patience.is_zero() => {
                tracing::trace!(path = %e.path().display(), "copying Deno's cache again: {why}");
                std::thread::sleep((QUIET / 2).min(*patience));
                *patience = patience.saturating_sub(attempt.elapsed());
            }
            Err(Fail::Busy(why)) => {
                return Err(Fail::Skip(format!(
                    "still being written after waiting {} ms in all ({why})",
                    opts.busy_timeout.as_millis()
                )));
            }
            Err(other) => return Err(other),
        }
    };
    // The copy is written beside the files it is made of: it gets what they
    // leave of the bound, so that the scratch dir never holds more.
    let bound = Bound { copied, room: opts.max_bytes.saturating_sub(copied.total), max: opts.max_bytes };
    backup(scratch, &bound, cancel)?;
    let file = scratch.open_file("out").map_err(|e| Fail::Skip(format!("reading the copy: {e}")))?;
    let len = file.metadata().map_err(|e| Fail::Skip(format!("reading the copy: {e}")))?.len();
    if len > bound.room {
        return Err(Fail::Skip(format!("the copy is {len} bytes, {}", bound.over())));
    }
    Ok(FileReader::private(file, len, e.path(), cancel.cloned()))
}

/// What one attempt copied into the scratch dir, in bytes.
#[derive(Debug, Clone, Copy)]
struct Copied {
    /// The database and its `-wal`: every page of the database SQLite
    /// makes of them is in one or the other (a read-only connection never
    /// rolls a `-journal` back).
    db_and_wal: u64,
    /// All three files, the `-journal` too.
    total: u64,
}

/// What the copy may come to.
struct Bound {
    copied: Copied,
    /// What the files copied in leave of `max`.
    room: u64,
    /// [`SqliteOptions::max_bytes`].
    max: u64,
}

impl Bound {
    /// Why a size over `room` is refused.
    fn over(&self) -> String {
        format!(
            "over the {} bytes left of the bound of {} beside the {} bytes copied to make it",
            self.room, self.max, self.copied.total
        )
    }
}

/// One attempt: the database and its `-wal` and `-journal`, copied byte for
/// byte into `scratch` as `db`, `db-wal`, `db-journal`, while nobody
/// writes them.
fn copy_files(e: &Entry<'_>, scratch: &Scratch, opts: &SqliteOptions) -> Result<Copied, Fail> {
    const PARTS: [&str; 3] = ["", "-wal", "-journal"];
    let started = SystemTime::now();
    let names: Vec<OsString> = PARTS
        .iter()
        .map(|s| {
            let mut n = e.name().to_owned();
            n.push(s);
            n
        })
        .collect();
    let mut open: Vec<Option<(FileReader, Meta)>> = Vec::with_capacity(PARTS.len());
    for (i, name) in names.iter().enumerate() {
        let opened = e.open_sibling(name).map_err(walk_fail)?;
        let opened = match opened {
            Some(r) => {
                let m = r.stat().map_err(walk_fail)?;
                Some((r, m))
            }
            None if i == 0 => return Err(Fail::Skip("removed while the snapshot ran".into())),
            None => None,
        };
        open.push(opened);
    }
    let size = |i: usize| open[i].as_ref().map_or(0, |(_, m)| m.size);
    let copied = Copied { db_and_wal: size(0) + size(1), total: size(0) + size(1) + size(2) };
    let total = copied.total;
    if total > opts.max_bytes {
        return Err(Fail::Skip(format!(
            "{total} bytes with its -wal and -journal, over the bound of {}",
            opts.max_bytes
        )));
    }
    let quiet_since = started.checked_sub(QUIET).unwrap_or(SystemTime::UNIX_EPOCH);
    for (_, m) in open.iter().flatten() {
        let ctime =
            SystemTime::UNIX_EPOCH + Duration::new(m.ctime.max(0) as u64, m.ctime_nsec.clamp(0, 999_999_999) as u32);
        if ctime > quiet_since {
            return Err(Fail::Busy("written in the last moments".into()));
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    for (i, part) in PARTS.iter().enumerate() {
        let Some((reader, _)) = open[i].as_mut() else { continue };
        let mut out = scratch.create_file(&format!("db{part}")).map_err(|e| Fail::Skip(format!("copying it: {e}")))?;
        let mut first = true;
        loop {
            let n = reader.read_full(&mut buf).map_err(walk_fail)?;
            if n == 0 {
                break;
            }
            if i == 0 && first && (n < SQLITE_MAGIC.len() || &buf[..SQLITE_MAGIC.len()] != SQLITE_MAGIC) {
                return Err(Fail::Skip("not a SQLite database (no SQLite header)".into()));
            }
            first = false;
            out.write_all(&buf[..n]).map_err(|e| Fail::Skip(format!("copying it: {e}")))?;
        }
        if i == 0 && first {
            return Err(Fail::Skip("empty: not a SQLite database".into()));
        }
    }
    // Nobody wrote meanwhile: each file as it was, and each name still
    // naming it (or still absent).
    for (i, name) in names.iter().enumerate() {
        let now = e.stat_sibling(name).map_err(walk_fail)?;
        match (&open[i], now) {
            (None, None) => {}
            (Some((reader, before)), Some(named)) => {
                let after = reader.stat().map_err(walk_fail)?;
                let same = |a: &Meta, b: &Meta| {
                    (a.size, a.mtime, a.mtime_nsec, a.ctime, a.ctime_nsec)
                        == (b.size, b.mtime, b.mtime_nsec, b.ctime, b.ctime_nsec)
                };
                if !same(before, &after) || (named.dev, named.ino) != (after.dev, after.ino) {
                    return Err(Fail::Busy(format!("{} changed while it was copied", name.to_string_lossy())));
                }
            }
            _ => return Err(Fail::Busy(format!("{} appeared or went while it was copied", name.to_string_lossy()))),
        }
    }
    Ok(copied)
}

/// A walk error in a copy: written meanwhile (shrank, replaced) is busy;
/// anything else (a symlink, a FIFO, another uid's hardlink, an I/O error)
/// leaves the database out.
fn walk_fail(e: WalkError) -> Fail {
    match e {
        WalkError::Cancelled => Fail::Cancelled,
        WalkError::Changed { .. } => Fail::Busy(e.to_string()),
        e => Fail::Skip(e.to_string()),
    }
}

/// The private copy (`db`, with `db-wal`), opened by SQLite read-only and
/// written through the online backup API into `out`, one self-contained
/// database within `bound` that must pass `PRAGMA integrity_check`.
fn backup(scratch: &Scratch, bound: &Bound, cancel: Option<&Arc<AtomicBool>>) -> Result<(), Fail> {
    let sql = |what: &str| {
        let what = what.to_owned();
        move |e: rusqlite::Error| Fail::Skip(format!("{what}: {e}"))
    };
    let flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let src = Connection::open_with_flags(scratch.path("db"), flags | OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql("opening it"))?;
    harden(&src, cancel).map_err(sql("opening it"))?;
    // One read transaction for the size and the copy: the pages counted
    // are the pages copied.
    src.execute_batch("BEGIN").map_err(sql("opening it"))?;
    let max_pages = max_pages(&src, bound, cancel)?;
    let mut out = Connection::open_with_flags(
        scratch.path("out"),
        flags | OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )
    .map_err(sql("creating the copy"))?;
    harden(&out, cancel).map_err(sql("creating the copy"))?;
    copy_pages(&src, &mut out, max_pages, cancel)?;
    drop(src);
    // Its memory is bounded by the copy's size: a bit per page, and
    // SQLite's page cache (2 MB by default).
    let check: Result<Vec<String>, _> = out
        .prepare("PRAGMA integrity_check(8)")
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect());
    match check {
        Ok(rows) if rows == ["ok"] => {}
        Ok(rows) => return Err(Fail::Skip(format!("malformed: {}", rows.join("; ")))),
        Err(_) if cancelled(cancel) => return Err(Fail::Cancelled),
        Err(e) => return Err(sql("checking it")(e)),
    }
    out.close().map_err(|(_, e)| sql("closing the copy")(e))?;
    Ok(())
}

/// The most pages a copy of `src` may have, after checking the size the
/// backup would write: `PRAGMA page_count` × `page_size`, as SQLite sees
/// them after recovering the WAL (the last commit frame's "database size"
/// field, or page 1's count), whatever the files hold. A database claiming
/// more than its files hold, or than the bound leaves, is refused before a
/// byte of it is written.
fn max_pages(src: &Connection, bound: &Bound, cancel: Option<&Arc<AtomicBool>>) -> Result<u32, Fail> {
    let read = |pragma: &str| match src.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0)) {
        Ok(n) => Ok(u64::try_from(n).unwrap_or(0)),
        Err(_) if cancelled(cancel) => Err(Fail::Cancelled),
        Err(e) => Err(Fail::Skip(format!("reading its {pragma}: {e}"))),
    };
    let (pages, page_size) = (read("page_count")?, read("page_size")?);
    if !(page_size.is_power_of_two() && (512..=65536).contains(&page_size)) {
        return Err(Fail::Skip(format!("its page size of {page_size} bytes is not one SQLite makes")));
    }
    let claimed = pages.saturating_mul(page_size);
    let claim = format!("it claims {claimed} bytes ({pages} pages of {page_size})");
    // Each page is in the file or in a WAL frame, but for the one at 1 GiB
    // (SQLite's lock page, never written): the bound SQLite's checkpoint
    // itself holds a WAL to (`walCheckpoint`).
    let held = bound.copied.db_and_wal;
    if claimed > held.saturating_add(65536) {
        return Err(Fail::Skip(format!("{claim}, more than its database and -wal hold ({held} bytes)")));
    }
    if claimed > bound.room {
        return Err(Fail::Skip(format!("{claim}, {}", bound.over())));
    }
    // SQLite's largest page number; 0 would mean no limit.
    Ok((bound.room / page_size).clamp(1, 0xffff_fffe) as u32)
}

/// The online backup of `src` into `out`, which SQLite itself stops past
/// `max_pages` (`max_page_count`): the bound holds even were the count
/// [`max_pages`] read wrong.
fn copy_pages(
    src: &Connection,
    out: &mut Connection,
    max_pages: u32,
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<(), Fail> {
    let sql = |what: &'static str| move |e: rusqlite::Error| Fail::Skip(format!("{what}: {e}"));
    let set = out
        .pragma_update_and_check(None, "max_page_count", max_pages, |r| r.get::<_, i64>(0))
        .map_err(sql("bounding the copy"))?;
    if set != i64::from(max_pages) {
        return Err(Fail::Skip(format!("bounding the copy: max_page_count is {set}, not {max_pages}")));
    }
    let b = Backup::new(src, out).map_err(sql("copying it"))?;
    loop {
        if cancelled(cancel) {
            return Err(Fail::Cancelled);
        }
        match b.step(1024) {
            Ok(StepResult::Done) => return Ok(()),
            Ok(StepResult::More) => {}
            // Nobody else has these files: a lock means trouble.
            Ok(_) => return Err(Fail::Skip("copying it: the private copy is locked".into())),
            Err(_) if cancelled(cancel) => return Err(Fail::Cancelled),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
                return Err(Fail::Skip(format!("copying it: stopped at the bound of {max_pages} pages ({e})")));
            }
            Err(e) => return Err(sql("copying it")(e)),
        }
    }
}

/// What SQLite may trust in a database the worker wrote: nothing. The
/// schema is parsed, never run (no triggers, views or schema functions);
/// cells are checked against their page; no memory map (a file changed
/// under it is a crash); temporary data stays in memory, never in a file
/// elsewhere; and the walk's cancel flag interrupts long statements.
fn harden(c: &Connection, cancel: Option<&Arc<AtomicBool>>) -> rusqlite::Result<()> {
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)?;
    c.pragma_update(None, "trusted_schema", false)?;
    c.pragma_update(None, "cell_size_check", true)?;
    c.pragma_update(None, "mmap_size", 0)?;
    c.pragma_update(None, "temp_store", "MEMORY")?;
    if let Some(flag) = cancel.cloned() {
        c.progress_handler(10_000, Some(move || flag.load(Ordering::Relaxed)))?;
    }
    Ok(())
}

const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC).union(OFlags::NOCTTY);

/// The private scratch dir: made 0700 and ours, in a parent nobody else can
/// change (so SQLite, which opens by name, reaches these very files), held
/// open, removed on drop.
#[derive(Debug)]
struct Scratch {
    path: PathBuf,
    fd: OwnedFd,
}

impl Scratch {
    fn create(path: &Path) -> Result<Scratch, String> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(format!("no scratch dir for copies: {} has no parent", path.display()));
        };
        let no = |e: &dyn std::fmt::Display| format!("no scratch dir for copies at {}: {e}", path.display());
        let pfd =
            rustix::fs::open(parent, DIR_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty()).map_err(|e| no(&e))?;
        let st = rustix::fs::fstat(&pfd).map_err(|e| no(&e))?;
        let me = rustix::process::geteuid().as_raw();
        let sticky = st.st_mode & 0o1000 != 0;
        if (st.st_uid != me && st.st_uid != 0) || (st.st_mode & 0o022 != 0 && !sticky) {
            return Err(no(&format_args!(
                "{} may be changed by other users (uid {}, mode {:o}); copies are only made where nobody else can reach them",
                parent.display(),
                st.st_uid,
                st.st_mode & 0o7777
            )));
        }
        rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o700)).map_err(|e| no(&e))?;
        let fd = rustix::fs::openat(&pfd, name, DIR_FLAGS, Mode::empty()).map_err(|e| no(&e))?;
        let scratch = Scratch { path: path.to_owned(), fd };
        let st = rustix::fs::fstat(&scratch.fd).map_err(|e| no(&e))?;
        if st.st_uid != me || st.st_mode & 0o077 != 0 {
            return Err(no(&"it was replaced as it was made"));
        }
        Ok(scratch)
    }

    /// The name SQLite opens.
    fn path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn create_file(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600))?))
    }

    fn open_file(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        Ok(File::from(rustix::fs::openat(&self.fd, name, flags, Mode::empty())?))
    }

    /// Removes every file in it (SQLite makes only files here).
    fn clear(&self) {
        let Ok(mut dir) = rustix::fs::Dir::read_from(&self.fd) else { return };
        let mut names = Vec::new();
        while let Some(Ok(entry)) = dir.read() {
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        for name in names {
            if let Err(e) = rustix::fs::unlinkat(&self.fd, &name, AtFlags::empty()) {
                tracing::debug!("could not remove {}/{}: {e}", self.path.display(), name.to_string_lossy());
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.clear();
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::debug!("could not remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;

    use super::*;
    use crate::walk::{Step, Tree, WalkOptions};

    fn why(f: Fail) -> String {
        match f {
            Fail::Busy(why) | Fail::Skip(why) => why,
            Fail::Cancelled => "cancelled".into(),
        }
    }

    /// Copies the cache `name` at the top of `dir` as a snapshot does, into
    /// a scratch dir beside `dir` that is not emptied after: the copy's size
    /// (or why it was left out), and the files the scratch dir then holds,
    /// with their sizes.
    fn copy_cache(dir: &Path, name: &str, max_bytes: u64) -> (Result<u64, String>, BTreeMap<String, u64>) {
        let opts = SqliteOptions { max_bytes, ..SqliteOptions::new(dir.with_file_name("scratch")) };
        let scratch = Scratch::create(&opts.scratch).unwrap();
        let tree = Tree::open(dir, &WalkOptions::default()).unwrap().unwrap();
        let mut got = None;
        tree.walk::<WalkError>(&mut |e| {
            if e.name() == name {
                let copied = copy_into(e, &scratch, &opts, &mut opts.busy_timeout.clone(), None);
                got = Some(copied.map(|r| r.len()).map_err(why));
            }
            Ok(Step::Continue)
        })
        .unwrap();
        let held = fs::read_dir(&opts.scratch)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())
            })
            .collect();
        (got.expect("the cache was walked"), held)
    }

    /// DIR with a cache made of `db` and `wal`.
    fn deno_dir(tmp: &Path, db: &[u8], wal: &[u8]) -> PathBuf {
        let dir = tmp.join("deno-dir");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("v8_code_cache_v2"), db).unwrap();
        fs::write(dir.join("v8_code_cache_v2-wal"), wal).unwrap();
        dir
    }

    /// The review's case, at 16 MiB: a few KiB whose WAL claims 4096 pages.
    /// Well under `max_bytes`, but far more than the files hold: refused
    /// before the backup writes a page.
    #[test]
    fn a_wal_claiming_more_than_its_files_hold_is_refused_before_the_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let (db, wal) = sandcache_testkit::sqlite::wal_claiming(4096);
        let dir = deno_dir(tmp.path(), &db, &wal);
        let (got, held) = copy_cache(&dir, "v8_code_cache_v2", 64 << 20);
        let why = got.unwrap_err();
        assert!(why.contains(&format!("{}", 4096 * 4096)) && why.contains("hold"), "{why}");
        assert!(!held.contains_key("out"), "the backup ran: {held:?}");
        assert!(held.values().sum::<u64>() <= (db.len() + wal.len()) as u64 + (64 << 10), "{held:?}");
    }

    /// A real database: kept when its files and its copy fit in `max_bytes`
    /// together, and left out, naming the size it would make, when they do
    /// not (by one byte).
    #[test]
    fn the_files_and_their_copy_together_stay_within_max_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("deno-dir");
        fs::create_dir(&dir).unwrap();
        let c = Connection::open(dir.join("v8_code_cache_v2")).unwrap();
        let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c.execute_batch("CREATE TABLE t (i INTEGER PRIMARY KEY, pad BLOB NOT NULL)").unwrap();
        for i in 0..64i64 {
            c.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![i, vec![i as u8; 1000]]).unwrap();
        }
        let files: u64 =
            ["v8_code_cache_v2", "v8_code_cache_v2-wal"].iter().map(|n| fs::metadata(dir.join(n)).unwrap().len()).sum();
        let (got, _) = copy_cache(&dir, "v8_code_cache_v2", 1 << 30);
        let copy = got.unwrap();
        let (got, held) = copy_cache(&dir, "v8_code_cache_v2", files + copy);
        assert_eq!(got, Ok(copy));
        assert!(held.values().sum::<u64>() <= files + copy + (64 << 10), "{held:?}");
        let (got, held) = copy_cache(&dir, "v8_code_cache_v2", files + copy - 1);
        let why = got.unwrap_err();
        assert!(why.contains(&format!("{copy} bytes")) && why.contains("bound"), "{why}");
        assert!(!held.contains_key("out"), "the backup ran: {held:?}");
        drop(c);
    }

    /// The backstop: were the count read wrong, SQLite itself stops the
    /// copy at its bound, having written no more.
    #[test]
    fn sqlite_itself_stops_a_copy_at_its_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let (db, wal) = sandcache_testkit::sqlite::wal_claiming(4096);
        let scratch = Scratch::create(&tmp.path().join("scratch")).unwrap();
        scratch.create_file("db").unwrap().write_all(&db).unwrap();
        scratch.create_file("db-wal").unwrap().write_all(&wal).unwrap();
        let src = Connection::open_with_flags(scratch.path("db"), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut out = Connection::open(scratch.path("out")).unwrap();
        let why = match copy_pages(&src, &mut out, 16, None) {
            Ok(()) => panic!("copied whole"),
            Err(f) => why(f),
        };
        assert!(why.contains("stopped at the bound of 16 pages"), "{why}");
        drop(out);
        let len = fs::metadata(scratch.path("out")).unwrap().len();
        assert!(len <= 16 * 4096, "the copy is {len} bytes");
    }

    /// Page 1's own count is never taken past the file: SQLite calls such a
    /// database malformed before the backup starts.
    #[test]
    fn a_header_claiming_more_pages_than_the_file_is_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("deno-dir");
        fs::create_dir(&dir).unwrap();
        {
            let c = Connection::open(dir.join("v8_code_cache_v2")).unwrap();
            c.execute_batch("CREATE TABLE t (i INTEGER PRIMARY KEY, pad BLOB NOT NULL)").unwrap();
        }
        let mut db = fs::read(dir.join("v8_code_cache_v2")).unwrap();
        db[28..32].copy_from_slice(&(1u32 << 20).to_be_bytes());
        fs::write(dir.join("v8_code_cache_v2"), &db).unwrap();
        let (got, held) = copy_cache(&dir, "v8_code_cache_v2", 64 << 20);
        let why = got.unwrap_err();
        assert!(why.contains("malformed"), "{why}");
        assert!(!held.contains_key("out"), "the backup ran: {held:?}");
    }
}
