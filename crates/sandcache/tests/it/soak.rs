//! Crash safety and concurrency, with real processes against Garage (or the
//! local store without it).
//!
//! * SIGKILL at random points of restores and snapshots: the next restore
//!   succeeds and verifies, leftover staging is cleaned up, and every stored
//!   generation stays whole. `SANDCACHE_SOAK_TRIALS` sets the number of
//!   trials (6 by default; the soak in the README runs 60).
//! * 8 writer processes snapshot different contents to one key for 20 rounds
//!   while a reader loops restores and gc runs beside them: every restore is
//!   one complete generation, and gc never takes what a generation needs.
//!   `SANDCACHE_SOAK_ROUNDS` sets the rounds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sandcache_store::{LocalStore, S3Store, Store, StoreOptions};
use sandcache_testkit::tree::{listing, noise, sample_tree};

use super::{bin, run};

/// The store the soak runs on: Garage when it is up, else a local dir. The
/// `--store` argument and an open handle for checks.
fn store(test: &str, tmp: &Path) -> (String, Arc<dyn Store>) {
    match sandcache_testkit::s3::spec(test) {
        Some(spec) => {
            let url = format!("s3://{}/{}", spec.bucket, spec.prefix);
            (url, Arc::new(S3Store::new(&spec, &StoreOptions::default()).unwrap()))
        }
        None => {
            let root = tmp.join("store");
            (root.display().to_string(), Arc::new(LocalStore::new(root)))
        }
    }
}

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn check_generations(store: &dyn Store, key: &str) -> Result<usize, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sandcache_testkit::generations::check(store, key))
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("sandcache-staging") || n.contains("sandcache-trash"))
        .collect()
}

/// Two generations: `a` and `b` share most files and differ in a few large
/// ones, so an operation lasts long enough to be killed half-way.
fn trees(tmp: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (tmp.join("a/deno-dir"), tmp.join("b/deno-dir"));
    for (dir, tag) in [(&a, "a"), (&b, "b")] {
        sample_tree(dir);
        fs::create_dir_all(dir.join("npm/big")).unwrap();
        fs::write(dir.join("npm/big/shared.bin"), noise(6 << 20, "shared")).unwrap();
        fs::write(dir.join(format!("npm/big/{tag}.bin")), noise(10 << 20, tag)).unwrap();
        for i in 0..300 {
            fs::write(dir.join(format!("remote/{tag}-{i}.js")), format!("export const v = '{tag}{i}';\n")).unwrap();
        }
    }
    (a, b)
}

#[test]
fn sigkill_at_random_points_never_breaks_the_next_restore() {
    let trials = env_count("SANDCACHE_SOAK_TRIALS", 6);
    let tmp = tempfile::tempdir().unwrap();
    let (url, handle) = store("sigkill", tmp.path());
    let (a, b) = trees(tmp.path());
    let (la, lb) = (listing(&a), listing(&b));
    let sc = |args: &[&str], key: &str, dir: &Path| {
        let mut c = bin();
        c.args(args).args(["--key", key, "--store", &url, "--json", "-q"]).arg("--dir").arg(dir);
        c
    };
    // Both formats start from generation `a`.
    for (key, format) in [("native/cache", "native"), ("tgz/cache.tgz", "tgz")] {
        let (code, json, err) = run(&mut sc(&["snapshot", "--format", format], key, &a));
        assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "seeding {key}: {json} {err}");
    }
    let seed: u64 = std::env::var("SANDCACHE_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("sigkill soak: {trials} trials, SANDCACHE_SOAK_SEED={seed}");
    let mut rng = seed;
    let mut next = |n: u64| {
        // xorshift64*: reproducible from the printed seed.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545F4914F6CDD1D) % n
    };
    let mut killed_mid_way = 0;
    for t in 0..trials {
        let restore = next(2) == 0;
        let (key, format) = if next(2) == 0 { ("native/cache", "native") } else { ("tgz/cache.tgz", "tgz") };
        let delay = Duration::from_millis(next(400));
        let dir = tmp.path().join(format!("trial-{t}/deno-dir"));
        // The dir holds `b`; a restore brings the stored generation (`a` or
        // `b`), a snapshot stores `b`.
        copy_tree(&b, &dir);
        let mut cmd =
            if restore { sc(&["restore"], key, &dir) } else { sc(&["snapshot", "--format", format], key, &dir) };
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        if !finished {
            killed_mid_way += 1;
        }
        let what = format!(
            "trial {t}: {} {format} killed after {} ms{}",
            if restore { "restore" } else { "snapshot" },
            delay.as_millis(),
            if finished { " (had finished)" } else { "" }
        );
        eprintln!("{what}");
        let now = listing(&dir);
        assert!(now == la || now == lb, "{what}: the dir is a mix after the kill");

        // The store is whole, and the next restore succeeds, verifies and
        // cleans up whatever the killed process left.
        check_generations(handle.as_ref(), "native/cache").unwrap_or_else(|e| panic!("{what}: store: {e}"));
        let (code, json, err) = run(&mut sc(&["restore"], key, &dir));
        assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{what}: next restore: {json} {err}");
        let now = listing(&dir);
        assert!(now == la || now == lb, "{what}: the next restore is not a stored generation");
        assert_eq!(leftovers(&dir), Vec::<String>::new(), "{what}: staging left after the next restore");
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
    eprintln!("sigkill soak: {trials} trials, {killed_mid_way} killed mid-way, nothing lost");
}

/// Writer `w`'s tree in round `r`: a `state` file naming it, and payload
/// bytes that only that state has.
fn write_state(dir: &Path, w: usize, r: usize) {
    if !dir.exists() {
        sample_tree(dir);
    }
    fs::write(dir.join("state"), format!("{w} {r}")).unwrap();
    fs::write(dir.join("remote/payload.bin"), payload(w, r)).unwrap();
}

fn payload(w: usize, r: usize) -> Vec<u8> {
    noise(200_000, &format!("{w}/{r}"))
}

/// Several processes snapshot different contents to two keys that share
/// most of their content (one pool) while another restores one key in a
/// loop and gc runs, store-wide and per key in turn: every restore is one
/// complete, verified generation, and gc never removes what a kept or
/// in-flight one needs.
#[test]
fn eight_writers_a_reader_and_gc_on_two_keys() {
    let (writers, rounds) = (8, env_count("SANDCACHE_SOAK_ROUNDS", 20));
    let tmp = tempfile::tempdir().unwrap();
    let (url, handle) = store("concurrent", tmp.path());
    let key_of = |w: usize| if w % 2 == 0 { "site/cache" } else { "other/cache" };
    let sc_key = |args: &[&str], key: &str, dir: &Path| {
        let mut c = bin();
        c.args(args).args(["--key", key, "--store", &url, "--json", "-q"]).arg("--dir").arg(dir);
        run(&mut c)
    };
    let sc = |args: &[&str], dir: &Path| sc_key(args, "site/cache", dir);
    let stop = AtomicBool::new(false);
    let (gc_runs, gc_deleted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let start = Instant::now();
    let (ok, restores) = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for w in 0..writers {
            let (sc_key, tmp) = (&sc_key, tmp.path());
            handles.push(s.spawn(move || {
                let dir = tmp.join(format!("writer-{w}/deno-dir"));
                for r in 0..rounds {
                    write_state(&dir, w, r);
                    let (code, json, err) = sc_key(&["snapshot"], key_of(w), &dir);
                    assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "writer {w} round {r}: {json} {err}");
                }
            }));
        }
        // gc keeps 2 generations; its grace (2 s) outlasts any snapshot here,
        // so it deletes old generations and packs while writers still work.
        let gc = s.spawn(|| {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut c = bin();
                c.args(["gc", "--store", &url, "--keep", "2", "--grace", "2", "--json"]);
                runs += 1;
                if runs % 2 == 0 {
                    c.args(["--key", "site/cache"]);
                }
                let (code, json, err) = run(&mut c);
                assert_eq!(code, 0, "gc: {json} {err}");
                gc_runs.fetch_add(1, Ordering::Relaxed);
                gc_deleted.fetch_add(json["packs_deleted"].as_u64().unwrap_or(0) as usize, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let reader = s.spawn(|| {
            let (mut ok, mut n) = (0, 0);
            while !stop.load(Ordering::Relaxed) || n < 3 {
                n += 1;
                let dir = tmp.path().join(format!("reader-{n}/deno-dir"));
                let (code, json, err) = sc(&["restore"], &dir);
                assert_eq!(code, 0, "{err}");
                if json["ok"] == true {
                    let state = fs::read_to_string(dir.join("state")).unwrap();
                    let (w, r) = state.split_once(' ').unwrap();
                    let (w, r): (usize, usize) = (w.parse().unwrap(), r.parse().unwrap());
                    assert_eq!(fs::read(dir.join("remote/payload.bin")).unwrap(), payload(w, r), "a mixed generation");
                    ok += 1;
                } else {
                    assert_eq!(json["reason"], "not_found", "only a miss before the first generation: {json}");
                }
                fs::remove_dir_all(dir.parent().unwrap()).ok();
            }
            (ok, n)
        });
        for h in handles {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        gc.join().unwrap();
        reader.join().unwrap()
    });
    eprintln!(
        "{writers} writers x {rounds} rounds in {:.1} s: {ok} of {restores} restores found a generation; gc ran {} times and deleted {} packs",
        start.elapsed().as_secs_f64(),
        gc_runs.load(Ordering::Relaxed),
        gc_deleted.load(Ordering::Relaxed)
    );
    assert!(ok >= 1, "{ok} of {restores} restores found a generation");
    for key in ["site/cache", "other/cache"] {
        let generations = check_generations(handle.as_ref(), key).unwrap();
        assert!(generations >= 2, "gc keeps at least 2 generations of {key}: {generations}");
    }
    // After the writers, the newest generation is one writer's last round.
    let last = tmp.path().join("last/deno-dir");
    let (code, json, _) = sc(&["restore"], &last);
    assert_eq!((code, json["ok"].as_bool()), (0, Some(true)));
    let state = fs::read_to_string(last.join("state")).unwrap();
    assert!(state.ends_with(&format!(" {}", rounds - 1)), "{state}");
}

/// Runs `cmd` to the end, sampling its peak RSS (VmHWM) as it goes.
fn run_measured(cmd: &mut Command) -> (serde_json::Value, String, u64) {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let status = format!("/proc/{}/status", child.id());
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(s) = fs::read_to_string(&status) {
                    if let Some(kb) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
                    {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (json, String::from_utf8_lossy(&out.stderr).into_owned(), peak.load(Ordering::Relaxed) as u64 / 1024)
}

/// Free bytes on the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_bavail * st.f_frsize
}

/// A 2 GB cache (large files and many small ones, none compressible) is
/// snapshotted and restored in the native format within the 128 MiB peak
/// RSS bound. `SANDCACHE_SOAK_BIG_MB` sets the size.
#[test]
fn a_2_gb_cache_stays_within_128_mib() {
    let mb = env_count("SANDCACHE_SOAK_BIG_MB", 2048);
    let tmp = tempfile::Builder::new().prefix("sandcache-big").tempdir_in("/var/tmp").unwrap();
    let need = (mb as u64) << 20;
    if free_bytes(tmp.path()) < need * 4 {
        eprintln!("skipping the {mb} MB memory test: less than {} MB free in /var/tmp", (need * 4) >> 20);
        return;
    }
    let (url, _handle) = store("big", tmp.path());
    let src = tmp.path().join("src/deno-dir");
    sample_tree(&src);
    fs::create_dir_all(src.join("npm/big")).unwrap();
    // Three quarters in 64 MiB files, a quarter in 1 MiB files.
    let large = mb * 3 / 4 / 64;
    for i in 0..large {
        fs::write(src.join(format!("npm/big/{i}.bin")), noise(64 << 20, &format!("big{i}"))).unwrap();
    }
    for i in 0..(mb - large * 64) {
        let d = src.join(format!("remote/{}", i % 64));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("{i}.bin")), noise(1 << 20, &format!("small{i}"))).unwrap();
    }
    let sc = |args: &[&str], dir: &Path| {
        let mut c = bin();
        c.args(args).args(["--key", "big/cache", "--store", &url, "--json", "-q"]).arg("--dir").arg(dir);
        c
    };
    let (snap, err, snap_peak) = run_measured(&mut sc(&["snapshot"], &src));
    assert_eq!(snap["ok"], true, "snapshot: {snap} {err}");
    let dest = tmp.path().join("dest/deno-dir");
    let (json, err, restore_peak) = run_measured(&mut sc(&["restore"], &dest));
    assert_eq!(json["ok"], true, "restore: {json} {err}");
    eprintln!(
        "{mb} MB cache ({} bytes stored): snapshot peak RSS {snap_peak} MiB in {} ms, restore {restore_peak} MiB in {} ms",
        snap["transferred"], snap["ms"], json["ms"]
    );
    assert_eq!(listing(&src), listing(&dest), "the restored tree is the snapshotted one");
    assert!(snap_peak <= 128, "snapshot peak RSS {snap_peak} MiB is over 128 MiB");
    assert!(restore_peak <= 128, "restore peak RSS {restore_peak} MiB is over 128 MiB");
}
