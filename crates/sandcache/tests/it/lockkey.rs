//! `sandcache key`: lockfile keys through the binary. The normalization
//! rules themselves are unit-tested in the engine (`lockkey.rs`).

use std::fs;
use std::path::Path;

use crate::{bin, run};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
}

/// `sandcache key --repo DIR [args]`: exit code, stdout (trimmed), stderr.
fn key(repo: &Path, args: &[&str]) -> (i32, String, String) {
    let out = bin().arg("key").arg("--repo").arg(repo).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.code().unwrap_or(-1), stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn key_ok(repo: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = key(repo, args);
    assert_eq!(code, 0, "{stderr}");
    stdout
}

/// A key the store would take: what `sandcache_engine::validate_key` checks.
fn assert_valid_key(key: &str) {
    assert!(sandcache_engine::validate_key(key).is_ok(), "{key:?}");
}

const DENO: &str = r#"{
  "imports": { "$fresh/": "https://deno.land/x/fresh@1.6.8/", "preact": "npm:preact@10.19.6" },
  "tasks": { "start": "deno run -A main.ts" },
  "lock": false
}
"#;

#[test]
fn lockkey_prints_a_valid_key_the_same_across_runs_and_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        fs::create_dir(d).unwrap();
        write(d, &[("deno.json", DENO), ("main.ts", "export {};")]);
    }
    let k = key_ok(&a, &[]);
    assert!(k.starts_with("lock-") && k.len() == 21 && k[5..].chars().all(|c| c.is_ascii_hexdigit()), "{k}");
    assert_valid_key(&k);
    assert_eq!(k, key_ok(&a, &[]));
    assert_eq!(k, key_ok(&b, &[]));
    // Other files in the repo do not count.
    fs::write(a.join("main.ts"), "console.log(1);").unwrap();
    assert_eq!(k, key_ok(&a, &[]));

    let prefixed = key_ok(&a, &["--prefix", "sites/acme"]);
    assert_eq!(prefixed, format!("sites/acme/{k}"));
    assert_valid_key(&prefixed);
}

#[test]
fn lockkey_json_names_the_files_and_the_full_hash() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &[("deno.json", DENO), ("deno.lock", r#"{"version": "4"}"#)]);
    let (code, json, stderr) = run(bin().arg("key").arg("--repo").arg(tmp.path()).arg("--json"));
    assert_eq!(code, 0, "{stderr}");
    let (key, hash) = (json["key"].as_str().unwrap(), json["hash"].as_str().unwrap());
    assert_eq!(json["files"], serde_json::json!(["deno.json", "deno.lock"]));
    assert_eq!(hash.len(), 64);
    assert_eq!(key, format!("lock-{}", &hash[..16]));
    assert_eq!(key, key_ok(tmp.path(), &[]));
}

#[test]
fn lockkey_reformatting_comments_key_order_and_crlf_keep_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &[("deno.json", DENO), ("yarn.lock", "a:\n  b 1\n")]);
    let k = key_ok(tmp.path(), &[]);
    let jsonc = "// site config\r\n{\r\n  \"lock\": false,\r\n  /* deps */ \"imports\": {\r\n    \
                 \"preact\": \"npm:preact@10.19.6\",\r\n    \"$fresh/\": \"https://deno.land/x/fresh@1.6.8/\",\r\n  },\r\n}\r\n";
    write(tmp.path(), &[("deno.json", jsonc), ("yarn.lock", "a:\r\n  b 1\r\n")]);
    assert_eq!(k, key_ok(tmp.path(), &[]));
}

#[test]
fn lockkey_tasks_do_not_change_it_imports_and_new_lockfiles_do() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &[("deno.json", DENO)]);
    let k = key_ok(tmp.path(), &[]);
    write(tmp.path(), &[("deno.json", &DENO.replace("deno run -A main.ts", "deno run -A --watch main.ts"))]);
    assert_eq!(k, key_ok(tmp.path(), &[]));
    write(tmp.path(), &[("deno.json", &DENO.replace("10.19.6", "10.20.0"))]);
    let imports = key_ok(tmp.path(), &[]);
    assert_ne!(k, imports);
    // Each kind of lockfile, added, changes the key, and alone gives one.
    let mut seen = vec![k, imports];
    for (name, content) in [
        ("deno.lock", r#"{"version": "4"}"#),
        ("package.json", r#"{"dependencies": {"react": "^18"}}"#),
        ("package-lock.json", r#"{"lockfileVersion": 3}"#),
        ("bun.lock", "{\"lockfileVersion\": 1,}"),
        ("bun.lockb", "\u{0}bun"),
        ("pnpm-lock.yaml", "lockfileVersion: '9.0'\n"),
        ("yarn.lock", "# yarn lockfile v1\n"),
    ] {
        write(tmp.path(), &[(name, content)]);
        let k = key_ok(tmp.path(), &[]);
        assert!(!seen.contains(&k), "{name} did not change the key");
        seen.push(k);
        let alone = tempfile::tempdir().unwrap();
        write(alone.path(), &[(name, content)]);
        let (code, json, stderr) = run(bin().arg("key").arg("--repo").arg(alone.path()).arg("--json"));
        assert_eq!((code, &json["files"]), (0, &serde_json::json!([name])), "{stderr}");
    }
}

#[test]
fn lockkey_no_dependency_file_exits_2_naming_the_dir_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &[("main.ts", "export {};")]);
    let (code, stdout, stderr) = key(tmp.path(), &[]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains(&tmp.path().display().to_string()), "{stderr}");
    for name in sandcache_engine::LOCK_KEY_FILES {
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
    let (code, json, _) = run(bin().arg("key").arg("--repo").arg(tmp.path()).arg("--json"));
    assert_eq!(code, 2);
    assert!(json["error"].as_str().unwrap().contains("no dependency file"), "{json}");
    // A repo dir that does not exist: named too.
    let missing = tmp.path().join("missing");
    let (code, _, stderr) = key(&missing, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn lockkey_bad_jsonc_exits_2_naming_the_file_and_position() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &[("deno.json", "{\n  // ok\n  \"imports\": {\n    \"a\": ,\n  },\n}\n")]);
    let (code, stdout, stderr) = key(tmp.path(), &[]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stderr.contains(&tmp.path().join("deno.json").display().to_string()), "{stderr}");
    assert!(stderr.contains("line 4 column"), "{stderr}");
}

#[test]
fn lockkey_symlinked_deno_json_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    fs::write(&secret, r#"{"imports": {}}"#).unwrap();
    let repo = tmp.path().join("repo");
    fs::create_dir(&repo).unwrap();
    std::os::unix::fs::symlink(&secret, repo.join("deno.json")).unwrap();
    let (code, stdout, stderr) = key(&repo, &[]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stderr.contains(&repo.join("deno.json").display().to_string()) && stderr.contains("symlink"), "{stderr}");
    // Even to a file that does not parse: it is never opened.
    std::os::unix::fs::symlink("/proc/self/environ", repo.join("package.json")).unwrap();
    fs::remove_file(repo.join("deno.json")).unwrap();
    let (code, _, stderr) = key(&repo, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("package.json") && stderr.contains("symlink"), "{stderr}");
}

#[test]
fn lockkey_invalid_prefix_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &[("deno.json", DENO)]);
    for bad in ["", "/abs", "a//b", "../x", "a/"] {
        let (code, stdout, stderr) = key(tmp.path(), &["--prefix", bad]);
        assert_eq!(code, 2, "{bad:?}: {stdout}");
        assert!(stderr.contains("--prefix"), "{bad:?}: {stderr}");
    }
}

/// The cap on one dependency file (docs/configuration.md, "Lockfile keys").
const FILE_CAP: usize = 16 << 20;

/// `n` bytes of JSON made of tiny values, as in the security review: an
/// array of zeros, then an object of one-digit entries, padded with spaces.
fn tiny_values(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    out.extend_from_slice(b"{\"a\":[0");
    while out.len() + 2 < n / 2 {
        out.extend_from_slice(b",0");
    }
    out.extend_from_slice(b"],\"b\":{\"0\":0");
    for i in 1u64.. {
        let entry = format!(",\"{i}\":0");
        if out.len() + entry.len() + 2 > n {
            break;
        }
        out.extend_from_slice(entry.as_bytes());
    }
    out.extend_from_slice(b"}}");
    out.resize(n, b' ');
    out
}

/// `sandcache key --repo DIR` as the only child of a python3 process that
/// then prints the child's peak RSS (`getrusage(RUSAGE_CHILDREN)`, which
/// counts no other process of this test binary). Exit code, peak RSS in
/// bytes, stderr. `None` without python3.
fn key_with_peak_rss(repo: &Path) -> Option<(i32, u64, String)> {
    const MEASURE: &str = "import resource, subprocess, sys\n\
        code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n\
        print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n\
        sys.exit(code)\n";
    let out = std::process::Command::new("python3")
        .args(["-c", MEASURE, env!("CARGO_BIN_EXE_sandcache"), "key", "--repo"])
        .arg(repo)
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let kib: u64 = stderr.lines().last()?.strip_prefix("maxrss_kib ")?.parse().ok()?;
    Some((out.status.code().unwrap_or(-1), kib * 1024, stderr))
}

/// The security review's trick: a 64 MiB `deno.lock` of tiny JSON values
/// cost `sandcache key` 1.4 GiB of RSS and seconds of CPU (in the root
/// runner, on an async thread). It is refused now before it is parsed,
/// naming the file and the cap; so is a file one byte over the cap.
#[test]
fn lockkey_a_lockfile_over_the_cap_is_refused_naming_it_and_the_cap() {
    for size in [64 << 20, FILE_CAP + 1] {
        let tmp = tempfile::tempdir().unwrap();
        let lock = tmp.path().join("deno.lock");
        fs::write(&lock, tiny_values(size)).unwrap();
        let (code, stdout, stderr) = key(tmp.path(), &[]);
        assert_eq!(code, 2, "{size} bytes: keyed as {stdout}");
        assert!(stderr.contains(&lock.display().to_string()), "{stderr}");
        assert!(stderr.contains("16 MiB") && stderr.contains(&FILE_CAP.to_string()), "names the cap: {stderr}");
        assert!(stderr.contains(&size.to_string()), "names the size: {stderr}");
    }
}

/// A file of the same tiny values just under the cap is keyed, in memory
/// proportionate to it: the process's peak RSS grows by less than 6 times
/// the file over that of keying a small repo: 3 now, where a
/// `serde_json::Value` tree of it took 16.
#[test]
fn lockkey_a_lockfile_just_under_the_cap_is_keyed_in_memory_proportionate_to_it() {
    let small = tempfile::tempdir().unwrap();
    write(small.path(), &[("deno.lock", r#"{"version": "4"}"#)]);
    let Some((code, baseline, stderr)) = key_with_peak_rss(small.path()) else {
        assert!(std::env::var_os("CI").is_none(), "python3 is missing on CI");
        eprintln!("skipping: no python3 to measure the peak RSS with");
        return;
    };
    assert_eq!(code, 0, "{stderr}");
    let tmp = tempfile::tempdir().unwrap();
    let size = FILE_CAP - 4096;
    fs::write(tmp.path().join("deno.lock"), tiny_values(size)).unwrap();
    let (code, peak, stderr) = key_with_peak_rss(tmp.path()).unwrap();
    assert_eq!(code, 0, "{stderr}");
    let grown = peak.saturating_sub(baseline);
    eprintln!("peak RSS {peak} bytes, {grown} over a small repo's, for a {size}-byte file");
    assert!(grown < 6 * size as u64, "{grown} bytes more than a small repo for a {size}-byte file: {stderr}");
}
