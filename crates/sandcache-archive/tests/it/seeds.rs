//! Replays the committed fuzz seeds (`fuzz/seeds/archive_reader` and
//! `fuzz/seeds/manifest_parser`) through the fuzz targets' code paths,
//! without libFuzzer: no panic, nothing outside the staging dir changes, a
//! seed named `ok-*` is accepted and one named `bad-*` refused (seeds found
//! by the fuzzer keep their hash names and are only replayed).
//!
//! `regenerate_seeds` (ignored) writes the named seeds again:
//! `cargo test -p sandcache-archive --test it seeds::regenerate_seeds -- --ignored`.

use std::fs;
use std::io::Write;
use std::path::Path;

use sandcache_archive::Limits;
use sandcache_archive::pack::{self, BuiltPack, Entry, Manifest, PackBuilder, PackRef};
use sandcache_testkit::raw::Raw;
use sandcache_testkit::seeds;
use tar::{EntryType, Header};

/// The fuzz targets' checks, the very code the fuzzers run.
mod archive_reader {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/checks/archive_reader.rs"));
}
mod manifest_parser {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/checks/manifest_parser.rs"));
}

#[test]
fn archive_reader_seeds_replay() {
    seeds::replay("archive_reader", archive_reader::run);
}

#[test]
fn manifest_parser_seeds_replay() {
    seeds::replay("manifest_parser", manifest_parser::run);
}

// --- the named seeds ---

fn with(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![selector];
    v.extend_from_slice(body);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A tar written by the tar crate's builder (ustar/GNU headers).
fn built(entries: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link, data) in entries {
        let mut h = Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(if *kind == EntryType::Directory { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        if link.is_empty() {
            b.append_data(&mut h, path, *data).unwrap();
        } else {
            b.append_link(&mut h, path, link).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A pax extended header (`x`) setting `path`, then a file under any name.
fn pax_file(path: &[u8], data: &[u8]) -> Vec<u8> {
    let rec = |len: usize| [format!("{len} path=").into_bytes(), path.to_vec(), b"\n".to_vec()].concat();
    let mut n = rec(0).len();
    while rec(n).len() != n {
        n = rec(n).len();
    }
    let mut raw =
        Raw::default().entry(b"PaxHeaders/x", EntryType::XHeader, b"", &rec(n), 0o644).file("x", data).finish();
    // Raw writes GNU headers; pax archives carry ustar ones.
    for block in [0, 1024] {
        raw[block + 257..block + 265].copy_from_slice(b"ustar\x0000");
        let mut h = Header::from_byte_slice(&raw[block..block + 512]).clone();
        h.set_cksum();
        raw[block..block + 512].copy_from_slice(h.as_bytes());
    }
    raw
}

fn archive_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use EntryType::{Block, Char, Directory as Dir, Fifo, Link, Regular as Reg, Symlink};
    let relative = built(&[
        ("npm/", Dir, "", b""),
        ("npm/a.js", Reg, "", b"export const a = 1;\n"),
        ("npm/latest", Symlink, "a.js", b""),
        ("npm/b.js", Link, "npm/a.js", b""),
        ("deps.json", Reg, "", b"{}"),
    ]);
    let rooted = built(&[
        ("deno-dir/", Dir, "", b""),
        ("deno-dir/remote/", Dir, "", b""),
        ("deno-dir/remote/https/x.js", Reg, "", b"console.log(1)\n"),
        ("deno-dir/npm/link", Symlink, "/deno-dir/remote/https/x.js", b""),
    ]);
    let dotted = built(&[("./", Dir, "", b""), ("./npm/", Dir, "", b""), ("./npm/a", Reg, "", b"a")]);
    let long = "a".repeat(120) + "/" + &"b".repeat(120);
    let mut bad_crc = gzip(&relative);
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let bomb = zstd::bulk::compress(&Raw::default().file("zeros", &vec![0; 9 << 20]).finish(), 19).unwrap();
    let mut truncated = Raw::default().file("f", &[7; 2000]).finish();
    truncated.truncate(512 + 1000);
    let sym = |name: &[u8], target: &[u8]| (name.to_vec(), Symlink, target.to_vec());
    let raw_entries = |list: &[(Vec<u8>, EntryType, Vec<u8>)]| {
        let mut r = Raw::default();
        for (name, kind, link) in list {
            let data: &[u8] = if *kind == Reg { b"x" } else { b"" };
            r = r.entry(name, *kind, link, data, 0o644);
        }
        r.finish()
    };
    let file = |name: &[u8]| (name.to_vec(), Reg, Vec::new());
    let dir = |name: &[u8]| (name.to_vec(), Dir, Vec::new());
    let link = |name: &[u8], target: &[u8]| (name.to_vec(), Link, target.to_vec());
    vec![
        ("ok-raw-relative-tar", with(0, &relative)),
        ("ok-raw-rooted-tgz", with(0, &gzip(&rooted))),
        ("ok-raw-dotted-tar-zst", with(0, &zstd::bulk::compress(&dotted, 3).unwrap())),
        ("ok-gz-gnu-longname", with(1, &raw_entries(&[file(long.as_bytes()), sym(b"l", long.as_bytes())]))),
        ("ok-zst-pax-path", with(2, &pax_file(long.as_bytes(), b"pax"))),
        ("ok-raw-absolute-under-target", with(0, &raw_entries(&[dir(b"/deno-dir/"), file(b"/deno-dir/a")]))),
        ("ok-gz-rooted-elsewhere", with(1, &raw_entries(&[dir(b"tmp/x/deno-dir/"), file(b"tmp/x/deno-dir/f")]))),
        ("bad-raw-dotdot", with(0, &raw_entries(&[file(b"../escape")]))),
        ("bad-gz-dotdot-nested", with(1, &raw_entries(&[file(b"a/../../escape")]))),
        ("bad-raw-absolute", with(0, &raw_entries(&[file(b"/etc/sandcache-fuzz")]))),
        ("bad-raw-symlink-escape-write", with(0, &raw_entries(&[sym(b"l", b"/etc"), file(b"l/passwd")]))),
        ("bad-zst-symlink-up", with(2, &raw_entries(&[sym(b"l", b"../..")]))),
        ("bad-raw-symlink-dotdot-after-name", with(0, &raw_entries(&[sym(b"a", b"."), sym(b"b", b"a/../x")]))),
        ("bad-gz-write-through-symlink", with(1, &raw_entries(&[dir(b"d/"), sym(b"l", b"d"), file(b"l/x")]))),
        ("bad-raw-hardlink-absolute", with(0, &raw_entries(&[link(b"h", b"/etc/passwd")]))),
        ("bad-raw-hardlink-dotdot", with(0, &raw_entries(&[link(b"h", b"../bait")]))),
        ("bad-zst-hardlink-to-symlink", with(2, &raw_entries(&[file(b"f"), sym(b"s", b"f"), link(b"h", b"s")]))),
        ("bad-raw-char-device", with(0, &raw_entries(&[(b"c".to_vec(), Char, Vec::new())]))),
        ("bad-raw-block-device", with(0, &raw_entries(&[(b"b".to_vec(), Block, Vec::new())]))),
        ("bad-gz-fifo", with(1, &raw_entries(&[(b"p".to_vec(), Fifo, Vec::new())]))),
        ("bad-raw-dir-over-file", with(0, &raw_entries(&[file(b"f"), dir(b"f/")]))),
        ("bad-raw-duplicate", with(0, &raw_entries(&[file(b"f"), file(b"f")]))),
        ("bad-raw-target-itself-as-file", with(0, &raw_entries(&[file(b".")]))),
        ("bad-raw-longname-dotdot", with(0, &raw_entries(&[file(format!("../{long}").as_bytes())]))),
        ("bad-raw-pax-path-dotdot", with(0, &pax_file(format!("../../{long}").as_bytes(), b"x"))),
        ("bad-raw-truncated", with(0, &truncated)),
        ("bad-raw-gzip-crc", with(0, &bad_crc)),
        ("bad-raw-zstd-bomb", with(0, &bomb)),
        ("bad-raw-not-an-archive", with(0, b"hello, not an archive")),
        ("bad-raw-empty", with(0, b"")),
    ]
}

fn file_entry(path: &str, frame: u32, offset: u64, data: &[u8]) -> Entry {
    let mut e = Entry::file(path.into(), 0o644, 1, data.len() as u64, blake3::hash(data).to_hex().to_string());
    e.frame = Some(frame);
    e.offset = offset;
    e
}

/// A manifest as snapshot writes one: a dir, two small files sharing a
/// frame, a file spanning three frames, a symlink.
fn sample_manifest() -> Manifest {
    let mut done: Vec<BuiltPack> = Vec::new();
    let mut b = PackBuilder::new(3);
    let (a, c) = (b"hello".to_vec(), b"export {};\n".to_vec());
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (fa, oa) = b.add(&a, &mut done);
    let (fc, oc) = b.add(&c, &mut done);
    let (fb, ob) = b.add(&big, &mut done);
    b.finish(&mut done);
    let p = done.remove(0);
    assert!(done.is_empty());
    Manifest {
        version: pack::VERSION,
        created_ms: 1_700_000_000_000,
        packs: vec![PackRef { id: p.id.clone(), size: p.bytes.len() as u64, hot: false }],
        frames: p.frames.clone(),
        entries: vec![
            Entry::dir("d".into(), 0o755, 1),
            file_entry("d/a", fa, oa, &a),
            file_entry("d/c.js", fc, oc, &c),
            file_entry("d/big", fb, ob, &big),
            Entry::symlink("d/l".into(), "a".into(), 0o777, 1),
            Entry::symlink("abs".into(), "/deno-dir/d/a".into(), 0o777, 1),
        ],
        pieces: Vec::new(),
        hot: Vec::new(),
    }
}

fn manifest_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let good = sample_manifest();
    good.validate(&Limits::default(), Path::new("/deno-dir")).unwrap();
    let json = |m: &Manifest| with(1, &serde_json::to_vec_pretty(m).unwrap());
    type Mutation = fn(&mut Manifest);
    let mutations: [(&'static str, Mutation); 17] = [
        ("bad-json-frame-past-pack-end", |m| m.frames[0].clen = m.packs[0].size + 1),
        ("bad-json-frames-overlap", |m| m.frames[1].offset = m.frames[0].offset),
        ("bad-json-offset-past-frame", |m| m.entries[1].offset = m.frames[0].rawlen),
        ("bad-json-unknown-frame", |m| m.entries[1].frame = Some(99)),
        ("bad-json-unknown-pack", |m| m.frames[0].pack = 7),
        ("bad-json-traversal", |m| m.entries[1].path = "../escape".into()),
        ("bad-json-absolute-path", |m| m.entries[1].path = "/etc/passwd".into()),
        ("bad-json-empty-component", |m| m.entries[1].path = "d//a".into()),
        ("bad-json-duplicate", |m| m.entries[2].path = "d/a".into()),
        ("bad-json-version", |m| m.version = 99),
        ("bad-json-pack-id", |m| m.packs[0].id = "../../x".into()),
        ("bad-json-huge-frame", |m| m.frames[0].rawlen = 1 << 40),
        ("bad-json-missing-hash", |m| m.entries[1].hash = None),
        ("bad-json-symlink-escape", |m| m.entries[4].target = Some("/etc".into())),
        ("bad-json-write-through-symlink", |m| m.entries[1].path = "d/l/a".into()),
        ("bad-json-big-runs-past-last-frame", |m| m.entries[3].size += 1),
        ("bad-json-spans-without-frame-start", |m| m.entries[3].offset = 1),
    ];
    let frame_seed = |flags: u8, rawlen: u32, bytes: &[u8]| [&[3, flags][..], &rawlen.to_le_bytes(), bytes].concat();
    let text = b"a frame of raw content, a frame of raw content".as_slice();
    let mut seeds = vec![
        ("ok-zstd-manifest", with(0, &good.encode())),
        ("ok-json-manifest", json(&good)),
        ("ok-json-zstd-here-manifest", with(2, &serde_json::to_vec(&good).unwrap())),
        ("ok-json-empty-manifest", with(1, br#"{"version":1,"created_ms":0,"packs":[],"frames":[],"entries":[]}"#)),
        ("bad-zstd-not-zstd", with(0, b"not zstd")),
        ("bad-zstd-not-json", with(0, &zstd::bulk::compress(b"{nope", 1).unwrap())),
        ("bad-json-not-an-object", with(1, b"[1,2,3]")),
        ("ok-frame-honest", frame_seed(7, 0, text)),
        ("bad-frame-wrong-hash", frame_seed(5, 0, text)),
        ("bad-frame-wrong-rawlen", frame_seed(3, 7, text)),
        ("bad-frame-not-zstd", frame_seed(4, 0, text)),
        ("bad-frame-precompressed-unhashed", frame_seed(0, text.len() as u32, &zstd::bulk::compress(text, 3).unwrap())),
    ];
    for (name, mutate) in mutations {
        let mut m = good.clone();
        mutate(&mut m);
        seeds.push((name, json(&m)));
    }
    seeds
}

#[test]
#[ignore = "writes the named seeds into fuzz/seeds"]
fn regenerate_seeds() {
    for (target, list) in [("archive_reader", archive_seeds()), ("manifest_parser", manifest_seeds())] {
        fs::create_dir_all(seeds::dir(target)).unwrap();
        for (name, data) in list {
            fs::write(seeds::dir(target).join(name), data).unwrap();
        }
    }
}
