//! A large file a delta writes, made from the copy of it the dir already
//! holds: the frames the two versions share are copied from the old file,
//! only the others are downloaded and decoded.
//!
//! Deno's caches at the top of DENO_DIR are SQLite databases that Deno
//! writes page by page, and a snapshot packs them in frames at fixed
//! offsets of the file ([`pack::CHUNK_RAW`]). A site's code cache after a
//! deploy over the base is the base's with some pages changed and some
//! added: of its 20 MB, a delta would otherwise decode and hash all of it,
//! the largest step on its way to the worker.
//!
//! - [`patches`]: which written files qualify, from the two manifests
//!   alone: a file unit at the top (its staging name is its own, no
//!   directory to make), in both, of which frames the same at the same
//!   offset of the file (same raw length and BLAKE3) hold [`PATCH_MIN`]
//!   bytes or more. Copying a frame's bytes costs a fraction of decoding
//!   them, so any such file is worth it.
//! - [`write_patches`]: each written into staging under its own name.
//!   The old file is opened without following, and used only if its open
//!   fd is as its restore left it (kind, mode, owner, mtime, size, and a
//!   ctime not past the state's bound), before and after it is read. The
//!   new file is checked whole against its hash, as every restored file
//!   is. Any doubt (the old file touched, a hash that does not match) and
//!   the file is written from its frames alone, as a full restore would.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rustix::fs::{AtFlags, Mode, OFlags};
use sandcache_archive::ExtractError;
use sandcache_archive::pack::{self, Kind, Manifest};

use crate::error::Error;
use crate::layout::pack_key;

use super::delta::{Trust, as_restored};
use super::filesystem::{Umask, create, file_mode, io_err, set_meta};
use super::prefetch::Prefetch;
use super::restoring::{RestoreStats, Restoring};
use super::units::Shape;
use super::writers::suspect_file;

/// Files that share fewer bytes than this with their old copy (and
/// smaller files) are written as any other.
const PATCH_MIN: u64 = 1 << 20;

/// A file of the new generation to write from the old one's copy.
#[derive(Debug, Clone)]
pub(crate) struct Patch {
    /// The entry of `new` written, and `old`'s at its path.
    pub(crate) entry: u32,
    old: u32,
    /// The new entry's frames in file order: (frame, offset in the file,
    /// whether the old file holds its bytes at that offset).
    frames: Vec<(u32, u64, bool)>,
}

impl Patch {
    /// Bytes of the file its old copy holds.
    fn kept_bytes(&self, new: &Manifest) -> u64 {
        self.frames.iter().filter(|f| f.2).map(|f| new.frames[f.0 as usize].rawlen).sum()
    }
}

/// Frames of a file that start it and lie within it: (offset in the file,
/// raw length, hash) by frame, in file order; `None` when its content does
/// not start a frame.
fn own_frames(m: &Manifest, i: u32) -> Option<Vec<(u32, u64, u64, &str)>> {
    let e = m.entries.get(i as usize)?;
    if e.kind != Kind::File || e.offset != 0 || e.size < PATCH_MIN {
        return None;
    }
    let span = m.span_frames(e).ok()?;
    let mut at = 0;
    let mut out = Vec::new();
    for f in span {
        let frame = m.frames.get(f)?;
        out.push((f as u32, at, frame.rawlen, frame.hash.as_str()));
        at += frame.rawlen;
    }
    Some(out)
}

/// The files of `new` worth writing from the old generation's copy (see
/// the module's doc): at the top, in both, their content changed (a delta
/// writes them whatever the disk holds). Pure; from the two manifests
/// alone, so they are written beside the rest of the plan.
pub(crate) fn patches(old: &Manifest, new: &Manifest) -> Vec<Patch> {
    let olds: HashMap<&str, u32> = large_at_top(old).map(|(i, e)| (e.path.as_str(), i)).collect();
    let mut out = Vec::new();
    for (i, e) in large_at_top(new) {
        let Some(&o) = olds.get(e.path.as_str()) else { continue };
        if old.entries[o as usize].hash == e.hash {
            continue;
        }
        let (Some(theirs), Some(ours)) = (own_frames(old, o), own_frames(new, i)) else { continue };
        let old_size = old.entries[o as usize].size;
        // Frames wholly within the old file, by where they sit in it.
        let held: HashSet<(u64, u64, &str)> = theirs
            .into_iter()
            .filter(|(_, at, len, _)| at + len <= old_size)
            .map(|(_, at, len, hash)| (at, len, hash))
            .collect();
        let frames: Vec<(u32, u64, bool)> = ours
            .into_iter()
            .map(|(f, at, len, hash)| (f, at, at + len <= e.size && held.contains(&(at, len, hash))))
            .collect();
        let patch = Patch { entry: i, old: o, frames };
        if patch.kept_bytes(new) >= PATCH_MIN {
            out.push(patch);
        }
    }
    out
}

/// The files of `m` at the top of [`PATCH_MIN`] bytes or more, with their
/// index.
fn large_at_top(m: &Manifest) -> impl Iterator<Item = (u32, &pack::Entry)> {
    (m.entries.iter().enumerate())
        .filter(|(_, e)| e.kind == Kind::File && e.size >= PATCH_MIN && !e.path.contains('/'))
        .map(|(i, e)| (i as u32, e))
}

/// What writing the patches takes besides the restore's own: the old
/// generation, the live dir (held open) holding its copy, the state's
/// trust, and the staging dir.
pub(crate) struct PatchJob<'a> {
    pub(crate) old: &'a Arc<Manifest>,
    pub(crate) new: &'a Arc<Manifest>,
    pub(crate) live: Arc<OwnedFd>,
    pub(crate) staging: Arc<OwnedFd>,
    pub(crate) trust: Trust,
}

/// Writes each patch into staging (see the module's doc); returns what was
/// written, counted as a restore counts it, and the bytes copied from the
/// old files.
pub(crate) async fn write_patches(
    r: &Restoring<'_>,
    job: &PatchJob<'_>,
    patches: &[Patch],
    prefetch: &Prefetch,
) -> Result<(RestoreStats, u64), Error> {
    let mut stats = RestoreStats { files: 0, bytes: 0, transferred: 0 };
    let mut copied = 0;
    let exact = Umask::current();
    for patch in patches {
        let size = job.new.entries[patch.entry as usize].size;
        let mut keep = true;
        loop {
            let wanted = patch.frames.iter().filter(|f| !(keep && f.2)).map(|f| f.0);
            let (frames, transferred) = frame_bytes(r, job.new, wanted.collect(), prefetch).await?;
            stats.transferred += transferred;
            let (one, new, old) = (patch.clone(), job.new.clone(), job.old.clone());
            let (live, staging, trust, owner) = (job.live.clone(), job.staging.clone(), job.trust, r.opts.owner);
            let cancel = r.cancel.clone();
            let written = tokio::task::spawn_blocking(move || {
                let w = Writer { new: &new, old: &old, live: &live, staging: &staging, trust, owner, exact };
                w.write(&one, &frames, keep, &cancel)
            })
            .await
            .map_err(|e| Error::joined("a patch writer", e))?;
            match written {
                Ok(Some(kept)) => {
                    copied += kept;
                    break;
                }
                // The old copy cannot be trusted: from the frames alone
                // (which never ask for it).
                Ok(None) => match keep {
                    true => keep = false,
                    false => return Err(Error::Bug("a patch written from its frames asked for its old copy".into())),
                },
                Err(e) => {
                    if matches!(e, ExtractError::Corrupt { .. }) {
                        suspect_file(r.found, r.key, job.new, patch.entry as usize);
                    }
                    return Err(e.into());
                }
            }
        }
        stats.files += 1;
        stats.bytes += size;
    }
    Ok((stats, copied))
}

/// The compressed bytes of `frames` of `m`: from the prefetch where it
/// holds their pack, else by range (a range per run of adjacent frames).
/// Returns them by frame, and the bytes downloaded here.
async fn frame_bytes(
    r: &Restoring<'_>,
    m: &Manifest,
    mut frames: Vec<u32>,
    prefetch: &Prefetch,
) -> Result<(HashMap<u32, Bytes>, u64), Error> {
    frames.sort_unstable_by_key(|&f| (m.frames[f as usize].pack, m.frames[f as usize].offset));
    let mut out = HashMap::new();
    let mut transferred = 0;
    let mut at = 0;
    while at < frames.len() {
        let first = &m.frames[frames[at] as usize];
        let pack = &m.packs[first.pack as usize];
        let pkey = pack_key(r.key, m, &pack.id);
        // A pack that is not as long as its manifest says is not the pack
        // it names (its length is part of what its name hashes): a bad
        // pool object, as `fetch_run` reports it.
        let bad = |why: String| {
            r.found.add(&pkey, pack.size, &why);
            Error::Corrupt(format!("`{pkey}` is {why}"))
        };
        // This run: the frames that follow each other in the pack.
        let mut end = at + 1;
        while end < frames.len() {
            let (prev, next) = (&m.frames[frames[end - 1] as usize], &m.frames[frames[end] as usize]);
            if next.pack != first.pack || next.offset != prev.offset + prev.clen {
                break;
            }
            end += 1;
        }
        let run = &frames[at..end];
        let last = &m.frames[run[run.len() - 1] as usize];
        let (start, stop) = (first.offset, last.offset + last.clen);
        let (bytes, base) = match prefetch.take(&pkey).await {
            Some(pack) => (pack, 0),
            None => {
                let obj = r.store.get_range(&pkey, start..stop).await?;
                if obj.size != pack.size {
                    return Err(bad(format!("{} bytes, where its manifest says {}", obj.size, pack.size)));
                }
                let all = obj.bytes().await?;
                transferred += all.len() as u64;
                (Bytes::from(all), start)
            }
        };
        for &f in run {
            let frame = &m.frames[f as usize];
            let from = (frame.offset - base) as usize;
            let Some(b) = bytes.get(from..from + frame.clen as usize) else {
                return Err(bad(format!("shorter than its frame at {}", frame.offset)));
            };
            out.insert(f, bytes.slice_ref(b));
        }
        at = end;
    }
    Ok((out, transferred))
}

/// One patch's writing, on a blocking thread.
struct Writer<'a> {
    new: &'a Manifest,
    old: &'a Manifest,
    live: &'a OwnedFd,
    staging: &'a OwnedFd,
    trust: Trust,
    owner: Option<(u32, u32)>,
    exact: Umask,
}

impl Writer<'_> {
    /// Writes the patch's file into staging, the frames the old copy holds
    /// copied from it when `keep` (and it is as restored), the others
    /// decoded from `frames`. `Ok(Some(bytes copied))` once written and
    /// checked; `Ok(None)` when the old copy cannot be trusted (touched,
    /// or the result fails its hash), with nothing left in staging.
    fn write(
        &self,
        patch: &Patch,
        frames: &HashMap<u32, Bytes>,
        keep: bool,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<u64>, ExtractError> {
        let e = &self.new.entries[patch.entry as usize];
        let name = e.path.as_str();
        let err = |x: std::io::Error| io_err(Path::new(name), x);
        let old = match keep {
            true => match self.old_copy(patch) {
                Some(old) => Some(old),
                None => return Ok(None),
            },
            false => None,
        };
        let mut f = create(self.staging, name, true, file_mode(e, self.exact)).map_err(err)?;
        let mut hasher = blake3::Hasher::new();
        let mut decoder = pack::FrameDecoder::default();
        let mut buf = Vec::new();
        let mut copied = 0;
        for &(frame, at, held) in &patch.frames {
            if cancel.load(Ordering::Relaxed) {
                return Err(ExtractError::Cancelled);
            }
            let fr = &self.new.frames[frame as usize];
            let len = fr.rawlen.min(e.size - at) as usize;
            let data: &[u8] = match (&old, held) {
                (Some((file, _)), true) => {
                    buf.resize(len, 0);
                    file.read_exact_at(&mut buf, at).map_err(err)?;
                    copied += len as u64;
                    &buf
                }
                _ => {
                    let Some(bytes) = frames.get(&frame) else {
                        return Err(ExtractError::Corrupt {
                            detail: format!("{name}: frame {frame} not fetched"),
                            source: None,
                        });
                    };
                    let raw = decoder.decode_unhashed(bytes, fr)?;
                    raw.get(..len).ok_or_else(|| ExtractError::Corrupt {
                        detail: format!("{name}: frame {frame} is shorter than the file says"),
                        source: None,
                    })?
                }
            };
            hasher.update(data);
            f.write_all(data).map_err(err)?;
        }
        let untouched =
            old.as_ref().is_none_or(|(file, before)| rustix::fs::fstat(file).is_ok_and(|st| stamp(&st) == *before));
        let whole = hasher.finalize().to_hex().as_str() == e.hash.as_deref().unwrap_or_default();
        if !(untouched && whole) {
            drop(f);
            let _ = rustix::fs::unlinkat(self.staging, name, AtFlags::empty());
            if old.is_some() {
                tracing::info!(target: "sandbox-cache", "{name}: its copy on disk cannot be trusted: written from its frames");
                return Ok(None);
            }
            return Err(ExtractError::Corrupt { detail: format!("{name} fails its BLAKE3 check"), source: None });
        }
        set_meta(&f, e, self.owner, self.exact).map_err(err)?;
        Ok(Some(copied))
    }

    /// The old copy, open, when its fd is as its restore left it; with its
    /// ctime and size, to compare once it is read.
    fn old_copy(&self, patch: &Patch) -> Option<(std::fs::File, (i64, i64, i64))> {
        let o = &self.old.entries[patch.old as usize];
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = rustix::fs::openat(self.live, o.path.as_str(), flags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        let euid = rustix::process::geteuid().as_raw();
        as_restored(&st, &Shape::of(o), &self.trust, euid).filter(|seen| !seen.past)?;
        Some((std::fs::File::from(fd), stamp(&st)))
    }
}

/// What a write to a file moves: its ctime, and its size.
#[allow(clippy::unnecessary_cast)] // the field types differ between targets
fn stamp(st: &rustix::fs::Stat) -> (i64, i64, i64) {
    (st.st_ctime as i64, st.st_ctime_nsec as i64, st.st_size as i64)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicBool;

    use sandcache_archive::pack::{Entry, PackBuilder, PackRef};

    use super::*;

    const MTIME: i64 = 1_600_000_000;

    /// A manifest of one top-level file packed as a snapshot packs Deno's
    /// caches, and its frames' compressed bytes.
    fn cache_manifest(body: &[u8]) -> (Manifest, HashMap<u32, Bytes>) {
        let mut done = Vec::new();
        let mut b = PackBuilder::new(3);
        let (frame, offset) = b.add_in_frames(body, pack::CHUNK_RAW, &mut done);
        b.finish(&mut done);
        let p = done.remove(0);
        let bytes: HashMap<u32, Bytes> = (p.frames.iter().enumerate())
            .map(|(i, f)| (i as u32, Bytes::copy_from_slice(&p.bytes[f.offset as usize..(f.offset + f.clen) as usize])))
            .collect();
        let mut e = Entry::file(
            "v8_code_cache_v2".into(),
            0o644,
            MTIME,
            body.len() as u64,
            blake3::hash(body).to_hex().to_string(),
        );
        (e.frame, e.offset) = (Some(frame), offset);
        let packs = vec![PackRef { id: p.id.clone(), size: p.bytes.len() as u64, hot: false }];
        (Manifest { packs, frames: p.frames, entries: vec![e], ..Manifest::empty(3, 0) }, bytes)
    }

    fn noise(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    /// The old file restored into `live` (its mode and mtime), and the
    /// ctime bound after it.
    fn restored(live: &Path, body: &[u8]) -> Trust {
        let p = live.join("v8_code_cache_v2");
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(MTIME as u64);
        fs::File::open(&p).unwrap().set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
        std::thread::sleep(std::time::Duration::from_millis(20));
        Trust { until_ns: now, owner: None }
    }

    fn open(dir: &Path) -> OwnedFd {
        rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap()
    }

    /// A pack shorter than its manifest says, met while fetching a patch's
    /// frames, is a bad pool object: noted, as a full restore notes it.
    #[tokio::test]
    async fn a_short_pack_under_a_patch_is_noted_bad() {
        let (m, _) = cache_manifest(&noise(3 * pack::CHUNK_RAW, 4));
        let tmp = tempfile::tempdir().unwrap();
        let store = sandcache_store::LocalStore::new(tmp.path().join("store"));
        let pkey = pack_key("site/k", &m, &m.packs[0].id);
        // The pack's first half only.
        let half = vec![0u8; (m.packs[0].size / 2) as usize];
        sandcache_store::Store::put_new(&store, &pkey, half.into()).await.unwrap();
        let found = Arc::new(crate::bad::Found::default());
        let opts = crate::options::RestoreOptions::default();
        let r = Restoring { store: &store, key: "site/k", opts: &opts, found: &found, cancel: Default::default() };
        let got = frame_bytes(&r, &m, (0..m.frames.len() as u32).collect(), &Prefetch::none()).await;
        assert!(matches!(got, Err(Error::Corrupt(_))), "{got:?}");
        assert_eq!(found.take().iter().map(|b| b.object.as_str()).collect::<Vec<_>>(), [pkey.as_str()]);
    }

    /// A cache with one page changed and pages added: its frames the old
    /// one holds are copied from the old file, the rest decoded; a copy
    /// touched since its restore is refused, and the file is then written
    /// from its frames alone; either way it is the new version, whole.
    #[test]
    fn a_cache_changed_in_place_is_written_from_its_old_copy_unless_touched() {
        let v1 = noise(6 * pack::CHUNK_RAW + 4096, 1);
        let mut v2 = v1.clone();
        v2[2 * pack::CHUNK_RAW + 5] ^= 0xff;
        v2.extend(noise(pack::CHUNK_RAW + 100, 2));
        let (old, _) = cache_manifest(&v1);
        let (new, frames) = cache_manifest(&v2);
        let found = patches(&old, &new);
        assert_eq!(found.len(), 1, "the cache is worth patching");
        let kept: Vec<bool> = found[0].frames.iter().map(|f| f.2).collect();
        // Frame 2 changed; 6 (4096 bytes then, a whole frame now) and 7 are new.
        assert_eq!(kept, [true, true, false, true, true, true, false, false]);
        // A file in a dir is written as any other; so is one mostly new.
        let mut nested = new.clone();
        nested.entries[0].path = "a/v8_code_cache_v2".into();
        assert!(patches(&old, &nested).is_empty());
        let (other, _) = cache_manifest(&noise(v1.len(), 9));
        assert!(patches(&other, &new).is_empty());
        assert!(patches(&new, &new).is_empty(), "an unchanged file is not written");

        for touched in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let (live, staging) = (tmp.path().join("live"), tmp.path().join("staging"));
            fs::create_dir_all(&live).unwrap();
            fs::create_dir_all(&staging).unwrap();
            let trust = restored(&live, &v1);
            if touched {
                // One byte of a frame the new version shares, mtime put back.
                let p = live.join("v8_code_cache_v2");
                let mut body = v1.clone();
                body[10] ^= 1;
                fs::write(&p, &body).unwrap();
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(MTIME as u64);
                fs::File::open(&p).unwrap().set_times(fs::FileTimes::new().set_modified(t)).unwrap();
            }
            let (live_fd, staging_fd) = (open(&live), open(&staging));
            let w = Writer {
                new: &new,
                old: &old,
                live: &live_fd,
                staging: &staging_fd,
                trust,
                owner: None,
                exact: Umask::current(),
            };
            let cancel = AtomicBool::new(false);
            let patch = &found[0];
            // Only the frames it decodes were fetched.
            let fetched: HashMap<u32, Bytes> =
                frames.iter().filter(|(f, _)| !patch.frames[**f as usize].2).map(|(f, b)| (*f, b.clone())).collect();
            let written = w.write(patch, &fetched, true, &cancel).unwrap();
            match touched {
                false => assert_eq!(written, Some(5 * pack::CHUNK_RAW as u64)),
                true => {
                    assert_eq!(written, None, "a touched copy is never trusted");
                    assert!(!staging.join("v8_code_cache_v2").exists(), "nothing left in staging");
                    assert_eq!(w.write(patch, &frames, false, &cancel).unwrap(), Some(0));
                }
            }
            let out = staging.join("v8_code_cache_v2");
            assert!(fs::read(&out).unwrap() == v2, "the new version, whole");
            let meta = fs::metadata(&out).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
            assert_eq!(meta.modified().unwrap(), std::time::UNIX_EPOCH + std::time::Duration::from_secs(MTIME as u64));
        }
    }
}
