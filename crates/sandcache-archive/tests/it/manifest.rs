//! Manifests and packs: round trip, and everything a hostile manifest can
//! get wrong is refused before anything is written.

use std::path::Path;

use sandcache_archive::pack::{self, BuiltPack, Entry, Kind, Manifest, PackBuilder, PackRef};
use sandcache_archive::{ExtractError, Limits};

fn file(path: &str, frame: u32, offset: u64, data: &[u8]) -> Entry {
    Entry {
        path: path.into(),
        kind: Kind::File,
        mode: 0o644,
        mtime: 1,
        size: data.len() as u64,
        hash: Some(blake3::hash(data).to_hex().to_string()),
        frame: Some(frame),
        offset,
        target: None,
        hot: false,
    }
}

/// A valid manifest over one pack holding `a` (small), `big` (3 frames).
fn sample() -> (Manifest, Vec<u8>) {
    let mut done: Vec<BuiltPack> = Vec::new();
    let mut b = PackBuilder::new(3);
    let a = b"hello".to_vec();
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (fa, oa) = b.add(&a, &mut done);
    let (fb, ob) = b.add(&big, &mut done);
    b.finish(&mut done);
    assert_eq!(done.len(), 1);
    let p = done.remove(0);
    let frames = p.frames.clone();
    let m = Manifest {
        version: pack::VERSION,
        created_ms: 1,
        packs: vec![PackRef { id: p.id.clone(), size: p.bytes.len() as u64, hot: false }],
        frames,
        entries: vec![
            Entry {
                path: "d".into(),
                kind: Kind::Dir,
                mode: 0o755,
                mtime: 1,
                size: 0,
                hash: None,
                frame: None,
                offset: 0,
                target: None,
                hot: false,
            },
            file("d/a", fa, oa, &a),
            file("d/big", fb, ob, &big),
        ],
        pieces: Vec::new(),
        hot: Vec::new(),
    };
    (m, p.bytes)
}

fn target() -> &'static Path {
    Path::new("/deno-dir")
}

#[test]
fn a_built_manifest_validates_round_trips_and_decodes() {
    let (m, bytes) = sample();
    m.validate(&Limits::default(), target()).unwrap();
    assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    assert_eq!(m.span_frames(&m.entries[2]).unwrap().len(), 3, "9 MiB spans three 4 MiB frames");
    let mut raw = Vec::new();
    for f in &m.frames {
        raw.extend(pack::decode_frame(&bytes[f.offset as usize..(f.offset + f.clen) as usize], f).unwrap());
    }
    assert_eq!(&raw[..5], b"hello");
}

fn refused(m: &Manifest) -> ExtractError {
    m.validate(&Limits::default(), target()).expect_err("must be refused")
}

#[test]
fn hostile_manifests_are_refused() {
    let (good, _) = sample();
    type Mutation = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("frame past the pack end", Box::new(|m| m.frames[0].clen = m.packs[0].size + 1)),
        ("overlapping frames", Box::new(|m| m.frames[1].offset = m.frames[0].offset)),
        ("offset past the frame", Box::new(|m| m.entries[1].offset = m.frames[0].rawlen)),
        ("unknown frame", Box::new(|m| m.entries[1].frame = Some(99))),
        ("unknown pack", Box::new(|m| m.frames[0].pack = 7)),
        ("traversal", Box::new(|m| m.entries[1].path = "../escape".into())),
        ("absolute path", Box::new(|m| m.entries[1].path = "/etc/passwd".into())),
        ("empty component", Box::new(|m| m.entries[1].path = "d//a".into())),
        ("duplicate", Box::new(|m| m.entries[2].path = "d/a".into())),
        ("bad version", Box::new(|m| m.version = 99)),
        ("bad pack id", Box::new(|m| m.packs[0].id = "../../x".into())),
        ("huge frame", Box::new(|m| m.frames[0].rawlen = 1 << 40)),
        ("missing hash", Box::new(|m| m.entries[1].hash = None)),
        (
            "symlink escape",
            Box::new(|m| {
                m.entries.push(Entry {
                    path: "l".into(),
                    kind: Kind::Symlink,
                    mode: 0o777,
                    mtime: 1,
                    size: 0,
                    hash: None,
                    frame: None,
                    offset: 0,
                    target: Some("/etc".into()),
                    hot: false,
                })
            }),
        ),
        (
            "write through a symlink",
            Box::new(|m| {
                m.entries.push(Entry {
                    path: "l".into(),
                    kind: Kind::Symlink,
                    mode: 0o777,
                    mtime: 1,
                    size: 0,
                    hash: None,
                    frame: None,
                    offset: 0,
                    target: Some("d".into()),
                    hot: false,
                });
                m.entries[1].path = "l/a".into();
            }),
        ),
        ("under a file", Box::new(|m| m.entries[2].path = "d/a/big".into())),
    ];
    for (what, mutate) in cases {
        let mut m = good.clone();
        mutate(&mut m);
        let err = refused(&m);
        assert!(matches!(err, ExtractError::Corrupt { .. } | ExtractError::Unsafe { .. }), "{what}: {err}");
    }
    let limits = Limits { max_bytes: 1000, ..Limits::default() };
    assert!(matches!(good.validate(&limits, target()), Err(ExtractError::Limit { .. })));
}

#[test]
fn a_frame_that_does_not_match_its_hash_is_corrupt() {
    let (m, mut bytes) = sample();
    let f = &m.frames[0];
    bytes[f.offset as usize + 10] ^= 1;
    let err = pack::decode_frame(&bytes[f.offset as usize..(f.offset + f.clen) as usize], f).unwrap_err();
    assert!(matches!(err, ExtractError::Corrupt { .. }));
    let mut lying = f.clone();
    lying.hash = "0".repeat(64);
    let (_, good_bytes) = sample();
    assert!(pack::decode_frame(&good_bytes[f.offset as usize..(f.offset + f.clen) as usize], &lying).is_err());
}

#[test]
fn garbage_manifests_are_corrupt() {
    assert!(matches!(Manifest::decode(b"not zstd"), Err(ExtractError::Corrupt { .. })));
    let not_json = zstd::bulk::compress(b"{nope", 1).unwrap();
    assert!(matches!(Manifest::decode(&not_json), Err(ExtractError::Corrupt { .. })));
}

/// One decoder for many frames (as a restore's writer uses it): each frame
/// decodes to exactly its bytes, whatever size came before, and a frame that
/// expands past its length, or does not match its hash, is refused.
#[test]
fn a_frame_decoder_reused_decodes_each_frame_exactly_and_refuses_bad_ones() {
    let frame = |raw: &[u8]| pack::Frame {
        pack: 0,
        offset: 0,
        clen: 0,
        rawlen: raw.len() as u64,
        hash: blake3::hash(raw).to_hex().to_string(),
    };
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let small = b"a small frame".to_vec();
    let mut d = pack::FrameDecoder::default();
    for raw in [&big, &small, &big] {
        let z = zstd::bulk::compress(raw, 3).unwrap();
        assert_eq!(d.decode(&z, &frame(raw)).unwrap(), &raw[..]);
    }
    // Longer than it says: refused, having written no more than that.
    let z = zstd::bulk::compress(&big, 3).unwrap();
    let short = pack::Frame { rawlen: 1000, ..frame(&big[..1000]) };
    assert!(matches!(d.decode(&z, &short), Err(ExtractError::Corrupt { .. })));
    // Shorter than it says.
    let long = pack::Frame { rawlen: small.len() as u64 + 1, ..frame(&small) };
    assert!(matches!(d.decode(&zstd::bulk::compress(&small, 3).unwrap(), &long), Err(ExtractError::Corrupt { .. })));
    // Not the bytes its hash names.
    let wrong = pack::Frame { hash: blake3::hash(b"other").to_hex().to_string(), ..frame(&small) };
    assert!(matches!(d.decode(&zstd::bulk::compress(&small, 3).unwrap(), &wrong), Err(ExtractError::Corrupt { .. })));
    // Still good after refusals.
    assert_eq!(d.decode(&zstd::bulk::compress(&small, 3).unwrap(), &frame(&small)).unwrap(), &small[..]);
}
