//! The snapshot walker against a tree that changes under it.
//!
//! Each race is made deterministic: the visitor itself swaps the entry it
//! was just shown, after the walker's `lstat` and before its open, which is
//! the window a hostile worker aims for. The walker must refuse the new
//! object without reading a byte of it. `write_archive`, `fingerprint` and
//! `is_empty_tree` are then checked on a symlinked dir, special files, the
//! limits and the cancel flag.

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sandcache_archive::walk::{Kind, Step, Tree};
use sandcache_archive::{Encoding, Layout, Limits, WalkError, WalkOptions, WriteError, WriteOptions, write_archive};

const SECRET: &[u8] = b"root-only secret: 8c1f0e7d";

/// A dir with a file, a subdir and, outside it, a secret file and dir.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("f.js"), b"worker's own file").unwrap();
    fs::write(dir.join("sub/g.js"), b"in a subdir").unwrap();
    let secret = tmp.path().join("secret");
    fs::create_dir_all(secret.join("dir")).unwrap();
    fs::write(secret.join("file"), SECRET).unwrap();
    fs::write(secret.join("dir/inner"), SECRET).unwrap();
    (tmp, dir, secret)
}

fn open(dir: &Path) -> Tree {
    Tree::open(dir, &WalkOptions::default()).unwrap().expect("a dir")
}

/// Walks `dir`, calling `swap` on the entry named `at` right after it is
/// listed, then opening it (files) or walking into it (dirs). Returns the
/// walk's error and every byte read.
fn walk_swapping(dir: &Path, at: &str, swap: impl Fn(&Path)) -> (Result<(), WalkError>, Vec<u8>) {
    let mut read = Vec::new();
    let walked = open(dir).walk::<WalkError>(&mut |e| {
        if e.rel() == Path::new(at) {
            swap(&dir.join(at));
        }
        if e.meta().kind == Kind::File {
            if let Some(mut f) = e.open()? {
                f.read_to_end(&mut read).map_err(|err| WalkError::from_io(err, &e.path()))?;
            }
        }
        Ok(Step::Continue)
    });
    (walked, read)
}

fn assert_unsafe(r: Result<(), WalkError>, path: &Path, now: &str) {
    match r {
        Err(WalkError::Unsafe { path: p, why }) => {
            assert_eq!(p, path);
            assert!(why.contains("changed while being read") && why.contains(now), "{why}");
        }
        other => panic!("expected unsafe for {}, got {other:?}", path.display()),
    }
}

#[test]
fn a_file_swapped_for_a_symlink_after_lstat_is_not_followed() {
    let (_tmp, dir, secret) = setup();
    let (r, read) = walk_swapping(&dir, "f.js", |p| {
        fs::remove_file(p).unwrap();
        symlink(secret.join("file"), p).unwrap();
    });
    assert_unsafe(r, &dir.join("f.js"), "a symlink");
    assert!(!read.windows(SECRET.len()).any(|w| w == SECRET), "the secret was read");
}

#[test]
fn a_file_swapped_for_a_symlink_to_dev_zero_or_proc_is_not_followed() {
    for target in ["/dev/zero", "/proc/self/environ"] {
        let (_tmp, dir, _secret) = setup();
        let (r, read) = walk_swapping(&dir, "f.js", |p| {
            fs::remove_file(p).unwrap();
            symlink(target, p).unwrap();
        });
        assert_unsafe(r, &dir.join("f.js"), "a symlink");
        assert!(read.is_empty(), "{target}: read {} bytes", read.len());
    }
}

#[test]
fn a_file_swapped_for_a_fifo_is_refused_without_blocking() {
    let (_tmp, dir, _secret) = setup();
    let start = Instant::now();
    let (r, _) = walk_swapping(&dir, "f.js", |p| {
        fs::remove_file(p).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
            .unwrap();
    });
    assert_unsafe(r, &dir.join("f.js"), "a FIFO");
    assert!(start.elapsed() < Duration::from_secs(5), "the open blocked");
}

#[test]
fn a_file_replaced_by_another_file_fails_without_reading_it() {
    let (_tmp, dir, _secret) = setup();
    let (r, read) = walk_swapping(&dir, "f.js", |p| {
        // As a rename into place would: same name, another inode.
        let other = p.with_extension("new");
        fs::write(&other, SECRET).unwrap();
        fs::rename(&other, p).unwrap();
    });
    match r {
        Err(WalkError::Changed { path, why }) => {
            assert_eq!(path, dir.join("f.js"));
            assert!(why.contains("replaced"), "{why}");
        }
        other => panic!("expected changed, got {other:?}"),
    }
    assert!(read.is_empty());
}

#[test]
fn a_dir_swapped_for_a_symlink_after_lstat_is_not_entered() {
    let (_tmp, dir, secret) = setup();
    let (r, read) = walk_swapping(&dir, "sub", |p| {
        fs::rename(p, p.with_extension("aside")).unwrap();
        symlink(secret.join("dir"), p).unwrap();
    });
    assert_unsafe(r, &dir.join("sub"), "a symlink");
    assert!(!read.windows(SECRET.len()).any(|w| w == SECRET), "the secret was read");
}

#[test]
fn a_dir_replaced_by_another_dir_is_not_entered() {
    let (_tmp, dir, secret) = setup();
    let (r, read) = walk_swapping(&dir, "sub", |p| {
        fs::rename(p, p.with_extension("aside")).unwrap();
        fs::rename(secret.join("dir"), p).unwrap();
    });
    assert!(matches!(r, Err(WalkError::Changed { .. })), "{r:?}");
    assert!(!read.windows(SECRET.len()).any(|w| w == SECRET), "the secret was read");
}

#[test]
fn a_symlink_swapped_for_a_file_is_not_read_as_a_link() {
    let (_tmp, dir, _secret) = setup();
    symlink("f.js", dir.join("l")).unwrap();
    let walked = open(&dir).walk::<WalkError>(&mut |e| {
        if e.rel() == Path::new("l") {
            fs::remove_file(e.path()).unwrap();
            fs::write(e.path(), b"now a file").unwrap();
            e.read_link()?;
        }
        Ok(Step::Continue)
    });
    assert_unsafe(walked, &dir.join("l"), "a regular file");
}

#[test]
fn a_file_that_grew_is_cut_and_one_that_shrank_fails() {
    let (_tmp, dir, _secret) = setup();
    let (r, read) = walk_swapping(&dir, "f.js", |p| {
        fs::OpenOptions::new().append(true).open(p).unwrap().set_len(1 << 30).unwrap();
    });
    r.unwrap();
    assert_eq!(read.len(), b"worker's own file".len() + b"in a subdir".len(), "at most the listed size");

    let (r, _) = walk_swapping(&dir, "f.js", |p| fs::write(p, b"short").unwrap());
    assert!(matches!(&r, Err(WalkError::Changed { why, .. }) if why.contains("shrank")), "{r:?}");
}

#[test]
fn a_symlinked_dir_is_refused_by_every_reader() {
    let (tmp, dir, _secret) = setup();
    let link = tmp.path().join("link");
    symlink(&dir, &link).unwrap();
    let opts = WalkOptions::default();
    let named = |e: WalkError| {
        assert!(matches!(&e, WalkError::Unsafe { path, .. } if path == &link), "{e:?}");
        assert!(e.to_string().contains("is a symlink"), "{e}");
    };
    named(Tree::open(&link, &opts).unwrap_err());
    named(sandcache_archive::is_empty_tree(&link, &opts).unwrap_err());
    named(sandcache_archive::fingerprint(&link, true, &opts).unwrap_err());
    let wopts = WriteOptions::new(Layout::Relative, Encoding::None);
    match write_archive(&link, Vec::new(), &wopts) {
        Err(WriteError::Walk(e)) => named(e),
        other => panic!("{other:?}"),
    }
    // A missing dir or a plain file are empty, as before.
    assert!(sandcache_archive::is_empty_tree(&tmp.path().join("missing"), &opts).unwrap());
    assert!(sandcache_archive::is_empty_tree(&dir.join("f.js"), &opts).unwrap());
}

#[test]
fn fifos_sockets_and_devices_are_left_out_never_opened() {
    let (_tmp, dir, _secret) = setup();
    let at = |n: &str| dir.join(n);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        at("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(at("sock")).unwrap();
    let root = rustix::process::geteuid().is_root();
    if root {
        // /dev/zero's numbers: reading it would never end.
        let dev = rustix::fs::makedev(1, 5);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            at("zero"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o644),
            dev,
        )
        .unwrap();
    } else {
        eprintln!("not root: no device node in this run");
    }
    symlink("/dev/zero", at("zero-link")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let src = dir.clone();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let stats = write_archive(&src, &mut out, &WriteOptions::new(Layout::Relative, Encoding::None));
        let _ = tx.send(stats.map(|s| (s, out.len())));
    });
    let (stats, len) = rx.recv_timeout(Duration::from_secs(10)).expect("the write blocked").unwrap();
    assert_eq!(stats.skipped, if root { 3 } else { 2 }, "{stats:?}");
    assert_eq!(stats.files, 3, "f.js, sub/g.js and the symlink, stored as a link");
    assert!(len < 64 << 10, "nothing was read from /dev/zero: {len} bytes");
    let fp = sandcache_archive::fingerprint(&dir, true, &WalkOptions::default()).unwrap();
    assert_eq!(fp, sandcache_archive::fingerprint(&dir, true, &WalkOptions::default()).unwrap());
}

/// A file of `len` bytes that takes no space.
fn sparse(path: &Path, len: u64) -> bool {
    match fs::File::create(path).and_then(|f| f.set_len(len)) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping: cannot make a {len}-byte sparse file here: {e}");
            false
        }
    }
}

#[test]
fn limits_stop_the_walk_before_the_content_is_read() {
    let (_tmp, dir, _secret) = setup();
    if !sparse(&dir.join("huge"), 15 << 40) {
        return;
    }
    let start = Instant::now();
    let wopts = WriteOptions::new(Layout::Relative, Encoding::Zstd { level: 3 });
    match write_archive(&dir, Vec::new(), &wopts) {
        Err(WriteError::Walk(WalkError::Limit { what: "size", limit, path })) => {
            assert_eq!((limit, path), (Limits::default().max_bytes, dir.join("huge")));
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    let few = WalkOptions { limits: Limits { max_entries: 2, ..Limits::default() }, ..Default::default() };
    let e = sandcache_archive::fingerprint(&dir, true, &few).unwrap_err();
    assert!(matches!(e, WalkError::Limit { what: "entry count", .. }), "{e:?}");
    let limits = Limits { max_path_len: 4, max_bytes: u64::MAX, ..Limits::default() };
    let short = WalkOptions { limits, ..Default::default() };
    let e = sandcache_archive::fingerprint(&dir, true, &short).unwrap_err();
    assert!(matches!(e, WalkError::Limit { what: "path length", .. }), "{e:?}");
}

#[test]
fn the_cancel_flag_stops_a_read_in_progress() {
    let (_tmp, dir, _secret) = setup();
    if !sparse(&dir.join("huge"), 15 << 40) {
        return;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let unbounded = Limits { max_bytes: u64::MAX, ..Limits::default() };
    let mut wopts = WriteOptions::new(Layout::Relative, Encoding::None);
    (wopts.cancel, wopts.limits) = (Some(cancel.clone()), unbounded);
    let src = dir.clone();
    let writer = std::thread::spawn(move || write_archive(&src, std::io::sink(), &wopts));
    std::thread::sleep(Duration::from_millis(300));
    let cancelled_at = Instant::now();
    cancel.store(true, Ordering::Relaxed);
    while !writer.is_finished() {
        assert!(cancelled_at.elapsed() < Duration::from_secs(1), "still reading 1 s after the cancel");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = writer.join().unwrap();
    assert!(matches!(r, Err(WriteError::Walk(WalkError::Cancelled))), "{r:?}");
}

/// A hardlink in DIR to a file another uid owns (a root-only secret, where
/// `protected_hardlinks` is off) is refused when the tree has an owner; a
/// single-link file of another uid, and links the owner made, are read.
#[test]
fn a_hardlink_to_another_owners_file_is_refused() {
    let (tmp, dir, secret) = setup();
    fs::hard_link(secret.join("file"), dir.join("linked.js")).unwrap();
    let me = rustix::process::geteuid().as_raw();
    let mut out = Vec::new();
    let as_owner =
        |owner: u32| WriteOptions { owner: Some(owner), ..WriteOptions::new(Layout::Relative, Encoding::None) };
    // The tree's owner is someone else: the two-link file is not theirs.
    let err = write_archive(&dir, &mut out, &as_owner(me.wrapping_add(1))).unwrap_err();
    assert!(matches!(&err, WriteError::Walk(WalkError::Unsafe { why, .. }) if why.contains("hardlink")), "{err}");
    assert!(!out.windows(SECRET.len()).any(|w| w == SECRET), "not a byte of it was read");
    // The owner's own links are fine, and so is any file without owner rules.
    out.clear();
    write_archive(&dir, &mut out, &as_owner(me)).unwrap();
    out.clear();
    write_archive(&dir, &mut out, &WriteOptions::new(Layout::Relative, Encoding::None)).unwrap();
    drop(tmp);
}
