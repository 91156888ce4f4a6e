//! Archive round trips in every layout and encoding, interop with GNU tar
//! both ways, empty trees, fingerprints and the root dir's mode.

use sandcache_testkit::tree::{assert_same_tree, sample_tree};

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use sandcache_archive::{Encoding, ExtractOptions, Layout, WriteOptions, extract, is_empty_tree, write_archive};

fn roundtrip(layout: Layout, encoding: Encoding) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("deno-dir");
    sample_tree(&src);
    let mut archive = Vec::new();
    let stats = write_archive(&src, &mut archive, &WriteOptions::new(layout, encoding)).unwrap();
    assert_eq!(stats.skipped, 2, "the SQLite db and its WAL are left out");
    let staging = tmp.path().join("staging");
    fs::create_dir(&staging).unwrap();
    let x = extract(std::io::Cursor::new(archive), &staging, &ExtractOptions::new(&src)).unwrap();
    assert_eq!(x.files, stats.files);
    assert_eq!(x.bytes, stats.bytes);
    assert!(!staging.join("dep_analysis_cache_v2").exists());
    assert_same_tree(&src, &staging);
}

#[test]
fn roundtrip_relative_zstd() {
    roundtrip(Layout::Relative, Encoding::Zstd { level: 3 });
}

#[test]
fn roundtrip_rooted_gzip() {
    roundtrip(Layout::Rooted, Encoding::Gzip);
}

#[test]
fn roundtrip_plain_tar() {
    roundtrip(Layout::Relative, Encoding::None);
}

#[test]
fn empty_tree_detection() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(is_empty_tree(&tmp.path().join("missing"), &Default::default()).unwrap());
    fs::create_dir_all(tmp.path().join("a/b/c")).unwrap();
    assert!(is_empty_tree(tmp.path(), &Default::default()).unwrap(), "directories alone are empty");
    fs::write(tmp.path().join("a/b/c/f"), b"x").unwrap();
    assert!(!is_empty_tree(tmp.path(), &Default::default()).unwrap());
}

/// The seed writes `tar -czf - -C / deno-dir`: entries rooted at the dir's
/// absolute path. Such an archive restores into the dir.
#[test]
fn gnu_tar_rooted_archive_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("deno-dir");
    sample_tree(&src);
    let rel = src.strip_prefix("/").unwrap();
    let out = Command::new("tar").arg("-czf").arg("-").arg("-C").arg("/").arg(rel).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let staging = tmp.path().join("staging");
    fs::create_dir(&staging).unwrap();
    extract(std::io::Cursor::new(out.stdout), &staging, &ExtractOptions::new(&src)).unwrap();
    assert_same_tree(&src, &staging);
}

/// A relative `tar -cf - -C dir .` (with `./` prefixes) restores too.
#[test]
fn gnu_tar_relative_archive_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("deno-dir");
    sample_tree(&src);
    let out = Command::new("tar").arg("--zstd").arg("-cf").arg("-").arg("-C").arg(&src).arg(".").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let staging = tmp.path().join("staging");
    fs::create_dir(&staging).unwrap();
    extract(std::io::Cursor::new(out.stdout), &staging, &ExtractOptions::new(&src)).unwrap();
    assert_same_tree(&src, &staging);
}

/// A rooted gzip archive we write is what the seed reads: `tar -xzf - -C /`.
/// (Extracted under another root here, so the test touches nothing real.)
#[test]
fn our_tgz_extracts_with_gnu_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("deno-dir");
    sample_tree(&src);
    let mut archive = Vec::new();
    write_archive(&src, &mut archive, &WriteOptions::new(Layout::Rooted, Encoding::Gzip)).unwrap();
    let fake_root = tmp.path().join("root");
    fs::create_dir(&fake_root).unwrap();
    let mut child =
        Command::new("tar").arg("-xzf").arg("-").arg("-C").arg(&fake_root).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &archive).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_same_tree(&src, &fake_root.join(src.strip_prefix("/").unwrap()));
}

#[test]
fn fingerprint_tracks_changes_but_not_sqlite_or_reserved_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    sample_tree(&dir);
    let fp = || sandcache_archive::fingerprint(&dir, true, &Default::default()).unwrap();
    let a = fp();
    assert_eq!(a, fp(), "stable");
    fs::write(dir.join("dep_analysis_cache_v2-wal"), b"more wal").unwrap();
    fs::create_dir(dir.join(".sandcache-staging-1")).unwrap();
    fs::write(dir.join(".sandcache-staging-1/x"), b"x").unwrap();
    assert_eq!(a, fp(), "SQLite companions and sandcache's own entries do not count");
    fs::write(dir.join("remote/new"), b"new").unwrap();
    assert_ne!(a, fp());
    assert_ne!(sandcache_archive::fingerprint(&tmp.path().join("missing"), true, &Default::default()).unwrap(), a);
}

#[test]
fn the_root_dir_mode_survives_and_defaults_to_0755() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("d");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).unwrap();
    let mut archive = Vec::new();
    write_archive(&src, &mut archive, &WriteOptions::new(Layout::Relative, Encoding::None)).unwrap();
    let staging = tmp.path().join("staging");
    fs::create_dir(&staging).unwrap();
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o700)).unwrap();
    extract(std::io::Cursor::new(archive), &staging, &ExtractOptions::new(&src)).unwrap();
    assert_eq!(fs::metadata(&staging).unwrap().mode() & 0o777, 0o750);

    let bare = sandcache_testkit::raw::Raw::default().file("f", b"x").finish();
    let staging2 = tmp.path().join("staging2");
    fs::create_dir(&staging2).unwrap();
    fs::set_permissions(&staging2, fs::Permissions::from_mode(0o700)).unwrap();
    extract(std::io::Cursor::new(bare), &staging2, &ExtractOptions::new(&src)).unwrap();
    assert_eq!(fs::metadata(&staging2).unwrap().mode() & 0o777, 0o755);
}
