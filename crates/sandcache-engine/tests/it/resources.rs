//! Resources: a disk that fills up, a read-only target, and a target that
//! another process writes while sandcache works on it.
//!
//! The disk and read-only cases mount small tmpfs filesystems, which needs
//! root (CAP_SYS_ADMIN); without it they skip, saying so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sandcache_archive::{Encoding, Layout, WriteOptions};
use sandcache_engine::{Cache, Format, Reason, RestoreOptions, SnapshotOptions, wait_for_background};
use sandcache_store::{LocalStore, Store};
use sandcache_testkit::tree::{listing, noise, sample_tree};

/// A tmpfs of `size` mounted at `at`, unmounted on drop.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs at {} (needs root)", at.display());
            return None;
        }
        Some(Tmpfs(at.to_owned()))
    }

    fn read_only(&self) {
        assert!(Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).status().unwrap().success());
    }

    fn used(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A cache of about 24 MB that will not fit in 8 MB.
fn big_tree(dir: &Path) {
    sample_tree(dir);
    fs::create_dir_all(dir.join("npm/big")).unwrap();
    for i in 0..6 {
        fs::write(dir.join(format!("npm/big/{i}.bin")), noise(4 << 20, &format!("big{i}"))).unwrap();
    }
}

/// Stores `src` under `key` in each form; returns (form, key) pairs.
async fn seed_forms(store: &Arc<dyn Store>, src: &Path) -> Vec<(&'static str, String)> {
    let mut keys = Vec::new();
    for (form, format) in [("native", Format::Native), ("tgz", Format::Tgz)] {
        let key = format!("{form}/cache");
        let out = Cache::new(store.clone(), key.as_str())
            .snapshot(src, &SnapshotOptions { format, force: true, ..Default::default() })
            .await;
        assert!(out.is_done(), "{:?}", out.result);
        keys.push((form, key));
    }
    let mut zst = Vec::new();
    sandcache_archive::write_archive(src, &mut zst, &WriteOptions::new(Layout::Relative, Encoding::Zstd { level: 3 }))
        .unwrap();
    let body = Box::pin(futures::stream::once(async move { Ok(bytes::Bytes::from(zst)) }));
    store.put("zst/cache", body).await.unwrap();
    keys.push(("tar.zst", "zst/cache".into()));
    keys
}

fn scratch_names(parent: &Path) -> Vec<String> {
    fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging") || n.contains("trash"))
        .collect()
}

/// Restores a cache bigger than the disk: each fails with the disk's own
/// error, the previous dir stays whole, and staging is removed (the space
/// comes back). Both layouts: the dir inside a small filesystem, and the
/// dir being the mount point itself (staging then lives inside it).
#[tokio::test]
async fn a_full_disk_fails_the_restore_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let src = tmp.path().join("src/deno-dir");
    big_tree(&src);
    let keys = seed_forms(&store, &src).await;
    for mount_point_is_dir in [false, true] {
        let mnt = tmp.path().join(format!("mnt-{mount_point_is_dir}"));
        let dir = if mount_point_is_dir { mnt.clone() } else { mnt.join("deno-dir") };
        let Some(fs_) = Tmpfs::mount(&mnt, "8m") else { return };
        sample_tree(&dir);
        let before = listing(&dir);
        let used = fs_.used();
        for (form, key) in &keys {
            let out = Cache::new(store.clone(), key.as_str()).restore(&dir, &RestoreOptions::default()).await;
            let what = format!("{form}, mount point is the dir: {mount_point_is_dir}");
            let skip = out.result.as_ref().expect_err(&what);
            assert_eq!(skip.reason, Reason::IoError, "{what}: {}", skip.detail);
            assert!(skip.detail.contains("No space left on device"), "{what}: {}", skip.detail);
            assert!(wait_for_background(Duration::from_secs(20)));
            assert_eq!(listing(&dir), before, "{what}: the previous dir is whole");
            let scratch = if mount_point_is_dir { &dir } else { dir.parent().unwrap() };
            assert_eq!(scratch_names(scratch), Vec::<String>::new(), "{what}: staging left");
            assert!(fs_.used() <= used + (64 << 10), "{what}: the space did not come back");
            eprintln!("{what}: {}: {}", skip.reason, skip.detail);
        }
    }
}

/// A read-only target: a restore fails with a clear reason and changes
/// nothing; a snapshot of it works.
#[tokio::test]
async fn a_read_only_target() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let src = tmp.path().join("src/deno-dir");
    sample_tree(&src);
    let keys = seed_forms(&store, &src).await;
    let mnt = tmp.path().join("ro");
    let Some(fs_) = Tmpfs::mount(&mnt, "16m") else { return };
    let dir = mnt.join("deno-dir");
    sample_tree(&dir);
    fs::write(dir.join("mine"), b"only here").unwrap();
    fs_.read_only();
    let before = listing(&dir);
    for (form, key) in &keys {
        let out = Cache::new(store.clone(), key.as_str()).restore(&dir, &RestoreOptions::default()).await;
        let skip = out.result.as_ref().expect_err(form);
        assert_eq!(skip.reason, Reason::IoError, "{form}: {}", skip.detail);
        assert!(skip.detail.contains("Read-only file system"), "{form}: {}", skip.detail);
        assert_eq!(listing(&dir), before, "{form}");
    }
    let out = Cache::new(store.clone(), "from-ro/cache").snapshot(&dir, &SnapshotOptions::default()).await;
    assert!(out.is_done(), "a read-only dir can still be snapshotted: {:?}", out.result);
    let back = tmp.path().join("back/deno-dir");
    assert!(Cache::new(store.clone(), "from-ro/cache").restore(&back, &RestoreOptions::default()).await.is_done());
    assert_eq!(listing(&back), before);
}

/// Another process writes into the target while it is restored: the
/// restore completes, every stored file is there and verified, and the
/// writer only ever sees a whole tree. Then the writer runs during a
/// snapshot: whatever is stored restores and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_another_process_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let src = tmp.path().join("src/deno-dir");
    big_tree(&src);
    let keys = seed_forms(&store, &src).await;
    let stored = listing(&src);
    let not_writers = |l: Vec<String>| l.into_iter().filter(|e| !e.starts_with("npm/w-")).collect::<Vec<_>>();
    for (form, key) in &keys {
        let dir = tmp.path().join(format!("{form}/deno-dir"));
        sample_tree(&dir);
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (dir, stop, written) = (dir.clone(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    // As Deno would: a new file, by path, in a dir that exists
                    // in both the old and the new tree.
                    if fs::write(dir.join(format!("npm/w-{i}")), noise(64 << 10, "w")).is_ok() {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        };
        let out = Cache::new(store.clone(), key.as_str()).restore(&dir, &RestoreOptions::default()).await;
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(out.is_done(), "{form}: {:?}", out.result);
        assert_eq!(not_writers(listing(&dir)), stored, "{form}: every stored file, verified");
        eprintln!("{form}: restored while another process wrote {} files", written.load(Ordering::Relaxed));
    }

    // A snapshot while files change under it.
    let dir = tmp.path().join("busy/deno-dir");
    big_tree(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::write(dir.join(format!("npm/big/{}.bin", i % 6)), noise(4 << 20, &format!("v{i}")));
                let _ = fs::write(dir.join(format!("npm/w-{i}")), b"x");
                i += 1;
            }
        })
    };
    let mut stored_any = 0;
    for round in 0..5 {
        let out = Cache::new(store.clone(), "busy/cache")
            .snapshot(&dir, &SnapshotOptions { force: true, ..Default::default() })
            .await;
        match &out.result {
            Ok(_) => stored_any += 1,
            Err(s) => {
                assert_eq!(s.reason, Reason::IoError, "round {round}: {}", s.detail);
                assert!(s.detail.contains("changed while"), "round {round}: {}", s.detail);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    sandcache_testkit::generations::check(store.as_ref(), "busy/cache").await.unwrap();
    if stored_any > 0 {
        let back = tmp.path().join("busy-back/deno-dir");
        let out = Cache::new(store.clone(), "busy/cache").restore(&back, &RestoreOptions::default()).await;
        assert!(out.is_done(), "what a busy snapshot stored restores and verifies: {:?}", out.result);
    }
    eprintln!("busy snapshot: {stored_any} of 5 rounds stored, the rest refused a file that changed");
}
