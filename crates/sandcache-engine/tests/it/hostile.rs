//! The hostile-archive corpus, end to end through the engine.
//!
//! Each case is written once, as a list of abstract entries, and encoded in
//! every form that can carry it: tgz, tar.zst, and the native layout (a
//! manifest and one pack, built by hand). Each encoding is stored alone under
//! a fresh local store and restored over a target that already holds a
//! complete tree, with bait files beside it and in the sandbox root.
//!
//! A case is either rejected, with its reason and a detail naming the
//! offending path or the rule, or neutralised: restored, with its hostile
//! part made harmless. The filesystem around the target is recorded before
//! and after (kinds, modes, inodes, link counts, sizes, times to the
//! nanosecond and content hashes): a rejected case changes nothing outside
//! the store, byte for byte, and leaves no staging behind; a neutralised one
//! changes only the target and sandcache's state files beside it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sandcache_archive::Limits;
use sandcache_archive::pack::{self, Entry, Frame, Manifest, PackBuilder, PackRef};
use sandcache_engine::{Cache, Reason, RestoreOptions};
use sandcache_store::{LocalStore, Store};
use sandcache_testkit::tree::{noise, sample_tree, sandbox_state};
use serde_json::{Value, json};

const KEY: &str = "site/cache";
const MTIME: i64 = 1_700_000_000;
/// What the long-name and pax header bombs claim, and hold (as zeros).
const HEADER_BOMB: u64 = 1 << 30;

// ------------------------------------------------------------ the model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Tgz,
    TarZst,
    Native,
}

impl Form {
    const ALL: [Form; 3] = [Form::Tgz, Form::TarZst, Form::Native];

    fn name(self) -> &'static str {
        match self {
            Form::Tgz => "tgz",
            Form::TarZst => "tar.zst",
            Form::Native => "native",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    /// Tar has no socket type (GNU tar refuses to archive one): the tar forms
    /// write a type byte no tar reader knows; the native form has no socket
    /// kind, so its manifest says `"socket"`.
    Socket,
    /// A raw tar header of this type byte (`L`, `x`...), whose data is the
    /// entry's data: archive forms only.
    Ext(u8),
}

enum Data {
    Bytes(Vec<u8>),
    /// This many zero bytes, streamed: never held in memory.
    Zeros(u64),
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Zeros(n) => *n,
        }
    }

    /// Calls `f` on consecutive pieces of at most `max` bytes.
    fn each_piece(&self, max: usize, mut f: impl FnMut(&[u8])) {
        match self {
            Data::Bytes(b) => b.chunks(max).for_each(f),
            Data::Zeros(n) => {
                let zeros = vec![0u8; max];
                let mut left = *n;
                while left > 0 {
                    let k = left.min(max as u64) as usize;
                    f(&zeros[..k]);
                    left -= k as u64;
                }
            }
        }
    }
}

/// One abstract entry: what every encoder writes, each in its own way.
struct E {
    path: Vec<u8>,
    kind: Kind,
    link: Vec<u8>,
    mode: u32,
    mtime: i64,
    data: Data,
}

impl E {
    fn new(path: impl AsRef<[u8]>, kind: Kind) -> E {
        let mode = match kind {
            Kind::Dir => 0o755,
            Kind::Symlink => 0o777,
            _ => 0o644,
        };
        E { path: path.as_ref().to_vec(), kind, link: Vec::new(), mode, mtime: MTIME, data: Data::Bytes(Vec::new()) }
    }

    fn mode(mut self, mode: u32) -> E {
        self.mode = mode;
        self
    }

    fn mtime(mut self, mtime: i64) -> E {
        self.mtime = mtime;
        self
    }
}

fn file(path: impl AsRef<[u8]>, data: &[u8]) -> E {
    E { data: Data::Bytes(data.to_vec()), ..E::new(path, Kind::File) }
}

fn zeros(path: &str, n: u64) -> E {
    E { data: Data::Zeros(n), ..E::new(path, Kind::File) }
}

fn dir(path: &str) -> E {
    E::new(path, Kind::Dir)
}

fn link(kind: Kind, path: &str, target: impl AsRef<[u8]>) -> E {
    E { link: target.as_ref().to_vec(), ..E::new(path, kind) }
}

fn symlink_e(path: &str, target: impl AsRef<[u8]>) -> E {
    link(Kind::Symlink, path, target)
}

fn hardlink(path: &str, target: impl AsRef<[u8]>) -> E {
    link(Kind::Hardlink, path, target)
}

fn node(path: &str, kind: Kind) -> E {
    E::new(path, kind)
}

/// A raw extension header (`L` long name, `x` pax) and its payload.
fn ext(kind: u8, data: Data) -> E {
    let name: &[u8] = if kind == b'x' { b"PaxHeaders/entry" } else { b"././@LongLink" };
    E { data, ..E::new(name, Kind::Ext(kind)) }
}

/// Pax records: `LEN key=value\n`, LEN counting itself.
fn pax(records: &[(&str, &[u8])]) -> Data {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    Data::Bytes(out)
}

/// A check of a restored dir; errors say what is wrong.
type Check = fn(&Path, Form) -> Result<(), String>;

#[derive(Clone, Copy)]
enum Expect {
    /// Skipped with this reason, the detail containing each string.
    Rejected(Reason, &'static [&'static str]),
    /// Restored, and the check passes on the restored dir.
    Neutralised(Check),
}

fn rejected(reason: Reason, detail: &'static [&'static str]) -> Option<Expect> {
    Some(Expect::Rejected(reason, detail))
}

fn neutralised(check: Check) -> Option<Expect> {
    Some(Expect::Neutralised(check))
}

/// Damage done to a form once encoded.
#[derive(Clone, Copy)]
enum Tamper {
    None,
    /// The stored archive, or the native form's pack, cut in half.
    Truncate,
    /// Garbage in place of the archive, or of the native manifest.
    Garbage,
    /// Native: edits to the manifest and pack before they are stored.
    Native(fn(&mut Native)),
}

struct Case {
    name: &'static str,
    entries: Vec<E>,
    /// The tgz and tar.zst forms; `None` where the case has no tar form.
    tar: Option<Expect>,
    /// `None` where the case has no native form.
    native: Option<Expect>,
    limits: Limits,
    tamper: Tamper,
    /// The most the process's peak RSS may grow during a run of the case.
    max_rss_growth: Option<u64>,
}

fn case(name: &'static str, entries: Vec<E>, tar: Option<Expect>, native: Option<Expect>) -> Case {
    Case { name, entries, tar, native, limits: Limits::default(), tamper: Tamper::None, max_rss_growth: None }
}

impl Case {
    fn limits(mut self, limits: Limits) -> Case {
        self.limits = limits;
        self
    }

    fn tamper(mut self, tamper: Tamper) -> Case {
        self.tamper = tamper;
        self
    }

    fn max_rss_growth(mut self, bytes: u64) -> Case {
        self.max_rss_growth = Some(bytes);
        self
    }

    fn expect(&self, form: Form) -> Option<Expect> {
        if form == Form::Native { self.native } else { self.tar }
    }
}

// ------------------------------------------------------------- the table

/// Where a case runs: one sandbox path, emptied and rebuilt for each run, so
/// the table can name absolute paths in it.
struct Ctx {
    sandbox: PathBuf,
    /// `<sandbox>/work/deno-dir`
    target: PathBuf,
    /// `<sandbox>/outside`, holding `secret`.
    outside: PathBuf,
}

fn b(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

fn table(ctx: &Ctx) -> Vec<Case> {
    use Reason::{Corrupt, NotFound, TooLarge, Unsafe};
    let outside_evil = b(&ctx.outside.join("evil"));
    let outside_secret = b(&ctx.outside.join("secret"));
    let bait_beside = b(&ctx.sandbox.join("work/bait"));
    let inside_abs = b(&ctx.target.join("npm/abs.js"));
    let inside_link = b(&ctx.target.join("npm/a.js"));
    let long_name = format!("{}f", "d123456789/".repeat(460));
    let mut nul_name = format!("npm/{}", "n".repeat(100)).into_bytes();
    nul_name.extend_from_slice(b"\0evil.js");
    let hardlink_corrupt = rejected(Corrupt, &["manifest is not valid", "unknown variant `hardlink`"]);
    let small = Limits { max_bytes: 8 << 20, ..Limits::default() };

    vec![
        // Traversal and absolute paths.
        case(
            "traversal",
            vec![file("npm/ok.js", b"ok"), file("../escape", b"x")],
            rejected(Unsafe, &["../escape", "`..`"]),
            rejected(Unsafe, &["../escape", "`..`"]),
        ),
        case(
            "traversal-deep",
            vec![file("npm/../../../outside/secret", b"pwned")],
            rejected(Unsafe, &["npm/../../../outside/secret", "`..`"]),
            rejected(Unsafe, &["npm/../../../outside/secret", "`..`"]),
        ),
        case(
            "absolute-outside",
            vec![file(&outside_evil, b"pwned")],
            rejected(Unsafe, &["/outside/evil", "absolute path outside the target"]),
            rejected(Unsafe, &["/outside/evil", "empty or `.` component"]),
        ),
        case(
            "absolute-onto-bait",
            vec![file(&bait_beside, b"pwned")],
            rejected(Unsafe, &["/work/bait", "absolute path outside the target"]),
            rejected(Unsafe, &["/work/bait", "empty or `.` component"]),
        ),
        case(
            "absolute-inside-target",
            vec![file(&inside_abs, b"abs")],
            neutralised(|d, _| content(d, "npm/abs.js", b"abs")),
            rejected(Unsafe, &["/work/deno-dir/npm/abs.js", "empty or `.` component"]),
        ),
        // Symlinks.
        case(
            "symlink-escape-then-write",
            vec![symlink_e("l", b(&ctx.outside)), file("l/secret", b"pwned")],
            rejected(Unsafe, &["`l`", "symlink points outside the target"]),
            rejected(Unsafe, &["`l`", "symlink points outside the target"]),
        ),
        case(
            "symlink-dotdot-escape",
            vec![dir("npm"), symlink_e("npm/up", "../../bait")],
            rejected(Unsafe, &["npm/up", "symlink points outside the target"]),
            rejected(Unsafe, &["npm/up", "symlink points outside the target"]),
        ),
        case(
            "symlink-dotdot-after-name",
            vec![symlink_e("a", "."), symlink_e("b", "a/../../bait")],
            rejected(Unsafe, &["`b`", "`..` after a name"]),
            rejected(Unsafe, &["`b`", "`..` after a name"]),
        ),
        case(
            "symlink-to-dir-then-file-under",
            vec![dir("d"), symlink_e("l", "d"), file("l/file", b"x")],
            rejected(Unsafe, &["l/file", "through a symlink"]),
            rejected(Unsafe, &["l/file", "through a symlink"]),
        ),
        case(
            "symlink-up-then-write",
            vec![dir("npm"), symlink_e("npm/up", ".."), file("npm/up/x", b"x")],
            rejected(Unsafe, &["npm/up/x", "through a symlink"]),
            rejected(Unsafe, &["npm/up/x", "through a symlink"]),
        ),
        case(
            "symlink-loop",
            vec![symlink_e("a", "b"), symlink_e("b", "a"), file("a/x", b"x")],
            rejected(Unsafe, &["a/x", "through a symlink"]),
            rejected(Unsafe, &["a/x", "through a symlink"]),
        ),
        case(
            "symlink-absolute-inside",
            vec![dir("npm"), file("npm/a.js", b"a"), symlink_e("latest", &inside_link)],
            neutralised(|d, _| link_to(d, "latest", &d.join("npm/a.js"))),
            neutralised(|d, _| link_to(d, "latest", &d.join("npm/a.js"))),
        ),
        // Hardlinks.
        case(
            "hardlink-out-absolute",
            vec![hardlink("h", &outside_secret)],
            rejected(Unsafe, &["h -> /", "/outside/secret", "absolute path outside the target"]),
            hardlink_corrupt,
        ),
        case(
            "hardlink-out-dotdot",
            vec![hardlink("h", "../bait")],
            rejected(Unsafe, &["h -> ../bait", "`..`"]),
            hardlink_corrupt,
        ),
        case(
            "hardlink-through-symlink",
            vec![dir("npm"), file("npm/a", b"a"), symlink_e("l", "npm"), hardlink("h", "l/a")],
            rejected(Unsafe, &["h -> l/a", "through a symlink"]),
            hardlink_corrupt,
        ),
        case(
            "hardlink-to-symlink",
            vec![file("a", b"a"), symlink_e("s", "a"), hardlink("h", "s")],
            rejected(Unsafe, &["h -> s", "hardlink to something other than a regular file"]),
            hardlink_corrupt,
        ),
        case(
            "hardlink-inside",
            vec![file("a", b"same"), hardlink("b", "a")],
            neutralised(|d, _| {
                let ino = |p: &str| fs::symlink_metadata(d.join(p)).map(|m| m.ino()).map_err(|e| format!("{p}: {e}"));
                if ino("a")? != ino("b")? {
                    return Err("a and b are not one file".into());
                }
                content(d, "b", b"same")
            }),
            hardlink_corrupt,
        ),
        // Nodes.
        case(
            "char-device",
            vec![node("null", Kind::Char)],
            rejected(Unsafe, &["`null`", "device and fifo nodes are never created"]),
            rejected(Corrupt, &["manifest is not valid", "unknown variant `char`"]),
        ),
        case(
            "block-device",
            vec![node("sda", Kind::Block)],
            rejected(Unsafe, &["`sda`", "device and fifo nodes are never created"]),
            rejected(Corrupt, &["manifest is not valid", "unknown variant `block`"]),
        ),
        case(
            "fifo",
            vec![node("pipe", Kind::Fifo)],
            rejected(Unsafe, &["`pipe`", "device and fifo nodes are never created"]),
            rejected(Corrupt, &["manifest is not valid", "unknown variant `fifo`"]),
        ),
        case(
            "socket",
            vec![node("sock", Kind::Socket)],
            rejected(Unsafe, &["`sock`", "unsupported entry type 's' (0x73)"]),
            rejected(Corrupt, &["manifest is not valid", "unknown variant `socket`"]),
        ),
        // Modes.
        case(
            "setuid-setgid-sticky",
            vec![
                dir("sticky").mode(0o1777),
                file("sticky/suid", b"#!/bin/sh\n").mode(0o6755),
                file("sgid", b"x").mode(0o2711),
            ],
            neutralised(modes_dropped),
            neutralised(modes_dropped),
        ),
        case(
            "dir-mode-000",
            vec![dir("locked").mode(0), file("locked/f", b"x")],
            neutralised(locked_opened),
            neutralised(locked_opened),
        ),
        case(
            "mtime-extremes",
            vec![file("future", b"f").mtime(i64::MAX), file("past", b"p").mtime(-1), file("ok", b"o")],
            neutralised(extreme_mtimes),
            neutralised(extreme_mtimes),
        ),
        // Names.
        case(
            "name-over-4k",
            vec![file(&long_name, b"x")],
            rejected(Unsafe, &["d123456789/d123456789/", "path is 5061 bytes, over the limit of 4096"]),
            rejected(Unsafe, &["d123456789/d123456789/", "over the length limit"]),
        ),
        case(
            "component-over-255",
            vec![file(format!("npm/{}", "c".repeat(300)), b"x")],
            rejected(Unsafe, &["npm/ccc", "a path component is longer than 255 bytes"]),
            rejected(Unsafe, &["npm/ccc", "a path component is longer than 255 bytes"]),
        ),
        case(
            "path-over-configured-limit",
            vec![file("npm/ok.js", b"ok"), file(format!("npm/{}", "p".repeat(100)), b"x")],
            rejected(Unsafe, &["npm/ppp", "over the limit of 64"]),
            rejected(Unsafe, &["npm/ppp", "over the length limit"]),
        )
        .limits(Limits { max_path_len: 64, ..Limits::default() }),
        case(
            "invalid-utf8-name",
            vec![file("npm/ok.js", b"ok"), file(b"npm/\xff\xfe.js", b"bytes")],
            neutralised(odd_name_inside),
            neutralised(odd_name_inside),
        ),
        case(
            "lone-surrogate-name",
            vec![file("npm/SURROGATE.js", b"x")],
            None,
            rejected(Corrupt, &["manifest is not valid", "lone leading surrogate"]),
        )
        .tamper(Tamper::Native(|n| n.patch = Some(("SURROGATE", "\\ud800\\u0041")))),
        case(
            "nul-in-name",
            vec![file(&nul_name, b"x")],
            rejected(Unsafe, &["npm/nnn", "NUL in a path"]),
            rejected(Unsafe, &["npm/nnn", "NUL in a path"]),
        ),
        case(
            "nul-in-symlink-target",
            vec![dir("npm"), symlink_e("l", &nul_name)],
            rejected(Unsafe, &["`l`", "NUL in a symlink target"]),
            rejected(Unsafe, &["`l`", "NUL in a symlink target"]),
        ),
        case(
            "empty-name",
            vec![file("", b"x")],
            rejected(Unsafe, &["names the target directory itself but is not a directory"]),
            rejected(Unsafe, &["empty path"]),
        ),
        // Duplicates and type changes.
        case(
            "duplicate-file",
            vec![file("f", b"1"), file("f", b"2")],
            rejected(Unsafe, &["`f`", "duplicate entry"]),
            rejected(Unsafe, &["`f`", "duplicate entry"]),
        ),
        case(
            "file-replaced-by-dir",
            vec![file("f", b"1"), dir("f")],
            rejected(Unsafe, &["`f/`", "a directory replaces an earlier non-directory entry"]),
            rejected(Unsafe, &["`f`", "duplicate entry"]),
        ),
        case(
            "dir-replaced-by-file",
            vec![dir("d"), file("d", b"x")],
            rejected(Unsafe, &["`d`", "duplicate entry"]),
            rejected(Unsafe, &["`d`", "duplicate entry"]),
        ),
        case(
            "file-under-a-file",
            vec![file("f", b"1"), file("f/g", b"2")],
            rejected(Unsafe, &["f/g", "a non-directory"]),
            rejected(Unsafe, &["f/g", "a non-directory"]),
        ),
        case(
            "symlink-replaces-file",
            vec![file("f", b"1"), symlink_e("f", "g")],
            rejected(Unsafe, &["`f`", "duplicate entry"]),
            rejected(Unsafe, &["`f`", "duplicate entry"]),
        ),
        case(
            "symlink-replaces-dir",
            vec![dir("npm"), dir("d"), symlink_e("d", "npm")],
            rejected(Unsafe, &["`d`", "duplicate entry"]),
            rejected(Unsafe, &["`d`", "duplicate entry"]),
        ),
        // Limits and bombs.
        case(
            "decompression-bomb",
            vec![zeros("bomb", 64 << 20)],
            rejected(TooLarge, &["expanded size limit of 8388608"]),
            rejected(TooLarge, &["expanded size limit of 8388608"]),
        )
        .limits(small),
        case(
            "entry-count",
            (0..20).map(|i| file(format!("f{i}"), b"x")).collect(),
            rejected(TooLarge, &["entry count limit of 10"]),
            rejected(TooLarge, &["entry count limit of 10"]),
        )
        .limits(Limits { max_entries: 10, ..Limits::default() }),
        // The tar crate reads these payloads whole into memory, as large as
        // their size field says: 1 GiB here, unless capped first.
        case(
            "long-name-header-bomb",
            vec![ext(b'L', Data::Zeros(HEADER_BOMB)), file("x", b"x")],
            rejected(TooLarge, &["tar header (long name or pax records) size limit of 81920"]),
            None,
        )
        .max_rss_growth(HEADER_BOMB / 4),
        case(
            "pax-header-bomb",
            vec![ext(b'x', Data::Zeros(HEADER_BOMB)), file("x", b"x")],
            rejected(TooLarge, &["tar header (long name or pax records) size limit of 81920"]),
            None,
        )
        .max_rss_growth(HEADER_BOMB / 4),
        case(
            "pax-path-traversal",
            vec![file("npm/ok.js", b"ok"), ext(b'x', pax(&[("path", b"../escape")])), file("innocent.js", b"x")],
            rejected(Unsafe, &["../escape", "`..`"]),
            None,
        ),
        case(
            "pax-linkpath-escape",
            vec![dir("npm"), ext(b'x', pax(&[("linkpath", &b(&ctx.outside))])), symlink_e("l", "npm")],
            rejected(Unsafe, &["`l`", "symlink points outside the target"]),
            None,
        ),
        case(
            "truncated",
            vec![file("npm/a.js", &noise(200_000, "truncated"))],
            rejected(Corrupt, &["corrupt archive"]),
            rejected(Corrupt, &[".pack` is ", "shorter than its manifest says"]),
        )
        .tamper(Tamper::Truncate),
        case(
            "garbage",
            vec![file("npm/a.js", b"a")],
            rejected(Corrupt, &["unrecognised magic bytes"]),
            rejected(Corrupt, &["manifest is not zstd"]),
        )
        .tamper(Tamper::Garbage),
        // Native manifests and packs.
        case(
            "frames-overlap",
            vec![file("a", b"aaaa"), file("b", b"bbbb")],
            None,
            rejected(Corrupt, &["frames overlap"]),
        )
        .tamper(Tamper::Native(|n| n.m.frames[1].offset = n.m.frames[0].offset)),
        case(
            "frame-past-pack-end",
            vec![file("a", b"aaaa"), file("b", b"bbbb")],
            None,
            rejected(Corrupt, &["frame 1", "falls outside pack"]),
        )
        .tamper(Tamper::Native(|n| n.m.frames[1].offset = n.packs[0].len() as u64 - 2)),
        case(
            "file-offset-past-frame",
            vec![file("npm/a.js", b"aaaa")],
            None,
            rejected(Corrupt, &["npm/a.js", "past the end of frame 0"]),
        )
        .tamper(Tamper::Native(|n| n.m.entries[0].offset = n.m.frames[0].rawlen)),
        case("unknown-frame", vec![file("npm/a.js", b"aaaa")], None, rejected(Corrupt, &["npm/a.js names frame 99"]))
            .tamper(Tamper::Native(|n| n.m.entries[0].frame = Some(99))),
        // A frame's hash is not checked on restore: every byte written is
        // checked against a file's hash before it can be used (a second
        // pass over the same bytes), so a lie there writes nothing that
        // was not verified. A frame of whole files...
        case(
            "frame-hash-mismatch-whole-files",
            vec![file("npm/a.js", b"aaaa")],
            None,
            neutralised(|d, _| content(d, "npm/a.js", b"aaaa")),
        )
        .tamper(Tamper::Native(|n| n.m.frames[0].hash = hex(b"something else"))),
        // ...and a frame holding part of a large file, checked as a whole
        // by its parts' hashes merged before the swap.
        case(
            "frame-hash-mismatch",
            vec![zeros("bin/big", 9 << 20)],
            None,
            neutralised(|d, _| content(d, "bin/big", &vec![0; 9 << 20])),
        )
        .tamper(Tamper::Native(|n| n.m.frames[0].hash = hex(b"something else"))),
        // A part whose bytes are not what the file's hash says is refused
        // all the same: here two large files' second frames are swapped
        // (each one is whole and true to its own hash).
        case(
            "large-file-parts-swapped",
            vec![zeros("bin/a", 8 << 20), file("bin/b", &vec![1; 8 << 20])],
            None,
            rejected(Corrupt, &["fails its BLAKE3 check"]),
        )
        .tamper(Tamper::Native(|n| n.m.frames.swap(1, 3))),
        case(
            "file-hash-mismatch",
            vec![file("npm/a.js", b"aaaa")],
            None,
            rejected(Corrupt, &["npm/a.js fails its BLAKE3 check"]),
        )
        .tamper(Tamper::Native(|n| n.m.entries[0].hash = Some(hex(b"something else")))),
        case(
            "large-file-hash-mismatch",
            vec![zeros("bin/big", 9 << 20)],
            None,
            rejected(Corrupt, &["bin/big fails its BLAKE3 check"]),
        )
        .tamper(Tamper::Native(|n| n.m.entries[0].hash = Some(hex(b"something else")))),
        case(
            "frame-larger-than-rawlen",
            vec![file("npm/a.js", &[7; 1000])],
            None,
            rejected(Corrupt, &["frame at 0 of pack 0 does not decode within its 999 bytes"]),
        )
        .tamper(Tamper::Native(|n| {
            n.m.frames[0].rawlen -= 1;
            n.m.entries[0].size -= 1;
        })),
        case("pack-missing", vec![file("npm/a.js", b"aaaa")], None, rejected(NotFound, &[".pack"]))
            .tamper(Tamper::Native(|n| n.upload_packs = false)),
        case(
            "pack-id-not-hex",
            vec![file("npm/a.js", b"aaaa")],
            None,
            rejected(Corrupt, &["../../outside/secret", "is not a BLAKE3 hex digest"]),
        )
        .tamper(Tamper::Native(|n| {
            n.fix_refs = false;
            n.upload_packs = false;
            n.m.packs[0].id = "../../outside/secret".into();
        })),
        case(
            "manifest-bomb",
            vec![file("npm/a.js", b"a")],
            None,
            rejected(Corrupt, &["manifest expands past 268435456 bytes"]),
        )
        .tamper(Tamper::Native(|n| {
            n.raw_manifest = Some(zstd(&[Part::Bytes(b"{".to_vec()), Part::Zeros(pack::MAX_MANIFEST as u64)]));
        })),
        case(
            "manifest-size-lie",
            vec![file("npm/a.js", b"aaaa")],
            None,
            rejected(TooLarge, &["expanded size limit of 34359738368"]),
        )
        .tamper(Tamper::Native(|n| n.m.entries[0].size = 1 << 40)),
    ]
}

// ------------------------------------------------------------- checks

fn content(dir: &Path, rel: impl AsRef<Path>, want: &[u8]) -> Result<(), String> {
    let rel = rel.as_ref();
    let got = fs::read(dir.join(rel)).map_err(|e| format!("{}: {e}", rel.display()))?;
    if got != want {
        return Err(format!("{} holds {} bytes, not the {} expected", rel.display(), got.len(), want.len()));
    }
    Ok(())
}

fn mode_of(dir: &Path, rel: &str) -> Result<u32, String> {
    fs::symlink_metadata(dir.join(rel)).map(|m| m.mode() & 0o7777).map_err(|e| format!("{rel}: {e}"))
}

fn want_mode(dir: &Path, rel: &str, want: u32) -> Result<(), String> {
    match mode_of(dir, rel)? {
        m if m == want => Ok(()),
        m => Err(format!("{rel} has mode {m:o}, not {want:o}")),
    }
}

fn modes_dropped(d: &Path, _: Form) -> Result<(), String> {
    want_mode(d, "sticky/suid", 0o755)?;
    want_mode(d, "sgid", 0o711)?;
    want_mode(d, "sticky", 0o777)
}

fn locked_opened(d: &Path, _: Form) -> Result<(), String> {
    // Owners keep rwx on every directory, so the tree can always be removed.
    want_mode(d, "locked", 0o700)?;
    content(d, "locked/f", b"x")
}

/// The invalid UTF-8 name is restored inside. JSON holds no invalid UTF-8:
/// the native form carries the closest name, with U+FFFD.
fn odd_name_inside(d: &Path, form: Form) -> Result<(), String> {
    let name: &[u8] = if form == Form::Native { "npm/\u{FFFD}\u{FFFD}.js".as_bytes() } else { b"npm/\xff\xfe.js" };
    content(d, OsStr::from_bytes(name), b"bytes")?;
    content(d, "npm/ok.js", b"ok")
}

/// Times past what a timestamp can say are clamped, never an error.
fn extreme_mtimes(d: &Path, _: Form) -> Result<(), String> {
    content(d, "future", b"f")?;
    content(d, "past", b"p")?;
    content(d, "ok", b"o")
}

fn link_to(d: &Path, rel: &str, want: &Path) -> Result<(), String> {
    let got = fs::read_link(d.join(rel)).map_err(|e| format!("{rel}: {e}"))?;
    if got != want {
        return Err(format!("{rel} points at {}, not {}", got.display(), want.display()));
    }
    Ok(())
}

fn hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

// ------------------------------------------------------------- encoders

enum Part {
    Bytes(Vec<u8>),
    Zeros(u64),
}

fn write_parts(w: &mut dyn Write, parts: &[Part]) {
    for p in parts {
        match p {
            Part::Bytes(b) => w.write_all(b).unwrap(),
            Part::Zeros(n) => Data::Zeros(*n).each_piece(1 << 20, |z| w.write_all(z).unwrap()),
        }
    }
}

fn gzip(parts: &[Part]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    write_parts(&mut enc, parts);
    enc.finish().unwrap()
}

/// zstd, by way of the pack builder: a pack is a run of zstd frames, which
/// is a zstd stream (this crate has no zstd dependency of its own).
fn zstd(parts: &[Part]) -> Vec<u8> {
    let mut builder = PackBuilder::new(3);
    let mut done = Vec::new();
    for p in parts {
        match p {
            Part::Bytes(b) => {
                builder.add(b, &mut done);
            }
            Part::Zeros(n) => Data::Zeros(*n).each_piece(1 << 20, |z| {
                builder.add(z, &mut done);
            }),
        }
    }
    builder.finish(&mut done);
    done.into_iter().flat_map(|p| p.bytes).collect()
}

/// The raw tar stream, GNU headers written byte by byte (any name, type,
/// target or size), with large payloads left as streamed zeros.
fn tar_parts(entries: &[E]) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    for e in entries {
        let ty = match e.kind {
            Kind::File => b'0',
            Kind::Hardlink => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
            Kind::Socket => b's',
            Kind::Ext(t) => t,
        };
        let mut name = e.path.clone();
        if e.kind == Kind::Dir && !name.ends_with(b"/") {
            name.push(b'/');
        }
        if name.len() > 99 {
            let mut v = name.clone();
            v.push(0);
            header(&mut cur, b"././@LongLink", b"", b'L', v.len() as u64, 0o644, 0);
            cur.extend_from_slice(&v);
            pad(&mut cur, v.len() as u64);
        }
        if e.link.len() > 99 {
            let mut v = e.link.clone();
            v.push(0);
            header(&mut cur, b"././@LongLink", b"", b'K', v.len() as u64, 0o644, 0);
            cur.extend_from_slice(&v);
            pad(&mut cur, v.len() as u64);
        }
        let size = e.data.len();
        header(&mut cur, &name[..name.len().min(99)], &e.link[..e.link.len().min(99)], ty, size, e.mode, e.mtime);
        match &e.data {
            Data::Bytes(d) => cur.extend_from_slice(d),
            Data::Zeros(n) => {
                parts.push(Part::Bytes(std::mem::take(&mut cur)));
                parts.push(Part::Zeros(*n));
            }
        }
        pad(&mut cur, size);
    }
    cur.extend_from_slice(&[0; 1024]);
    parts.push(Part::Bytes(cur));
    parts
}

fn header(out: &mut Vec<u8>, name: &[u8], link: &[u8], ty: u8, size: u64, mode: u32, mtime: i64) {
    let mut h = tar::Header::new_gnu();
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name);
    gnu.linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(tar::EntryType::new(ty));
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime.max(0) as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
}

fn pad(out: &mut Vec<u8>, size: u64) {
    out.extend(std::iter::repeat_n(0, ((512 - size % 512) % 512) as usize));
}

/// A native generation, before it is stored: tampers edit it.
struct Native {
    m: Manifest,
    packs: Vec<Vec<u8>>,
    /// Entries no manifest type can hold, as raw JSON, by position.
    odd: Vec<(usize, Value)>,
    /// Set each pack's id and size from its bytes before storing.
    fix_refs: bool,
    upload_packs: bool,
    /// Replaces text in the serialised JSON: what serde would never write.
    patch: Option<(&'static str, &'static str)>,
    /// Stored as the manifest object instead of the encoded manifest.
    raw_manifest: Option<Vec<u8>>,
}

/// The manifest and its one pack, by hand: each file's content in frames of
/// its own (at most [`pack::FRAME_RAW`] raw bytes each), at offset 0.
fn native(entries: &[E]) -> Native {
    let mut m = Manifest {
        version: pack::VERSION,
        created_ms: MTIME as u64 * 1000,
        packs: Vec::new(),
        frames: Vec::new(),
        entries: Vec::new(),
        pieces: Vec::new(),
        hot: Vec::new(),
    };
    let mut bytes = Vec::new();
    let mut odd = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let path = String::from_utf8_lossy(&e.path).into_owned();
        let target = String::from_utf8_lossy(&e.link).into_owned();
        let kind = match e.kind {
            Kind::Dir => {
                m.entries.push(Entry::dir(path, e.mode, e.mtime));
                continue;
            }
            Kind::Symlink => {
                m.entries.push(Entry::symlink(path, target, e.mode, e.mtime));
                continue;
            }
            Kind::File => {
                let first = m.frames.len() as u32;
                let mut hasher = blake3::Hasher::new();
                e.data.each_piece(pack::FRAME_RAW, |raw| {
                    hasher.update(raw);
                    let c = zstd(&[Part::Bytes(raw.to_vec())]);
                    m.frames.push(Frame {
                        pack: 0,
                        offset: bytes.len() as u64,
                        clen: c.len() as u64,
                        rawlen: raw.len() as u64,
                        hash: hex(raw),
                    });
                    bytes.extend_from_slice(&c);
                });
                let size = e.data.len();
                let mut entry = Entry::file(path, e.mode, e.mtime, size, hasher.finalize().to_hex().to_string());
                if size > 0 {
                    entry.frame = Some(first);
                }
                m.entries.push(entry);
                continue;
            }
            Kind::Hardlink => "hardlink",
            Kind::Char => "char",
            Kind::Block => "block",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::Ext(_) => panic!("a raw tar header has no native form"),
        };
        odd.push((i, json!({ "path": path, "kind": kind, "mode": e.mode, "mtime": e.mtime, "target": target })));
    }
    let packs = if bytes.is_empty() { Vec::new() } else { vec![bytes] };
    m.packs = packs.iter().map(|p| PackRef { id: hex(p), size: p.len() as u64, hot: false }).collect();
    Native { m, packs, odd, fix_refs: true, upload_packs: true, patch: None, raw_manifest: None }
}

async fn store_native(store: &dyn Store, mut n: Native) {
    if n.fix_refs {
        n.m.packs = n.packs.iter().map(|p| PackRef { id: hex(p), size: p.len() as u64, hot: false }).collect();
    }
    let manifest = match n.raw_manifest.take() {
        Some(raw) => raw,
        None => {
            let mut v = serde_json::to_value(&n.m).unwrap();
            let entries = v["entries"].as_array_mut().unwrap();
            for (i, o) in n.odd.drain(..) {
                entries.insert(i, o);
            }
            let mut text = serde_json::to_string(&v).unwrap();
            if let Some((from, to)) = n.patch {
                assert!(text.contains(from), "the patch applies");
                text = text.replace(from, to);
            }
            zstd(&[Part::Bytes(text.into_bytes())])
        }
    };
    super::put(store, &format!("{KEY}.d/manifests/{:013}-{:08x}.json.zst", n.m.created_ms, 0x5ca1ab1e_u32), manifest)
        .await;
    if n.upload_packs {
        for (p, bytes) in n.m.packs.iter().zip(n.packs) {
            super::put(store, &sandcache_testkit::generations::pack_location(KEY, &n.m, &p.id), bytes).await;
        }
    }
}

/// Encodes `case` in `form` and stores it under [`KEY`].
async fn store_case(store: &dyn Store, case: &Case, form: Form) {
    let garbage = b"this is not an archive, nor a manifest, at all. ".repeat(20);
    if form == Form::Native {
        let mut n = native(&case.entries);
        match case.tamper {
            Tamper::None => {}
            Tamper::Truncate => {
                n.fix_refs = false;
                let half = n.packs[0].len() / 2;
                n.packs[0].truncate(half);
            }
            Tamper::Garbage => n.raw_manifest = Some(garbage),
            Tamper::Native(f) => f(&mut n),
        }
        return store_native(store, n).await;
    }
    let parts = tar_parts(&case.entries);
    let mut bytes = if form == Form::Tgz { gzip(&parts) } else { zstd(&parts) };
    match case.tamper {
        Tamper::None => {}
        Tamper::Truncate => bytes.truncate(bytes.len() / 2),
        Tamper::Garbage => bytes = garbage,
        Tamper::Native(_) => panic!("{}: a native tamper on an archive form", case.name),
    }
    super::put(store, KEY, bytes).await;
}

// ------------------------------------------------------------- the run

/// Everything in the sandbox; the store is not entered, and the target's
/// parent, where sandcache makes and removes its staging dir, is recorded
/// without its times and size.
fn state(root: &Path) -> BTreeMap<String, String> {
    sandbox_state(root, &["store"], &["work"])
}

/// The sandbox: a store, a target holding a complete previous tree, bait
/// beside it, in the sandbox root and outside, and sandcache's lock file (as
/// any earlier run leaves it) so that a rejected restore changes nothing.
fn sandbox(ctx: &Ctx) {
    if ctx.sandbox.exists() {
        fs::remove_dir_all(&ctx.sandbox).unwrap();
    }
    fs::create_dir_all(ctx.sandbox.join("store")).unwrap();
    fs::write(ctx.sandbox.join("bait"), b"bait in the sandbox root").unwrap();
    fs::create_dir_all(&ctx.outside).unwrap();
    fs::write(ctx.outside.join("secret"), b"secret outside").unwrap();
    sample_tree(&ctx.target);
    fs::write(ctx.sandbox.join("work/bait"), b"bait beside the target").unwrap();
    fs::write(ctx.sandbox.join("work/.deno-dir.sandcache.lock"), b"").unwrap();
    // A symlink beside the target, pointing out: never followed.
    symlink(&ctx.outside, ctx.sandbox.join("work/out")).unwrap();
    fs::set_permissions(ctx.outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
}

/// What sandcache may leave beside the target after a successful restore.
fn is_state_file(key: &str) -> bool {
    ["\"work/.deno-dir.sandcache-state.json\"", "\"work/.deno-dir.sandcache-index.json\""].contains(&key)
}

fn diff(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    skip: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in before {
        if skip(k) {
            continue;
        }
        match after.get(k) {
            None => out.push(format!("removed {k}")),
            Some(a) if a != v => out.push(format!("changed {k}: {v} => {a}")),
            Some(_) => {}
        }
    }
    for k in after.keys() {
        if !skip(k) && !before.contains_key(k) {
            out.push(format!("added {k}"));
        }
    }
    out
}

/// The process's peak resident set so far, in bytes.
fn peak_rss() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Runs one case in one form; `Ok` holds what happened, `Err` what is wrong.
async fn run(ctx: &Ctx, case: &Case, form: Form, expect: Expect) -> Result<String, String> {
    super::settle();
    sandbox(ctx);
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(ctx.sandbox.join("store")));
    store_case(store.as_ref(), case, form).await;
    let before = state(&ctx.sandbox);
    let rss = peak_rss();
    let cache = Cache::new(store, KEY);
    let opts = RestoreOptions { timeout: Duration::from_secs(10), limits: case.limits, ..Default::default() };
    let restore = cache.restore(&ctx.target, &opts);
    let out = tokio::time::timeout(Duration::from_secs(30), restore)
        .await
        .map_err(|_| "hung past its 10 s deadline".to_owned())?;
    let grown = peak_rss().saturating_sub(rss);
    if let Some(max) = case.max_rss_growth.filter(|max| grown > *max) {
        return Err(format!("peak RSS grew by {} MiB, over {} MiB", grown >> 20, max >> 20));
    }
    super::settle();
    let after = state(&ctx.sandbox);
    match (expect, &out.result) {
        (Expect::Rejected(reason, needles), Err(skip)) => {
            if skip.reason != reason {
                return Err(format!("skipped as {}, not {reason}: {}", skip.reason, skip.detail));
            }
            if let Some(n) = needles.iter().find(|n| !skip.detail.contains(**n)) {
                return Err(format!("detail lacks {n:?}: {}", skip.detail));
            }
            // sandcache's record of a pool object it found bad (a pack cut
            // short in the store) is its own bookkeeping, like the lock.
            let changed = diff(&before, &after, |k| k == "\"work/.deno-dir.sandcache-bad.json\"");
            if !changed.is_empty() {
                return Err(format!("rejected, but the sandbox changed:\n    {}", changed.join("\n    ")));
            }
            Ok(format!("rejected {reason}: {}", skip.detail))
        }
        (Expect::Neutralised(check), Ok(done)) => {
            let target = "\"work/deno-dir";
            let changed = diff(&before, &after, |k| k.starts_with(target) || is_state_file(k));
            if !changed.is_empty() {
                return Err(format!("restored, but outside the target changed:\n    {}", changed.join("\n    ")));
            }
            check(&ctx.target, form)?;
            Ok(format!("neutralised: {} files", done.files))
        }
        (Expect::Rejected(reason, _), Ok(_)) => Err(format!("restored, but should be rejected as {reason}")),
        (Expect::Neutralised(_), Err(skip)) => {
            Err(format!("skipped as {}, but should restore: {}", skip.reason, skip.detail))
        }
    }
}

#[tokio::test]
async fn hostile_corpus_is_rejected_or_neutralised_in_every_form() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap().join("sandbox");
    let ctx = Ctx { target: root.join("work/deno-dir"), outside: root.join("outside"), sandbox: root };
    let cases = table(&ctx);

    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are distinct");
    assert!(cases.len() >= 25, "the corpus has {} cases", cases.len());

    let (mut runs, mut failures) = (0, Vec::new());
    for case in &cases {
        assert!(case.tar.is_some() || case.native.is_some(), "{} runs in no form", case.name);
        for form in Form::ALL {
            let Some(expect) = case.expect(form) else { continue };
            runs += 1;
            let start = std::time::Instant::now();
            let result = run(&ctx, case, form, expect).await;
            let ms = start.elapsed().as_millis();
            let line = match &result {
                Ok(what) => format!("ok   {:<32} {:<8} {ms:>5}ms {what}", case.name, form.name()),
                Err(why) => format!("FAIL {:<32} {:<8} {ms:>5}ms {why}", case.name, form.name()),
            };
            println!("{line}");
            if result.is_err() {
                failures.push(line);
            }
        }
    }
    println!("{} cases, {runs} case × form runs", cases.len());
    assert!(failures.is_empty(), "{} of {runs} runs failed:\n{}", failures.len(), failures.join("\n"));
}
