//! Hostile archives: each is rejected with a reason, or neutralised, and
//! nothing outside the staging directory changes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use sandcache_archive::{ExtractError, ExtractOptions, Limits, extract};
use sandcache_testkit::raw::Raw;
use sandcache_testkit::tree::fs_state;
use tar::{EntryType, Header};

/// Extracts `archive` into `<sandbox>/t/staging` for a target
/// `<sandbox>/t/deno-dir`, and checks that nothing else in the sandbox
/// changed. A bait file sits beside the target and in the sandbox root.
fn run(archive: Vec<u8>, limits: Limits) -> (Result<sandcache_archive::ExtractStats, ExtractError>, tempfile::TempDir) {
    let sandbox = tempfile::tempdir().unwrap();
    let t = sandbox.path().join("t");
    fs::create_dir_all(t.join("deno-dir")).unwrap();
    fs::write(sandbox.path().join("bait"), b"bait").unwrap();
    fs::write(t.join("bait"), b"bait").unwrap();
    let staging = t.join("staging");
    fs::create_dir(&staging).unwrap();
    let before = fs_state(sandbox.path());
    let mut opts = ExtractOptions::new(t.join("deno-dir"));
    opts.limits = limits;
    let result = extract(std::io::Cursor::new(archive), &staging, &opts);
    let after: Vec<String> = fs_state(sandbox.path())
        .into_iter()
        .filter(|l| {
            !l.starts_with(&format!("{}/", staging.display())) && !l.starts_with(&format!("{} ", staging.display()))
        })
        .collect();
    let before: Vec<String> =
        before.into_iter().filter(|l| !l.starts_with(&format!("{} ", staging.display()))).collect();
    assert_eq!(before, after, "something outside the staging dir changed");
    (result, sandbox)
}

fn rejected(archive: Vec<u8>, expect: &str) {
    let (result, _keep) = run(archive, Limits::default());
    match result {
        Err(ExtractError::Unsafe { why, .. }) => {
            assert!(why.contains(expect), "reason {why:?} lacks {expect:?}")
        }
        other => panic!("expected an unsafe rejection ({expect}), got {other:?}"),
    }
}

#[test]
fn traversal_is_rejected() {
    rejected(Raw::default().file("../escape", b"x").finish(), "`..`");
    rejected(Raw::default().file("a/../../escape", b"x").finish(), "`..`");
    rejected(Raw::default().file("npm/../../../etc/x", b"x").finish(), "`..`");
}

#[test]
fn absolute_paths_outside_are_rejected() {
    rejected(Raw::default().file("/etc/sandcache-test", b"x").finish(), "absolute path outside");
    rejected(Raw::default().file("/tmp/bait", b"x").finish(), "absolute path outside");
}

#[test]
fn symlink_escape_then_write_through_is_rejected() {
    let archive = Raw::default().entry(b"l", EntryType::Symlink, b"/etc", b"", 0o777).file("l/passwd", b"x").finish();
    rejected(archive, "symlink points outside");
    let archive = Raw::default().entry(b"l", EntryType::Symlink, b"../..", b"", 0o777).finish();
    rejected(archive, "symlink points outside");
    let archive = Raw::default()
        .entry(b"a", EntryType::Symlink, b".", b"", 0o777)
        .entry(b"b", EntryType::Symlink, b"a/../x", b"", 0o777)
        .finish();
    rejected(archive, "`..` after a name");
}

#[test]
fn write_through_an_inside_symlink_is_rejected() {
    let archive = Raw::default()
        .entry(b"d/", EntryType::Directory, b"", b"", 0o755)
        .entry(b"l", EntryType::Symlink, b"d", b"", 0o777)
        .file("l/file", b"x")
        .finish();
    rejected(archive, "through a symlink");
}

#[test]
fn symlink_replacing_a_file_is_rejected() {
    let archive = Raw::default().file("f", b"x").entry(b"f", EntryType::Symlink, b"g", b"", 0o777).finish();
    rejected(archive, "duplicate");
}

#[test]
fn hardlinks_out_are_rejected() {
    rejected(Raw::default().entry(b"h", EntryType::Link, b"/etc/passwd", b"", 0o644).finish(), "absolute path outside");
    rejected(Raw::default().entry(b"h", EntryType::Link, b"../bait", b"", 0o644).finish(), "`..`");
    rejected(Raw::default().entry(b"h", EntryType::Link, b"missing", b"", 0o644).finish(), "does not exist");
}

#[test]
fn hardlinks_inside_work() {
    let archive = Raw::default().file("a", b"same").entry(b"b", EntryType::Link, b"a", b"", 0o644).finish();
    let (result, sandbox) = run(archive, Limits::default());
    assert_eq!(result.unwrap().files, 2);
    let staging = sandbox.path().join("t/staging");
    assert_eq!(fs::metadata(staging.join("a")).unwrap().ino(), fs::metadata(staging.join("b")).unwrap().ino());
}

#[test]
fn device_and_fifo_nodes_are_rejected() {
    for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
        rejected(Raw::default().entry(b"node", kind, b"", b"", 0o644).finish(), "device and fifo");
    }
}

#[test]
fn setuid_and_setgid_bits_are_dropped() {
    let archive = Raw::default().entry(b"suid", EntryType::Regular, b"", b"#!", 0o6755).finish();
    let (result, sandbox) = run(archive, Limits::default());
    result.unwrap();
    let mode = fs::metadata(sandbox.path().join("t/staging/suid")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755);
}

#[test]
fn overlong_names_are_rejected() {
    let name = format!("{}/f", "d".repeat(5000));
    rejected(Raw::default().file(&name, b"x").finish(), "over the limit");
    let name = "c".repeat(300);
    rejected(Raw::default().file(&name, b"x").finish(), "longer than 255");
}

#[test]
fn invalid_utf8_names_stay_inside() {
    let archive = Raw::default().entry(b"npm/\xff\xfe.js", EntryType::Regular, b"", b"x", 0o644).finish();
    let (result, _keep) = run(archive, Limits::default());
    assert_eq!(result.unwrap().files, 1);
}

#[test]
fn duplicates_and_type_changes_are_rejected() {
    rejected(Raw::default().file("f", b"1").file("f", b"2").finish(), "duplicate");
    rejected(Raw::default().file("f", b"1").entry(b"f/", EntryType::Directory, b"", b"", 0o755).finish(), "replaces");
    rejected(Raw::default().file("f", b"1").file("f/g", b"2").finish(), "non-directory");
}

#[test]
fn decompression_bomb_hits_the_size_limit() {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut h = Header::new_gnu();
    h.set_path("bomb").unwrap();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        enc.write_all(&zeros).unwrap();
    }
    enc.write_all(&[0; 1024]).unwrap();
    let gz = enc.finish().unwrap();
    assert!(gz.len() < 1 << 20, "a small archive that expands 64x");
    let limits = Limits { max_bytes: 8 << 20, ..Limits::default() };
    let (result, _keep) = run(gz, limits);
    assert!(matches!(result, Err(ExtractError::Limit { what: "expanded size", .. })), "{result:?}");
}

#[test]
fn entry_count_limit() {
    let mut raw = Raw::default();
    for i in 0..20 {
        raw = raw.file(&format!("f{i}"), b"x");
    }
    let limits = Limits { max_entries: 10, ..Limits::default() };
    let (result, _keep) = run(raw.finish(), limits);
    assert!(matches!(result, Err(ExtractError::Limit { what: "entry count", .. })), "{result:?}");
}

#[test]
fn garbage_empty_and_truncated_streams_are_corrupt() {
    for (name, bytes) in [
        ("garbage", b"this is not an archive at all, not even close".repeat(20)),
        ("empty", Vec::new()),
        ("truncated gzip", {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&Raw::default().file("a", &[7; 100_000]).finish()).unwrap();
            let gz = enc.finish().unwrap();
            gz[..gz.len() / 2].to_vec()
        }),
    ] {
        let (result, _keep) = run(bytes, Limits::default());
        assert!(matches!(result, Err(ExtractError::Corrupt { .. })), "{name}: {result:?}");
    }
}
