//! Sample trees and whole-tree comparisons.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// A small tree with what a DENO_DIR holds: nested dirs, modes, a symlink,
/// an empty dir, and a SQLite cache with its WAL.
pub fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("npm/registry.npmjs.org/pkg/1.0.0/lib")).unwrap();
    fs::write(root.join("npm/registry.npmjs.org/pkg/1.0.0/package.json"), b"{\"name\":\"pkg\"}").unwrap();
    fs::write(root.join("npm/registry.npmjs.org/pkg/1.0.0/lib/index.js"), vec![b'x'; 300_000]).unwrap();
    let bin = root.join("npm/registry.npmjs.org/pkg/1.0.0/bin.sh");
    fs::write(&bin, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    symlink("1.0.0", root.join("npm/registry.npmjs.org/pkg/latest")).unwrap();
    fs::create_dir_all(root.join("remote/empty")).unwrap();
    let long = "n".repeat(120);
    fs::write(root.join("remote").join(&long), b"long name").unwrap();
    let mut db = b"SQLite format 3\0".to_vec();
    db.extend_from_slice(&[0; 100]);
    fs::write(root.join("dep_analysis_cache_v2"), &db).unwrap();
    fs::write(root.join("dep_analysis_cache_v2-wal"), b"wal").unwrap();
}

/// Asserts two trees have the same names, kinds, contents, modes and
/// symlink targets, ignoring SQLite files.
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_eq!(listing(a), listing(b));
}

/// A tree's names, kinds, contents, modes, mtimes and symlink targets,
/// relative to `root` and sorted, ignoring SQLite files: what
/// [`assert_same_tree`] compares.
pub fn listing(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

/// `len` bytes that do not compress, the same for the same `seed`.
pub fn noise(len: usize, seed: &str) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if rel.contains("cache_v2") {
            continue;
        }
        let m = fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
        } else if m.is_dir() {
            out.push(format!("{rel}/ {:o}", m.mode() & 0o777));
            walk(root, &p, out);
        } else {
            let h = blake3::hash(&fs::read(&p).unwrap());
            out.push(format!("{rel} {:o} {} {}", m.mode() & 0o777, m.mtime(), &h.to_hex()[..16]));
        }
    }
}

/// Every path, kind, size, mode and symlink target under `dir`.
pub fn fs_state(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let link = fs::read_link(&p).map(|t| t.display().to_string()).unwrap_or_default();
            out.push(format!("{} {:o} {} {} {link}", p.display(), m.mode(), m.len(), m.mtime()));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Everything under `root`, for checking that nothing changed outside
/// where the code under test may write. Keyed by relative path (`{:?}`):
/// kind, mode, owner, inode, links, size, mtime and ctime to the nanosecond,
/// and the content hash or link target.
///
/// `skip`: relative paths not entered, recorded by inode and kind only (a
/// store, a staging dir being written). `timeless`: relative paths recorded
/// without size and times (a dir whose entries come and go).
pub fn sandbox_state(root: &Path, skip: &[&str], timeless: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let rel = p.strip_prefix(root).unwrap();
        let key = format!("{:?}", rel.as_os_str());
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        if skip.iter().any(|s| rel == Path::new(s)) {
            out.insert(key, format!("ino={} dir={}", m.ino(), ft.is_dir()));
            continue;
        }
        let extra = if ft.is_symlink() {
            format!("-> {:?}", fs::read_link(&p).unwrap())
        } else if ft.is_file() {
            blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string()
        } else if ft.is_dir() {
            let mut children: Vec<PathBuf> = fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()).collect();
            children.sort();
            stack.extend(children);
            String::new()
        } else {
            "special".into()
        };
        let times = if timeless.iter().any(|t| rel == Path::new(t)) {
            String::new()
        } else {
            format!(
                "size={} mtime={}.{:09} ctime={}.{:09}",
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            )
        };
        out.insert(
            key,
            format!("mode={:o} uid={} ino={} nlink={} {times} {extra}", m.mode(), m.uid(), m.ino(), m.nlink()),
        );
    }
    out
}

/// Every file under `dir`, relative, with its content; symlinks as
/// `-> target`.
pub fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_symlink() {
                let t = fs::read_link(e.path()).unwrap();
                out.insert(r.to_string_lossy().into_owned(), format!("-> {}", t.display()).into_bytes());
            } else {
                out.insert(r.to_string_lossy().into_owned(), fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Sets the access and modification times of `path` (a file, or every
/// regular file under a directory) to one past instant: what a restore
/// leaves, so that a read afterwards marks a file hot. Symlinks are left
/// alone.
pub fn settle_times(path: &Path) {
    let m = fs::symlink_metadata(path).unwrap();
    if m.is_dir() {
        for e in fs::read_dir(path).unwrap() {
            settle_times(&e.unwrap().path());
        }
    } else if m.is_file() {
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let f = fs::File::open(path).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t)).unwrap();
    }
}
