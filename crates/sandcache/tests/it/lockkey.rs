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
