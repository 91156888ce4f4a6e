//! One content pool per store: keys share packs, gc and delete of one key
//! never take what another needs, and a wrong pool object is caught.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use sandcache_engine::{Cache, GcOptions, Reason, RestoreOptions, SnapshotOptions, gc_store};
use sandcache_store::Store;
use sandcache_testkit::generations::{check, manifests, pack_location};
use sandcache_testkit::tree::{assert_same_tree, sample_tree};

use crate::{put, settle, stores};

async fn pool(store: &dyn Store) -> Vec<String> {
    let mut v: Vec<String> = store.list("pool/").await.unwrap().into_iter().map(|o| o.key).collect();
    v.sort();
    v
}

fn force() -> SnapshotOptions {
    SnapshotOptions { force: true, ..Default::default() }
}

/// A tree with some incompressible content, so pack sizes mean something.
fn tree(root: &std::path::Path) {
    sample_tree(root);
    let noise: Vec<u8> =
        (0..(1u32 << 17)).flat_map(|i| i.wrapping_mul(2654435761).rotate_left(5).to_le_bytes()).collect();
    fs::write(root.join("remote/noise.bin"), noise).unwrap();
}

#[tokio::test]
async fn keys_with_the_same_content_share_the_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    for store in stores("pool-share", tmp.path()) {
        let first = Cache::new(store.clone(), "a/cache").snapshot(&src, &force()).await;
        let j = first.to_json();
        assert!(j["pool_added"].as_u64().unwrap() > 0 && j["pool_reused"] == 0, "{j}");
        let packs = pool(store.as_ref()).await;
        // Every pool object is `pool/<first 2 hex>/<64 hex>.pack`.
        // Every pool object is `pool/<first 2 hex>/<64 hex>.pack` (or
        // `.tree`, a manifest piece).
        for p in &packs {
            let (fan, file) = p.strip_prefix("pool/").unwrap().split_once('/').unwrap();
            let kind = file.ends_with(".pack") || file.ends_with(".tree");
            assert!(file.len() == 69 && file.starts_with(fan) && kind, "{p}");
        }
        // A second key with the same content (another dir: no shared state)
        // uploads its manifest only.
        let copy = tmp.path().join(format!("copy-{}", rand::random::<u32>()));
        assert!(std::process::Command::new("cp").arg("-a").arg(&src).arg(&copy).status().unwrap().success());
        let second = Cache::new(store.clone(), "b/cache").snapshot(&copy, &force()).await;
        let j = second.to_json();
        assert_eq!(j["pool_added"], 0, "{j}");
        assert!(j["pool_reused"].as_u64().unwrap() > 0, "{j}");
        assert_eq!(pool(store.as_ref()).await, packs, "no new pool object");
        assert!(j["transferred"].as_u64().unwrap() < first.to_json()["transferred"].as_u64().unwrap() / 10, "{j}");
        for key in ["a/cache", "b/cache"] {
            assert_eq!(check(store.as_ref(), key).await.unwrap(), 1);
        }
        settle();
    }
}

/// A site's first wake-up from a base, then its first snapshot: a fallback
/// hit, and the snapshot uploads the site's new content and its manifest.
#[tokio::test]
async fn a_site_restored_from_a_base_uploads_only_what_it_added() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tree(&base);
    for store in stores("pool-base", tmp.path()) {
        let published = Cache::new(store.clone(), "base/deno").snapshot(&base, &force()).await;
        assert!(published.is_done(), "{}", published.to_json());
        let dir = tmp.path().join(format!("site-{}", rand::random::<u32>()));
        let site = Cache::new(store.clone(), "site/cache.tgz");
        let opts = RestoreOptions { fallbacks: vec!["base/".into()], ..Default::default() };
        let out = site.restore(&dir, &opts).await;
        assert_eq!(out.to_json()["hit"], "fallback", "{}", out.to_json());
        settle();
        let added = b"export const added = 'one new package';\n".repeat(50);
        fs::create_dir_all(dir.join("npm/registry.npmjs.org/new-pkg/1.0.0")).unwrap();
        fs::write(dir.join("npm/registry.npmjs.org/new-pkg/1.0.0/index.js"), &added).unwrap();
        let snap = site.snapshot(&dir, &SnapshotOptions::default()).await;
        let j = snap.to_json();
        assert!(snap.is_done(), "{j}");
        // New content is one small pack; the base's packs are reused.
        assert!(j["pool_added"].as_u64().unwrap() < 4096, "{j}");
        // Everything the base added but the one manifest piece that changed.
        let base_added = published.to_json()["pool_added"].as_u64().unwrap();
        assert!(j["pool_reused"].as_u64().unwrap() + 4096 >= base_added, "{j} vs {base_added}");
        // The site's own generation restores exactly, now an exact hit.
        let again = tmp.path().join(format!("again-{}", rand::random::<u32>()));
        let out = site.restore(&again, &opts).await;
        assert_eq!(out.to_json()["hit"], "exact", "{}", out.to_json());
        assert_same_tree(&dir, &again);
        settle();
    }
}

/// Deleting a base, and gc of everything else, never takes a pack a site
/// still references: the site restores exactly.
#[tokio::test]
async fn a_shared_pack_survives_delete_and_gc_of_another_key() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    for store in stores("pool-gc", tmp.path()) {
        let base = Cache::new(store.clone(), "base/deno");
        assert!(base.snapshot(&src, &force()).await.is_done());
        let copy = tmp.path().join(format!("copy-{}", rand::random::<u32>()));
        assert!(std::process::Command::new("cp").arg("-a").arg(&src).arg(&copy).status().unwrap().success());
        fs::write(copy.join("site-only.txt"), b"the site's own file").unwrap();
        let site = Cache::new(store.clone(), "site/cache");
        assert!(site.snapshot(&copy, &force()).await.is_done());

        // Old generations of the base, then the base itself, go.
        for i in 0..2 {
            fs::write(src.join("remote/noise.bin"), format!("round {i}")).unwrap();
            assert!(base.snapshot(&src, &force()).await.is_done());
        }
        let r = base.gc(&GcOptions { keep: 1, grace: Duration::ZERO, ..Default::default() }).await.unwrap();
        assert_eq!(r.generations_deleted, 2, "{r:?}");
        assert!(!base.delete().await.unwrap().not_found);
        let r = gc_store(store.as_ref(), &GcOptions { keep: 1, grace: Duration::ZERO, ..Default::default() })
            .await
            .unwrap();
        assert!(r.packs_deleted >= 1, "the base's own last packs go: {r:?}");
        assert!(r.packs_kept >= 1, "{r:?}");

        assert_eq!(check(store.as_ref(), "site/cache").await.unwrap(), 1);
        let dest = tmp.path().join(format!("dest-{}", rand::random::<u32>()));
        let out = site.restore(&dest, &RestoreOptions::default()).await;
        assert!(out.is_done(), "{}", out.to_json());
        assert_same_tree(&copy, &dest);
        // Nothing unreferenced is left: a second sweep deletes nothing.
        let r = gc_store(store.as_ref(), &GcOptions { keep: 1, grace: Duration::ZERO, ..Default::default() })
            .await
            .unwrap();
        assert_eq!((r.generations_deleted, r.packs_deleted), (0, 0), "{r:?}");
        settle();
    }
}

/// A pool object overwritten with other bytes (a hostile or broken writer):
/// the restore falls through to the next candidate, and with none left the
/// dir keeps its content. No wrong file is ever written.
#[tokio::test]
async fn a_pool_object_overwritten_with_garbage_falls_through() {
    let tmp = tempfile::tempdir().unwrap();
    let (site_src, base_src) = (tmp.path().join("site"), tmp.path().join("base"));
    tree(&site_src);
    fs::write(site_src.join("site.txt"), b"site").unwrap();
    sample_tree(&base_src);
    fs::write(base_src.join("base-only.txt"), b"base, not sharing the site's packs").unwrap();
    for store in stores("pool-garbage", tmp.path()) {
        let site = Cache::new(store.clone(), "site/cache");
        assert!(site.snapshot(&site_src, &force()).await.is_done());
        assert!(Cache::new(store.clone(), "base/deno").snapshot(&base_src, &force()).await.is_done());
        let (_, m) = manifests(store.as_ref(), "site/cache").await.unwrap().remove(0);
        let (_, b) = manifests(store.as_ref(), "base/deno").await.unwrap().remove(0);
        let victim = m
            .packs
            .iter()
            .map(|p| pack_location("site/cache", &m, &p.id))
            .find(|p| !b.packs.iter().any(|q| pack_location("base/deno", &b, &q.id) == *p));
        let victim = victim.expect("a pack only the site uses");
        let size = store.head(&victim).await.unwrap().unwrap().size as usize;
        put(store.as_ref(), &victim, vec![0x5a; size]).await;

        let dir = tmp.path().join(format!("d-{}", rand::random::<u32>()));
        let opts = RestoreOptions { fallbacks: vec!["base/deno".into()], ..Default::default() };
        let out = site.restore(&dir, &opts).await;
        assert_eq!(out.to_json()["from_key"], "base/deno", "{}", out.to_json());
        assert_same_tree(&base_src, &dir);

        let dir = tmp.path().join(format!("e-{}", rand::random::<u32>()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("previous"), b"kept").unwrap();
        let out = site.restore(&dir, &RestoreOptions::default()).await;
        assert_eq!(out.reason(), Some(Reason::Corrupt), "{}", out.to_json());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert_eq!(fs::read(dir.join("previous")).unwrap(), b"kept");
        settle();
    }
}

#[test]
fn a_key_cannot_name_a_pool_object() {
    let id = "ab".repeat(32);
    assert!(sandcache_engine::validate_key(&format!("pool/ab/{id}.pack")).is_err());
    assert!(sandcache_engine::validate_key("pool/cache.tgz").is_ok(), "a site named pool still has a key");
}

/// A tree of many packages, as a DENO_DIR's npm dir.
fn packages(root: &std::path::Path, n: usize) {
    for p in 0..n {
        let dir = root.join(format!("npm/registry.npmjs.org/pkg-{p:04}/1.0.{p}"));
        fs::create_dir_all(dir.join("lib")).unwrap();
        fs::write(dir.join("package.json"), format!("{{\"name\":\"pkg-{p:04}\",\"version\":\"1.0.{p}\"}}")).unwrap();
        for f in 0..8 {
            fs::write(
                dir.join(format!("lib/m{f}.js")),
                format!("export const v{f} = {p} * {f}; // {}\n", "x".repeat(f * 40)),
            )
            .unwrap();
        }
    }
}

/// The manifest is split into content-addressed pieces and a small root:
/// a generation that adds one package uploads that package's content, the
/// pieces around it and the root, and a wrong piece is caught like a wrong
/// pack.
#[tokio::test]
async fn one_more_package_uploads_its_content_a_few_pieces_and_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    packages(&src, 400);
    for store in stores("pool-pieces", tmp.path()) {
        let cache = Cache::new(store.clone(), "site/cache");
        let first = cache.snapshot(&src, &force()).await;
        assert!(first.is_done(), "{}", first.to_json());
        let trees = |all: Vec<String>| all.into_iter().filter(|k| k.ends_with(".tree")).collect::<Vec<_>>();
        let before = trees(pool(store.as_ref()).await);
        assert!(before.len() >= 4, "a 4,000-entry manifest is several pieces: {}", before.len());

        let pkg = src.join("npm/registry.npmjs.org/pkg-0200-new/2.0.0");
        fs::create_dir_all(&pkg).unwrap();
        for f in 0..5 {
            fs::write(pkg.join(format!("f{f}.js")), format!("export default {f}; // the added package\n").repeat(20))
                .unwrap();
        }
        let second = cache.snapshot(&src, &SnapshotOptions::default()).await;
        let j = second.to_json();
        assert!(second.is_done(), "{j}");
        let after = trees(pool(store.as_ref()).await);
        let new_pieces = after.iter().filter(|t| !before.contains(t)).count();
        assert!((1..=3).contains(&new_pieces), "{new_pieces} new pieces");
        let full = first.to_json()["transferred"].as_u64().unwrap();
        let t = j["transferred"].as_u64().unwrap();
        // The pieces around the new entries (each holds about 512 entries'
        // hashes, which do not compress), their copies beside the pointer,
        // and the root, not the whole manifest: the bench measures the
        // bound on a real DENO_DIR.
        assert!(t < 256 << 10 && t * 2 < full, "one package: {t} bytes vs {full} for the whole tree");

        let dest = tmp.path().join(format!("dest-{}", rand::random::<u32>()));
        let out = cache.restore(&dest, &RestoreOptions::default()).await;
        assert!(out.is_done(), "{}", out.to_json());
        assert_same_tree(&src, &dest);
        assert_eq!(check(store.as_ref(), "site/cache").await.unwrap(), 2);

        // A piece both generations share, overwritten with other bytes:
        // each is corrupt, and nothing is written.
        let roots = manifests(store.as_ref(), "site/cache").await.unwrap();
        let shared = roots[0].1.pieces.iter().find(|p| roots[1].1.pieces.contains(p)).expect("a shared piece");
        let victim = format!("pool/{}/{}.tree", &shared.id[..2], shared.id);
        put(store.as_ref(), &victim, b"not this piece".to_vec()).await;
        let dir = tmp.path().join(format!("e-{}", rand::random::<u32>()));
        let out = cache.restore(&dir, &RestoreOptions::default()).await;
        assert!(!out.is_done(), "{}", out.to_json());
        assert!(!dir.exists() || fs::read_dir(&dir).unwrap().count() == 0, "nothing of a bad generation is written");
        fs::remove_dir_all(pkg.parent().unwrap()).unwrap();
        settle();
    }
}

/// Generations written before the pool (version 1: packs under the key)
/// and before manifest pieces (version 2: a whole manifest, packs in the
/// pool) still restore, and the first snapshot over a version-1 one moves
/// its content into the pool once.
#[tokio::test]
async fn older_layouts_still_restore() {
    use sandcache_archive::pack::{BuiltPack, Entry, Kind, Manifest, PackBuilder, PackRef};
    let tmp = tempfile::tempdir().unwrap();
    for store in stores("pool-compat", tmp.path()) {
        for (version, key) in [(1u32, "old/v1"), (2, "old/v2")] {
            let mut done: Vec<BuiltPack> = Vec::new();
            let mut b = PackBuilder::new(3);
            let (a, c) = (b"first file".to_vec(), format!("version {version}").into_bytes());
            let (fa, oa) = b.add(&a, &mut done);
            let (fc, oc) = b.add(&c, &mut done);
            b.finish(&mut done);
            let p = done.remove(0);
            let file = |path: &str, frame: u32, offset: u64, data: &[u8]| Entry {
                frame: Some(frame),
                offset,
                ..Entry::file(path.into(), 0o644, 1, data.len() as u64, blake3::hash(data).to_hex().to_string())
            };
            let m = Manifest {
                version,
                created_ms: 1_700_000_000_000,
                packs: vec![PackRef { id: p.id.clone(), size: p.bytes.len() as u64, hot: false }],
                frames: p.frames.clone(),
                entries: vec![
                    Entry { kind: Kind::Dir, ..Entry::dir("d".into(), 0o755, 1) },
                    file("d/a", fa, oa, &a),
                    file("d/c", fc, oc, &c),
                ],
                pieces: Vec::new(),
                hot: Vec::new(),
            };
            put(store.as_ref(), &pack_location(key, &m, &p.id), p.bytes.clone()).await;
            put(store.as_ref(), &format!("{key}.d/manifests/1700000000000-00000001.json.zst"), m.encode()).await;
            let dir = tmp.path().join(format!("v{version}-{}", rand::random::<u32>()));
            let cache = Cache::new(store.clone(), key);
            let out = cache.restore(&dir, &RestoreOptions::default()).await;
            assert!(out.is_done(), "version {version}: {}", out.to_json());
            assert_eq!(fs::read(dir.join("d/c")).unwrap(), c);
            settle();
            // The next snapshot writes the current layout; from version 1
            // its content goes into the pool (once), from 2 it is there.
            fs::write(dir.join("d/new"), b"added").unwrap();
            let snap = cache.snapshot(&dir, &SnapshotOptions::default()).await;
            let j = snap.to_json();
            assert!(snap.is_done(), "{j}");
            if version == 1 {
                assert_eq!(j["pool_reused"], 0, "a version-1 base is not referenced: {j}");
            } else {
                assert!(j["pool_reused"].as_u64().unwrap() >= p.bytes.len() as u64, "{j}");
            }
            let again = tmp.path().join(format!("again-{}", rand::random::<u32>()));
            assert!(cache.restore(&again, &RestoreOptions::default()).await.is_done());
            assert_same_tree(&dir, &again);
            settle();
        }
    }
}

/// Hostile roots and pieces: a piece that names pieces, a piece whose
/// entry points past its frames, a piece that is not what the root says,
/// too many pieces. Each is `corrupt`, before anything is written.
#[tokio::test]
async fn hostile_roots_and_pieces_are_corrupt() {
    use sandcache_archive::pack::{Manifest, PieceRef};
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(sandcache_store::LocalStore::new(tmp.path().join("store")));
    let src = tmp.path().join("src");
    sample_tree(&src);
    assert!(Cache::new(store.clone(), "good/k").snapshot(&src, &force()).await.is_done());
    let (_, good) = manifests(store.as_ref(), "good/k").await.unwrap().remove(0);
    let piece_bytes = |id: &str| {
        let p = tmp.path().join("store").join(format!("pool/{}/{id}.tree", &id[..2]));
        fs::read(p).unwrap()
    };
    let real = Manifest::decode(&piece_bytes(&good.pieces[0].id)).unwrap();
    let stored = |m: &Manifest| {
        let bytes = m.encode();
        let id = blake3::hash(&bytes).to_hex().to_string();
        (PieceRef { id, size: bytes.len() as u64, entries: m.entries.len() as u64 }, bytes)
    };
    let mut nested = real.clone();
    nested.pieces = good.pieces.clone();
    let mut past = real.clone();
    if let Some(e) = past.entries.iter_mut().find(|e| e.frame.is_some()) {
        e.frame = Some(999);
    }
    /// What the case is, the pieces it stores, and how often the root names
    /// the first.
    type Case = (&'static str, Vec<(PieceRef, Vec<u8>)>, Option<usize>);
    let cases: Vec<Case> = vec![
        ("a piece naming pieces", vec![stored(&nested)], None),
        ("a frame index past the piece's frames", vec![stored(&past)], None),
        (
            "an entry count the root does not say",
            vec![{
                let (mut r, b) = stored(&real);
                r.entries += 1;
                (r, b)
            }],
            None,
        ),
        ("too many pieces", vec![stored(&real)], Some(70_000)),
    ];
    for (i, (what, pieces, repeat)) in cases.into_iter().enumerate() {
        let mut root = good.clone();
        root.pieces = pieces.iter().map(|(r, _)| r.clone()).collect();
        if let Some(n) = repeat {
            root.pieces = std::iter::repeat_n(root.pieces[0].clone(), n).collect();
        }
        for (r, b) in &pieces {
            put(store.as_ref(), &format!("pool/{}/{}.tree", &r.id[..2], r.id), b.clone()).await;
        }
        let key = format!("bad/{i}");
        put(store.as_ref(), &format!("{key}.d/manifests/1800000000000-0000000{i}.json.zst"), root.encode()).await;
        let dir = tmp.path().join(format!("d-{i}"));
        let out = Cache::new(store.clone(), key).restore(&dir, &RestoreOptions::default()).await;
        assert_eq!(out.reason(), Some(Reason::Corrupt), "{what}: {}", out.to_json());
        assert!(!dir.exists() || fs::read_dir(&dir).unwrap().count() == 0, "{what}: nothing written");
    }
    settle();
}

/// A fresh pod for one deploy: its DENO_DIR and its state dir (the runner's),
/// neither shared with any other.
fn pod(tmp: &std::path::Path, name: &str) -> (std::path::PathBuf, RestoreOptions) {
    let pod = tmp.join(format!("pod-{name}-{}", rand::random::<u32>()));
    fs::create_dir_all(pod.join("state")).unwrap();
    let opts = RestoreOptions {
        state_dir: Some(pod.join("state")),
        fallbacks: vec!["base/deno".into()],
        ..Default::default()
    };
    (pod.join("deno-dir"), opts)
}

fn snapshot_opts(restore: &RestoreOptions) -> SnapshotOptions {
    SnapshotOptions { state_dir: restore.state_dir.clone(), ..Default::default() }
}

/// The largest pack of a key's newest generation, and its size.
async fn largest_pack(store: &dyn Store, key: &str) -> (String, String, u64) {
    let (_, m) = manifests(store, key).await.unwrap().remove(0);
    let p = m.packs.iter().max_by_key(|p| p.size).unwrap();
    (pack_location(key, &m, &p.id), p.id.clone(), p.size)
}

/// Issue 24: one base pack overwritten with other bytes of the same length
/// (a HEAD cannot tell), and two sites, X and Y, built on it over two rounds
/// of deploys, each on a fresh pod. Round one: each site's restore falls
/// back to the base, finds it corrupt, and starts cold; its snapshot packs
/// the same content, whose pack the pool holds under the bad object's
/// name, and must upload it rather than reference the bad object. Round
/// two: both restore their own keys, exact. A bad shared object costs each
/// site one cold start, never every start after it.
#[tokio::test]
async fn an_overwritten_base_pack_costs_each_site_one_cold_start() {
    let tmp = tempfile::tempdir().unwrap();
    let base_src = tmp.path().join("base");
    tree(&base_src);
    for store in stores("pool-heal", tmp.path()) {
        assert!(Cache::new(store.clone(), "base/deno").snapshot(&base_src, &force()).await.is_done());
        let (victim, _, size) = largest_pack(store.as_ref(), "base/deno").await;
        put(store.as_ref(), &victim, vec![0x5a; size as usize]).await;

        for round in 0..2 {
            for site in ["x", "y"] {
                let cache = Cache::new(store.clone(), format!("site-{site}/cache.tgz"));
                let (dir, opts) = pod(tmp.path(), &format!("{site}{round}"));
                let out = cache.restore(&dir, &opts).await;
                let j = out.to_json();
                if round == 0 {
                    // The base is the only candidate, and it is corrupt.
                    assert_eq!(out.reason(), Some(Reason::Corrupt), "{site}: {j}");
                    // Cold: the app fetches its dependencies, the base's.
                    assert!(
                        std::process::Command::new("cp").arg("-a").arg(&base_src).arg(&dir).status().unwrap().success()
                    );
                    let snap = cache.snapshot(&dir, &snapshot_opts(&opts)).await;
                    assert!(snap.is_done(), "{site}: {}", snap.to_json());
                    // What the site's generation names is what it says.
                    assert_eq!(check(store.as_ref(), &format!("site-{site}/cache.tgz")).await, Ok(1), "{site}");
                } else {
                    assert_eq!(j["hit"], "exact", "{site}, round two: {j}");
                    assert_same_tree(&base_src, &dir);
                }
                settle();
            }
        }
        // The bad object is marked, for gc.
        let marks: Vec<String> = store.list("pool/bad/").await.unwrap().into_iter().map(|o| o.key).collect();
        let id = victim.rsplit('/').next().unwrap();
        assert_eq!(marks, [format!("pool/bad/{id}")]);
    }
}

/// A snapshot on a pod that never restored the bad object (another site,
/// a fresh pod) knows it from the store's mark: it uploads that content
/// again rather than reference the bad object.
#[tokio::test]
async fn a_snapshot_elsewhere_reads_the_mark() {
    let tmp = tempfile::tempdir().unwrap();
    let base_src = tmp.path().join("base");
    tree(&base_src);
    for store in stores("pool-mark", tmp.path()) {
        assert!(Cache::new(store.clone(), "base/deno").snapshot(&base_src, &force()).await.is_done());
        let (victim, _, size) = largest_pack(store.as_ref(), "base/deno").await;
        put(store.as_ref(), &victim, vec![0x33; size as usize]).await;
        // A restore somewhere finds it, and marks it.
        let (dir, opts) = pod(tmp.path(), "finder");
        let out = Cache::new(store.clone(), "site-a/cache.tgz").restore(&dir, &opts).await;
        assert_eq!(out.reason(), Some(Reason::Corrupt), "{}", out.to_json());
        assert_eq!(store.list("pool/bad/").await.unwrap().len(), 1);
        // Another pod, another site, the same content: never restored.
        let (dir, opts) = pod(tmp.path(), "elsewhere");
        assert!(std::process::Command::new("cp").arg("-a").arg(&base_src).arg(&dir).status().unwrap().success());
        let z = Cache::new(store.clone(), "site-z/cache.tgz");
        let snap = z.snapshot(&dir, &snapshot_opts(&opts)).await;
        assert!(snap.is_done(), "{}", snap.to_json());
        assert!(snap.to_json()["pool_added"].as_u64().unwrap() >= size, "{}", snap.to_json());
        assert_eq!(check(store.as_ref(), "site-z/cache.tgz").await, Ok(1));
        let (again, opts) = pod(tmp.path(), "z-again");
        assert_eq!(z.restore(&again, &opts).await.to_json()["hit"], "exact");
        assert_same_tree(&base_src, &again);
        settle();
    }
}

/// A pool object of another length than its content (no mark yet): the
/// snapshot's HEAD finds it, refuses to skip it, uploads the content
/// salted, and marks the object.
#[tokio::test]
async fn a_head_of_the_wrong_length_is_never_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    for store in stores("pool-head", tmp.path()) {
        assert!(Cache::new(store.clone(), "first/k").snapshot(&src, &force()).await.is_done());
        let (victim, id, _) = largest_pack(store.as_ref(), "first/k").await;
        put(store.as_ref(), &victim, b"shorter than the pack".to_vec()).await;
        // Another key, the same content (another dir: no shared state).
        let copy = tmp.path().join(format!("copy-{}", rand::random::<u32>()));
        assert!(std::process::Command::new("cp").arg("-a").arg(&src).arg(&copy).status().unwrap().success());
        let second = Cache::new(store.clone(), "second/k");
        let snap = second.snapshot(&copy, &force()).await;
        assert!(snap.is_done(), "{}", snap.to_json());
        assert_eq!(check(store.as_ref(), "second/k").await, Ok(1));
        let (_, m) = manifests(store.as_ref(), "second/k").await.unwrap().remove(0);
        assert!(m.packs.iter().all(|p| p.id != id), "the bad object is not named");
        let marks: Vec<String> = store.list("pool/bad/").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(marks, [format!("pool/bad/{id}.pack")]);
        let dest = tmp.path().join(format!("dest-{}", rand::random::<u32>()));
        assert!(second.restore(&dest, &RestoreOptions::default()).await.is_done());
        assert_same_tree(&src, &dest);
        settle();
    }
}

/// gc without sampling: only marks and the listing's sizes.
fn gc_unsampled() -> GcOptions {
    GcOptions { keep: 3, grace: Duration::ZERO, verify_rate: 0.0, ..Default::default() }
}

/// Two keys with the same content (both name the same packs) and a third
/// with other content.
async fn two_sharing_and_one_apart(store: &Arc<dyn Store>, tmp: &std::path::Path, src: &std::path::Path) {
    assert!(Cache::new(store.clone(), "a/k").snapshot(src, &force()).await.is_done());
    let copy = tmp.join(format!("copy-{}", rand::random::<u32>()));
    assert!(std::process::Command::new("cp").arg("-a").arg(src).arg(&copy).status().unwrap().success());
    assert!(Cache::new(store.clone(), "b/k").snapshot(&copy, &force()).await.is_done());
    let other = tmp.join(format!("other-{}", rand::random::<u32>()));
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("alone.txt"), b"content no other key has").unwrap();
    assert!(Cache::new(store.clone(), "c/k").snapshot(&other, &force()).await.is_done());
}

/// gc reads every marked object whole: a bad one goes, with every
/// generation naming it, then its mark; a mark on a good object (anyone
/// with pool write can plant one) is cleared and nothing else happens.
/// Then the content can go up again under its own name.
#[tokio::test]
async fn gc_acts_on_a_mark_only_once_it_has_read_the_object() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    for store in stores("pool-gc-marks", tmp.path()) {
        two_sharing_and_one_apart(&store, tmp.path(), &src).await;
        let (victim, id, size) = largest_pack(store.as_ref(), "a/k").await;
        let (good, good_id, _) = largest_pack(store.as_ref(), "c/k").await;
        put(store.as_ref(), &victim, vec![0x5a; size as usize]).await;
        // A restore finds it, and marks it; someone plants a false mark.
        let dir = tmp.path().join(format!("d-{}", rand::random::<u32>()));
        let out = Cache::new(store.clone(), "a/k").restore(&dir, &RestoreOptions::default()).await;
        assert_eq!(out.reason(), Some(Reason::Corrupt), "{}", out.to_json());
        assert!(store.put_new(&format!("pool/bad/{good_id}.pack"), b"{}".to_vec().into()).await.unwrap());
        assert_eq!(store.list("pool/bad/").await.unwrap().len(), 2);

        let r = gc_store(store.as_ref(), &gc_unsampled()).await.unwrap();
        assert_eq!((r.bad_objects, r.generations_withdrawn_bad, r.false_marks), (1, 2, 1), "{r:?}");
        assert_eq!(r.objects_verified, 2, "{r:?}");
        assert!(store.head(&victim).await.unwrap().is_none(), "the bad object is gone");
        assert!(store.list("pool/bad/").await.unwrap().is_empty(), "both marks are gone");
        for key in ["a/k", "b/k"] {
            assert!(manifests(store.as_ref(), key).await.unwrap().is_empty(), "{key}'s generation is withdrawn");
        }
        assert!(store.head(&good).await.unwrap().is_some(), "the falsely marked object stays");
        assert_eq!(check(store.as_ref(), "c/k").await, Ok(1));
        // No mark, no object: the next snapshot uploads it under its own name.
        assert!(Cache::new(store.clone(), "a/k").snapshot(&src, &force()).await.is_done());
        assert_eq!(check(store.as_ref(), "a/k").await, Ok(1));
        assert!(store.head(&format!("pool/{}/{id}.pack", &id[..2])).await.unwrap().is_some());
        let r = gc_store(store.as_ref(), &gc_unsampled()).await.unwrap();
        assert_eq!((r.bad_objects, r.generations_withdrawn_bad, r.false_marks), (0, 0, 0), "{r:?}");
        settle();
    }
}

/// A kept pack whose listed size is not what its generations say is read
/// whole (no mark, no sample needed), found bad, and goes with them.
#[tokio::test]
async fn gc_finds_a_kept_pack_of_the_wrong_length_in_the_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    for store in stores("pool-gc-length", tmp.path()) {
        two_sharing_and_one_apart(&store, tmp.path(), &src).await;
        let (victim, _, _) = largest_pack(store.as_ref(), "a/k").await;
        put(store.as_ref(), &victim, b"not the pack".to_vec()).await;
        let r = gc_store(store.as_ref(), &gc_unsampled()).await.unwrap();
        assert_eq!((r.objects_verified, r.bad_objects, r.generations_withdrawn_bad), (1, 1, 2), "{r:?}");
        assert!(store.head(&victim).await.unwrap().is_none());
        assert_eq!(check(store.as_ref(), "c/k").await, Ok(1));
        settle();
    }
}

/// A kept pack overwritten with bytes of the same length, and nobody has
/// restored it since: only the sample finds it. At rate 0 it stays; at
/// rate 1 every kept object is read whole, and it goes.
#[tokio::test]
async fn gc_samples_what_nobody_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    for store in stores("pool-gc-sample", tmp.path()) {
        two_sharing_and_one_apart(&store, tmp.path(), &src).await;
        let (victim, _, size) = largest_pack(store.as_ref(), "a/k").await;
        put(store.as_ref(), &victim, vec![0x77; size as usize]).await;
        let r = gc_store(store.as_ref(), &gc_unsampled()).await.unwrap();
        assert_eq!((r.objects_verified, r.bad_objects), (0, 0), "{r:?}");
        // A budget too small for anything reads nothing.
        let tiny = GcOptions { verify_rate: 1.0, verify_bytes: 10, ..gc_unsampled() };
        let r = gc_store(store.as_ref(), &tiny).await.unwrap();
        assert_eq!((r.objects_verified, r.bad_objects), (0, 0), "{r:?}");
        let all = GcOptions { verify_rate: 1.0, ..gc_unsampled() };
        let r = gc_store(store.as_ref(), &all).await.unwrap();
        assert_eq!((r.bad_objects, r.generations_withdrawn_bad), (1, 2), "{r:?}");
        assert_eq!(r.objects_verified, r.packs_kept + 1, "every kept object, and the bad one: {r:?}");
        assert!(store.head(&victim).await.unwrap().is_none());
        let bad_rate = GcOptions { verify_rate: 1.5, ..gc_unsampled() };
        assert!(gc_store(store.as_ref(), &bad_rate).await.unwrap_err().to_string().contains("verify rate"));
        settle();
    }
}

/// What the sandbox policy requires (deploy/iam/sandbox-policy.json): every
/// write to the pool is one PUT carrying `If-None-Match: *`, never a
/// multipart upload (whose parts cannot carry it): packs, pieces, salted
/// copies and marks alike. Seen on the wire, through a proxy in front of
/// the test S3 server.
#[tokio::test]
async fn every_pool_write_is_one_put_with_if_none_match() {
    use sandcache_testkit::faults::FaultProxy;
    let Some(spec) = sandcache_testkit::s3::spec("pool-if-none-match") else { return };
    let proxy = FaultProxy::start(spec.endpoint.as_deref().unwrap()).await;
    let mut via = spec.clone();
    via.endpoint = Some(proxy.url());
    let store: Arc<dyn Store> =
        Arc::new(sandcache_store::S3Store::new(&via, &sandcache_store::StoreOptions::default()).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    packages(&src, 300);
    tree(&src);
    // A base (packs, pieces), one of its packs overwritten, a restore that
    // marks it, and a snapshot that uploads that content salted.
    assert!(Cache::new(store.clone(), "base/deno").snapshot(&src, &force()).await.is_done());
    let (victim, _, size) = largest_pack(store.as_ref(), "base/deno").await;
    put(store.as_ref(), &victim, vec![0x5a; size as usize]).await;
    let (dir, opts) = pod(tmp.path(), "wire");
    let site = Cache::new(store.clone(), "site/cache.tgz");
    assert_eq!(site.restore(&dir, &opts).await.reason(), Some(Reason::Corrupt));
    assert!(std::process::Command::new("cp").arg("-a").arg(&src).arg(&dir).status().unwrap().success());
    assert!(site.snapshot(&dir, &snapshot_opts(&opts)).await.is_done());
    assert_eq!(check(store.as_ref(), "site/cache.tgz").await, Ok(1));

    let writes = proxy.take_writes();
    let pool: Vec<_> = writes.iter().filter(|w| w.path.contains("/pool/")).collect();
    let kinds = |ext: &str| pool.iter().filter(|w| w.path.contains(ext)).count();
    assert!(kinds(".pack") >= 3 && kinds(".tree") >= 2 && kinds("/pool/bad/") == 1, "{pool:#?}");
    for w in &pool {
        // The one overwrite is this test's own, with `put`.
        if w.path.ends_with(victim.as_str()) && w.if_none_match.is_none() {
            continue;
        }
        assert_eq!((w.method.as_str(), w.if_none_match.as_deref()), ("PUT", Some("*")), "{w:?}");
        assert!(!w.path.contains('?'), "no multipart: {w:?}");
    }
    settle();
}
