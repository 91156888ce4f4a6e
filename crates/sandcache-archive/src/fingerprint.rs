//! Whether a tree changed, or holds anything, without reading its files
//! (one `lstat` per entry); and the fingerprint a tree restored from a
//! manifest will have, from the manifest alone, in the same encoding.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::pack::{Kind as EntryKind, Manifest};
use crate::select::{Selection, Take};
use crate::sqlite;
use crate::walk::{Entry, Kind, Step, Tree, WalkError, WalkOptions};

/// True when `dir` is missing, not a directory, or holds no regular file
/// or symlink (directories alone, however many, make an empty cache). A
/// `dir` that is a symlink is an error ([`WalkError::Unsafe`]).
pub fn is_empty_tree(dir: &Path, opts: &WalkOptions) -> Result<bool, WalkError> {
    let Some(tree) = Tree::open(dir, opts)? else {
        return Ok(true);
    };
    let mut found = false;
    tree.walk::<WalkError>(&mut |e| {
        Ok(match e.meta().kind {
            Kind::File | Kind::Symlink => {
                found = true;
                Step::Stop
            }
            _ => Step::Continue,
        })
    })?;
    Ok(!found)
}

/// A hash of what an archive of `dir` would hold: every path, kind, size,
/// mtime, mode and symlink target, leaving out SQLite databases at the top
/// of `dir` (and their journals) as [`crate::write_archive`] does. Two equal
/// fingerprints mean an archive would not change. It costs one `lstat` per
/// entry. A missing dir has the fingerprint of an empty one; a dir that is
/// a symlink is an error.
///
/// Deno's own caches ([`crate::sqlite::is_deno_cache`] and their companions, by
/// name) never count, even though a snapshot stores them: Deno writes them
/// on every run, so counting them would upload a new generation for every
/// boot. A snapshot that happens anyway (anything else changed) takes them
/// as they are then.
pub fn fingerprint(dir: &Path, skip_sqlite: bool, opts: &WalkOptions) -> Result<[u8; 32], WalkError> {
    let mut fp = Fingerprinter::new();
    let Some(tree) = Tree::open(dir, opts)? else {
        return Ok(fp.finish());
    };
    let mut select = Selection::fingerprint(skip_sqlite);
    tree.walk::<WalkError>(&mut |e| {
        let rel = e.rel().as_os_str().as_bytes();
        let meta = e.meta();
        let stamp = Stamp { size: meta.size, mtime: meta.mtime, mtime_nsec: meta.mtime_nsec, mode: meta.mode };
        match select.classify(e)? {
            Take::Dir => fp.add_dir(rel, meta.mode),
            Take::Symlink => fp.add_symlink(rel, &stamp, e.read_link()?.as_bytes()),
            Take::File => {
                // SQLite databases are looked for at the top only, where Deno
                // keeps its caches: opening every file would double the cost
                // of a walk. A deeper database only makes a change look
                // possible; the snapshot itself still leaves it out.
                if e.is_top() && select.sniffs(e) && is_database(&mut select, e)? {
                    return Ok(Step::Continue);
                }
                fp.add_file(rel, &stamp);
            }
            // This selection makes no copies: Deno's caches never count.
            Take::CacheCopy(_) | Take::LeaveOut => return Ok(Step::SkipDir),
        }
        Ok(Step::Continue)
    })?;
    Ok(fp.finish())
}

/// What [`fingerprint`] gives for the tree a restore writes from `m` (walk
/// order, the modes and times the restore sets: directories get `u+rwx`,
/// files lose setuid, setgid and sticky, times are whole seconds from 0),
/// computed without reading the disk back. Should the two ever differ, the
/// only cost is a snapshot that walks instead of skipping at once. Deno's
/// own caches do not count, as there.
pub fn of_manifest(m: &Manifest) -> [u8; 32] {
    let mut fp = Fingerprinter::new();
    for e in &m.entries {
        let top = e.path.split('/').next().unwrap_or_default();
        if sqlite::is_deno_cache_or_companion(OsStr::new(top)) {
            continue;
        }
        let rel = e.path.as_bytes();
        let stamp = |size, mode| Stamp { size, mtime: e.mtime.max(0), mtime_nsec: 0, mode };
        match e.kind {
            EntryKind::Dir => fp.add_dir(rel, (e.mode & 0o777) | 0o700),
            EntryKind::File => fp.add_file(rel, &stamp(e.size, e.mode & 0o777)),
            EntryKind::Symlink => {
                let target = e.target.as_deref().unwrap_or_default();
                fp.add_symlink(rel, &stamp(target.len() as u64, 0o777), target.as_bytes());
            }
        }
    }
    fp.finish()
}

/// Whether a listed regular file is a database, by its first bytes (see
/// [`Selection::is_database`]). A file that cannot be opened as the one
/// listed counts as not a database (the fingerprint is only a change
/// detector); cancellation still stops.
fn is_database(select: &mut Selection, e: &Entry<'_>) -> Result<bool, WalkError> {
    let mut head = [0u8; 16];
    let read = e.open().and_then(|f| match f {
        Some(mut f) => f.read_full(&mut head),
        None => Ok(0),
    });
    match read {
        Ok(n) => Ok(select.is_database(e, &head[..n])),
        Err(WalkError::Cancelled) => Err(WalkError::Cancelled),
        Err(_) => Ok(false),
    }
}

/// The fingerprint's encoding, fed in walk order the entries a snapshot
/// takes: by [`fingerprint`] from the disk, by [`of_manifest`] from a
/// manifest. Each entry is its path, a NUL, its kind, then its stamp (a
/// directory's: its mode alone) and a symlink's target.
pub(crate) struct Fingerprinter(blake3::Hasher);

/// What the fingerprint counts of a file or a symlink, beside its path.
pub(crate) struct Stamp {
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: i64,
    /// Permission bits, with setuid, setgid and sticky.
    pub(crate) mode: u32,
}

impl Fingerprinter {
    pub(crate) fn new() -> Fingerprinter {
        Fingerprinter(blake3::Hasher::new())
    }

    pub(crate) fn add_dir(&mut self, rel: &[u8], mode: u32) {
        self.0.update(rel);
        self.0.update(&[0, b'd']);
        self.0.update(&mode.to_le_bytes());
    }

    pub(crate) fn add_file(&mut self, rel: &[u8], stamp: &Stamp) {
        self.add(rel, b'f', stamp);
    }

    pub(crate) fn add_symlink(&mut self, rel: &[u8], stamp: &Stamp, target: &[u8]) {
        self.add(rel, b'l', stamp);
        self.0.update(target);
    }

    fn add(&mut self, rel: &[u8], kind: u8, stamp: &Stamp) {
        self.0.update(rel);
        self.0.update(&[0, kind]);
        self.0.update(&stamp.size.to_le_bytes());
        self.0.update(&stamp.mtime.to_le_bytes());
        self.0.update(&stamp.mtime_nsec.to_le_bytes());
        self.0.update(&stamp.mode.to_le_bytes());
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::{PermissionsExt, symlink};

    use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};

    use super::*;
    use crate::pack::{self, Entry as ManifestEntry};
    use crate::sqlite::SqliteOptions;
    use crate::walk::FileReader;

    /// Sets `path`'s times, never through a symlink, to `secs`: whole
    /// seconds, as a restore sets them.
    fn set_mtime(path: &Path, secs: i64) {
        let t = Timespec { tv_sec: secs, tv_nsec: 0 };
        let times = Timestamps { last_access: t, last_modification: t };
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    fn dir(root: &Path, rel: &str, mode: u32) {
        fs::create_dir(root.join(rel)).unwrap();
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }

    fn file(root: &Path, rel: &str, content: &[u8], mode: u32, mtime: i64) {
        fs::write(root.join(rel), content).unwrap();
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(&root.join(rel), mtime);
    }

    fn link(root: &Path, rel: &str, target: &str, mtime: i64) {
        symlink(target, root.join(rel)).unwrap();
        set_mtime(&root.join(rel), mtime);
    }

    /// A tree as a restore leaves it (whole-second times, directories their
    /// owner may enter, no setuid bits), holding every kind of entry a
    /// snapshot meets. The connection holds Deno's cache open, in WAL mode
    /// with its `-wal` and `-shm`, as a running Deno does.
    fn every_kind(root: &Path) -> rusqlite::Connection {
        fs::create_dir(root).unwrap();
        // Deno's cache, kept as a copy; its companions, and the other names
        // of Deno's caches as a lone companion, a directory and a symlink,
        // are left out.
        let db = rusqlite::Connection::open(root.join("v8_code_cache_v2")).unwrap();
        let mode: String = db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        db.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        db.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB); INSERT INTO t VALUES ('a', x'00ff')").unwrap();
        assert!(root.join("v8_code_cache_v2-wal").exists() && root.join("v8_code_cache_v2-shm").exists());
        file(root, "dep_analysis_cache_v2-journal", b"journal", 0o644, 1_000);
        dir(root, "check_cache_v2", 0o755);
        file(root, "check_cache_v2/x", b"x", 0o644, 1_000);
        link(root, "node_analysis_cache_v2", "v8_code_cache_v2", 1_000);
        // Another database: left out with its companion files, but not a
        // symlink with a companion's name.
        let mut other = sqlite_header();
        other.extend_from_slice(&[0; 84]);
        file(root, "other.db", &other, 0o644, 1_000);
        file(root, "other.db-journal", b"journal", 0o644, 1_000);
        link(root, "other.db-shm", "elsewhere", 1_000);
        // Named like companions of a file that is no database: taken.
        file(root, "notes", b"plain text", 0o644, 1_000);
        file(root, "notes-wal", b"plain text too", 0o644, 1_000);
        // Sandcache's own names, never listed.
        dir(root, ".sandcache-staging-1", 0o700);
        file(root, ".sandcache-staging-1/x", b"x", 0o644, 1_000);
        // Directories of several modes, files of every size class (empty,
        // shorter than a database's header, as long, larger than a frame),
        // modes and times (0 too), a hardlink, symlinks relative, absolute
        // and dangling, a name that is not ASCII.
        dir(root, "npm", 0o755);
        dir(root, "npm/pkg", 0o750);
        dir(root, "npm/pkg/lib", 0o700);
        dir(root, "npm/pkg/empty", 0o775);
        file(root, "npm/pkg/empty.txt", b"", 0o600, 0);
        file(root, "npm/pkg/short", &sqlite_header()[..15], 0o444, 1_700_000_001);
        file(root, "npm/pkg/sixteen", b"0123456789abcdef", 0o644, 1_700_000_002);
        file(root, "npm/pkg/package.json", br#"{"name":"pkg"}"#, 0o644, 1_700_000_003);
        file(root, "npm/pkg/bin.sh", b"#!/bin/sh\n", 0o755, 1_700_000_004);
        file(root, "npm/pkg/lib/index.js", &sandcache_testkit::tree::noise(300_000, "index"), 0o644, 1_700_000_005);
        let big = sandcache_testkit::tree::noise(pack::FRAME_RAW + 5, "big");
        file(root, "npm/pkg/lib/big.wasm", &big, 0o644, 1_700_000_006);
        fs::hard_link(root.join("npm/pkg/lib/index.js"), root.join("npm/pkg/lib/same.js")).unwrap();
        file(root, "npm/pkg/lib/.sandcache-tail-7-00000000", b"half", 0o600, 1_000);
        file(root, "npm/pkg/\u{e9}t\u{e9}.ts", b"export {}", 0o644, 1_700_000_007);
        link(root, "npm/pkg/latest", "lib", 1_700_000_008);
        link(root, "npm/abs", "/deno-dir/npm/pkg", 1_700_000_009);
        link(root, "npm/dangling", "nowhere", 0);
        // Special files: left out, never opened.
        dir(root, "run", 0o755);
        rustix::fs::mknodat(CWD, root.join("run/fifo"), FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        let _ = std::os::unix::net::UnixListener::bind(root.join("run/sock")).unwrap();
        db
    }

    fn sqlite_header() -> Vec<u8> {
        crate::sqlite::SQLITE_MAGIC.to_vec()
    }

    /// The manifest a native snapshot makes of `root`: one walk through the
    /// snapshot's selection, as the engine's build walks it (contents
    /// hashed, never packed: a fingerprint never reads them).
    fn manifest_of(root: &Path, scratch: &Path) -> Manifest {
        let content = |mut f: FileReader| {
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            data
        };
        let file = |rel: String, m: &crate::walk::Meta, data: &[u8]| {
            ManifestEntry::file(rel, m.mode, m.mtime, data.len() as u64, blake3::hash(data).to_hex().to_string())
        };
        let tree = Tree::open(root, &WalkOptions::default()).unwrap().unwrap();
        let mut select = Selection::new(Some(SqliteOptions::new(scratch)), None);
        let mut entries = Vec::new();
        tree.walk::<WalkError>(&mut |e| {
            let (rel, m) = (e.rel().to_str().unwrap().to_owned(), e.meta());
            match select.classify(e)? {
                Take::LeaveOut => return Ok(Step::SkipDir),
                Take::Dir => entries.push(ManifestEntry::dir(rel, m.mode, m.mtime)),
                Take::Symlink => {
                    let target = e.read_link()?.into_string().unwrap();
                    entries.push(ManifestEntry::symlink(rel, target, m.mode, m.mtime));
                }
                Take::File => {
                    let data = content(e.open()?.unwrap());
                    if !select.is_database(e, &data) {
                        entries.push(file(rel, m, &data));
                    }
                }
                Take::CacheCopy(copy) => entries.push(file(rel, m, &content(copy))),
            }
            Ok(Step::Continue)
        })
        .unwrap();
        Manifest {
            version: pack::VERSION,
            created_ms: 0,
            packs: Vec::new(),
            frames: Vec::new(),
            entries,
            pieces: Vec::new(),
            hot: Vec::new(),
        }
    }

    /// What a native restore records ([`of_manifest`]) is what the disk
    /// gives ([`fingerprint`]) once the tree is restored, byte for byte,
    /// for every kind of entry. (Two cases differ and only cost a walk: a
    /// SQLite database below the top, which only the snapshot finds, and a
    /// name that is not UTF-8, which a manifest cannot hold.)
    #[test]
    fn a_manifest_and_the_tree_it_restores_have_one_fingerprint() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("deno-dir");
        let db = every_kind(&root);
        let m = manifest_of(&root, &tmp.path().join("scratch"));
        let taken: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            taken,
            [
                "notes",
                "notes-wal",
                "npm",
                "npm/abs",
                "npm/dangling",
                "npm/pkg",
                "npm/pkg/bin.sh",
                "npm/pkg/empty",
                "npm/pkg/empty.txt",
                "npm/pkg/latest",
                "npm/pkg/lib",
                "npm/pkg/lib/big.wasm",
                "npm/pkg/lib/index.js",
                "npm/pkg/lib/same.js",
                "npm/pkg/package.json",
                "npm/pkg/short",
                "npm/pkg/sixteen",
                "npm/pkg/\u{e9}t\u{e9}.ts",
                "other.db-shm",
                "run",
                "v8_code_cache_v2",
            ]
        );
        assert_eq!(of_manifest(&m), fingerprint(&root, true, &WalkOptions::default()).unwrap());
        drop(db);
    }

    /// [`of_manifest`] gives what the engine's own `Index::fingerprint_of`
    /// gave before it was replaced by this one (checked equal when it
    /// was), which restored dirs' state files hold: a change would make
    /// each of them look changed once.
    #[test]
    fn a_manifests_fingerprint_is_what_state_files_hold() {
        let fp = of_manifest(&manifest_of_every_field());
        assert_eq!(
            blake3::Hash::from(fp).to_hex().as_str(),
            "1389372509fdb4b0ba0fe2bc9d20eb3310b995e048a83113e547511bc6df90bd"
        );
    }

    /// Entries a restore maps onto the disk: modes with bits it drops or
    /// adds, negative times, a symlink without a target, Deno's caches.
    fn manifest_of_every_field() -> Manifest {
        let hash = "ab".repeat(32);
        let mut no_target = ManifestEntry::symlink("npm/odd".into(), String::new(), 0o777, 3);
        no_target.target = None;
        let mut file_with_target = ManifestEntry::file("npm/f".into(), 0o644, 4, 2, hash.clone());
        file_with_target.target = Some("ignored".into());
        Manifest {
            version: pack::VERSION,
            created_ms: 1,
            packs: Vec::new(),
            frames: Vec::new(),
            entries: vec![
                ManifestEntry::dir("check_cache_v2-wal".into(), 0o755, 1),
                ManifestEntry::file("check_cache_v2-wal/x".into(), 0o644, 1, 1, hash.clone()),
                ManifestEntry::dir("npm".into(), 0o555, 1_700_000_000),
                ManifestEntry::file("npm/a.js".into(), 0o4755, 1_700_000_001, 12, hash.clone()),
                ManifestEntry::file("npm/empty".into(), 0o600, -5, 0, hash.clone()),
                file_with_target,
                ManifestEntry::symlink("npm/latest".into(), "a.js".into(), 0o777, 1_700_000_002),
                no_target,
                ManifestEntry::file("v8_code_cache_v2".into(), 0o644, 7, 4096, hash.clone()),
                ManifestEntry::dir("zz".into(), 0o1777, -1),
            ],
            pieces: Vec::new(),
            hot: Vec::new(),
        }
    }
}
