// The native format's manifest parser and frame decoder fuzz check
// (`sandcache_archive::pack`). Included (`include!`) by
// `fuzz/fuzz_targets/manifest_parser.rs` and by the seed replay in
// `crates/sandcache-archive/tests/it/seeds.rs`, so both run the same code.
//
// Input: one selector byte, then the payload. Selector `% 4`:
// * 0: `Manifest::decode` of the payload (stored form: zstd-compressed JSON);
// * 1: the payload as manifest JSON (zstd would hide the JSON from the fuzzer);
// * 2: the payload zstd-compressed here, then `Manifest::decode`;
// * 3: `decode_frame`: payload is `flags, rawlen (u32 LE), bytes`. Flag 1
//   compresses the bytes here (else they are the compressed frame), flag 2
//   sets the hash to the bytes' true BLAKE3, flag 4 sets rawlen to their
//   true length. With all three the frame must decode to the bytes.
//
// Every parsed manifest is validated, `span_frames` runs on every file with
// content, and a manifest that validates must keep the promises the restore
// relies on (else a panic).

use std::path::Path;

use sandcache_archive::Limits;
use sandcache_archive::pack::{self, Frame, Kind, Manifest};

/// Ok when the manifest parses and validates, or the frame decodes.
pub fn run(data: &[u8]) -> Result<(), String> {
    let Some((&selector, body)) = data.split_first() else { return Err("empty".into()) };
    let parsed = match selector % 4 {
        0 => Manifest::decode(body).map_err(|e| e.to_string()),
        1 => serde_json::from_slice::<Manifest>(body).map_err(|e| e.to_string()),
        2 => Manifest::decode(&zstd::bulk::compress(body, 1).unwrap()).map_err(|e| e.to_string()),
        _ => return frame(body),
    };
    check(&parsed?)
}

fn check(m: &Manifest) -> Result<(), String> {
    let valid = m.validate(&Limits::default(), Path::new("/deno-dir")).map_err(|e| e.to_string());
    for e in m.entries.iter().filter(|e| e.kind == Kind::File && e.size > 0) {
        let span = m.span_frames(e);
        if valid.is_ok() {
            // Validation ran span_frames on every file with content: the
            // restore indexes `frames` with these ranges.
            let span = span.expect("a validated manifest spans all its files");
            assert!(span.start < span.end && span.end <= m.frames.len(), "span {span:?} out of bounds");
        }
    }
    if valid.is_ok() {
        for f in &m.frames {
            assert!(f.rawlen <= pack::FRAME_RAW as u64, "a validated frame is at most FRAME_RAW");
            assert!(f.offset + f.clen <= m.packs[f.pack as usize].size, "a validated frame lies in its pack");
        }
        assert_eq!(&Manifest::decode(&m.encode()).expect("a valid manifest round-trips"), m);
    }
    valid
}

fn frame(body: &[u8]) -> Result<(), String> {
    let Some((&flags, rest)) = body.split_first() else { return Err("no flags".into()) };
    let Some((len, bytes)) = rest.split_first_chunk::<4>() else { return Err("no rawlen".into()) };
    let compressed = if flags & 1 != 0 { zstd::bulk::compress(bytes, 1).unwrap() } else { bytes.to_vec() };
    let hash = if flags & 2 != 0 { blake3::hash(bytes).to_hex().to_string() } else { "0".repeat(64) };
    // `validate` caps rawlen at FRAME_RAW before any frame is decoded (it is
    // the decoder's output capacity), so the check does too.
    let rawlen = if flags & 4 != 0 { bytes.len() as u64 } else { u64::from(u32::from_le_bytes(*len)) };
    let rawlen = rawlen.min(pack::FRAME_RAW as u64);
    let f = Frame { pack: 0, offset: 0, clen: compressed.len() as u64, rawlen, hash };
    let decoded = pack::decode_frame(&compressed, &f);
    if flags & 7 == 7 && bytes.len() <= pack::FRAME_RAW {
        assert_eq!(decoded.as_ref().expect("an honest frame decodes"), bytes);
    }
    decoded.map(drop).map_err(|e| e.to_string())
}
