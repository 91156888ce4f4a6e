//! A delta restore killed with SIGKILL at random points: every unit (an npm
//! package dir, any other file) is whole, the old one or the new, and the
//! next restore completes to exactly the new generation.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandcache_testkit::tree::assert_same_tree;

use crate::support::{bin, run};

const PACKAGES: usize = 150;

/// Generation `g` (0 or 1): packages whose files all say `g`, some of them
/// at another version in 1 (a bump: another dir), some gone or new, and
/// files outside `npm/`.
fn generation(root: &Path, g: u32) {
    let _ = fs::remove_dir_all(root);
    for p in 0..PACKAGES {
        if (g == 0 && p % 10 == 9) || (g == 1 && p % 10 == 8) {
            continue; // only in the other generation
        }
        // A third bumped (another dir), a third republished in place (the
        // same dir, new content), a third the same in both.
        let version = if g == 1 && p % 3 == 0 { "1.0.1" } else { "1.0.0" };
        let g = if p % 3 == 2 { 0 } else { g };
        let dir = root.join(format!("npm/registry.npmjs.org/pkg{p}/{version}"));
        fs::create_dir_all(dir.join("lib")).unwrap();
        for f in 0..6 {
            fs::write(
                dir.join(format!("lib/f{f}.js")),
                format!("pkg{p} {version} generation {g} file {f}\n").repeat(200),
            )
            .unwrap();
        }
        fs::write(dir.join("package.json"), format!("{{\"name\":\"pkg{p}\",\"version\":\"{version}\",\"g\":{g}}}"))
            .unwrap();
    }
    fs::create_dir_all(root.join("remote/https/example.com")).unwrap();
    // One time for every entry of both: what is the same in both is equal.
    for f in 0..40 {
        let g = if f % 2 == 0 { 0 } else { g };
        fs::write(root.join(format!("remote/https/example.com/m{f}")), format!("module {f} generation {g}\n")).unwrap();
    }
    let touched = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("find '{}' -exec touch -h -d @1700000000 {{}} +", root.display()))
        .status()
        .unwrap();
    assert!(touched.success());
}

/// Every package dir of `dir`, by path: the generation each of its files
/// says, which must be one for the whole dir, with every file of that
/// generation's version there.
fn check_units(dir: &Path) {
    let npm = dir.join("npm/registry.npmjs.org");
    let Ok(names) = fs::read_dir(&npm) else { return };
    for name in names {
        for version in fs::read_dir(name.unwrap().path()).unwrap() {
            let pkg = version.unwrap().path();
            let mut seen = BTreeMap::new();
            for f in 0..6 {
                let text = fs::read_to_string(pkg.join(format!("lib/f{f}.js")))
                    .unwrap_or_else(|e| panic!("{}: a partial package dir: lib/f{f}.js: {e}", pkg.display()));
                let g = text.split(" generation ").nth(1).unwrap().chars().next().unwrap();
                seen.insert(f, g);
            }
            let json = fs::read_to_string(pkg.join("package.json")).unwrap();
            let mut gs: Vec<char> = seen.values().copied().collect();
            gs.push(json.rsplit(':').next().unwrap().chars().next().unwrap());
            gs.dedup();
            assert_eq!(gs.len(), 1, "{} mixes generations: {gs:?}", pkg.display());
        }
    }
}

#[test]
fn a_delta_killed_anywhere_leaves_whole_units_and_the_next_restore_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = format!("file://{}", tmp.path().join("store").display());
    let (src, dir, fresh) = (tmp.path().join("src"), tmp.path().join("deno-dir"), tmp.path().join("fresh"));
    for g in 0..2 {
        generation(&src, g);
        let (code, json, err) = run(bin()
            .args(["snapshot", "--json", "--force", "--store", &store, "--key"])
            .arg(format!("g{g}"))
            .arg("--dir")
            .arg(&src));
        assert_eq!(code, 0, "{json} {err}");
    }
    let restore = |key: &str, into: &Path| {
        let (code, json, err) =
            run(bin().args(["restore", "--json", "--store", &store, "--key", key, "--dir"]).arg(into));
        assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{json} {err}");
        json
    };
    restore("g1", &fresh);
    // How long a delta from g0 to g1 takes here, to kill within it.
    restore("g0", &dir);
    let started = Instant::now();
    let json = restore("g1", &dir);
    assert_eq!(json["mode"], "delta", "{json}");
    let took = started.elapsed();
    assert_same_tree(&dir, &fresh);
    let mut delta_after_kill = 0;
    for round in 0..10u32 {
        restore("g0", &dir);
        let mut child = bin()
            .args(["restore", "--json", "--store", &store, "--key", "g1", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spread over the delta, and a little past its start-up.
        let at = took.mul_f64(f64::from(round) / 9.0)
            + Duration::from_micros(u64::from(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 10_000,
            ));
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
        check_units(&dir);
        let json = restore("g1", &dir);
        delta_after_kill += u32::from(json["mode"] == "delta");
        assert_same_tree(&dir, &fresh);
    }
    // A kill during the delta leaves the state naming neither generation:
    // the next restore is full (a kill before or after it may leave a
    // delta possible).
    eprintln!("after a kill, {delta_after_kill} of 10 next restores were deltas; the delta took {took:?}");
}
