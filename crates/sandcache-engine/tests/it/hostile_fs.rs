//! The snapshot against a DIR the worker changes while root reads it
//! (issue 10, point 5 a, c and e).
//!
//! * A worker-uid process swaps, in a loop, a file for a symlink to a
//!   root-only file, another for a symlink to `/dev/zero`, a directory for a
//!   symlink to a root-only directory, and DIR itself for a symlink, while
//!   root runs many snapshots (native and tgz) of DIR. Every stored object,
//!   decompressed, is searched for the root-only bytes, and the root-only
//!   file and directory must not have been read at all (their atime).
//! * A FIFO, a symlink to `/dev/zero`, a character device and a 15 TiB
//!   sparse file inside DIR, under a short deadline: the snapshot ends in
//!   time with a named reason, and its reading thread is really gone.
//!
//! The swapper needs root (to run it as another uid, and to own the secret
//! files); without root that test skips, saying so.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sandcache_engine::{Cache, Format, Limits, Reason, RestoreOptions, SnapshotOptions};
use sandcache_store::{LocalStore, Store};
use sandcache_testkit::tree::sample_tree;

/// The worker's uid and gid: unused on CI machines and dev boxes.
const WORKER: u32 = 23456;
/// Where the swapper finds its tree (set only for the child process).
const SWAPPER_ENV: &str = "SANDCACHE_TEST_SWAPPER";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// `chown -hR WORKER:WORKER p`.
fn give_to_worker(p: &Path) {
    std::os::unix::fs::lchown(p, Some(WORKER), Some(WORKER)).unwrap();
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            give_to_worker(&e.unwrap().path());
        }
    }
}

/// An atime that any read moves, even under `relatime` (it is older than
/// the mtime).
const OLD_ATIME: Duration = Duration::from_secs(1_000_000_000);

fn set_old_atime(p: &Path) {
    let t = SystemTime::UNIX_EPOCH + OLD_ATIME;
    fs::File::open(p).unwrap().set_times(fs::FileTimes::new().set_accessed(t)).unwrap();
}

fn atime(p: &Path) -> i64 {
    fs::symlink_metadata(p).unwrap().atime()
}

/// Not a test on its own: the worker's swapper, run as uid [`WORKER`] in a
/// child process by [`a_worker_swapping_entries_never_gets_root_only_bytes_stored`].
/// Without its variable it does nothing.
#[test]
fn swapper_child() {
    let Some(site) = std::env::var_os(SWAPPER_ENV) else { return };
    use rustix::fs::{CWD, Mode, OFlags, RenameFlags};
    let site = PathBuf::from(site);
    let open = |p: &Path| rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    // By fd: the swaps go on whatever DIR's own name points at meanwhile.
    let (site_fd, npm) = (open(&site), open(&site.join("deno-dir/npm")));
    // Each pair is exchanged (renameat2 RENAME_EXCHANGE, atomic) and,
    // after a pause of 0 to 50 µs, exchanged back: the hostile object is in
    // DIR for short, random windows, as an attacker timing the lstat-open
    // gap would place it. The symlinks wait outside DIR in between.
    type Fd = rustix::fd::OwnedFd;
    let pairs: [(&Fd, &str, &Fd, &str); 4] = [
        (&npm, "f.js", &site_fd, "f.js.link"), // a file ⇄ a symlink to a root-only file
        (&npm, "h.js", &site_fd, "h.js.zero"), // a file ⇄ a symlink to /dev/zero
        (&npm, "pkg", &site_fd, "pkg.link"),   // a directory ⇄ a symlink to a root-only dir
        (&site_fd, "deno-dir", &site_fd, "deno-dir.link"), // DIR itself ⇄ a symlink
    ];
    fs::write(site.join("ready"), b"").unwrap();
    let (start, mut swaps, mut x) = (Instant::now(), 0u64, 0x9e37_79b9_7f4a_7c15u64);
    let pause = |us: u64| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_micros(us) {
            std::hint::spin_loop();
        }
    };
    while start.elapsed() < Duration::from_secs(120) && swaps < 50_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (da, a, db, b) = pairs[(x % 4) as usize];
        if rustix::fs::renameat_with(da, a, db, b, RenameFlags::EXCHANGE).is_ok() {
            swaps += 1;
            pause(x % 50);
            rustix::fs::renameat_with(da, a, db, b, RenameFlags::EXCHANGE).unwrap();
        }
        if x % 32 == 0 {
            // A quiet spell, for snapshots that see no swap at all.
            std::thread::sleep(Duration::from_micros(x % 3000));
        }
        if swaps % 64 == 0 && rustix::fs::statat(CWD, site.join("stop"), rustix::fs::AtFlags::empty()).is_ok() {
            break;
        }
    }
    println!("swaps={swaps}");
}

/// The running test binary, where uid [`WORKER`] can execute it: in place
/// if every directory on the way lets others through, else a copy.
fn exe_for_worker(tmp: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let reachable = exe.ancestors().skip(1).all(|d| fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0))
        && fs::metadata(&exe).is_ok_and(|m| m.mode() & 0o001 != 0);
    if reachable {
        return exe;
    }
    let copy = tmp.join("swapper");
    fs::copy(&exe, &copy).unwrap();
    chmod(&copy, 0o755);
    copy
}

/// Runs the test `hostile_fs::<test>` of this binary as uid [`WORKER`], with
/// `env` set, and waits until it has written `ready`.
fn start_as_worker(tmp: &Path, test: &str, env: (&str, &Path), ready: &Path) -> std::process::Child {
    let mut child = Command::new(exe_for_worker(tmp))
        .args([&format!("hostile_fs::{test}"), "--exact", "--nocapture", "--test-threads", "1"])
        .env(env.0, env.1)
        .uid(WORKER)
        .gid(WORKER)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waited = Instant::now();
    while !ready.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the {test} exited before starting");
        assert!(waited.elapsed() < Duration::from_secs(20), "the {test} never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Every stored object, and its decompression when it is gzip or zstd.
fn stored_bytes(store: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![store.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
                continue;
            }
            let raw = fs::read(&p).unwrap();
            // As far as it decodes: an upload cut at its deadline leaves a
            // partial temporary object, searched too.
            let decoded = |mut r: Box<dyn Read + '_>| {
                let (mut plain, mut buf) = (Vec::new(), vec![0; 1 << 16]);
                while let Ok(n @ 1..) = r.read(&mut buf) {
                    plain.extend_from_slice(&buf[..n]);
                }
                plain
            };
            if raw.starts_with(&[0x1f, 0x8b]) {
                out.push((p.clone(), decoded(Box::new(flate2::read::MultiGzDecoder::new(&raw[..])))));
            } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                // Packs are concatenated frames; manifests one frame.
                out.push((p.clone(), decoded(Box::new(zstd::stream::read::Decoder::new(&raw[..]).unwrap()))));
            }
            out.push((p, raw));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_swapping_entries_never_gets_root_only_bytes_stored() {
    if !is_root() {
        eprintln!("skipping: running the swapper as uid {WORKER} and owning root-only files needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    let marker_file = format!("ROOT-ONLY-FILE-{:016x}", rand::random::<u64>());
    let marker_dir = format!("ROOT-ONLY-DIR-{:016x}", rand::random::<u64>());

    // Root's secrets, outside DIR: a 0600 file and a 0700 dir.
    let secret = tmp.path().join("secret");
    fs::create_dir_all(secret.join("dir")).unwrap();
    fs::write(secret.join("file"), marker_file.repeat(64)).unwrap();
    fs::write(secret.join("dir/inner"), marker_dir.repeat(64)).unwrap();
    chmod(&secret.join("file"), 0o600);
    chmod(&secret.join("dir/inner"), 0o600);
    chmod(&secret.join("dir"), 0o700);
    chmod(&secret, 0o711);
    let watched = [secret.join("file"), secret.join("dir"), secret.join("dir/inner")];

    // The worker's site: DIR and its parent are the worker's.
    let site = tmp.path().join("site");
    let dir = site.join("deno-dir");
    sample_tree(&dir);
    let npm = dir.join("npm");
    fs::write(npm.join("f.js"), b"export const f = 1;").unwrap();
    fs::write(npm.join("h.js"), b"export const h = 1;").unwrap();
    fs::create_dir_all(npm.join("pkg")).unwrap();
    fs::write(npm.join("pkg/index.js"), b"export default 1;").unwrap();
    symlink(secret.join("file"), site.join("f.js.link")).unwrap();
    symlink("/dev/zero", site.join("h.js.zero")).unwrap();
    symlink(secret.join("dir"), site.join("pkg.link")).unwrap();
    symlink(secret.join("dir"), site.join("deno-dir.link")).unwrap();
    give_to_worker(&site);
    chmod(&site, 0o755);
    for p in &watched {
        set_old_atime(p);
    }
    let store_dir = tmp.path().join("store");
    fs::create_dir(&store_dir).unwrap();
    chmod(&store_dir, 0o700);
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(store_dir.clone()));

    let mut swapper = start_as_worker(tmp.path(), "swapper_child", (SWAPPER_ENV, &site), &site.join("ready"));

    // Root snapshots, four at a time (they take turns on DIR's lock).
    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    // One detail of each kind of skip, for the log.
    let details: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let (rounds, budget) = (250, Duration::from_secs(30));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (format, key) in
        [(Format::Native, "n/a"), (Format::Native, "n/b"), (Format::Tgz, "t/a.tgz"), (Format::Tgz, "t/b.tgz")]
    {
        let (store, dir, outcomes, details) = (store.clone(), dir.clone(), outcomes.clone(), details.clone());
        tasks.push(tokio::spawn(async move {
            let cache = Cache::new(store, key);
            let opts = SnapshotOptions { format, force: true, timeout: Duration::from_secs(15), ..Default::default() };
            for _ in 0..rounds {
                if started.elapsed() > budget {
                    break;
                }
                let out = cache.snapshot(&dir, &opts).await;
                let label = match &out.result {
                    Ok(_) => "done".to_owned(),
                    Err(s) => {
                        assert_ne!(s.reason, Reason::TimedOut, "a snapshot of a tiny tree hung: {}", s.detail);
                        if s.reason == Reason::Corrupt {
                            // The native format refuses to store a link out
                            // of DIR (one listed while swapped in).
                            assert!(s.detail.contains("points outside"), "{}", s.detail);
                        }
                        // Caught at DIR, or inside it between lstat and open.
                        let inside = if s.detail.contains("changed while") { " (inside DIR)" } else { "" };
                        let label = format!("{}{inside}", s.reason.as_str());
                        details.lock().unwrap().entry(label.clone()).or_insert_with(|| s.detail.clone());
                        label
                    }
                };
                *outcomes.lock().unwrap().entry(format!("{format:?} {label}")).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    fs::write(site.join("stop"), b"").unwrap();
    let stopping = Instant::now();
    while swapper.try_wait().unwrap().is_none() && stopping.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = swapper.kill();
    let out = swapper.wait_with_output().unwrap();
    let swaps =
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| l.split("swaps=").nth(1)?.trim().parse::<u64>().ok());
    let outcomes = outcomes.lock().unwrap().clone();
    eprintln!("worker uid {WORKER}: {swaps:?} swaps; root's snapshots: {outcomes:?}");
    for (reason, detail) in details.lock().unwrap().iter() {
        eprintln!("  e.g. {reason}: {detail}");
    }

    // Nothing of root's reached the store, compressed or not.
    let objects = stored_bytes(&store_dir);
    for (path, bytes) in &objects {
        for marker in [&marker_file, &marker_dir] {
            assert!(!contains(bytes, marker.as_bytes()), "{marker} is in {}", path.display());
        }
        assert!(!contains(bytes, b"AWS_SECRET_ACCESS_KEY"), "an environment in {}", path.display());
    }
    // Nothing outside DIR was even read: a read moves an atime this old.
    let read: Vec<&PathBuf> = watched.iter().filter(|p| atime(p) != OLD_ATIME.as_secs() as i64).collect();
    assert!(read.is_empty(), "read by the snapshots: {read:?}");
    let _ = fs::read(&watched[0]).unwrap();
    if atime(&watched[0]) == OLD_ATIME.as_secs() as i64 {
        eprintln!("note: this filesystem does not record reads (noatime); the atime check proved nothing");
    }

    assert!(swaps.is_some_and(|n| n > 1000), "the swapper did not run: {swaps:?}");
    let count = |what: &str| outcomes.iter().filter(|(k, _)| k.ends_with(what)).map(|(_, n)| n).sum::<u64>();
    for format in ["Native", "Tgz"] {
        let done = outcomes.get(&format!("{format} done")).copied().unwrap_or(0);
        assert!(done > 0, "no {format} snapshot was stored, so the search proves little: {outcomes:?}");
    }
    assert!(count(" unsafe") > 0, "no swap was caught: {outcomes:?}");
    let other: u64 = outcomes
        .iter()
        .filter(|(k, _)| {
            !["done", "unsafe", "unsafe (inside DIR)", "io_error (inside DIR)", "unchanged", "Native corrupt"]
                .iter()
                .any(|r| k.ends_with(r))
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(other, 0, "{outcomes:?}");
    // What was stored restores, verified, and holds the worker's files only.
    for key in ["n/a", "t/a.tgz"] {
        let back = tmp.path().join(format!("back-{}", key.replace('/', "-")));
        let out = Cache::new(store.clone(), key).restore(&back, &RestoreOptions::default()).await;
        match out.reason() {
            None => {
                let f = back.join("npm/f.js");
                if fs::symlink_metadata(&f).is_ok_and(|m| m.is_file()) {
                    assert_eq!(fs::read(&f).unwrap(), b"export const f = 1;");
                }
            }
            // A link listed while swapped in is stored as a link (tgz); the
            // restore refuses a link out of DIR.
            Some(Reason::Unsafe) => assert!(out.result.as_ref().unwrap_err().detail.contains("points outside")),
            _ => panic!("{key}: {:?}", out.result),
        }
    }
    assert!(sandcache_engine::wait_for_background(Duration::from_secs(20)));
}

/// Threads of the current process named `name`: their state and where
/// they wait in the kernel.
fn threads_named(name: &str) -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            (fs::read_to_string(t.join("comm")).ok()?.trim_end() == name).then(|| {
                let stat = fs::read_to_string(t.join("stat")).unwrap_or_default();
                let state = stat.rsplit(") ").next().and_then(|r| r.split(' ').next()).unwrap_or("?").to_owned();
                format!("{state}/{}", fs::read_to_string(t.join("wchan")).unwrap_or_default())
            })
        })
        .collect()
}

/// A FIFO, a symlink to /dev/zero, a character device (as root) and a
/// 15 TiB sparse file in DIR. Returns the sparse file's path, or `None`
/// when this filesystem cannot hold one.
fn special_tree(dir: &Path) -> Option<PathBuf> {
    sample_tree(dir);
    let at = |n: &str| dir.join(n);
    let mode = rustix::fs::Mode::from_raw_mode(0o644);
    rustix::fs::mknodat(rustix::fs::CWD, at("fifo"), rustix::fs::FileType::Fifo, mode, 0).unwrap();
    symlink("/dev/zero", at("zero-link")).unwrap();
    if is_root() {
        let dev = rustix::fs::makedev(1, 5); // /dev/zero's
        rustix::fs::mknodat(rustix::fs::CWD, at("zero-dev"), rustix::fs::FileType::CharacterDevice, mode, dev).unwrap();
    } else {
        eprintln!("not root: no device node in this run");
    }
    let huge = at("huge");
    match fs::File::create(&huge).and_then(|f| f.set_len(15 << 40)) {
        Ok(()) => Some(huge),
        Err(e) => {
            eprintln!("skipping the sparse file: {e}");
            let _ = fs::remove_file(&huge);
            None
        }
    }
}

#[test]
fn special_files_and_a_15_tib_file_end_within_the_deadline_and_stop_their_thread() {
    const NAME: &str = "sc-hostile-dl";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(NAME)
        .thread_keep_alive(Duration::from_millis(100))
        .enable_all()
        .build()
        .unwrap();
    // The baseline: the one worker thread, once it has started.
    let baseline = 1;
    let started = Instant::now();
    while threads_named(NAME).len() < baseline {
        rt.block_on(async { tokio::spawn(async {}).await.unwrap() });
        assert!(started.elapsed() < Duration::from_secs(10), "the runtime's worker never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    let huge = special_tree(&dir);
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let unbounded = Limits { max_bytes: u64::MAX, ..Limits::default() };
    for format in [Format::Native, Format::Tgz] {
        let cache = Cache::new(store.clone(), format!("{format:?}/cache"));
        let snapshot = |timeout: u64, limits: Limits| {
            let opts = SnapshotOptions {
                format,
                force: true,
                timeout: Duration::from_secs(timeout),
                limits,
                ..Default::default()
            };
            let start = Instant::now();
            let out = rt.block_on(cache.snapshot(&dir, &opts));
            let took = start.elapsed();
            assert!(took < Duration::from_secs(timeout + 1), "{format:?}: deadline {timeout} s, took {took:?}");
            (out, took)
        };
        if let Some(huge) = &huge {
            // Over the default bound: refused before a byte of it is read.
            let (out, took) = snapshot(3, Limits::default());
            let skip = out.result.as_ref().expect_err("too large");
            assert_eq!(skip.reason, Reason::TooLarge, "{format:?}: {}", skip.detail);
            assert!(skip.detail.contains(&huge.display().to_string()), "{}", skip.detail);
            eprintln!("{format:?}, default limits: {} after {took:?}: {}", skip.reason, skip.detail);

            // Allowed: read until the deadline, and no further.
            let (out, took) = snapshot(2, unbounded);
            assert_eq!(out.reason(), Some(Reason::TimedOut), "{format:?}: {:?}", out.result);
            let after = Instant::now();
            while threads_named(NAME).len() > baseline {
                assert!(
                    after.elapsed() < Duration::from_secs(1),
                    "{format:?}: threads still alive 1 s after the deadline (baseline {baseline}): {:?}",
                    threads_named(NAME)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            eprintln!("{format:?}, unbounded: timed out after {took:?}; the reader stopped in {:?}", after.elapsed());
        }
    }
    // Without the sparse file, all within the deadline: the FIFO and the
    // device are left out, never opened; the link to /dev/zero is stored as
    // a link by tgz, and refused by native (whose manifests hold no link
    // out of DIR).
    if let Some(huge) = &huge {
        fs::remove_file(huge).unwrap();
    }
    for format in [Format::Native, Format::Tgz] {
        let cache = Cache::new(store.clone(), format!("{format:?}/small"));
        let opts = SnapshotOptions { format, force: true, timeout: Duration::from_secs(3), ..Default::default() };
        let snapshot = || {
            let start = Instant::now();
            let out = rt.block_on(cache.snapshot(&dir, &opts));
            assert!(start.elapsed() < Duration::from_secs(4), "{format:?}: {:?}", start.elapsed());
            out
        };
        let out = snapshot();
        if format == Format::Native {
            let skip = out.result.as_ref().expect_err("a link out of DIR");
            assert_eq!(skip.reason, Reason::Corrupt, "{}", skip.detail);
            assert!(skip.detail.contains("zero-link"), "{}", skip.detail);
            fs::rename(dir.join("zero-link"), tmp.path().join("zero-link")).unwrap();
            let out = snapshot();
            fs::rename(tmp.path().join("zero-link"), dir.join("zero-link")).unwrap();
            assert!(out.is_done(), "{format:?}: {:?}", out.result);
        } else {
            assert!(out.is_done(), "{format:?}: {:?}", out.result);
        }
        // What was stored: the names in the decompressed objects.
        let name = |n: &str| match format {
            Format::Native => format!("\"path\":\"{n}\""),
            Format::Tgz => format!("deno-dir/{n}\0"),
        };
        let stored: Vec<Vec<u8>> = stored_bytes(&tmp.path().join("store"))
            .into_iter()
            // Native entries live in the pool's manifest pieces.
            .filter(|(p, _)| {
                let p = p.to_string_lossy();
                p.contains(&format!("{format:?}/small")) || (format == Format::Native && p.ends_with(".tree"))
            })
            .map(|(_, b)| b)
            .collect();
        let holds = |n: &str| stored.iter().any(|b| contains(b, name(n).as_bytes()));
        assert!(holds("npm/registry.npmjs.org/pkg/latest"), "{format:?}: the tree is stored");
        assert_eq!(holds("zero-link"), format == Format::Tgz, "{format:?}: the link is stored as a link");
        for left_out in ["fifo", "zero-dev"] {
            assert!(!holds(left_out), "{format:?}: {left_out} was stored");
        }
    }
    assert!(sandcache_engine::wait_for_background(Duration::from_secs(20)));
}

#[tokio::test]
async fn a_dir_that_is_a_symlink_is_unsafe_and_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    sample_tree(&real);
    let link = tmp.path().join("deno-dir");
    symlink(&real, &link).unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    for format in [Format::Native, Format::Tgz] {
        let cache = Cache::new(store.clone(), format!("{format:?}/cache"));
        let out = cache.snapshot(&link, &SnapshotOptions { format, ..Default::default() }).await;
        let skip = out.result.as_ref().expect_err("refused");
        assert_eq!(skip.reason, Reason::Unsafe, "{format:?}: {}", skip.detail);
        assert!(
            skip.detail.contains(&link.display().to_string()) && skip.detail.contains("symlink"),
            "{}",
            skip.detail
        );
    }
    let stored = fs::read_dir(tmp.path().join("store")).map_or(0, |d| d.count());
    assert_eq!(stored, 0, "nothing was stored");
}

/// The lock, state and index beside DIR (the CLI's default place), planted
/// as symlinks by whoever can write DIR's parent: to a 0600 file and to
/// `/dev/zero`. Neither a snapshot nor a restore follows one: the lock is
/// refused (a skip, naming it), the state and index are read as missing and
/// replaced by regular files, and the targets are untouched (issue 10, 5d).
#[tokio::test]
async fn planted_bookkeeping_symlinks_are_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    sample_tree(&dir);
    let target = tmp.path().join("private");
    fs::write(&target, b"0600 file the runner must not overwrite").unwrap();
    chmod(&target, 0o600);
    let before = fs::read(&target).unwrap();
    let beside = |what: &str| tmp.path().join(format!(".deno-dir.sandcache{what}"));
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let cache = Cache::new(store, "k");
    let snap = SnapshotOptions { format: Format::Native, force: true, ..Default::default() };

    // A planted lock: refused, named, nothing written through it.
    symlink(&target, beside(".lock")).unwrap();
    let o = cache.snapshot(&dir, &snap).await;
    let skip = o.result.as_ref().expect_err("a symlinked lock is refused");
    assert!(skip.detail.contains("symlink"), "{}", skip.detail);
    fs::remove_file(beside(".lock")).unwrap();

    // Planted state and index: one at the private file, one at /dev/zero.
    symlink(&target, beside("-state.json")).unwrap();
    symlink("/dev/zero", beside("-index.json")).unwrap();
    let started = Instant::now();
    assert!(cache.snapshot(&dir, &snap).await.is_done());
    assert!(started.elapsed() < Duration::from_secs(10), "/dev/zero was not read");
    sandcache_engine::wait_for_background(Duration::from_secs(10));
    for what in ["-state.json", "-index.json"] {
        let m = fs::symlink_metadata(beside(what)).unwrap();
        assert!(m.file_type().is_file(), "{what} was replaced by a regular file, not written through");
    }
    // And the same before a restore.
    for what in ["-state.json", "-index.json"] {
        fs::remove_file(beside(what)).unwrap();
    }
    symlink(&target, beside("-state.json")).unwrap();
    symlink(&target, beside("-index.json")).unwrap();
    assert!(cache.restore(&dir, &RestoreOptions::default()).await.is_done());
    sandcache_engine::wait_for_background(Duration::from_secs(10));
    assert_eq!(fs::read(&target).unwrap(), before, "the 0600 file is untouched");
    assert!(fs::symlink_metadata(beside("-state.json")).unwrap().file_type().is_file());
    // A native restore keeps no index: the planted link is removed (the
    // link itself, never what it names).
    assert!(fs::symlink_metadata(beside("-index.json")).is_err());
}

/// DIR inside a dir the worker owns (the runner's legacy DENO_DIR_RUN in
/// the clone), through a symlink the worker made there (a committed
/// `.cache -> /etc`): a root restore is `unsafe`, names the link, and
/// creates or writes nothing where it points; a snapshot reads nothing
/// there (issue 24, part 6).
#[tokio::test]
async fn a_symlink_the_worker_made_among_dirs_parents_is_never_followed() {
    if !is_root() {
        eprintln!("skipping: needs root to own the link as another uid");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (work, outside) = (tmp.path().join("work"), tmp.path().join("outside"));
    fs::create_dir(&work).unwrap();
    fs::create_dir_all(outside.join("deno")).unwrap();
    fs::write(outside.join("deno/secret"), b"root-only bytes").unwrap();
    chmod(&outside.join("deno/secret"), 0o600);
    symlink(&outside, work.join(".cache")).unwrap();
    give_to_worker(&work);
    let listing = |d: &Path| {
        let mut names: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let before = (listing(&outside), listing(&outside.join("deno")));

    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let src = tmp.path().join("src");
    sample_tree(&src);
    let cache = Cache::new(store.clone(), "site/cache");
    let snap = SnapshotOptions { format: Format::Native, ..Default::default() };
    assert!(cache.snapshot(&src, &snap).await.is_done());

    for dir in [work.join(".cache/deno"), work.join(".cache/new/deno")] {
        let opts = RestoreOptions { owner: Some((WORKER, WORKER)), ..Default::default() };
        let o = cache.restore(&dir, &opts).await;
        let skip = o.result.as_ref().expect_err("refused");
        assert_eq!(skip.reason, Reason::Unsafe, "{}: {}", dir.display(), skip.detail);
        assert!(skip.detail.contains(&work.join(".cache").display().to_string()), "{}", skip.detail);
        let o = Cache::new(store.clone(), "site/other").snapshot(&dir, &snap).await;
        assert_eq!(o.reason(), Some(Reason::Unsafe), "{:?}", o.result);
    }
    sandcache_engine::wait_for_background(Duration::from_secs(10));
    assert_eq!((listing(&outside), listing(&outside.join("deno"))), before, "nothing changed outside");
    assert!(fs::symlink_metadata(work.join(".cache")).unwrap().is_symlink(), "the link itself is left alone");
}

/// Where the restore swapper finds its sandbox (set only for the child).
const RESTORE_SWAPPER_ENV: &str = "SANDCACHE_TEST_RESTORE_SWAPPER";

/// Not a test on its own: the worker's swapper against restores, run as
/// uid [`WORKER`] by [`a_worker_racing_restores_never_gets_a_write_outside_dir`].
/// In a loop it replaces every sandcache name it can see (staging and trash
/// dirs inside DIR and beside it) by a symlink to `outside/`, and swaps DIR
/// itself for a symlink to `outside/` and back.
#[test]
fn restore_swapper_child() {
    let Some(sandbox) = std::env::var_os(RESTORE_SWAPPER_ENV) else { return };
    use rustix::fs::{CWD, RenameFlags};
    let sandbox = PathBuf::from(sandbox);
    let dirs = [sandbox.join("mnt/deno-dir"), sandbox.join("open/deno-dir")];
    let outside = sandbox.join("outside");
    fs::write(sandbox.join("open/ready"), b"").unwrap();
    let (start, mut swaps, mut round) = (Instant::now(), 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(120) && !sandbox.join("stop").exists() {
        for dir in &dirs {
            let parent = dir.parent().unwrap();
            for place in [dir.as_path(), parent] {
                let Ok(entries) = fs::read_dir(place) else { continue };
                for e in entries.flatten() {
                    let name = e.file_name();
                    let n = name.to_string_lossy();
                    if (n.starts_with(".sandcache-") || n.contains(".sandcache-")) && !n.ends_with(".moved") {
                        let moved = place.join(format!("{n}.moved"));
                        if fs::rename(e.path(), &moved).is_ok() {
                            let _ = symlink(&outside, e.path());
                            swaps += 1;
                        }
                    }
                }
            }
            // DIR itself, where its parent lets the worker (open/).
            let link = parent.join("deno-dir.link");
            round += 1;
            if round % 16 == 0 && rustix::fs::renameat_with(CWD, dir, CWD, &link, RenameFlags::EXCHANGE).is_ok() {
                swaps += 1;
                std::thread::sleep(Duration::from_micros(200));
                let _ = rustix::fs::renameat_with(CWD, dir, CWD, &link, RenameFlags::EXCHANGE);
            }
        }
    }
    println!("swaps={swaps}");
}

/// Root restores, native and tgz, into a mount-point DIR (staging inside
/// it) and into a DIR whose parent the worker can write (staging beside
/// it), while a worker-uid process races them as above. Nothing outside DIR
/// is ever written (issue 10, point 5 b and c, restore side): `outside/`
/// and a root-only file keep exactly what they had, and every restore ends
/// done or with a named reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_racing_restores_never_gets_a_write_outside_dir() {
    if !is_root() {
        eprintln!("skipping: the worker's swapper runs as another uid, which needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().to_owned();
    chmod(&sandbox, 0o755);
    let outside = sandbox.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("canary"), b"root's").unwrap();
    chmod(&outside, 0o755);
    let before = sandcache_testkit::tree::sandbox_state(&outside, &[], &[]);
    // A mount point DIR, the worker's, and a DIR in a dir the worker can write.
    let mnt = sandbox.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let Some(_fs) = super::resources::Tmpfs::mount(&mnt.join("deno-dir"), "64m") else { return };
    give_to_worker(&mnt.join("deno-dir"));
    let open = sandbox.join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    symlink(&outside, open.join("deno-dir.link")).unwrap();
    std::os::unix::fs::lchown(open.join("deno-dir.link"), Some(WORKER), Some(WORKER)).unwrap();

    // The caches: the sample tree, native and tgz.
    let src = sandbox.join("src");
    sample_tree(&src);
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(sandbox.join("store")));
    for (key, format) in [("n", Format::Native), ("t", Format::Tgz)] {
        let o = Cache::new(store.clone(), key)
            .snapshot(&src, &SnapshotOptions { format, force: true, ..Default::default() })
            .await;
        assert!(o.is_done(), "{}", o.to_json());
    }

    let child =
        start_as_worker(&sandbox, "restore_swapper_child", (RESTORE_SWAPPER_ENV, &sandbox), &open.join("ready"));
    let mut outcomes: BTreeMap<String, u32> = BTreeMap::new();
    for round in 0..240 {
        let (place, dir) = if round % 2 == 0 { ("mnt", mnt.join("deno-dir")) } else { ("open", open.join("deno-dir")) };
        let key = if round % 4 < 2 { "n" } else { "t" };
        let opts =
            RestoreOptions { owner: Some((WORKER, WORKER)), timeout: Duration::from_secs(10), ..Default::default() };
        let o = Cache::new(store.clone(), key).restore(&dir, &opts).await;
        let reason = o.reason().map_or("done", |r| r.as_str());
        *outcomes.entry(format!("{place} {key} {reason}")).or_default() += 1;
    }
    fs::write(sandbox.join("stop"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    sandcache_engine::wait_for_background(Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let swaps = stdout.split_whitespace().find_map(|w| w.strip_prefix("swaps=").map(str::to_owned));
    eprintln!("restore race: {outcomes:?}, swaps {swaps:?}");
    // Staging inside the mount point is out of the worker's reach: restores
    // complete. Beside a DIR in a dir the worker can write, it can take the
    // dir's name (a symlink of its own): those restores refuse, never
    // claiming done with a foreign object in place.
    let done = outcomes.iter().filter(|(k, _)| k.starts_with("mnt") && k.ends_with("done")).count();
    assert!(done > 0, "restores into the mount point completed: {outcomes:?}");
    for k in outcomes.keys() {
        assert!(["done", "unsafe", "io_error"].iter().any(|r| k.ends_with(r)), "{k}");
    }
    assert!(
        swaps.is_some_and(|s| s.parse::<u64>().unwrap() > 0),
        "the swapper swapped: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let after = sandcache_testkit::tree::sandbox_state(&outside, &[], &[]);
    assert_eq!(before, after, "nothing outside DIR was written");
}
